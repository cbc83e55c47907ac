//! Upgraded connections (WebSocket and other `Upgrade` tunnels) are judged
//! once, at the handshake, by [`Gateway::request_filter`]; after the `101`
//! the bytes flow for as long as both ends like. Without a second look, a
//! tunnel would outlive the session that opened it: a logout, a revoked
//! session, a disabled user or a lost group would leave an open WebSocket
//! working for hours.
//!
//! So while bytes cross a tunnel (either way), the request is judged
//! again at most once a second ([`RECHECK_MS`]): the same session must still be valid,
//! its user still active, and the current policy must still allow this
//! method, host and path to that user. If not, the tunnel is closed.
//! A tunnel that carries nothing is not looked at; its first byte after
//! the session ended closes it.

use pingora::proxy::Session;

use super::{decide, Ctx, Gateway};
use crate::policy::Outcome;

/// How often a busy tunnel is judged again. A session lookup and a policy
/// decision cost well under a microsecond; a second keeps that invisible
/// and a revoked session's tunnel closes within about a second of its
/// next message.
const RECHECK_MS: u64 = 1000;

/// What ended a tunnel, for the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Logged out, revoked, expired (absolute or idle), or the user is
    /// gone or disabled.
    Session,
    /// The policy (or the user's groups or permissions) no longer allows it.
    Forbidden,
    /// The store could not be read: fail closed.
    Store,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Session => "session_ended",
            Ended::Forbidden => "forbidden",
            Ended::Store => "store_error",
        }
    }
}

impl Gateway {
    /// Called for every chunk of an upgraded connection, both ways. An
    /// error closes the tunnel (both sides).
    pub(super) fn recheck_tunnel(&self, session: &Session, ctx: &mut Ctx) -> pingora::Result<()> {
        if !session.was_upgraded() {
            return Ok(());
        }
        let now = crate::clock::unix_millis_coarse();
        if now < ctx.tunnel_next_check {
            return Ok(());
        }
        ctx.tunnel_next_check = now + RECHECK_MS;
        let Some(ended) = self.tunnel_ended(session, ctx) else {
            return Ok(());
        };
        self.app.audit.emit(
            crate::audit::Event::new("tunnel_closed")
                .with("reason", ended.as_str())
                .with_opt("user", ctx.user.as_ref().map(|u| u.username.as_str()))
                .with(
                    "path",
                    ctx.target.as_ref().map(|t| t.path.as_str()).unwrap_or(""),
                )
                .with_opt("ip", ctx.client_ip.map(|i| i.to_string())),
        );
        ctx.decision = "tunnel_closed";
        pingora::Error::e_explain(pingora::ErrorType::Custom("tunnel closed"), ended.as_str())
    }

    /// Judges the tunnel's request again with the current session, user
    /// and policy; `None` while it is still allowed.
    fn tunnel_ended(&self, session: &Session, ctx: &Ctx) -> Option<Ended> {
        let user = match &ctx.session {
            None => None,
            Some(opened) => match self.identity(&opened.hash) {
                Ok(Some(id)) => Some(id.user),
                Ok(None) => return Some(Ended::Session),
                Err(_) => return Some(Ended::Store),
            },
        };
        let policy = self.app.policy.current();
        let req = session.req_header();
        let decision = decide(
            &policy,
            req,
            req.headers.get(http::header::HOST),
            ctx.target.as_ref(),
            user.as_deref(),
        );
        match decision.outcome {
            Outcome::Allow => None,
            _ => Some(Ended::Forbidden),
        }
    }
}
