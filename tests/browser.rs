//! The login UI in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), against the real gateway binary in front of the echo app.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the tests
//! skip with a message, unless `PORTCULLIS_REQUIRE_BROWSER` is set (as
//! `make test` does), which makes a missing browser a failure.
//!
//! Screenshots are written to `target/screenshots/`.

mod common;
use common::*;

use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PW: &str = "correct horse battery";
/// How long any one wait may take: generous, for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);
/// How long one WebDriver command may take before the test fails.
const STEP: Duration = Duration::from_secs(120);
const PHONE: (u32, u32) = (390, 844);
const DESKTOP: (u32, u32) = (1280, 900);

// ---- chromedriver ----------------------------------------------------------

/// One chromedriver for the whole test binary.
struct Driver {
    url: String,
    /// The watchdog's stdin. It is never written to; when this process ends,
    /// however it ends, the pipe closes and the watchdog ends chromedriver
    /// and every browser it started (they share its process group).
    _lifeline: ChildStdin,
    _watchdog: Child,
}

/// Runs as `sh -c WATCHDOG sh CHROMEDRIVER PORT LOG`, leading its own
/// process group.
const WATCHDOG: &str = r#"
"$1" --port="$2" --log-path="$3" --log-level=WARNING </dev/null >/dev/null 2>&1 &
read -r _
trap '' TERM
kill -TERM 0
sleep 2
kill -KILL 0
"#;

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// The shared chromedriver's URL, or `None` (after saying so once) when the
/// browser is not installed and not required.
fn driver() -> Option<&'static str> {
    static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect();
            if !missing.is_empty() {
                let msg = format!(
                    "{} not found: install Debian's chromium and chromium-driver",
                    missing.join(" and ")
                );
                if std::env::var_os("PORTCULLIS_REQUIRE_BROWSER").is_some_and(|v| !v.is_empty()) {
                    panic!("PORTCULLIS_REQUIRE_BROWSER is set but {msg}");
                }
                // Straight to the terminal: the test harness captures `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "\nSKIPPED browser tests: {msg} (set PORTCULLIS_REQUIRE_BROWSER=1 to make this an error)\n"
                );
                return None;
            }
            Some(start_driver())
        })
        .as_ref()
        .map(|d| d.url.as_str())
}

fn start_driver() -> Driver {
    let logs = target_dir().join("browser-tests");
    std::fs::create_dir_all(&logs).unwrap();
    for attempt in 0..3 {
        let port = free_port();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(CHROMEDRIVER)
            .arg(port.to_string())
            .arg(logs.join("chromedriver.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let lifeline = child.stdin.take().unwrap();
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let ready = reqwest::blocking::Client::new()
                .get(format!("{url}status"))
                .timeout(Duration::from_secs(5))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                return Driver {
                    url,
                    _lifeline: lifeline,
                    _watchdog: child,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Closing the lifeline makes the watchdog clean up; then reap it.
        drop(lifeline);
        let _ = child.wait();
        eprintln!("chromedriver did not start (attempt {attempt}), retrying on another port");
    }
    panic!(
        "chromedriver did not start; see {}",
        logs.join("chromedriver.log").display()
    );
}

/// A WebDriver command fantoccini has no method for: a session-relative path.
#[derive(Debug)]
struct Raw {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Raw {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

// ---- one browser -------------------------------------------------------------

/// A Chromium session with a fresh profile, driven synchronously so that a
/// test can mix it freely with the blocking harness.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A browser window of `size` (CSS pixels), or `None` when the browser
    /// tests are skipped.
    fn open(size: (u32, u32)) -> Option<Browser> {
        let url = driver()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let profile = tempfile::Builder::new()
            .prefix("portcullis-chromium-")
            .tempdir()
            .unwrap();
        let caps = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "pageLoad": WAIT.as_millis() as u64, "script": 30_000, "implicit": 0 },
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    "--force-device-scale-factor=1", "--lang=en-US",
                    format!("--window-size={},{}", size.0, size.1),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let mut caps = caps.as_object().unwrap().clone();
        if size.0 < 500 {
            // Chromium's windows are at least 500 px wide: a phone is emulated.
            caps["goog:chromeOptions"]["mobileEmulation"] = json!({
                "deviceMetrics": { "width": size.0, "height": size.1, "pixelRatio": 1.0, "mobile": true, "touch": true },
            });
        }
        let mut last = String::new();
        for _ in 0..3 {
            let connect =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(url)
                    .await_within(&rt, STEP);
            match connect {
                Ok(Ok(client)) => {
                    let b = Browser {
                        rt,
                        client: Some(client),
                        _profile: profile,
                    };
                    // (A phone lays a page out 390 px wide only when the page
                    // says `width=device-width`, so the screen is checked here.)
                    let script = if size.0 < 500 {
                        "return [screen.width, screen.height]"
                    } else {
                        "return [innerWidth, innerHeight]"
                    };
                    let screen: (u64, u64) = serde_json::from_value(b.js(script)).unwrap();
                    assert_eq!(
                        screen.0,
                        u64::from(size.0),
                        "the window is {screen:?}, asked for {size:?}"
                    );
                    return Some(b);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("cannot start a Chromium session: {last}");
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("open browser")
    }

    /// Runs one WebDriver step; a failure or a hang fails the test.
    fn run<T, E: std::fmt::Display>(&self, what: &str, f: impl Future<Output = Result<T, E>>) -> T {
        match f.await_within(&self.rt, STEP) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: no answer from the browser in {STEP:?}"),
        }
    }

    fn goto(&self, url: &str) {
        self.run(&format!("open {url}"), self.client().goto(url));
    }

    fn url(&self) -> String {
        self.run("current url", self.client().current_url())
            .to_string()
    }

    fn js(&self, script: &str) -> Value {
        self.run(script, self.client().execute(script, vec![]))
    }

    fn try_js(&self, script: &str) -> Option<Value> {
        match self
            .client()
            .execute(script, vec![])
            .await_within(&self.rt, STEP)
        {
            Ok(Ok(v)) => Some(v),
            _ => None,
        }
    }

    fn raw(&self, path: &'static str, body: Value) -> Value {
        self.run(path, self.client().issue_cmd(Raw { path, body }))
    }

    /// A Chrome DevTools command through chromedriver.
    fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.raw("goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
    }

    /// Polls `check` until it holds.
    fn wait_until(&self, what: &str, mut check: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} (at {})",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The element matching `css`, once there is one.
    fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .client()
                .find(Locator::Css(css))
                .await_within(&self.rt, STEP)
            {
                Ok(Ok(e)) => return e,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                _ => panic!("no element {css} at {}", self.url()),
            }
        }
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.run(&format!("text of {css}"), e.text())
    }

    fn value(&self, css: &str) -> String {
        let e = self.find(css);
        self.run(&format!("value of {css}"), e.prop("value"))
            .unwrap_or_default()
    }

    /// Types into a field, as a person would.
    fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.run(&format!("clear {css}"), e.clear());
        self.run(&format!("type into {css}"), e.send_keys(text));
    }

    /// Clicks `css` and waits until the next page has loaded.
    fn submit(&self, css: &str) {
        self.js("window.__portcullisStale = true");
        let e = self.find(css);
        self.run(&format!("click {css}"), e.click());
        self.wait_until(&format!("the page after clicking {css}"), |b| {
            b.try_js("return !window.__portcullisStale && document.readyState === 'complete'")
                .is_some_and(|v| v == true)
        });
    }

    /// Opens `url` and waits for a page whose `h1` reads `heading`.
    fn open_page(&self, url: &str, heading: &str) {
        self.goto(url);
        self.expect_heading(heading);
    }

    fn expect_heading(&self, heading: &str) {
        self.wait_until(&format!("the page \"{heading}\""), |b| {
            b.try_js("const h = document.querySelector('h1'); return h ? h.textContent.trim() : ''")
                .is_some_and(|v| v == heading)
        });
    }

    fn active_id(&self) -> String {
        self.js("return document.activeElement ? document.activeElement.id : ''")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Emulates the light or dark colour scheme.
    fn scheme(&self, dark: bool) {
        let value = if dark { "dark" } else { "light" };
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": value }] }),
        );
        let now = self.js("return matchMedia('(prefers-color-scheme: dark)').matches");
        assert_eq!(now, dark, "colour scheme emulation");
    }

    /// A PNG of the whole page in `target/screenshots/NAME.png`.
    fn screenshot(&self, name: &str) -> PathBuf {
        let size: (u64, u64) = serde_json::from_value(self.js(
            "return [innerWidth, Math.max(innerHeight, document.documentElement.scrollHeight)]",
        ))
        .unwrap();
        let shot = self.cdp(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": size.0, "height": size.1, "scale": 1 } }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        let dir = target_dir().join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Browser console entries since the last call (the log is drained).
    fn console(&self) -> Vec<Value> {
        match self.raw("se/log", json!({ "type": "browser" })) {
            Value::Array(a) => a,
            other => panic!("browser log: {other}"),
        }
    }

    /// Console errors since the last call, less the one that a page with an
    /// error status always brings ("URL - Failed to load resource: the server
    /// responded with a status of 403 (Forbidden)") when `status` is the
    /// current page's status.
    fn console_errors(&self, status: Option<u16>) -> Vec<String> {
        let expected = status.map(|s| {
            format!(
                "{} - Failed to load resource: the server responded with a status of {s} ",
                self.url()
            )
        });
        self.console()
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .filter(|m| !expected.as_ref().is_some_and(|x| m.starts_with(x)))
            .collect()
    }

    fn assert_no_console_errors(&self, page: &str, status: Option<u16>) {
        let errors = self.console_errors(status);
        assert!(errors.is_empty(), "{page}: console errors: {errors:#?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // Ends the session: chromedriver closes this Chromium.
            let _ = c.close().await_within(&self.rt, Duration::from_secs(30));
        }
    }
}

trait AwaitWithin: Future + Sized {
    fn await_within(
        self,
        rt: &tokio::runtime::Runtime,
        limit: Duration,
    ) -> Result<Self::Output, tokio::time::error::Elapsed> {
        rt.block_on(async move { tokio::time::timeout(limit, self).await })
    }
}

impl<F: Future> AwaitWithin for F {}

// ---- page checks -------------------------------------------------------------

/// Layout, styles and contrast of the current page, measured in the browser.
const AUDIT: &str = r#"
const de = document.documentElement;
const parse = (c) => {
  const m = /rgba?\(([^)]+)\)/.exec(c);
  if (!m) return null;
  const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
  return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
};
const lum = (c) => {
  const f = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
};
const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
const bgOf = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0) return c;
  }
  return { r: 255, g: 255, b: 255, a: 1 };
};
const name = (el) => el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') +
  ' "' + el.textContent.trim().replace(/\s+/g, ' ').slice(0, 40) + '"';
const low = [];
let checked = 0;
for (const el of document.body.querySelectorAll('*')) {
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.getClientRects().length) continue;
  const s = getComputedStyle(el);
  const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight, 10) >= 700;
  const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  const r = ratio(parse(s.color), bgOf(el));
  checked++;
  if (r < need) low.push(name(el) + ': ' + r.toFixed(2) + ' < ' + need);
}
for (const el of document.querySelectorAll('input[type=text],input[type=password],input[type=email]')) {
  if (!el.getClientRects().length) continue;
  const s = getComputedStyle(el);
  const border = ratio(parse(s.borderTopColor), bgOf(el.parentElement));
  if (border < 3) low.push('border of #' + el.id + ': ' + border.toFixed(2) + ' < 3');
  const text = ratio(parse(s.color), bgOf(el));
  if (text < 4.5) low.push('text in #' + el.id + ': ' + text.toFixed(2) + ' < 4.5');
}
return {
  width: innerWidth,
  scrollWidth: de.scrollWidth,
  lang: de.lang,
  sheets: [...document.styleSheets].map((s) => s.href),
  inline: document.querySelectorAll('script, [style]').length,
  cardRadius: getComputedStyle(document.querySelector('main')).borderTopLeftRadius,
  checked,
  low,
};
"#;

/// The page fits its window, has its styles (CSP allowed them), has no
/// inline script or style, and its text is readable (WCAG AA).
fn audit(b: &Browser, page: &str, width: u32) {
    let a = b.js(AUDIT);
    assert_eq!(a["width"], width, "{page}: laid out for the window: {a}");
    assert!(
        a["scrollWidth"].as_u64().unwrap() <= u64::from(width),
        "{page}: scrolls sideways: {a}"
    );
    assert_eq!(a["lang"], "en", "{page}");
    let sheets = a["sheets"].as_array().unwrap();
    assert_eq!(sheets.len(), 2, "{page}: both stylesheets load: {a}");
    assert_ne!(a["cardRadius"], "0px", "{page}: styled");
    assert_eq!(a["inline"], 0, "{page}: no inline script or style");
    assert!(a["checked"].as_u64().unwrap() >= 2, "{page}: {a}");
    assert!(
        a["low"].as_array().unwrap().is_empty(),
        "{page}: low contrast: {a:#}"
    );
}

/// The visible inputs of the current page.
fn fields(b: &Browser) -> Vec<Value> {
    let v = b.js(r#"return [...document.querySelectorAll('input')]
            .filter((i) => i.type !== 'hidden' && !i.hidden)
            .map((i) => ({
                id: i.id, type: i.type, autocomplete: i.getAttribute('autocomplete'),
                labels: [...i.labels].map((l) => (l.htmlFor === i.id ? l.textContent.trim() : '')),
                described: (i.getAttribute('aria-describedby') || '').split(/\s+/).filter(Boolean)
                    .map((id) => (document.getElementById(id) || {}).textContent || null),
            }))"#);
    v.as_array().unwrap().clone()
}

/// Signs in through the login form; lands wherever the gateway sends us.
fn sign_in(b: &Browser, gw: &Gw, user: &str, pw: &str) {
    b.open_page(&gw.url("/.portcullis/login"), "Sign in");
    b.fill("#username", user);
    b.fill("#password", pw);
    b.submit("button[type=submit]");
}

/// What the echo app saw, from its HTML page.
fn echo_says(b: &Browser) -> String {
    b.find("h1");
    b.js("return document.body.innerText")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---- the tests -----------------------------------------------------------------

#[test]
fn login_returns_to_the_first_url_and_keeps_the_username_after_an_error() {
    let Some(b) = Browser::open(DESKTOP) else {
        return;
    };
    let gw = Gw::start();
    gw.add_user("alice", PW, &[], false);

    let wanted = gw.url("/docs/q3%20report?year=2025&q=a%20b&sort=-date");
    b.goto(&wanted);
    b.expect_heading("Sign in");
    assert!(
        b.url().starts_with(&gw.url("/.portcullis/login?next=")),
        "{}",
        b.url()
    );
    assert_eq!(b.active_id(), "username", "the first field has focus");
    b.assert_no_console_errors("login", None);
    b.screenshot("desktop-login");

    b.fill("#username", "alice");
    b.fill("#password", "not the password");
    b.submit("button[type=submit]");
    let error = b.text("#form-error");
    assert!(error.contains("correct username and password"), "{error}");
    let role = b.run("role", b.find("#form-error").attr("role"));
    assert_eq!(role.as_deref(), Some("alert"));
    assert_eq!(b.value("#username"), "alice", "the username is kept");
    assert_eq!(b.value("#password"), "", "the password never is");
    assert_eq!(
        b.active_id(),
        "password",
        "focus is on the field to fill in"
    );
    for f in fields(&b).iter().filter(|f| f["type"] != "checkbox") {
        assert_eq!(f["described"], json!([error]), "the error describes {f}");
    }
    b.assert_no_console_errors("login error", Some(401));
    b.screenshot("desktop-login-error");

    b.fill("#password", PW);
    b.submit("button[type=submit]");
    assert_eq!(b.url(), wanted, "back where we started, query intact");
    let page = echo_says(&b);
    assert!(
        page.contains("GET /docs/q3%20report?year=2025&q=a%20b&sort=-date"),
        "{page}"
    );
    assert!(page.contains("The gateway says you are alice"), "{page}");

    // Without a `next`, the login lands on `/`.
    let b2 = Browser::open(DESKTOP).unwrap();
    sign_in(&b2, &gw, "alice", PW);
    assert_eq!(b2.url(), gw.url("/"));
}

#[test]
fn change_password() {
    let Some(b) = Browser::open(DESKTOP) else {
        return;
    };
    let gw = Gw::start();
    gw.add_user("carol", PW, &[], false);
    sign_in(&b, &gw, "carol", PW);
    b.open_page(&gw.url("/.portcullis/password"), "Change password");
    b.screenshot("desktop-password");

    let new = "a much longer passphrase 42";
    b.fill("#current_password", "this is not it");
    b.fill("#new_password", new);
    b.fill("#new_password_confirm", new);
    b.submit("button[type=submit]");
    assert!(b
        .text("#form-error")
        .contains("current password was entered incorrectly"));
    assert_eq!(b.active_id(), "current_password");
    for id in ["current_password", "new_password", "new_password_confirm"] {
        assert_eq!(b.value(&format!("#{id}")), "", "{id} is never kept");
    }
    b.assert_no_console_errors("password error", Some(400));
    b.screenshot("desktop-password-error");

    b.fill("#current_password", PW);
    b.fill("#new_password", new);
    b.fill("#new_password_confirm", new);
    b.submit("button[type=submit]");
    assert!(b.text(".ok").contains("Your password has been changed"));
    b.assert_no_console_errors("password changed", None);
    b.screenshot("desktop-password-changed");

    // Still signed in here, with the new password only.
    b.goto(&gw.url("/after"));
    assert!(echo_says(&b).contains("The gateway says you are carol"));
    let login = |pw: &str| {
        gw.client()
            .post(gw.url("/.portcullis/login"))
            .json(&json!({ "username": "carol", "password": pw }))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(login(PW), 401);
    assert_eq!(login(new), 200);
}

#[test]
fn see_and_end_another_session() {
    let Some(b) = Browser::open(DESKTOP) else {
        return;
    };
    let gw = Gw::start();
    gw.add_user("dave", PW, &[], false);
    sign_in(&b, &gw, "dave", PW);

    // A second session, from another "browser".
    let other = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .user_agent(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = other
        .post(gw.url("/.portcullis/login"))
        .json(&json!({ "username": "dave", "password": PW }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let me = || {
        other
            .get(gw.url("/.portcullis/me"))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(me(), 200);

    b.open_page(&gw.url("/.portcullis/sessions"), "Your sessions");
    let items =
        b.js("return [...document.querySelectorAll('.sessions li')].map((li) => li.innerText)");
    let items: Vec<String> = serde_json::from_value(items).unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    let current: Vec<_> = items
        .iter()
        .filter(|t| t.contains("This browser"))
        .collect();
    assert_eq!(current.len(), 1, "{items:?}");
    assert!(current[0].contains("Chrome on Linux"), "{items:?}");
    let firefox = items.iter().find(|t| !t.contains("This browser")).unwrap();
    assert!(
        firefox.contains("Firefox on Windows") && firefox.contains("From 127.0.0.1"),
        "{firefox}"
    );
    assert!(firefox.contains(" UTC"), "{firefox}");
    b.assert_no_console_errors("sessions", None);
    b.screenshot("desktop-sessions");

    let button = "li form button";
    let label = b
        .run("button label", b.find(button).attr("aria-label"))
        .unwrap_or_default();
    assert!(label.contains("Firefox on Windows"), "{label}");
    b.submit(button);
    b.expect_heading("Your sessions");
    let left = b.js("return document.querySelectorAll('.sessions li').length");
    assert_eq!(left, 1);
    assert!(b.text(".sessions li").contains("This browser"));
    assert_eq!(me(), 401, "the other session has ended");
    b.goto(&gw.url("/still"));
    assert!(
        echo_says(&b).contains("The gateway says you are dave"),
        "this one has not"
    );
}

#[test]
fn logout_through_the_confirmation_page() {
    let Some(b) = Browser::open(DESKTOP) else {
        return;
    };
    let gw = Gw::start();
    gw.add_user("erin", PW, &[], false);
    sign_in(&b, &gw, "erin", PW);

    b.open_page(&gw.url("/.portcullis/logout"), "Sign out");
    assert!(b.text("main").contains("You are signed in as erin"));
    b.assert_no_console_errors("logout", None);
    b.screenshot("desktop-logout");
    b.submit("button[type=submit]");
    b.expect_heading("Signed out");
    b.assert_no_console_errors("signed out", None);
    b.screenshot("desktop-signed-out");
    let cookies = b.run("cookies", b.client().get_all_cookies());
    assert!(
        cookies.iter().all(|c| c.name() != "portcullis_session"),
        "{cookies:?}"
    );

    // Signed out for real: the app sends us to the login page again.
    b.goto(&gw.url("/private"));
    b.expect_heading("Sign in");
    b.open_page(&gw.url("/.portcullis/logout"), "Sign out");
    assert!(b.text("main").contains("You are not signed in"));
}

#[test]
fn forms_are_labelled_with_autocomplete_hints() {
    let Some(b) = Browser::open(DESKTOP) else {
        return;
    };
    let gw = Gw::with(Opts {
        extra: "[registration]\nenabled = true\n".into(),
        ..Opts::default()
    });
    gw.add_user("fay", PW, &[], false);

    let expect = |page: &str, want: &[(&str, &str, &str)]| {
        let got = fields(&b);
        let got: Vec<(String, String, String)> = got
            .iter()
            .map(|f| {
                let labels = f["labels"].as_array().unwrap();
                assert_eq!(labels.len(), 1, "{page}: one <label for> per field: {f}");
                assert!(!labels[0].as_str().unwrap().is_empty(), "{page}: {f}");
                (
                    f["id"].as_str().unwrap().to_string(),
                    f["type"].as_str().unwrap().to_string(),
                    f["autocomplete"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want, "{page}");
        assert_eq!(b.js("return document.documentElement.lang"), "en");
    };

    b.open_page(&gw.url("/.portcullis/login"), "Sign in");
    expect(
        "login",
        &[
            ("username", "text", "username"),
            ("password", "password", "current-password"),
            ("remember", "checkbox", ""),
        ],
    );
    b.open_page(&gw.url("/.portcullis/register"), "Create an account");
    expect(
        "register",
        &[
            ("username", "text", "username"),
            ("email", "email", "email"),
            ("password", "password", "new-password"),
        ],
    );
    assert_eq!(b.active_id(), "username");
    sign_in(&b, &gw, "fay", PW);
    b.open_page(&gw.url("/.portcullis/password"), "Change password");
    expect(
        "password",
        &[
            ("current_password", "password", "current-password"),
            ("new_password", "password", "new-password"),
            ("new_password_confirm", "password", "new-password"),
        ],
    );
    // The hidden username lets a password manager file the new password.
    assert_eq!(
        b.js("const u = document.querySelector('input[name=username]'); return [u.hidden, u.getClientRects().length, u.value, u.autocomplete]"),
        json!([true, 0, "fay", "username"])
    );
    b.assert_no_console_errors("forms", None);
}

#[test]
fn registration_keeps_what_was_typed_and_signs_in() {
    let Some(b) = Browser::open(DESKTOP) else {
        return;
    };
    let gw = Gw::with(Opts {
        extra: "[registration]\nenabled = true\n".into(),
        ..Opts::default()
    });
    b.goto(&gw.url("/welcome?tour=1"));
    b.expect_heading("Sign in");
    b.submit("a[href*='/register']");
    b.expect_heading("Create an account");
    b.fill("#username", "gina");
    b.fill("#email", "gina@example.com");
    b.fill("#password", "short");
    b.submit("button[type=submit]");
    assert!(b.text("#form-error").contains("too short"));
    assert_eq!(b.value("#username"), "gina");
    assert_eq!(b.value("#email"), "gina@example.com");
    assert_eq!(b.value("#password"), "");
    assert_eq!(b.active_id(), "password");
    b.assert_no_console_errors("register error", Some(400));
    b.screenshot("desktop-register-error");

    b.fill("#password", "a perfectly fine passphrase");
    b.submit("button[type=submit]");
    assert_eq!(
        b.url(),
        gw.url("/welcome?tour=1"),
        "registration keeps `next`"
    );
    assert!(echo_says(&b).contains("The gateway says you are gina"));
}

/// Every page at 390 px, in the light and the dark scheme: no sideways
/// scrolling, no console errors (a CSP violation is one), readable text.
#[test]
fn every_page_fits_a_phone_in_both_schemes_without_console_errors() {
    let Some(b) = Browser::open(PHONE) else {
        return;
    };
    let gw = Gw::with(Opts {
        extra: "[registration]\nenabled = true\n".into(),
        ..Opts::default()
    });
    gw.add_user(
        "hana_with_a_rather_long_username_for_a_phone",
        PW,
        &[],
        false,
    );
    let user = "hana_with_a_rather_long_username_for_a_phone";
    // An upstream that is not there (502), and one that never answers (504).
    let gone = Gw::with(Opts {
        upstream: Some(format!("http://127.0.0.1:{}", free_port())),
        ..Opts::default()
    });
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow = Gw::with(Opts {
        upstream: Some(format!("http://{}", silent.local_addr().unwrap())),
        ..Opts::default()
    });

    // (screenshot name, what to do to get there, its heading, its status)
    type Step<'a> = (&'a str, Box<dyn Fn(&Browser) + 'a>, &'a str, Option<u16>);
    let goto = |url: String| -> Box<dyn Fn(&Browser)> { Box::new(move |b: &Browser| b.goto(&url)) };
    let steps: Vec<Step> = vec![
        (
            "login",
            goto(gw.url("/.portcullis/login?next=%2Fhome")),
            "Sign in",
            None,
        ),
        (
            "login-error",
            Box::new(|b: &Browser| {
                b.fill("#username", user);
                b.fill("#password", "wrong password");
                b.submit("button[type=submit]");
            }),
            "Sign in",
            Some(401),
        ),
        (
            "register",
            goto(gw.url("/.portcullis/register")),
            "Create an account",
            None,
        ),
        (
            "form-expired",
            Box::new(|b: &Browser| {
                b.goto(&gw.url("/.portcullis/login"));
                b.find("#username");
                b.run("delete cookies", b.client().delete_all_cookies());
                b.fill("#username", user);
                b.fill("#password", PW);
                b.submit("button[type=submit]");
            }),
            "Form expired",
            Some(403),
        ),
        (
            "not-found",
            goto(gw.url("/.portcullis/nothing-here")),
            "Not found",
            Some(404),
        ),
        (
            "unavailable",
            goto(gone.url("/public/x")),
            "The application is unavailable",
            Some(502),
        ),
        (
            "timeout",
            goto(slow.url("/public/x")),
            "The application is taking too long",
            Some(504),
        ),
        (
            "signed-in",
            Box::new(|b: &Browser| sign_in(b, &gw, user, PW)),
            "whoami",
            None,
        ),
        (
            "password",
            goto(gw.url("/.portcullis/password")),
            "Change password",
            None,
        ),
        (
            "sessions",
            goto(gw.url("/.portcullis/sessions")),
            "Your sessions",
            None,
        ),
        (
            "forbidden",
            goto(gw.url("/admin/panel")),
            "Access denied",
            Some(403),
        ),
        (
            "logout",
            goto(gw.url("/.portcullis/logout")),
            "Sign out",
            None,
        ),
        (
            "signed-out",
            Box::new(|b: &Browser| b.submit("button[type=submit]")),
            "Signed out",
            None,
        ),
    ];
    b.console();
    for (name, go, heading, status) in &steps {
        go(&b);
        b.expect_heading(heading);
        b.assert_no_console_errors(name, *status);
        if *heading == "whoami" {
            continue; // the app's page, not ours
        }
        for dark in [false, true] {
            b.scheme(dark);
            let scheme = if dark { "dark" } else { "light" };
            audit(&b, &format!("{name} ({scheme})"), PHONE.0);
            b.screenshot(&format!("phone-{name}-{scheme}"));
        }
        b.scheme(false);
        b.assert_no_console_errors(name, *status);
    }
    drop(silent);
}

/// `[ui]` branding, and templates and CSS from folders, without rebuilding.
#[test]
fn branding_and_templates_from_folders() {
    let Some(b) = Browser::open(DESKTOP) else {
        return;
    };
    let brand = tempfile::tempdir().unwrap();
    let (templates, assets) = (brand.path().join("templates"), brand.path().join("static"));
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::create_dir_all(&assets).unwrap();
    // A page of our own (autoescaped like the built-in ones) ...
    std::fs::write(
        templates.join("logout.html"),
        r#"{% extends "base.html" %}{% block title %}Leaving{% endblock %}
{% block content %}<h1>Leaving so soon?</h1><p class="who">{{ username }} · {{ title }}</p>
<form method="post" action="{{ prefix }}/logout"><input type="hidden" name="csrf_token" value="{{ csrf_token }}"><button type="submit">Bye</button></form>{% endblock %}"#,
    )
    .unwrap();
    // ... one that breaks the CSP, to show that the console check sees it ...
    std::fs::write(
        templates.join("message.html"),
        r#"{% extends "base.html" %}{% block content %}<h1>{{ heading }}</h1><p style="color: red">{{ message }}</p>{% endblock %}"#,
    )
    .unwrap();
    // ... and a stylesheet and logo of our own.
    let css = include_str!("../static/portcullis.css").to_string()
        + "\nbody { background: rgb(236, 246, 240); }\n";
    std::fs::write(assets.join("portcullis.css"), css).unwrap();
    std::fs::write(
        assets.join("logo.svg"),
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40" viewBox="0 0 40 40"><rect width="40" height="40" rx="8" fill="#0a7d45"/><path d="M10 30V12h20v18M16 30V18h8v12" fill="none" stroke="#fff" stroke-width="3"/></svg>"##,
    )
    .unwrap();
    let gw = Gw::with(Opts {
        extra: format!(
            "[ui]\ntitle = \"Example <b>& Co\"\nlogo_url = \"/.portcullis/static/logo.svg\"\naccent_color = \"#0a7d45\"\ntemplates_dir = \"{}\"\nstatic_dir = \"{}\"\n",
            templates.display(),
            assets.display()
        ),
        ..Opts::default()
    });
    gw.add_user("ivan", PW, &[], false);

    b.open_page(&gw.url("/.portcullis/login"), "Sign in");
    assert_eq!(
        b.text(".brand span"),
        "Example <b>& Co",
        "the title, escaped"
    );
    assert_eq!(b.js("return document.querySelectorAll('b').length"), 0);
    assert_eq!(b.js("return document.title"), "Sign in · Example <b>& Co");
    assert_eq!(
        b.js("const i = document.querySelector('.brand img'); return i.complete && i.naturalWidth"),
        40,
        "the logo from static_dir"
    );
    assert_eq!(
        b.js("return getComputedStyle(document.body).backgroundColor"),
        "rgb(236, 246, 240)",
        "the stylesheet from static_dir"
    );
    assert_eq!(
        b.js("return getComputedStyle(document.querySelector('button')).backgroundColor"),
        "rgb(10, 125, 69)",
        "the accent colour"
    );
    audit(&b, "branded login", DESKTOP.0);
    b.assert_no_console_errors("branded login", None);
    b.screenshot("desktop-branded-login");

    sign_in(&b, &gw, "ivan", PW);
    b.open_page(&gw.url("/.portcullis/logout"), "Leaving so soon?");
    assert_eq!(b.text(".who"), "ivan · Example <b>& Co");
    b.assert_no_console_errors("overridden logout", None);
    b.submit("button[type=submit]");
    b.expect_heading("Signed out");

    let errors = b.console_errors(None);
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "an inline style is reported as a CSP violation: {errors:#?}"
    );
}
