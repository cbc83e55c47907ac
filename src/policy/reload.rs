//! Live policy: an atomically swapped [`Policy`] and the means to reload it.
//!
//! A request takes one `Arc<Policy>` at its start and keeps it to the end,
//! so a reload never applies half a policy to a request. A reload parses
//! and validates every file first; a broken edit is refused with its errors
//! logged, and the last good policy stays in force.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::Policy;
use crate::diag::Report;

pub struct PolicyHandle {
    current: ArcSwap<Policy>,
    files: Vec<PathBuf>,
    case_insensitive: bool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Unix seconds of the last successful load.
    pub last_good: AtomicU64,
    /// The last reload was refused: the files on disk are not what is in
    /// force (shown by `/health`).
    pub stale: AtomicBool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads the policy files and runs their `[[test]]` cases; a failed case
/// refuses the policy like an error in it.
fn load_tested(files: &[PathBuf], case_insensitive: bool) -> Result<(Policy, Report), Report> {
    let (policy, warnings) = super::load::load(files, case_insensitive)?;
    let failures = super::load::test_failures(&super::load::run_tests(&policy));
    if failures.has_errors() {
        let mut report = warnings;
        report.extend(failures);
        return Err(report);
    }
    Ok((policy, warnings))
}

impl PolicyHandle {
    pub fn load(files: Vec<PathBuf>, case_insensitive: bool) -> Result<(Self, Report), Report> {
        let (policy, warnings) = load_tested(&files, case_insensitive)?;
        Ok((
            PolicyHandle {
                current: ArcSwap::from_pointee(policy),
                files,
                case_insensitive,
                reloads_ok: AtomicU64::new(0),
                reloads_failed: AtomicU64::new(0),
                last_good: AtomicU64::new(now_secs()),
                stale: AtomicBool::new(false),
            },
            warnings,
        ))
    }

    /// A handle on a policy built in memory (demo, tests).
    pub fn fixed(policy: Policy) -> Self {
        PolicyHandle {
            current: ArcSwap::from_pointee(policy),
            files: Vec::new(),
            case_insensitive: false,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_good: AtomicU64::new(now_secs()),
            stale: AtomicBool::new(false),
        }
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Re-reads every policy file; swaps only if all of them validate.
    pub fn reload(&self, cause: &str) -> Result<(), Report> {
        if self.files.is_empty() {
            return Ok(());
        }
        match load_tested(&self.files, self.case_insensitive) {
            Ok((policy, warnings)) => {
                let rules = policy.rules.len();
                self.current.store(Arc::new(policy));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.last_good.store(now_secs(), Ordering::Relaxed);
                self.stale.store(false, Ordering::Relaxed);
                for w in warnings.warnings() {
                    tracing::warn!(target: "portcullis::policy", diagnostic = %w, "policy warning");
                }
                tracing::info!(target: "portcullis::policy", event = "policy_reloaded", outcome = "ok", cause, rules, "policy reloaded");
                Ok(())
            }
            Err(report) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.stale.store(true, Ordering::Relaxed);
                for e in report.errors() {
                    tracing::error!(target: "portcullis::policy", diagnostic = %e, "policy error");
                }
                tracing::error!(
                    target: "portcullis::policy",
                    event = "policy_reloaded",
                    outcome = "refused",
                    cause,
                    errors = report.errors().count(),
                    "policy reload refused; the last good policy stays in force"
                );
                Err(report)
            }
        }
    }

    /// Watches the policy files' folders (editors often save by writing a
    /// new file and renaming it over the old one, which a watch on the file
    /// itself would miss) and reloads after changes settle.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        use notify::{RecursiveMode, Watcher};
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let names: Vec<PathBuf> = self.files.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    if ev.kind.is_access() {
                        return;
                    }
                    if ev
                        .paths
                        .iter()
                        .any(|p| names.iter().any(|n| same_file_name(p, n)))
                    {
                        let _ = tx.send(());
                    }
                }
            })?;
        let mut dirs: Vec<PathBuf> = self
            .files
            .iter()
            .filter_map(|f| f.parent().map(|p| p.to_path_buf()))
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Coalesce the burst of events one save produces.
                    std::thread::sleep(Duration::from_millis(150));
                    while rx.try_recv().is_ok() {}
                    let _ = me.reload("file_changed");
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(watcher)
    }
}

fn same_file_name(event_path: &std::path::Path, policy_file: &std::path::Path) -> bool {
    event_path == policy_file
        || (event_path.file_name() == policy_file.file_name()
            && event_path.parent().map(|p| p.canonicalize().ok())
                == policy_file.parent().map(|p| p.canonicalize().ok()))
}
