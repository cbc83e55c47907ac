//! Running the gateway: a Pingora server with the proxy service and a
//! housekeeping service (session sweeping, SIGHUP reloads, the admin
//! socket, metrics).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::app::App;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::policy::reload::PolicyHandle;
use crate::store::Store;

/// Builds the Pingora server configuration from ours (Pingora's own TOML
/// loader would silently ignore unknown keys).
pub fn server_conf(cfg: &Config) -> anyhow::Result<ServerConf> {
    let dir = &cfg.storage.path;
    let abs = |p: &Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let conf = ServerConf {
        threads: cfg.server.threads,
        work_stealing: true,
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.grace_period.as_secs() + 5),
        pid_file: abs(&dir.join("portcullis.pid")),
        upgrade_sock: abs(&dir.join("upgrade.sock")),
        ca_file: cfg.upstream.ca_file.as_deref().map(abs),
        ..ServerConf::default()
    };
    conf.validate()
        .map_err(|e| anyhow::anyhow!("invalid server settings: {e}"))
}

/// Loads the policy and runs the gateway until SIGTERM/SIGINT.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    let (policy, warnings) =
        PolicyHandle::load(cfg.policy.files.clone(), cfg.policy.case_insensitive)
            .map_err(|report| anyhow::anyhow!("the policy does not validate:\n{report}"))?;
    for w in warnings.warnings() {
        tracing::warn!(diagnostic = %w, "policy warning");
    }
    serve_with(cfg, Arc::new(policy))
}

pub fn serve_with(cfg: Config, policy: Arc<PolicyHandle>) -> anyhow::Result<()> {
    raise_open_files_limit();
    // Pingora waits 30 s for a busy address before giving up; say so now.
    for addr in cfg
        .server
        .listen
        .iter()
        .chain(cfg.metrics.as_ref().map(|m| &m.listen))
    {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            anyhow::bail!(
                "cannot listen on {addr}: {e}; stop whatever is using it, or choose another address ([server] listen, or --listen for the demo)"
            );
        }
    }
    let store = Store::open(&cfg.storage.path, cfg.storage.cache_bytes)
        .with_context(|| format!("cannot open the store at {}", cfg.storage.path.display()))?;
    let watch = cfg.policy.watch;
    let listen = cfg.server.listen.clone();
    let conf = server_conf(&cfg)?;
    let app = Arc::new(App::new(cfg, Arc::clone(&policy), store)?);
    let _watcher = if watch && !policy.files().is_empty() {
        match policy.watch() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch policy files; reload with SIGHUP instead");
                None
            }
        }
    } else {
        None
    };

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, Gateway::new(Arc::clone(&app)));
    for l in &listen {
        proxy.add_tcp(&l.to_string());
    }
    server.add_service(proxy);
    let admin = crate::admin::bind(&app.cfg.storage.path)
        .map_err(|e| tracing::warn!(error = %e, "cannot create the admin socket; account commands need the gateway stopped"))
        .ok();
    server.add_service(background_service(
        "housekeeping",
        Housekeeping {
            app: Arc::clone(&app),
            admin: std::sync::Mutex::new(admin),
        },
    ));
    tracing::info!(
        listen = %listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        upstream = %app.cfg.upstream.url,
        public_url = %app.cfg.server.public_url,
        rules = policy.current().rules.len(),
        "portcullis is starting"
    );
    if !crate::sched::custom_slices_work() {
        tracing::info!(
            "the kernel does not honour custom scheduler slices (Linux 6.12+): during a login flood, signed-in requests can wait up to a timer tick behind a password check"
        );
    }
    let mut phases = server.watch_execution_phase();
    let grace = app.cfg.server.grace_period;
    let pingora = std::thread::Builder::new()
        .name("pingora-main".into())
        .spawn(move || server.run(RunArgs::default()))
        .context("cannot start the server thread")?;
    let crashed = wait_until_stopped(&mut phases, pingora, grace).is_err();
    // Keep idle timers honest across a restart, then make it all durable.
    if let Err(e) = app.sessions.persist_all() {
        tracing::error!(error = %e, "could not save session state at shutdown");
    }
    let _ = app.store.flush();
    let _ = std::fs::remove_file(crate::admin::socket_path(&app.cfg.storage.path));
    if !app.audit.drain(AUDIT_DRAIN) {
        tracing::warn!("audit events still queued at exit were lost (a slow webhook?)");
    }
    if crashed {
        // A supervisor restarts on failure: say it was one.
        anyhow::bail!("the server thread panicked; sessions were saved");
    }
    tracing::info!("portcullis stopped");
    Ok(())
}

/// How long a stopping gateway waits for queued audit events (a webhook
/// retries for about two seconds).
const AUDIT_DRAIN: Duration = Duration::from_secs(3);

/// How long no request may be in flight before a graceful stop ends: a
/// connection accepted just before the listeners closed gets to send its
/// request.
const DRAIN_SETTLE: Duration = Duration::from_millis(200);

/// Returns once the server has stopped. In a graceful stop (SIGTERM, or
/// the old process of an upgrade) that is as soon as the requests in
/// flight have finished: Pingora itself would sleep out the whole grace
/// period, refusing connections all the while, so a restart of an idle
/// gateway took `grace_period`. Its thread is left sleeping; the process
/// ends when `serve` returns, after the store is flushed.
fn wait_until_stopped(
    phases: &mut tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>,
    pingora: std::thread::JoinHandle<()>,
    grace: Duration,
) -> std::thread::Result<()> {
    use pingora::server::ExecutionPhase;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => {
                if drained(grace) {
                    tracing::info!("no request in flight; stopping");
                    return Ok(());
                }
                break;
            }
            Ok(ExecutionPhase::Terminated) | Err(RecvError::Closed) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
        }
    }
    pingora.join()
}

/// Waits up to `grace` for no request to be in flight for [`DRAIN_SETTLE`].
fn drained(grace: Duration) -> bool {
    let deadline = std::time::Instant::now() + grace;
    let mut idle_since: Option<std::time::Instant> = None;
    while std::time::Instant::now() < deadline {
        if crate::gateway::in_flight() == 0 {
            if idle_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= DRAIN_SETTLE
            {
                return true;
            }
        } else {
            idle_since = None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

struct Housekeeping {
    app: Arc<App>,
    admin: std::sync::Mutex<Option<std::os::unix::net::UnixListener>>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let app = Arc::clone(&self.app);
        let listener = self.admin.lock().ok().and_then(|mut l| l.take());
        let admin = tokio::spawn({
            let app = Arc::clone(&app);
            async move {
                match listener {
                    Some(l) => {
                        if let Err(e) = crate::admin::serve(app, l).await {
                            tracing::error!(error = %e, "admin socket failed");
                        }
                    }
                    None => {
                        tracing::warn!("no admin socket: account commands need the gateway stopped")
                    }
                }
            }
        });
        let metrics = app
            .cfg
            .metrics
            .clone()
            .map(|m| tokio::spawn(serve_metrics(Arc::clone(&app), m.listen)));
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let sweeper = spawn_sweeper(Arc::clone(&app));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let p = Arc::clone(&app.policy);
                    let _ = tokio::task::spawn_blocking(move || p.reload("sighup")).await;
                }
            }
        }
        sweeper.store(true, Ordering::Relaxed);
        admin.abort();
        if let Some(m) = metrics {
            m.abort();
        }
    }
}

/// Every proxied request holds two descriptors (client and upstream), and
/// the usual soft limit of 1024 would refuse connections at about 500
/// concurrent clients. The hard limit is what the operator allows; use it.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill, and setrlimit
    // only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::debug!(
                from = before,
                to = lim.rlim_max,
                "raised the open files limit"
            );
        } else {
            tracing::warn!(
                limit = before,
                "cannot raise the open files limit; raise it (ulimit -n) for many concurrent clients"
            );
        }
    }
}

/// Writes back last-seen times every second, and sweeps expired sessions
/// every `sweep_interval`, from a thread of its own at low priority: a
/// sweep reads every session, and neither must compete with requests.
fn spawn_sweeper(app: Arc<App>) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let every = app
        .cfg
        .session
        .sweep_interval
        .max(Duration::from_millis(100));
    let spawned = std::thread::Builder::new()
        .name("session-sweeper".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            let step = Duration::from_millis(100);
            let mut since_sweep = Duration::ZERO;
            let mut since_write = Duration::ZERO;
            let mut failing = false;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                since_sweep += step;
                since_write += step;
                if since_write >= WRITE_BACK_EVERY {
                    since_write = Duration::ZERO;
                    // A full or failing disk fails every second: say so once,
                    // and again when it recovers, not sixty times a minute.
                    match (app.sessions.write_back(), failing) {
                        (Ok(_), true) => {
                            failing = false;
                            tracing::info!("writing back session activity works again");
                        }
                        (Ok(_), false) => {}
                        (Err(e), false) => {
                            failing = true;
                            tracing::error!(error = %e, "writing back session activity failed; sessions may expire early after a restart until it works again");
                        }
                        (Err(e), true) => {
                            tracing::debug!(error = %e, "writing back session activity still fails")
                        }
                    }
                }
                if since_sweep >= every {
                    since_sweep = Duration::ZERO;
                    match app.sessions.sweep() {
                        Ok(n) if n > 0 => tracing::debug!(removed = n, "expired sessions swept"),
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "session sweep failed"),
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the session sweeper");
    }
    stop
}

/// How often queued last-seen times reach the store. A crash loses at most
/// this much activity (plus sled's own flush interval).
const WRITE_BACK_EVERY: Duration = Duration::from_secs(1);

fn update_gauges(app: &App) {
    let m = &app.metrics;
    m.sessions_active.set(app.sessions.count() as i64);
    m.hash_queue.set(app.hasher.depth() as i64);
    m.policy_reloads.with_label_values(&["ok"]).reset();
    m.policy_reloads
        .with_label_values(&["ok"])
        .inc_by(app.policy.reloads_ok.load(Ordering::Relaxed));
    m.policy_reloads.with_label_values(&["refused"]).reset();
    m.policy_reloads
        .with_label_values(&["refused"])
        .inc_by(app.policy.reloads_failed.load(Ordering::Relaxed));
    m.policy_last_good
        .set(app.policy.last_good.load(Ordering::Relaxed) as i64);
    m.audit_dropped
        .set(app.audit.dropped.load(Ordering::Relaxed) as i64);
    m.access_dropped.set(crate::access::dropped() as i64);
}

async fn serve_metrics(app: Arc<App>, addr: std::net::SocketAddr) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, %addr, "cannot listen for metrics");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let app = Arc::clone(&app);
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        update_gauges(&app);
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(app.metrics.render())))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"not found\n")))
                    };
                    Ok::<_, std::convert::Infallible>(
                        resp.unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new()))),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
