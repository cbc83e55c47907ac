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
    pub dropped: AtomicU64,
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

impl Audit {
    pub fn new(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            None => None,
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                let (tx, rx) = sync_channel::<String>(4096);
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
                        }
                        let _ = f.flush();
                    })?;
                Some(tx)
            }
        };
        Ok(Audit {
            file,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn emit(&self, ev: Event) {
        let line = Value::Object(ev.fields).to_string();
        tracing::info!(target: "portcullis::audit", "{line}");
        if let Some(tx) = &self.file {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
