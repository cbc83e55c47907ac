//! Device cookies (OWASP's answer to lockout by distributed guessing): a
//! browser that signed in to an account carries a signed note saying so,
//! and its logins to that account are not held to the per-account hourly
//! cap, which attackers everywhere share. Without it, anyone with a few
//! dozen addresses could keep a user out for an hour; with it, they keep
//! out only browsers that never signed in (the per-address and
//! per-account-and-address limits still apply to everyone).
//!
//! The note is `expiry (8 bytes) || HMAC-SHA256(key, expiry, account,
//! stamp)[..16]` in base64url, where the stamp is the account's password
//! hash: it names no account (the login form does), cannot be made for
//! another account or a later expiry, holds no session, and dies with the
//! password (a reset, or an account deleted and made again), so a browser
//! that knew an old password stays known to nobody. Its failures are
//! counted on their own ([`crate::throttle::Throttle::check_for`]), so a
//! copied cookie gains nothing from many addresses.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How long a browser stays known after its last successful login.
pub const LIFETIME_SECS: u64 = 365 * 24 * 3600;

pub struct DeviceKey([u8; 32]);

impl DeviceKey {
    pub fn new(secret: [u8; 32]) -> Self {
        DeviceKey(secret)
    }

    fn tag(&self, account: &str, stamp: &str, expiry: u64) -> [u8; 16] {
        // HMAC takes a key of any length: this cannot fail.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(b"portcullis-device-v2:");
        m.update(&expiry.to_be_bytes());
        // The account's length first, so no two (account, stamp) pairs
        // read alike.
        m.update(&(account.len() as u64).to_be_bytes());
        m.update(account.as_bytes());
        m.update(stamp.as_bytes());
        let full: [u8; 32] = m.finalize().into_bytes().into();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// The cookie value for a browser that just signed in to `account`
    /// (its normalised key) whose password hash is `stamp`.
    pub fn issue(&self, account: &str, stamp: &str, now_secs: u64) -> String {
        let expiry = now_secs.saturating_add(LIFETIME_SECS);
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&expiry.to_be_bytes());
        raw[8..].copy_from_slice(&self.tag(account, stamp, expiry));
        B64.encode(raw)
    }

    /// True if `value` was issued for `account` with this `stamp` and has
    /// not expired.
    pub fn verify(&self, value: &str, account: &str, stamp: &str, now_secs: u64) -> bool {
        if value.len() != 32 {
            return false;
        }
        let Ok(raw) = B64.decode(value) else {
            return false;
        };
        let Ok(raw) = <[u8; 24]>::try_from(raw.as_slice()) else {
            return false;
        };
        let mut e = [0u8; 8];
        e.copy_from_slice(&raw[..8]);
        let expiry = u64::from_be_bytes(e);
        expiry > now_secs && bool::from(self.tag(account, stamp, expiry).ct_eq(&raw[8..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_good_for_its_account_until_it_expires() {
        let k = DeviceKey::new([3; 32]);
        let v = k.issue("alice", "$argon2id$a", 1_000);
        assert!(k.verify(&v, "alice", "$argon2id$a", 1_000));
        assert!(k.verify(&v, "alice", "$argon2id$a", 1_000 + LIFETIME_SECS - 1));
        assert!(
            !k.verify(&v, "alice", "$argon2id$a", 1_000 + LIFETIME_SECS),
            "expired"
        );
        assert!(
            !k.verify(&v, "bob", "$argon2id$a", 1_000),
            "another account"
        );
        assert!(
            !k.verify(&v, "alice", "$argon2id$b", 1_000),
            "the password changed"
        );
        assert!(
            !k.verify(&v, "alic", "e$argon2id$a", 1_000),
            "a shifted boundary"
        );
        assert!(
            !DeviceKey::new([4; 32]).verify(&v, "alice", "$argon2id$a", 1_000),
            "another key"
        );
        // A later expiry cannot be written in.
        let mut raw = B64.decode(&v).unwrap();
        raw[0] ^= 1;
        assert!(!k.verify(&B64.encode(&raw), "alice", "$argon2id$a", 1_000));
        for junk in [
            "",
            "x",
            &v[..31],
            &format!("{v}A"),
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert!(!k.verify(junk, "alice", "$argon2id$a", 1_000), "{junk:?}");
        }
    }
}
