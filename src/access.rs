//! The access log: one line per request, in the same text or JSON shape as
//! every other log line, on the same background writer.
//!
//! It is written here rather than through `tracing`'s formatter because
//! it runs on every request: the generic formatter (field visitors, `Debug`
//! quoting char by char, a fresh timestamp rendering) cost about 6 % of the
//! proxy's throughput; this one writes straight into a reused buffer and
//! renders the date part of the timestamp once a second. `RUST_LOG` still
//! decides whether lines are written (`portcullis::access` at `info`).
//!
//! Lines are batched: requests append to a shared buffer, and the
//! `access-log` thread hands it to the log writer every
//! [`FLUSH_EVERY`] (sooner once [`FLUSH_AT`] bytes are waiting). Queuing
//! each line on its own woke the writer thread for nearly every request,
//! which cost more than formatting the line. The price is that access lines
//! reach the log up to [`FLUSH_EVERY`] later than other lines.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use tracing_appender::non_blocking::NonBlocking;

use crate::config::LogFormat;
use crate::policy::Rule;

pub const TARGET: &str = "portcullis::access";

/// How long a line may wait in the batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is handed over without waiting.
pub const FLUSH_AT: usize = 64 * 1024;
/// Past this much waiting (the writer is stuck), lines are dropped and
/// counted rather than held in memory or slowing requests.
const MAX_PENDING: usize = 4 * 1024 * 1024;

struct Sink {
    format: LogFormat,
    pending: Mutex<Vec<u8>>,
    full: Condvar,
    writer: Mutex<NonBlocking>,
}

static SINK: OnceLock<Sink> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Sends access lines to `writer` (the process's log writer). Until this is
/// called, and whenever `RUST_LOG` filters the target out, nothing is
/// written. Call [`flush`] before the writer's guard is dropped.
pub fn init(writer: NonBlocking, format: LogFormat) {
    let sink = Sink {
        format,
        pending: Mutex::new(Vec::with_capacity(FLUSH_AT)),
        full: Condvar::new(),
        writer: Mutex::new(writer),
    };
    if SINK.set(sink).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(|| {
            let Some(sink) = SINK.get() else { return };
            // Two buffers take turns, so steady traffic allocates nothing.
            let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_AT);
            loop {
                let mut writer = {
                    let mut p = sink.pending.lock();
                    // Asleep while there is nothing to write; the first line
                    // of a batch wakes this thread, then it gathers for a
                    // while so that one hand-over carries many lines.
                    while p.is_empty() {
                        sink.full.wait(&mut p);
                    }
                    if p.len() < FLUSH_AT {
                        sink.full.wait_for(&mut p, FLUSH_EVERY);
                    }
                    std::mem::swap(&mut *p, &mut spare);
                    // Taken before the batch lock is let go, so batches
                    // reach the writer in the order they were taken.
                    sink.writer.lock()
                };
                hand_over(&mut writer, &spare);
                drop(writer);
                spare.clear();
                if spare.capacity() > 4 * FLUSH_AT {
                    spare.shrink_to(FLUSH_AT);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the access log thread; access lines are written at exit only");
    }
}

fn hand_over(writer: &mut NonBlocking, batch: &[u8]) {
    if !batch.is_empty() {
        // One message per batch, whole lines only, so they never interleave
        // with other log lines mid-line.
        let _ = writer.write_all(batch);
    }
}

/// Hands every waiting line to the log writer (at shutdown).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let (batch, mut writer) = {
            let mut p = sink.pending.lock();
            (std::mem::take(&mut *p), sink.writer.lock())
        };
        hand_over(&mut writer, &batch);
    }
}

/// Access lines dropped because the log writer fell far behind.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Whether a line would be written; callers skip gathering its fields (and
/// reading the clock) otherwise.
pub fn enabled() -> bool {
    SINK.get().is_some() && tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// One request, as the access log records it.
pub struct Entry<'a> {
    pub method: &'a str,
    /// The canonical path (`-` when the target could not be read).
    pub path: &'a str,
    pub status: u16,
    pub user: Option<&'a str>,
    pub decision: &'static str,
    pub rule: Option<&'a Rule>,
    pub latency_us: u64,
    pub client_ip: Option<IpAddr>,
    pub error: Option<&'a dyn std::fmt::Display>,
}

thread_local! {
    static LINE: RefCell<Line> = RefCell::new(Line::default());
}

#[derive(Default)]
struct Line {
    buf: String,
    /// The rendered `YYYY-MM-DDTHH:MM:SS` of `second`.
    date: String,
    second: u64,
}

pub fn write(e: &Entry<'_>) {
    let Some(sink) = SINK.get() else { return };
    LINE.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return;
        };
        let line = &mut *line;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if line.date.is_empty() || line.second != now.as_secs() {
            line.second = now.as_secs();
            line.date = crate::clock::rfc3339(now.as_secs());
            // rfc3339 ends in 'Z'; the fraction goes before it.
            line.date.pop();
        }
        line.buf.clear();
        render(
            &mut line.buf,
            sink.format,
            &line.date,
            now.subsec_micros(),
            e,
        );
        let mut p = sink.pending.lock();
        if p.len() + line.buf.len() > MAX_PENDING {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was = p.len();
        p.extend_from_slice(line.buf.as_bytes());
        if was == 0 || (was < FLUSH_AT && p.len() >= FLUSH_AT) {
            sink.full.notify_one();
        }
    });
}

/// Renders one line without `fmt` for the fields every request has (the
/// formatter cost ~2 500 instructions a line; the log is on by default).
fn render(out: &mut String, format: LogFormat, date: &str, micros: u32, e: &Entry<'_>) {
    let mut num = itoa::Buffer::new();
    match format {
        LogFormat::Text => {
            out.push_str(date);
            push_micros(out, micros);
            out.push_str("Z  INFO ");
            out.push_str(TARGET);
            out.push_str(": method=");
            out.push_str(e.method);
            out.push_str(" path=");
            quoted(out, e.path, escape_debug);
            out.push_str(" status=");
            out.push_str(num.format(e.status));
            out.push_str(" user=");
            quoted(out, e.user.unwrap_or("-"), escape_debug);
            out.push_str(" decision=");
            quoted(out, e.decision, escape_debug);
            out.push_str(" rule=");
            rule(out, e.rule, escape_debug);
            out.push_str(" latency_us=");
            out.push_str(num.format(e.latency_us));
            out.push_str(" client_ip=");
            if let Some(ip) = e.client_ip {
                crate::headers::push_ip(out, ip);
            }
            if let Some(err) = e.error {
                out.push_str(" error=");
                quoted_display(out, err, escape_debug);
            }
        }
        LogFormat::Json => {
            out.push_str("{\"timestamp\":\"");
            out.push_str(date);
            push_micros(out, micros);
            out.push_str("Z\",\"level\":\"INFO\",\"method\":");
            quoted(out, e.method, escape_json);
            out.push_str(",\"path\":");
            quoted(out, e.path, escape_json);
            out.push_str(",\"status\":");
            out.push_str(num.format(e.status));
            out.push_str(",\"user\":");
            quoted(out, e.user.unwrap_or("-"), escape_json);
            out.push_str(",\"decision\":");
            quoted(out, e.decision, escape_json);
            out.push_str(",\"rule\":");
            rule(out, e.rule, escape_json);
            out.push_str(",\"latency_us\":");
            out.push_str(num.format(e.latency_us));
            out.push_str(",\"client_ip\":\"");
            if let Some(ip) = e.client_ip {
                crate::headers::push_ip(out, ip);
            }
            out.push('"');
            if let Some(err) = e.error {
                out.push_str(",\"error\":");
                quoted_display(out, err, escape_json);
            }
            out.push_str(",\"target\":\"");
            out.push_str(TARGET);
            out.push_str("\"}");
        }
    }
    out.push('\n');
}

/// `.` and six digits of microseconds.
fn push_micros(out: &mut String, micros: u32) {
    let mut digits = [b'0'; 7];
    digits[0] = b'.';
    let mut m = micros.min(999_999);
    for d in digits[1..].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// The rule's label (its name, or `file:line`) in quotes, or `"-"`.
fn rule(out: &mut String, r: Option<&Rule>, escape: fn(&mut String, &str)) {
    match r {
        Some(r) => quoted(out, r.label(), escape),
        None => out.push_str("\"-\""),
    }
}

/// Like [`quoted`], for a value written through `Display` (no string built).
fn quoted_display(out: &mut String, v: &dyn std::fmt::Display, escape: fn(&mut String, &str)) {
    struct Escaping<'a>(&'a mut String, fn(&mut String, &str));
    impl std::fmt::Write for Escaping<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            (self.1)(self.0, s);
            Ok(())
        }
    }
    out.push('"');
    let _ = write!(Escaping(out, escape), "{v}");
    out.push('"');
}

/// A string in quotes, escaped for the format, so a client cannot end a
/// field early or forge a line.
fn quoted(out: &mut String, s: &str, escape: fn(&mut String, &str)) {
    out.push('"');
    escape(out, s);
    out.push('"');
}

/// Escaping as `tracing`'s text format shows a string: quotes, backslashes
/// and control characters.
fn escape_debug(out: &mut String, s: &str) {
    if !s
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
}

fn escape_json(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, user: Option<&'a str>) -> Entry<'a> {
        Entry {
            method: "GET",
            path,
            status: 200,
            user,
            decision: "allowed",
            rule: None,
            latency_us: 42,
            client_ip: Some("10.0.0.7".parse().unwrap()),
            error: None,
        }
    }

    #[test]
    fn text_line_has_every_field() {
        let mut s = String::new();
        render(
            &mut s,
            LogFormat::Text,
            "2026-11-27T15:12:32",
            748734,
            &entry("/x", Some("alice")),
        );
        assert_eq!(
            s,
            "2026-11-27T15:12:32.748734Z  INFO portcullis::access: method=GET path=\"/x\" \
             status=200 user=\"alice\" decision=\"allowed\" rule=\"-\" latency_us=42 \
             client_ip=10.0.0.7\n"
        );
    }

    #[test]
    fn addresses_and_numbers_render_as_before() {
        let mut s = String::new();
        let mut e = entry("/", None);
        e.client_ip = Some("2001:db8::1".parse().unwrap());
        e.status = 503;
        e.latency_us = 0;
        render(&mut s, LogFormat::Text, "2026-11-27T15:12:32", 0, &e);
        assert!(s.starts_with("2026-11-27T15:12:32.000000Z  INFO "), "{s}");
        assert!(s.contains(" status=503 "), "{s}");
        assert!(s.contains(" latency_us=0 "), "{s}");
        assert!(s.ends_with(" client_ip=2001:db8::1\n"), "{s}");
        for ip in ["0.0.0.0", "255.255.255.255", "10.20.3.199"] {
            s.clear();
            e.client_ip = Some(ip.parse().unwrap());
            render(&mut s, LogFormat::Json, "2026-11-27T15:12:32", 999_999, &e);
            let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
            assert_eq!(v["client_ip"], ip);
            assert_eq!(v["timestamp"], "2026-11-27T15:12:32.999999Z");
        }
    }

    #[test]
    fn rules_are_named_by_name_or_by_file_and_line() {
        let text = "[[rule]]\npath = \"/a/**\"\nallow = \"anyone\"\n\n[[rule]]\nname = \"say \\\"hi\\\"\"\npath = \"/**\"\nallow = \"anyone\"\n";
        let (policy, _) =
            crate::policy::load::compile(&[(std::path::Path::new("conf/p.toml"), text)], false)
                .unwrap();
        let mut s = String::new();
        let mut e = entry("/a/b", None);
        e.rule = policy.rules.first();
        render(&mut s, LogFormat::Text, "2026-11-27T15:12:32", 1, &e);
        assert!(s.contains(" rule=\"p.toml:1\" "), "{s}");
        s.clear();
        e.rule = policy.rules.get(1);
        render(&mut s, LogFormat::Text, "2026-11-27T15:12:32", 1, &e);
        assert!(s.contains(r#" rule="say \"hi\"" "#), "{s}");
        s.clear();
        render(&mut s, LogFormat::Json, "2026-11-27T15:12:32", 1, &e);
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["rule"], "say \"hi\"");
    }

    #[test]
    fn a_path_cannot_forge_a_line_or_a_field() {
        let evil = "/a\" user=\"root\n2026-01-01T00:00:00Z  INFO forged\\";
        let mut s = String::new();
        render(
            &mut s,
            LogFormat::Text,
            "2026-11-27T15:12:32",
            1,
            &entry(evil, None),
        );
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        assert!(s.contains(r#"path="/a\" user=\"root\n2026"#), "{s}");
        assert!(s.contains(r#"forged\\""#), "{s}");
        assert!(s.contains(" user=\"-\""), "{s}");
    }

    #[test]
    fn json_line_parses_back() {
        let evil = "/caf\u{e9}\"\n\u{1}";
        let mut s = String::new();
        let err = "upstream refused";
        let mut e = entry(evil, Some("bob"));
        e.error = Some(&err);
        e.client_ip = None;
        render(&mut s, LogFormat::Json, "2026-11-27T15:12:32", 5, &e);
        assert!(s.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["path"], evil);
        assert_eq!(v["user"], "bob");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_us"], 42);
        assert_eq!(v["error"], err);
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["timestamp"], "2026-11-27T15:12:32.000005Z");
    }
}
