//! Account and session administration, the same whether the CLI opens the
//! store itself or a running gateway does it over its admin socket.
//!
//! sled lets one process open a database, so while a gateway serves a
//! store, `portcullis user ...` sends its command as one JSON line to the
//! gateway's Unix socket (`admin.sock` in the storage folder, mode 0600)
//! and prints the JSON answer. Without a gateway, it opens the store and
//! runs the very same [`execute`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::accounts::{check_email, check_new_username, check_username, user_key, Accounts, User};
use crate::audit::{Audit, Event};
use crate::password_rules::PasswordRules;
use crate::policy::reload::PolicyHandle;
use crate::session::{parse_hash_hex, short_tag, SessionHash, Sessions};
use crate::store::StoreError;
use crate::throttle::Throttle;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    UserAdd {
        name: String,
        email: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
        groups: Vec<String>,
        superuser: bool,
        password: String,
        /// Operators may set any password; rules apply to self-service.
        check_rules: bool,
    },
    UserPasswd {
        name: String,
        password: String,
    },
    UserList,
    UserShow {
        name: String,
    },
    UserDisable {
        name: String,
    },
    UserEnable {
        name: String,
    },
    UserDelete {
        name: String,
    },
    UserGroup {
        name: String,
        add: bool,
        group: String,
    },
    UserGrant {
        name: String,
        permission: String,
        grant: bool,
    },
    UserSet {
        name: String,
        field: String,
        value: String,
    },
    UserUnlock {
        name: String,
    },
    /// Users parsed from a Django dump or an htpasswd file, hashes kept.
    UserImport {
        users: Vec<User>,
        update: bool,
    },
    SessionList {
        user: Option<String>,
    },
    SessionRevokeUser {
        user: String,
    },
    SessionRevoke {
        id: String,
    },
    PolicyReload,
}

/// What a command may touch.
pub struct Ops<'a> {
    pub accounts: &'a Accounts,
    pub sessions: &'a Sessions,
    pub rules: &'a PasswordRules,
    pub custom_fields: &'a [crate::config::UserField],
    pub throttle: Option<&'a Throttle>,
    pub audit: Option<&'a Audit>,
    pub policy: Option<&'a PolicyHandle>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot talk to the gateway's admin socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Remote(String),
}

fn user_json(u: &User) -> Value {
    json!({
        "username": u.username,
        "email": u.email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "active": u.is_active,
        "superuser": u.is_superuser,
        "groups": u.groups,
        "permissions": u.permissions,
        "date_joined": crate::clock::rfc3339(u.date_joined),
        "last_login": u.last_login.map(crate::clock::rfc3339),
        "password_algorithm": u.password_algorithm(),
        "fields": u.fields,
    })
}

fn check_perm(p: &str) -> Result<(), AdminError> {
    match p.split_once('.') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !p.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(AdminError::Invalid(format!(
            "invalid permission {p:?}: write it as resource.action, like invoices.view"
        ))),
    }
}

/// Operator actions (the CLI, directly or over the admin socket) say so:
/// `by` is "operator", never a name that could be an account's.
fn emit(ops: &Ops<'_>, ev: Event) {
    if let Some(a) = ops.audit {
        a.emit(ev.with("by", "operator"));
    }
}

/// Runs one command. Blocking (hashes passwords, flushes the store).
pub fn execute(ops: &Ops<'_>, cmd: Command) -> Result<Value, AdminError> {
    match cmd {
        Command::UserAdd {
            name,
            email,
            first_name,
            last_name,
            groups,
            superuser,
            password,
            check_rules,
        } => {
            check_new_username(&name).map_err(AdminError::Invalid)?;
            if let Some(e) = &email {
                check_email(e).map_err(AdminError::Invalid)?;
            }
            if password.trim().is_empty() {
                return Err(AdminError::Invalid(
                    "the password is empty or only spaces".into(),
                ));
            }
            if check_rules {
                crate::password_rules::validate(&password, &name, email.as_deref(), ops.rules)
                    .map_err(|e| AdminError::Invalid(e.to_string()))?;
            }
            let mut u = User::new(&name);
            u.email = email;
            u.first_name = first_name.unwrap_or_default();
            u.last_name = last_name.unwrap_or_default();
            u.groups = groups;
            u.groups.dedup();
            u.is_superuser = superuser;
            u.password = crate::passwords::hash_blocking(&password).map_err(AdminError::Invalid)?;
            ops.accounts.create(&u)?;
            emit(
                ops,
                Event::new("user_created").with("user", u.username.as_str()),
            );
            Ok(user_json(&u))
        }
        Command::UserPasswd { name, password } => {
            if password.trim().is_empty() {
                return Err(AdminError::Invalid(
                    "the password is empty or only spaces".into(),
                ));
            }
            let hash = crate::passwords::hash_blocking(&password).map_err(AdminError::Invalid)?;
            let u = ops.accounts.modify(&name, |u| {
                u.password = hash;
                Ok(())
            })?;
            let ended = ops.sessions.revoke_user(&u.key())?;
            emit(
                ops,
                Event::new("password_changed")
                    .with("user", u.username.as_str())
                    .with("sessions_ended", ended),
            );
            Ok(json!({ "username": u.username, "sessions_ended": ended }))
        }
        Command::UserList => Ok(Value::Array(
            ops.accounts.list()?.iter().map(user_json).collect(),
        )),
        Command::UserShow { name } => {
            let u = ops
                .accounts
                .get(&name)?
                .ok_or_else(|| AdminError::Invalid(format!("no user named {name:?}")))?;
            let mut v = user_json(&u);
            v["sessions"] = json!(ops.sessions.list(Some(&u.key()))?.len());
            Ok(v)
        }
        Command::UserDisable { name } => {
            let u = ops.accounts.modify(&name, |u| {
                u.is_active = false;
                Ok(())
            })?;
            let ended = ops.sessions.revoke_user(&u.key())?;
            emit(
                ops,
                Event::new("user_disabled")
                    .with("user", u.username.as_str())
                    .with("sessions_ended", ended),
            );
            Ok(json!({ "username": u.username, "active": false, "sessions_ended": ended }))
        }
        Command::UserEnable { name } => {
            let u = ops.accounts.modify(&name, |u| {
                u.is_active = true;
                Ok(())
            })?;
            emit(
                ops,
                Event::new("user_enabled").with("user", u.username.as_str()),
            );
            Ok(json!({ "username": u.username, "active": true }))
        }
        Command::UserDelete { name } => {
            let key = user_key(&name);
            let ended = ops.sessions.revoke_user(&key)?;
            if !ops.accounts.delete(&name)? {
                return Err(AdminError::Invalid(format!("no user named {name:?}")));
            }
            emit(
                ops,
                Event::new("user_deleted")
                    .with("user", name.as_str())
                    .with("sessions_ended", ended),
            );
            Ok(json!({ "username": name, "deleted": true, "sessions_ended": ended }))
        }
        Command::UserGroup { name, add, group } => {
            if group.is_empty() || group.contains(char::is_whitespace) || group.contains(',') {
                return Err(AdminError::Invalid(format!("invalid group name {group:?}")));
            }
            let u = ops.accounts.modify(&name, |u| {
                if add {
                    if !u.groups.contains(&group) {
                        u.groups.push(group.clone());
                    }
                } else {
                    u.groups.retain(|g| g != &group);
                }
                Ok(())
            })?;
            Ok(json!({ "username": u.username, "groups": u.groups }))
        }
        Command::UserGrant {
            name,
            permission,
            grant,
        } => {
            check_perm(&permission)?;
            let u = ops.accounts.modify(&name, |u| {
                if grant {
                    if !u.permissions.contains(&permission) {
                        u.permissions.push(permission.clone());
                    }
                } else {
                    u.permissions.retain(|p| p != &permission);
                }
                Ok(())
            })?;
            Ok(json!({ "username": u.username, "permissions": u.permissions }))
        }
        Command::UserSet { name, field, value } => {
            let u = ops.accounts.modify(&name, |u| {
                match field.as_str() {
                    "email" => {
                        if value.is_empty() {
                            u.email = None
                        } else {
                            check_email(&value)?;
                            u.email = Some(value.clone());
                            u.email_verified = true;
                        }
                    }
                    "first_name" => u.first_name = value.clone(),
                    "last_name" => u.last_name = value.clone(),
                    "superuser" => u.is_superuser = parse_bool(&value)?,
                    f if ops.custom_fields.iter().any(|c| c.name == f) => {
                        if let Some(def) = ops.custom_fields.iter().find(|c| c.name == f) {
                            if !value.is_empty() {
                                def.check(&value)?;
                            }
                        }
                        if value.is_empty() {
                            u.fields.remove(f);
                        } else {
                            u.fields.insert(f.to_string(), value.clone());
                        }
                    }
                    f => return Err(format!("unknown field {f:?}: set email, first_name, last_name, superuser or a custom field declared in the config")),
                }
                Ok(())
            })?;
            Ok(user_json(&u))
        }
        Command::UserUnlock { name } => {
            if let Some(t) = ops.throttle {
                t.unlock(&user_key(&name));
            }
            Ok(json!({ "username": name, "unlocked": true }))
        }
        Command::UserImport { users, update } => {
            // Check everything first so a bad record stops the import before
            // anything is written.
            for u in &users {
                check_username(&u.username)
                    .map_err(|m| AdminError::Invalid(format!("{}: {m}", u.username)))?;
            }
            let (mut created, mut updated, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
            for u in users {
                match ops.accounts.get(&u.username)? {
                    Some(_) if update => {
                        let fresh = u.clone();
                        ops.accounts.modify(&u.username, move |old| {
                            let joined = old.date_joined;
                            *old = fresh;
                            old.date_joined = joined;
                            Ok(())
                        })?;
                        updated.push(u.username);
                    }
                    Some(_) => skipped.push(u.username),
                    None => {
                        ops.accounts.create(&u)?;
                        emit(
                            ops,
                            Event::new("user_created")
                                .with("user", u.username.as_str())
                                .with("via", "import"),
                        );
                        created.push(u.username);
                    }
                }
            }
            Ok(json!({ "created": created, "updated": updated, "existing": skipped }))
        }
        Command::SessionList { user } => {
            let key = user.as_deref().map(user_key);
            let list = ops.sessions.list(key.as_deref())?;
            Ok(Value::Array(
                list.iter()
                    .map(|(h, r)| {
                        json!({
                            "id": hex::encode(h),
                            "tag": short_tag(h),
                            "user": r.user,
                            "created": crate::clock::rfc3339(r.created / 1000),
                            "last_seen": crate::clock::rfc3339(r.last_seen / 1000),
                            "expires": crate::clock::rfc3339(r.expires / 1000),
                            "ip": r.ip,
                            "user_agent": r.user_agent,
                        })
                    })
                    .collect(),
            ))
        }
        Command::SessionRevokeUser { user } => {
            let n = ops.sessions.revoke_user(&user_key(&user))?;
            emit(
                ops,
                Event::new("session_revoked")
                    .with("user", user.as_str())
                    .with("count", n),
            );
            Ok(json!({ "user": user, "revoked": n }))
        }
        Command::SessionRevoke { id } => {
            let matches: Vec<SessionHash> = if let Some(h) = parse_hash_hex(&id) {
                vec![h]
            } else if id.len() >= 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                // A short tag from `session list`: accept it if unambiguous.
                ops.sessions
                    .list(None)?
                    .into_iter()
                    .map(|(h, _)| h)
                    .filter(|h| hex::encode(h).starts_with(&id.to_ascii_lowercase()))
                    .collect()
            } else {
                return Err(AdminError::Invalid(format!(
                    "invalid session id {id:?}: use the id or tag from `session list`"
                )));
            };
            if matches.len() > 1 {
                return Err(AdminError::Invalid(format!(
                    "session tag {id:?} is ambiguous; give more of the id"
                )));
            }
            let Some(h) = matches.first() else {
                return Err(AdminError::Invalid(format!("no session {id:?}")));
            };
            match ops.sessions.revoke(h)? {
                Some(r) => {
                    emit(
                        ops,
                        Event::new("session_revoked")
                            .with("user", r.user.as_str())
                            .with("session", short_tag(h)),
                    );
                    Ok(json!({ "revoked": 1, "user": r.user }))
                }
                None => Err(AdminError::Invalid(format!("no session {id:?}"))),
            }
        }
        Command::PolicyReload => match ops.policy {
            Some(p) => p
                .reload("admin")
                .map(|_| json!({ "reloaded": true }))
                .map_err(|r| AdminError::Invalid(r.to_string())),
            None => Err(AdminError::Invalid(
                "no gateway is running to reload".into(),
            )),
        },
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

pub fn socket_path(storage: &Path) -> PathBuf {
    storage.join("admin.sock")
}

/// Sends a command to a running gateway. `Ok(None)` if none is listening.
pub fn send(storage: &Path, cmd: &Command) -> Result<Option<Value>, AdminError> {
    use std::io::{BufRead, BufReader, Write};
    let path = socket_path(storage);
    let stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(source) => return Err(AdminError::Socket { path, source }),
    };
    let sock_err = |source| AdminError::Socket {
        path: path.clone(),
        source,
    };
    let mut w = stream.try_clone().map_err(sock_err)?;
    let line = serde_json::to_string(cmd).map_err(|e| AdminError::Invalid(e.to_string()))?;
    w.write_all(line.as_bytes())
        .and_then(|_| w.write_all(b"\n"))
        .map_err(sock_err)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(sock_err)?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|e| AdminError::Remote(format!("bad answer from gateway: {e}")))?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(AdminError::Remote(e.to_string())),
        None => Ok(Some(v.get("ok").cloned().unwrap_or(Value::Null))),
    }
}

/// Binds the admin socket. Done before the gateway starts serving, so by
/// the time it answers requests, account commands reach it too.
pub fn bind(storage: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let path = socket_path(storage);
    let _ = std::fs::remove_file(&path);
    // Created under a restrictive umask so there is no window in which
    // another local user could connect.
    let old = unsafe { libc::umask(0o177) };
    let listener = std::os::unix::net::UnixListener::bind(&path);
    unsafe { libc::umask(old) };
    let listener = listener?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the admin socket for a running gateway until the task is dropped.
pub async fn serve(
    app: Arc<crate::app::App>,
    listener: std::os::unix::net::UnixListener,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<Command>(&line) {
                    Err(e) => json!({ "error": format!("bad command: {e}") }),
                    Ok(cmd) => {
                        let app2 = Arc::clone(&app);
                        match tokio::task::spawn_blocking(move || execute(&app2.ops(), cmd)).await {
                            Ok(Ok(v)) => json!({ "ok": v }),
                            Ok(Err(e)) => json!({ "error": e.to_string() }),
                            Err(e) => json!({ "error": e.to_string() }),
                        }
                    }
                };
                let mut s = answer.to_string();
                s.push('\n');
                if w.write_all(s.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}
