//! Answers the gateway writes itself (its pages, JSON, redirects, errors).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// A complete local response.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Our pages never load anything from elsewhere and run no script.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data: https:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

impl Reply {
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn html(status: u16, body: String) -> Self {
        Reply::new(status)
            .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(body)
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Reply::new(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(value.to_string())
    }

    pub fn error_json(status: u16, code: &str) -> Self {
        Reply::json(status, &serde_json::json!({ "error": code }))
    }

    pub fn redirect(status: u16, location: &str) -> Self {
        Reply::new(status).header(http::header::LOCATION, location)
    }

    pub fn header(
        mut self,
        name: impl TryInto<HeaderName>,
        value: impl TryInto<HeaderValue>,
    ) -> Self {
        if let (Ok(n), Ok(v)) = (name.try_into(), value.try_into()) {
            self.headers.push((n, v));
        }
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Security headers for the gateway's own answers.
    pub fn hardened(self, secure: bool) -> Self {
        let r = self
            .header("content-security-policy", CSP)
            .header("x-content-type-options", "nosniff")
            .header("x-frame-options", "DENY")
            .header("referrer-policy", "same-origin");
        // No Cache-Control here: `send` adds `no-store` to any answer that
        // does not say otherwise (static assets do).
        if secure {
            r.header(
                "strict-transport-security",
                "max-age=31536000; includeSubDomains",
            )
        } else {
            r
        }
    }
}

/// Writes a reply. A request body we did not read is not drained: the
/// connection is closed after the answer instead, so no unread bytes can
/// be taken for the next request.
pub async fn send(session: &mut Session, reply: Reply) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    let mut has_cache_control = false;
    for (k, v) in reply.headers {
        has_cache_control |= k == http::header::CACHE_CONTROL;
        resp.append_header(k, v)?;
    }
    if !has_cache_control {
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len().to_string())?;
    if !session.as_downstream_mut().is_body_done() {
        session.as_downstream_mut().set_keepalive(None);
    }
    let head = session.req_header().method == http::Method::HEAD;
    let empty = reply.body.is_empty() || head;
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_keeps_one_cache_control() {
        let count = |r: &Reply| {
            r.headers
                .iter()
                .filter(|(n, _)| n == http::header::CACHE_CONTROL)
                .map(|(_, v)| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let asset = Reply::new(200)
            .header("cache-control", "public, max-age=3600")
            .hardened(false);
        assert_eq!(count(&asset), ["public, max-age=3600"]);
        // `send` adds the `no-store` (asserted on the wire in
        // tests/security.rs); hardening adds no second one.
        assert!(count(&Reply::new(200).hardened(true)).is_empty());
    }
}
