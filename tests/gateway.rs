//! The gateway core, end to end: login, sessions, logout, identity headers,
//! redirects for browsers and 401 for APIs, restarts, timeouts, upstream
//! failure.

mod common;
use common::*;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

#[test]
fn browser_is_sent_to_login_and_api_gets_401() {
    let gw = Gw::start();
    let c = gw.client();
    let r = c
        .get(gw.url("/reports/q3?year=2025&x=%20y"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        loc,
        format!(
            "{}/.portcullis/login?next=%2Freports%2Fq3%3Fyear%3D2025%26x%3D%2520y",
            gw.origin()
        )
    );

    let r = c
        .get(gw.url("/reports/q3"))
        .header("accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"], "login_required");
}

#[test]
fn json_login_right_wrong_and_unknown() {
    let gw = Gw::start();
    gw.add_user("alice", PW, &["staff"], false);
    let c = gw.client();
    let login = |u: &str, p: &str| {
        c.post(gw.url("/.portcullis/login"))
            .json(&serde_json::json!({ "username": u, "password": p }))
            .send()
            .unwrap()
    };

    let wrong = login("alice", "nope nope nope");
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let wrong_body = wrong.text().unwrap();
    assert_eq!(wrong_body, r#"{"error":"invalid_credentials"}"#);
    let unknown = login("mallory", "nope nope nope");
    assert_eq!(unknown.status(), 401);
    assert_eq!(
        unknown.text().unwrap(),
        wrong_body,
        "unknown users get the same answer"
    );

    let ok = login("alice", PW);
    assert_eq!(ok.status(), 200);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("portcullis_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let me: serde_json::Value = ok.json().unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["groups"], serde_json::json!(["staff"]));

    // Usernames are case-insensitive.
    assert_eq!(
        gw.client()
            .post(gw.url("/.portcullis/login"))
            .json(&serde_json::json!({ "username": "ALICE", "password": PW }))
            .send()
            .unwrap()
            .status(),
        200
    );

    let seen = Seen::from(c.get(gw.url("/anything")).send().unwrap());
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(seen.header("x-forwarded-groups").as_deref(), Some("staff"));
    assert!(
        seen.header("cookie").is_none(),
        "the session cookie never reaches the app"
    );

    let me: serde_json::Value = c
        .get(gw.url("/.portcullis/me"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(me["permissions"], serde_json::json!(["reports.view"]));
}

#[test]
fn form_login_redirects_to_next_and_keeps_username_on_error() {
    let gw = Gw::start();
    gw.add_user("bob", PW, &[], false);
    let c = gw.client();
    let first = c
        .get(gw.url("/docs/a%3Fb?x=1"))
        .header("accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(first.status(), 302);
    let login_url = first.headers()["location"].to_str().unwrap().to_string();
    let page = c
        .get(&login_url)
        .header("accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    let token = extract(&html, "name=\"csrf_token\" value=\"");
    let next = extract(&html, "name=\"next\" value=\"");
    assert_eq!(next, "/docs/a%3Fb?x=1");

    let form = |pw: &str| {
        c.post(gw.url("/.portcullis/login"))
            .header("origin", gw.origin())
            .form(&[
                ("username", "bob"),
                ("password", pw),
                ("csrf_token", &token),
                ("next", &next),
            ])
            .send()
            .unwrap()
    };
    let bad = form("wrong password!");
    assert_eq!(bad.status(), 401);
    let html = bad.text().unwrap();
    assert!(html.contains("value=\"bob\""), "username kept");
    assert!(!html.contains("wrong password!"), "password never echoed");
    assert!(html.contains("role=\"alert\""));

    let good = form(PW);
    assert_eq!(good.status(), 303);
    assert_eq!(good.headers()["location"], "/docs/a%3Fb?x=1");
    let seen = Seen::from(c.get(gw.url("/docs/a%3Fb?x=1")).send().unwrap());
    assert_eq!(seen.target(), "/docs/a%3Fb?x=1");
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("bob"));
}

pub fn extract(html: &str, marker: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in page"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end]
        .replace("&amp;", "&")
        .replace("&#x2f;", "/")
        .replace("&#x3d;", "=")
        .replace("&#x3f;", "?")
}

#[test]
fn logout_ends_the_session_server_side() {
    let gw = Gw::start();
    gw.add_user("carol", PW, &[], false);
    let c = gw.login("carol", PW);
    assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 200);

    // Replay the cookie after logout from another client: it must be dead.
    let me = c.get(gw.url("/.portcullis/me")).send().unwrap();
    assert_eq!(me.status(), 200);
    let sessions = gw.cli(&["session", "list", "--json"], None);
    assert!(sessions.1.contains("carol"));

    let confirm = c
        .get(gw.url("/.portcullis/logout"))
        .header("accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(confirm.status(), 200, "GET only confirms");
    assert_eq!(
        c.get(gw.url("/x")).send().unwrap().status(),
        200,
        "GET logout does not end the session"
    );

    let out = c
        .post(gw.url("/.portcullis/logout"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(out.headers()["clear-site-data"], "\"cookies\"");
    let sc = out.headers()["set-cookie"].to_str().unwrap();
    assert!(sc.contains("Max-Age=0"), "{sc}");
    assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 401);
    let (_, list, _) = gw.cli(&["session", "list", "--json"], None);
    assert!(!list.contains("carol"), "{list}");
    // A script signs out with a bare POST (no body, no type), as
    // `curl -X POST` sends it, or with an empty JSON body.
    for content_type in [None, Some("application/json")] {
        let c = gw.login("carol", PW);
        assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 200);
        let mut r = c.post(gw.url("/.portcullis/logout"));
        if let Some(t) = content_type {
            r = r.header("content-type", t);
        }
        let out = r.send().unwrap();
        assert_eq!(out.status(), 200, "{content_type:?}");
        assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 401);
    }
    // Logging out without a session is not an error.
    let again = gw
        .client()
        .post(gw.url("/.portcullis/logout"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(again.status(), 200);
}

#[test]
fn stolen_cookie_is_useless_after_logout() {
    let gw = Gw::start();
    gw.add_user("dave", PW, &[], false);
    let c = gw.login("dave", PW);
    let r = gw.post_login("dave", PW);
    let cookie = session_cookie(&r);
    let thief = reqwest::blocking::Client::new();
    assert_eq!(
        thief
            .get(gw.url("/x"))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .status(),
        200
    );
    gw.cli(&["session", "revoke", "--user", "dave"], None);
    assert_eq!(
        thief
            .get(gw.url("/x"))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 401);
}

#[test]
fn sessions_survive_restart_and_kill_but_revocations_do_too() {
    let mut gw = Gw::start();
    gw.add_user("erin", PW, &[], false);
    let kept = gw.login("erin", PW);
    let revoked = gw.login("erin", PW);
    let r = revoked
        .post(gw.url("/.portcullis/logout"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Keep the revoked session's cookie value to replay it after the crash.
    gw.restart();
    assert_eq!(
        kept.get(gw.url("/x")).send().unwrap().status(),
        200,
        "session survives a graceful restart"
    );
    gw.kill();
    assert!(gw.spawn(), "{}", gw.log());
    assert_eq!(
        kept.get(gw.url("/x")).send().unwrap().status(),
        200,
        "session survives a kill"
    );
    assert_eq!(revoked.get(gw.url("/x")).send().unwrap().status(), 401);
    // Users survive too.
    let (code, out, _) = gw.cli(&["user", "show", "erin", "--json"], None);
    assert_eq!(code, 0);
    assert!(out.contains("argon2id"));
    assert!(!out.contains("$argon2id$"), "the hash is never shown");
}

#[test]
fn revoked_cookie_is_dead_even_after_kill() {
    let mut gw = Gw::start();
    gw.add_user("ivan", PW, &[], false);
    let c = gw.client();
    let r = c
        .post(gw.url("/.portcullis/login"))
        .json(&serde_json::json!({"username":"ivan","password":PW}))
        .send()
        .unwrap();
    let cookie = session_cookie(&r);
    let out = c
        .post(gw.url("/.portcullis/logout"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(out.status(), 200);
    gw.kill();
    assert!(gw.spawn());
    let replay = reqwest::blocking::Client::new()
        .get(gw.url("/x"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(
        replay.status(),
        401,
        "a revocation is durable before the response"
    );
}

#[test]
fn idle_and_absolute_timeouts() {
    let gw = Gw::with(Opts { extra: "[session]\nidle_timeout = \"1500ms\"\nabsolute_timeout = \"4s\"\nsweep_interval = \"500ms\"\n".into(), ..Opts::default() });
    gw.add_user("frank", PW, &[], false);

    let idle = gw.login("frank", PW);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        idle.get(gw.url("/x")).send().unwrap().status(),
        401,
        "idle session expired"
    );

    let busy = gw.login("frank", PW);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(3000) {
        assert_eq!(
            busy.get(gw.url("/x")).send().unwrap().status(),
            200,
            "active session stays alive"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        busy.get(gw.url("/x")).send().unwrap().status(),
        401,
        "absolute lifetime ends even an active session"
    );
}

#[test]
fn an_active_session_survives_a_crash_past_its_idle_timeout() {
    // Activity is kept in memory and written back in the background. A
    // gateway killed without a clean shutdown must still know, after a
    // restart, that the session was in use, and not end it as idle.
    let mut gw = Gw::with(Opts {
        extra: "[session]\nidle_timeout = \"6s\"\n".into(),
        ..Opts::default()
    });
    gw.add_user("ivy", PW, &[], false);
    let cookie = session_cookie(&gw.post_login("ivy", PW));
    let client = gw.client();
    let status = |gw: &Gw| {
        client
            .get(gw.url("/x"))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .status()
    };
    // In use for longer than the idle timeout.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(7500) {
        assert_eq!(status(&gw), 200, "an active session stays alive");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Give the background writer a moment, then crash.
    std::thread::sleep(Duration::from_millis(1200));
    gw.kill();
    assert!(gw.spawn(), "gateway did not restart:\n{}", gw.log());
    assert_eq!(
        status(&gw),
        200,
        "the session's activity was lost in the crash"
    );
}

#[test]
fn client_identity_headers_are_stripped_on_every_route() {
    let gw = Gw::start();
    gw.add_user("gina", PW, &[], false);
    let forged = [
        ("X-Forwarded-User", "admin"),
        ("X-Forwarded-Email", "admin@evil"),
        ("X-Forwarded-Groups", "staff"),
        ("Remote-User", "admin"),
        ("X-Auth-Request-User", "admin"),
        ("X-Remote-User", "admin"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
    ];
    let check = |seen: &Seen, user: Option<&str>| {
        for (k, v) in seen.headers() {
            assert!(
                !v.contains("admin") && !v.contains("6.6.6.6") && !v.contains("staff"),
                "forged header survived: {k}: {v}"
            );
        }
        assert_eq!(seen.header("x-forwarded-user").as_deref(), user);
        assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    };
    // Public route, anonymous.
    let mut req = gw.client().get(gw.url("/public/page"));
    for (k, v) in forged {
        req = req.header(k, v);
    }
    check(&Seen::from(req.send().unwrap()), None);
    // Protected route, signed in.
    let c = gw.login("gina", PW);
    let mut req = c.get(gw.url("/private"));
    for (k, v) in forged {
        req = req.header(k, v);
    }
    check(&Seen::from(req.send().unwrap()), Some("gina"));
    // Underscore and dot spellings (oauth2-proxy CVE-2025-64484), sent raw.
    let raw_req = format!(
        "GET /public/x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX_Forwarded_User: admin\r\nx.forwarded.user: admin\r\nREMOTE_USER: admin\r\nConnection: close\r\n\r\n",
        gw.port
    );
    let answer = raw(gw.port, raw_req.as_bytes());
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(!answer.contains("admin"), "{answer}");
}

#[test]
fn upstream_down_gives_502_and_gateway_keeps_serving() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gw::with(Opts {
        upstream: Some(dead),
        ..Opts::default()
    });
    let r = gw.client().get(gw.url("/public/x")).send().unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    let r = gw
        .client()
        .get(gw.url("/public/x"))
        .header("accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("unavailable"));
    assert_eq!(
        gw.client()
            .get(gw.url("/.portcullis/health"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn upstream_timeout_gives_504() {
    // A listener that accepts and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let gw = Gw::with(Opts {
        upstream: Some(format!("http://{addr}")),
        ..Opts::default()
    });
    let r = gw.client().get(gw.url("/public/slow")).send().unwrap();
    assert_eq!(r.status(), 504);
}

#[test]
fn oversized_and_malformed_login_bodies() {
    let gw = Gw::start();
    let c = gw.client();
    let big = "a".repeat(17 * 1024);
    let r = c
        .post(gw.url("/.portcullis/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username={big}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(gw.url("/.portcullis/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(gw.url("/.portcullis/login"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    // Non-UTF-8 form: 400 (the CSRF check never gets to run on garbage).
    let r = c
        .post(gw.url("/.portcullis/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(b"username=%FF%FE&password=x".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        gw.client()
            .get(gw.url("/.portcullis/health"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn health_me_and_static() {
    let gw = Gw::start();
    let c = gw.client();
    let h: serde_json::Value = c
        .get(gw.url("/.portcullis/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(
        c.get(gw.url("/.portcullis/me")).send().unwrap().status(),
        401
    );
    let css = c
        .get(gw.url("/.portcullis/static/portcullis.css"))
        .send()
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    let cc: Vec<_> = css.headers().get_all("cache-control").iter().collect();
    assert_eq!(
        cc,
        ["public, max-age=3600"],
        "one Cache-Control, and cacheable"
    );
    assert_eq!(
        c.get(gw.url("/.portcullis/static/.hidden"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(gw.url("/.portcullis/static/..%2fCargo.toml"))
            .send()
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        c.get(gw.url("/.portcullis/nope")).send().unwrap().status(),
        404
    );
    // Registration is off by default.
    assert_eq!(
        c.get(gw.url("/.portcullis/register"))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn malformed_or_forged_cookies_are_no_session() {
    let gw = Gw::start();
    let c = reqwest::blocking::Client::new();
    for v in [
        "",
        "x",
        "AAAA",
        &"A".repeat(43),
        &"!".repeat(43),
        &"A".repeat(5000),
        "%00%00",
        "\"quoted\"",
    ] {
        let r = c
            .get(gw.url("/private"))
            .header("cookie", format!("portcullis_session={v}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "cookie {v:?}");
    }
}

/// A raw upstream that accepts a WebSocket handshake and then echoes bytes.
fn websocket_upstream() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !text.contains("upgrade: websocket") {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let user = text
                    .lines()
                    .find(|l| l.starts_with("x-forwarded-user:"))
                    .map(|l| l[17..].trim().to_string())
                    .unwrap_or_default();
                let _ = s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Seen-User: {user}\r\n\r\n").as_bytes());
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn ws_handshake(port: u16, path: &str, cookie: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{cookie}\r\n"
    )
}

/// Opens a tunnel through the gateway and returns it with the `101` head.
fn open_tunnel(gw: &Gw, path: &str, cookie: &str) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(ws_handshake(gw.port, path, &format!("Cookie: {cookie}\r\n")).as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

/// Sends a message and reads its echo; `false` if the tunnel is closed.
fn tunnel_echoes(s: &mut std::net::TcpStream, msg: &[u8]) -> bool {
    use std::io::{Read, Write};
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut echoed = Vec::new();
    while echoed.len() < msg.len() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => echoed.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(echoed, msg);
    true
}

/// Keeps talking over the tunnel until it is closed; `false` if it was
/// still carrying messages after 6 s.
fn tunnel_closes(s: &mut std::net::TcpStream) -> bool {
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        if !tunnel_echoes(s, b"still-there?") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn websocket_upgrades_pass_for_allowed_requests_only() {
    let up = websocket_upstream();
    let gw = Gw::with(Opts {
        upstream: Some(format!("http://{up}")),
        ..Opts::default()
    });
    gw.add_user("wes", PW, &[], false);
    let r = gw.post_login("wes", PW);
    let cookie = session_cookie(&r);
    // Without a session: refused, never upgraded.
    let a = raw(gw.port, ws_handshake(gw.port, "/ws", "").as_bytes());
    assert_eq!(status_of(&a), 401, "{a}");
    // Nor without the group the path needs.
    let a = raw(
        gw.port,
        ws_handshake(gw.port, "/admin/ws", &format!("Cookie: {cookie}\r\n")).as_bytes(),
    );
    assert_eq!(status_of(&a), 403, "{a}");

    let (mut s, head) = open_tunnel(&gw, "/ws", &cookie);
    assert!(
        head.to_ascii_lowercase().contains("x-seen-user: wes"),
        "{head}"
    );
    assert!(tunnel_echoes(&mut s, b"ping-frame"));
    // A tunnel whose session is still good is judged again and stays open.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(tunnel_echoes(&mut s, b"ping-frame-2"));
}

#[test]
fn a_websocket_does_not_outlive_its_session_or_its_permission() {
    let up = websocket_upstream();
    let gw = Gw::with(Opts {
        upstream: Some(format!("http://{up}")),
        ..Opts::default()
    });

    // Logging out closes the tunnels the session opened.
    gw.add_user("wes", PW, &[], false);
    let cookie = session_cookie(&gw.post_login("wes", PW));
    let (mut s, _) = open_tunnel(&gw, "/ws", &cookie);
    assert!(tunnel_echoes(&mut s, b"hello"));
    let out = gw
        .client()
        .post(gw.url("/.portcullis/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert!(out.status().is_success(), "{}", out.status());
    assert!(tunnel_closes(&mut s), "the tunnel outlived the logout");

    // So does disabling the user.
    gw.add_user("dis", PW, &[], false);
    let cookie = session_cookie(&gw.post_login("dis", PW));
    let (mut s, _) = open_tunnel(&gw, "/ws", &cookie);
    assert!(tunnel_echoes(&mut s, b"hello"));
    let (code, _, err) = gw.cli(&["user", "disable", "dis"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        tunnel_closes(&mut s),
        "the tunnel outlived disabling its user"
    );

    // And losing the group the path needs, while the session lives on.
    gw.add_user("stan", PW, &["staff"], false);
    let cookie = session_cookie(&gw.post_login("stan", PW));
    let (mut admin, _) = open_tunnel(&gw, "/admin/ws", &cookie);
    let (mut plain, _) = open_tunnel(&gw, "/ws", &cookie);
    assert!(tunnel_echoes(&mut admin, b"hello"));
    let (code, _, err) = gw.cli(&["user", "group", "stan", "remove", "staff"], None);
    assert_eq!(code, 0, "{err}");
    assert!(tunnel_closes(&mut admin), "the tunnel outlived the group");
    assert!(
        tunnel_echoes(&mut plain, b"still mine"),
        "a tunnel the user may still hold is left open"
    );
    let tunnel_closed = |events: &[serde_json::Value]| {
        events
            .iter()
            .filter(|e| e["event"] == "tunnel_closed")
            .count()
    };
    let closed: Vec<_> = gw
        .audit_when(|events| tunnel_closed(events) >= 3)
        .into_iter()
        .filter(|e| e["event"] == "tunnel_closed")
        .collect();
    assert_eq!(closed.len(), 3, "{closed:?}");
    assert_eq!(closed[2]["reason"], "forbidden", "{closed:?}");
    assert_eq!(closed[2]["user"], "stan", "{closed:?}");
    // Closing a tunnel is not the app failing.
    let log = gw.log();
    assert!(!log.contains("upstream failed"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn remember_me_makes_the_cookie_outlive_the_browser_session() {
    let gw = Gw::with(Opts {
        extra: "[session]\nabsolute_timeout = \"2h\"\n".into(),
        ..Opts::default()
    });
    gw.add_user("rem", PW, &[], false);
    let plain = gw.post_login("rem", PW);
    let set = plain.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        !set.contains("Max-Age"),
        "a browser-session cookie by default: {set}"
    );
    let r = gw
        .client()
        .post(gw.url("/.portcullis/login"))
        .json(&serde_json::json!({"username":"rem","password":PW,"remember":true}))
        .send()
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("Max-Age=7200"), "{set}");
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let gw = Gw::start();
    gw.add_user("pip", PW, &[], false);
    let cookie = session_cookie(&gw.post_login("pip", PW));
    let one = |path: &str, close: bool| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nCookie: {cookie}\r\n{}\r\n",
            gw.port,
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    // Forwarded, denied and the gateway's own answers, back to back, each
    // judged on its own.
    let all = [
        one("/a", false),
        one("/public/b", false),
        one("/.portcullis/health", false),
        one("/admin/c", false),
        one("/d", true),
    ]
    .concat();
    let started = Instant::now();
    let a = raw(gw.port, all.as_bytes());
    assert!(started.elapsed() < Duration::from_secs(4), "left waiting");
    let statuses: Vec<u16> = a
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| a[i + 9..i + 12].parse().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 403, 200], "{a}");
    let paths: Vec<&str> = a
        .match_indices("\"target\":\"")
        .map(|(i, m)| {
            let rest = &a[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(paths, ["/a", "/public/b", "/d"], "{a}");

    // A body is the first request's, and what follows it is judged as a
    // request of its own: no session carries over, nothing is smuggled.
    let body = "GET /admin/x HTTP/1.1\r\n\r\n";
    let two = format!(
        "POST /public/up HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nCookie: {cookie}\r\nContent-Length: {}\r\n\r\n{body}GET /admin/y HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        body.len(),
        p = gw.port
    );
    let a = raw(gw.port, two.as_bytes());
    let statuses: Vec<u16> = a
        .match_indices("HTTP/1.1 ")
        .filter(|(i, _)| a[..*i].ends_with('}') || *i == 0)
        .map(|(i, _)| a[i + 9..i + 12].parse().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 401], "{a}");
    assert!(a.contains("\"target\":\"/public/up\""), "{a}");
    assert!(!a.contains("\"target\":\"/admin"), "{a}");
}

#[test]
fn a_quiet_websocket_stays_open_for_the_tunnel_idle_timeout() {
    let up = websocket_upstream();
    // Shorter than the silence below, on both sides: a request would be
    // cut off, a tunnel is not.
    let gw = Gw::with(Opts {
        upstream: Some(format!("http://{up}")),
        server: "client_timeout = \"1s\"".into(),
        ..Opts::default()
    });
    gw.add_user("quiet", PW, &[], false);
    let cookie = session_cookie(&gw.post_login("quiet", PW));
    let (mut s, _) = open_tunnel(&gw, "/ws", &cookie);
    assert!(tunnel_echoes(&mut s, b"hello"));
    std::thread::sleep(Duration::from_millis(4000));
    assert!(tunnel_echoes(&mut s, b"still here"), "closed while quiet");

    // Its own limit still applies.
    let gw = Gw::with(Opts {
        upstream: Some(format!("http://{up}")),
        server: "tunnel_idle_timeout = \"1s\"".into(),
        ..Opts::default()
    });
    gw.add_user("quiet", PW, &[], false);
    let cookie = session_cookie(&gw.post_login("quiet", PW));
    let (mut s, _) = open_tunnel(&gw, "/ws", &cookie);
    assert!(tunnel_echoes(&mut s, b"hello"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !tunnel_echoes(&mut s, b"too late"),
        "idled past its timeout"
    );
}
