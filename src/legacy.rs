//! Verifying password hashes in every format the store may hold: our own
//! argon2id PHC strings, and hashes imported from Django or Apache htpasswd.
//!
//! Each imported format is checked the way its origin checks it, so people
//! keep their passwords across an import; the caller replaces the hash with
//! argon2id after the first successful login. Stored hashes came from a file
//! an operator handed us, so every cost parameter is capped: a crafted hash
//! must not be able to pin a hashing thread or exhaust memory.

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Django's own default is 1,000,000 (5.2); ten times that still verifies
/// in a few seconds, while a larger count is more likely an attack.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Each step doubles the work; 16 already takes several seconds.
pub const MAX_BCRYPT_COST: u32 = 16;
/// Django's default is 100 MiB; anything far beyond that is not a real hash.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
pub const MAX_ARGON2_TIME_COST: u32 = 64;

/// A stored hash, split into its scheme and the part that scheme reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme<'a> {
    /// Our own PHC string; `variant` is its algorithm name.
    Argon2 {
        variant: &'static str,
    },
    Pbkdf2Sha256(&'a str),
    Pbkdf2Sha1(&'a str),
    /// The PHC string after Django's `argon2` prefix.
    DjangoArgon2(&'a str),
    /// The bcrypt hash after Django's `bcrypt_sha256$` prefix.
    BcryptSha256(&'a str),
    /// A bare bcrypt hash, from htpasswd or after Django's `bcrypt$`.
    Bcrypt(&'a str),
    Unusable,
    Unknown,
}

fn classify(stored: &str) -> Scheme<'_> {
    // Django marks a password unusable with a leading `!`; an empty hash
    // likewise can never match anything.
    if stored.is_empty() || stored.starts_with('!') {
        return Scheme::Unusable;
    }
    if let Some(rest) = stored.strip_prefix("pbkdf2_sha256$") {
        return Scheme::Pbkdf2Sha256(rest);
    }
    if let Some(rest) = stored.strip_prefix("pbkdf2_sha1$") {
        return Scheme::Pbkdf2Sha1(rest);
    }
    if let Some(rest) = stored.strip_prefix("argon2") {
        if rest.starts_with('$') {
            return Scheme::DjangoArgon2(rest);
        }
    }
    if let Some(rest) = stored.strip_prefix("bcrypt_sha256$") {
        return Scheme::BcryptSha256(rest);
    }
    if let Some(rest) = stored.strip_prefix("bcrypt$") {
        return Scheme::Bcrypt(rest);
    }
    for (prefix, variant) in [
        ("$argon2id$", "argon2id"),
        ("$argon2i$", "argon2i"),
        ("$argon2d$", "argon2d"),
    ] {
        if stored.starts_with(prefix) {
            return Scheme::Argon2 { variant };
        }
    }
    if is_bcrypt_prefix(stored) {
        return Scheme::Bcrypt(stored);
    }
    Scheme::Unknown
}

/// `$2x$` (the old sign-extension bug) is left out on purpose: neither
/// Django's bcrypt library nor a current htpasswd writes it.
fn is_bcrypt_prefix(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix))
}

/// The scheme of a stored hash, for display; never the hash itself.
///
/// One of "argon2id", "pbkdf2_sha256", "pbkdf2_sha1", "django_argon2",
/// "bcrypt_sha256", "bcrypt", "unusable" or "unknown"; our own PHC strings
/// with the older argon2 variants report "argon2i" or "argon2d".
pub fn algorithm_name(stored: &str) -> &'static str {
    match classify(stored) {
        Scheme::Argon2 { variant } => variant,
        Scheme::Pbkdf2Sha256(_) => "pbkdf2_sha256",
        Scheme::Pbkdf2Sha1(_) => "pbkdf2_sha1",
        Scheme::DjangoArgon2(_) => "django_argon2",
        Scheme::BcryptSha256(_) => "bcrypt_sha256",
        Scheme::Bcrypt(_) => "bcrypt",
        Scheme::Unusable => "unusable",
        Scheme::Unknown => "unknown",
    }
}

/// Verifies `password` against a stored hash of any supported format.
/// Blocking and deliberately slow: run it on the hash pool.
pub fn verify_any(password: &str, stored: &str) -> bool {
    match classify(stored) {
        Scheme::Argon2 { .. } => crate::passwords::verify_blocking(password, stored),
        Scheme::Pbkdf2Sha256(rest) => {
            verify_django_pbkdf2(password, stored, "pbkdf2_sha256", rest, pbkdf2_sha256)
        }
        Scheme::Pbkdf2Sha1(rest) => {
            verify_django_pbkdf2(password, stored, "pbkdf2_sha1", rest, pbkdf2_sha1)
        }
        Scheme::DjangoArgon2(phc) => verify_django_argon2(password, phc),
        Scheme::BcryptSha256(hash) => {
            // Django pre-hashes so that passwords longer than bcrypt's
            // 72-byte limit still count in full.
            let digest = hex::encode(Sha256::digest(password.as_bytes()));
            verify_bcrypt(digest.as_bytes(), hash)
        }
        Scheme::Bcrypt(hash) => verify_bcrypt(password.as_bytes(), hash),
        Scheme::Unusable | Scheme::Unknown => false,
    }
}

/// Django re-encodes the hash from the parsed parts and compares the whole
/// string, so a non-canonical iteration count (`01000`) or base64 never
/// matches there; doing the same here keeps the two in agreement.
fn verify_django_pbkdf2(
    password: &str,
    stored: &str,
    algorithm: &str,
    rest: &str,
    derive: fn(&[u8], &[u8], u32) -> Vec<u8>,
) -> bool {
    let mut parts = rest.splitn(3, '$');
    let (Some(iterations), Some(salt), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    // Django refuses to hash with an empty salt or one containing `$`.
    if salt.is_empty() {
        return false;
    }
    let Some(iterations) = parse_decimal(iterations) else {
        return false;
    };
    if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
        return false;
    }
    let derived = derive(password.as_bytes(), salt.as_bytes(), iterations);
    let encoded = format!(
        "{algorithm}${iterations}${salt}${}",
        base64::engine::general_purpose::STANDARD.encode(&derived)
    );
    encoded.as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Django's dklen is the digest size: 32 bytes for SHA-256.
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec()
}

/// Django's dklen is the digest size: 20 bytes for SHA-1.
fn pbkdf2_sha1(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(password, salt, iterations).to_vec()
}

/// Plain ASCII digits only, without sign, spaces or overflow.
fn parse_decimal(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Django hands `$` + the rest to argon2-cffi, i.e. to libargon2. That
/// library reads a hash without `v=` as version 0x10, where the `argon2`
/// crate would assume 0x13, so the hash is recomputed here by hand.
fn verify_django_argon2(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let algorithm = match hash.algorithm.as_str() {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        _ => return false,
    };
    let version = match hash.version {
        None | Some(0x10) => Version::V0x10,
        Some(0x13) => Version::V0x13,
        Some(_) => return false,
    };
    // libargon2 accepts exactly `m=…,t=…,p=…`, in that order.
    let mut params = hash.params.iter();
    let (Some(m), Some(t), Some(p), None) =
        (params.next(), params.next(), params.next(), params.next())
    else {
        return false;
    };
    if m.0.as_str() != "m" || t.0.as_str() != "t" || p.0.as_str() != "p" {
        return false;
    }
    let (Ok(m_cost), Ok(t_cost), Ok(p_cost)) = (m.1.decimal(), t.1.decimal(), p.1.decimal()) else {
        return false;
    };
    if m_cost > MAX_ARGON2_MEMORY_KIB || t_cost > MAX_ARGON2_TIME_COST {
        return false;
    }
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let expected = expected.as_bytes();
    let Ok(params) = Params::new(m_cost, t_cost, p_cost, Some(expected.len())) else {
        return false;
    };
    let mut actual = vec![0u8; expected.len()];
    if Argon2::new(algorithm, version, params)
        .hash_password_into(password.as_bytes(), salt, &mut actual)
        .is_err()
    {
        return false;
    }
    actual.ct_eq(expected).into()
}

/// Bcrypt as Apache and Django's bcrypt library do it: the password is
/// truncated to 72 bytes.
fn verify_bcrypt(password: &[u8], hash: &str) -> bool {
    if hash.len() != 60 || !hash.is_ascii() || !is_bcrypt_prefix(hash) {
        return false;
    }
    match parse_decimal(&hash[4..6]) {
        Some(cost) if cost <= MAX_BCRYPT_COST => {}
        _ => return false,
    }
    // Apache's C code stops at a NUL byte and Django's forms refuse one,
    // so neither ever verifies a password that contains it.
    if password.contains(&0) {
        return false;
    }
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Produced with Django 5.2 (make_password's hashers with low costs),
    // argon2-cffi 25.1, pyca bcrypt 5.0 and Apache's htpasswd 2.4.
    const PBKDF2_SHA256: &str =
        "pbkdf2_sha256$1000$saltysalt$KhTrfEsTZcq3eJUrHZOxLqUN5PN5EhQeWcsfpxYVRDI=";
    const PBKDF2_SHA256_UNICODE: &str =
        "pbkdf2_sha256$1200$NaCl$EktmP5Qyso287WgUZet70+F3KnCx3WBufX87+hvSo/A=";
    const PBKDF2_SHA1: &str = "pbkdf2_sha1$1000$saltysalt$SkPalFEWyb83LylB05l2tgYlsQw=";
    const DJANGO_ARGON2ID: &str = "argon2$argon2id$v=19$m=1024,t=1,p=1$RGZZOFhxQzhkZDhSUzVqcnFwTElpcg$RxjPEL/J/3BXOTOl7YuwkuZoRoWFEKRCwq5Vi5UsfN0";
    const DJANGO_ARGON2I: &str = "argon2$argon2i$v=19$m=1024,t=1,p=1$9ioVbL4wzSvmWSvx3fP3MQ$fwYZQ/6b5r8Ch8swdgtIo31eJY7zi+Czs3oZlpWCqyo";
    const BCRYPT_SHA256: &str =
        "bcrypt_sha256$$2b$04$B1zg8zaVNVKt5/16tvMwK.NDJTqM4ofGRGkMYbIvIlNydjv9vQmaC";
    const DJANGO_BCRYPT: &str =
        "bcrypt$$2b$04$aR0Nf5QHTy.sagY3WFbwSOedYbdv3Ju0BFXM4fySbRJs945vdstKa";
    const DJANGO_BCRYPT_UNICODE: &str =
        "bcrypt$$2b$04$QKA72vZYWxC/IetGfHrAdOvlv940QkoQgVpxz0NbEtoxjFwzqiKSe";
    const HTPASSWD_2Y: &str = "$2y$05$EN.QhO1TUgi2FIh6eA4FcebQnH0.joXPDGzGYWji84ECo5odYN5Lu";
    const HTPASSWD_2Y_UNICODE: &str =
        "$2y$04$t7gtwsGP1r8LxGbyiTgvg.s4NqLBz6cMVvtZ4U5Z1e/KPDEVq9DfC";
    const BCRYPT_2A: &str = "$2a$04$T7jjJrIfVSdxHemyb5LAGObSYbVGEO.WlOayua3XjTjUbh8jn2I/a";
    const BCRYPT_2B: &str = "$2b$04$X.SGDd5Z7QMUrHeRPYcMeOyWUOXU7rjDOA6jJQYcr5hf1/WNBPfw.";
    const BCRYPT_72_XS: &str = "$2b$04$omq7aK2fV5i1S6hMAkYlQekFsGCopPiESVuplPlUa/GOBP3WGkR8W";
    const OWN_ARGON2ID: &str = "$argon2id$v=19$m=1024,t=1,p=1$x8ffpvb9b5pMNoBsCJWhzw$NgFx/hJSeJb0b+bvvdo9PUcz5Ko5yMWSW1DohwG2bLA";

    const PW: &str = "s3cret";
    const UNICODE_PW: &str = "pässwörd✓";

    fn assert_verifies(stored: &str, right: &str) {
        assert!(
            verify_any(right, stored),
            "{stored} should accept {right:?}"
        );
        for wrong in ["", "S3cret", "s3cret ", "s3cre", "wrong"] {
            assert!(!verify_any(wrong, stored), "{stored} accepted {wrong:?}");
        }
    }

    #[test]
    fn django_pbkdf2_sha256() {
        assert_verifies(PBKDF2_SHA256, PW);
        assert_verifies(PBKDF2_SHA256_UNICODE, UNICODE_PW);
        assert!(!verify_any(PW, PBKDF2_SHA256_UNICODE));
        assert_eq!(algorithm_name(PBKDF2_SHA256), "pbkdf2_sha256");
    }

    #[test]
    fn django_pbkdf2_sha1() {
        assert_verifies(PBKDF2_SHA1, PW);
        assert_eq!(algorithm_name(PBKDF2_SHA1), "pbkdf2_sha1");
    }

    #[test]
    fn pbkdf2_tampering_is_rejected() {
        for bad in [
            // Same digest, iteration count written the way Django never would.
            PBKDF2_SHA256.replace("$1000$", "$01000$"),
            PBKDF2_SHA256.replace("$1000$", "$+1000$"),
            PBKDF2_SHA256.replace("$1000$", "$1001$"),
            PBKDF2_SHA256.replace("saltysalt", "saltysalT"),
            PBKDF2_SHA256.trim_end_matches('=').to_string(),
            format!("{PBKDF2_SHA256}\n"),
            // The sha256 digest under the sha1 name.
            PBKDF2_SHA256.replace("pbkdf2_sha256", "pbkdf2_sha1"),
            "pbkdf2_sha256$1000$$KhTrfEsTZcq3eJUrHZOxLqUN5PN5EhQeWcsfpxYVRDI=".into(),
            "pbkdf2_sha256$0$saltysalt$KhTrfEsTZcq3eJUrHZOxLqUN5PN5EhQeWcsfpxYVRDI=".into(),
            "pbkdf2_sha256$1000$saltysalt".into(),
            "pbkdf2_sha256$".into(),
        ] {
            assert!(!verify_any(PW, &bad), "{bad} verified");
        }
    }

    #[test]
    fn pbkdf2_iterations_are_capped() {
        // Would take minutes if the cap did not refuse it up front.
        let huge =
            "pbkdf2_sha256$4000000000$saltysalt$KhTrfEsTZcq3eJUrHZOxLqUN5PN5EhQeWcsfpxYVRDI=";
        let start = std::time::Instant::now();
        assert!(!verify_any(PW, huge));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let overflow = "pbkdf2_sha256$99999999999999999999$s$AAAA";
        assert!(!verify_any(PW, overflow));
    }

    #[test]
    fn django_argon2() {
        assert_verifies(DJANGO_ARGON2ID, PW);
        assert_verifies(DJANGO_ARGON2I, PW);
        assert_eq!(algorithm_name(DJANGO_ARGON2ID), "django_argon2");
        assert_eq!(algorithm_name(DJANGO_ARGON2I), "django_argon2");
    }

    #[test]
    fn django_argon2_without_version_means_0x10() {
        // argon2-cffi's low-level hash_secret with version=16, then `v=16$`
        // dropped; libargon2 verifies both forms.
        let v16 = "argon2$argon2id$v=16$m=1024,t=1,p=1$c2FsdHlzYWx0eXNhbHQ$VQTF2wgRZKAbTbMlSXox1BkjoLiG/AAPYcfySmPXLJQ";
        let bare = v16.replace("v=16$", "");
        assert_verifies(v16, PW);
        assert_verifies(&bare, PW);
        assert!(!verify_any(PW, &v16.replace("v=16", "v=19")));
    }

    #[test]
    fn django_argon2_rejects_odd_parameters() {
        for bad in [
            DJANGO_ARGON2ID.replace("m=1024,t=1,p=1", "t=1,m=1024,p=1"),
            DJANGO_ARGON2ID.replace("m=1024,t=1,p=1", "m=1024,t=1"),
            DJANGO_ARGON2ID.replace("m=1024", "m=4194304"),
            DJANGO_ARGON2ID.replace("t=1", "t=100000"),
            DJANGO_ARGON2ID.replace("v=19", "v=20"),
            DJANGO_ARGON2ID.replace("argon2id", "argon2x"),
            "argon2$".into(),
            "argon2$argon2id$".into(),
        ] {
            assert!(!verify_any(PW, &bad), "{bad} verified");
        }
        // Without Django's prefix it is not Django's format.
        assert!(!verify_any(
            PW,
            "argon2argon2id$v=19$m=1024,t=1,p=1$AAAA$AAAA"
        ));
    }

    #[test]
    fn django_bcrypt_sha256() {
        assert_verifies(BCRYPT_SHA256, PW);
        assert_eq!(algorithm_name(BCRYPT_SHA256), "bcrypt_sha256");
        // The inner hash is of the hex digest, not of the password.
        assert!(!verify_any(PW, &BCRYPT_SHA256["bcrypt_sha256$".len()..]));
        let sha = hex::encode(Sha256::digest(PW));
        assert!(verify_any(&sha, &BCRYPT_SHA256["bcrypt_sha256$".len()..]));
        assert!(!verify_any(
            &sha.to_uppercase(),
            &BCRYPT_SHA256["bcrypt_sha256$".len()..]
        ));
    }

    #[test]
    fn django_bcrypt() {
        assert_verifies(DJANGO_BCRYPT, PW);
        assert_verifies(DJANGO_BCRYPT_UNICODE, UNICODE_PW);
        assert_eq!(algorithm_name(DJANGO_BCRYPT), "bcrypt");
    }

    #[test]
    fn htpasswd_bcrypt() {
        for hash in [HTPASSWD_2Y, BCRYPT_2A, BCRYPT_2B] {
            assert_verifies(hash, PW);
            assert_eq!(algorithm_name(hash), "bcrypt");
        }
        assert_verifies(HTPASSWD_2Y_UNICODE, UNICODE_PW);
        // `$2x$` is a different (buggy) algorithm, not an alias.
        assert!(!verify_any(PW, &BCRYPT_2B.replace("$2b$", "$2x$")));
    }

    #[test]
    fn bcrypt_truncates_at_72_bytes_like_its_origins() {
        let base = "x".repeat(72);
        assert!(verify_any(&base, BCRYPT_72_XS));
        assert!(verify_any(&format!("{base}extra"), BCRYPT_72_XS));
        assert!(!verify_any(&base[..71], BCRYPT_72_XS));
    }

    #[test]
    fn bcrypt_refuses_nul_and_high_costs() {
        assert!(!verify_any("s3cret\0", HTPASSWD_2Y));
        assert!(!verify_any("s3cret\0tail", HTPASSWD_2Y));
        let start = std::time::Instant::now();
        assert!(!verify_any(PW, &BCRYPT_2B.replace("$04$", "$31$")));
        assert!(!verify_any(PW, &BCRYPT_2B.replace("$04$", "$17$")));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(!verify_any(PW, &BCRYPT_2B.replace("$04$", "$+4$")));
        assert!(!verify_any(PW, &BCRYPT_2B[..59]));
    }

    #[test]
    fn own_argon2id_still_verifies() {
        assert_verifies(OWN_ARGON2ID, PW);
        assert_eq!(algorithm_name(OWN_ARGON2ID), "argon2id");
    }

    #[test]
    fn other_schemes_never_verify() {
        for (stored, name) in [
            ("$apr1$mwqBS7Cz$Cp/choWNGRt9G4z3YSZEC1", "unknown"),
            ("{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=", "unknown"),
            ("JMEfDyx0Jgrm6", "unknown"),
            ("s3cret", "unknown"),
            ("md5$$e22a1a7d1d5b1c6a17ae3fa0a8bdc7e5", "unknown"),
            ("!Kq4bMUVtP3oZ4ZyKpvyRYDVXQ0Vcr6PNJzsECpwS", "unusable"),
            ("", "unusable"),
        ] {
            assert!(!verify_any(PW, stored), "{stored} verified");
            assert!(
                !verify_any("", stored),
                "{stored} verified the empty password"
            );
            assert_eq!(algorithm_name(stored), name, "{stored}");
        }
    }

    fn any_stored() -> impl Strategy<Value = String> {
        // Known prefixes steer the fuzzing into each parser, and the costs
        // are kept low so a lucky well-formed hash cannot stall the run.
        let prefix = prop_oneof![
            Just(""),
            Just("pbkdf2_sha256$"),
            Just("pbkdf2_sha256$1$"),
            Just("pbkdf2_sha1$2$s$"),
            Just("argon2$argon2id$v=19$m=8,t=1,p=1$"),
            Just("argon2$argon2i$m=8,t=1,p=1$c2FsdHNhbHQ$"),
            Just("argon2$"),
            Just("$argon2id$v=19$m=8,t=1,p=1$"),
            Just("bcrypt_sha256$$2b$04$"),
            Just("bcrypt$$2y$04$"),
            Just("$2a$04$"),
            Just("$2b$"),
            Just("!"),
        ];
        (prefix, any::<String>()).prop_map(|(p, s)| format!("{p}{s}"))
    }

    proptest! {
        #[test]
        fn never_panics(password in any::<String>(), stored in any_stored()) {
            let _ = verify_any(&password, &stored);
            let _ = algorithm_name(&stored);
        }

        #[test]
        fn bcrypt_shaped_garbage_never_panics(
            password in any::<String>(),
            body in "[./A-Za-z0-9é]{50,56}",
        ) {
            let _ = verify_any(&password, &format!("$2b$04${body}"));
        }
    }
}
