//! Accounts from the outside: the admin CLI against a live gateway and
//! against the store, password change, registration, the user's sessions,
//! audit events and the webhook.

mod common;
use common::*;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

#[test]
fn admin_cli_works_against_a_running_gateway_and_takes_effect_at_once() {
    let mut gw = Gw::with(Opts {
        extra: "[[user_fields]]\nname = \"department\"\nmax_length = 20\nheader = \"X-Forwarded-Department\"\n\n[[user_fields]]\nname = \"employee_no\"\ntype = \"integer\"\n".into(),
        ..Opts::default()
    });
    gw.add_user("anna", PW, &["staff"], false);
    // Case-insensitive uniqueness.
    let (code, _, err) = gw.cli(
        &["user", "add", "ANNA", "--password-stdin"],
        Some("another password\n"),
    );
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    // Django's username rule.
    let (code, _, err) = gw.cli(
        &["user", "add", "bad name!", "--password-stdin"],
        Some("x-password-1\n"),
    );
    assert_eq!(code, 1, "{err}");
    // A group no policy file knows is most likely a typo: said, not refused.
    let (code, _, err) = gw.cli(
        &[
            "user",
            "add",
            "bert",
            "--group",
            "stafff",
            "--group",
            "staff",
            "--password-stdin",
        ],
        Some("x-password-1\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("group `stafff` is not defined"), "{err}");
    assert!(!err.contains("`staff`"), "{err}");
    let (code, _, err) = gw.cli(&["user", "group", "bert", "add", "accounting"], None);
    assert_eq!((code, err.as_str()), (0, ""), "a known group, no warning");
    let (_, _, err) = gw.cli(&["user", "group", "bert", "add", "acounting"], None);
    assert!(err.contains("`acounting`"), "{err}");
    // Never from argv.
    let (code, _, err) = gw.cli(&["user", "add", "nopw"], None);
    assert_eq!(code, 1);
    assert!(err.contains("--password-stdin"), "{err}");

    let (code, out, _) = gw.cli(&["user", "list", "--json"], None);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["username"], "anna");
    let (_, out, _) = gw.cli(&["user", "show", "anna"], None);
    assert!(out.contains("algorithm argon2id"), "{out}");
    assert!(!out.contains("$argon2"), "{out}");

    // Custom fields, typed and forwarded.
    let (code, _, err) = gw.cli(&["user", "set", "anna", "department=Finance"], None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gw.cli(&["user", "set", "anna", "employee_no=abc"], None);
    assert_eq!(code, 1);
    assert!(err.contains("whole number"), "{err}");
    let (code, _, _) = gw.cli(&["user", "set", "anna", "shoe_size=44"], None);
    assert_eq!(code, 1);
    let (_, out, _) = gw.cli(&["user", "show", "anna"], None);
    assert!(out.contains("department:    Finance"), "{out}");
    let c = gw.login("anna", PW);
    let seen = Seen::from(
        c.get(gw.url("/x"))
            .header("X-Forwarded-Department", "Board")
            .send()
            .unwrap(),
    );
    assert_eq!(
        seen.header("x-forwarded-department").as_deref(),
        Some("Finance")
    );

    // Disable ends sessions now; the login answer is the same as a wrong password.
    let (code, out, _) = gw.cli(&["user", "disable", "anna"], None);
    assert_eq!(code, 0);
    assert!(out.contains("1 session(s) ended"), "{out}");
    assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 401);
    let r = gw.post_login("anna", PW);
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().unwrap(), r#"{"error":"invalid_credentials"}"#);
    gw.cli(&["user", "enable", "anna"], None);
    let c = gw.login("anna", PW);

    // passwd ends every session.
    let (code, _, _) = gw.cli(
        &["user", "passwd", "anna", "--password-stdin"],
        Some("a brand new passphrase\n"),
    );
    assert_eq!(code, 0);
    assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 401);
    gw.login("anna", "a brand new passphrase");

    // The same commands work on the store directly when no gateway runs.
    gw.stop();
    let (code, out, err) = gw.cli(&["session", "list", "--json"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("anna"));
    let (code, _, _) = gw.cli(&["user", "delete", "anna"], None);
    assert_eq!(code, 0);
    assert!(gw.spawn());
    let r = gw
        .client()
        .post(gw.url("/.portcullis/login"))
        .json(&serde_json::json!({"username":"anna","password":"a brand new passphrase"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn session_list_and_revoke_by_id() {
    let gw = Gw::start();
    gw.add_user("ben", PW, &[], false);
    let a = gw.login("ben", PW);
    let b = gw.login("ben", PW);
    let (_, out, _) = gw.cli(&["session", "list", "--user", "ben", "--json"], None);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let tag = list[0]["tag"].as_str().unwrap().to_string();
    let (code, out, err) = gw.cli(&["session", "revoke", &tag], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked 1"), "{out}");
    let alive = [
        a.get(gw.url("/x")).send().unwrap().status(),
        b.get(gw.url("/x")).send().unwrap().status(),
    ];
    assert!(
        alive.contains(&reqwest::StatusCode::OK)
            && alive.contains(&reqwest::StatusCode::UNAUTHORIZED),
        "{alive:?}"
    );
}

#[test]
fn password_change_keeps_this_session_and_ends_the_others() {
    let gw = Gw::start();
    gw.add_user("cleo", PW, &[], false);
    let other = gw.login("cleo", PW);
    let me = gw.login("cleo", PW);
    let change = |current: &str, new: &str| {
        me.post(gw.url("/.portcullis/password"))
            .json(&serde_json::json!({"current_password": current, "new_password": new}))
            .send()
            .unwrap()
    };
    let r = change("wrong current", "a better passphrase");
    assert_eq!(r.status(), 400);
    // Rules, in words a user understands.
    for (weak, rule) in [
        ("short", "too short"),
        ("password123", "too common"),
        ("83920174652", "entirely numeric"),
        ("Cleo2024!", "similar"),
    ] {
        let r = change(PW, weak);
        assert_eq!(r.status(), 400, "{weak}");
        let v: serde_json::Value = r.json().unwrap();
        assert!(v["message"].as_str().unwrap().contains(rule), "{weak}: {v}");
    }
    let r = change(PW, "a better passphrase");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("portcullis_session="),
        "new session id"
    );
    assert_eq!(
        me.get(gw.url("/x")).send().unwrap().status(),
        200,
        "the changing session continues"
    );
    assert_eq!(
        other.get(gw.url("/x")).send().unwrap().status(),
        401,
        "other sessions end"
    );
    gw.login("cleo", "a better passphrase");
    assert!(gw
        .audit()
        .iter()
        .any(|e| e["event"] == "password_changed" && e["user"] == "cleo"));
}

#[test]
fn registration_is_off_until_enabled() {
    let off = Gw::start();
    assert_eq!(
        off.client()
            .get(off.url("/.portcullis/register"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        off.client()
            .post(off.url("/.portcullis/register"))
            .json(&serde_json::json!({}))
            .send()
            .unwrap()
            .status(),
        404
    );

    let gw = Gw::with(Opts {
        extra: "[registration]\nenabled = true\ndefault_groups = [\"staff\"]\n".into(),
        ..Opts::default()
    });
    let c = gw.client();
    let reg = |u: &str, e: &str, p: &str| {
        c.post(gw.url("/.portcullis/register"))
            .json(&serde_json::json!({"username": u, "email": e, "password": p}))
            .send()
            .unwrap()
    };
    let r = reg("dora", "dora@example.com", "qwerty");
    assert_eq!(r.status(), 400);
    let r = reg("dora", "not-an-email", "a fine passphrase");
    assert_eq!(r.status(), 400);
    let r = reg("dora", "dora@example.com", "a fine passphrase");
    assert_eq!(r.status(), 201);
    assert_eq!(
        c.get(gw.url("/admin/x")).send().unwrap().status(),
        200,
        "signed in, in the default group"
    );
    let r = gw.client().post(gw.url("/.portcullis/register")).json(&serde_json::json!({"username": "DORA", "email": "d2@example.com", "password": "another fine one"})).send().unwrap();
    assert_eq!(r.status(), 400);
    // Someone else's email, or a name shaped like one, would let this
    // account pass for theirs in an app that looks users up by email.
    for (name, email) in [
        ("mallory", "DORA@example.com"),
        ("dora@example.com", "m2@example.com"),
    ] {
        let r = gw
            .client()
            .post(gw.url("/.portcullis/register"))
            .json(&serde_json::json!({"username": name, "email": email, "password": "another fine one"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{name} {email}");
    }
    // A self-registered email is nobody's word: it is not sent upstream.
    let seen = Seen::from(c.get(gw.url("/whoami")).send().unwrap());
    assert_eq!(seen.header("x-forwarded-user").as_deref(), Some("dora"));
    assert_eq!(seen.header("x-forwarded-email"), None);
    // Once an operator sets it, it is.
    let (code, _, err) = gw.cli(&["user", "set", "dora", "email=dora@example.com"], None);
    assert_eq!(code, 0, "{err}");
    let seen = Seen::from(c.get(gw.url("/whoami")).send().unwrap());
    assert_eq!(
        seen.header("x-forwarded-email").as_deref(),
        Some("dora@example.com")
    );
    // Look-alikes of a taken name, which apps that fold compatibility
    // characters or compare accent-blind would read as `dora`: full-width,
    // and with a Cyrillic `о`.
    for lookalike in ["ｄｏｒａ", "dоra"] {
        let r = gw
            .client()
            .post(gw.url("/.portcullis/register"))
            .json(&serde_json::json!({"username": lookalike, "email": "d3@example.com", "password": "another fine one"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{lookalike}");
    }
    // A CLI-made user is held to the same rule.
    let (code, _, err) = gw.cli(
        &["user", "add", "ｄｏｒａ２", "--password-stdin"],
        Some("a fine passphrase\n"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("\"dora2\""), "{err}");
    // Forms need the CSRF token, as login does.
    let r = gw
        .client()
        .post(gw.url("/.portcullis/register"))
        .form(&[
            ("username", "eve"),
            ("email", "eve@example.com"),
            ("password", "a fine passphrase"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(gw
        .audit()
        .iter()
        .any(|e| e["event"] == "user_created" && e["user"] == "dora"));
}

#[test]
fn users_see_and_end_their_own_sessions() {
    let gw = Gw::start();
    gw.add_user("finn", PW, &[], false);
    gw.add_user("gail", PW, &[], false);
    let laptop = gw.login("finn", PW);
    let phone = gw.login("finn", PW);
    let stranger = gw.login("gail", PW);
    let list: serde_json::Value = laptop
        .get(gw.url("/.portcullis/sessions"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let other = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Someone else cannot end it.
    let r = stranger
        .post(gw.url("/.portcullis/sessions"))
        .json(&serde_json::json!({"session": other}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(phone.get(gw.url("/x")).send().unwrap().status(), 200);
    let r = laptop
        .post(gw.url("/.portcullis/sessions"))
        .json(&serde_json::json!({"session": other}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(phone.get(gw.url("/x")).send().unwrap().status(), 401);
    assert_eq!(laptop.get(gw.url("/x")).send().unwrap().status(), 200);
    let page = laptop
        .get(gw.url("/.portcullis/sessions"))
        .header("accept", "text/html")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.to_lowercase().contains("this browser"));
}

#[test]
fn every_auth_event_is_one_json_line() {
    let gw = Gw::start();
    gw.add_user("hana", PW, &[], false);
    let bad = gw
        .client()
        .post(gw.url("/.portcullis/login"))
        .json(&serde_json::json!({"username":"hana","password":"not-the-password"}))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 401);
    let c = gw.login("hana", PW);
    assert_eq!(c.get(gw.url("/admin")).send().unwrap().status(), 403);
    c.post(gw.url("/.portcullis/logout"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    let c = gw.login("hana", PW);
    gw.cli(&["session", "revoke", "--user", "hana"], None);
    gw.cli(&["user", "disable", "hana"], None);
    drop(c);
    let wanted = [
        "user_created",
        "user_login_failed",
        "user_logged_in",
        "access_denied",
        "user_logged_out",
        "session_revoked",
        "user_disabled",
    ];
    let has_all = |events: &[serde_json::Value]| {
        wanted
            .iter()
            .all(|w| events.iter().any(|e| e["event"].as_str() == Some(*w)))
    };
    let events = gw.audit_when(has_all);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or(""))
        .collect();
    assert!(has_all(&events), "missing events; got {names:?}");
    for e in &events {
        assert!(e["time"].is_string(), "{e}");
        let text = e.to_string();
        assert!(
            !text.contains("not-the-password") && !text.contains(PW),
            "password in audit: {text}"
        );
    }
    let failed = events
        .iter()
        .find(|e| e["event"] == "user_login_failed")
        .unwrap();
    assert_eq!(failed["reason"], "bad_password");
    assert_eq!(failed["ip"], "127.0.0.1");
    let login = events
        .iter()
        .find(|e| e["event"] == "user_logged_in")
        .unwrap();
    assert_eq!(
        login["session"].as_str().unwrap().len(),
        12,
        "a short session tag, never the id"
    );
    let disabled = events
        .iter()
        .find(|e| e["event"] == "user_disabled")
        .unwrap();
    assert_eq!(disabled["by"], "operator", "{disabled}");
    // And in the log, too.
    assert!(gw.log().contains("user_logged_in"));
}

/// A webhook receiver that records each POSTed body.
fn webhook_receiver() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.to_ascii_lowercase().starts_with("content-length:") {
                    len = line[15..].trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
            let mut s = stream;
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, rx)
}

#[test]
fn webhook_receives_events_and_a_dead_one_delays_nothing() {
    let (addr, rx) = webhook_receiver();
    let mut gw = Gw::with(Opts {
        extra: format!("[log]\nwebhook_url = \"http://{addr}/hook\"\n"),
        ..Opts::default()
    });
    gw.add_user("ida", PW, &[], false);
    assert_eq!(gw.post_login("ida", PW).status(), 200);
    let mut events = Vec::new();
    while events.len() < 2 {
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("webhook got nothing");
        events.push(serde_json::from_str::<serde_json::Value>(&got).unwrap());
    }
    assert_eq!(events[0]["event"], "user_created", "{events:?}");
    assert_eq!(events[1]["event"], "user_logged_in", "{events:?}");
    assert_eq!(events[1]["user"], "ida");

    // A webhook that never answers does not slow logins down.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in black_hole.incoming().flatten() {
            held.push(s);
        }
    });
    let text = std::fs::read_to_string(&gw.config).unwrap().replace(
        &format!("http://{addr}/hook"),
        &format!("http://{hole}/hook"),
    );
    std::fs::write(&gw.config, text).unwrap();
    gw.restart();
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(gw.post_login("ida", PW).status(), 200);
        assert!(
            // A login that waited would take the webhook's 5 s timeout;
            // a debug build's argon2 on a loaded CI machine can take 1–2 s.
            start.elapsed() < Duration::from_secs(4),
            "login waited for the webhook"
        );
    }
}

fn django_hash(password: &str) -> String {
    use base64::Engine;
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), b"s4ltS4lt", 1000, &mut out);
    format!(
        "pbkdf2_sha256$1000$s4ltS4lt${}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

#[test]
fn django_users_import_log_in_with_old_passwords_and_get_upgraded() {
    let gw = Gw::start();
    let dump = format!(
        r#"[
{{"model": "auth.user", "pk": 1, "fields": {{"password": "{}", "last_login": null, "is_superuser": false, "username": "jdoe", "first_name": "Jane", "last_name": "Doe", "email": "jane@example.com", "is_staff": true, "is_active": true, "date_joined": "2021-03-04T05:06:07Z", "groups": [["staff"]], "user_permissions": [["view_invoice", "billing", "invoice"]]}}}},
{{"model": "auth.user", "pk": 2, "fields": {{"password": "{}", "last_login": null, "is_superuser": false, "username": "old", "first_name": "", "last_name": "", "email": "", "is_staff": false, "is_active": false, "date_joined": "2020-01-01T00:00:00Z", "groups": [], "user_permissions": []}}}}
]"#,
        django_hash("legacy pass 1"),
        django_hash("legacy pass 2")
    );
    let file = gw.path("dump.json");
    std::fs::write(&file, &dump).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = gw.cli(&["user", "import", "--format", "django", f], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 2 new user(s)"), "{out}");
    // Re-running is safe.
    let (code, out, _) = gw.cli(&["user", "import", "--format", "django", f], None);
    assert_eq!(code, 0);
    assert!(out.contains("kept 2 existing"), "{out}");
    let (_, show, _) = gw.cli(&["user", "show", "jdoe", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["password_algorithm"], "pbkdf2_sha256");
    assert_eq!(
        v["permissions"],
        serde_json::json!(["billing.view_invoice"])
    );

    let c = gw.login("jdoe", "legacy pass 1");
    assert_eq!(
        c.get(gw.url("/admin/x")).send().unwrap().status(),
        200,
        "lands in the staff group"
    );
    let (_, show, _) = gw.cli(&["user", "show", "jdoe", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        v["password_algorithm"], "argon2id",
        "hash upgraded at first login"
    );
    gw.login("jdoe", "legacy pass 1");
    // Inactive in Django stays inactive here.
    let r = gw
        .client()
        .post(gw.url("/.portcullis/login"))
        .json(&serde_json::json!({"username":"old","password":"legacy pass 2"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // A bad record stops the whole file, with its line.
    let bad = format!(
        "[\n{{\"model\": \"auth.user\", \"fields\": {{\"username\": \"newbie\", \"password\": \"{}\"}}}},\n{{\"model\": \"auth.user\", \"fields\": {{\"username\": \"bad name!\", \"password\": \"x\"}}}}\n]",
        django_hash("x")
    );
    std::fs::write(&file, bad).unwrap();
    let (code, _, err) = gw.cli(&["user", "import", "--format", "django", f], None);
    assert_eq!(code, 1);
    assert!(err.contains(":line 3") || err.contains("line 3"), "{err}");
    let (_, list, _) = gw.cli(&["user", "list", "--json"], None);
    assert!(!list.contains("newbie"), "nothing is half-imported");
}

#[test]
fn htpasswd_users_import() {
    let gw = Gw::start();
    let hash = bcrypt::hash_with_result("apache pass", 4)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(gw.path("users.htpasswd"), format!("# team\nkim:{hash}\n")).unwrap();
    let (code, out, err) = gw.cli(
        &[
            "user",
            "import",
            "--format",
            "htpasswd",
            gw.path("users.htpasswd").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 1"), "{out}");
    gw.login("kim", "apache pass");
    std::fs::write(gw.path("md5.htpasswd"), "lee:$apr1$abc$def\n").unwrap();
    let (code, _, err) = gw.cli(
        &[
            "user",
            "import",
            "--format",
            "htpasswd",
            gw.path("md5.htpasswd").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("line 1"), "{err}");
}

/// Names an app comparing case- or accent-blind (Java `equalsIgnoreCase`,
/// JavaScript `toUpperCase`, MySQL `_ai_ci`) would take for an existing
/// account's cannot be registered.
#[test]
fn registration_refuses_names_that_look_like_taken_ones() {
    let gw = Gw::with(Opts {
        extra: "[registration]\nenabled = true\n".into(),
        ..Opts::default()
    });
    gw.add_user("admin", PW, &[], true);
    gw.add_user("alice", PW, &[], false);
    // (Four, under the registration throttle; the unit test has more.)
    for (i, name) in ["admın", "ádmin", "ALİCE", "adrnin"].iter().enumerate() {
        let r = gw
            .client()
            .post(gw.url("/.portcullis/register"))
            .json(&serde_json::json!({"username": name, "email": format!("l{i}@example.com"), "password": "another fine one"}))
            .send()
            .unwrap();
        let status = r.status();
        let body = r.text().unwrap();
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body.contains("username_taken"), "{name}: {body}");
    }
    let (_, list, _) = gw.cli(&["user", "list", "--json"], None);
    assert!(!list.contains("l0@example.com"), "{list}");
}

/// Registration is limited by address only: a few dozen addresses must
/// not be able to close it for every newcomer (a shared hourly count
/// did), while one address is still slowed down.
#[test]
fn registration_is_limited_per_address_not_for_everyone() {
    let gw = Gw::with(Opts {
        server: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        extra: "[registration]\nenabled = true\n[throttle]\naccount_per_hour = 3\n".into(),
        ..Opts::default()
    });
    let register = |ip: &str, name: &str| {
        gw.client()
            .post(gw.url("/.portcullis/register"))
            .header("x-forwarded-for", ip)
            .json(&serde_json::json!({"username": name, "email": format!("{name}@example.com"), "password": "another fine one"}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for i in 1..=6 {
        assert_eq!(
            register(&format!("203.0.113.{i}"), &format!("newcomer{i}")),
            201,
            "newcomer {i}"
        );
    }
    let statuses: Vec<u16> = (1..=8)
        .map(|i| register("198.51.100.9", &format!("spammer{i}")))
        .collect();
    assert!(
        statuses.contains(&429),
        "one address is slowed: {statuses:?}"
    );
}

#[test]
fn racing_registrations_cannot_share_an_email() {
    let gw = Gw::with(Opts {
        extra: "[registration]\nenabled = true\n".into(),
        ..Opts::default()
    });
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let gw = &gw;
                s.spawn(move || {
                    gw.client()
                        .post(gw.url("/.portcullis/register"))
                        .header("x-forwarded-for", format!("192.0.2.{i}"))
                        .json(&serde_json::json!({"username": format!("racer{i}"), "email": "same@example.com", "password": "a fine long passphrase"}))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&c| c < 300).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&c| c < 300 || c == 400),
        "{statuses:?}"
    );
}
