//! Headers the gateway owns: identity sent upstream, and the client's
//! address. Every client-sent header that could be read as identity by the
//! app or another gateway is removed first, in every spelling.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::accounts::User;
use crate::config::{HeaderPreset, HeadersConfig};

/// Exact names (normalised: lower case, `_` and `.` read as `-`).
const OWNED_EXACT: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-rewrite-url",
    "x-email",
    "x-groups",
    "x-preferred-username",
    // Method overrides would let a request the policy judged as POST act
    // as DELETE in apps that honour them (Rails, Laravel, Symfony, express).
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // Identity and client-address headers of other gateways and hosts
    // (Google IAP, Kong, Grafana, IIS/ARR, JWT forwarders): an app moved
    // from behind one of them may still trust them.
    "x-goog-iap-jwt-assertion",
    "x-id-token",
    "x-access-token",
    "x-jwt-assertion",
    "x-proxy-user",
    "x-grafana-user",
    "client-ip",
    "x-proxyuser-ip",
    "x-host",
    "x-url-scheme",
    "front-end-https",
    // Client-certificate results a TLS terminator passes on (nginx, HAProxy,
    // Apache, Traefik); an app behind mutual TLS may take them as identity.
    "x-client-cert",
    "x-client-verify",
    "x-client-dn",
    "ssl-client-cert",
    "ssl-client-verify",
    "ssl-client-s-dn",
    "x-arr-clientcert",
    // User names other proxies and frameworks read.
    "proxy-user",
    "auth-user",
    // Envoy's copy of the path before rewriting, which some apps route on.
    "x-envoy-original-path",
];

/// Name prefixes used by other gateways and apps for identity.
const OWNED_PREFIXES: &[&str] = &[
    "x-forwarded-",               // oauth2-proxy, and the client-address family
    "x-auth-",                    // oauth2-proxy X-Auth-Request-*, gatekeeper X-Auth-*
    "remote-",                    // Authelia
    "x-remote-",                  // Apache-style
    "x-pomerium-",                // Pomerium
    "x-vouch-",                   // Vouch
    "x-token-",                   // caddy-security
    "x-webauth-",                 // Grafana
    "impersonate-",               // Kubernetes
    "x-user",                     // X-User, X-User-Id, X-Username, ...
    "x-portcullis-",              // our own namespace
    "x-original-",                // X-Original-URL/-URI/-Host/-Forwarded-For (IIS, ingress-nginx)
    "x-amzn-oidc-",               // AWS ALB
    "x-ms-client-principal",      // Azure App Service
    "x-goog-authenticated-user-", // Google IAP
    "cf-access-",                 // Cloudflare Access
    "x-consumer-",                // Kong
    "x-credential-",              // Kong
    "x-authenticated-",           // Kong, and X-Authenticated-User
    "oidc-claim-",                // mod_auth_openidc (OIDC_CLAIM_*)
    "x-oidc-",                    // mod_auth_openidc behind a proxy
    "x-ssl-",                     // X-SSL-Client-*, X-SSL-User (client certificates)
    "x-authentik-",               // authentik's proxy outpost
    "tailscale-user-",            // tailscale serve
    "teleport-",                  // Teleport application access
    "x-ms-token-",                // Azure App Service authentication
];

/// Names the gateway sets itself or that frame the request: no identity
/// value may be sent in one (normalised like [`OWNED_EXACT`]).
const GATEWAY_SET: &[&str] = &[
    "host",
    "cookie",
    "authorization",
    "proxy-authorization",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Every preset's identity headers, and the other common spellings of a
/// user header: an app set up for any of them reads the value as the user.
const IDENTITY_ANYWHERE: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-name",
    "x-forwarded-preferred-username",
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-remote-user",
    // Envoy's client certificate, which apps behind it read as identity.
    "x-forwarded-client-cert",
    // Other user and role names in the allowed families that apps read
    // (Rundeck's X-Forwarded-Roles, and the -Username spellings).
    "x-forwarded-username",
    "x-forwarded-uuid",
    "x-forwarded-roles",
    "remote-username",
    "x-auth-request-username",
];

/// Why a configured header cannot carry an identity value, if it cannot:
/// it frames the request, the gateway sets it, or it is already taken by
/// another identity value. `taken` holds the names already in use, each
/// with what it carries.
pub fn header_conflict(name: &str, taken: &[(String, String)]) -> Option<String> {
    let norm = normalised(name);
    if GATEWAY_SET.contains(&norm.as_str()) {
        return Some(format!(
            "{name:?} is set by the gateway or frames the request; pick a name of your own, like \"X-Forwarded-Department\""
        ));
    }
    if let Some((_, what)) = taken.iter().find(|(n, _)| *n == norm) {
        return Some(format!(
            "{name:?} already carries {what}; one header, one value"
        ));
    }
    None
}

/// Name families a custom field's header may use although clients' copies
/// are stripped: the identity families of the presets. Everything else the
/// gateway strips (`X-User*`, `X-Webauth-*`, `Impersonate-*`, `X-Real-IP`,
/// …) some app reads as the user or the client, so no field value goes in.
const FIELD_FAMILIES: &[&str] = &[
    "x-forwarded-",
    "remote-",
    "x-auth-request-",
    "x-portcullis-",
];

/// [`header_conflict`] for a custom field's header, which also may not be
/// any other name apps read as identity (see [`FIELD_FAMILIES`]).
pub fn field_header_conflict(name: &str, taken: &[(String, String)]) -> Option<String> {
    if let Some(why) = header_conflict(name, taken) {
        return Some(why);
    }
    let norm = normalised(name);
    let owned =
        OWNED_EXACT.contains(&norm.as_str()) || OWNED_PREFIXES.iter().any(|p| norm.starts_with(p));
    if owned && !FIELD_FAMILIES.iter().any(|f| norm.starts_with(f)) {
        return Some(format!(
            "{name:?} is read as the user or the client by other gateways' apps; use a name under X-Forwarded-, Remote-, X-Auth-Request- or X-Portcullis-, or one of your own"
        ));
    }
    None
}

/// The normalised form of a header name (see [`normalise`]).
pub fn normalised(name: &str) -> String {
    name.bytes().map(|c| char::from(fold(c))).collect()
}

/// The identity headers a config sends, normalised, each with what it
/// carries (for [`header_conflict`]).
pub fn identity_names(cfg: &HeadersConfig) -> Vec<(String, String)> {
    let (user, email, groups, name) = sent_names(cfg);
    [
        (user, "the username"),
        (email, "the email"),
        (groups, "the groups"),
        (name, "the name"),
    ]
    .into_iter()
    .flat_map(|(names, what)| {
        names
            .into_iter()
            .map(move |n| (normalised(n), what.to_string()))
    })
    .collect()
}

/// The names a custom field's header may not take: the identity headers
/// this config sends, and every other gateway's user headers, which an app
/// moved from behind one of them reads as the user.
pub fn taken_for_fields(cfg: &HeadersConfig) -> Vec<(String, String)> {
    let mut out = identity_names(cfg);
    for n in IDENTITY_ANYWHERE {
        if !out.iter().any(|(o, _)| o == n) {
            out.push((
                n.to_string(),
                "identity for another gateway's apps".to_string(),
            ));
        }
    }
    out
}

/// Header names for the user, email, groups and name.
type Names<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

/// The names a config sends each identity value in: its preset's, with
/// the `[headers]` overrides applied.
fn sent_names(cfg: &HeadersConfig) -> Names<'_> {
    let (mut user, mut email, mut groups, mut name): Names<'_> = preset_names(cfg.preset);
    if let Some(u) = &cfg.user {
        user = vec![u.as_str()];
    }
    if let Some(p) = &cfg.preferred_username {
        user.push(p.as_str());
    }
    if let Some(e) = &cfg.email {
        email = vec![e.as_str()];
    }
    if let Some(g) = &cfg.groups {
        groups = vec![g.as_str()];
    }
    if let Some(n) = &cfg.name {
        name = vec![n.as_str()];
    }
    (user, email, groups, name)
}

fn preset_names(preset: HeaderPreset) -> Names<'static> {
    match preset {
        HeaderPreset::Portcullis => (
            vec!["x-forwarded-user"],
            vec!["x-forwarded-email"],
            vec!["x-forwarded-groups"],
            vec!["x-forwarded-name"],
        ),
        HeaderPreset::Oauth2Proxy => (
            vec!["x-forwarded-user", "x-forwarded-preferred-username"],
            vec!["x-forwarded-email"],
            vec!["x-forwarded-groups"],
            vec![],
        ),
        HeaderPreset::Authelia => (
            vec!["remote-user"],
            vec!["remote-email"],
            vec!["remote-groups"],
            vec!["remote-name"],
        ),
    }
}

/// A header name read the way lenient servers read it: case-insensitive,
/// with `_` and `.` taken as `-` (oauth2-proxy CVE-2025-64484). Written into
/// `buf` when it fits (every owned name does), else into `spill`.
fn normalise<'a>(name: &str, buf: &'a mut [u8; 64], spill: &'a mut Vec<u8>) -> &'a [u8] {
    let n = name.as_bytes();
    if n.len() <= buf.len() {
        for (d, &c) in buf.iter_mut().zip(n) {
            *d = fold(c);
        }
        &buf[..n.len()]
    } else {
        spill.extend(n.iter().map(|&c| fold(c)));
        spill
    }
}

/// One byte of [`normalise`].
fn fold(c: u8) -> u8 {
    match c.to_ascii_lowercase() {
        b'_' | b'.' => b'-',
        c => c,
    }
}

/// The table behind [`IdentityHeaders::is_owned`]'s quick check: for each
/// first letter (normalised), the set of second letters that start an
/// owned name. Two letters tell `cookie`, `content-type` and `origin`
/// apart from `cf-access-*`, `client-ip` and `oidc-claim-*`, so ordinary
/// headers skip the full comparison.
type Starts = [[u64; 4]; 256];

fn starts(extra: &[String]) -> Box<Starts> {
    let mut t = Box::new([[0u64; 4]; 256]);
    let names = OWNED_EXACT.iter().chain(OWNED_PREFIXES).copied();
    for n in names.chain(extra.iter().map(String::as_str)) {
        if let [a, b, ..] = n.as_bytes() {
            let (a, b) = (usize::from(fold(*a)), usize::from(fold(*b)));
            t[a][b / 64] |= 1 << (b % 64);
        }
    }
    t
}

/// The identity headers and their names, compiled from the config.
pub struct IdentityHeaders {
    user: Vec<HeaderName>,
    email: Vec<HeaderName>,
    groups: Vec<HeaderName>,
    name: Vec<HeaderName>,
    /// Custom fields forwarded upstream: (field name, header).
    fields: Vec<(String, HeaderName)>,
    /// Extra names to strip: every configured identity header.
    extra_owned: Vec<String>,
    /// First two letters (normalised) of every owned name, built-in or
    /// configured: a header starting any other way is not owned, and
    /// most ordinary headers (accept, cookie, host, user-agent) stop there.
    owned_starts: Box<Starts>,
    drop_underscore: bool,
    trusted: Vec<ipnet::IpNet>,
    /// Identity header values per user record (keyed by username; checked
    /// against the record's `Arc`).
    cache: IdentityCache,
}

/// A header ready to insert (cloning either is a reference count).
type Prepared = (HeaderName, HeaderValue);

/// foldhash, not SipHash: it is looked up on every signed-in request, and
/// its keys are the names of accounts an administrator created.
type IdentityCache = parking_lot::RwLock<
    std::collections::HashMap<String, (Arc<User>, Arc<[Prepared]>), foldhash::fast::RandomState>,
>;

/// The client's address as a header value. IPv4, nearly every request, is
/// written digit by digit: `to_string` goes through the formatting
/// machinery, about a thousand instructions on the hot path.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    // A connection's requests all come from one address, and most of a
    // thread's connections from few: the last value is kept per thread,
    // and cloning it is a reference count, not an allocation and a copy.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, v)) if *at == ip => v.clone(),
        _ => {
            let v = ip_value_uncached(ip);
            *last = Some((ip, v.clone()));
            v
        }
    })
}

fn ip_value_uncached(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static(""));
    };
    let mut buf = [0u8; 15];
    let n = ipv4_digits(v4, &mut buf);
    HeaderValue::from_bytes(&buf[..n]).unwrap_or(HeaderValue::from_static(""))
}

/// Appends an address as text, IPv4 without the formatter (see
/// [`ip_value`]); for the access log.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let n = ipv4_digits(v4, &mut buf);
            // Digits and dots only.
            out.push_str(std::str::from_utf8(&buf[..n]).unwrap_or_default());
        }
        IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// Writes `a.b.c.d` into `buf`; returns its length.
fn ipv4_digits(v4: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

/// Users whose identity headers are kept ready; past this the cache starts
/// over (it refills on the next request of each user).
const IDENTITY_CACHE_MAX: usize = 100_000;

fn hn(s: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(s.as_bytes()).ok()
}

impl IdentityHeaders {
    pub fn new(
        cfg: &HeadersConfig,
        user_fields: &[crate::config::UserField],
        drop_underscore: bool,
        trusted: Vec<ipnet::IpNet>,
    ) -> Self {
        let (user, email, groups, name) = sent_names(cfg);
        // Custom fields' headers too: a client must not be able to send a
        // value for a user who has none.
        let all: Vec<String> = user
            .iter()
            .chain(&email)
            .chain(&groups)
            .chain(&name)
            .copied()
            .chain(user_fields.iter().filter_map(|f| f.header.as_deref()))
            .map(normalised)
            .collect();
        IdentityHeaders {
            user: user.iter().filter_map(|s| hn(s)).collect(),
            email: email.iter().filter_map(|s| hn(s)).collect(),
            groups: groups.iter().filter_map(|s| hn(s)).collect(),
            name: name.iter().filter_map(|s| hn(s)).collect(),
            fields: user_fields
                .iter()
                .filter_map(|f| Some((f.name.clone(), hn(f.header.as_deref()?)?)))
                .collect(),
            owned_starts: starts(&all),
            extra_owned: all,
            drop_underscore,
            trusted,
            cache: Default::default(),
        }
    }

    /// True if the gateway owns this header name and a client's copy must go.
    pub fn is_owned(&self, name: &str) -> bool {
        if self.drop_underscore && memchr::memchr(b'_', name.as_bytes()).is_some() {
            return true;
        }
        // A one-letter name (only a configured one could be owned) skips
        // the quick check.
        if let [a, b, ..] = name.as_bytes() {
            let (a, b) = (usize::from(fold(*a)), usize::from(fold(*b)));
            if self.owned_starts[a][b / 64] & (1 << (b % 64)) == 0 {
                return false;
            }
        }
        // Normalised once, then compared plainly against the (already
        // normalised) owned names.
        let (mut buf, mut spill) = ([0u8; 64], Vec::new());
        let norm = normalise(name, &mut buf, &mut spill);
        if self.extra_owned.iter().any(|p| p.as_bytes() == norm) {
            return true;
        }
        OWNED_EXACT.iter().any(|p| p.as_bytes() == norm)
            || OWNED_PREFIXES
                .iter()
                .any(|p| norm.starts_with(p.as_bytes()))
    }

    /// Removes every owned header from an outgoing request.
    pub fn strip(&self, headers: &mut http::HeaderMap) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.is_owned(k.as_str()))
            .cloned()
            .collect();
        for k in doomed {
            headers.remove(&k);
        }
    }

    /// The identity headers for one user record, built once.
    fn values_for(&self, user: &User) -> Vec<Prepared> {
        let mut out = Vec::new();
        let mut set = |names: &[HeaderName], value: &str| {
            if value.is_empty() {
                return;
            }
            if let Ok(v) = HeaderValue::from_str(value) {
                for n in names {
                    out.push((n.clone(), v.clone()));
                }
            }
        };
        set(&self.user, &user.username);
        if let Some(e) = user.email.as_ref().filter(|_| user.email_verified) {
            set(&self.email, e);
        }
        if !user.groups.is_empty() {
            set(&self.groups, &user.groups.join(","));
        }
        let clean: String = user
            .full_name()
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        set(&self.name, &clean);
        for (field, header) in &self.fields {
            if let Some(v) = user.fields.get(field) {
                set(std::slice::from_ref(header), v);
            }
        }
        out
    }

    /// Adds the signed-in user's identity. The header values are built once
    /// per user record and reused; a changed record is a new `Arc`, so the
    /// cache can never serve a stale identity.
    pub fn inject(&self, headers: &mut http::HeaderMap, user: &Arc<User>) {
        let cached = self
            .cache
            .read()
            .get(user.username.as_str())
            .filter(|(u, _)| Arc::ptr_eq(u, user))
            .map(|(_, v)| Arc::clone(v));
        let values = match cached {
            Some(v) => v,
            None => {
                let v: Arc<[Prepared]> = self.values_for(user).into();
                let mut c = self.cache.write();
                if c.len() >= IDENTITY_CACHE_MAX {
                    c.clear();
                }
                c.insert(user.username.clone(), (Arc::clone(user), Arc::clone(&v)));
                v
            }
        };
        for (n, v) in values.iter() {
            headers.insert(n.clone(), v.clone());
        }
    }

    /// The client's address: the peer, unless the peer is a trusted proxy,
    /// in which case `X-Forwarded-For` is read right to left, skipping
    /// trusted hops, and the first untrusted address is the client.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &http::HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let mut hops: Vec<&str> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            let Ok(s) = v.to_str() else { return Some(peer) };
            hops.extend(s.split(','));
        }
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Some(client)
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "192.0.2.30",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn configured_names_are_owned_whatever_letter_they_start_with() {
        let cfg = HeadersConfig {
            preset: HeaderPreset::Portcullis,
            user: Some("Authenticated-User".into()),
            email: Some("mail".into()),
            groups: None,
            name: None,
            preferred_username: None,
        };
        let h = IdentityHeaders::new(&cfg, &[], false, vec![]);
        for n in [
            "authenticated-user",
            "authenticated_user",
            "mail",
            "x-forwarded-groups",
        ] {
            assert!(h.is_owned(n), "{n}");
        }
        for n in ["accept", "host", "user-agent", "authorization", "mailbox"] {
            assert!(!h.is_owned(n), "{n}");
        }
    }

    fn ih() -> IdentityHeaders {
        let cfg = HeadersConfig {
            preset: HeaderPreset::Portcullis,
            user: None,
            email: None,
            groups: None,
            name: None,
            preferred_username: None,
        };
        IdentityHeaders::new(&cfg, &[], true, vec!["10.0.0.0/8".parse().unwrap()])
    }

    #[test]
    fn spellings_are_normalised_even_when_underscores_are_allowed() {
        let cfg = HeadersConfig {
            preset: HeaderPreset::Portcullis,
            user: Some(
                "X-Remote-Login-Name-That-Is-Much-Longer-Than-Sixty-Four-Characters-In-All".into(),
            ),
            email: None,
            groups: None,
            name: None,
            preferred_username: None,
        };
        let h = IdentityHeaders::new(&cfg, &[], false, Vec::new());
        for n in [
            "x_forwarded_email",
            "X.Forwarded.Email",
            "X-FORWARDED-EMAIL",
            "x_real_ip",
            // Longer than the stack buffer: still read as one name.
            "X-Forwarded-Something-Very-Long-Indeed-To-Overflow-The-Sixty-Four-Byte-Buffer",
            "x_remote_login_name_that_is_much_longer_than_sixty_four_characters_in_all",
        ] {
            assert!(h.is_owned(n), "{n}");
        }
        for n in ["x_request_id", "accept.language", "Cookie"] {
            assert!(!h.is_owned(n), "{n}");
        }
    }

    #[test]
    fn owned_in_every_spelling() {
        let h = ih();
        for n in [
            "X-Forwarded-User",
            "x_forwarded_user",
            "X.Forwarded.Email",
            "x-forwarded-groups",
            "Remote-User",
            "remote_groups",
            "X-Auth-Request-User",
            "X-Pomerium-Jwt-Assertion",
            "X-Vouch-User",
            "X-WEBAUTH-USER",
            "Impersonate-User",
            "X-Remote-User",
            "X-User",
            "X-Username",
            "X-Original-URL",
            "X-Rewrite-URL",
            "Forwarded",
            "X-Real-IP",
            "True-Client-IP",
            "CF-Connecting-IP",
            "x-token-subject",
            "X-Forwarded-For",
            "anything_with_underscore",
            "X-HTTP-Method-Override",
            "X-Http-Method",
            "X-Method-Override",
            "X-Original-Forwarded-For",
            "X-Amzn-Oidc-Identity",
            "X-SSL-Client-S-DN",
            "X-SSL-Client-Verify",
            "X-Ssl-User",
            "X-Client-Verify",
            "X-Client-Cert",
            "X-Client-DN",
            "Ssl-Client-Cert",
            "Proxy-User",
            "Auth-User",
            "X-Envoy-Original-Path",
            "X-Authentik-Username",
            "Tailscale-User-Login",
            "Teleport-Jwt-Assertion",
            "X-MS-TOKEN-AAD-ID-TOKEN",
            "X-Amzn-Oidc-Data",
            "X-MS-CLIENT-PRINCIPAL",
            "X-Ms-Client-Principal-Name",
            "X-Goog-Authenticated-User-Email",
            "X-Goog-Iap-Jwt-Assertion",
            "Cf-Access-Authenticated-User-Email",
            "Cf-Access-Jwt-Assertion",
            "X-Consumer-Username",
            "X-Credential-Username",
            "X-Authenticated-Userid",
            "X-Authenticated-User",
            "OIDC_CLAIM_email",
            "X-Oidc-Claim-Sub",
            "X-Proxy-User",
            "X-Grafana-User",
            "X-Id-Token",
            "X-Access-Token",
            "X-Jwt-Assertion",
            "Client-IP",
            "X-ProxyUser-Ip",
            "X-Host",
            "X-Url-Scheme",
            "Front-End-Https",
        ] {
            assert!(h.is_owned(n), "{n}");
        }
        for n in [
            "Accept",
            "Cookie",
            "User-Agent",
            "X-Request-Id",
            "Authorization",
            "Content-Type",
            "Origin",
            "Cache-Control",
            "Connection",
            "X-Hostname-Hint",
        ] {
            assert!(!h.is_owned(n), "{n}");
        }
    }

    #[test]
    fn custom_field_headers_are_owned_too() {
        let cfg = HeadersConfig {
            preset: HeaderPreset::Portcullis,
            user: None,
            email: None,
            groups: None,
            name: None,
            preferred_username: None,
        };
        let field = |header: &str| crate::config::UserField {
            name: "tenant".into(),
            kind: crate::config::FieldType::String,
            max_length: 64,
            header: Some(header.into()),
        };
        let h = IdentityHeaders::new(&cfg, &[field("Tenant-Id"), field("Q")], false, vec![]);
        for n in ["Tenant-Id", "tenant-id", "TENANT_ID", "tenant.id", "q", "Q"] {
            assert!(h.is_owned(n), "{n}");
        }
        assert!(!h.is_owned("Tenant-Ids-Seen"));
    }

    #[test]
    fn a_changed_user_record_is_never_served_from_the_cache() {
        let h = ih();
        let mut u = User::new("ann");
        u.groups = vec!["staff".into()];
        let first = Arc::new(u.clone());
        let mut req = http::HeaderMap::new();
        h.inject(&mut req, &first);
        assert_eq!(req["x-forwarded-groups"], "staff");
        u.groups = vec!["accounting".into()];
        let second = Arc::new(u);
        let mut req = http::HeaderMap::new();
        h.inject(&mut req, &second);
        assert_eq!(req["x-forwarded-groups"], "accounting");
        assert_eq!(req["x-forwarded-user"], "ann");
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let h = ih();
        let mut hm = http::HeaderMap::new();
        hm.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let untrusted: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(h.client_ip(Some(untrusted), &hm), Some(untrusted));
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            h.client_ip(Some(proxy), &hm),
            Some("1.2.3.4".parse().unwrap())
        );
        hm.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        assert_eq!(
            h.client_ip(Some(proxy), &hm),
            Some("1.2.3.4".parse().unwrap())
        );
    }
}
