//! The embedded store: one sled database in the configured folder.
//!
//! Accounts and sessions reach it through the traits in [`crate::accounts`]
//! and [`crate::session`], so a shared backend for several replicas can
//! replace it without touching the gateway.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} is in use by another process (a running gateway?): stop it, or run this command against the gateway's admin socket")]
    Locked { path: String },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    /// Bringing an older layout up to date failed part-way; what was done
    /// is kept and the next open carries on.
    #[error("upgrading the sessions in {path} to the current key format failed: {source}. Nothing is lost (each session is copied before its old entry is removed): fix the cause (a full disk?) and start again to finish the upgrade")]
    Upgrade {
        path: String,
        source: Box<StoreError>,
    },
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    pub db: sled::Db,
    pub users: sled::Tree,
    pub sessions: sled::Tree,
    /// user key + 0x00 + session hash -> (), to end all of a user's sessions.
    pub sessions_by_user: sled::Tree,
    pub meta: sled::Tree,
}

impl Store {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        }
        let db = sled::Config::new()
            .path(path.join("db"))
            .cache_capacity(cache_bytes)
            // sled writes its log every flush_every_ms; revocations flush
            // explicitly so they are durable before the response.
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked {
                        path: path.display().to_string(),
                    }
                }
                other => StoreError::Sled(other),
            })?;
        let store = Store {
            users: db.open_tree("users")?,
            sessions: db.open_tree("sessions")?,
            sessions_by_user: db.open_tree("sessions_by_user")?,
            meta: db.open_tree("meta")?,
            db,
        };
        // Older layouts are brought up to date before anyone reads them.
        crate::session::upgrade_keys(&store).map_err(|e| StoreError::Upgrade {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        Ok(store)
    }

    /// A secret kept in the store, created on first use (CSRF signing key).
    pub fn secret(&self, name: &str) -> Result<[u8; 32]> {
        use rand::RngCore;
        let key = format!("secret:{name}");
        let mut fresh = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        let _ =
            self.meta
                .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&fresh[..]))?;
        let v = self
            .meta
            .get(key.as_bytes())?
            .ok_or_else(|| StoreError::Corrupt(format!("{key} missing")))?;
        let mut out = [0u8; 32];
        if v.len() != 32 {
            return Err(StoreError::Corrupt(format!("{key} has the wrong length")));
        }
        out.copy_from_slice(&v);
        self.db.flush()?;
        Ok(out)
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_upgrade_says_where_why_and_what_to_do() {
        let e = StoreError::Upgrade {
            path: "/var/lib/portcullis".into(),
            source: Box::new(StoreError::Sled(sled::Error::Io(std::io::Error::other(
                "No space left on device",
            )))),
        };
        let msg = e.to_string();
        for part in [
            "/var/lib/portcullis",
            "No space left on device",
            "Nothing is lost",
            "start again",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }
}
