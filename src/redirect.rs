//! Vetting of the `next` parameter that says where to send a user after
//! login.
//!
//! An unchecked `next` turns the login page into an open redirect, and
//! browsers are generous about what they treat as "another host": `//evil`,
//! `/\evil`, `/<tab>/evil` and `https:evil` all leave the site (oauth2-proxy
//! CVE-2020-5233, CVE-2020-11053). Rather than enumerate the tricks, only a
//! plain absolute path is accepted, and it must still resolve onto the
//! gateway's own origin when parsed the way a browser parses it.

use percent_encoding::percent_decode;
use url::Url;

/// Longest `next` accepted; longer ones fall back to "/".
pub const MAX_NEXT_LEN: usize = 2048;

const FALLBACK: &str = "/";

/// How many layers of percent-encoding are peeled off looking for a hidden
/// `//` or `/\`. A value still changing after this many is refused: no
/// genuine link is encoded that deeply.
const MAX_DECODE_ROUNDS: usize = 4;

/// Returns `next` if it is a safe same-origin relative path (path + optional
/// query + optional fragment) on `public_url`'s origin, else "/".
///
/// An accepted value is returned as given except that non-ASCII characters
/// are percent-encoded: it is plain ASCII, may contain percent-escapes, and
/// never contains control characters, whitespace or '\\', so it is always
/// a valid header value.
pub fn safe_next(next: &str, public_url: &Url) -> String {
    if is_safe(next, public_url) {
        ascii_only(next)
    } else {
        FALLBACK.to_owned()
    }
}

/// Non-ASCII characters percent-encoded (as UTF-8), so a `Location`
/// header is plain ASCII: browsers read raw bytes there in more than one
/// way, and a full-width `／` must stay a character of the path.
fn ascii_only(next: &str) -> String {
    if next.is_ascii() {
        return next.to_owned();
    }
    let mut out = String::with_capacity(next.len() * 3);
    for b in next.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_safe(next: &str, public_url: &Url) -> bool {
    if next.len() > MAX_NEXT_LEN {
        return false;
    }
    // A scheme, a host or a relative path would each need its own reasoning;
    // a path-absolute reference needs none.
    let bytes = next.as_bytes();
    if bytes.first() != Some(&b'/') || matches!(bytes.get(1), Some(b'/' | b'\\')) {
        return false;
    }
    // Browsers silently drop tabs and newlines inside URLs and read '\' as
    // '/', which is how `/\t/evil.com` and `/\evil.com` become `//evil.com`.
    if next
        .chars()
        .any(|c| c == '\\' || c.is_control() || c.is_whitespace())
    {
        return false;
    }
    if !decodings_are_safe(bytes) {
        return false;
    }
    let Ok(joined) = public_url.join(next) else {
        return false;
    };
    // A path that resolves to start with "//" (e.g. `/.//evil.com`) is on
    // our origin only as long as nobody re-serialises it; any component
    // that normalises it and emits the path alone makes it protocol-relative.
    joined.origin() == public_url.origin() && !joined.path().starts_with("//")
}

/// Some servers and frameworks decode `next` once more before redirecting,
/// so every decoding of it must be as harmless as the value itself.
fn decodings_are_safe(raw: &[u8]) -> bool {
    let mut current = raw.to_vec();
    for _ in 0..MAX_DECODE_ROUNDS {
        let decoded: Vec<u8> = percent_decode(&current).collect();
        if decoded == current {
            return true;
        }
        if !decoded_is_safe(&decoded) {
            return false;
        }
        current = decoded;
    }
    false
}

fn decoded_is_safe(decoded: &[u8]) -> bool {
    // Control bytes anywhere: CR/LF would split a header if a later stage
    // wrote the decoded value into Location, and browsers strip tab/newline.
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7F) {
        return false;
    }
    // Right after the leading '/', a second separator makes the value
    // protocol-relative, and whitespace or controls are dropped by browsers,
    // bringing whatever follows up against the first '/'.
    let text = String::from_utf8_lossy(decoded);
    match text.chars().nth(1) {
        Some(c) => !(c == '/' || c == '\\' || c.is_whitespace() || c.is_control()),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn public() -> Url {
        Url::parse("https://auth.example.com/").unwrap()
    }

    const REJECTED: &[&str] = &[
        // protocol-relative and its browser-normalised cousins
        "//evil.com",
        "///evil.com",
        "////evil.com",
        "/\\evil.com",
        "/\\\\evil.com",
        "\\/\\/evil.com",
        "\\\\evil.com",
        "/\\/evil.com",
        "//\\evil.com",
        "/.\\evil.com",
        "/a\\b",
        // whitespace and control characters browsers strip
        "/\t/evil.com",
        "/\n/evil.com",
        "/\r/evil.com",
        "/ /evil.com",
        " /x",
        "/x\n",
        "/x\r\nSet-Cookie: a=b",
        "\t/x",
        "/x\0",
        "/x\u{7f}",
        "/x\u{85}",
        "/\u{a0}/evil.com",
        "/\u{3000}/evil.com",
        "/\u{2028}/evil.com",
        "/a b",
        // encoded separators and whitespace at the start
        "/%2F%2Fevil.com",
        "/%2f%2fevil.com",
        "/%2Fevil.com",
        "/%5Cevil.com",
        "/%5cevil.com",
        "/%09/evil.com",
        "/%0a/evil.com",
        "/%0D%0A/evil.com",
        "/%20/evil.com",
        "/%E3%80%80/evil.com",
        "/%252F%252Fevil.com",
        "/%255Cevil.com",
        "/%25252F%25252Fevil.com",
        "/%2525252F%2525252Fevil.com",
        // encoded controls anywhere
        "/x%0d%0aSet-Cookie:%20a=b",
        "/x?y=%00",
        // paths that resolve to start with "//"
        "/.//evil.com",
        "/..//evil.com",
        "/a/..//evil.com",
        "/%2e%2e//evil.com",
        "/%2e//evil.com",
        // absolute URLs and other schemes
        "https://evil.com",
        "http://evil.com",
        "https://auth.example.com/x",
        "http:evil.com",
        "https:evil.com",
        "http:/evil.com",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "evil.com",
        "@evil.com",
        "x",
        "./x",
        "../x",
        "?x=1",
        "#x",
        "",
        // userinfo-style lookalikes that only matter when not path-absolute
        "https://auth.example.com@evil.com",
        "//auth.example.com@evil.com",
    ];

    const ACCEPTED: &[&str] = &[
        "/",
        "/a/b?c=d&e=f",
        "/reports?q=1#top",
        "/a/b/",
        "/a%20b",
        "/search?q=a%20b",
        "/search?q=%2F%2Fevil.com",
        "/a//b",
        "/caf%C3%A9",
        "/café",
        "/@evil.com",
        "/evil.com",
        "/a/../b",
        "/x?next=//evil.com",
        "/x#//evil.com",
        "/%2e%2e/admin",
        "/a%2Fb",
    ];

    #[test]
    fn open_redirect_payloads_fall_back_to_root() {
        let public = public();
        for payload in REJECTED {
            assert_eq!(safe_next(payload, &public), "/", "payload {payload:?}");
        }
    }

    #[test]
    fn non_ascii_is_percent_encoded() {
        let public = public();
        assert_eq!(
            safe_next("/／／evil.com", &public),
            "/%EF%BC%8F%EF%BC%8Fevil.com"
        );
        assert_eq!(safe_next("/café?q=é", &public), "/caf%C3%A9?q=%C3%A9");
    }

    #[test]
    fn ordinary_paths_are_kept_as_given() {
        let public = public();
        for next in ACCEPTED {
            assert_eq!(safe_next(next, &public), ascii_only(next), "next {next:?}");
        }
    }

    #[test]
    fn base_path_and_port_do_not_matter() {
        let public = Url::parse("http://127.0.0.1:8080/portal/").unwrap();
        assert_eq!(safe_next("/a?b", &public), "/a?b");
        assert_eq!(safe_next("//127.0.0.1:8080/a", &public), "/");
        assert_eq!(safe_next("//evil.com", &public), "/");
    }

    #[test]
    fn opaque_origin_accepts_nothing() {
        // Opaque origins never equal each other, so with a non-http public
        // URL nothing can be proven same-origin and everything falls back.
        let public = Url::parse("data:text/plain,x").unwrap();
        assert_eq!(safe_next("/a", &public), "/");
    }

    #[test]
    fn length_cap() {
        let public = public();
        let at_cap = format!("/{}", "a".repeat(MAX_NEXT_LEN - 1));
        assert_eq!(safe_next(&at_cap, &public), at_cap);
        let over = format!("{at_cap}a");
        assert_eq!(safe_next(&over, &public), "/");
    }

    fn next_piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/",
            "/",
            "\\",
            "%2F",
            "%2f",
            "%5C",
            "%25",
            "%09",
            "%20",
            ".",
            "..",
            "evil.com",
            "@",
            ":",
            "https:",
            "http://",
            "javascript:",
            "?",
            "#",
            "\t",
            "\n",
            " ",
            "\u{3000}",
            "a",
            "%",
            "%E3%80%80",
            "\u{ff0f}",
            "\u{200b}",
        ])
    }

    fn next_like() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(next_piece(), 0..12).prop_map(|pieces| pieces.concat()),
            any::<String>(),
            any::<String>().prop_map(|s| format!("/{s}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn result_always_stays_on_origin(next in next_like()) {
            for public in [public(), Url::parse("http://localhost:8080/app/x").unwrap()] {
                let result = safe_next(&next, &public);
                prop_assert!(result == ascii_only(&next) || result == "/");
                prop_assert!(result.is_ascii());
                let joined = public.join(&result);
                prop_assert!(joined.is_ok());
                if let Ok(joined) = joined {
                    prop_assert_eq!(joined.origin(), public.origin());
                    prop_assert!(!joined.path().starts_with("//"));
                }
                prop_assert!(result.starts_with('/'));
                prop_assert!(!result.starts_with("//"));
                prop_assert!(!result.contains('\\'));
                prop_assert!(!result.chars().any(|c| c.is_control() || c.is_whitespace()));
            }
        }
    }
}
