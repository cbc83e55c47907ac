//! The single reading of a request target that the gateway decides on and
//! forwards.
//!
//! A gateway that reads a path one way while the upstream app reads it
//! another can be walked past: `/public/..;/admin` is public to a naive
//! matcher but `/admin` to Tomcat, `%2e%2e` is a literal name to one parser
//! and `..` to the next (Envoy CVE-2019-9901, Pomerium CVE-2023-33189,
//! Traefik CVE-2025-66490). The defence here is twofold: anything that has
//! more than one plausible reading is refused outright, and everything else is
//! rewritten to one spelling which is both what the access rules see and what
//! the app receives, so the two can never disagree about which bytes were
//! checked.

/// Longest request target accepted, and longest canonical path produced.
///
/// Capping the output as well as the input keeps `canonicalize` idempotent:
/// escaping raw characters can lengthen a path, and a canonical path that
/// would be refused when fed back in is not canonical.
pub const MAX_TARGET_LEN: usize = 8192;

/// The one reading of a request target that the gateway decides on and forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical path; always starts with '/'. See [`canonicalize`].
    pub path: String,
    /// Raw query without the '?'; `None` if there was no '?'.
    pub query: Option<String>,
}

impl Target {
    /// True if `raw` (a request target as sent) is exactly this target's
    /// path and query, so it can be forwarded without rewriting.
    pub fn is_spelled(&self, raw: &[u8]) -> bool {
        let p = self.path.as_bytes();
        match &self.query {
            None => raw == p,
            Some(q) => {
                raw.len() == p.len() + 1 + q.len()
                    && raw.starts_with(p)
                    && raw[p.len()] == b'?'
                    && raw.ends_with(q.as_bytes())
            }
        }
    }

    /// The target as it should be forwarded: path plus "?query" if any.
    pub fn to_uri_string(&self) -> String {
        match &self.query {
            Some(query) => {
                let mut uri = String::with_capacity(self.path.len() + 1 + query.len());
                uri.push_str(&self.path);
                uri.push('?');
                uri.push_str(query);
                uri
            }
            None => self.path.clone(),
        }
    }
}

/// True if the method is spelled in upper-case letters, `-` and `_` only,
/// the one spelling nginx accepts. HTTP methods are case-sensitive, so to
/// the policy `post` is some other method than `POST`; but Werkzeug,
/// Django and Rails upper-case the method before they route, so a
/// `post` that slipped past a `methods = ["POST"]` rule would run the
/// app's POST handler. Refusing every other spelling keeps the policy and
/// the app reading one method.
pub fn method_is_canonical(method: &http::Method) -> bool {
    use http::Method as M;
    matches!(
        *method,
        M::GET | M::HEAD | M::POST | M::PUT | M::PATCH | M::DELETE | M::OPTIONS | M::TRACE
    ) || method
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// True if a `Host` value is a host name, an IPv4 address or a bracketed
/// IPv6 address, with an optional numeric port. Anything else could be
/// read as one virtual host by a host rule and as another by the app:
/// nginx and Go's `ServeMux` serve `secure.example:abc` as
/// `secure.example`, which a rule for that host would not see.
pub fn host_is_valid(host: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (None, port),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => (Some(&host[..i]), &host[i + 1..]),
            None => (Some(host), &b""[..]),
        }
    };
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535;
    let name_ok = name.is_none_or(|n| {
        // A single trailing dot (an absolute name) is fine; other empty
        // labels are not.
        let n = n.strip_suffix(b".").unwrap_or(n);
        !n.is_empty()
            && n.split(|&b| b == b'.').all(|label| {
                !label.is_empty()
                    && label
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            })
    });
    port_ok && name_ok
}

/// Why a request target was refused. Every variant means "answer 400".
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("request target longer than 8192 bytes")]
    TooLong,
    #[error("empty request target")]
    Empty,
    #[error("asterisk-form request target")]
    AsteriskForm,
    #[error("request target is neither a path nor an http(s) URL")]
    UnsupportedForm,
    #[error("absolute URL in request target without a Host header")]
    MissingHost,
    #[error("absolute URL in request target has no host")]
    EmptyAuthority,
    #[error("user name in request target URL")]
    Userinfo,
    #[error("absolute URL in request target names a different host than the Host header")]
    HostMismatch,
    #[error("fragment in request target")]
    Fragment,
    #[error("control character in query")]
    QueryControl,
    #[error("space in query")]
    QuerySpace,
    #[error("query is not valid UTF-8")]
    QueryNotUtf8,
    #[error("control character in path")]
    PathControl,
    #[error("space in path")]
    PathSpace,
    #[error("backslash in path")]
    Backslash,
    #[error("unencoded non-ASCII byte in path")]
    NonAscii,
    #[error("malformed percent-escape in path")]
    BadEscape,
    #[error("encoded slash in path")]
    EncodedSlash,
    #[error("encoded backslash in path")]
    EncodedBackslash,
    #[error("encoded semicolon in path")]
    EncodedSemicolon,
    #[error("encoded control character in path")]
    EncodedControl,
    #[error("double percent-encoding in path")]
    DoubleEncoding,
    #[error("path does not decode to valid UTF-8")]
    PathNotUtf8,
    #[error("'.' or '..' path segment with ';' parameters")]
    DotSegmentParameters,
    #[error("empty path segment with ';' parameters")]
    EmptySegmentParameters,
}

/// Does a canonical path name one file several ways on Windows (IIS,
/// ASP.NET, Windows file servers)? Those trim trailing dots and spaces from
/// a segment (`/admin.` and `/admin%20` open `/admin`), read `name::$DATA`
/// as `name` (an NTFS stream), and answer 8.3 short names (`ADMINI~1` for
/// `administration`). A rule written for `/admin` would not see any of
/// them. Checked only in `[policy] case_insensitive` mode, the mode for
/// such apps: elsewhere these are ordinary, distinct names.
pub fn windows_alias(path: &str) -> bool {
    match_segments(path).any(|seg| {
        seg.ends_with("%20")
            || seg.ends_with('.')
            || seg.contains(':')
            || seg.contains("%3A")
            || seg
                .as_bytes()
                .windows(2)
                .any(|w| w[0] == b'~' && w[1].is_ascii_digit())
    })
}

/// Turns a raw HTTP request-target into its canonical [`Target`].
///
/// `host` is the request's Host header value, used only to vet an
/// absolute-form target. The returned path is ASCII, starts with '/', has no
/// empty or dot segments (except that a trailing '/' is kept), escapes only
/// bytes that are not unreserved (in upper-case hex), and contains no escape
/// that could decode to '/', '\\', a control character or another escape.
pub fn canonicalize(raw_target: &[u8], host: Option<&[u8]>) -> Result<Target, TargetError> {
    if raw_target.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong);
    }
    if raw_target.is_empty() {
        return Err(TargetError::Empty);
    }
    // A fragment never belongs on the wire; one that does arrive is either a
    // broken client or an attempt to make the app and gateway split the
    // target at different places.
    if raw_target.contains(&b'#') {
        return Err(TargetError::Fragment);
    }
    let path_and_query = path_and_query(raw_target, host)?;
    let (raw_path, raw_query) = match path_and_query.iter().position(|&b| b == b'?') {
        Some(at) => (&path_and_query[..at], Some(&path_and_query[at + 1..])),
        None => (path_and_query, None),
    };
    // Only absolute-form can get here with an empty path ("http://host").
    let raw_path: &[u8] = if raw_path.is_empty() { b"/" } else { raw_path };
    let path = canonical_path(raw_path)?;
    let query = raw_query.map(checked_query).transpose()?;
    Ok(Target { path, query })
}

/// Iterates over the segments of a canonical path for rule matching: each
/// segment with its ';' path parameters removed (everything from the first
/// ';' in the segment), skipping a single trailing empty segment (so
/// "/a/b/" yields "a","b"; "/" yields nothing).
///
/// Parameters are dropped because servlet containers drop them when routing
/// (`/admin;jsessionid=1/x` reaches `/admin/x`), so rules must see what the
/// app will route on.
pub fn match_segments(path: &str) -> impl Iterator<Item = &str> {
    let body = path.strip_prefix('/').unwrap_or(path);
    let body = body.strip_suffix('/').unwrap_or(body);
    let mut segments = body.split('/');
    if body.is_empty() {
        // "".split('/') yields one empty segment, which is the root's
        // trailing slash rather than a segment to match.
        segments.next();
    }
    segments.map(|segment| segment.split_once(';').map_or(segment, |(head, _)| head))
}

/// Returns the path-and-query bytes of an origin-form or vetted
/// absolute-form target.
fn path_and_query<'a>(raw: &'a [u8], host: Option<&[u8]>) -> Result<&'a [u8], TargetError> {
    if raw.first() == Some(&b'/') {
        return Ok(raw);
    }
    if raw == b"*" {
        return Err(TargetError::AsteriskForm);
    }
    let after_scheme = strip_prefix_ignore_case(raw, b"http://")
        .or_else(|| strip_prefix_ignore_case(raw, b"https://"))
        .ok_or(TargetError::UnsupportedForm)?;
    let authority_end = after_scheme
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(authority_end);
    if authority.is_empty() {
        return Err(TargetError::EmptyAuthority);
    }
    // RFC 9110 4.2.4: userinfo in an http(s) URI is to be treated as an
    // error; it is also the classic way to make "good.com@evil.com" look
    // like it names good.com.
    if authority.contains(&b'@') {
        return Err(TargetError::Userinfo);
    }
    let host = host.ok_or(TargetError::MissingHost)?;
    // Otherwise the gateway would decide for one virtual host while the app,
    // which may prefer the URL's authority over Host, serves another.
    if !authority.eq_ignore_ascii_case(host) {
        return Err(TargetError::HostMismatch);
    }
    Ok(rest)
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        bytes.get(prefix.len()..)
    } else {
        None
    }
}

/// The query is not interpreted by the gateway, so it is passed on
/// byte-for-byte; only bytes that could end or split the request line in a
/// lenient upstream parser are refused.
fn checked_query(raw: &[u8]) -> Result<String, TargetError> {
    for &b in raw {
        if b == b' ' {
            return Err(TargetError::QuerySpace);
        }
        if is_control(b) {
            return Err(TargetError::QueryControl);
        }
    }
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| TargetError::QueryNotUtf8)
}

fn canonical_path(raw: &[u8]) -> Result<String, TargetError> {
    if raw.len() <= MAX_TARGET_LEN && already_canonical(raw) {
        // Most paths are already canonical: one copy, no rewriting.
        return Ok(String::from_utf8_lossy(raw).into_owned());
    }
    slow_canonical_path(raw)
}

/// [`is_path_literal`] as a table: the fast path tests every byte of
/// every request's path.
static PATH_LITERAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = is_path_literal(b as u8);
        b += 1;
    }
    t
};

/// True for paths the full canonicalisation would return unchanged: only
/// characters allowed raw, no escapes, no empty, `.` or `..` segments, and
/// no segment starting with `;`.
fn already_canonical(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if !PATH_LITERAL[b as usize] {
            return false;
        }
        if b == b'/' {
            let next = raw.get(i + 1).copied();
            let after = raw.get(i + 2).copied();
            let third = raw.get(i + 3).copied();
            let ends = |c: Option<u8>| matches!(c, None | Some(b'/') | Some(b';'));
            match next {
                Some(b'/') | Some(b';') => return false,
                Some(b'.') if ends(after) || (after == Some(b'.') && ends(third)) => return false,
                _ => {}
            }
        }
        i += 1;
    }
    true
}

fn slow_canonical_path(raw: &[u8]) -> Result<String, TargetError> {
    let spelled = normalise_spelling(raw)?;
    let path = resolve_segments(&spelled)?;
    if path.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong);
    }
    Ok(path)
}

/// Gives every byte of the path exactly one spelling: unreserved characters
/// literal, everything else that is not structural escaped in upper-case
/// hex. Segment structure is untouched; see [`resolve_segments`].
fn normalise_spelling(raw: &[u8]) -> Result<String, TargetError> {
    let mut spelled = String::with_capacity(raw.len());
    // Only kept to check that the path means some text; apps that decode
    // invalid UTF-8 disagree on replacement, overlong forms and the like.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'%' => {
                let byte = match tail {
                    [high, low, after @ ..] => {
                        rest = after;
                        match (hex_value(*high), hex_value(*low)) {
                            (Some(high), Some(low)) => (high << 4) | low,
                            _ => return Err(TargetError::BadEscape),
                        }
                    }
                    _ => return Err(TargetError::BadEscape),
                };
                // An escaped separator is a segment boundary to some apps and
                // part of a name to others, so neither reading can be chosen.
                match byte {
                    b'/' => return Err(TargetError::EncodedSlash),
                    b'\\' => return Err(TargetError::EncodedBackslash),
                    // Apps that decode before stripping `;` parameters would
                    // read `/admin%3Bx/y` as `/admin/y`: refuse, as Spring's
                    // firewall does.
                    b';' => return Err(TargetError::EncodedSemicolon),
                    c if is_control(c) => return Err(TargetError::EncodedControl),
                    c if is_unreserved(c) => spelled.push(char::from(c)),
                    c => push_escape(&mut spelled, c),
                }
                decoded.push(byte);
            }
            b' ' => return Err(TargetError::PathSpace),
            c if is_control(c) => return Err(TargetError::PathControl),
            // Windows-minded servers and some proxies treat '\' as '/'.
            b'\\' => return Err(TargetError::Backslash),
            c if !c.is_ascii() => return Err(TargetError::NonAscii),
            c if is_path_literal(c) => {
                spelled.push(char::from(c));
                decoded.push(c);
            }
            c => {
                push_escape(&mut spelled, c);
                decoded.push(c);
            }
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::PathNotUtf8);
    }
    // Checked on the respelled form so that `%25%32%65` (which respells to
    // `%252e`) is caught as well as the literal `%252e`: an app that decodes
    // twice would otherwise see a '.' or '/' the gateway never did.
    if has_escaped_escape(&spelled) {
        return Err(TargetError::DoubleEncoding);
    }
    Ok(spelled)
}

/// Merges repeated slashes and removes dot segments (RFC 3986 5.2.4), with
/// '..' at the root staying at the root and a trailing '/' preserved.
///
/// Slashes are merged before dots are resolved, so `/a//../b` is `/b`; the
/// app gets the resolved form, so it never has to make that choice itself.
fn resolve_segments(spelled: &str) -> Result<String, TargetError> {
    let body = spelled.strip_prefix('/').unwrap_or(spelled);
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in body.split('/') {
        // Only the last segment's kind decides whether the path ends in '/'.
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            _ => {
                check_parameters(segment)?;
                kept.push(segment);
            }
        }
    }
    let mut path = String::with_capacity(spelled.len());
    for segment in &kept {
        path.push('/');
        path.push_str(segment);
    }
    if kept.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// Servlet containers strip ';' parameters before resolving dot segments, so
/// `..;x` climbs a level there while it is an ordinary name here, and `;x`
/// vanishes there; neither can be given one meaning both sides share.
fn check_parameters(segment: &str) -> Result<(), TargetError> {
    match segment.split_once(';') {
        Some(("", _)) => Err(TargetError::EmptySegmentParameters),
        Some(("." | "..", _)) => Err(TargetError::DotSegmentParameters),
        _ => Ok(()),
    }
}

fn has_escaped_escape(spelled: &str) -> bool {
    spelled.as_bytes().windows(5).any(|window| {
        window.starts_with(b"%25") && window[3].is_ascii_hexdigit() && window[4].is_ascii_hexdigit()
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0F)]));
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// pchar (RFC 3986 3.3) less percent-escapes, plus '/'.
const fn is_path_literal(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_aliases_are_spotted_after_canonicalising() {
        let alias = |raw: &str| windows_alias(&canonicalize(raw.as_bytes(), None).unwrap().path);
        for raw in [
            "/admin./x",
            "/admin%2e/x",
            "/admin%20/x",
            "/admin%20%20",
            "/admin.%20/x",
            "/admin::$DATA",
            "/admin%3a%3a$DATA/x",
            "/ADMINI~1/x",
            "/admin.;x=1/y",
        ] {
            assert!(alias(raw), "{raw}");
        }
        for raw in [
            "/admin/x",
            "/v1.2/x",
            "/~user/x",
            "/a%20b/c",
            "/file.txt",
            "/",
        ] {
            assert!(!alias(raw), "{raw}");
        }
    }

    #[test]
    fn only_upper_case_methods_pass() {
        for m in ["GET", "POST", "DELETE", "PROPFIND", "M-SEARCH", "X_CUSTOM"] {
            let m = http::Method::from_bytes(m.as_bytes()).unwrap();
            assert!(method_is_canonical(&m), "{m}");
        }
        for m in ["post", "Post", "pOST", "delete", "propfind", "GET1", "G.T"] {
            let m = http::Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!method_is_canonical(&m), "{m}");
        }
    }

    #[test]
    fn hosts_are_names_or_addresses_with_a_numeric_port() {
        for h in [
            "example.com",
            "example.com.",
            "Example.COM:8080",
            "a-b_c.internal:1",
            "localhost",
            "127.0.0.1:65535",
            "[::1]",
            "[2001:db8::1]:443",
            "host:",
        ] {
            assert!(host_is_valid(h.as_bytes()), "{h}");
        }
        for h in [
            "",
            ":80",
            "secure.example:abc",
            "secure.example:80x",
            "secure.example:-1",
            "secure.example:65536",
            "secure.example:000080",
            "a b",
            "x/foo",
            "x..",
            ".x",
            "a..b",
            "user@host",
            "host%2ecom",
            "[::1",
            "[::1]x",
            "[not-v6]",
            "[::1]:abc",
            "a:1:2",
            "\u{e9}xample.com",
        ] {
            assert!(!host_is_valid(h.as_bytes()), "{h}");
        }
    }
    use proptest::prelude::*;

    fn canon(raw: &str) -> Result<Target, TargetError> {
        canonicalize(raw.as_bytes(), Some(b"example.com"))
    }

    fn path_of(raw: &str) -> Result<String, TargetError> {
        canon(raw).map(|target| target.path)
    }

    #[test]
    fn attack_table() {
        use TargetError::*;
        let table: &[(&str, Result<&str, TargetError>)] = &[
            // dot segments, literal and encoded
            ("/admin/../admin", Ok("/admin")),
            ("/public/../admin", Ok("/admin")),
            ("/public/%2e%2e/admin", Ok("/admin")),
            ("/public/%2E%2E/admin", Ok("/admin")),
            ("/public/.%2e/admin", Ok("/admin")),
            ("/public/%2e./admin", Ok("/admin")),
            ("/public/%2e/admin", Ok("/public/admin")),
            ("/../../../etc/passwd", Ok("/etc/passwd")),
            ("/%2e%2e/%2e%2e/etc/passwd", Ok("/etc/passwd")),
            ("/a/b/..%2f..%2fadmin", Err(EncodedSlash)),
            // repeated slashes
            ("//admin", Ok("/admin")),
            ("//a///b", Ok("/a/b")),
            ("///", Ok("/")),
            ("/a//../b", Ok("/b")),
            // separators hidden in escapes, or the other separator
            ("/admin%2fx", Err(EncodedSlash)),
            ("/admin%2Fx", Err(EncodedSlash)),
            ("/admin%5cx", Err(EncodedBackslash)),
            ("/admin%5Cx", Err(EncodedBackslash)),
            ("/admin%3Bx/y", Err(EncodedSemicolon)),
            ("/admin%3bx/y", Err(EncodedSemicolon)),
            ("/admin\\x", Err(Backslash)),
            ("/public\\..\\admin", Err(Backslash)),
            // control characters, raw and encoded
            ("/a%00b", Err(EncodedControl)),
            ("/a%0d%0a", Err(EncodedControl)),
            ("/a%0D%0ASet-Cookie:x", Err(EncodedControl)),
            ("/a%7f", Err(EncodedControl)),
            ("/a%09", Err(EncodedControl)),
            ("/a\tb", Err(PathControl)),
            ("/a\0b", Err(PathControl)),
            ("/a\x7fb", Err(PathControl)),
            ("/a\rb", Err(PathControl)),
            ("/a b", Err(PathSpace)),
            // double encoding
            ("/%252e%252e/admin", Err(DoubleEncoding)),
            ("/%252E%252E/admin", Err(DoubleEncoding)),
            ("/%2541", Err(DoubleEncoding)),
            ("/%252f", Err(DoubleEncoding)),
            ("/%25%32%65", Err(DoubleEncoding)),
            ("/%25%32e", Err(DoubleEncoding)),
            ("/100%25", Ok("/100%25")),
            ("/100%25x", Ok("/100%25x")),
            ("/%25%C3%A9", Ok("/%25%C3%A9")),
            // ';' parameters
            ("/public/..;/admin", Err(DotSegmentParameters)),
            ("/public/..;x=1/admin", Err(DotSegmentParameters)),
            ("/public/%2e%2e;/admin", Err(DotSegmentParameters)),
            ("/public/.;/admin", Err(DotSegmentParameters)),
            ("/;x/admin", Err(EmptySegmentParameters)),
            ("/a/;", Err(EmptySegmentParameters)),
            ("/admin;x/y", Ok("/admin;x/y")),
            ("/admin;jsessionid=1/x", Ok("/admin;jsessionid=1/x")),
            ("/a/...;x", Ok("/a/...;x")),
            // spelling of escapes
            ("/ad%6Din", Ok("/admin")),
            ("/ad%6din", Ok("/admin")),
            ("/%41%7e%5F%2D", Ok("/A~_-")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/a%3fb", Ok("/a%3Fb")),
            ("/a%23b", Ok("/a%23b")),
            ("/a%20b", Ok("/a%20b")),
            // malformed escapes
            ("/a%", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%zz", Err(BadEscape)),
            ("/a%u002e", Err(BadEscape)),
            ("/a%%41", Err(BadEscape)),
            // not UTF-8 once decoded
            ("/%ff", Err(PathNotUtf8)),
            ("/%c3", Err(PathNotUtf8)),
            ("/%c0%ae%c0%ae/admin", Err(PathNotUtf8)),
            ("/%e0%80%ae", Err(PathNotUtf8)),
            ("/%ed%a0%80", Err(PathNotUtf8)),
            // raw non-ASCII must be encoded by the client
            ("/café", Err(NonAscii)),
            // raw characters that get one encoded spelling
            ("/a\"b", Ok("/a%22b")),
            ("/<script>", Ok("/%3Cscript%3E")),
            ("/a^b`c{d|e}f[g]", Ok("/a%5Eb%60c%7Bd%7Ce%7Df%5Bg%5D")),
            ("/!$&'()*+,;=:@", Ok("/!$&'()*+,;=:@")),
            // trailing slash and dots at the end
            ("/a/b/", Ok("/a/b/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/..", Ok("/")),
            ("/.", Ok("/")),
            ("/", Ok("/")),
            ("/a/./b", Ok("/a/b")),
            ("/a/b//", Ok("/a/b/")),
            ("/a/%2e", Ok("/a/")),
            // forms of the request target
            ("*", Err(AsteriskForm)),
            ("", Err(Empty)),
            ("admin", Err(UnsupportedForm)),
            ("example.com:443", Err(UnsupportedForm)),
            ("ftp://example.com/", Err(UnsupportedForm)),
            ("http:/example.com/", Err(UnsupportedForm)),
            ("/a#b", Err(Fragment)),
            ("/a?b#c", Err(Fragment)),
        ];
        for (raw, expected) in table {
            let expected = expected.map(str::to_owned);
            assert_eq!(path_of(raw), expected, "input {raw:?}");
        }
    }

    #[test]
    fn absolute_form() {
        use TargetError::*;
        let host = Some(&b"example.com"[..]);
        let with_port = Some(&b"Example.com:8443"[..]);
        type Expected = Result<(&'static str, Option<&'static str>), TargetError>;
        let table: &[(&str, Option<&[u8]>, Expected)] = &[
            ("http://example.com/a", host, Ok(("/a", None))),
            ("https://example.com/a?b=c", host, Ok(("/a", Some("b=c")))),
            ("HTTP://EXAMPLE.COM/a", host, Ok(("/a", None))),
            ("hTTpS://example.com:8443/a", with_port, Ok(("/a", None))),
            ("http://example.com", host, Ok(("/", None))),
            ("http://example.com?x=1", host, Ok(("/", Some("x=1")))),
            ("http://example.com//admin/../x", host, Ok(("/x", None))),
            (
                "http://example.com/%2e%2e/admin",
                host,
                Ok(("/admin", None)),
            ),
            ("http://evil.com/a", host, Err(HostMismatch)),
            ("http://example.com:80/a", host, Err(HostMismatch)),
            ("http://example.com/a", with_port, Err(HostMismatch)),
            ("http://example.com.evil.com/a", host, Err(HostMismatch)),
            ("http://example.com/a", None, Err(MissingHost)),
            ("http:///a", host, Err(EmptyAuthority)),
            ("http://example.com@evil.com/", host, Err(Userinfo)),
            ("http://evil.com@example.com/", host, Err(Userinfo)),
            ("http://example.com/a\\b", host, Err(Backslash)),
            (
                "http://example.com/..;/admin",
                host,
                Err(DotSegmentParameters),
            ),
        ];
        for (raw, host, expected) in table {
            let expected = expected.map(|(path, query)| Target {
                path: path.to_owned(),
                query: query.map(str::to_owned),
            });
            assert_eq!(
                canonicalize(raw.as_bytes(), *host),
                expected,
                "input {raw:?}"
            );
        }
    }

    #[test]
    fn query_rules() {
        use TargetError::*;
        type Expected = Result<Option<&'static str>, TargetError>;
        let table: &[(&[u8], Expected)] = &[
            (b"/a", Ok(None)),
            (b"/a?", Ok(Some(""))),
            (b"/a?b=c&d=%2e%2E%zz", Ok(Some("b=c&d=%2e%2E%zz"))),
            (b"/a?next=/x/../y?z", Ok(Some("next=/x/../y?z"))),
            (b"/a?q=caf\xc3\xa9", Ok(Some("q=caf\u{e9}"))),
            (b"/a?q=\\", Ok(Some("q=\\"))),
            (b"/a?q=\xff", Err(QueryNotUtf8)),
            (b"/a?q=a b", Err(QuerySpace)),
            (b"/a?q=a\tb", Err(QueryControl)),
            (b"/a?q=\r\nx", Err(QueryControl)),
            (b"/a?q=\x00", Err(QueryControl)),
            (b"/a?q=\x7f", Err(QueryControl)),
        ];
        for (raw, expected) in table {
            let got = canonicalize(raw, None).map(|target| target.query);
            let expected = expected.map(|query| query.map(str::to_owned));
            assert_eq!(got, expected, "input {raw:?}");
        }
    }

    #[test]
    fn escapes_in_query_are_left_alone() {
        // The query is not a place to smuggle the path's forbidden bytes
        // back in: '?' ends the path, so "%2f" after it is only query text.
        let target = canon("/a?x=%2f..%5c").unwrap();
        assert_eq!(target.path, "/a");
        assert_eq!(target.query.as_deref(), Some("x=%2f..%5c"));
    }

    #[test]
    fn length_cap() {
        let mut raw = String::from("/");
        raw.push_str(&"a".repeat(MAX_TARGET_LEN - 1));
        assert!(canon(&raw).is_ok());
        raw.push('a');
        assert_eq!(canon(&raw), Err(TargetError::TooLong));
        // Under the input cap but over it once '<' becomes "%3C".
        let mut raw = String::from("/");
        raw.push_str(&"<".repeat(3000));
        assert_eq!(canon(&raw), Err(TargetError::TooLong));
    }

    #[test]
    fn uri_string() {
        let target = canon("/a/../b?c=d").unwrap();
        assert_eq!(target.to_uri_string(), "/b?c=d");
        let target = canon("/a/../b?").unwrap();
        assert_eq!(target.to_uri_string(), "/b?");
        let target = canon("/a/../b").unwrap();
        assert_eq!(target.to_uri_string(), "/b");
    }

    #[test]
    fn segments_for_matching() {
        let table: &[(&str, &[&str])] = &[
            ("/", &[]),
            ("/a", &["a"]),
            ("/a/b", &["a", "b"]),
            ("/a/b/", &["a", "b"]),
            ("/admin;jsessionid=1/x", &["admin", "x"]),
            ("/admin;a;b/x;y/", &["admin", "x"]),
        ];
        for (path, expected) in table {
            let got: Vec<&str> = match_segments(path).collect();
            assert_eq!(&got, expected, "path {path:?}");
        }
    }

    #[test]
    fn error_messages_are_plain_words() {
        assert_eq!(
            TargetError::EncodedSlash.to_string(),
            "encoded slash in path"
        );
        assert_eq!(
            TargetError::DoubleEncoding.to_string(),
            "double percent-encoding in path"
        );
    }

    /// Pieces that exercise every branch, so generated paths hit the
    /// interesting cases far more often than uniform bytes would.
    const ANY_PIECES: &[&str] = &[
        "/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%5c", "%25", "%", "%3", ";", ";x=1", "a",
        "b", "admin", "%41", "%61", "2", "e", "F", "%c3%a9", "%C3", "%A9", "%ff", "%00", "%7f",
        "%20", "%3B", "\\", "?", "#", "<", "\"", "{", "~", "-", "_", ":", "@", "!", "\u{e9}", "\t",
        " ", "%u", "%%",
    ];

    /// Pieces that are each acceptable somewhere, so that most generated
    /// paths get through and the properties about accepted output are
    /// exercised on many dot-segment and respelling cases.
    const ACCEPTABLE_PIECES: &[&str] = &[
        "/", "/", "/", "/", ".", ".", "..", "..", "%2e", "%2E", "a", "b", ";x", "%41", "%6e",
        "%c3%a9", "<", "~", "%20", "%3b", "%25", "2", "e", "%3F", "..%2E", ":", "@",
    ];

    fn path_like(pieces: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(pieces), 0..24).prop_map(|pieces| {
            let mut raw = String::from("/");
            for piece in pieces {
                raw.push_str(piece);
            }
            raw.into_bytes()
        })
    }

    fn any_target() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => path_like(ACCEPTABLE_PIECES),
            2 => path_like(ANY_PIECES),
            1 => any::<Vec<u8>>(),
            1 => any::<Vec<u8>>().prop_map(|mut bytes| {
                bytes.insert(0, b'/');
                bytes
            }),
        ]
    }

    fn decode(segment: &str) -> Vec<u8> {
        percent_encoding::percent_decode_str(segment).collect()
    }

    /// Resolves dot segments the way an app that merges slashes would, on
    /// already-split segments.
    fn resolve(segments: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for segment in segments {
            match segment.as_slice() {
                b"" | b"." => {}
                b".." => {
                    out.pop();
                }
                _ => out.push(segment),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn never_panics(raw in any_target(), host in proptest::option::of(any::<Vec<u8>>())) {
            let _ = canonicalize(&raw, host.as_deref());
        }

        #[test]
        fn never_panics_on_absolute_form(tail in path_like(ANY_PIECES), host in "[a-zA-Z.:@]{0,12}") {
            let mut raw = b"http://".to_vec();
            raw.extend_from_slice(host.as_bytes());
            raw.extend_from_slice(&tail[1..]);
            let _ = canonicalize(&raw, Some(host.as_bytes()));
        }

        #[test]
        fn idempotent(raw in any_target()) {
            if let Ok(target) = canonicalize(&raw, None) {
                let again = canonicalize(target.path.as_bytes(), None);
                prop_assert_eq!(again, Ok(Target { path: target.path.clone(), query: None }));
                let whole = canonicalize(target.to_uri_string().as_bytes(), None);
                prop_assert_eq!(whole, Ok(target));
            }
        }

        #[test]
        fn output_has_one_spelling(raw in any_target()) {
            if let Ok(Target { path, .. }) = canonicalize(&raw, None) {
                prop_assert!(path.starts_with('/'));
                prop_assert!(path.is_ascii());
                prop_assert!(!path.contains("//"));
                prop_assert!(!path.contains("/./"));
                prop_assert!(!path.contains("/../"));
                prop_assert!(!path.ends_with("/.."));
                prop_assert!(!path.ends_with("/."));
                prop_assert!(!path.contains('\\'));
                prop_assert!(!path.contains(' '));
                prop_assert!(!path.contains('#') && !path.contains('?'));
                let upper = path.to_ascii_uppercase();
                prop_assert!(!upper.contains("%2F"));
                prop_assert!(!upper.contains("%5C"));
                prop_assert!(!upper.contains("%2E"));
                prop_assert!(!has_escaped_escape(&upper));
                prop_assert!(path.len() <= MAX_TARGET_LEN);
                // Every escape is upper-case hex for a byte that needs it.
                let bytes = path.as_bytes();
                for (at, _) in path.match_indices('%') {
                    let high = bytes.get(at + 1).copied().and_then(hex_value);
                    let low = bytes.get(at + 2).copied().and_then(hex_value);
                    let (Some(high), Some(low)) = (high, low) else {
                        return Err(TestCaseError::fail(format!("bad escape in {path:?}")));
                    };
                    prop_assert!(!bytes[at + 1].is_ascii_lowercase());
                    prop_assert!(!bytes[at + 2].is_ascii_lowercase());
                    let byte = (high << 4) | low;
                    prop_assert!(!is_unreserved(byte) && !is_control(byte));
                }
                prop_assert!(String::from_utf8(decode(&path)).is_ok());
            }
        }

        #[test]
        fn no_dot_segments(raw in any_target()) {
            if let Ok(Target { path, .. }) = canonicalize(&raw, None) {
                for segment in path.split('/') {
                    prop_assert!(segment != "." && segment != "..", "{path:?}");
                }
                for segment in match_segments(&path) {
                    prop_assert!(segment != "." && segment != ".." && !segment.is_empty(), "{path:?}");
                }
            }
        }

        /// The readings of the forwarded path by the usual kinds of app agree
        /// with what the rules matched: one that strips ';' parameters before
        /// decoding (Tomcat, Jetty, Spring), and one that knows nothing of
        /// parameters (nginx, Go, Node).
        #[test]
        fn apps_read_what_the_gateway_matched(raw in any_target()) {
            if let Ok(Target { path, .. }) = canonicalize(&raw, None) {
                let matched: Vec<Vec<u8>> = match_segments(&path).map(decode).collect();

                let servlet = resolve(
                    path.split('/')
                        .map(|segment| segment.split_once(';').map_or(segment, |(head, _)| head))
                        .map(decode)
                        .collect(),
                );
                prop_assert_eq!(&servlet, &matched, "{:?}", path);

                let plain = resolve(path.split('/').map(decode).collect());
                let canonical: Vec<Vec<u8>> =
                    path.split('/').filter(|s| !s.is_empty()).map(decode).collect();
                prop_assert_eq!(plain, canonical, "{:?}", path);
            }
        }
    }

    proptest::proptest! {
        /// The fast path never disagrees with the full canonicalisation.
        #[test]
        fn fast_path_agrees_with_the_full_reading(raw in "/[a-zA-Z0-9._~!$&'()*+,;=:@/-]{0,40}") {
            if already_canonical(raw.as_bytes()) {
                proptest::prop_assert_eq!(slow_canonical_path(raw.as_bytes()), Ok(raw.clone()));
            }
        }
    }

    #[test]
    fn spelled_as_sent() {
        let t = canonicalize(b"/a/b?x=1", None).unwrap();
        assert!(t.is_spelled(b"/a/b?x=1"));
        assert!(!t.is_spelled(b"/a/./b?x=1"));
        assert!(!t.is_spelled(b"/a/b"));
        let t = canonicalize(b"/a//b", None).unwrap();
        assert!(!t.is_spelled(b"/a//b"));
        assert!(t.is_spelled(b"/a/b"));
        let t = canonicalize(b"/a?", None).unwrap();
        assert!(t.is_spelled(b"/a?"));
    }
}
