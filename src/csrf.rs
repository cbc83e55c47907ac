//! Cross-site request forgery defences for the gateway's own forms.
//!
//! Two independent checks guard every state-changing POST: the request's
//! `Origin` (or `Referer`, or `Sec-Fetch-Site`) must be `public_url`, and a
//! form must carry a token bound to this browser: an HMAC of a random value
//! kept in a cookie that scripts cannot read, checked in constant time.

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub struct CsrfKey([u8; 32]);

impl CsrfKey {
    pub fn new(secret: [u8; 32]) -> Self {
        CsrfKey(secret)
    }

    /// A new browser binding value for the CSRF cookie.
    pub fn new_binding() -> String {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        B64.encode(b)
    }

    pub fn valid_binding(v: &str) -> bool {
        v.len() == 43 && B64.decode(v).map(|b| b.len() == 32).unwrap_or(false)
    }

    fn mac(&self, binding: &str) -> [u8; 32] {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_key());
        m.update(b"portcullis-csrf-v1:");
        m.update(binding.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The token a form carries for the browser holding `binding`.
    pub fn token(&self, binding: &str) -> String {
        B64.encode(self.mac(binding))
    }

    pub fn verify(&self, binding: &str, token: &str) -> bool {
        if !Self::valid_binding(binding) {
            return false;
        }
        let Ok(given) = B64.decode(token) else {
            return false;
        };
        if given.len() != 32 {
            return false;
        }
        bool::from(self.mac(binding).ct_eq(&given))
    }
}

// HMAC accepts keys of any length; this exists only to avoid an unwrap.
fn unreachable_key() -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(b"k").expect("HMAC takes any key length")
}

/// Does this request come from our own origin? Browsers send `Origin` on
/// POSTs; older ones a `Referer`; `Sec-Fetch-Site` says it outright.
/// Clients that send none of them (curl, scripts) are not browsers and
/// cannot be driven cross-site, so they pass this check.
pub fn same_origin(headers: &http::HeaderMap, public_origin: &str) -> bool {
    if let Some(o) = headers.get(http::header::ORIGIN) {
        return o.as_bytes() == public_origin.as_bytes();
    }
    if let Some(r) = headers.get(http::header::REFERER) {
        let Ok(r) = r.to_str() else { return false };
        return match url::Url::parse(r) {
            Ok(u) => u.origin().ascii_serialization() == public_origin,
            Err(_) => false,
        };
    }
    if let Some(s) = headers.get("sec-fetch-site") {
        return matches!(s.as_bytes(), b"same-origin" | b"none");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_to_the_browser() {
        let k = CsrfKey::new([7; 32]);
        let b = CsrfKey::new_binding();
        let t = k.token(&b);
        assert!(k.verify(&b, &t));
        assert!(!k.verify(&CsrfKey::new_binding(), &t));
        assert!(!k.verify(&b, ""));
        assert!(!k.verify(&b, "AAAA"));
        assert!(!k.verify("short", &t));
        let other = CsrfKey::new([8; 32]);
        assert!(!other.verify(&b, &t));
    }

    #[test]
    fn origin_checks() {
        let o = "https://app.example";
        let mut h = http::HeaderMap::new();
        assert!(same_origin(&h, o));
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert!(!same_origin(&h, o));
        h.insert("origin", "null".parse().unwrap());
        assert!(!same_origin(&h, o));
        h.insert("origin", "https://app.example".parse().unwrap());
        assert!(same_origin(&h, o));
        let mut h = http::HeaderMap::new();
        h.insert("referer", "https://app.example.evil.com/x".parse().unwrap());
        assert!(!same_origin(&h, o));
        h.insert("referer", "https://app.example/login?x".parse().unwrap());
        assert!(same_origin(&h, o));
        let mut h = http::HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h, o));
    }
}
