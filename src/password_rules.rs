//! Rules a new password must pass, after OWASP ASVS 5.0 (V6.2) and Django's
//! password validators.
//!
//! Deliberately absent: composition rules ("one digit, one symbol, ...").
//! ASVS forbids them because they push users towards predictable patterns
//! without adding much entropy; length, a deny-list of common passwords and
//! a check against the user's own identifiers do more good.
//!
//! Length is counted in Unicode scalar values, so a passphrase in any script
//! is measured the way its author would count it, not by its UTF-8 size.

use std::{
    collections::{HashMap, HashSet},
    sync::OnceLock,
};

/// ASVS 5.0 6.2.9: passwords of at least 64 characters must be permitted.
const LONGEST_MAX_LENGTH_FLOOR: usize = 64;

/// Passwords this similar (2·matches / total length) to a user attribute are
/// refused; Django's default threshold.
const SIMILARITY_NUM: u128 = 7;
const SIMILARITY_DEN: u128 = 10;

/// Attribute parts this short match too much by accident to mean anything.
const MIN_PART_CHARS: usize = 3;

/// Above this many dynamic-programming cells the exact ratio is not worth
/// its quadratic cost; the linear upper bound decides instead, which errs on
/// the side of refusing, as Django always does.
const LCS_CELL_BUDGET: usize = 1 << 20;

/// See the header of the file for its source and licence.
const COMMON_PASSWORDS: &str = include_str!("data/common-passwords.txt");

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordRules {
    /// Fewest characters accepted; default 8 (the ASVS minimum).
    pub min_length: usize,
    /// Most characters accepted; default 128. Values below 64 act as 64,
    /// because ASVS requires passphrases of at least that length to work.
    pub max_length: usize,
    /// Refuse passwords on the embedded common-password list; default true.
    pub reject_common: bool,
    /// Refuse passwords made only of digits; default true.
    pub reject_numeric: bool,
    /// Refuse passwords too similar to the user name or e-mail; default true.
    pub reject_similar: bool,
}

impl Default for PasswordRules {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 128,
            reject_common: true,
            reject_numeric: true,
            reject_similar: true,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PasswordError {
    #[error("This password is too short. It must contain at least {min} {}.", characters(.min))]
    TooShort { min: usize },
    #[error("This password is too long. It must contain at most {max} {}.", characters(.max))]
    TooLong { max: usize },
    #[error("This password is empty or only spaces.")]
    Blank,
    #[error("This password is too common.")]
    Common,
    #[error("This password is entirely numeric.")]
    Numeric,
    /// `attribute` is "username" or "email".
    #[error("The password is too similar to the {}.", attribute_label(.attribute))]
    TooSimilar { attribute: &'static str },
}

impl PasswordError {
    /// Stable identifier for API clients and translations; the same codes
    /// Django uses.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "password_too_short",
            Self::TooLong { .. } => "password_too_long",
            Self::Blank => "password_blank",
            Self::Common => "password_too_common",
            Self::Numeric => "password_entirely_numeric",
            Self::TooSimilar { .. } => "password_too_similar",
        }
    }
}

fn characters(count: &usize) -> &'static str {
    if *count == 1 {
        "character"
    } else {
        "characters"
    }
}

fn attribute_label(attribute: &str) -> &str {
    match attribute {
        "email" => "email address",
        other => other,
    }
}

/// Checks a new password; the first rule it breaks is reported. Length comes
/// first so that the costlier checks only ever see bounded input.
pub fn validate(
    password: &str,
    username: &str,
    email: Option<&str>,
    rules: &PasswordRules,
) -> Result<(), PasswordError> {
    let max = rules.max_length.max(LONGEST_MAX_LENGTH_FLOOR);
    // Counting stops just past the limit: a megabyte-long password costs no
    // more than a 129-character one.
    let length = password.chars().take(max.saturating_add(1)).count();
    if length > max {
        return Err(PasswordError::TooLong { max });
    }
    // Whatever `min_length` says: eight spaces are no secret.
    if password.chars().all(char::is_whitespace) {
        return Err(PasswordError::Blank);
    }
    if length < rules.min_length {
        return Err(PasswordError::TooShort {
            min: rules.min_length,
        });
    }
    if rules.reject_similar {
        let attributes = [("username", Some(username)), ("email", email)];
        if let Some(attribute) = too_similar(password, &attributes) {
            return Err(PasswordError::TooSimilar { attribute });
        }
    }
    if rules.reject_common && is_common(password) {
        return Err(PasswordError::Common);
    }
    if rules.reject_numeric && !password.is_empty() && password.chars().all(char::is_numeric) {
        return Err(PasswordError::Numeric);
    }
    Ok(())
}

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            // Only the leading block is a comment: "#1stunna" further down is
            // a real password.
            .skip_while(|line| line.starts_with('#'))
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect()
    })
}

fn is_common(password: &str) -> bool {
    let lowered = password.to_lowercase();
    common_passwords().contains(lowered.trim())
}

/// Returns the name of the first attribute the password resembles.
///
/// Besides the whole password, its letters alone are compared with the
/// attribute's letters alone: users typically decorate a name with digits
/// and symbols ("alice2024!"), which a plain ratio would let through
/// (2·5/15 < 0.7 for "alice" against "alice2024!").
fn too_similar(
    password: &str,
    attributes: &[(&'static str, Option<&str>)],
) -> Option<&'static str> {
    let password: Vec<char> = password.to_lowercase().chars().collect();
    let password_letters = letters(&password);
    attributes.iter().find_map(|&(name, value)| {
        let value = value?.to_lowercase();
        let resembles = attribute_parts(&value).into_iter().any(|part| {
            let part: Vec<char> = part.chars().collect();
            if part.len() < MIN_PART_CHARS {
                return false;
            }
            let part_letters = letters(&part);
            similar(&password, &part)
                || (part_letters.len() >= MIN_PART_CHARS
                    && similar(&password_letters, &part_letters))
        });
        resembles.then_some(name)
    })
}

/// The attribute split on non-word characters ("alice.smith@example.com"
/// gives "alice", "smith", "example", "com"), plus the whole value.
fn attribute_parts(value: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = value
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|part| !part.is_empty())
        .collect();
    if parts != [value] {
        parts.push(value);
    }
    parts
}

fn letters(chars: &[char]) -> Vec<char> {
    chars
        .iter()
        .copied()
        .filter(|c| c.is_alphabetic())
        .collect()
}

/// SequenceMatcher-style ratio 2·M/T ≥ 0.7, with M the length of the longest
/// common subsequence. Two linear upper bounds on M come first: most pairs
/// are rejected by them and never pay for the quadratic part.
fn similar(a: &[char], b: &[char]) -> bool {
    let total = a.len() + b.len();
    let reaches = |matches: usize| {
        matches > 0 && matches as u128 * 2 * SIMILARITY_DEN >= total as u128 * SIMILARITY_NUM
    };
    if !reaches(a.len().min(b.len())) || !reaches(shared_chars(a, b)) {
        return false;
    }
    if a.len().saturating_mul(b.len()) > LCS_CELL_BUDGET {
        return true;
    }
    reaches(common_subsequence(a, b))
}

/// Size of the multiset intersection (Python's `quick_ratio` numerator).
fn shared_chars(a: &[char], b: &[char]) -> usize {
    let mut available: HashMap<char, usize> = HashMap::new();
    for &c in a {
        *available.entry(c).or_default() += 1;
    }
    b.iter()
        .filter(|c| match available.get_mut(c) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .count()
}

fn common_subsequence(a: &[char], b: &[char]) -> usize {
    let (outer, inner) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    // One row suffices: row[j] is the previous row's value until overwritten.
    let mut row = vec![0usize; inner.len() + 1];
    for &x in outer {
        let mut diagonal = 0;
        for (j, &y) in inner.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[inner.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(password: &str) -> Result<(), PasswordError> {
        validate(password, "zed", None, &PasswordRules::default())
    }

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn defaults_follow_asvs() {
        let rules = PasswordRules::default();
        assert_eq!((rules.min_length, rules.max_length), (8, 128));
        assert!(rules.reject_common && rules.reject_numeric && rules.reject_similar);
    }

    #[test]
    fn messages_and_codes() {
        let cases = [
            (
                PasswordError::TooShort { min: 8 },
                "This password is too short. It must contain at least 8 characters.",
                "password_too_short",
            ),
            (
                PasswordError::TooShort { min: 1 },
                "This password is too short. It must contain at least 1 character.",
                "password_too_short",
            ),
            (
                PasswordError::TooLong { max: 128 },
                "This password is too long. It must contain at most 128 characters.",
                "password_too_long",
            ),
            (
                PasswordError::Common,
                "This password is too common.",
                "password_too_common",
            ),
            (
                PasswordError::Numeric,
                "This password is entirely numeric.",
                "password_entirely_numeric",
            ),
            (
                PasswordError::TooSimilar {
                    attribute: "username",
                },
                "The password is too similar to the username.",
                "password_too_similar",
            ),
            (
                PasswordError::TooSimilar { attribute: "email" },
                "The password is too similar to the email address.",
                "password_too_similar",
            ),
        ];
        for (error, text, code) in cases {
            assert_eq!(error.to_string(), text);
            assert_eq!(error.code(), code);
        }
    }

    #[test]
    fn minimum_length() {
        assert_eq!(check("gX7#qpL"), Err(PasswordError::TooShort { min: 8 }));
        assert_eq!(check("gX7#qpLw"), Ok(()));
        assert_eq!(check(""), Err(PasswordError::Blank));
    }

    #[test]
    fn blank_passwords_fail_whatever_the_minimum() {
        let rules = PasswordRules {
            min_length: 0,
            ..PasswordRules::default()
        };
        for p in ["", " ", "        ", "\t \u{3000}"] {
            assert_eq!(
                validate(p, "u", None, &rules),
                Err(PasswordError::Blank),
                "{p:?}"
            );
        }
        assert_eq!(validate(" q7 Zr ", "u", None, &rules), Ok(()));
    }

    #[test]
    fn maximum_length() {
        let at_limit = "tq".repeat(64);
        assert_eq!(check(&at_limit), Ok(()));
        assert_eq!(
            check(&format!("{at_limit}x")),
            Err(PasswordError::TooLong { max: 128 })
        );
        let huge = "x".repeat(10_000_000);
        assert_eq!(check(&huge), Err(PasswordError::TooLong { max: 128 }));
    }

    #[test]
    fn passphrases_of_64_characters_are_accepted() {
        let phrase = "correct horse battery staple on a windy afternoon by the seaside";
        assert_eq!(phrase.chars().count(), 64);
        assert_eq!(check(phrase), Ok(()));
        // Even when an operator configures a lower maximum.
        let strict = PasswordRules {
            max_length: 20,
            ..PasswordRules::default()
        };
        assert_eq!(validate(phrase, "zed", None, &strict), Ok(()));
        assert_eq!(
            validate(&format!("{phrase}!"), "zed", None, &strict),
            Err(PasswordError::TooLong { max: 64 })
        );
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(check("ñøçéßüå"), Err(PasswordError::TooShort { min: 8 }));
        assert_eq!(check("ñøçéßüåæ"), Ok(()));
        assert_eq!(check("私のパスワードは長いです"), Ok(()));
        assert_eq!(check("🔐🗝️🚪🐉🌋🎻🧭🪐"), Ok(()));
        let wide = "é".repeat(128);
        assert_eq!(wide.len(), 256);
        assert_eq!(check(&wide), Ok(()));
        assert_eq!(
            check(&"é".repeat(129)),
            Err(PasswordError::TooLong { max: 128 })
        );
    }

    #[test]
    fn common_passwords_are_refused_case_and_space_insensitively() {
        for password in [
            "password",
            "Password",
            "  PASSWORD  ",
            "qwertyuiop",
            "iloveyou",
        ] {
            assert_eq!(check(password), Err(PasswordError::Common), "{password}");
        }
        // The list's own entries that look like comments are still entries.
        assert_eq!(check("#1stunna"), Err(PasswordError::Common));
        let short_ok = PasswordRules {
            min_length: 1,
            ..PasswordRules::default()
        };
        assert_eq!(
            validate("ПАРОЛЬ", "zed", None, &short_ok),
            Err(PasswordError::Common)
        );
        assert_eq!(check("vq8#Lmz!rT"), Ok(()));
    }

    #[test]
    fn common_list_is_large_and_header_free() {
        let set = common_passwords();
        assert!(set.len() >= 19_000, "{}", set.len());
        assert!(set.iter().all(|p| !p.is_empty() && *p == p.to_lowercase()));
        assert!(!set
            .iter()
            .any(|p| p.contains("Copyright") || p.contains("licence")));
        assert!(!set.contains("# all rights reserved."));
    }

    #[test]
    fn numeric_passwords_are_refused() {
        assert_eq!(check("48291057364"), Err(PasswordError::Numeric));
        // Arabic-Indic digits are digits too.
        assert_eq!(check("٤٨٢٩١٠٥٧٣٦"), Err(PasswordError::Numeric));
        assert_eq!(check("48291057364a"), Ok(()));
        assert_eq!(check("4829 1057 364"), Ok(()));
    }

    #[test]
    fn rules_can_be_switched_off() {
        let lax = PasswordRules {
            reject_common: false,
            reject_numeric: false,
            reject_similar: false,
            ..PasswordRules::default()
        };
        assert_eq!(validate("password", "zed", None, &lax), Ok(()));
        assert_eq!(validate("48291057364", "zed", None, &lax), Ok(()));
        assert_eq!(validate("alice2024!", "alice", None, &lax), Ok(()));
    }

    #[test]
    fn similar_to_username_is_refused() {
        let rules = PasswordRules::default();
        let similar = Err(PasswordError::TooSimilar {
            attribute: "username",
        });
        assert_eq!(validate("alice2024!", "alice", None, &rules), similar);
        assert_eq!(validate("Alice_1234", "Alice", None, &rules), similar);
        assert_eq!(validate("alicee123", "alice", None, &rules), similar);
        assert_eq!(
            validate("bob.builder!", "bob.builder", None, &rules),
            similar
        );
        // Digits in the user name do not hide it.
        assert_eq!(validate("Alice!!!!", "alice1990", None, &rules), similar);
        // Non-ASCII names are lower-cased properly before comparing.
        assert_eq!(validate("ZOË2024!!", "zoë", None, &rules), similar);
    }

    #[test]
    fn unrelated_passwords_are_accepted() {
        let rules = PasswordRules::default();
        let email = Some("alice.smith@example.com");
        for password in [
            "correct horse battery staple",
            "vq8#Lmz!rT",
            "Malice aforethought, 1990",
            "ecila-is-alice-backwards-ish",
        ] {
            assert_eq!(
                validate(password, "alice", email, &rules),
                Ok(()),
                "{password}"
            );
        }
    }

    #[test]
    fn similar_to_email_parts_is_refused() {
        let rules = PasswordRules::default();
        let email = Some("alice.smith@example.com");
        let similar = Err(PasswordError::TooSimilar { attribute: "email" });
        assert_eq!(validate("smith1985!", "zed", email, &rules), similar);
        assert_eq!(validate("Example#2024", "zed", email, &rules), similar);
        assert_eq!(
            validate("alice.smith@example", "zed", email, &rules),
            similar
        );
        // The user name is checked first.
        assert_eq!(
            validate("alice2024!", "alice", email, &rules),
            Err(PasswordError::TooSimilar {
                attribute: "username"
            })
        );
    }

    #[test]
    fn short_attribute_parts_are_ignored() {
        let rules = PasswordRules::default();
        assert_eq!(validate("ab!!!!!!!!", "ab", None, &rules), Ok(()));
        assert_eq!(
            validate("xy--------", "zed", Some("xy@x.io"), &rules),
            Ok(())
        );
    }

    #[test]
    fn long_inputs_stay_cheap() {
        let rules = PasswordRules::default();
        let long_name = "n".repeat(1_000_000);
        assert_eq!(validate(&"n".repeat(128), &long_name, None, &rules), Ok(()));

        // With a huge configured maximum the exact ratio is skipped and the
        // upper bound decides.
        let roomy = PasswordRules {
            max_length: 1_000_000,
            ..PasswordRules::default()
        };
        let big = "ab".repeat(200_000);
        assert_eq!(
            validate(&big, &big, None, &roomy),
            Err(PasswordError::TooSimilar {
                attribute: "username"
            })
        );
    }

    #[test]
    fn ratio_matches_hand_computed_cases() {
        assert!(similar(&chars("alice"), &chars("alice")));
        // LCS "bcd": 2·3/8 = 0.75
        assert!(similar(&chars("abcd"), &chars("bcda")));
        // 2·5/15 ≈ 0.67
        assert!(!similar(&chars("alice2024!"), &chars("alice")));
        // Same letters, no order in common: the bound passes, the LCS does not.
        assert!(!similar(&chars("abcdef"), &chars("fedcba")));
        assert!(!similar(&[], &[]));
        assert_eq!(common_subsequence(&chars("axbycz"), &chars("abc")), 3);
        assert_eq!(shared_chars(&chars("aab"), &chars("abb")), 2);
    }

    #[test]
    fn config_rejects_unknown_fields_and_fills_defaults() {
        use serde::de::value::{Error, MapDeserializer};
        use serde::Deserialize;
        let partial = MapDeserializer::<_, Error>::new([("min_length", 12usize)].into_iter());
        let rules = PasswordRules::deserialize(partial).unwrap();
        assert_eq!((rules.min_length, rules.max_length), (12, 128));
        let unknown = MapDeserializer::<_, Error>::new([("minlength", 12usize)].into_iter());
        assert!(PasswordRules::deserialize(unknown).is_err());
    }

    proptest! {
        #[test]
        fn validate_never_panics_and_respects_length(
            password in "\\PC{0,200}",
            username in "\\PC{0,40}",
            email in proptest::option::of("\\PC{0,40}"),
            min_length in 0usize..20,
            max_length in 0usize..200,
        ) {
            let rules = PasswordRules { min_length, max_length, ..PasswordRules::default() };
            let result = validate(&password, &username, email.as_deref(), &rules);
            let length = password.chars().count();
            if result.is_ok() {
                prop_assert!(length >= min_length);
                prop_assert!(!password.trim().is_empty());
                prop_assert!(length <= max_length.max(64));
            }
        }
    }
}
