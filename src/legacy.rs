//! Verifying password hashes in every format the store may hold: our own
//! argon2id PHC strings, and hashes imported from other systems.

/// Verifies `password` against a stored hash of any supported format.
/// Blocking and deliberately slow: run it on the hash pool.
pub fn verify_any(password: &str, stored: &str) -> bool {
    if stored.starts_with("$argon2") {
        return crate::passwords::verify_blocking(password, stored);
    }
    false
}
