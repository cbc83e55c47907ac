//! User accounts in Django's shape, and the store behind them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::store::{Result, Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    /// False for an email a user gave when registering themselves: nobody
    /// checked it is theirs, so it is not sent to the app as identity.
    /// Emails set by an operator (CLI, admin API, import) are vouched for.
    #[serde(default = "vouched", skip_serializing_if = "is_vouched")]
    pub email_verified: bool,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    pub is_active: bool,
    #[serde(default)]
    pub is_superuser: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// A PHC string (argon2id) or an imported legacy hash; never shown.
    #[serde(default)]
    pub password: String,
    /// Unix seconds.
    pub date_joined: u64,
    #[serde(default)]
    pub last_login: Option<u64>,
    /// Custom fields declared in the config.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

fn vouched() -> bool {
    true
}

fn is_vouched(v: &bool) -> bool {
    *v
}

impl User {
    pub fn new(username: &str) -> Self {
        User {
            username: username.to_string(),
            email: None,
            email_verified: true,
            first_name: String::new(),
            last_name: String::new(),
            is_active: true,
            is_superuser: false,
            groups: Vec::new(),
            permissions: Vec::new(),
            password: String::new(),
            date_joined: crate::clock::unix_secs(),
            last_login: None,
            fields: BTreeMap::new(),
        }
    }

    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
            .trim()
            .to_string()
    }

    pub fn key(&self) -> String {
        user_key(&self.username)
    }

    /// The hashing scheme, as Django's admin shows it, never the hash.
    pub fn password_algorithm(&self) -> &'static str {
        crate::legacy::algorithm_name(&self.password)
    }
}

/// Usernames are unique regardless of case: `Alice` and `alice` are one.
pub fn user_key(username: &str) -> String {
    username.to_lowercase()
}

/// Django's username rule: up to 150 letters, digits and `@ . + - _`.
pub fn check_username(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the username is empty".into());
    }
    if name.chars().count() > 150 {
        return Err("the username is longer than 150 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
    {
        return Err("a username may contain only letters, digits and @ . + - _".into());
    }
    Ok(())
}

/// What a new username must also be, beyond [`check_username`]: in
/// Unicode's NFKC form (as Django stores them) and in one script. Apps
/// that fold compatibility characters or compare with accent- and
/// case-blind collations (MySQL's `*_ai_ci`) would read `ａｌｉｃｅ`
/// (full-width) as `alice`, and `аlice` (a Cyrillic `а`) looks like it.
/// Existing names are left alone: this is checked only when one is made.
pub fn check_new_username(name: &str) -> std::result::Result<(), String> {
    use unicode_normalization::UnicodeNormalization;
    use unicode_security::MixedScript;
    check_username(name)?;
    let nfkc: String = name.nfkc().collect();
    if nfkc != name {
        return Err(format!(
            "write the username as {nfkc:?}: it has full-width or styled characters that apps read as plain ones"
        ));
    }
    if !name.is_single_script() {
        return Err("the username mixes scripts (such as Latin and Cyrillic letters), so it can pass for another name".into());
    }
    Ok(())
}

/// The forms two names share when an app comparing them case-blind,
/// accent-blind or by look (Java's `equalsIgnoreCase`, JavaScript's
/// `toUpperCase`, `_ai_ci` collations) could take one for the other:
/// lower case, accents and other marks dropped, and each confusable
/// letter mapped to its prototype (UTS #39 skeleton: `ı` and `í` as `i`,
/// `rn` as `m`).
///
/// Both orders of folding and mapping: lower case first (`ADMİN` as
/// `admin`), and the confusable map first, since lower-casing loses what
/// a capital looks like (`aIice` with a capital I reads as `alice`).
/// `ß` counts as `ss`, as case-insensitive comparisons in JavaScript,
/// Python's `casefold` and Unicode collations take it.
pub fn lookalike_keys(name: &str) -> [String; 2] {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    let bare = |s: &str| -> String {
        s.nfd()
            .filter(|c| !is_combining_mark(*c))
            .collect::<String>()
            .replace(['ß', 'ẞ'], "ss")
    };
    let skeleton =
        |s: &str| -> String { unicode_security::confusable_detection::skeleton(s).collect() };
    let lower_first = bare(&skeleton(&bare(&name.to_lowercase())).to_lowercase());
    let map_first = bare(&skeleton(&bare(name)).to_lowercase());
    [lower_first, map_first]
}

/// What makes a new account clash with an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clash {
    Email,
    Lookalike,
}

pub fn check_email(email: &str) -> std::result::Result<(), String> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        })
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<' || c == '>');
    if ok {
        Ok(())
    } else {
        Err(format!("{email:?} is not a valid email address"))
    }
}

/// Where accounts live. The sled store implements it; a shared backend can.
pub trait AccountStore: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<User>>;
    /// Inserts a new user; fails with `Conflict` if the name is taken.
    fn create(&self, user: &User) -> Result<()>;
    fn update(&self, user: &User) -> Result<()>;
    fn delete(&self, key: &str) -> Result<bool>;
    fn list(&self) -> Result<Vec<User>>;
}

fn decode(bytes: &[u8]) -> Result<User> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("user record: {e}")))
}

fn encode(user: &User) -> Result<Vec<u8>> {
    serde_json::to_vec(user).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl AccountStore for Store {
    fn get(&self, key: &str) -> Result<Option<User>> {
        self.users
            .get(key.as_bytes())?
            .map(|v| decode(&v))
            .transpose()
    }

    fn create(&self, user: &User) -> Result<()> {
        let key = user.key();
        let val = encode(user)?;
        match self
            .users
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(val))?
        {
            Ok(()) => {
                self.db.flush()?;
                Ok(())
            }
            Err(_) => Err(StoreError::Conflict(format!(
                "a user named {:?} already exists",
                user.username
            ))),
        }
    }

    fn update(&self, user: &User) -> Result<()> {
        self.users.insert(user.key().as_bytes(), encode(user)?)?;
        self.db.flush()?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let existed = self.users.remove(key.as_bytes())?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    fn list(&self) -> Result<Vec<User>> {
        self.users.iter().values().map(|v| decode(&v?)).collect()
    }
}

/// Accounts with a read cache in front of the store. Every write goes
/// through here, so the cache is exact for this process.
pub struct Accounts {
    store: Arc<dyn AccountStore>,
    cache: RwLock<HashMap<String, Arc<User>>>,
    cache_cap: usize,
}

impl Accounts {
    pub fn new(store: Arc<dyn AccountStore>) -> Self {
        Accounts {
            store,
            cache: RwLock::new(HashMap::new()),
            cache_cap: 100_000,
        }
    }

    /// The current record, from cache when hot.
    pub fn get(&self, username: &str) -> Result<Option<Arc<User>>> {
        self.get_by_key(&user_key(username))
    }

    /// Like [`Accounts::get`] for a name already in key form (sessions
    /// store keys), sparing the hot path a lower-casing allocation.
    pub fn get_by_key(&self, key: &str) -> Result<Option<Arc<User>>> {
        if let Some(u) = self.cache.read().get(key) {
            return Ok(Some(Arc::clone(u)));
        }
        let Some(u) = self.store.get(key)? else {
            return Ok(None);
        };
        let u = Arc::new(u);
        let mut c = self.cache.write();
        if c.len() >= self.cache_cap {
            c.clear();
        }
        c.insert(key.to_string(), Arc::clone(&u));
        Ok(Some(u))
    }

    pub fn create(&self, user: &User) -> Result<()> {
        check_new_username(&user.username).map_err(StoreError::Conflict)?;
        self.store.create(user)?;
        self.cache.write().remove(&user.key());
        Ok(())
    }

    /// Read-modify-write of one user.
    pub fn modify(
        &self,
        username: &str,
        f: impl FnOnce(&mut User) -> std::result::Result<(), String>,
    ) -> Result<User> {
        let key = user_key(username);
        let mut u = self
            .store
            .get(&key)?
            .ok_or_else(|| StoreError::NotFound(format!("no user named {username:?}")))?;
        f(&mut u).map_err(StoreError::Conflict)?;
        self.store.update(&u)?;
        self.cache.write().remove(&key);
        Ok(u)
    }

    pub fn delete(&self, username: &str) -> Result<bool> {
        let key = user_key(username);
        let r = self.store.delete(&key)?;
        self.cache.write().remove(&key);
        Ok(r)
    }

    /// Why a self-registered account could pass for an existing one, if it
    /// could: the same email (compared without case), or a name that looks
    /// the same ([`lookalike_key`]). Reads every user: for registration,
    /// which is throttled.
    pub fn registration_clash(&self, username: &str, email: &str) -> Result<Option<Clash>> {
        let name = lookalike_keys(username);
        for u in self.store.list()? {
            if u.email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
            {
                return Ok(Some(Clash::Email));
            }
            let theirs = lookalike_keys(&u.username);
            if name.iter().any(|k| theirs.contains(k)) {
                return Ok(Some(Clash::Lookalike));
            }
        }
        Ok(None)
    }

    pub fn list(&self) -> Result<Vec<User>> {
        let mut v = self.store.list()?;
        v.sort_by_key(|u| u.key());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_are_nfkc_and_single_script() {
        for ok in [
            "alice",
            "Alice.Smith+ops@example",
            "jürgen",
            "иван",
            "山田_2",
            "a-b_c",
        ] {
            assert_eq!(check_new_username(ok), Ok(()), "{ok}");
        }
        // Full-width, styled (mathematical bold) and ligature forms.
        for (name, plain) in [
            ("ａｌｉｃｅ", "alice"),
            ("𝐚𝐥𝐢𝐜𝐞", "alice"),
            ("ﬁona", "fiona"),
        ] {
            let e = check_new_username(name).unwrap_err();
            assert!(e.contains(&format!("{plain:?}")), "{name}: {e}");
        }
        // Latin with one Cyrillic or Greek letter.
        for name in ["аlice", "alicе", "jοhn"] {
            let e = check_new_username(name).unwrap_err();
            assert!(e.contains("mixes scripts"), "{name}: {e}");
        }
        // Names that look alike share a key; different names do not.
        for (a, b) in [
            ("admin", "admín"),
            ("admin", "ádmin"),
            ("admin", "admın"),
            ("admin", "ADMİN"),
            ("alice", "ALİCE"),
            ("admin", "adrnin"),
            ("jurgen", "jürgen"),
            ("jess", "jeß"),
            ("alice", "aIice"),
            ("alice", "аІісе"),
        ] {
            let (ka, kb) = (lookalike_keys(a), lookalike_keys(b));
            assert!(ka.iter().any(|k| kb.contains(k)), "{a} {b}: {ka:?} {kb:?}");
        }
        for (a, b) in [
            ("bob", "rob"),
            ("anna", "ana"),
            ("alice", "alicia"),
            ("jess", "jes"),
        ] {
            let (ka, kb) = (lookalike_keys(a), lookalike_keys(b));
            assert!(!ka.iter().any(|k| kb.contains(k)), "{a} {b}: {ka:?} {kb:?}");
        }
        // The old rule still applies, and existing names still pass it.
        assert!(check_new_username("a b").is_err());
        assert_eq!(check_username("аlice"), Ok(()));
    }
}
