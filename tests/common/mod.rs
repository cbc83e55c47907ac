//! Test harness: the real `portcullis` binary on an ephemeral port, in front
//! of a real upstream (the echo app), driven by a real HTTP client.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Waits for `child` to exit; past `within` it is killed and the test
/// fails with `what`.
pub fn exit_within(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} (still running after {within:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const DEFAULT_POLICY: &str = r#"
[groups.staff]
permissions = ["reports.view"]

[groups.accounting]
permissions = ["invoices.view", "invoices.add", "invoices.change"]

[[rule]]
name = "public"
path = "/public/**"
allow = "anyone"

[[rule]]
name = "invoices"
path = "/invoices/**"
resource = "invoices"

[[rule]]
name = "admin"
path = "/admin/**"
groups = ["staff"]

[[rule]]
name = "export"
path = "/reports/export"
methods = ["POST"]
permissions = ["reports.export"]

[[rule]]
name = "reports"
path = "/reports/**"
permissions = ["reports.view"]

[[rule]]
name = "rest"
path = "/**"
allow = "authenticated"
"#;

/// The echo upstream, shared by every test in a binary (it is stateless).
pub fn echo() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        portcullis::upstream::spawn("127.0.0.1:0".parse().unwrap()).expect("echo upstream")
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Opts {
    pub policy: String,
    /// Whole sections appended to the config.
    pub extra: String,
    /// Lines added to the `[server]` section.
    pub server: String,
    pub upstream: Option<String>,
    /// Overrides `public_url` (default: the gateway's own http origin).
    pub public_url: Option<String>,
    /// Lines added to the `[upstream]` section.
    pub upstream_opts: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            policy: DEFAULT_POLICY.to_string(),
            extra: String::new(),
            server: String::new(),
            upstream: None,
            public_url: None,
            upstream_opts: String::new(),
        }
    }
}

pub struct Gw {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub config: PathBuf,
}

impl Gw {
    pub fn start() -> Gw {
        Gw::with(Opts::default())
    }

    pub fn with(opts: Opts) -> Gw {
        let mut dir = tempfile::tempdir().unwrap();
        let upstream = opts
            .upstream
            .clone()
            .unwrap_or_else(|| format!("http://{}", echo()));
        std::fs::write(dir.path().join("policy.toml"), &opts.policy).unwrap();
        for attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("portcullis.toml");
            let public = opts
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{public}\"\nthreads = 1\n{}\n{}\n\n[upstream]\nurl = \"{upstream}\"\nconnect_timeout = \"2s\"\nread_timeout = \"3s\"\n{}\n\n[storage]\npath = \"data\"\n\n{}\n{}\n\n{}\n",
                if opts.server.contains("grace_period") { "" } else { "grace_period = 0" },
                opts.server,
                opts.upstream_opts,
                if opts.extra.contains("[policy]") { "" } else { "[policy]\nfiles = [\"policy.toml\"]\n" },
                if opts.extra.contains("[log]") { "" } else { "[log]\naudit_file = \"audit.jsonl\"\n" },
                opts.extra
            );
            std::fs::write(&config, text).unwrap();
            let mut gw = Gw {
                dir,
                port,
                child: None,
                config,
            };
            if gw.spawn() {
                return gw;
            }
            eprintln!(
                "gateway failed to start (attempt {attempt}), retrying on another port:\n{}",
                gw.log()
            );
            dir = gw.take_dir();
        }
        panic!("gateway did not start");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Starts the process and waits until it answers; false if it died.
    pub fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(r) = reqwest::blocking::Client::new()
                .get(self.url("/.portcullis/health"))
                .timeout(Duration::from_secs(2))
                .send()
            {
                if r.status() == 200 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The audit events once `done` holds for them, or as they are after
    /// 10 s: the audit file is written by its own thread, so a test that
    /// just caused an event may read the file before the line lands.
    pub fn audit_when(
        &self,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.audit();
            if done(&events) || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Graceful stop (SIGTERM) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Hard kill (SIGKILL): nothing gets to flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "gateway did not restart:\n{}", self.log());
    }

    /// Runs `portcullis ARGS` against this gateway's config.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        cli_with(&self.config, args, stdin)
    }

    pub fn add_user(&self, name: &str, password: &str, groups: &[&str], superuser: bool) {
        let mut args = vec!["user", "add", name, "--password-stdin", "--email"];
        let email = format!("{name}@example.com");
        args.push(&email);
        for g in groups {
            args.push("--group");
            args.push(g);
        }
        if superuser {
            args.push("--superuser");
        }
        let (code, out, err) = self.cli(&args, Some(&format!("{password}\n")));
        assert_eq!(code, 0, "user add failed: {out} {err}");
    }

    /// A JSON API client with its own cookie jar; follows no redirects.
    pub fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// A JSON login from a fresh client; the raw answer.
    pub fn post_login(&self, user: &str, password: &str) -> reqwest::blocking::Response {
        self.client()
            .post(self.url("/.portcullis/login"))
            .json(&serde_json::json!({ "username": user, "password": password }))
            .send()
            .unwrap()
    }

    /// Logs in over JSON; returns the client holding the session cookie.
    pub fn login(&self, user: &str, password: &str) -> reqwest::blocking::Client {
        let c = self.client();
        let r = c
            .post(self.url("/.portcullis/login"))
            .json(&serde_json::json!({ "username": user, "password": password }))
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "login as {user} failed: {}",
            r.text().unwrap_or_default()
        );
        c
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn cli_with(config: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The echo upstream's view of a forwarded request.
pub struct Seen(pub serde_json::Value);

impl Seen {
    pub fn from(r: reqwest::blocking::Response) -> Seen {
        assert_eq!(r.status(), 200, "expected the request to be forwarded");
        Seen(r.json().expect("echo JSON"))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.0["headers"]
            .as_array()?
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap_or("").to_string())
    }
    pub fn headers(&self) -> Vec<(String, String)> {
        self.0["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap_or("").to_string(),
                            h[1].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn target(&self) -> String {
        self.0["target"].as_str().unwrap_or("").to_string()
    }
}

/// Sends raw bytes and returns the raw answer (for requests no client
/// library would send).
pub fn raw(port: u16, request: &[u8]) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The `name=value` of the cookie a response sets.
pub fn session_cookie(r: &reqwest::blocking::Response) -> String {
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}
