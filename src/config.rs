//! The gateway's configuration: read once, checked once, then typed.
//!
//! Each section is deserialised on its own so that every broken section is
//! reported in one run, each error with `FILE:LINE:COL`. Values that need
//! more than a type check (URLs, addresses, durations) are checked here too,
//! so nothing downstream ever re-parses a string.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{self, Report, Source};
use crate::password_rules::PasswordRules;
use crate::throttle::ThrottleConfig;

pub const DEFAULT_CONFIG: &str = "config/portcullis.toml";
pub const CONFIG_ENV: &str = "PORTCULLIS_CONFIG";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (absolute), if any.
    pub file: Option<PathBuf>,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub storage: StorageConfig,
    pub policy: PolicyConfig,
    pub session: SessionConfig,
    pub headers: HeadersConfig,
    pub throttle: ThrottleConfig,
    pub passwords: PasswordRules,
    pub registration: RegistrationConfig,
    pub metrics: Option<MetricsConfig>,
    pub log: LogConfig,
    pub ui: UiConfig,
    /// Custom user fields (Django's custom user model), in declared order.
    pub user_fields: Vec<UserField>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Integer,
    Boolean,
}

/// A custom user field: `[[user_fields]] name = "department" ...`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserField {
    pub name: String,
    #[serde(rename = "type", default = "default_field_type")]
    pub kind: FieldType,
    #[serde(default = "default_field_len")]
    pub max_length: usize,
    /// Forward the value upstream in this header.
    #[serde(default)]
    pub header: Option<String>,
}

fn default_field_type() -> FieldType {
    FieldType::String
}

fn default_field_len() -> usize {
    255
}

impl UserField {
    /// Checks a value against the field's type and length.
    pub fn check(&self, value: &str) -> Result<(), String> {
        if value.chars().count() > self.max_length {
            return Err(format!(
                "{} is longer than {} characters",
                self.name, self.max_length
            ));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(format!("{} may not contain control characters", self.name));
        }
        match self.kind {
            FieldType::String => Ok(()),
            FieldType::Integer => value
                .parse::<i64>()
                .map(|_| ())
                .map_err(|_| format!("{} must be a whole number", self.name)),
            FieldType::Boolean => match value {
                "true" | "false" => Ok(()),
                _ => Err(format!("{} must be true or false", self.name)),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub public_url: url::Url,
    /// `scheme://host[:port]` of `public_url`, for Origin checks.
    pub public_origin: String,
    pub secure: bool,
    pub threads: usize,
    pub prefix: String,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub drop_underscore_headers: bool,
    pub grace_period: Duration,
    pub client_timeout: Duration,
    /// How long an upgraded connection (WebSocket) may carry nothing, in
    /// either direction, before it is closed.
    pub tunnel_idle_timeout: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: url::Url,
    pub addr: SocketAddr,
    pub tls: bool,
    pub sni: String,
    pub preserve_host: bool,
    pub verify_cert: bool,
    /// PEM file of the CA(s) that sign the upstream's certificate, instead
    /// of the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub cache_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub files: Vec<PathBuf>,
    pub case_insensitive: bool,
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub remember_me: bool,
    pub cookie_name: String,
    pub cache_entries: usize,
    /// Most sessions one user may hold; logging in past it ends the least
    /// recently used. 0: no limit.
    pub max_per_user: usize,
    /// How often the background sweeper removes expired sessions.
    pub sweep_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderPreset {
    Portcullis,
    #[serde(rename = "oauth2-proxy")]
    Oauth2Proxy,
    Authelia,
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    pub preset: HeaderPreset,
    pub user: Option<String>,
    pub email: Option<String>,
    pub groups: Option<String>,
    pub name: Option<String>,
    pub preferred_username: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RegistrationConfig {
    pub enabled: bool,
    pub default_groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub audit_file: Option<PathBuf>,
    pub webhook: Option<crate::audit::Webhook>,
}

#[derive(Debug, Clone)]
pub struct UiConfig {
    pub title: String,
    pub logo_url: Option<String>,
    pub accent_color: String,
    pub templates_dir: Option<PathBuf>,
    pub static_dir: Option<PathBuf>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            title: "Sign in".into(),
            logo_url: None,
            accent_color: "#2457d6".into(),
            templates_dir: None,
            static_dir: None,
        }
    }
}

// ---- raw, as written in the file ------------------------------------------

use crate::diag::StrOrList;

/// One address or a list; the whole value carries the span.
#[derive(Default)]
enum OneOrMany {
    #[default]
    None,
    Some(Spanned<StrOrList>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<StrOrList>::deserialize(d).map(OneOrMany::Some)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: OneOrMany,
    public_url: Option<Spanned<String>>,
    threads: Option<Spanned<usize>>,
    prefix: Option<Spanned<String>>,
    trusted_proxies: Vec<Spanned<String>>,
    drop_underscore_headers: Option<bool>,
    grace_period: Option<Spanned<DurationValue>>,
    client_timeout: Option<Spanned<DurationValue>>,
    tunnel_idle_timeout: Option<Spanned<DurationValue>>,
    max_body_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    url: Option<Spanned<String>>,
    preserve_host: Option<bool>,
    verify_cert: Option<bool>,
    ca_file: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<DurationValue>>,
    read_timeout: Option<Spanned<DurationValue>>,
}

/// sled's page cache bound when `[storage] cache_mb` is not set.
const DEFAULT_CACHE_MB: u64 = 128;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    path: Option<String>,
    cache_mb: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    files: Option<Vec<String>>,
    case_insensitive: bool,
    watch: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSession {
    idle_timeout: Option<Spanned<DurationValue>>,
    absolute_timeout: Option<Spanned<DurationValue>>,
    remember_me: Option<bool>,
    cookie_name: Option<Spanned<String>>,
    cache_entries: Option<usize>,
    max_per_user: Option<usize>,
    sweep_interval: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHeaders {
    preset: Option<HeaderPreset>,
    user: Option<Spanned<String>>,
    email: Option<Spanned<String>>,
    groups: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    preferred_username: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRegistration {
    enabled: bool,
    default_groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: LogFormat,
    audit_file: Option<String>,
    webhook_url: Option<Spanned<String>>,
    webhook_timeout: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawUi {
    title: Option<String>,
    logo_url: Option<String>,
    accent_color: Option<Spanned<String>>,
    templates_dir: Option<String>,
    static_dir: Option<String>,
}

/// A duration written as seconds (`90`) or with a unit (`"90s"`, `"30m"`,
/// `"12h"`, `"7d"`).
#[derive(Debug, Clone, Copy)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration: whole seconds (90) or a number with a unit in quotes (\"90s\", \"30m\", \"12h\", \"7d\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue(Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationValue, E> {
                u64::try_from(v)
                    .map(|s| DurationValue(Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "{v} is not whole seconds: write a unit for parts of a second, like \"1500ms\""
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationValue, E> {
                parse_duration(v).map(DurationValue).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: write a number with a unit, like \"90s\", \"30m\", \"12h\" or \"7d\""))?;
    let mult = match unit.trim() {
        // In quotes, a bare number is more likely minutes or hours meant
        // than seconds: say so rather than guess.
        "" => {
            return Err(format!(
                "duration {text:?} has no unit: write \"{n}s\", \"{n}m\", \"{n}h\" or \"{n}d\" (a number without quotes is seconds)"
            ))
        }
        "s" => 1,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

fn span<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    Some(s.span())
}

/// Where a configuration comes from: an explicit flag, the environment, or
/// the default path.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Ok(p) = std::env::var(CONFIG_ENV) {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from(DEFAULT_CONFIG)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (give another with --config FILE or PORTCULLIS_CONFIG; `portcullis demo` needs none)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Report),
}

impl Config {
    pub fn load(path: &Path) -> Result<(Config, Report), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        let (cfg, mut report) = Self::parse(path, &text, &base);
        match cfg {
            Some(mut c) if !report.has_errors() => {
                c.file = Some(abs);
                #[cfg(unix)]
                lint_file_modes(&c, &mut report);
                #[cfg(unix)]
                lint_store_writable(&c, &Source::new(path, &text), &mut report);
                Ok((c, report))
            }
            _ => Err(ConfigError::Invalid(report)),
        }
    }

    /// Parses config text; relative paths are taken from `base`.
    pub fn parse(path: &Path, text: &str, base: &Path) -> (Option<Config>, Report) {
        let src = Source::new(path, text);
        let mut report = Report::default();
        let Some(doc) = diag::parse_toml(&src, &mut report) else {
            return (None, report);
        };

        let mut server = RawServer::default();
        let mut upstream = RawUpstream::default();
        let mut storage = RawStorage::default();
        let mut policy = RawPolicy::default();
        let mut session = RawSession::default();
        let mut headers = RawHeaders::default();
        let mut throttle = ThrottleConfig::default();
        let mut passwords = PasswordRules::default();
        let mut registration = RawRegistration::default();
        let mut metrics: Option<RawMetrics> = None;
        let mut log = RawLog::default();
        let mut ui = RawUi::default();
        let mut user_fields: Vec<UserField> = Vec::new();
        let mut field_spans: Vec<std::ops::Range<usize>> = Vec::new();

        for (key, value) in doc.get_ref().iter() {
            macro_rules! take {
                ($slot:expr) => {
                    if let Some(v) = diag::section_partial(&src, value, &mut report) {
                        $slot = v;
                    }
                };
            }
            match key.get_ref().as_ref() {
                "server" => take!(server),
                "upstream" => take!(upstream),
                "storage" => take!(storage),
                "policy" => take!(policy),
                "session" => take!(session),
                "headers" => take!(headers),
                "throttle" => take!(throttle),
                "passwords" => take!(passwords),
                "registration" => take!(registration),
                "metrics" => {
                    if let Some(v) = diag::section(&src, value, &mut report) {
                        metrics = Some(v);
                    }
                }
                "log" => take!(log),
                "ui" => take!(ui),
                "user_fields" => {
                    let Some(items) = value.get_ref().as_array() else {
                        report.push(src.error(Some(value.span()), "write custom fields as [[user_fields]] sections"));
                        continue;
                    };
                    for item in items.iter() {
                        let Some(f) = diag::section::<UserField>(&src, item, &mut report) else { continue };
                        let reserved = ["username", "email", "first_name", "last_name", "superuser", "active", "password", "groups", "permissions"];
                        let valid = !f.name.is_empty() && f.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                        if !valid || reserved.contains(&f.name.as_str()) || user_fields.iter().any(|u| u.name == f.name) {
                            report.push(src.error(Some(item.span()), format!("invalid or duplicate custom field name {:?}: use lower-case letters, digits and _, not a built-in field", f.name)));
                            continue;
                        }
                        if let Some(h) = &f.header {
                            if http::HeaderName::from_bytes(h.as_bytes()).is_err() || h.contains('_') {
                                report.push(src.error(Some(key_span(item, "header").unwrap_or_else(|| item.span())), format!("invalid header name {h:?}: use letters, digits and -")));
                                continue;
                            }
                        }
                        user_fields.push(f);
                        field_spans.push(key_span(item, "header").unwrap_or_else(|| item.span()));
                    }
                }
                other => report.push(src.error(
                    Some(key.span()),
                    format!(
                        "unknown section `{other}`; expected one of server, upstream, storage, policy, session, headers, throttle, passwords, registration, metrics, log, ui, user_fields"
                    ),
                )),
            }
        }

        let rel = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        // [server]
        let mut listen = Vec::new();
        let listen_raw: Vec<Spanned<String>> = match server.listen {
            OneOrMany::None => vec![],
            OneOrMany::Some(s) => {
                let span = s.span();
                match s.into_inner() {
                    StrOrList::One(one) => vec![Spanned::new(span, one)],
                    StrOrList::Many(v) => v
                        .into_iter()
                        .map(|x| Spanned::new(span.clone(), x))
                        .collect(),
                }
            }
        };
        for l in &listen_raw {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => report.push(src.error(
                    span(l),
                    format!(
                        "invalid listen address {:?}: write IP:PORT, like \"127.0.0.1:8080\"",
                        l.get_ref()
                    ),
                )),
            }
        }
        if listen_raw.is_empty() {
            listen.push(SocketAddr::from(([127, 0, 0, 1], 8080)));
        }
        let public_url = match &server.public_url {
            Some(s) => match url::Url::parse(s.get_ref()) {
                Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                    Some(u)
                }
                _ => {
                    report.push(src.error(
                        span(s),
                        format!("invalid public_url {:?}: write the origin users see, like \"https://app.example.com\"", s.get_ref()),
                    ));
                    None
                }
            },
            None => match listen.first() {
                Some(a) => url::Url::parse(&format!("http://{a}")).ok(),
                None => url::Url::parse("http://127.0.0.1:8080").ok(),
            },
        };
        let prefix = match &server.prefix {
            Some(p) => {
                let v = p.get_ref().trim_end_matches('/').to_string();
                let ok = v.starts_with('/')
                    && v.len() > 1
                    && v[1..].split('/').all(|seg| {
                        !seg.is_empty()
                            && seg != "."
                            && seg != ".."
                            && seg
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                    });
                if !ok {
                    report.push(src.error(span(p), format!("invalid prefix {:?}: write a path like \"/.portcullis\" (letters, digits, - . _ ~)", p.get_ref())));
                }
                v
            }
            None => "/.portcullis".to_string(),
        };
        let mut trusted = Vec::new();
        for t in &server.trusted_proxies {
            let s = t.get_ref();
            let parsed = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => trusted.push(n),
                Err(_) => report.push(src.error(
                    span(t),
                    format!(
                        "invalid trusted proxy {s:?}: write an IP or CIDR, like \"10.0.0.0/8\""
                    ),
                )),
            }
        }
        // sled refuses (panics on) a page cache below 256 bytes.
        let cache_mb = match &storage.cache_mb {
            Some(m) if *m.get_ref() == 0 => {
                report.push(src.error(
                    span(m),
                    "cache_mb must be at least 1 (MiB); leave it out for the default, 128",
                ));
                DEFAULT_CACHE_MB
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_CACHE_MB,
        };
        let threads = match &server.threads {
            Some(t) if *t.get_ref() == 0 => {
                report.push(src.error(span(t), "threads must be at least 1"));
                1
            }
            Some(t) => *t.get_ref(),
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };

        // [upstream]
        let mut upstream_cfg = None;
        match &upstream.url {
            None => report.push(src.error(
                Some(0..0),
                "missing [upstream] url: name the app behind the gateway, like url = \"http://127.0.0.1:3000\"",
            )),
            Some(u) => match check_upstream_url(u.get_ref()) {
                Ok((url, addr, tls, sni)) => {
                    upstream_cfg = Some(UpstreamConfig {
                        url,
                        addr,
                        tls,
                        sni,
                        preserve_host: upstream.preserve_host.unwrap_or(true),
                        verify_cert: upstream.verify_cert.unwrap_or(true),
                        ca_file: upstream.ca_file.as_ref().and_then(|f| {
                            let path = rel(f.get_ref());
                            if path.is_file() {
                                Some(path)
                            } else {
                                report.push(src.error(span(f), format!("ca_file {:?} does not exist or is not a file", path.display().to_string())));
                                None
                            }
                        }),
                        connect_timeout: upstream.connect_timeout.map(|d| d.into_inner().0).unwrap_or(Duration::from_secs(5)),
                        read_timeout: upstream.read_timeout.map(|d| d.into_inner().0).unwrap_or(Duration::from_secs(60)),
                    })
                }
                Err(msg) => report.push(src.error(span(u), msg)),
            },
        }

        // [session]
        let idle = session
            .idle_timeout
            .as_ref()
            .map(|d| d.get_ref().0)
            .unwrap_or(Duration::from_secs(30 * 60));
        let absolute = session
            .absolute_timeout
            .as_ref()
            .map(|d| d.get_ref().0)
            .unwrap_or(Duration::from_secs(12 * 3600));
        if idle.is_zero() {
            report.push(src.error(
                session.idle_timeout.as_ref().and_then(span),
                "idle_timeout must be longer than zero",
            ));
        }
        if absolute < idle {
            report.push(src.error(
                session.absolute_timeout.as_ref().and_then(span),
                "absolute_timeout must not be shorter than idle_timeout",
            ));
        }
        let secure = public_url
            .as_ref()
            .map(|u| u.scheme() == "https")
            .unwrap_or(false);
        let cookie_base = match &session.cookie_name {
            Some(n) => {
                let v = n.get_ref();
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    report.push(src.error(
                        span(n),
                        format!("invalid cookie_name {v:?}: use letters, digits, _ and -"),
                    ));
                }
                v.clone()
            }
            None => "portcullis_session".to_string(),
        };
        // The __Host- prefix pins the cookie to this origin, path / and Secure,
        // so a sibling subdomain cannot plant or overwrite it.
        let cookie_name = if secure {
            format!("__Host-{cookie_base}")
        } else {
            cookie_base
        };

        // [headers]
        let mut check_header = |h: &Option<Spanned<String>>| -> Option<String> {
            h.as_ref().map(|s| {
                let v = s.get_ref();
                if http::HeaderName::from_bytes(v.as_bytes()).is_err() || v.contains('_') {
                    report.push(src.error(
                        span(s),
                        format!("invalid header name {v:?}: use letters, digits and -"),
                    ));
                }
                v.clone()
            })
        };
        let headers_cfg = HeadersConfig {
            preset: headers.preset.unwrap_or(HeaderPreset::Portcullis),
            user: check_header(&headers.user),
            email: check_header(&headers.email),
            groups: check_header(&headers.groups),
            name: check_header(&headers.name),
            preferred_username: check_header(&headers.preferred_username),
        };
        // An identity value in a header the gateway sets, or two values in
        // one header, would let one overwrite the other upstream.
        let overrides = [
            &headers.user,
            &headers.email,
            &headers.groups,
            &headers.name,
            &headers.preferred_username,
        ];
        for h in overrides.iter().copied().flatten() {
            if let Some(why) = crate::headers::header_conflict(h.get_ref(), &[]) {
                report.push(src.error(span(h), why));
            }
        }
        let sent = crate::headers::identity_names(&headers_cfg);
        for (i, (n, what)) in sent.iter().enumerate() {
            if let Some((_, other)) = sent[..i].iter().find(|(m, w)| m == n && w != what) {
                let at = overrides
                    .iter()
                    .copied()
                    .flatten()
                    .find(|h| crate::headers::normalised(h.get_ref()) == *n);
                report.push(src.error(
                    at.and_then(span),
                    format!(
                        "header {n:?} would carry both {other} and {what}; give each its own name"
                    ),
                ));
            }
        }
        let mut taken = crate::headers::taken_for_fields(&headers_cfg);
        for (f, at) in user_fields.iter().zip(&field_spans) {
            let Some(h) = &f.header else { continue };
            match crate::headers::field_header_conflict(h, &taken) {
                Some(why) => {
                    report.push(src.error(Some(at.clone()), format!("field {:?}: {why}", f.name)))
                }
                None => taken.push((
                    crate::headers::normalised(h),
                    format!("the field {:?}", f.name),
                )),
            }
        }

        let metrics_cfg = metrics.and_then(|m| match m.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(MetricsConfig { listen: a }),
            Err(_) => {
                report.push(src.error(
                    span(&m.listen),
                    format!("invalid metrics listen address {:?}", m.listen.get_ref()),
                ));
                None
            }
        });

        let accent = match &ui.accent_color {
            Some(c) => {
                let v = c.get_ref();
                let ok = v.len() == 7
                    && v.starts_with('#')
                    && v[1..].bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    report.push(src.error(
                        span(c),
                        format!("invalid accent_color {v:?}: write a hex colour like \"#2457d6\""),
                    ));
                }
                v.clone()
            }
            None => UiConfig::default().accent_color,
        };

        let webhook = match &log.webhook_url {
            None => None,
            Some(u) => match url::Url::parse(u.get_ref()) {
                Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {
                    Some(crate::audit::Webhook {
                        url,
                        timeout: log
                            .webhook_timeout
                            .as_ref()
                            .map(|d| d.get_ref().0)
                            .unwrap_or(Duration::from_secs(5)),
                    })
                }
                _ => {
                    report.push(src.error(
                        span(u),
                        format!(
                            "invalid webhook_url {:?}: write an http(s) URL",
                            u.get_ref()
                        ),
                    ));
                    None
                }
            },
        };
        let (Some(public_url), Some(upstream_cfg)) = (public_url, upstream_cfg) else {
            return (None, report);
        };
        let public_origin = public_url.origin().ascii_serialization();
        let cfg = Config {
            file: None,
            server: ServerConfig {
                listen,
                public_origin,
                public_url,
                secure,
                threads,
                prefix,
                trusted_proxies: trusted,
                drop_underscore_headers: server.drop_underscore_headers.unwrap_or(true),
                grace_period: server
                    .grace_period
                    .map(|d| d.into_inner().0)
                    .unwrap_or(Duration::from_secs(10)),
                tunnel_idle_timeout: server
                    .tunnel_idle_timeout
                    .map(|d| d.into_inner().0)
                    .unwrap_or(Duration::from_secs(3600)),
                client_timeout: server
                    .client_timeout
                    .map(|d| d.into_inner().0)
                    .unwrap_or(Duration::from_secs(30)),
                max_body_bytes: server.max_body_bytes.unwrap_or(16 * 1024),
            },
            upstream: upstream_cfg,
            storage: StorageConfig {
                path: rel(storage.path.as_deref().unwrap_or("data")),
                // sled counts a page in its cache by the page's size on
                // disk, several times its live bytes for randomly keyed
                // sessions (about 50 MB per 100 000); a cache below that
                // sends lookups of sessions outside the session cache to
                // the disk. Memory follows what is read, not this bound.
                cache_bytes: cache_mb.saturating_mul(1024 * 1024),
            },
            policy: PolicyConfig {
                files: policy
                    .files
                    .unwrap_or_else(|| vec!["policy.toml".into()])
                    .iter()
                    .map(|f| rel(f))
                    .collect(),
                case_insensitive: policy.case_insensitive,
                watch: policy.watch.unwrap_or(true),
            },
            session: SessionConfig {
                idle_timeout: idle,
                absolute_timeout: absolute,
                remember_me: session.remember_me.unwrap_or(true),
                cookie_name,
                cache_entries: session.cache_entries.unwrap_or(200_000),
                max_per_user: session.max_per_user.unwrap_or(100),
                sweep_interval: session
                    .sweep_interval
                    .map(|d| d.into_inner().0)
                    .unwrap_or(Duration::from_secs(60)),
            },
            headers: headers_cfg,
            throttle,
            passwords,
            registration: RegistrationConfig {
                enabled: registration.enabled,
                default_groups: registration.default_groups,
            },
            metrics: metrics_cfg,
            log: LogConfig {
                format: log.format,
                audit_file: log.audit_file.as_deref().map(rel),
                webhook,
            },
            ui: UiConfig {
                title: ui.title.unwrap_or_else(|| UiConfig::default().title),
                logo_url: ui.logo_url,
                accent_color: accent,
                templates_dir: ui.templates_dir.as_deref().map(rel),
                static_dir: ui.static_dir.as_deref().map(rel),
            },
            user_fields,
        };
        lint(&src, &doc, &cfg, &mut report);
        (Some(cfg), report)
    }
}

/// The span of `[section] key`'s value, for pointing a warning at it.
fn value_span(
    doc: &Spanned<toml::de::DeTable<'_>>,
    section: &str,
    key: &str,
) -> Option<std::ops::Range<usize>> {
    let (_, sec) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == section)?;
    let toml::de::DeValue::Table(t) = sec.get_ref() else {
        return None;
    };
    t.iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v.span())
}

/// The span of `key`'s value in one table (an array-of-tables item).
fn key_span(item: &Spanned<toml::de::DeValue<'_>>, key: &str) -> Option<std::ops::Range<usize>> {
    let toml::de::DeValue::Table(t) = item.get_ref() else {
        return None;
    };
    t.iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v.span())
}

/// Values that are valid but weaken the gateway in ways an operator may
/// not mean: warnings (shown by `portcullis check`, logged by `serve`;
/// `check --strict` fails on them), not errors, since each has a use.
fn lint(src: &Source<'_>, doc: &Spanned<toml::de::DeTable<'_>>, cfg: &Config, report: &mut Report) {
    let mut warn = |section: &str, key: &str, msg: String| {
        report.push(src.warning(value_span(doc, section, key), msg));
    };
    if cfg.throttle.account_per_hour == 0 {
        warn("throttle", "account_per_hour", "account_per_hour = 0 refuses every login to an account for an hour after one wrong password: anyone who knows a user name can lock that user out; the default is 100".into());
    }
    if cfg.throttle.max_entries < 1000 {
        warn("throttle", "max_entries", format!("max_entries = {} forgets failures after a few hundred attempts, so a brute force from many addresses is barely slowed; the default is 100000", cfg.throttle.max_entries));
    }
    if cfg.passwords.min_length < 8 {
        warn("passwords", "min_length", format!("min_length = {} is below the 8 characters OWASP ASVS requires for self-chosen passwords", cfg.passwords.min_length));
    }
    if cfg.passwords.max_length < 64 {
        warn("passwords", "max_length", format!("max_length = {} acts as 64: passphrases of at least 64 characters must work (OWASP ASVS)", cfg.passwords.max_length));
    }
    if cfg.upstream.tls && !cfg.upstream.verify_cert {
        warn("upstream", "verify_cert", "verify_cert = false sends identity headers and session-bearing requests to whoever answers for the upstream's address; use ca_file for a private CA instead".into());
    }
    for net in &cfg.server.trusted_proxies {
        if net.prefix_len() == 0 {
            warn("server", "trusted_proxies", format!("trusted_proxies contains {net}: every client is trusted, so anyone can set X-Forwarded-For and choose the address throttling and logs see; list only your TLS terminator"));
        }
    }
    let host = cfg.server.public_url.host_str().unwrap_or("");
    let local = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !cfg.server.secure && !local {
        warn("server", "public_url", format!("public_url {} is plain http on a non-local host: session cookies go without Secure and __Host-, and passwords cross the network in clear; put TLS in front and set an https public_url", cfg.server.public_url));
    }
    if cfg.session.absolute_timeout > Duration::from_secs(90 * 86_400) {
        warn(
            "session",
            "absolute_timeout",
            "absolute_timeout is over 90 days: a stolen cookie works that long".into(),
        );
    }
}

/// Files anyone on the machine may write: whoever can edit the config or a
/// policy file decides who gets in.
#[cfg(unix)]
fn lint_file_modes(cfg: &Config, report: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    let files = cfg.file.iter().chain(cfg.policy.files.iter());
    for f in files {
        let Ok(meta) = std::fs::metadata(f) else {
            continue;
        };
        if meta.permissions().mode() & 0o002 != 0 {
            report.push(crate::diag::Diagnostic {
                file: f.clone(),
                line: 1,
                column: 1,
                severity: crate::diag::Severity::Warning,
                message: format!(
                    "anyone on this machine can write this file, and so decide who gets in: chmod o-w {}",
                    f.display()
                ),
            });
        }
    }
}

/// Warns when the store folder cannot be written by this user (a
/// read-only mount, another owner): `check` passes such a config, and
/// `serve` then fails at start. The nearest existing folder is what
/// counts, since the store makes the rest.
#[cfg(unix)]
fn lint_store_writable(cfg: &Config, src: &Source<'_>, report: &mut Report) {
    use std::os::unix::ffi::OsStrExt;
    let path = &cfg.storage.path;
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return;
    };
    let Ok(c) = std::ffi::CString::new(existing.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        return;
    }
    let why = std::io::Error::last_os_error();
    let mut scratch = Report::default();
    let at = crate::diag::parse_toml(src, &mut scratch)
        .and_then(|doc| value_span(&doc, "storage", "path"));
    report.push(src.warning(
        at,
        format!(
            "the store folder {} cannot be written by this user ({why}): serve will fail to start; point [storage] path at a writable folder (in a container, the /data volume)",
            path.display()
        ),
    ));
}

/// Checks an upstream URL and resolves it once, at load time: Pingora's
/// peer constructor would otherwise do a blocking lookup per request and
/// panic on a bad name.
fn check_upstream_url(raw: &str) -> Result<(url::Url, SocketAddr, bool, String), String> {
    let url = url::Url::parse(raw).map_err(|e| {
        format!("invalid upstream url {raw:?}: {e}; write it like \"http://127.0.0.1:3000\"")
    })?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        s => {
            return Err(format!(
                "unsupported upstream scheme {s:?}: use http or https"
            ))
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| format!("upstream url {raw:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    if url.path() != "/" && !url.path().is_empty() {
        return Err(format!(
            "upstream url {raw:?} has a path; the gateway forwards the request path unchanged, so give only scheme://host:port"
        ));
    }
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve upstream host {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("upstream host {host:?} resolves to no address"))?;
    Ok((url, addr, tls, host))
}

/// Every `section.key` the config accepts, for documentation checks.
pub fn known_keys() -> Vec<(&'static str, &'static str)> {
    use crate::diag::field_names;
    let sections: [(&str, Option<&'static [&'static str]>); 13] = [
        ("server", field_names::<RawServer>()),
        ("upstream", field_names::<RawUpstream>()),
        ("storage", field_names::<RawStorage>()),
        ("policy", field_names::<RawPolicy>()),
        ("session", field_names::<RawSession>()),
        ("headers", field_names::<RawHeaders>()),
        ("throttle", field_names::<ThrottleConfig>()),
        ("passwords", field_names::<PasswordRules>()),
        ("registration", field_names::<RawRegistration>()),
        ("metrics", field_names::<RawMetrics>()),
        ("log", field_names::<RawLog>()),
        ("ui", field_names::<RawUi>()),
        ("user_fields", field_names::<UserField>()),
    ];
    sections
        .iter()
        .flat_map(|(s, keys)| keys.unwrap_or(&[]).iter().map(move |k| (*s, *k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<Config>, Report) {
        Config::parse(Path::new("p.toml"), text, Path::new("/etc/pc"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let (c, r) = parse("[upstream]\nurl = \"http://127.0.0.1:3000\"\n");
        assert!(!r.has_errors(), "{r}");
        let c = c.unwrap();
        assert_eq!(c.server.prefix, "/.portcullis");
        assert_eq!(c.storage.path, Path::new("/etc/pc/data"));
        assert_eq!(c.policy.files, vec![PathBuf::from("/etc/pc/policy.toml")]);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.session.cookie_name, "portcullis_session");
    }

    #[test]
    fn https_public_url_uses_host_prefix() {
        let (c, r) = parse("[server]\npublic_url = \"https://a.example\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n");
        assert!(!r.has_errors(), "{r}");
        assert_eq!(c.unwrap().session.cookie_name, "__Host-portcullis_session");
    }

    #[test]
    fn every_bad_section_is_reported_with_position() {
        let text = "[server]\nlisten = \"nope\"\nbogus = 1\n[upstream]\nurl = \"ftp://x\"\n[wat]\n";
        let (_, r) = parse(text);
        let lines: Vec<_> = r.errors().map(|d| (d.line, d.message.clone())).collect();
        assert!(
            lines.iter().any(|(l, m)| *l == 3 && m.contains("bogus")),
            "{r}"
        );
        assert!(
            lines.iter().any(|(l, m)| *l == 5 && m.contains("scheme")),
            "{r}"
        );
        assert!(
            lines.iter().any(|(l, m)| *l == 6 && m.contains("wat")),
            "{r}"
        );
    }

    #[test]
    fn value_errors_point_at_the_value() {
        let (_, r) = parse("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[session]\nidle_timeout = \"5 fortnights\"\n");
        let d = r.errors().next().unwrap();
        assert_eq!(d.line, 4, "{r}");
        assert!(d.message.contains("duration"), "{r}");
    }

    /// A custom field or a renamed identity header must not carry a value
    /// where the app reads the user, or where the gateway sets its own.
    #[test]
    fn identity_headers_cannot_be_overwritten_by_config() {
        let base = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n";
        let field = |preset: &str, header: &str| {
            format!("{base}[headers]\npreset = \"{preset}\"\n[[user_fields]]\nname = \"department\"\nheader = \"{header}\"\n")
        };
        for (preset, header, why) in [
            ("authelia", "Remote-User", "the username"),
            ("authelia", "REMOTE-USER", "the username"),
            ("portcullis", "X-Forwarded-Groups", "the groups"),
            ("authelia", "X-Forwarded-User", "another gateway"),
            ("portcullis", "X-Auth-Request-Email", "another gateway"),
            ("portcullis", "Host", "set by the gateway"),
            ("portcullis", "X-Forwarded-For", "set by the gateway"),
            ("portcullis", "Content-Length", "frames the request"),
            ("portcullis", "X-Webauth-User", "other gateways' apps"),
            ("portcullis", "X-User-Id", "other gateways' apps"),
            ("portcullis", "Proxy-User", "other gateways' apps"),
            ("portcullis", "X-Forwarded-Client-Cert", "another gateway"),
            ("portcullis", "X-Forwarded-Roles", "another gateway"),
            ("portcullis", "Remote-Username", "another gateway"),
            ("portcullis", "X-Authentik-Username", "other gateways' apps"),
            ("portcullis", "Tailscale-User-Login", "other gateways' apps"),
        ] {
            let (_, r) = parse(&field(preset, header));
            assert!(r.has_errors(), "{preset} {header} accepted");
            let d = r.errors().next().unwrap();
            assert_eq!(d.line, 7, "{r}");
            assert!(d.message.contains(why), "{header}: {r}");
        }
        for ok in [
            "X-Forwarded-Department",
            "Remote-Department",
            "X-Auth-Request-Team",
            "Tenant-Id",
        ] {
            let (_, r) = parse(&field("portcullis", ok));
            assert!(!r.has_errors(), "{ok}: {r}");
        }

        let twice = format!("{base}[[user_fields]]\nname = \"a\"\nheader = \"X-Team\"\n[[user_fields]]\nname = \"b\"\nheader = \"x-team\"\n");
        let (_, r) = parse(&twice);
        assert!(
            r.has_errors() && r.to_string().contains("the field \"a\""),
            "{r}"
        );

        for (key, header, why) in [
            ("user", "Cookie", "set by the gateway"),
            (
                "email",
                "X-Forwarded-User",
                "both the username and the email",
            ),
            ("name", "x-forwarded-groups", "both the groups and the name"),
        ] {
            let (_, r) = parse(&format!("{base}[headers]\n{key} = \"{header}\"\n"));
            assert!(r.has_errors(), "{key} = {header} accepted");
            let d = r.errors().next().unwrap();
            assert_eq!((d.line, d.message.contains(why)), (4, true), "{r}");
        }
        let (_, r) = parse(&format!(
            "{base}[headers]\npreset = \"oauth2-proxy\"\nuser = \"X-User\"\n"
        ));
        assert!(!r.has_errors(), "{r}");
    }

    /// Type errors say what to write, not which Rust type or serde enum
    /// failed to match.
    #[test]
    fn type_errors_say_what_to_write() {
        let base = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n";
        for (text, want) in [
            (
                "[server]\nlisten = 8080\n",
                "a string in quotes, or a list of them",
            ),
            ("[server]\nthreads = -1\n", "a whole number, 0 or more"),
            ("[session]\nidle_timeout = -5\n", "cannot be negative"),
            ("[server]\ngrace_period = 1.5\n", "\"1500ms\""),
            ("[session]\nidle_timeout = \"30\"\n", "no unit"),
            (
                "[session]\nidle_timeout = true\n",
                "whole seconds (90) or a number with a unit",
            ),
        ] {
            let (_, r) = parse(&format!("{base}{text}"));
            let all = r.to_string();
            assert_eq!(r.errors().count(), 1, "{text}: {all}");
            let d = r.errors().next().unwrap();
            assert_eq!(d.line, 4, "{all}");
            assert!(d.message.contains(want), "{text}: {all}");
            assert!(!all.contains("untagged") && !all.contains("usize"), "{all}");
        }
    }

    #[test]
    fn a_zero_sized_store_cache_is_refused() {
        let (_, r) =
            parse("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[storage]\ncache_mb = 0\n");
        let d = r.errors().next().unwrap();
        assert_eq!((d.line, d.column), (4, 12), "{r}");
        assert!(d.message.contains("at least 1"), "{r}");
        let (c, r) =
            parse("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[storage]\ncache_mb = 1\n");
        assert!(!r.has_errors(), "{r}");
        assert_eq!(c.unwrap().storage.cache_bytes, 1024 * 1024);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3 weeks").is_err());
        let e = parse_duration("12").unwrap_err();
        assert!(e.contains("no unit") && e.contains("\"12m\""), "{e}");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use std::path::Path;

    proptest! {
        /// Malformed config or policy text is an error report, never a panic.
        #[test]
        fn parsing_never_panics(text in "(\\[[a-z_]{0,12}\\]\n|[a-z_]{1,12} = (\"[^\"\n]{0,20}\"|[0-9]{1,6}|\\[\\]|true)\n|\\[\\[rule\\]\\]\n|#.*\n){0,12}") {
            let _ = super::Config::parse(Path::new("c.toml"), &text, Path::new("/tmp"));
            let _ = crate::policy::load::compile(&[(Path::new("p.toml"), &text)], false);
        }

        #[test]
        fn arbitrary_bytes_never_panic(text in any::<String>()) {
            let _ = super::Config::parse(Path::new("c.toml"), &text, Path::new("/tmp"));
            let _ = crate::policy::load::compile(&[(Path::new("p.toml"), &text)], false);
        }
    }
}
