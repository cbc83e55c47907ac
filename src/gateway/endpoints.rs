//! The gateway's own endpoints under the reserved prefix: login, logout,
//! password change, registration, the user's sessions, `/me`, health and
//! static assets. Nothing here is ever forwarded upstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cookie::{Cookie, SameSite};
use pingora::proxy::Session;
use serde::Deserialize;

use super::reply::{send, Reply};
use super::{cookie_values, Ctx, Gateway};
use crate::accounts::{user_key, User};
use crate::audit::Event;
use crate::csrf::{same_origin, CsrfKey};
use crate::passwords::PoolError;
use crate::session::{short_tag, Live};

pub async fn handle(gw: &Gateway, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
    let reply = route(gw, session, ctx).await;
    send(session, reply.hardened(gw.app.cfg.server.secure)).await
}

async fn route(gw: &Gateway, session: &mut Session, ctx: &mut Ctx) -> Reply {
    let prefix_len = gw.app.cfg.server.prefix.len();
    let path = ctx
        .target
        .as_ref()
        .map(|t| t.path.clone())
        .unwrap_or_default();
    let sub = path.get(prefix_len..).unwrap_or("");
    let method = session.req_header().method.clone();
    let get = method == http::Method::GET || method == http::Method::HEAD;
    let post = method == http::Method::POST;

    // Identity for pages that need it; a broken store fails closed.
    let identity = match gw.authenticate(session.req_header()) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "session lookup failed");
            return Reply::error_json(503, "unavailable").header("retry-after", "5");
        }
    };
    if let Some(id) = &identity {
        ctx.user = Some(Arc::clone(&id.user));
        ctx.session = Some(Arc::clone(&id.session));
    }
    let me = Endpoint {
        gw,
        identity: identity
            .as_ref()
            .map(|i| (Arc::clone(&i.user), Arc::clone(&i.session))),
    };

    match sub {
        "/login" if get => me.login_page(session, None, "", 200),
        "/login" if post => me.login_post(session, ctx).await,
        "/logout" if get => me.logout_page(session),
        "/logout" if post => me.logout_post(session, ctx).await,
        "/password" if get => me.password_page(session, None, false, 200),
        "/password" if post => me.password_post(session, ctx).await,
        "/register" | "/register/" if !gw.app.cfg.registration.enabled => not_found(gw, session),
        "/register" if get => me.register_page(session, None, "", "", 200),
        "/register" if post => me.register_post(session, ctx).await,
        "/sessions" if get => me.sessions_page(session),
        "/sessions" if post => me.sessions_post(session).await,
        "/me" if get => me.whoami(),
        "/health" if get => me.health(),
        s if get && s.starts_with("/static/") => me.asset(&s["/static/".len()..]),
        "/login" | "/logout" | "/password" | "/register" | "/sessions" => {
            Reply::error_json(405, "method_not_allowed").header("allow", "GET, HEAD, POST")
        }
        "/me" | "/health" => {
            Reply::error_json(405, "method_not_allowed").header("allow", "GET, HEAD")
        }
        _ => not_found(gw, session),
    }
}

fn not_found(gw: &Gateway, session: &Session) -> Reply {
    if Gateway::is_browser(session.req_header()) {
        Reply::html(
            404,
            gw.app
                .ui
                .message("Not found", "There is no such page.", None),
        )
    } else {
        Reply::error_json(404, "not_found")
    }
}

struct Endpoint<'a> {
    gw: &'a Gateway,
    identity: Option<(Arc<User>, Arc<Live>)>,
}

/// A POST body, decoded.
enum Body {
    Form(HashMap<String, String>),
    Json(serde_json::Value),
}

#[derive(Deserialize)]
struct JsonLogin {
    username: String,
    password: String,
    #[serde(default)]
    remember: bool,
}

/// A request that says it carries nothing: no type, no length or a zero
/// one, no transfer coding. (A JSON POST with an empty body counts too: it
/// says nothing either.)
fn bodiless(session: &Session) -> bool {
    let h = &session.req_header().headers;
    let empty_len = h
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    let typed = media_type(session);
    empty_len
        && !h.contains_key(http::header::TRANSFER_ENCODING)
        && (typed.is_empty() || typed == "application/json")
}

fn media_type(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Strict `application/x-www-form-urlencoded`: invalid UTF-8 is an error,
/// not a replacement character.
fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let mut it = pair.splitn(2, |b| *b == b'=');
        let k = it.next().unwrap_or_default();
        let v = it.next().unwrap_or_default();
        let dec = |s: &[u8]| -> Option<String> {
            let plus: Vec<u8> = s
                .iter()
                .map(|b| if *b == b'+' { b' ' } else { *b })
                .collect();
            percent_encoding::percent_decode(&plus)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        out.insert(dec(k)?, dec(v)?);
    }
    Some(out)
}

fn query_param(session: &Session, name: &str) -> Option<String> {
    let q = session.req_header().uri.query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn client_ip(ctx: &Ctx) -> String {
    ctx.client_ip.map(|i| i.to_string()).unwrap_or_default()
}

fn user_agent(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect()
}

fn identity_json(gw: &Gateway, u: &User) -> serde_json::Value {
    let policy = gw.app.policy.current();
    let subject = crate::policy::Subject {
        superuser: u.is_superuser,
        groups: &u.groups,
        permissions: &u.permissions,
    };
    serde_json::json!({
        "username": u.username,
        "email": u.email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "groups": u.groups,
        "permissions": policy.effective_permissions(&subject),
        "superuser": u.is_superuser,
        "fields": u.fields,
    })
}

impl Endpoint<'_> {
    fn app(&self) -> &Arc<crate::app::App> {
        &self.gw.app
    }

    /// The session cookie for a new session: persistent (for the absolute
    /// lifetime) when the user asked to be remembered, else for the browser
    /// session only.
    fn session_cookie(&self, id: &crate::session::SessionId, remember: bool) -> String {
        let cfg = &self.app().cfg.session;
        let max_age = remember.then_some(cfg.absolute_timeout.as_secs() as i64);
        self.cookie(&cfg.cookie_name, id.to_cookie_value(), max_age)
    }

    fn cookie(&self, name: &str, value: String, max_age: Option<i64>) -> String {
        let mut c = Cookie::build((name.to_string(), value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.app().cfg.server.secure);
        if let Some(s) = max_age {
            c = c.max_age(cookie::time::Duration::seconds(s));
        }
        c.build().to_string()
    }

    fn expire_cookie(&self, name: &str) -> String {
        let mut c = Cookie::build((name.to_string(), ""))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.app().cfg.server.secure)
            .build();
        c.make_removal();
        c.to_string()
    }

    /// The browser's CSRF binding: the existing cookie, or a new one to set.
    fn csrf_binding(&self, session: &Session) -> (String, Option<String>) {
        let name = &self.app().csrf_cookie;
        if let Some(v) =
            cookie_values(&session.req_header().headers, name).find(|v| CsrfKey::valid_binding(v))
        {
            return (v.to_string(), None);
        }
        let b = CsrfKey::new_binding();
        let set = self.cookie(name, b.clone(), None);
        (b, Some(set))
    }

    fn form_page(
        &self,
        session: &Session,
        status: u16,
        template: &str,
        ctx: minijinja::Value,
    ) -> Reply {
        let (binding, set) = self.csrf_binding(session);
        let token = self.app().csrf.token(&binding);
        let html = self
            .app()
            .ui
            .render(template, minijinja::context! { csrf_token => token, ..ctx });
        let mut r = Reply::html(status, html);
        if let Some(c) = set {
            r = r.header(http::header::SET_COOKIE, c);
        }
        r
    }

    /// Reads and decodes a POST body: bounded (413), strictly decoded (400),
    /// of a supported type (415), same-origin (403), and for forms with a
    /// valid CSRF token (403).
    async fn read_post(&self, session: &mut Session) -> Result<Body, Reply> {
        let app = self.app();
        let mt = media_type(session);
        let is_json = mt == "application/json";
        let is_form = mt == "application/x-www-form-urlencoded";
        if !same_origin(&session.req_header().headers, &app.cfg.server.public_origin) {
            return Err(Reply::error_json(403, "cross_origin_request"));
        }
        if !is_json && !is_form {
            return Err(Reply::error_json(415, "unsupported_media_type"));
        }
        let body = read_body(
            session,
            app.cfg.server.max_body_bytes,
            app.cfg.server.client_timeout,
        )
        .await?;
        if is_json {
            return serde_json::from_slice(&body)
                .map(Body::Json)
                .map_err(|_| Reply::error_json(400, "invalid_json"));
        }
        let form =
            parse_form(&body).ok_or_else(|| Reply::error_json(400, "invalid_form_encoding"))?;
        let token = form.get("csrf_token").map(String::as_str).unwrap_or("");
        let ok = cookie_values(&session.req_header().headers, &app.csrf_cookie)
            .any(|b| app.csrf.verify(b, token));
        if !ok {
            let reply = if Gateway::is_browser(session.req_header()) {
                Reply::html(403, app.ui.message("Form expired", "This form was out of date or did not come from this site. Go back, reload the page and try again.", None))
            } else {
                Reply::error_json(403, "csrf_failed")
            };
            return Err(reply);
        }
        Ok(Body::Form(form))
    }

    // ---- login ----------------------------------------------------------

    fn login_page(
        &self,
        session: &Session,
        error: Option<&str>,
        username: &str,
        status: u16,
    ) -> Reply {
        let next = query_param(session, "next").unwrap_or_default();
        self.login_form(session, error, username, &next, status)
    }

    fn login_form(
        &self,
        session: &Session,
        error: Option<&str>,
        username: &str,
        next: &str,
        status: u16,
    ) -> Reply {
        let app = self.app();
        let next = crate::redirect::safe_next(next, &app.cfg.server.public_url);
        self.form_page(
            session,
            status,
            "login.html",
            minijinja::context! {
                error, username, next,
                remember_me => app.cfg.session.remember_me,
                registration => app.cfg.registration.enabled,
                signed_in_as => self.identity.as_ref().map(|(u, _)| u.username.clone()),
            },
        )
    }

    async fn login_post(&self, session: &mut Session, ctx: &Ctx) -> Reply {
        let app = self.app();
        let body = match self.read_post(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (username, password, next, remember, json) = match body {
            Body::Json(v) => match serde_json::from_value::<JsonLogin>(v) {
                Ok(j) => (j.username, j.password, String::new(), j.remember, true),
                Err(_) => return Reply::error_json(400, "invalid_request"),
            },
            Body::Form(mut f) => (
                f.remove("username").unwrap_or_default(),
                f.remove("password").unwrap_or_default(),
                f.remove("next").unwrap_or_default(),
                f.get("remember").is_some_and(|v| !v.is_empty()),
                false,
            ),
        };
        let username = username.trim().to_string();
        let next = crate::redirect::safe_next(&next, &app.cfg.server.public_url);
        let ip = client_ip(ctx);
        let ua = user_agent(session);
        let account = user_key(&username);
        let ip_addr = ctx
            .client_ip
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));

        // Throttle before any hashing. A browser that signed in to this
        // account with its current password (a device cookie) has limits
        // of its own instead of the account's shared cap; the record is
        // read only when such a cookie is there.
        let now_secs = crate::clock::unix_secs();
        let device = self.known_device(
            session,
            &account,
            || {
                app.accounts
                    .get(&username)
                    .ok()
                    .flatten()
                    .map(|u| u.password.clone())
            },
            now_secs,
        );
        if let Err(wait) =
            app.throttle
                .check_for(&account, ip_addr, Instant::now(), device.as_deref())
        {
            app.metrics.throttled.inc();
            app.metrics.logins.with_label_values(&["throttled"]).inc();
            app.audit.emit(
                Event::new("user_login_failed")
                    .with("user", username.as_str())
                    .with("reason", "throttled")
                    .with("ip", ip.as_str())
                    .with("user_agent", ua.as_str()),
            );
            let secs = wait.as_secs().max(1).to_string();
            let r = if json {
                Reply::error_json(429, "too_many_attempts")
            } else {
                self.login_form(
                    session,
                    Some("Too many failed attempts. Wait a little, then try again."),
                    &username,
                    &next,
                    429,
                )
            };
            return r.header("retry-after", secs);
        }

        let user = match app.accounts.get(&username) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "account lookup failed");
                return Reply::error_json(503, "unavailable").header("retry-after", "5");
            }
        };
        let valid_name =
            crate::accounts::check_username(&username).is_ok() && password.len() <= 4096;
        let stored = user
            .as_ref()
            .filter(|u| !u.password.is_empty() && valid_name)
            .map(|u| u.password.clone());
        let verified = match app.hasher.verify(password.clone(), stored.clone()).await {
            Ok(v) => v,
            Err(PoolError::Busy) => {
                app.metrics.logins.with_label_values(&["busy"]).inc();
                return Reply::error_json(503, "busy").header("retry-after", "1");
            }
            Err(e) => {
                tracing::error!(error = %e, "password check failed");
                return Reply::error_json(503, "unavailable").header("retry-after", "5");
            }
        };
        let active = user.as_ref().is_some_and(|u| u.is_active);
        if !(verified && active) {
            app.throttle
                .record_failure_for(&account, ip_addr, Instant::now(), device.as_deref());
            app.metrics
                .logins
                .with_label_values(&["invalid_credentials"])
                .inc();
            let reason = match (&user, verified) {
                (None, _) => "unknown_user",
                (Some(_), true) => "inactive",
                (Some(_), false) => "bad_password",
            };
            app.audit.emit(
                Event::new("user_login_failed")
                    .with("user", username.as_str())
                    .with("reason", reason)
                    .with("ip", ip.as_str())
                    .with("user_agent", ua.as_str()),
            );
            return if json {
                Reply::error_json(401, "invalid_credentials")
            } else {
                self.login_form(session, Some("Please enter a correct username and password. Note that both fields may be case-sensitive."), &username, &next, 401)
            };
        }
        let Some(user) = user else {
            return Reply::error_json(401, "invalid_credentials");
        };
        app.throttle
            .record_success_for(&account, ip_addr, device.as_deref());

        // Replace a legacy or weaker hash now that we know the password.
        let upgrade = match stored.as_deref() {
            Some(s) if crate::passwords::needs_upgrade(s) => app.hasher.hash(password).await.ok(),
            _ => None,
        };
        // The device cookie is bound to the hash the account will have.
        let stamp = upgrade
            .clone()
            .or_else(|| stored.clone())
            .unwrap_or_default();
        let old = self.identity.as_ref().map(|(_, l)| l.hash);
        let remember = remember && app.cfg.session.remember_me;
        let uname = user.username.clone();
        let (ip2, ua2) = (ip.clone(), ua.clone());
        let created = app
            .blocking(move |app| {
                // A new id at every login; the old session (if any) ends, so
                // a planted or stolen pre-login cookie is worth nothing.
                if let Some(h) = old {
                    app.sessions.revoke(&h)?;
                }
                let (id, live) = app
                    .sessions
                    .create(&user_key(&uname), &ip2, &ua2, remember)?;
                let now = crate::clock::unix_secs();
                let _ = app.accounts.modify(&uname, |u| {
                    u.last_login = Some(now);
                    if let Some(h) = upgrade {
                        u.password = h;
                    }
                    Ok(())
                });
                Ok((id, live))
            })
            .await;
        let (id, live) = match created {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot create session");
                return Reply::error_json(503, "unavailable").header("retry-after", "5");
            }
        };
        app.metrics.logins.with_label_values(&["success"]).inc();
        app.audit.emit(
            Event::new("user_logged_in")
                .with("user", user.username.as_str())
                .with("ip", ip.as_str())
                .with("user_agent", ua.as_str())
                .with("session", short_tag(&live.hash)),
        );
        let set = self.session_cookie(&id, remember);
        let device_set = self.device_cookie(&account, &stamp, now_secs);
        let fresh = app
            .accounts
            .get(&user.username)
            .ok()
            .flatten()
            .unwrap_or(user);
        let reply = if json {
            Reply::json(200, &identity_json(self.gw, &fresh))
        } else {
            Reply::redirect(303, &next)
        };
        reply
            .header(http::header::SET_COOKIE, set)
            .header(http::header::SET_COOKIE, device_set)
    }

    /// This browser's device cookie, if it is valid for this account and
    /// its current password. Only the first one counts: a request stuffed
    /// with thousands would otherwise buy an HMAC each (and a timing that
    /// tells which names exist).
    /// `password_hash` is asked for only when there is a cookie.
    fn known_device(
        &self,
        session: &Session,
        account: &str,
        password_hash: impl FnOnce() -> Option<String>,
        now_secs: u64,
    ) -> Option<String> {
        let app = self.app();
        let value = cookie_values(&session.req_header().headers, &app.device_cookie).next()?;
        let stamp = password_hash().filter(|p| !p.is_empty())?;
        app.device
            .verify(value, account, &stamp, now_secs)
            .then(|| value.to_string())
    }

    /// The device cookie (see [`crate::device`]) for a browser that just
    /// signed in to `account`: sent only to the gateway's own paths.
    fn device_cookie(&self, account: &str, stamp: &str, now_secs: u64) -> String {
        let app = self.app();
        Cookie::build((
            app.device_cookie.clone(),
            app.device.issue(account, stamp, now_secs),
        ))
        .path(app.cfg.server.prefix.clone())
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(app.cfg.server.secure)
        .max_age(cookie::time::Duration::seconds(
            crate::device::LIFETIME_SECS as i64,
        ))
        .build()
        .to_string()
    }

    // ---- logout ---------------------------------------------------------

    fn logout_page(&self, session: &Session) -> Reply {
        self.form_page(session, 200, "logout.html", minijinja::context! { username => self.identity.as_ref().map(|(u, _)| u.username.clone()) })
    }

    async fn logout_post(&self, session: &mut Session, ctx: &Ctx) -> Reply {
        let app = self.app();
        let body = if bodiless(session) {
            // A script signs out with a bare `curl -X POST`: no body, no
            // type. The origin rule still holds; a browser sends an Origin
            // with every cross-site POST, so another site gains nothing.
            if !same_origin(&session.req_header().headers, &app.cfg.server.public_origin) {
                return Reply::error_json(403, "cross_origin_request");
            }
            Body::Json(serde_json::Value::Null)
        } else {
            match self.read_post(session).await {
                Ok(b) => b,
                Err(r) => return r,
            }
        };
        if let Some((user, live)) = &self.identity {
            let h = live.hash;
            if let Err(e) = app.blocking(move |app| app.sessions.revoke(&h)).await {
                tracing::error!(error = %e, "cannot end session");
                return Reply::error_json(503, "unavailable").header("retry-after", "5");
            }
            app.audit.emit(
                Event::new("user_logged_out")
                    .with("user", user.username.as_str())
                    .with("ip", client_ip(ctx))
                    .with("user_agent", user_agent(session))
                    .with("session", short_tag(&h)),
            );
        }
        let expire = self.expire_cookie(&app.cfg.session.cookie_name);
        let r = match body {
            Body::Json(_) => Reply::json(200, &serde_json::json!({ "ok": true })),
            Body::Form(_) => Reply::html(
                200,
                app.ui.render(
                    "message.html",
                    minijinja::context! { heading => "Signed out", message => "You have been signed out.", link => format!("{}/login", app.cfg.server.prefix), link_text => "Sign in again" },
                ),
            ),
        };
        r.header(http::header::SET_COOKIE, expire)
            .header("clear-site-data", "\"cookies\"")
    }

    // ---- password change --------------------------------------------------

    fn require_login(&self, session: &Session) -> Option<Reply> {
        if self.identity.is_some() {
            return None;
        }
        let path = session.req_header().uri.path().to_string();
        Some(if Gateway::is_browser(session.req_header()) {
            Reply::redirect(302, &self.gw.login_url(&path))
        } else {
            Reply::error_json(401, "login_required")
        })
    }

    fn password_page(
        &self,
        session: &Session,
        error: Option<&str>,
        done: bool,
        status: u16,
    ) -> Reply {
        if let Some(r) = self.require_login(session) {
            return r;
        }
        let username = self.identity.as_ref().map(|(u, _)| u.username.clone());
        self.form_page(session, status, "password.html", minijinja::context! { error, done, username, min_length => self.app().cfg.passwords.min_length })
    }

    async fn password_post(&self, session: &mut Session, ctx: &Ctx) -> Reply {
        let app = self.app();
        if let Some(r) = self.require_login(session) {
            return r;
        }
        let Some((user, live)) = self.identity.clone() else {
            return Reply::error_json(401, "login_required");
        };
        let body = match self.read_post(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (current, new, confirm, json) = match body {
            Body::Json(v) => {
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                let new = s("new_password");
                (
                    s("current_password"),
                    new.clone(),
                    v.get("new_password_confirm")
                        .and_then(|x| x.as_str())
                        .map(str::to_string)
                        .unwrap_or(new),
                    true,
                )
            }
            Body::Form(mut f) => (
                f.remove("current_password").unwrap_or_default(),
                f.remove("new_password").unwrap_or_default(),
                f.remove("new_password_confirm").unwrap_or_default(),
                false,
            ),
        };
        let fail = |status: u16, code: &str, msg: &str| -> Reply {
            if json {
                Reply::json(
                    status,
                    &serde_json::json!({ "error": code, "message": msg }),
                )
            } else {
                self.password_page(session, Some(msg), false, status)
            }
        };
        let account = user.key();
        let ip_addr = ctx
            .client_ip
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        // As at login: a known browser is not held to the account's cap, so
        // an attack on the account does not stop its owner changing the
        // password.
        let device = self.known_device(
            session,
            &account,
            || Some(user.password.clone()),
            crate::clock::unix_secs(),
        );
        if let Err(wait) =
            app.throttle
                .check_for(&account, ip_addr, Instant::now(), device.as_deref())
        {
            return fail(
                429,
                "too_many_attempts",
                "Too many failed attempts. Wait a little, then try again.",
            )
            .header("retry-after", wait.as_secs().max(1).to_string());
        }
        let stored = app
            .accounts
            .get(&user.username)
            .ok()
            .flatten()
            .map(|u| u.password.clone())
            .filter(|p| !p.is_empty());
        match app.hasher.verify(current, stored).await {
            Ok(true) => {}
            Ok(false) => {
                app.throttle.record_failure_for(
                    &account,
                    ip_addr,
                    Instant::now(),
                    device.as_deref(),
                );
                return fail(
                    400,
                    "invalid_current_password",
                    "Your current password was entered incorrectly. Please enter it again.",
                );
            }
            Err(_) => return Reply::error_json(503, "busy").header("retry-after", "1"),
        }
        if new != confirm {
            return fail(
                400,
                "password_mismatch",
                "The two new password fields didn't match.",
            );
        }
        if let Err(e) = crate::password_rules::validate(
            &new,
            &user.username,
            user.email.as_deref(),
            &app.cfg.passwords,
        ) {
            return fail(400, e.code(), &e.to_string());
        }
        let hash = match app.hasher.hash(new).await {
            Ok(h) => h,
            Err(_) => return Reply::error_json(503, "busy").header("retry-after", "1"),
        };
        let (uname, ip, ua, remember) = (
            user.username.clone(),
            client_ip(ctx),
            user_agent(session),
            live.remember,
        );
        let res = app
            .blocking(move |app| {
                app.accounts.modify(&uname, |u| {
                    u.password = hash;
                    Ok(())
                })?;
                // ASVS 7.4.3: every session ends, this one included; it
                // continues under a new id.
                app.sessions.revoke_user(&user_key(&uname))?;
                app.sessions.create(&user_key(&uname), &ip, &ua, remember)
            })
            .await;
        let (id, live) = match res {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "password change failed");
                return Reply::error_json(503, "unavailable").header("retry-after", "5");
            }
        };
        app.audit.emit(
            Event::new("password_changed")
                .with("user", user.username.as_str())
                .with("ip", client_ip(ctx))
                .with("session", short_tag(&live.hash)),
        );
        let set = self.session_cookie(&id, live.remember);
        let r = if json {
            Reply::json(200, &serde_json::json!({ "ok": true }))
        } else {
            let me = Endpoint {
                gw: self.gw,
                identity: Some((user, live)),
            };
            me.password_page(session, None, true, 200)
        };
        r.header(http::header::SET_COOKIE, set)
    }

    // ---- registration -----------------------------------------------------

    fn register_page(
        &self,
        session: &Session,
        error: Option<&str>,
        username: &str,
        email: &str,
        status: u16,
    ) -> Reply {
        let next = crate::redirect::safe_next(
            &query_param(session, "next").unwrap_or_default(),
            &self.app().cfg.server.public_url,
        );
        self.form_page(session, status, "register.html", minijinja::context! { error, username, email, next, min_length => self.app().cfg.passwords.min_length })
    }

    async fn register_post(&self, session: &mut Session, ctx: &Ctx) -> Reply {
        let app = self.app();
        let body = match self.read_post(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (username, email, password, next, json) = match body {
            Body::Json(v) => {
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                (
                    s("username"),
                    s("email"),
                    s("password"),
                    String::new(),
                    true,
                )
            }
            Body::Form(mut f) => (
                f.remove("username").unwrap_or_default(),
                f.remove("email").unwrap_or_default(),
                f.remove("password").unwrap_or_default(),
                f.remove("next").unwrap_or_default(),
                false,
            ),
        };
        let (username, email) = (username.trim().to_string(), email.trim().to_string());
        let fail = |status: u16, code: &str, msg: &str| -> Reply {
            if json {
                Reply::json(
                    status,
                    &serde_json::json!({ "error": code, "message": msg }),
                )
            } else {
                self.register_page(session, Some(msg), &username, &email, status)
            }
        };
        let ip_addr = ctx
            .client_ip
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        // Registrations share the per-IP throttle with logins; they are
        // limited by address only, never by one count for everyone.
        if let Err(wait) = app
            .throttle
            .check_per_address("\u{0}register", ip_addr, Instant::now())
        {
            return fail(
                429,
                "too_many_attempts",
                "Too many attempts. Wait a little, then try again.",
            )
            .header("retry-after", wait.as_secs().max(1).to_string());
        }
        if let Err(m) = crate::accounts::check_new_username(&username) {
            return fail(400, "invalid_username", &m);
        }
        // An email-shaped name would reach the app as someone's address
        // that nobody checked.
        if username.contains('@') {
            return fail(
                400,
                "invalid_username",
                "A username you choose may not contain @.",
            );
        }
        if let Err(m) = crate::accounts::check_email(&email) {
            return fail(400, "invalid_email", &m);
        }
        if let Err(e) =
            crate::password_rules::validate(&password, &username, Some(&email), &app.cfg.passwords)
        {
            return fail(400, e.code(), &e.to_string());
        }
        app.throttle
            .record_per_address("\u{0}register", ip_addr, Instant::now());
        let hash = match app.hasher.hash(password).await {
            Ok(h) => h,
            Err(_) => return Reply::error_json(503, "busy").header("retry-after", "1"),
        };
        let mut user = User::new(&username);
        user.email = Some(email.clone());
        user.email_verified = false;
        user.groups = app.cfg.registration.default_groups.clone();
        user.password = hash;
        let (ip, ua) = (client_ip(ctx), user_agent(session));
        let u2 = user.clone();
        let claimed = email.clone();
        let res = app
            .blocking(move |app| {
                // Someone else's address would let this account pass for
                // theirs wherever the app looks users up by email. One
                // registration at a time, so two racing with one address
                // cannot both pass the check (the store has no email index;
                // sled is one process's, so a lock here is enough).
                static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
                let _turn = ONE_AT_A_TIME.lock();
                if let Some(clash) = app.accounts.registration_clash(&u2.username, &claimed)? {
                    return Ok(Err(clash));
                }
                app.accounts.create(&u2)?;
                app.sessions.create(&u2.key(), &ip, &ua, false).map(Ok)
            })
            .await;
        let (id, _live) = match res {
            Ok(Ok(x)) => x,
            Ok(Err(crate::accounts::Clash::Email)) => {
                return fail(
                    400,
                    "email_taken",
                    "An account with that email already exists.",
                );
            }
            // Apps that compare names case- or accent-blind would take the
            // new account for the old one.
            Ok(Err(crate::accounts::Clash::Lookalike)) => {
                return fail(
                    400,
                    "username_taken",
                    "A user with a name that looks the same already exists.",
                );
            }
            Err(crate::app::BlockingError::Store(crate::store::StoreError::Conflict(_))) => {
                return fail(
                    400,
                    "username_taken",
                    "A user with that username already exists.",
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "registration failed");
                return Reply::error_json(503, "unavailable").header("retry-after", "5");
            }
        };
        app.audit.emit(
            Event::new("user_created")
                .with("user", user.username.as_str())
                .with("via", "registration")
                .with("ip", client_ip(ctx)),
        );
        let set = self.session_cookie(&id, false);
        let next = crate::redirect::safe_next(&next, &app.cfg.server.public_url);
        if json {
            Reply::json(201, &identity_json(self.gw, &user)).header(http::header::SET_COOKIE, set)
        } else {
            Reply::redirect(303, &next).header(http::header::SET_COOKIE, set)
        }
    }

    // ---- the user's sessions ------------------------------------------------

    fn sessions_page(&self, session: &Session) -> Reply {
        if let Some(r) = self.require_login(session) {
            return r;
        }
        let Some((user, live)) = &self.identity else {
            return Reply::error_json(401, "login_required");
        };
        let list = match self.app().sessions.list(Some(&user.key())) {
            Ok(l) => l,
            Err(_) => return Reply::error_json(503, "unavailable"),
        };
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|(h, r)| {
                serde_json::json!({
                    "id": hex::encode(h),
                    "current": *h == live.hash,
                    "ip": r.ip,
                    "browser": describe_agent(&r.user_agent),
                    "user_agent": r.user_agent,
                    "created": crate::clock::rfc3339(r.created / 1000),
                    "last_seen": crate::clock::rfc3339(r.last_seen / 1000),
                })
            })
            .collect();
        let wants_json = !Gateway::is_browser(session.req_header());
        if wants_json {
            return Reply::json(200, &serde_json::json!({ "sessions": items }));
        }
        self.form_page(
            session,
            200,
            "sessions.html",
            minijinja::context! { username => user.username.clone(), sessions => items },
        )
    }

    async fn sessions_post(&self, session: &mut Session) -> Reply {
        let app = self.app();
        if let Some(r) = self.require_login(session) {
            return r;
        }
        let Some((user, _)) = self.identity.clone() else {
            return Reply::error_json(401, "login_required");
        };
        let body = match self.read_post(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (id, json) = match &body {
            Body::Json(v) => (
                v.get("session")
                    .and_then(|x| x.as_str())
                    .unwrap_or("")
                    .to_string(),
                true,
            ),
            Body::Form(f) => (f.get("session").cloned().unwrap_or_default(), false),
        };
        let Some(h) = crate::session::parse_hash_hex(&id) else {
            return Reply::error_json(400, "invalid_session_id");
        };
        let owner = user.key();
        let res = app
            .blocking(move |app| match app.sessions.store().get(&h)? {
                Some(r) if r.user == owner => app.sessions.revoke(&h).map(|_| true),
                _ => Ok(false),
            })
            .await;
        match res {
            Ok(true) => {
                app.audit.emit(
                    Event::new("session_revoked")
                        .with("user", user.username.as_str())
                        .with("session", short_tag(&h))
                        .with("by", "user"),
                );
            }
            Ok(false) => return Reply::error_json(404, "no_such_session"),
            Err(_) => return Reply::error_json(503, "unavailable"),
        }
        if json {
            Reply::json(200, &serde_json::json!({ "ok": true }))
        } else {
            Reply::redirect(303, &format!("{}/sessions", app.cfg.server.prefix))
        }
    }

    // ---- small endpoints --------------------------------------------------

    fn whoami(&self) -> Reply {
        match &self.identity {
            Some((u, live)) => {
                let mut v = identity_json(self.gw, u);
                // The creation time is not kept in the session cache (it
                // only matters here); a store that cannot say leaves it out.
                let created = match self.app().sessions.store().get(&live.hash) {
                    Ok(Some(r)) => Some(crate::clock::rfc3339(r.created / 1000)),
                    _ => None,
                };
                v["session"] = serde_json::json!({
                    "created": created,
                    "expires": crate::clock::rfc3339(live.expires / 1000),
                });
                Reply::json(200, &v)
            }
            None => Reply::error_json(401, "login_required"),
        }
    }

    fn health(&self) -> Reply {
        let app = self.app();
        let store_ok = app.store.meta.get(b"health").is_ok();
        let policy = app.policy.current();
        // A refused reload leaves the gateway serving (the last good
        // policy), so still 200; "stale" tells the operator the files on
        // disk are not in force.
        let stale = app.policy.stale.load(std::sync::atomic::Ordering::Relaxed);
        let body = serde_json::json!({
            "status": if store_ok { "ok" } else { "unavailable" },
            "store": if store_ok { "ok" } else { "error" },
            "policy": {
                "status": if stale { "stale" } else { "ok" },
                "rules": policy.rules.len(),
                "groups": policy.groups.len(),
                "last_loaded": app.policy.last_good.load(std::sync::atomic::Ordering::Relaxed),
            },
        });
        Reply::json(if store_ok { 200 } else { 503 }, &body)
    }

    fn asset(&self, name: &str) -> Reply {
        match self.app().ui.asset(name) {
            Some((ct, body)) => Reply::new(200)
                .header(http::header::CONTENT_TYPE, ct)
                .header(http::header::CACHE_CONTROL, "public, max-age=3600")
                .body(body),
            None => Reply::error_json(404, "not_found"),
        }
    }
}

/// A short, human description of a user agent for the sessions page.
fn describe_agent(ua: &str) -> String {
    let browser = if ua.contains("Edg/") {
        "Edge"
    } else if ua.contains("Firefox/") {
        "Firefox"
    } else if ua.contains("Chrome/") || ua.contains("Chromium/") {
        "Chrome"
    } else if ua.contains("Safari/") {
        "Safari"
    } else if ua.starts_with("curl/") {
        "curl"
    } else if ua.is_empty() {
        "Unknown browser"
    } else {
        ua.split('/').next().unwrap_or("Browser")
    };
    let os = if ua.contains("Windows") {
        " on Windows"
    } else if ua.contains("Android") {
        " on Android"
    } else if ua.contains("iPhone") || ua.contains("iPad") {
        " on iOS"
    } else if ua.contains("Mac OS") {
        " on macOS"
    } else if ua.contains("Linux") {
        " on Linux"
    } else {
        ""
    };
    format!("{browser}{os}")
}

/// Reads a request body up to `cap` bytes, all of it within `deadline`.
/// Past the cap: 413, and the connection closes (the rest of the body is
/// never read). Past the deadline: 408. The per-read timeout alone would
/// let a client trickle a byte just inside it, holding a connection (and
/// a login form's worth of state) for hours.
async fn read_body(session: &mut Session, cap: usize, deadline: Duration) -> Result<Bytes, Reply> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > cap) {
        session.as_downstream_mut().set_keepalive(None);
        return Err(Reply::error_json(413, "body_too_large"));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue
        && session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .is_err()
    {
        return Err(Reply::error_json(400, "bad_request"));
    }
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            match session.as_downstream_mut().read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > cap {
                        return Err(Reply::error_json(413, "body_too_large"));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(e) if *e.etype() == pingora::ErrorType::ReadTimedout => {
                    return Err(Reply::error_json(408, "request_timeout"));
                }
                Err(_) => return Err(Reply::error_json(400, "bad_request")),
            }
        }
    };
    let res = match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(Reply::error_json(408, "request_timeout")),
    };
    if res.is_err() {
        session.as_downstream_mut().set_keepalive(None);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_strictly() {
        let f = parse_form(b"username=al%C3%A9x&password=a+b%26c&empty=").unwrap();
        assert_eq!(f["username"], "aléx");
        assert_eq!(f["password"], "a b&c");
        assert_eq!(f["empty"], "");
        assert!(parse_form(b"username=%FF").is_none());
        assert!(parse_form(b"\xff=1").is_none());
    }

    #[test]
    fn agents() {
        assert_eq!(describe_agent("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"), "Chrome on Linux");
        assert_eq!(describe_agent("curl/8.0"), "curl");
    }
}
