//! Compiled host, path and method matchers. Built once when a policy loads;
//! matching does no parsing and no allocation.

use std::fmt;

/// A host rule: exact (`app.example.com`) or any subdomain (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Stored with its leading dot: `.example.com`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let h = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid_label =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if let Some(rest) = h.strip_prefix("*.") {
            if rest.split('.').all(valid_label) {
                return Ok(HostPattern::Suffix(format!(".{rest}")));
            }
        } else if h.split('.').all(valid_label) || h.parse::<std::net::IpAddr>().is_ok() {
            return Ok(HostPattern::Exact(h));
        }
        Err(format!(
            "invalid host {raw:?}: write a host name like \"app.example.com\" or \"*.example.com\" (no port, no scheme)"
        ))
    }

    /// `host` is the request's host with any port already removed.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// Characters a pattern may contain literally that requests must send
/// percent-encoded; everything non-ASCII is encoded too.
const PATTERN_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment, any value.
    Any,
}

/// A path rule: `/a/b` (exact), `/a/*/c` (one segment), `/a/**` (the prefix
/// itself and everything below it, on segment boundaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
    pub tail: bool,
    pub case_insensitive: bool,
    source: String,
}

impl PathPattern {
    pub fn parse(raw: &str, case_insensitive: bool) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("invalid path {raw:?}: a path starts with '/'"));
        }
        if raw.contains('?') || raw.contains('#') {
            return Err(format!(
                "invalid path {raw:?}: the query never takes part in matching; remove '?' and '#'"
            ));
        }
        let mut segments = Vec::new();
        let mut tail = false;
        let parts: Vec<&str> = raw[1..].split('/').collect();
        let n = parts.len();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == n;
            match *part {
                "" if last => {}
                "" => return Err(format!("invalid path {raw:?}: empty segment ('//')")),
                "**" if last => tail = true,
                "**" => return Err(format!("invalid path {raw:?}: '**' is allowed only as the last segment")),
                "*" => segments.push(Segment::Any),
                "." | ".." => return Err(format!("invalid path {raw:?}: '.' and '..' segments never reach the matcher")),
                p if p.contains('*') => {
                    return Err(format!(
                        "invalid path {raw:?}: '*' stands for a whole segment (\"/a/*/b\") and '**' for a tail (\"/a/**\"); partial wildcards like {p:?} are not supported"
                    ))
                }
                p => {
                    // Patterns are written as people read paths; compare them
                    // with the canonical form that requests are reduced to.
                    let encoded = percent_encoding::utf8_percent_encode(p, PATTERN_ENCODE).to_string();
                    let canon = crate::canonical::canonicalize(format!("/{encoded}").as_bytes(), None)
                        .map_err(|e| format!("invalid path {raw:?}: segment {p:?}: {e}"))?;
                    let mut lit = canon.path[1..].to_string();
                    if lit.contains('/') || lit.is_empty() || lit.contains(';') {
                        return Err(format!("invalid path {raw:?}: segment {p:?} is not a plain segment"));
                    }
                    if case_insensitive {
                        lit = lit.to_ascii_lowercase();
                    }
                    segments.push(Segment::Literal(lit));
                }
            }
        }
        Ok(PathPattern {
            segments,
            tail,
            case_insensitive,
            source: raw.to_string(),
        })
    }

    /// `segs` are the request path's segments, from
    /// [`crate::canonical::match_segments`].
    pub fn matches(&self, segs: &[&str]) -> bool {
        if self.tail {
            if segs.len() < self.segments.len() {
                return false;
            }
        } else if segs.len() != self.segments.len() {
            return false;
        }
        self.segments.iter().zip(segs).all(|(p, s)| match p {
            Segment::Any => !s.is_empty(),
            Segment::Literal(l) => {
                if self.case_insensitive {
                    l.eq_ignore_ascii_case(s)
                } else {
                    l == s
                }
            }
        })
    }

    /// True if every path this pattern matches is also matched by `self`.
    pub fn covers(&self, other: &PathPattern) -> bool {
        if self.tail {
            if other.segments.len() < self.segments.len() {
                return false;
            }
        } else if other.tail || other.segments.len() != self.segments.len() {
            return false;
        }
        self.segments
            .iter()
            .zip(&other.segments)
            .all(|(a, b)| match (a, b) {
                (Segment::Any, _) => true,
                (Segment::Literal(x), Segment::Literal(y)) => x == y,
                (Segment::Literal(_), Segment::Any) => false,
            })
    }

    pub fn is_catch_all(&self) -> bool {
        self.tail && self.segments.is_empty()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A set of HTTP methods as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];
const OTHER: u16 = 1 << 9;

impl MethodSet {
    pub const ALL: MethodSet = MethodSet(u16::MAX);

    pub fn parse(list: &[String]) -> Result<Self, String> {
        let mut bits = 0u16;
        for m in list {
            let up = m.to_ascii_uppercase();
            match METHODS.iter().position(|k| *k == up) {
                Some(i) => bits |= 1 << i,
                None => {
                    return Err(format!(
                        "unknown method {m:?}; expected one of {}",
                        METHODS.join(", ")
                    ))
                }
            }
        }
        if bits == 0 {
            return Err("methods is empty; remove it to match every method".into());
        }
        // Apps answer HEAD as a GET without the body, so a rule about GET
        // must also cover HEAD, or HEAD would slip past it to a later rule.
        if bits & 1 != 0 {
            bits |= 1 << 1;
        }
        Ok(MethodSet(bits))
    }

    pub fn bit(method: &http::Method) -> u16 {
        match *method {
            http::Method::GET => 1,
            http::Method::HEAD => 1 << 1,
            http::Method::POST => 1 << 2,
            http::Method::PUT => 1 << 3,
            http::Method::PATCH => 1 << 4,
            http::Method::DELETE => 1 << 5,
            http::Method::OPTIONS => 1 << 6,
            http::Method::TRACE => 1 << 7,
            http::Method::CONNECT => 1 << 8,
            _ => OTHER,
        }
    }

    pub fn contains(&self, method: &http::Method) -> bool {
        self.contains_bit(Self::bit(method))
    }

    pub fn contains_bit(&self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    pub fn covers(&self, other: &MethodSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn names(&self) -> Vec<&'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::match_segments;

    fn m(p: &str, path: &str) -> bool {
        let pat = PathPattern::parse(p, false).unwrap();
        let segs: Vec<&str> = match_segments(path).collect();
        pat.matches(&segs)
    }

    #[test]
    fn tail_matches_prefix_and_below_on_segment_boundaries() {
        assert!(m("/admin/**", "/admin"));
        assert!(m("/admin/**", "/admin/"));
        assert!(m("/admin/**", "/admin/x/y"));
        assert!(!m("/admin/**", "/administrator"));
        assert!(!m("/admin/**", "/"));
        assert!(m("/**", "/"));
        assert!(m("/**", "/anything/at/all"));
    }

    #[test]
    fn exact_and_single_segment() {
        assert!(m("/reports/export", "/reports/export"));
        assert!(m("/reports/export", "/reports/export/"));
        assert!(!m("/reports/export", "/reports/export/x"));
        assert!(m("/users/*/edit", "/users/42/edit"));
        assert!(!m("/users/*/edit", "/users/edit"));
        assert!(m("/", "/"));
        assert!(!m("/", "/x"));
    }

    #[test]
    fn path_parameters_do_not_hide_a_segment() {
        assert!(m("/admin/**", "/admin;jsessionid=1/x"));
    }

    #[test]
    fn pattern_literals_are_canonical() {
        assert!(m("/caf%c3%a9/**", "/caf%C3%A9/menu"));
        assert!(m("/a b", "/a%20b"));
        assert!(PathPattern::parse("/a*b", false).is_err());
        assert!(PathPattern::parse("/**/x", false).is_err());
        assert!(PathPattern::parse("/a/../b", false).is_err());
        assert!(PathPattern::parse("admin", false).is_err());
    }

    #[test]
    fn case_insensitive_switch() {
        let pat = PathPattern::parse("/Admin/**", true).unwrap();
        assert!(pat.matches(&["ADMIN", "x"]));
        let pat = PathPattern::parse("/Admin/**", false).unwrap();
        assert!(!pat.matches(&["admin", "x"]));
    }

    #[test]
    fn hosts() {
        let h = HostPattern::parse("*.Example.com").unwrap();
        assert!(h.matches("a.example.com"));
        assert!(h.matches("a.b.EXAMPLE.com."));
        assert!(!h.matches("example.com"));
        assert!(!h.matches("badexample.com"));
        let e = HostPattern::parse("app.example.com.").unwrap();
        assert!(e.matches("APP.example.com"));
        assert!(!e.matches("app.example.com.evil"));
        assert!(HostPattern::parse("http://x").is_err());
    }

    #[test]
    fn get_rules_cover_head() {
        let m = MethodSet::parse(&["GET".to_string()]).unwrap();
        assert!(m.contains(&http::Method::HEAD));
        assert!(!m.contains(&http::Method::POST));
        let m = MethodSet::parse(&["POST".to_string()]).unwrap();
        assert!(!m.contains(&http::Method::HEAD));
    }

    #[test]
    fn covers() {
        let all = PathPattern::parse("/**", false).unwrap();
        let admin = PathPattern::parse("/admin/**", false).unwrap();
        let x = PathPattern::parse("/admin/x", false).unwrap();
        assert!(all.covers(&admin));
        assert!(admin.covers(&x));
        assert!(!x.covers(&admin));
        assert!(!admin.covers(&all));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::canonical::match_segments;
    use proptest::prelude::*;

    fn seg() -> impl Strategy<Value = String> {
        "[a-c]{1,3}"
    }

    proptest! {
        /// A tail pattern matches exactly the paths whose segments start
        /// with its own; an exact pattern exactly the same segments.
        #[test]
        fn tail_and_exact_match_on_segment_boundaries(pat in prop::collection::vec(seg(), 0..4), path in prop::collection::vec(seg(), 0..6), trailing in any::<bool>()) {
            let p = format!("/{}", path.join("/")) + if trailing && !path.is_empty() { "/" } else { "" };
            let segs: Vec<&str> = match_segments(&p).collect();
            let tail = PathPattern::parse(&format!("/{}{}**", pat.join("/"), if pat.is_empty() { "" } else { "/" }), false).unwrap();
            prop_assert_eq!(tail.matches(&segs), path.len() >= pat.len() && path[..pat.len()] == pat[..]);
            let exact = PathPattern::parse(&format!("/{}", pat.join("/")), false).unwrap();
            prop_assert_eq!(exact.matches(&segs), path == pat);
        }

        /// A literal never matches a longer or shorter segment that merely
        /// shares a prefix (`/admin/**` vs `/administrator`).
        #[test]
        fn no_prefix_bleed(a in "[a-z]{1,6}", extra in "[a-z0-9]{1,4}") {
            let pat = PathPattern::parse(&format!("/{a}/**"), false).unwrap();
            let longer = format!("/{a}{extra}");
            let segs: Vec<&str> = match_segments(&longer).collect();
            prop_assert!(!pat.matches(&segs));
        }

        /// `covers` is sound: whatever the narrower pattern matches, the
        /// wider one does too.
        #[test]
        fn covers_is_sound(a in prop::collection::vec(seg(), 0..3), b in prop::collection::vec(seg(), 0..4), path in prop::collection::vec(seg(), 0..5), at in any::<bool>(), bt in any::<bool>()) {
            let mk = |v: &Vec<String>, t: bool| {
                let base = format!("/{}", v.join("/"));
                let s = if t { if v.is_empty() { "/**".to_string() } else { format!("{base}/**") } } else { base };
                PathPattern::parse(&s, false).unwrap()
            };
            let (pa, pb) = (mk(&a, at), mk(&b, bt));
            let p = format!("/{}", path.join("/"));
            let segs: Vec<&str> = match_segments(&p).collect();
            if pa.covers(&pb) && pb.matches(&segs) {
                prop_assert!(pa.matches(&segs));
            }
        }
    }
}
