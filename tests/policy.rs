//! Authorisation on a live gateway: the SPEC's example policy, `check`,
//! `explain`, and hot reload.

mod common;
use common::*;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

fn status(c: &reqwest::blocking::Client, gw: &Gw, method: &str, path: &str) -> u16 {
    c.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        gw.url(path),
    )
    .header("accept", "application/json")
    .send()
    .unwrap()
    .status()
    .as_u16()
}

#[test]
fn spec_example_policy_on_a_live_gateway() {
    let gw = Gw::start();
    gw.add_user("sam", PW, &["staff"], false);
    gw.add_user("acct", PW, &["accounting"], false);
    gw.add_user("exporter", PW, &[], false);
    let (code, _, err) = gw.cli(&["user", "grant", "exporter", "reports.export"], None);
    assert_eq!(code, 0, "{err}");
    gw.add_user("root", PW, &[], true);
    let staff = gw.login("sam", PW);
    let acct = gw.login("acct", PW);
    let exporter = gw.login("exporter", PW);
    let root = gw.login("root", PW);
    let anon = gw.client();

    let cases: &[(&str, &str, [u16; 5])] = &[
        // method, path, [anon, staff, accounting, direct-permission, superuser]
        ("GET", "/public/x", [200, 200, 200, 200, 200]),
        ("GET", "/invoices/1", [401, 403, 200, 403, 200]),
        ("HEAD", "/invoices/1", [401, 403, 200, 403, 200]),
        ("POST", "/invoices", [401, 403, 200, 403, 200]),
        ("PATCH", "/invoices/1", [401, 403, 200, 403, 200]),
        ("DELETE", "/invoices/1", [401, 403, 403, 403, 200]),
        ("GET", "/admin", [401, 200, 403, 403, 200]),
        ("GET", "/admin/users", [401, 200, 403, 403, 200]),
        ("GET", "/administrator", [401, 200, 200, 200, 200]),
        ("POST", "/reports/export", [401, 403, 403, 200, 200]),
        ("GET", "/reports/export", [401, 200, 403, 403, 200]),
        ("GET", "/reports/q3", [401, 200, 403, 403, 200]),
        ("GET", "/", [401, 200, 200, 200, 200]),
    ];
    for (method, path, expected) in cases {
        let got = [
            status(&anon, &gw, method, path),
            status(&staff, &gw, method, path),
            status(&acct, &gw, method, path),
            status(&exporter, &gw, method, path),
            status(&root, &gw, method, path),
        ];
        assert_eq!(&got, expected, "{method} {path}");
    }
    let seen = Seen::from(acct.get(gw.url("/invoices/1")).send().unwrap());
    assert_eq!(
        seen.header("x-forwarded-groups").as_deref(),
        Some("accounting")
    );

    // A browser without the right gets a 403 page, never a login loop.
    let r = staff
        .get(gw.url("/invoices/1"))
        .header("accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("permission"));
}

#[test]
fn permission_changes_apply_on_the_next_request() {
    let gw = Gw::start();
    gw.add_user("pat", PW, &[], false);
    let c = gw.login("pat", PW);
    assert_eq!(status(&c, &gw, "GET", "/admin"), 403);
    let (code, _, err) = gw.cli(&["user", "group", "pat", "add", "staff"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(&c, &gw, "GET", "/admin"), 200);
    gw.cli(&["user", "group", "pat", "remove", "staff"], None);
    assert_eq!(status(&c, &gw, "GET", "/admin"), 403);
    gw.cli(&["user", "grant", "pat", "invoices.view"], None);
    assert_eq!(status(&c, &gw, "GET", "/invoices/9"), 200);
    assert_eq!(status(&c, &gw, "POST", "/invoices/9"), 403);
    gw.cli(&["user", "revoke", "pat", "invoices.view"], None);
    assert_eq!(status(&c, &gw, "GET", "/invoices/9"), 403);
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn hot_reload_applies_edits_and_refuses_broken_ones() {
    let gw = Gw::start();
    gw.add_user("quinn", PW, &[], false);
    let c = gw.login("quinn", PW);
    assert_eq!(status(&c, &gw, "GET", "/admin"), 403);

    // An edit written in place applies within seconds.
    let opened = DEFAULT_POLICY.replace("groups = [\"staff\"]", "allow = \"authenticated\"");
    std::fs::write(gw.path("policy.toml"), &opened).unwrap();
    assert!(
        wait_for(|| status(&c, &gw, "GET", "/admin") == 200),
        "edit not applied"
    );

    // A broken edit is refused; the last good policy stays (and never opens access).
    std::fs::write(
        gw.path("policy.toml"),
        "[[rule]]\npath = \"/**\"\nallow = \"everyone\"\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(status(&c, &gw, "GET", "/admin"), 200);
    assert_eq!(status(&gw.client(), &gw, "GET", "/admin"), 401);
    assert!(
        wait_for(|| gw.log().contains("policy reload refused")),
        "{}",
        gw.log()
    );
    assert!(
        gw.log().contains("policy.toml:3:9"),
        "the log names file, line and column:\n{}",
        gw.log()
    );
    // Health still answers 200 (the gateway serves), and says the files on
    // disk are not what is in force.
    let health = |gw: &Gw| -> serde_json::Value {
        gw.client()
            .get(gw.url("/.portcullis/health"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert_eq!(health(&gw)["policy"]["status"], "stale");

    // An editor that saves by writing a new file and renaming it over the old one.
    let tmp = gw.path("policy.toml.tmp");
    std::fs::write(&tmp, DEFAULT_POLICY).unwrap();
    std::fs::rename(&tmp, gw.path("policy.toml")).unwrap();
    assert!(
        wait_for(|| status(&c, &gw, "GET", "/admin") == 403),
        "rename-save not applied"
    );
    assert_eq!(health(&gw)["policy"]["status"], "ok");

    // An edit that parses but fails the policy's own tests is refused too:
    // the tests say what the policy must never do.
    let tested = format!(
        "{}\n[[test]]\nname = \"admin stays staff-only\"\nuser = {{ groups = [] }}\npath = \"/admin\"\nexpect = \"deny\"\n",
        DEFAULT_POLICY.replace("groups = [\"staff\"]", "allow = \"authenticated\"")
    );
    std::fs::write(gw.path("policy.toml"), &tested).unwrap();
    assert!(
        wait_for(|| gw
            .log()
            .contains("policy test `admin stays staff-only` failed: expected deny, got allow")),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&c, &gw, "GET", "/admin"), 403);
}

/// `serve` refuses to start on a policy whose `[[test]]` cases fail, as
/// `check` does, instead of putting it in force.
#[test]
fn a_policy_failing_its_own_tests_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "{}\n[[test]]\nname = \"export needs the permission\"\nuser = {{ groups = [\"staff\"] }}\nmethod = \"POST\"\npath = \"/reports/export\"\nexpect = \"allow\"\n",
        DEFAULT_POLICY
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    exit_within(
        &mut child,
        Duration::from_secs(30),
        "serve started on a policy whose tests fail",
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("policy test `export needs the permission` failed: expected allow, got deny"),
        "{err}"
    );
    assert!(err.contains("policy.toml:"), "the test's position: {err}");

    let (code, out, _) = cli_with(&cfg, &["check", "--json"], None);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tests"][0]["got"], "deny", "{out}");
    assert_eq!(v["errors"], 1, "a failed test counts as an error: {out}");
}

#[test]
fn sighup_reloads() {
    let gw = Gw::with(Opts {
        extra: String::new(),
        ..Opts::default()
    });
    // Watching is on by default; SIGHUP must work on its own too, so check
    // the reload event it logs.
    let pid = gw.child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        wait_for(|| gw.log().contains("cause=\"sighup\"") || gw.log().contains("cause=sighup")),
        "{}",
        gw.log()
    );
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
fn check_reports_every_error_with_position_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"nope\"\ncolour = \"red\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[policy]\nfiles = [\"p.toml\"]\n").unwrap();
    let (code, out, _) = cli_with(&cfg, &["check"], None);
    assert_eq!(code, 1);
    assert!(out.contains("portcullis.toml:3:1"), "{out}");
    assert!(out.contains("colour"), "{out}");
    assert!(out.contains("portcullis.toml:2:10"), "{out}");

    std::fs::write(
        &cfg,
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[policy]\nfiles = [\"p.toml\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("p.toml"), "[[rule]]\npath = \"/a\"\nallow = \"anyone\"\nresource = \"x\"\n\n[[rule]]\npath = \"no-slash\"\nallow = \"anyone\"\n").unwrap();
    let (code, out, _) = cli_with(&cfg, &["check"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("p.toml:1:1"), "{out}");
    assert!(out.contains("p.toml:7:8"), "{out}");

    // JSON for CI.
    let (code, out, _) = cli_with(&cfg, &["check", "--json"], None);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 2);

    // Warnings pass unless --strict; failing policy tests fail.
    std::fs::write(dir.path().join("p.toml"), "[[rule]]\npath = \"/**\"\nallow = \"authenticated\"\n[[rule]]\npath = \"/x\"\nallow = \"anyone\"\n[[test]]\nanonymous = true\npath = \"/x\"\nexpect = \"allow\"\n").unwrap();
    let (code, out, _) = cli_with(&cfg, &["check"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("never match"), "{out}");
    assert!(out.contains("policy test"), "{out}");
}

#[test]
fn the_shipped_example_config_checks_clean() {
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
    let (code, out, err) = cli_with(&cfg, &["check", "--strict"], None);
    assert_eq!(code, 0, "{out}{err}");
    // PORTCULLIS_CONFIG works as well as --config.
    let out = std::process::Command::new(BIN)
        .arg("check")
        .env("PORTCULLIS_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn explain_names_the_rule_and_the_reason() {
    let gw = Gw::start();
    gw.add_user("rita", PW, &["accounting"], false);
    let (code, out, err) = gw.cli(
        &["explain", "--user", "rita", "DELETE", "/invoices/7"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("invoices"), "{out}");
    assert!(out.contains("invoices.delete"), "{out}");
    assert!(out.contains("policy.toml:"), "{out}");
    let (_, out, _) = gw.cli(
        &["explain", "--user", "rita", "GET", "/invoices/7", "--json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"]["name"], "invoices");
    let (_, out, _) = gw.cli(&["explain", "--anonymous", "GET", "/admin/x"], None);
    assert!(out.contains("decision: login\n"), "{out}");
    // Text and JSON use the words `[[test]]` cases use.
    let (_, out, _) = gw.cli(
        &["explain", "--anonymous", "GET", "/admin/x", "--json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "login");
    let (_, out, _) = gw.cli(
        &["explain", "--user", "rita", "GET", "/admin/x", "--json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny", "{out}");
}

/// `check` says when the store folder cannot be written, instead of
/// passing a config that `serve` then fails to start with. As root (who
/// may write anywhere but a read-only mount), it runs as `nobody`.
#[test]
fn check_warns_when_the_store_cannot_be_written() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open.clone()).unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::write(dir.path().join("policy.toml"), DEFAULT_POLICY).unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[storage]\npath = \"locked/data\"\n",
    )
    .unwrap();
    for f in ["policy.toml", "portcullis.toml"] {
        std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        std::process::Command::new(BIN)
    };
    let out = cmd
        .args(["--config", cfg.to_str().unwrap(), "check"])
        .output()
        .expect("setpriv (util-linux) runs the check as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a warning, not an error: {text}");
    assert!(
        text.contains("portcullis.toml:4:8: warning: the store folder")
            && text.contains("cannot be written"),
        "{text}"
    );
}

#[test]
fn check_warns_about_settings_that_weaken_the_gateway() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[[rule]]\npath = \"/**\"\nallow = \"authenticated\"\n",
    )
    .unwrap();
    let good = "[server]\npublic_url = \"https://gate.example.com\"\n[upstream]\nurl = \"https://127.0.0.1:9\"\n[policy]\nfiles = [\"p.toml\"]\n";
    std::fs::write(&cfg, good).unwrap();
    let (code, out, _) = cli_with(&cfg, &["check", "--strict"], None);
    assert_eq!(code, 0, "{out}");

    std::fs::write(
        &cfg,
        "[server]\npublic_url = \"http://gate.example.com\"\ntrusted_proxies = [\"0.0.0.0/0\"]\n\
         [upstream]\nurl = \"https://127.0.0.1:9\"\nverify_cert = false\n\
         [policy]\nfiles = [\"p.toml\"]\n\
         [throttle]\naccount_per_hour = 0\n\
         [passwords]\nmin_length = 4\nmax_length = 20\n",
    )
    .unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Warnings: the config is still usable without --strict.
    let (code, out, _) = cli_with(&cfg, &["check"], None);
    assert_eq!(code, 0, "{out}");
    for (at, what) in [
        ("portcullis.toml:2:14", "plain http"),
        ("portcullis.toml:3:19", "every client is trusted"),
        ("portcullis.toml:6:15", "verify_cert = false"),
        ("portcullis.toml:10:20", "lock that user out"),
        ("portcullis.toml:12:14", "below the 8 characters"),
        ("portcullis.toml:13:14", "acts as 64"),
        ("p.toml:1:1", "chmod o-w"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains(at) && l.contains("warning") && l.contains(what)),
            "no warning at {at} about {what:?}:\n{out}"
        );
    }
    let (code, _, _) = cli_with(&cfg, &["check", "--strict"], None);
    assert_eq!(code, 1, "--strict fails on warnings");
}
