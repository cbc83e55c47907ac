//! Server-side cookie sessions.
//!
//! The cookie carries a 256-bit random id; the store keys the session by
//! the first 128 bits of the SHA-256 of that id, so a copy of the database
//! holds no usable cookie. Hot sessions are served from a bounded in-memory
//! cache; the last-seen time is kept in memory and written back only when
//! it has moved by a coalescing interval, so ordinary requests never write
//! to disk.
//! Revocations remove from cache and store and flush before answering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{unix_millis, unix_millis_coarse};
use crate::store::{Result, Store, StoreError};

/// The first 16 bytes of SHA-256(session id): what the store and the cache
/// know a session by. 128 bits keep forging a cookie for a stored session
/// a 2^128 preimage search, and a key of this size stays inside sled's
/// inline key buffer (22 bytes): a 32-byte key was one more allocation
/// per session, about 6 MiB per 100k sessions, and slower lookups.
pub type SessionHash = [u8; HASH_LEN];

pub const HASH_LEN: usize = 16;

/// A fresh session id: what goes in the cookie (base64url, 43 chars).
pub struct SessionId(pub [u8; 32]);

impl SessionId {
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        SessionId(b)
    }

    pub fn to_cookie_value(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Strictly parses a cookie value; anything malformed is no session.
    pub fn from_cookie_value(v: &str) -> Option<Self> {
        if v.len() != 43 {
            return None;
        }
        let mut out = [0u8; 32];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(v, &mut out) {
            Ok(32) => Some(SessionId(out)),
            _ => None,
        }
    }

    pub fn hash(&self) -> SessionHash {
        let full = Sha256::digest(self.0);
        let mut h = [0u8; HASH_LEN];
        h.copy_from_slice(&full[..HASH_LEN]);
        h
    }
}

/// A session id as listings show it (hex of its [`SessionHash`]). Ids
/// listed before the hash was cut to 16 bytes showed all 32 bytes of
/// SHA-256; they name the same session by their first 16.
pub fn parse_hash_hex(id: &str) -> Option<SessionHash> {
    let mut full = [0u8; 32];
    let n = match id.len() {
        32 => HASH_LEN,
        64 => 32,
        _ => return None,
    };
    hex::decode_to_slice(id, &mut full[..n]).ok()?;
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(&full[..HASH_LEN]);
    Some(h)
}

/// A short, non-reversible tag of a session for logs and listings.
pub fn short_tag(h: &SessionHash) -> String {
    hex::encode(&h[..6])
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// The user's key (lower-cased username).
    pub user: String,
    /// Unix milliseconds.
    pub created: u64,
    pub last_seen: u64,
    pub expires: u64,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub remember: bool,
}

/// Where sessions live. The sled store implements it.
pub trait SessionStore: Send + Sync {
    fn get(&self, h: &SessionHash) -> Result<Option<SessionRecord>>;
    /// What the hot path needs of a stored session. The store overrides it
    /// to skip copying the fields only listings show.
    fn get_live(&self, h: &SessionHash) -> Result<Option<Live>> {
        Ok(self.get(h)?.map(|r| Live::from_record(*h, r)))
    }
    fn put(&self, h: &SessionHash, rec: &SessionRecord) -> Result<()>;
    /// Removes one session durably; returns its record if it existed.
    fn remove(&self, h: &SessionHash) -> Result<Option<SessionRecord>>;
    /// Removes all of a user's sessions durably; returns their hashes.
    fn remove_user(&self, user: &str) -> Result<Vec<SessionHash>>;
    fn list(&self, user: Option<&str>) -> Result<Vec<(SessionHash, SessionRecord)>>;
    /// Calls `f` with every session, one at a time, so that a sweep over a
    /// large store never holds it all in memory. Records that cannot be
    /// read are skipped (a lookup of one fails closed anyway).
    fn for_each(&self, f: &mut dyn FnMut(&SessionHash, &SessionRecord)) -> Result<()> {
        for (h, r) in self.list(None)? {
            f(&h, &r);
        }
        Ok(())
    }
    /// Removes sessions that have expired anyway (lookups refuse them), so
    /// without a flush per session. Returns how many were removed.
    fn remove_expired(&self, hs: &[SessionHash]) -> Result<usize> {
        let mut n = 0;
        for h in hs {
            n += usize::from(self.remove(h)?.is_some());
        }
        Ok(n)
    }
    /// Records a later last-seen time, if the session still exists. Not
    /// flushed: losing it in a crash only makes a session expire sooner.
    fn touch(&self, h: &SessionHash, last_seen: u64) -> Result<()> {
        if let Some(mut r) = self.get(h)? {
            if last_seen > r.last_seen {
                r.last_seen = last_seen;
                self.put(h, &r)?;
            }
        }
        Ok(())
    }
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn flush(&self) -> Result<()>;
}

/// Session records are stored compactly (a tag byte, then postcard): the
/// cold path decodes one per request, and 100k of them should be small on
/// disk. Records written as JSON by earlier versions still read.
const RECORD_V1: u8 = 0xB1;

fn decode(v: &[u8]) -> Result<SessionRecord> {
    match v.split_first() {
        Some((&RECORD_V1, body)) => postcard::from_bytes(body)
            .map_err(|e| StoreError::Corrupt(format!("session record: {e}"))),
        Some((b'{', _)) => serde_json::from_slice(v)
            .map_err(|e| StoreError::Corrupt(format!("session record: {e}"))),
        _ => Err(StoreError::Corrupt("session record: unknown format".into())),
    }
}

/// A stored record read in place: the cold path copies out only what
/// [`Live`] keeps (not the address and browser).
#[derive(Deserialize)]
struct RecordView<'a> {
    user: &'a str,
    _created: u64,
    last_seen: u64,
    expires: u64,
    _ip: &'a str,
    _user_agent: &'a str,
    remember: bool,
}

fn decode_live(h: &SessionHash, v: &[u8]) -> Result<Live> {
    match v.split_first() {
        Some((&RECORD_V1, body)) => {
            let r: RecordView<'_> = postcard::from_bytes(body)
                .map_err(|e| StoreError::Corrupt(format!("session record: {e}")))?;
            Ok(Live::new(
                *h,
                r.user.into(),
                r.expires,
                r.last_seen,
                r.remember,
            ))
        }
        _ => Ok(Live::from_record(*h, decode(v)?)),
    }
}

fn encode(rec: &SessionRecord) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_V1];
    postcard::to_io(rec, &mut out).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(out)
}

fn by_user_key(user: &str, h: &SessionHash) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1 + HASH_LEN);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(h);
    k
}

/// Marks a store whose session keys are [`HASH_LEN`] bytes long.
const KEYS_UPGRADED: &[u8] = b"session_keys:16";

/// Stores written before the hash was cut to 16 bytes keyed sessions (and
/// the per-user index) by all 32 bytes of SHA-256. This rewrites them once,
/// at open, so their cookies keep working. Safe to interrupt: each entry is
/// written under its new key before its old key goes, sled recovers writes
/// in order, and a later open finishes the rest. Returns how many sessions
/// were moved.
pub(crate) fn upgrade_keys(store: &Store) -> Result<usize> {
    if store.meta.contains_key(KEYS_UPGRADED)? {
        return Ok(0);
    }
    let mut moved = 0;
    for kv in store.sessions.iter() {
        let (k, v) = kv?;
        if k.len() == 32 {
            store.sessions.insert(&k[..HASH_LEN], v)?;
            store.sessions.remove(&k)?;
            moved += 1;
        }
    }
    for kv in store.sessions_by_user.iter() {
        let (k, _) = kv?;
        // User names never contain NUL (see `check_username`).
        let Some(nul) = k.iter().position(|&b| b == 0) else {
            continue;
        };
        if k.len() - nul - 1 == 32 {
            store
                .sessions_by_user
                .insert(&k[..nul + 1 + HASH_LEN], &[])?;
            store.sessions_by_user.remove(&k)?;
        }
    }
    store.meta.insert(KEYS_UPGRADED, &[])?;
    store.db.flush()?;
    if moved > 0 {
        tracing::info!(
            sessions = moved,
            "session keys rewritten to the 16-byte format"
        );
    }
    Ok(moved)
}

impl SessionStore for Store {
    fn get(&self, h: &SessionHash) -> Result<Option<SessionRecord>> {
        self.sessions.get(h)?.map(|v| decode(&v)).transpose()
    }

    fn get_live(&self, h: &SessionHash) -> Result<Option<Live>> {
        self.sessions
            .get(h)?
            .map(|v| decode_live(h, &v))
            .transpose()
    }

    fn put(&self, h: &SessionHash, rec: &SessionRecord) -> Result<()> {
        self.sessions.insert(h, encode(rec)?)?;
        self.sessions_by_user
            .insert(by_user_key(&rec.user, h), &[])?;
        Ok(())
    }

    fn remove(&self, h: &SessionHash) -> Result<Option<SessionRecord>> {
        let old = self.sessions.remove(h)?.map(|v| decode(&v)).transpose()?;
        if let Some(r) = &old {
            self.sessions_by_user.remove(by_user_key(&r.user, h))?;
        }
        self.db.flush()?;
        Ok(old)
    }

    /// Atomic read-modify-write, so a write-back racing a revocation can
    /// never bring the revoked session back.
    fn touch(&self, h: &SessionHash, last_seen: u64) -> Result<()> {
        self.sessions.fetch_and_update(h, |old| {
            let old = old?;
            match decode(old) {
                Ok(mut r) if last_seen > r.last_seen => {
                    r.last_seen = last_seen;
                    encode(&r).ok().or_else(|| Some(old.to_vec()))
                }
                _ => Some(old.to_vec()),
            }
        })?;
        Ok(())
    }

    fn remove_expired(&self, hs: &[SessionHash]) -> Result<usize> {
        let mut n = 0;
        for h in hs {
            if let Some(v) = self.sessions.remove(h)? {
                if let Ok(r) = decode(&v) {
                    self.sessions_by_user.remove(by_user_key(&r.user, h))?;
                }
                n += 1;
            }
        }
        Ok(n)
    }

    fn remove_user(&self, user: &str) -> Result<Vec<SessionHash>> {
        let mut prefix = user.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.sessions_by_user.scan_prefix(&prefix) {
            let (k, _) = kv?;
            if let Ok(h) = SessionHash::try_from(&k[prefix.len()..]) {
                // A session swept meanwhile leaves an index entry behind;
                // only sessions that were still there count as ended.
                if self.sessions.remove(h)?.is_some() {
                    out.push(h);
                }
            }
            self.sessions_by_user.remove(k)?;
        }
        self.db.flush()?;
        Ok(out)
    }

    fn list(&self, user: Option<&str>) -> Result<Vec<(SessionHash, SessionRecord)>> {
        let mut out = Vec::new();
        match user {
            Some(u) => {
                let mut prefix = u.as_bytes().to_vec();
                prefix.push(0);
                for kv in self.sessions_by_user.scan_prefix(&prefix) {
                    let (k, _) = kv?;
                    let Ok(h) = SessionHash::try_from(&k[prefix.len()..]) else {
                        continue;
                    };
                    if let Some(r) = SessionStore::get(self, &h)? {
                        out.push((h, r));
                    }
                }
            }
            None => {
                for kv in self.sessions.iter() {
                    let (k, v) = kv?;
                    if let Ok(h) = SessionHash::try_from(k.as_ref()) {
                        out.push((h, decode(&v)?));
                    }
                }
            }
        }
        Ok(out)
    }

    fn for_each(&self, f: &mut dyn FnMut(&SessionHash, &SessionRecord)) -> Result<()> {
        let mut unreadable = 0usize;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let Ok(h) = SessionHash::try_from(k.as_ref()) else {
                continue;
            };
            match decode(&v) {
                Ok(r) => f(&h, &r),
                Err(_) => unreadable += 1,
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "session records that cannot be read were skipped; their cookies are refused"
            );
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.sessions.len()
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// A session as the hot path sees it: only what deciding needs, so a
/// hundred thousand of them stay small (address and browser stay in the
/// store, for listings).
#[derive(Debug)]
pub struct Live {
    pub hash: SessionHash,
    /// A boxed `str`, not a `String`: with the creation time left in the
    /// store, a cached session fits mimalloc's 80-byte class.
    pub user: Box<str>,
    pub expires: u64,
    last_seen: AtomicU64,
    persisted_seen: AtomicU64,
    pub remember: bool,
}

impl Live {
    fn new(
        hash: SessionHash,
        user: Box<str>,
        expires: u64,
        last_seen: u64,
        remember: bool,
    ) -> Self {
        Live {
            hash,
            user,
            expires,
            last_seen: AtomicU64::new(last_seen),
            persisted_seen: AtomicU64::new(last_seen),
            remember,
        }
    }

    fn from_record(hash: SessionHash, r: SessionRecord) -> Self {
        Live::new(hash, r.user.into(), r.expires, r.last_seen, r.remember)
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }
}

const SHARDS: usize = 16;

/// The cache is keyed by eight bytes of the [`SessionHash`] rather than all
/// 16: the hashes are SHA-256 outputs, already uniform, and no client can
/// choose them (that would take a preimage), so the short key needs no
/// further hashing, and each entry is 16 bytes instead of 24. The full
/// hash is kept in [`Live`] and compared on every hit; two sessions that
/// share the eight bytes only take turns in the cache.
fn cache_key(h: &SessionHash) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&h[8..16]);
    u64::from_le_bytes(w)
}

/// Passes a `u64` cache key through unchanged (see [`cache_key`]).
#[derive(Default)]
struct KeyIsHash(u64);

impl std::hash::Hasher for KeyIsHash {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for the keys; anything else still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = Mutex<HashMap<u64, Arc<Live>, std::hash::BuildHasherDefault<KeyIsHash>>>;

pub struct Sessions {
    store: Arc<dyn SessionStore>,
    shards: Vec<Shard>,
    shard_cap: usize,
    pub idle: Duration,
    pub absolute: Duration,
    /// Last-seen is written back at most this often per session.
    coalesce_ms: u64,
    /// Last-seen times waiting to be written back by the background
    /// writer ([`Sessions::write_back`]); requests only append here.
    dirty: Mutex<Vec<(SessionHash, u64)>>,
    /// Sessions in the store, kept up to date here: sled can only count by
    /// reading every entry, which would stall a metrics scrape.
    stored: AtomicUsize,
    /// Most sessions one user may hold; past it, logging in ends the ones
    /// least recently used. 0: no limit.
    max_per_user: usize,
}

/// Pending last-seen write-backs kept at most; past that they are dropped,
/// which can only make a session expire a little sooner after a restart.
const MAX_DIRTY: usize = 200_000;

pub enum Lookup {
    Valid(Arc<Live>),
    /// No such session (never existed, revoked, or swept).
    Missing,
    Expired,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn SessionStore>,
        idle: Duration,
        absolute: Duration,
        cache_entries: usize,
    ) -> Self {
        // Idle expiry is enforced from the in-memory time; the stored copy
        // only needs to be fresh enough to survive a restart, so writing
        // it back every tenth of the idle timeout (at most a minute) is
        // plenty.
        let coalesce_ms = (idle.as_millis() as u64 / 10).clamp(1, 60_000);
        // The one full count, at start.
        let stored = store.len();
        Sessions {
            store,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            shard_cap: (cache_entries / SHARDS).max(16),
            idle,
            absolute,
            coalesce_ms,
            dirty: Mutex::new(Vec::new()),
            stored: AtomicUsize::new(stored),
            max_per_user: 0,
        }
    }

    /// Caps the sessions one user may hold (0: no cap). Without a cap,
    /// anyone with a password can fill the disk with sessions.
    pub fn with_max_per_user(mut self, n: usize) -> Self {
        self.max_per_user = n;
        self
    }

    fn shard(&self, h: &SessionHash) -> &Shard {
        &self.shards[h[0] as usize % SHARDS]
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Creates a session for `user`; returns the cookie id.
    pub fn create(
        &self,
        user: &str,
        ip: &str,
        user_agent: &str,
        remember: bool,
    ) -> Result<(SessionId, Arc<Live>)> {
        let id = SessionId::generate();
        let now = unix_millis();
        let rec = SessionRecord {
            user: user.to_string(),
            created: now,
            last_seen: now,
            expires: now + self.absolute.as_millis() as u64,
            ip: ip.to_string(),
            user_agent: user_agent.chars().take(256).collect(),
            remember,
        };
        let h = id.hash();
        self.store.put(&h, &rec)?;
        self.stored.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live::from_record(h, rec));
        self.cache_insert(h, Arc::clone(&live));
        if self.max_per_user > 0 {
            // The new session is stored: a failure to end old ones must not
            // turn this login into an error (the next login tries again).
            match self.end_least_recent(user, &h) {
                Ok(0) => {}
                Ok(ended) => tracing::info!(
                    event = "sessions_capped",
                    user,
                    ended,
                    max_per_user = self.max_per_user,
                    "oldest sessions ended at login"
                ),
                Err(e) => tracing::warn!(
                    user,
                    error = %e,
                    "could not end sessions past max_per_user"
                ),
            }
        }
        Ok((id, live))
    }

    /// Ends `user`'s least recently used sessions beyond the cap, never
    /// `keep` (the one just made). Returns how many ended.
    fn end_least_recent(&self, user: &str, keep: &SessionHash) -> Result<usize> {
        let mut mine = self.store.list(Some(user))?;
        if mine.len() <= self.max_per_user {
            return Ok(0);
        }
        // The stored last-seen lags behind the cache's by up to the
        // write-back interval; the cache's is the truth where it has one.
        let seen = |h: &SessionHash, r: &SessionRecord| {
            self.cached(h)
                .map_or(r.last_seen, |l| l.last_seen().max(r.last_seen))
        };
        mine.retain(|(h, _)| h != keep);
        mine.sort_by_cached_key(|(h, r)| seen(h, r));
        let excess = mine.len() + 1 - self.max_per_user;
        for (h, _) in mine.iter().take(excess) {
            self.revoke(h)?;
        }
        Ok(excess)
    }

    fn cache_insert(&self, h: SessionHash, live: Arc<Live>) {
        let mut s = self.shard(&h).lock();
        let k = cache_key(&h);
        if s.len() >= self.shard_cap && !s.contains_key(&k) {
            // Any entry will do: evicted sessions are reloaded from the store.
            if let Some(old) = s.keys().next().copied() {
                s.remove(&old);
            }
        }
        s.insert(k, live);
    }

    /// The cached session with exactly this hash, if any.
    fn cached(&self, h: &SessionHash) -> Option<Arc<Live>> {
        self.shard(h)
            .lock()
            .get(&cache_key(h))
            .filter(|l| l.hash == *h)
            .cloned()
    }

    /// Finds a session by its hash, enforcing both timeouts, and marks it
    /// seen. Reads the store only on a cache miss.
    pub fn lookup(&self, h: &SessionHash) -> Result<Lookup> {
        let now = unix_millis_coarse();
        let cached = self.cached(h);
        let live = match cached {
            Some(l) => l,
            None => match self.store.get_live(h)? {
                Some(live) => {
                    let l = Arc::new(live);
                    self.cache_insert(*h, Arc::clone(&l));
                    l
                }
                None => return Ok(Lookup::Missing),
            },
        };
        let idle_ms = self.idle.as_millis() as u64;
        if now >= live.expires || now.saturating_sub(live.last_seen()) >= idle_ms {
            self.evict(h);
            return Ok(Lookup::Expired);
        }
        // Most requests of a busy session fall in the same clock tick; not
        // writing then keeps the entry's cache line shared between the
        // worker threads instead of bouncing it on every request.
        if live.last_seen() < now {
            live.last_seen.store(now, Ordering::Relaxed);
        }
        let persisted = live.persisted_seen.load(Ordering::Relaxed);
        if now.saturating_sub(persisted) >= self.coalesce_ms
            && live
                .persisted_seen
                .compare_exchange(persisted, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // Only one request per interval and session gets here; the write
            // itself happens off the request path.
            let mut d = self.dirty.lock();
            if d.len() < MAX_DIRTY {
                d.push((*h, now));
            }
        }
        Ok(Lookup::Valid(live))
    }

    fn evict(&self, h: &SessionHash) {
        let mut s = self.shard(h).lock();
        let k = cache_key(h);
        if s.get(&k).is_some_and(|l| l.hash == *h) {
            s.remove(&k);
        }
    }

    /// Ends one session durably. Blocking (flushes): not on the hot path.
    pub fn revoke(&self, h: &SessionHash) -> Result<Option<SessionRecord>> {
        self.evict(h);
        let r = self.store.remove(h)?;
        self.evict(h);
        if r.is_some() {
            self.forget(1);
        }
        Ok(r)
    }

    /// Ends every session of a user durably. Blocking.
    pub fn revoke_user(&self, user: &str) -> Result<usize> {
        let hs = self.store.remove_user(user)?;
        // Cached sessions of this user that the index missed go too.
        for shard in &self.shards {
            shard.lock().retain(|_, l| &*l.user != user);
        }
        self.forget(hs.len());
        Ok(hs.len())
    }

    /// Removes expired sessions from the store. Blocking.
    pub fn sweep(&self) -> Result<usize> {
        let now = unix_millis();
        let idle_ms = self.idle.as_millis() as u64;
        let mut n = 0;
        let mut expired = Vec::new();
        self.store.for_each(&mut |h, rec| {
            let gone = now >= rec.expires
                || (now.saturating_sub(rec.last_seen) >= idle_ms
                    // The stored time says idle; the cache may know better.
                    && self.cached(h).is_none_or(|l| now.saturating_sub(l.last_seen()) >= idle_ms));
            if gone {
                expired.push(*h);
            }
        })?;
        for h in &expired {
            self.evict(h);
        }
        n += self.store.remove_expired(&expired)?;
        self.forget(n);
        Ok(n)
    }

    /// Writes pending last-seen times to the store (from a background
    /// thread). Returns how many were written.
    pub fn write_back(&self) -> Result<usize> {
        let pending = std::mem::take(&mut *self.dirty.lock());
        // One failed write must not cost the others theirs: try them all and
        // report the first error.
        let mut first_err = None;
        let mut written = 0;
        for (h, seen) in &pending {
            match self.store.touch(h, *seen) {
                Ok(()) => written += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Writes back in-memory last-seen times (at shutdown).
    pub fn persist_all(&self) -> Result<()> {
        self.write_back()?;
        for shard in &self.shards {
            let lives: Vec<Arc<Live>> = shard.lock().values().cloned().collect();
            for l in lives {
                if l.last_seen() != l.persisted_seen.load(Ordering::Relaxed) {
                    self.store.touch(&l.hash, l.last_seen())?;
                }
            }
        }
        self.store.flush()
    }

    pub fn list(&self, user: Option<&str>) -> Result<Vec<(SessionHash, SessionRecord)>> {
        let mut v = self.store.list(user)?;
        for (h, r) in v.iter_mut() {
            if let Some(l) = self.cached(h) {
                r.last_seen = r.last_seen.max(l.last_seen());
            }
        }
        v.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen));
        Ok(v)
    }

    /// Sessions in the store (expired ones count until they are swept).
    pub fn count(&self) -> usize {
        self.stored.load(Ordering::Relaxed)
    }

    fn forget(&self, n: usize) {
        let _ = self
            .stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(n))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions over `store` with this idle timeout (ten minutes' lifetime,
    /// a cache of 100).
    fn sessions(store: &Store, idle: Duration) -> Sessions {
        Sessions::new(Arc::new(store.clone()), idle, Duration::from_secs(600), 100)
    }

    /// Opens the store at `dir` again after a `Store` there was dropped:
    /// sled's background flusher lets go of the file lock a moment later.
    fn reopen(dir: &std::path::Path) -> Store {
        for _ in 0..200 {
            match Store::open(dir, 1 << 20) {
                Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(25)),
                other => return other.unwrap(),
            }
        }
        panic!("the store at {} stayed locked", dir.display());
    }

    /// A record of `user` seen at `now`, expiring a minute later.
    fn live_record(user: &str, now: u64) -> SessionRecord {
        SessionRecord {
            user: user.into(),
            created: now,
            last_seen: now,
            expires: now + 60_000,
            ip: String::new(),
            user_agent: String::new(),
            remember: false,
        }
    }

    #[test]
    fn a_login_past_the_cap_ends_the_least_recently_used_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let s = sessions(&store, Duration::from_secs(600)).with_max_per_user(3);
        let pause = || std::thread::sleep(Duration::from_millis(30));
        let (_, other) = s.create("bob", "", "", false).unwrap();
        let mut made = Vec::new();
        for _ in 0..3 {
            made.push(s.create("ann", "", "", false).unwrap().1.hash);
            pause();
        }
        // The first is used again, so the second is now the least recent.
        assert!(matches!(s.lookup(&made[0]).unwrap(), Lookup::Valid(_)));
        pause();
        let newest = s.create("ann", "", "", false).unwrap().1.hash;
        let valid = |h: &SessionHash| matches!(s.lookup(h).unwrap(), Lookup::Valid(_));
        assert!(!valid(&made[1]), "the least recently used one ends");
        assert!(valid(&made[0]) && valid(&made[2]) && valid(&newest));
        assert_eq!(s.list(Some("ann")).unwrap().len(), 3);
        assert!(valid(&other.hash), "other users' sessions are not counted");
    }

    #[test]
    fn records_round_trip_and_old_json_still_reads() {
        let r = SessionRecord {
            user: "ann".into(),
            created: 1,
            last_seen: 2,
            expires: 3,
            ip: "::1".into(),
            user_agent: "curl".into(),
            remember: true,
        };
        let bytes = encode(&r).unwrap();
        assert!(bytes.len() < 32, "{}", bytes.len());
        assert_eq!(decode(&bytes).unwrap(), r);
        assert_eq!(decode(&serde_json::to_vec(&r).unwrap()).unwrap(), r);
        assert!(decode(b"").is_err());
        assert!(decode(&[RECORD_V1, 0xff]).is_err());
    }

    #[test]
    fn the_cold_path_reads_what_a_full_decode_reads() {
        let h = [9u8; HASH_LEN];
        let r = SessionRecord {
            user: "ann".into(),
            created: 1,
            last_seen: 2,
            expires: 3,
            ip: "192.0.2.1".into(),
            user_agent: "Mozilla/5.0".into(),
            remember: true,
        };
        for bytes in [encode(&r).unwrap(), serde_json::to_vec(&r).unwrap()] {
            let l = decode_live(&h, &bytes).unwrap();
            assert_eq!(
                (&*l.user, l.expires, l.last_seen(), l.remember, l.hash),
                ("ann", 3, 2, true, h)
            );
        }
        assert!(decode_live(&h, &[RECORD_V1, 0xff]).is_err());
    }

    #[test]
    fn a_cached_session_stays_small() {
        // With the Arc's two counters this is mimalloc's 80-byte class;
        // 100k cached sessions are measured by the bench (scenario 8).
        assert!(
            std::mem::size_of::<Live>() <= 64,
            "{}",
            std::mem::size_of::<Live>()
        );
    }

    #[test]
    fn sessions_sharing_a_cache_key_take_turns_but_never_mix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let s = sessions(&store, Duration::from_secs(60));
        let now = unix_millis();
        let rec = |user: &str| live_record(user, now);
        // Same bytes 8..16 (the cache key), different hashes.
        let (mut a, mut b) = ([1u8; HASH_LEN], [1u8; HASH_LEN]);
        a[0] = 0xa0;
        b[0] = 0xb0;
        assert_eq!(cache_key(&a), cache_key(&b));
        SessionStore::put(&store, &a, &rec("ann")).unwrap();
        SessionStore::put(&store, &b, &rec("bob")).unwrap();
        for _ in 0..3 {
            for (h, who) in [(&a, "ann"), (&b, "bob"), (&a, "ann")] {
                match s.lookup(h).unwrap() {
                    Lookup::Valid(l) => assert_eq!((&*l.user, l.hash), (who, *h)),
                    _ => panic!("{who}'s session should be valid"),
                }
            }
        }
        // Revoking one leaves the other alone.
        s.revoke(&a).unwrap();
        assert!(matches!(s.lookup(&a).unwrap(), Lookup::Missing));
        assert!(matches!(s.lookup(&b).unwrap(), Lookup::Valid(_)));
    }

    #[test]
    fn cookie_values_parse_strictly() {
        let id = SessionId::generate();
        let v = id.to_cookie_value();
        assert_eq!(v.len(), 43);
        assert_eq!(SessionId::from_cookie_value(&v).unwrap().0, id.0);
        assert!(SessionId::from_cookie_value("").is_none());
        assert!(SessionId::from_cookie_value(&v[..42]).is_none());
        assert!(SessionId::from_cookie_value(&format!("{v}A")).is_none());
        assert!(SessionId::from_cookie_value(&"!".repeat(43)).is_none());
    }

    #[test]
    fn store_keeps_only_hashes_and_revocation_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let s = sessions(&store, Duration::from_secs(60));
        let (id, _) = s.create("alice", "127.0.0.1", "test", false).unwrap();
        assert!(store.sessions.get(id.0).unwrap().is_none());
        assert!(store.sessions.get(id.hash()).unwrap().is_some());
        assert!(matches!(s.lookup(&id.hash()).unwrap(), Lookup::Valid(_)));
        s.revoke(&id.hash()).unwrap();
        assert!(matches!(s.lookup(&id.hash()).unwrap(), Lookup::Missing));
    }

    #[test]
    fn write_back_never_revives_a_revoked_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        // Idle 200 ms: last-seen is written back every 20 ms of activity.
        let s = sessions(&store, Duration::from_millis(200));
        let (id, _) = s.create("zoe", "", "", false).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(s.lookup(&id.hash()).unwrap(), Lookup::Valid(_)));
        s.revoke(&id.hash()).unwrap();
        s.write_back().unwrap();
        assert!(SessionStore::get(&store, &id.hash()).unwrap().is_none());
        assert!(matches!(s.lookup(&id.hash()).unwrap(), Lookup::Missing));
    }

    #[test]
    fn the_count_follows_creates_revocations_and_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let s = sessions(&store, Duration::from_millis(300));
        let (a, _) = s.create("ann", "", "", false).unwrap();
        s.create("ann", "", "", false).unwrap();
        s.create("bob", "", "", false).unwrap();
        s.create("cat", "", "", false).unwrap();
        assert_eq!(s.count(), 4);
        s.revoke(&a.hash()).unwrap();
        s.revoke(&a.hash()).unwrap(); // already gone: no double count
        assert_eq!(s.count(), 3);
        assert_eq!(s.revoke_user("ann").unwrap(), 1);
        assert_eq!(s.count(), 2);
        // A restart counts what the store holds.
        let again = sessions(&store, Duration::from_millis(300));
        assert_eq!(again.count(), 2);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(s.sweep().unwrap(), 2);
        assert_eq!(s.count(), 0);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn an_unreadable_record_does_not_stop_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        store
            .sessions
            .insert([7u8; HASH_LEN], &b"\xffnot a record"[..])
            .unwrap();
        let s = sessions(&store, Duration::from_millis(50));
        s.create("amy", "", "", false).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(s.sweep().unwrap(), 1);
        // The unreadable one is left alone; looking it up fails closed.
        assert!(s.lookup(&[7u8; HASH_LEN]).is_err());
    }

    #[test]
    fn a_store_with_the_old_32_byte_keys_is_upgraded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_millis();
        let rec = |user: &str| live_record(user, now);
        let ids: Vec<SessionId> = (0..3).map(|_| SessionId::generate()).collect();
        let owners = ["ann", "ann", "bob"];
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            // Written as an older version did: all of SHA-256, no marker.
            store.meta.remove(KEYS_UPGRADED).unwrap();
            for (id, who) in ids.iter().zip(owners) {
                let full: [u8; 32] = Sha256::digest(id.0).into();
                store
                    .sessions
                    .insert(full, encode(&rec(who)).unwrap())
                    .unwrap();
                let mut k = who.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(&full);
                store.sessions_by_user.insert(k, &[]).unwrap();
            }
            // An upgrade interrupted after the first one's new key.
            store
                .sessions
                .insert(ids[0].hash(), encode(&rec("ann")).unwrap())
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        for k in store.sessions.iter().keys() {
            assert_eq!(k.unwrap().len(), HASH_LEN);
        }
        assert_eq!(SessionStore::len(&store), 3);
        let s = sessions(&store, Duration::from_secs(60));
        for (id, who) in ids.iter().zip(owners) {
            match s.lookup(&id.hash()).unwrap() {
                Lookup::Valid(l) => assert_eq!(&*l.user, who),
                _ => panic!("{who}'s old session should still be valid"),
            }
        }
        // The per-user index moved too: ending ann's sessions ends both.
        assert_eq!(s.revoke_user("ann").unwrap(), 2);
        assert!(matches!(
            s.lookup(&ids[2].hash()).unwrap(),
            Lookup::Valid(_)
        ));
        assert_eq!(store.sessions_by_user.len(), 1);
        drop(s);
        drop(store);
        // Opening again changes nothing.
        let store = reopen(dir.path());
        assert_eq!(SessionStore::len(&store), 1);
        assert_eq!(store.sessions_by_user.len(), 1);
    }

    #[test]
    fn old_and_new_listing_ids_name_the_same_session() {
        let id = SessionId::generate();
        let full: [u8; 32] = Sha256::digest(id.0).into();
        assert_eq!(parse_hash_hex(&hex::encode(full)), Some(id.hash()));
        assert_eq!(parse_hash_hex(&hex::encode(id.hash())), Some(id.hash()));
        for bad in ["", "abc", &hex::encode(full)[..40], &"zz".repeat(16)] {
            assert_eq!(parse_hash_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn idle_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let s = sessions(&store, Duration::from_millis(50));
        let (id, _) = s.create("bob", "", "", false).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(s.lookup(&id.hash()).unwrap(), Lookup::Expired));
        assert_eq!(s.sweep().unwrap(), 1);
        assert_eq!(s.count(), 0);
    }
}
