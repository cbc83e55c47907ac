//! Auth events as data (Django's signals): one JSON object per line, to the
//! log and, when configured, to an audit file.
//!
//! File writes happen on a dedicated thread behind a bounded queue, so a
//! slow disk never delays a request; events that do not fit are counted.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use serde_json::{Map, Value};

pub struct Audit {
    file: Option<SyncSender<String>>,
    webhook: Option<SyncSender<String>>,
    /// Events that did not fit a queue (file or webhook) or that the
    /// webhook refused after every retry.
    pub dropped: std::sync::Arc<AtomicU64>,
    /// Events queued and not yet written or posted (or given up on), so a
    /// stopping gateway can wait for the last ones.
    pending: std::sync::Arc<AtomicU64>,
}

/// One auth event. Build it with [`Event::new`] and the `with_*` methods.
pub struct Event {
    fields: Map<String, Value>,
}

impl Event {
    pub fn new(event: &str) -> Self {
        let mut fields = Map::new();
        fields.insert(
            "time".into(),
            Value::String(crate::clock::rfc3339(crate::clock::unix_secs())),
        );
        fields.insert("event".into(), Value::String(event.into()));
        Event { fields }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    pub fn with_opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }
}

/// Where a webhook posts, and how long it may take.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: url::Url,
    pub timeout: std::time::Duration,
}

impl Audit {
    pub fn new(path: Option<&Path>) -> std::io::Result<Self> {
        Self::with_webhook(path, None)
    }

    pub fn with_webhook(path: Option<&Path>, webhook: Option<Webhook>) -> std::io::Result<Self> {
        let pending = std::sync::Arc::new(AtomicU64::new(0));
        let file = match path {
            None => None,
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.create(true).append(true);
                // Failed logins' user names are often passwords typed in
                // the wrong field: readable by the owner only, as the store.
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(p)?;
                let (tx, rx) = sync_channel::<String>(4096);
                let done = std::sync::Arc::clone(&pending);
                std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || {
                        while let Ok(line) = rx.recv() {
                            if f.write_all(line.as_bytes())
                                .and_then(|_| f.write_all(b"\n"))
                                .is_err()
                            {
                                tracing::error!("cannot write to the audit file");
                            }
                            done.fetch_sub(1, Ordering::Release);
                        }
                        let _ = f.flush();
                    })?;
                Some(tx)
            }
        };
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        let webhook = match webhook {
            None => None,
            Some(w) => Some(spawn_webhook(
                w,
                std::sync::Arc::clone(&dropped),
                std::sync::Arc::clone(&pending),
            )?),
        };
        Ok(Audit {
            file,
            webhook,
            dropped,
            pending,
        })
    }

    /// Waits up to `within` for every queued event to be written or
    /// posted; true if none is left. For a stopping gateway, whose last
    /// requests' events (a logout, say) would otherwise go down with it.
    pub fn drain(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.pending.load(Ordering::Acquire) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    pub fn emit(&self, ev: Event) {
        let line = Value::Object(ev.fields).to_string();
        tracing::info!(target: "portcullis::audit", "{line}");
        for tx in [&self.webhook, &self.file].into_iter().flatten() {
            // Counted before the send, so the consumer never takes it
            // below zero.
            self.pending.fetch_add(1, Ordering::AcqRel);
            match tx.try_send(line.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "portcullis::audit", "audit queue full; event dropped");
                }
            }
        }
    }
}

/// Posts events to the webhook from its own thread: a bounded queue, three
/// tries with back-off, then the event is dropped and counted. A slow or
/// dead webhook never delays a request.
fn spawn_webhook(
    w: Webhook,
    dropped: std::sync::Arc<AtomicU64>,
    pending: std::sync::Arc<AtomicU64>,
) -> std::io::Result<SyncSender<String>> {
    let (tx, rx) = sync_channel::<String>(1024);
    std::thread::Builder::new().name("audit-webhook".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            tracing::error!("cannot start the audit webhook runtime");
            return;
        };
        // The client's timers need the runtime's context.
        let _enter = rt.enter();
        let client = match reqwest::Client::builder().timeout(w.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the audit webhook client");
                return;
            }
        };
        while let Ok(line) = rx.recv() {
            let mut delivered = false;
            for attempt in 0..3u32 {
                let res = rt.block_on(
                    client
                        .post(w.url.clone())
                        .header("content-type", "application/json")
                        .body(line.clone())
                        .send(),
                );
                match res {
                    Ok(r) if r.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(r) => tracing::warn!(target: "portcullis::audit", status = r.status().as_u16(), attempt, "audit webhook refused an event"),
                    Err(e) => tracing::warn!(target: "portcullis::audit", error = %e, attempt, "audit webhook unreachable"),
                }
                std::thread::sleep(std::time::Duration::from_millis(250 << attempt));
            }
            if !delivered {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            pending.fetch_sub(1, Ordering::Release);
        }
    })?;
    Ok(tx)
}
