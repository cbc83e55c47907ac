//! The proxy hot path. Every request goes through [`Gateway::request_filter`],
//! which reads top to bottom:
//!
//! 1. **normalise** the request target to one canonical path (400 if it
//!    cannot be read one way only);
//! 2. requests under the reserved prefix go to the gateway's own
//!    [`endpoints`] and never upstream;
//! 3. **authenticate** from the session cookie;
//! 4. **authorise** with the current policy (a pure function);
//! 5. **forward** ([`Gateway::upstream_request_filter`]): the canonical path,
//!    owned headers stripped, identity headers and client address set.
//!
//! An upgraded connection (WebSocket) is judged again while its bytes flow:
//! see [`tunnel`].

pub mod endpoints;
pub mod reply;
mod tunnel;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::accounts::User;
use crate::app::App;
use crate::canonical::{self, Target};
use crate::policy::{Decision, Outcome, Policy, Request, Subject};
use crate::session::{Live, Lookup, SessionHash, SessionId};
use reply::{send, Reply};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Room for what the forward step adds: identity (user, email, groups,
/// name), `X-Forwarded-For/-Proto/-Host` and a rebuilt `Cookie`.
const ADDED_HEADERS: usize = 8;

pub struct Gateway {
    pub app: Arc<App>,
    /// `X-Forwarded-Proto`, from the public URL.
    forwarded_proto: HeaderValue,
    /// The `Host` sent upstream, unless the client's is preserved.
    upstream_host: Option<HeaderValue>,
    /// `public_url`'s host and port: the host an HTTP/1.0 request without
    /// a `Host` is taken to name (the gateway serves one origin), for host
    /// rules and for the app, which must not get an HTTP/1.1 request
    /// without one.
    public_host: HeaderValue,
}

/// Requests between `new_ctx` and the drop of their `Ctx` (upgraded
/// connections included): a graceful stop ends once this stays at zero,
/// instead of sleeping out the whole grace period.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many requests are being answered now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// Counts one request in [`IN_FLIGHT`] for as long as it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Release);
    }
}

/// Per-request state, carried from filter to filter.
pub struct Ctx {
    _in_flight: InFlight,
    /// When the request began; read only by the access log, so taken only
    /// when that is on (a clock read costs on every request).
    started: Option<Instant>,
    target: Option<Target>,
    user: Option<Arc<User>>,
    session: Option<Arc<Live>>,
    policy: Option<Arc<Policy>>,
    rule: Option<usize>,
    decision: &'static str,
    client_ip: Option<IpAddr>,
    upstream_started: Option<Instant>,
    /// When an upgraded connection is next judged again ([`tunnel`]).
    tunnel_next_check: u64,
}

/// What authentication found.
pub struct Identity {
    pub user: Arc<User>,
    pub session: Arc<Live>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("session store unavailable: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Self {
        let forwarded_proto = if app.cfg.server.public_url.scheme() == "https" {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        };
        let up = &app.cfg.upstream;
        let upstream_host = (!up.preserve_host)
            .then(|| match up.url.port() {
                Some(p) => format!("{}:{p}", up.sni),
                None => up.sni.clone(),
            })
            .and_then(|h| HeaderValue::try_from(h).ok());
        let public = &app.cfg.server.public_url;
        let public_host = HeaderValue::try_from(match public.port() {
            Some(p) => format!("{}:{p}", public.host_str().unwrap_or("localhost")),
            None => public.host_str().unwrap_or("localhost").to_string(),
        })
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Gateway {
            app,
            forwarded_proto,
            upstream_host,
            public_host,
        }
    }

    /// Session cookie -> live session -> current user record. A malformed,
    /// unknown, expired or revoked cookie, or a disabled user, is no
    /// identity. A store failure is an error (the caller fails closed).
    pub fn authenticate(&self, req: &RequestHeader) -> Result<Option<Identity>, AuthError> {
        let name = &self.app.cfg.session.cookie_name;
        for value in cookie_values(&req.headers, name) {
            let Some(id) = SessionId::from_cookie_value(value) else {
                continue;
            };
            if let Some(identity) = self.identity(&id.hash())? {
                return Ok(Some(identity));
            }
        }
        Ok(None)
    }

    /// The live session with this hash and its user's current record, if
    /// both are still good (not expired or revoked, user active).
    fn identity(&self, h: &SessionHash) -> Result<Option<Identity>, AuthError> {
        let Lookup::Valid(live) = self.app.sessions.lookup(h)? else {
            return Ok(None);
        };
        Ok(self
            .app
            .accounts
            .get_by_key(&live.user)?
            .filter(|u| u.is_active)
            .map(|user| Identity {
                user,
                session: live,
            }))
    }

    fn is_browser(req: &RequestHeader) -> bool {
        req.headers
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|v| v.to_str().map(|s| s.contains("text/html")).unwrap_or(false))
    }

    fn login_url(&self, next: &str) -> String {
        let base = self
            .app
            .cfg
            .server
            .public_url
            .as_str()
            .trim_end_matches('/');
        let mut s = format!("{base}{}/login", self.app.cfg.server.prefix);
        if next != "/" {
            s.push_str("?next=");
            s.extend(url::form_urlencoded::byte_serialize(next.as_bytes()));
        }
        s
    }

    async fn deny(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        outcome: Outcome,
    ) -> pingora::Result<()> {
        let browser = Self::is_browser(session.req_header());
        let secure = self.app.cfg.server.secure;
        let reply = match outcome {
            Outcome::LoginRequired if browser => {
                let next = ctx.target.as_ref().map(|t| t.to_uri_string()).unwrap_or_else(|| "/".into());
                Reply::redirect(302, &self.login_url(&next)).header("cache-control", "no-store")
            }
            Outcome::LoginRequired => Reply::error_json(401, "login_required")
                .header("www-authenticate", format!("Cookie realm=\"portcullis\", login=\"{}/login\"", self.app.cfg.server.prefix))
                .hardened(secure),
            _ if browser => Reply::html(
                403,
                self.app.ui.message(
                    "Access denied",
                    "You do not have permission to open this page. If you think you should, ask an administrator.",
                    ctx.user.as_ref().map(|u| u.username.as_str()),
                ),
            )
            .hardened(secure),
            _ => Reply::error_json(403, "forbidden").hardened(secure),
        };
        send(session, reply).await
    }

    async fn bad_request(&self, session: &mut Session, why: &str) -> pingora::Result<()> {
        session.as_downstream_mut().set_keepalive(None);
        let reply = if Self::is_browser(session.req_header()) {
            Reply::html(
                400,
                self.app
                    .ui
                    .message("Bad request", "The request could not be understood.", None),
            )
        } else {
            Reply::json(
                400,
                &serde_json::json!({ "error": "bad_request", "reason": why }),
            )
        };
        send(session, reply.hardened(self.app.cfg.server.secure)).await
    }
}

/// The policy's decision for this request and user (`None`: anonymous).
/// `host` is the request's `Host` header, already found by [`malformed`].
/// A case-insensitive policy compares case-insensitively itself.
fn decide<'p>(
    policy: &'p Policy,
    req: &RequestHeader,
    host: Option<&HeaderValue>,
    target: Option<&Target>,
    user: Option<&User>,
) -> Decision<'p> {
    // Most policies have no host rules; the host is then not worked out.
    let host = if policy.uses_hosts() {
        request_host(req, host)
    } else {
        ""
    };
    let subject = user.map(|u| Subject {
        superuser: u.is_superuser,
        groups: &u.groups,
        permissions: &u.permissions,
    });
    policy.decide(
        &Request {
            method: &req.method,
            host,
            path: target.map_or("/", |t| t.path.as_str()),
        },
        subject.as_ref(),
    )
}

/// Did the client send `Content-Length` as well? Pingora drops it when
/// `Transfer-Encoding` is present (RFC 9112 lets a server go on), so look at
/// the raw header: a request framed two ways is a smuggling attempt, and we
/// refuse it outright. Only checked for the rare requests with
/// `Transfer-Encoding`.
fn sent_content_length(session: &Session) -> bool {
    let Some(h1) = session.as_downstream().as_http1() else {
        return false;
    };
    let raw = h1.get_headers_raw_bytes();
    raw.split(|b| *b == b'\n')
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Why a request cannot be read one way only, if it cannot: each of these
/// lets the gateway and the app (or a server between them) disagree on
/// what was asked. Otherwise the request's one `Host` value, if it sent
/// one. The headers are read in one pass: a lookup by name hashes it, and
/// this runs on every request.
fn malformed(session: &Session) -> Result<Option<&HeaderValue>, &'static str> {
    let req = session.req_header();
    if !canonical::method_is_canonical(&req.method) {
        return Err("method not in upper case");
    }
    let mut host = None;
    let mut hosts = 0;
    let mut transfer_encoding = false;
    // Codings across every `Transfer-Encoding` value, in order.
    let mut codings = 0;
    let mut first_is_chunked = false;
    for (name, value) in &req.headers {
        if name == http::header::HOST {
            hosts += 1;
            host.get_or_insert(value);
        } else if name == http::header::CONTENT_LENGTH {
            // `Content-Length: 3, 3` is read as 3 by some servers and
            // refused by others; only plain digits are passed on.
            if value.is_empty() || !value.as_bytes().iter().all(u8::is_ascii_digit) {
                return Err("Content-Length is not a number");
            }
        } else if name == http::header::TRANSFER_ENCODING {
            transfer_encoding = true;
            for c in value
                .as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
            {
                if c.is_empty() {
                    continue;
                }
                if codings == 0 {
                    first_is_chunked = c.eq_ignore_ascii_case(b"chunked");
                }
                codings += 1;
            }
        }
    }
    if transfer_encoding {
        if sent_content_length(session) {
            return Err("both Content-Length and Transfer-Encoding");
        }
        // Only plain `chunked` framing is understood here: `gzip, chunked`
        // would be forwarded as plain chunked, and the app would get
        // compressed bytes it was not told about.
        if codings > 0 && (!first_is_chunked || codings > 1) {
            return Err("Transfer-Encoding other than chunked");
        }
    }
    if hosts > 1 {
        return Err("more than one Host header");
    }
    match host {
        None if req.version >= http::Version::HTTP_11 => Err("no Host header"),
        Some(h) if !canonical::host_is_valid(h.as_bytes()) => Err("malformed Host header"),
        h => Ok(h),
    }
}

/// Values of every cookie named `name` across all `Cookie` headers. Read
/// as bytes: a header with a stray non-ASCII byte in some other cookie
/// still yields ours, and no header is validated as a whole first (cookie
/// headers run to kilobytes). Values that are not UTF-8 are skipped.
pub fn cookie_values<'a>(
    headers: &'a http::HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    cookie_pairs(headers).filter_map(move |(k, v)| {
        if k != name.as_bytes() {
            return None;
        }
        let start = v.iter().position(|b| *b != b'"').unwrap_or(v.len());
        let end = v.iter().rposition(|b| *b != b'"').map_or(start, |e| e + 1);
        std::str::from_utf8(&v[start..end]).ok()
    })
}

/// Every `name=value` pair of every `Cookie` header, split by
/// [`cookie_pair`].
fn cookie_pairs(headers: &http::HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    cookie_pieces(headers).map(cookie_pair)
}

/// Every `;`-separated piece of every `Cookie` header, untrimmed. Split
/// with `memchr`, which reads a word at a time: this runs on every request,
/// once to authenticate and once to scrub our cookies before forwarding.
fn cookie_pieces(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(http::header::COOKIE).iter().flat_map(|v| {
        let mut rest = Some(v.as_bytes());
        std::iter::from_fn(move || {
            let r = rest?;
            Some(match memchr::memchr(b';', r) {
                Some(i) => {
                    rest = Some(&r[i + 1..]);
                    &r[..i]
                }
                None => {
                    rest = None;
                    r
                }
            })
        })
    })
}

/// One `name=value` piece of a `Cookie` header, both sides trimmed (a
/// piece without `=` is a name with an empty value).
fn cookie_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'=', pair) {
        Some(eq) => (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()),
        None => (pair.trim_ascii(), &b""[..]),
    }
}

/// The `Cookie` header without the gateway's own cookies, or `None` if
/// there were none of ours. Works on bytes, like [`cookie_values`], so an
/// odd byte elsewhere in the header cannot carry our cookies through.
fn scrub_cookies(headers: &http::HeaderMap, ours: &[&str]) -> Option<Option<HeaderValue>> {
    let mut touched = false;
    let mut kept: Vec<u8> = Vec::new();
    let mut is_ours = |piece: &[u8]| {
        let (name, _) = cookie_pair(piece);
        let ours = ours.iter().any(|o| o.as_bytes() == name);
        touched |= ours;
        ours
    };
    let mut sub: Vec<u8> = Vec::new();
    for pair in cookie_pieces(headers) {
        let pair = pair.trim_ascii();
        // RFC 2965 separated cookies with `,` too, and some apps still
        // split on it: `x=1, portcullis_session=…` must not carry ours
        // through inside another cookie's value.
        let piece = if memchr::memchr(b',', pair).is_some() {
            sub.clear();
            for s in pair.split(|b| *b == b',') {
                let s = s.trim_ascii();
                if !s.is_empty() && !is_ours(s) {
                    if !sub.is_empty() {
                        sub.extend_from_slice(b", ");
                    }
                    sub.extend_from_slice(s);
                }
            }
            &sub[..]
        } else if is_ours(pair) {
            continue;
        } else {
            pair
        };
        if piece.is_empty() {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(piece);
    }
    if !touched {
        return None;
    }
    Some(if kept.is_empty() {
        None
    } else {
        HeaderValue::from_bytes(&kept).ok()
    })
}

/// The request's host without port, for host rules: the absolute-form
/// target's, else the `Host` header's.
fn request_host<'r>(req: &'r RequestHeader, host: Option<&'r HeaderValue>) -> &'r str {
    let raw = req
        .uri
        .host()
        .or_else(|| host.and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    strip_port(raw)
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match memchr::memrchr(b':', h.as_bytes()) {
        Some(i) if h.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &h[..i],
        _ => h,
    }
}

fn under_prefix(path: &str, prefix: &str) -> bool {
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        // `;` too: rules read `/.portcullis;x/me` as `/.portcullis/me`, so
        // it is the gateway's, never the app's.
        && (path.len() == prefix.len() || matches!(path.as_bytes()[prefix.len()], b'/' | b';'))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        crate::sched::proxy_thread();
        Ctx {
            _in_flight: InFlight::start(),
            started: crate::access::enabled().then(Instant::now),
            target: None,
            user: None,
            session: None,
            policy: None,
            rule: None,
            decision: "none",
            client_ip: None,
            upstream_started: None,
            tunnel_next_check: 0,
        }
    }

    /// No downstream modules. Pingora's default adds its response
    /// compression module switched off, which still builds a context and
    /// runs on every request and every body chunk (~900 instructions a
    /// request); the gateway never compresses, and the app's own encoding
    /// passes through untouched.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        // Slow clients are cut off rather than holding a connection forever.
        let t = self.app.cfg.server.client_timeout;
        session.as_downstream_mut().set_read_timeout(Some(t));
        session.as_downstream_mut().set_write_timeout(Some(t));
        // Pipelined requests are answered one after another, in order
        // (RFC 9112 §9.3.2). Off, Pingora drops them and leaves the client
        // waiting for answers until the connection times out.
        if let pingora::protocols::http::ServerSession::H1(h1) = session.as_downstream_mut() {
            h1.set_pipelining_enabled(true);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let app = &self.app;
        ctx.client_ip = app.headers.client_ip(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            &session.req_header().headers,
        );

        // 1. Normalise.
        let req = session.req_header();
        if req.method == http::Method::CONNECT {
            ctx.decision = "bad_request";
            app.metrics.rejected.inc();
            send(
                session,
                Reply::error_json(405, "method_not_allowed").hardened(app.cfg.server.secure),
            )
            .await?;
            return Ok(true);
        }
        let host = match malformed(session) {
            Ok(host) => host.or(Some(&self.public_host)),
            Err(why) => {
                ctx.decision = "bad_request";
                app.metrics.rejected.inc();
                self.bad_request(session, why).await?;
                return Ok(true);
            }
        };
        let req = session.req_header();
        let target = match canonical::canonicalize(req.raw_path(), host.map(HeaderValue::as_bytes))
        {
            Ok(t) => t,
            Err(e) => {
                ctx.decision = "bad_request";
                app.metrics.rejected.inc();
                tracing::debug!(reason = %e, "request target refused");
                self.bad_request(session, &e.to_string()).await?;
                return Ok(true);
            }
        };
        if app.cfg.policy.case_insensitive && canonical::windows_alias(&target.path) {
            ctx.decision = "bad_request";
            app.metrics.rejected.inc();
            self.bad_request(session, "path names a file another way on Windows")
                .await?;
            return Ok(true);
        }
        let policy = app.policy.current();
        let own = under_prefix(&target.path, &app.cfg.server.prefix);
        ctx.target = Some(target);

        // 2. The gateway's own endpoints.
        if own {
            ctx.decision = "gateway";
            app.metrics.gateway.inc();
            endpoints::handle(self, session, ctx).await?;
            return Ok(true);
        }

        // 3. Authenticate.
        let identity = match self.authenticate(session.req_header()) {
            Ok(i) => i,
            Err(e) => {
                // Fail closed: a broken store never lets a request through.
                tracing::error!(error = %e, "authentication failed; denying");
                ctx.decision = "error";
                send(
                    session,
                    Reply::error_json(503, "unavailable")
                        .header("retry-after", "5")
                        .hardened(app.cfg.server.secure),
                )
                .await?;
                return Ok(true);
            }
        };
        if let Some(id) = identity {
            ctx.user = Some(id.user);
            ctx.session = Some(id.session);
        }

        // 4. Authorise.
        let decision = decide(
            &policy,
            session.req_header(),
            host,
            ctx.target.as_ref(),
            ctx.user.as_deref(),
        );
        ctx.rule = decision
            .rule
            .and_then(|r| policy.rules.iter().position(|x| std::ptr::eq(x, r)));
        let outcome = decision.outcome;
        let public = decision.public;
        ctx.policy = Some(policy);
        match outcome {
            Outcome::Allow => {
                if public {
                    ctx.decision = "public";
                    app.metrics.public.inc();
                } else {
                    ctx.decision = "allowed";
                    app.metrics.allowed.inc();
                }
                Ok(false)
            }
            Outcome::LoginRequired => {
                ctx.decision = "login_required";
                app.metrics.login_required.inc();
                self.deny(session, ctx, outcome).await?;
                Ok(true)
            }
            Outcome::Forbidden => {
                ctx.decision = "forbidden";
                app.metrics.forbidden.inc();
                if let Some(u) = &ctx.user {
                    app.audit.emit(
                        crate::audit::Event::new("access_denied")
                            .with("user", u.username.as_str())
                            .with("method", session.req_header().method.as_str())
                            .with(
                                "path",
                                ctx.target.as_ref().map(|t| t.path.as_str()).unwrap_or(""),
                            )
                            .with_opt("ip", ctx.client_ip.map(|i| i.to_string())),
                    );
                }
                self.deny(session, ctx, outcome).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let up = &self.app.cfg.upstream;
        // SNI means nothing to a plain-HTTP upstream; leaving it empty saves
        // a string copy per request (and hashing it for the pool).
        let sni = if up.tls {
            up.sni.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(up.addr, up.tls, sni);
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout + Duration::from_secs(5));
        // A WebSocket may stay quiet for long stretches; its upstream side
        // cannot be given another timeout after the 101, so an upgrade
        // request waits for the app as long as a tunnel may idle.
        peer.options.read_timeout = Some(if session.is_upgrade_req() {
            self.app.cfg.server.tunnel_idle_timeout.max(up.read_timeout)
        } else {
            up.read_timeout
        });
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.options.verify_cert = up.verify_cert;
        peer.options.verify_hostname = up.verify_cert;
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    // 5. Forward.
    //
    // The upstream request is taken apart into `http`'s plain parts and
    // edited there: Pingora's `RequestHeader` keeps a second, case-preserving
    // map of names and re-parses every name it is given, so each header
    // added through it cost 1 000–1 500 instructions, and it cannot reserve
    // room. The price is that header names reach the app in canonical case
    // (`Host`, `x-custom-thing`), as they do through HAProxy or Envoy; HTTP
    // names are case-insensitive.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let app = &self.app;
        // Forward exactly the path that was authorised (rewriting the URI
        // only when the client's spelling differs from it).
        let rewrite = match ctx.target.as_ref() {
            Some(t) if !t.is_spelled(upstream.raw_path()) => {
                Some(t.to_uri_string().parse::<http::Uri>().map_err(|_| {
                    pingora::Error::explain(
                        pingora::ErrorType::InvalidHTTPHeader,
                        "canonical path is not a valid URI",
                    )
                })?)
            }
            _ => None,
        };
        // A target the URI cannot hold byte for byte is put back afterwards.
        let raw_kept = (rewrite.is_none()
            && upstream.uri.path_and_query().map(|p| p.as_str().as_bytes())
                != Some(upstream.raw_path()))
        .then(|| upstream.raw_path().to_vec());
        let end_stream = upstream.send_end_stream();

        // `http::Request::new` is the cheapest stand-in while the header is
        // out (`RequestHeader::build_no_case` goes through `http`'s builder,
        // ~900 instructions).
        let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts: http::request::Parts = std::mem::replace(upstream, placeholder).into();
        if let Some(uri) = rewrite {
            parts.uri = uri;
        }
        let headers = &mut parts.headers;
        headers.reserve(ADDED_HEADERS);
        app.headers.strip(headers);
        // (The device cookie's path keeps browsers from sending it here;
        // a client that sends it anyway does not get it to the app.)
        let ours = [
            app.cfg.session.cookie_name.as_str(),
            app.csrf_cookie.as_str(),
            app.device_cookie.as_str(),
        ];
        if let Some(new_cookie) = scrub_cookies(headers, &ours) {
            headers.remove(http::header::COOKIE);
            if let Some(c) = new_cookie {
                headers.insert(http::header::COOKIE, c);
            }
        }
        if let Some(u) = &ctx.user {
            app.headers.inject(headers, u);
        }
        if let Some(ip) = ctx.client_ip {
            headers.insert(X_FORWARDED_FOR, crate::headers::ip_value(ip));
        }
        headers.insert(X_FORWARDED_PROTO, self.forwarded_proto.clone());
        let client_host = session.req_header().headers.get(http::header::HOST);
        headers.insert(
            X_FORWARDED_HOST,
            client_host.unwrap_or(&self.public_host).clone(),
        );
        match (&self.upstream_host, client_host) {
            (Some(h), _) => {
                headers.insert(http::header::HOST, h.clone());
            }
            (None, None) => {
                headers.insert(http::header::HOST, self.public_host.clone());
            }
            (None, Some(_)) => {}
        }

        *upstream = RequestHeader::from(parts);
        if let Some(raw) = raw_kept {
            upstream.set_raw_path(&raw)?;
        }
        if let Some(v) = end_stream {
            upstream.set_send_end_stream(v);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        self.recheck_tunnel(session, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<Duration>> {
        self.recheck_tunnel(session, ctx).map(|()| None)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && session.is_upgrade_req() {
            // The client side of a tunnel idles as long as the app side.
            let t = self.app.cfg.server.tunnel_idle_timeout;
            session.as_downstream_mut().set_read_timeout(Some(t));
        }
        if let Some(t) = ctx.upstream_started {
            self.app
                .metrics
                .upstream_latency
                .observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        use pingora::ErrorSource::Downstream;
        use pingora::ErrorType::*;
        let code = match (e.esource(), e.etype()) {
            // We closed a tunnel whose session ended: audited already.
            _ if ctx.decision == "tunnel_closed" => 0,
            (_, HTTPStatus(c)) => *c,
            // A client that stops sending its body is the client's fault,
            // not the app's: 408, and no "upstream failed" in the log.
            (Downstream, ReadTimedout) => 408,
            (Downstream, WriteError | WriteTimedout | ReadError | ConnectionClosed) => 0,
            (Downstream, _) => 400,
            (_, ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout) => 504,
            _ => 502,
        };
        if code >= 500 {
            self.app.metrics.upstream_errors.inc();
            tracing::warn!(error = %e, status = code, "upstream failed");
        }
        // Once a response has started (or a connection was upgraded to a
        // WebSocket tunnel), an error page would land inside its bytes:
        // the connection is only closed.
        let started = session.as_downstream().response_written().is_some();
        if code > 0 && !started {
            let (heading, msg) = if code == 504 {
                ("The application is taking too long", "The application behind this gateway did not answer in time. Try again in a moment.")
            } else if code >= 500 {
                ("The application is unavailable", "The application behind this gateway cannot be reached right now. Try again in a moment.")
            } else if code == 408 {
                (
                    "The request took too long",
                    "The request did not arrive in time. Try again.",
                )
            } else {
                ("Bad request", "The request could not be understood.")
            };
            let reply = if Self::is_browser(session.req_header()) {
                Reply::html(
                    code,
                    self.app.ui.message(
                        heading,
                        msg,
                        ctx.user.as_ref().map(|u| u.username.as_str()),
                    ),
                )
            } else {
                Reply::json(
                    code,
                    &serde_json::json!({ "error": match code { 504 => "upstream_timeout", 408 => "request_timeout", c if c >= 500 => "upstream_unavailable", _ => "bad_request" } }),
                )
            };
            let _ = send(session, reply.hardened(self.app.cfg.server.secure)).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that hangs up mid-request is routine (a closed tab, a load
    /// tester stopping), not an operator's error: its access line already
    /// records the error, so Pingora's own ERROR line is skipped.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &pingora::Error) -> bool {
        use pingora::ErrorType::*;
        ctx.decision == "tunnel_closed"
            || *e.esource() == pingora::ErrorSource::Downstream
                && matches!(e.etype(), ConnectionClosed | ReadError | WriteError)
    }

    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let app = &self.app;
        app.metrics.count_status(status);
        if crate::access::enabled() {
            let rule = match (&ctx.policy, ctx.rule) {
                (Some(p), Some(i)) => p.rules.get(i),
                _ => None,
            };
            crate::access::write(&crate::access::Entry {
                method: session.req_header().method.as_str(),
                path: ctx.target.as_ref().map(|t| t.path.as_str()).unwrap_or("-"),
                status,
                user: ctx.user.as_ref().map(|u| u.username.as_str()),
                decision: ctx.decision,
                rule,
                latency_us: ctx.started.map_or(0, |t| t.elapsed().as_micros() as u64),
                client_ip: ctx.client_ip,
                error: e.map(|e| e as &dyn std::fmt::Display),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matching_is_on_segment_boundaries() {
        assert!(under_prefix("/.portcullis", "/.portcullis"));
        assert!(under_prefix("/.portcullis/login", "/.portcullis"));
        assert!(under_prefix("/.PORTCULLIS/login", "/.portcullis"));
        assert!(!under_prefix("/.portcullisx", "/.portcullis"));
        assert!(!under_prefix("/", "/.portcullis"));
    }

    #[test]
    fn cookies() {
        let mut h = http::HeaderMap::new();
        h.append(
            "cookie",
            "a=1; portcullis_session=abc; b=2".parse().unwrap(),
        );
        h.append("cookie", "portcullis_session=def".parse().unwrap());
        let v: Vec<_> = cookie_values(&h, "portcullis_session").collect();
        assert_eq!(v, vec!["abc", "def"]);
        assert_eq!(
            scrub_cookies(&h, &["portcullis_session"]),
            Some(Some(HeaderValue::from_static("a=1; b=2")))
        );
        let mut h = http::HeaderMap::new();
        h.append("cookie", "x=1".parse().unwrap());
        assert_eq!(scrub_cookies(&h, &["portcullis_session"]), None);
    }

    #[test]
    fn an_odd_byte_elsewhere_neither_hides_nor_leaks_our_cookie() {
        let mut h = http::HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_bytes(b"pref=caf\xe9; portcullis_session=\"abc\" ; x").unwrap(),
        );
        let v: Vec<_> = cookie_values(&h, "portcullis_session").collect();
        assert_eq!(v, vec!["abc"]);
        assert_eq!(
            scrub_cookies(&h, &["portcullis_session"]),
            Some(Some(HeaderValue::from_bytes(b"pref=caf\xe9; x").unwrap()))
        );
        let mut h = http::HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static(" portcullis_session=abc ;"),
        );
        assert_eq!(scrub_cookies(&h, &["portcullis_session"]), Some(None));
    }

    #[test]
    fn our_cookie_is_scrubbed_from_comma_separated_lists_too() {
        let scrub = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.append("cookie", HeaderValue::from_str(v).unwrap());
            scrub_cookies(&h, &["portcullis_session"])
        };
        assert_eq!(
            scrub("x=1, portcullis_session=abc"),
            Some(Some(HeaderValue::from_static("x=1")))
        );
        assert_eq!(
            scrub("a=1; portcullis_session=x,portcullis_session=y; b=2,c=3"),
            Some(Some(HeaderValue::from_static("a=1; b=2, c=3")))
        );
        assert_eq!(
            scrub("portcullis_session=x, portcullis_session=y"),
            Some(None)
        );
        assert_eq!(scrub("pref=a,b; x=1"), None);
    }

    #[test]
    fn hosts_without_ports() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
