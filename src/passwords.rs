//! Password hashing: argon2id with OWASP's parameters, run off the proxy
//! threads on a bounded pool.
//!
//! A login naming a real account costs one argon2 verification. One naming
//! no account costs the same time but not the same work: it waits as long
//! as a recent real check took (Authelia's answer to the same problem), and
//! runs a real check against a dummy hash only when there is no recent one
//! to copy (at most about once a second). So neither the answer nor its
//! timing tells an attacker which names are real, and a flood of made-up
//! names neither burns the CPU nor fills the pool that real users' logins
//! need.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// OWASP: 19 MiB, 2 iterations, 1 lane.
pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

fn argon2id() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

thread_local! {
    /// argon2's working memory, kept per hashing thread: a fresh 19 MiB
    /// allocation per check costs thousands of page faults, which made
    /// checks take half as long again as the hashing itself.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs argon2 into `out` with this thread's reusable working memory.
fn argon2_into(
    a: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < params.block_count() {
            blocks.resize(params.block_count(), argon2::Block::default());
        }
        a.hash_password_into_with_memory(password, salt, out, &mut blocks[..params.block_count()])
    })
}

/// Hashes a password to a PHC string. Blocking: call from a blocking thread.
pub fn hash_blocking(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| format!("hashing failed: {e}"))?;
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| format!("hashing failed: {e}"))?;
    let mut out = [0u8; 32];
    argon2_into(
        &argon2id(),
        &params,
        password.as_bytes(),
        salt_raw,
        &mut out,
    )
    .map_err(|e| format!("hashing failed: {e}"))?;
    let hash =
        argon2::password_hash::Output::new(&out).map_err(|e| format!("hashing failed: {e}"))?;
    Ok(format!(
        "$argon2id$v=19$m={M_COST_KIB},t={T_COST},p={P_COST}${}${hash}",
        salt.as_str()
    ))
}

/// Verifies against a stored hash. Blocking. Unknown formats never verify.
pub fn verify_blocking(password: &str, stored: &str) -> bool {
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    let algorithm = match h.algorithm.as_str() {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        _ => return false,
    };
    // Parameters come from the hash itself, so older hashes verify.
    let (Ok(params), Some(expected), Some(salt)) = (Params::try_from(&h), h.hash, h.salt) else {
        return false;
    };
    let version = match h.version {
        Some(v) => match Version::try_from(v) {
            Ok(v) => v,
            Err(_) => return false,
        },
        None => Version::V0x13,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let a = Argon2::new(algorithm, version, params.clone());
    if argon2_into(&a, &params, password.as_bytes(), salt_raw, &mut out).is_err() {
        return false;
    }
    subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), &out[..]).into()
}

/// True when a stored hash should be replaced by a fresh argon2id one on
/// the next successful login (weaker parameters or a legacy algorithm).
pub fn needs_upgrade(stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) if h.algorithm.as_str() == "argon2id" => match Params::try_from(&h) {
            Ok(p) => p.m_cost() < M_COST_KIB || p.t_cost() < T_COST,
            Err(_) => true,
        },
        _ => true,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("too many password checks are waiting; try again shortly")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// A bounded pool for argon2 work: a few dedicated threads (about one per
/// spare core) and a bounded queue; past that, callers are told to come
/// back (`503` with `Retry-After`) instead of piling up memory and latency.
///
/// The threads run at a lower scheduling priority than the proxy, so a
/// flood of logins cannot starve signed-in traffic of CPU: hashing only
/// uses what the proxy leaves.
pub struct HashPool {
    queue: std::sync::mpsc::SyncSender<Job>,
    in_flight: AtomicUsize,
    limit: usize,
    /// Attempts naming no account that are waiting out their time. Each
    /// holds a connection and its buffers, so they are bounded too; both
    /// kinds are refused when either bound is reached, so that a refusal
    /// never tells which kind an attempt was.
    waiting: AtomicUsize,
    dummy: String,
    /// Where each check's time on a hashing thread is recorded.
    timing: Option<prometheus::Histogram>,
    recent: RecentChecks,
}

/// Attempts naming no account that may wait out their time at once (see
/// `HashPool::waiting`).
const MAX_WAITING: usize = 1024;

/// How many recent real checks an unknown name's wait is drawn from.
const RECENT: usize = 16;
/// Older samples are not copied: the machine's load may have changed.
const FRESH_MS: u64 = 10_000;
/// Without a real check for this long, the next unknown name pays one.
const REFRESH_MS: u64 = 1_000;
/// Tokio's timer wakes up to a millisecond late (half on average); a real
/// check's answer has no such delay.
const TIMER_SLACK: Duration = Duration::from_micros(500);

/// How long recent checks of real accounts took, from the caller's side
/// (queue wait included), so that an attempt naming no account can take as
/// long without hashing. A torn read of one slot pairs a duration with a
/// neighbour's time stamp: harmless.
struct RecentChecks {
    took_us: [AtomicU64; RECENT],
    /// When each sample was taken, unix ms (0: empty).
    at_ms: [AtomicU64; RECENT],
    next: AtomicUsize,
    /// When an unknown name last claimed a real check to refresh these.
    refresh_claimed_ms: AtomicU64,
    /// The latest check's time however old, µs (0: none yet), for when no
    /// sample is fresh and another caller is already refreshing.
    last_us: AtomicU64,
}

impl RecentChecks {
    fn new() -> Self {
        RecentChecks {
            took_us: std::array::from_fn(|_| AtomicU64::new(0)),
            at_ms: std::array::from_fn(|_| AtomicU64::new(0)),
            next: AtomicUsize::new(0),
            refresh_claimed_ms: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
        }
    }

    fn record(&self, now_ms: u64, took: Duration) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % RECENT;
        self.took_us[i].store(took.as_micros() as u64, Ordering::Relaxed);
        self.at_ms[i].store(now_ms.max(1), Ordering::Relaxed);
        self.last_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// How long an attempt naming no account waits, or `None` when it is
    /// to run a real check instead: when the samples are over a second old
    /// (or all gone), one caller a second refreshes them. The others copy
    /// what there is, the latest check's time when nothing is fresh, so
    /// that a flood starting after a quiet spell does not send every
    /// attempt to the pool at once.
    fn wait_for(&self, now_ms: u64) -> Option<Duration> {
        let fresh = self.sample(now_ms);
        if let Some((took, newest_age)) = fresh {
            if newest_age < REFRESH_MS {
                return Some(took);
            }
        }
        if self.claim_refresh(now_ms) {
            return None;
        }
        fresh.map(|(took, _)| took).or_else(|| {
            let us = self.last_us.load(Ordering::Relaxed);
            use rand::Rng;
            (us > 0).then(|| {
                Duration::from_micros((us as f64 * rand::thread_rng().gen_range(0.95..1.05)) as u64)
            })
        })
    }

    /// The median of the fresh samples give or take 5 %, and the newest
    /// one's age; `None` when none is fresh. The median, not a random
    /// sample: a hashing thread's first check also pays for faulting in
    /// its working memory, and copying that one would make an unknown name
    /// stand out by taking twice as long.
    fn sample(&self, now_ms: u64) -> Option<(Duration, u64)> {
        let mut fresh = [0u64; RECENT];
        let mut n = 0;
        let mut newest_age = u64::MAX;
        for i in 0..RECENT {
            let at = self.at_ms[i].load(Ordering::Relaxed);
            let age = now_ms.saturating_sub(at);
            if at == 0 || age > FRESH_MS {
                continue;
            }
            newest_age = newest_age.min(age);
            fresh[n] = self.took_us[i].load(Ordering::Relaxed);
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let fresh = &mut fresh[..n];
        fresh.sort_unstable();
        use rand::Rng;
        let us = fresh[n / 2] as f64 * rand::thread_rng().gen_range(0.95..1.05);
        Some((Duration::from_micros(us as u64), newest_age))
    }

    /// True for one caller per `REFRESH_MS`.
    fn claim_refresh(&self, now_ms: u64) -> bool {
        let last = self.refresh_claimed_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= REFRESH_MS
            && self
                .refresh_claimed_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl HashPool {
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue + workers);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for n in 0..workers {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    // Linux applies a thread's nice value per thread (tid).
                    crate::sched::lower_this_thread();
                    let timer = crate::sched::CheckTimer::for_this_thread();
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => crate::sched::run_check(timer.as_ref(), job),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        // Made once, and timed: until a real check has run, that is the
        // best guess at how long one takes.
        let recent = RecentChecks::new();
        let started = Instant::now();
        let dummy = hash_blocking("portcullis-dummy-password-never-matches").unwrap_or_default();
        recent
            .last_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        HashPool {
            queue: tx,
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            limit: workers + queue,
            // What an unknown name is checked against when the copied
            // times need refreshing.
            dummy,
            timing: None,
            recent,
        }
    }

    /// Records how long each check runs on its hashing thread (not the
    /// time it waited in the queue): the pool's capacity is
    /// workers ÷ that time.
    pub fn timed(mut self, histogram: prometheus::Histogram) -> Self {
        self.timing = Some(histogram);
        self
    }

    /// Workers = cores - 1 (at least 1), queue = 32 per worker.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let workers = cores.saturating_sub(1).max(1);
        Self::new(workers, 32 * workers)
    }

    /// Checks currently queued or running.
    pub fn depth(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(&self.in_flight);
        if n >= self.limit || self.waiting.load(Ordering::Acquire) >= MAX_WAITING {
            return Err(PoolError::Busy);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let timing = self.timing.clone();
        let job: Job = Box::new(move || {
            let started = std::time::Instant::now();
            let out = f();
            if let Some(h) = timing {
                h.observe(started.elapsed().as_secs_f64());
            }
            let _ = tx.send(out);
        });
        self.queue.try_send(job).map_err(|_| PoolError::Busy)?;
        rx.await.map_err(|e| PoolError::Failed(e.to_string()))
    }

    /// Verifies `password` against `stored`. With no stored hash (no such
    /// account, or one that cannot sign in this way), answers `false` after
    /// as long as a real check takes, and as `Busy` exactly when a real check
    /// would be refused (see the module's comment).
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PoolError> {
        let Some(hash) = stored else {
            return self.verify_nobody(password).await;
        };
        // Only checks at today's parameters say how long an unknown name
        // should take; a legacy hash takes its own time anyway.
        let typical = !needs_upgrade(&hash);
        let started = Instant::now();
        let ok = self
            .run(move || crate::legacy::verify_any(&password, &hash))
            .await?;
        if typical {
            self.recent
                .record(crate::clock::unix_millis_coarse(), started.elapsed());
        }
        Ok(ok)
    }

    async fn verify_nobody(&self, password: String) -> Result<bool, PoolError> {
        let w = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(&self.waiting);
        if w >= MAX_WAITING || self.in_flight.load(Ordering::Acquire) >= self.limit {
            return Err(PoolError::Busy);
        }
        let now = crate::clock::unix_millis_coarse();
        match self.recent.wait_for(now) {
            Some(took) => {
                tokio::time::sleep(took.saturating_sub(TIMER_SLACK)).await;
            }
            None => {
                let hash = self.dummy.clone();
                let started = Instant::now();
                self.run(move || crate::legacy::verify_any(&password, &hash))
                    .await?;
                self.recent.record(now, started.elapsed());
            }
        }
        Ok(false)
    }

    pub async fn hash(&self, password: String) -> Result<String, PoolError> {
        self.run(move || hash_blocking(&password))
            .await?
            .map_err(PoolError::Failed)
    }
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_blocking("correct horse", &h));
        assert!(!verify_blocking("wrong", &h));
        assert!(!needs_upgrade(&h));
        assert!(!verify_blocking("x", "not a hash"));
        assert_eq!(crate::legacy::algorithm_name(&h), "argon2id");
    }

    #[test]
    fn agrees_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Ours verifies the crate's hashes, including other variants and
        // parameters; the crate verifies ours.
        let salt = SaltString::generate(&mut OsRng);
        for (alg, m, t) in [
            (Algorithm::Argon2id, 8192, 1),
            (Algorithm::Argon2i, 4096, 3),
            (Algorithm::Argon2d, 1024, 2),
        ] {
            let a = Argon2::new(alg, Version::V0x13, Params::new(m, t, 1, None).unwrap());
            let h = a.hash_password(b"pw one", &salt).unwrap().to_string();
            assert!(verify_blocking("pw one", &h), "{h}");
            assert!(!verify_blocking("pw two", &h), "{h}");
        }
        let ours = hash_blocking("pw three").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"pw three", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"pw four", &parsed)
            .is_err());
    }

    #[tokio::test]
    async fn pool_times_each_check_on_its_thread() {
        let h = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        let pool = HashPool::new(1, 4).timed(h.clone());
        let stored = hash_blocking("pw").unwrap();
        assert_eq!(
            pool.verify("pw".into(), Some(stored.clone())).await,
            Ok(true)
        );
        assert_eq!(pool.verify("nope".into(), Some(stored)).await, Ok(false));
        // Two real argon2id runs of milliseconds each; the dummy hash made
        // at start-up is not a check.
        assert_eq!(h.get_sample_count(), 2);
        assert!(h.get_sample_sum() > 0.002, "{}", h.get_sample_sum());
    }

    #[tokio::test]
    async fn an_unknown_name_takes_as_long_as_a_real_check_without_hashing() {
        let h = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        let pool = HashPool::new(1, 4).timed(h.clone());
        // With nothing to copy yet, the first unknown name pays a real check
        // against the dummy hash.
        let t = Instant::now();
        assert_eq!(pool.verify("pw".into(), None).await, Ok(false));
        let first = t.elapsed();
        assert_eq!(h.get_sample_count(), 1);
        let stored = hash_blocking("pw").unwrap();
        let t = Instant::now();
        assert_eq!(pool.verify("wrong".into(), Some(stored)).await, Ok(false));
        let real = t.elapsed();
        assert_eq!(h.get_sample_count(), 2);
        // Now they copy the recent checks' times instead of hashing.
        let copying = Instant::now();
        for _ in 0..4 {
            let before = h.get_sample_count();
            let t = Instant::now();
            assert_eq!(pool.verify("pw".into(), None).await, Ok(false));
            let took = t.elapsed();
            if h.get_sample_count() > before {
                // This one refreshed the samples: it was a real check, timed
                // as one by definition (and the load may have changed).
                continue;
            }
            let (lo, hi) = (first.min(real), first.max(real));
            assert!(
                took.as_secs_f64() >= lo.as_secs_f64() * 0.9 - 0.001,
                "unknown name answered in {took:?}; real checks took {first:?} and {real:?}"
            );
            // Generous above: a loaded machine may wake the sleeper late.
            assert!(took < hi * 3 + Duration::from_millis(20), "{took:?}");
        }
        // One refresh a second is by design; on a loaded machine the four
        // copies can span more than a second. More than that is hashing.
        let refreshes = copying.elapsed().as_millis() as u64 / REFRESH_MS;
        assert!(
            h.get_sample_count() <= 2 + refreshes,
            "an unknown name ran argon2: {} checks in {:?}",
            h.get_sample_count(),
            copying.elapsed()
        );
    }

    #[tokio::test]
    async fn waiting_unknown_names_are_bounded_and_refuse_both_kinds_alike() {
        let pool = Arc::new(HashPool::new(1, 4));
        pool.recent.record(
            crate::clock::unix_millis_coarse(),
            Duration::from_millis(400),
        );
        let waiting: Vec<_> = (0..MAX_WAITING)
            .map(|_| {
                let p = Arc::clone(&pool);
                tokio::spawn(async move { p.verify("x".into(), None).await })
            })
            .collect();
        while pool.waiting.load(Ordering::Acquire) < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        let stored = hash_blocking("pw").unwrap();
        // Past the bound, a real account and a made-up one get the same
        // refusal, and no argon2 runs for either.
        assert_eq!(
            pool.verify("pw".into(), Some(stored.clone())).await,
            Err(PoolError::Busy)
        );
        assert_eq!(pool.verify("x".into(), None).await, Err(PoolError::Busy));
        for w in waiting {
            assert_eq!(w.await.unwrap(), Ok(false));
        }
        assert_eq!(pool.verify("pw".into(), Some(stored)).await, Ok(true));
    }

    #[test]
    fn recent_checks_go_stale_and_one_caller_refreshes_them() {
        let r = RecentChecks::new();
        assert!(r.sample(50_000).is_none());
        r.record(50_000, Duration::from_millis(20));
        r.record(50_100, Duration::from_millis(30));
        for _ in 0..50 {
            let (d, age) = r.sample(50_300).unwrap();
            // The median of two is the upper one.
            assert!(
                d >= Duration::from_micros(28_500) && d <= Duration::from_micros(31_500),
                "{d:?}"
            );
            assert_eq!(age, 200);
        }
        // Past FRESH_MS nothing is copied any more.
        assert!(r.sample(50_100 + FRESH_MS + 1).is_none());
        // One refresh per REFRESH_MS, whoever asks.
        assert!(r.claim_refresh(60_000));
        assert!(!r.claim_refresh(60_000 + REFRESH_MS - 1));
        assert!(r.claim_refresh(60_000 + REFRESH_MS));
    }

    #[test]
    fn without_fresh_samples_one_caller_checks_and_the_rest_copy_the_latest() {
        let r = RecentChecks::new();
        r.record(10_000, Duration::from_millis(40));
        // Fresh: everyone copies.
        assert!(r.wait_for(10_500).is_some());
        // Over a second old: one caller refreshes, the others copy.
        assert_eq!(r.wait_for(11_500), None);
        let d = r.wait_for(11_600).unwrap();
        assert!(
            d >= Duration::from_millis(38) && d <= Duration::from_millis(42),
            "{d:?}"
        );
        // Nothing fresh at all (a quiet spell): still one real check a
        // second, and the rest wait as long as the latest check took
        // instead of all queueing for the pool.
        let quiet = 10_000 + FRESH_MS + 5_000;
        assert_eq!(r.wait_for(quiet), None);
        for _ in 0..100 {
            let d = r.wait_for(quiet + 10).unwrap();
            assert!(
                d >= Duration::from_millis(38) && d <= Duration::from_millis(42),
                "{d:?}"
            );
        }
    }

    #[tokio::test]
    async fn pool_refuses_past_its_bound() {
        let pool = Arc::new(HashPool::new(1, 0));
        let h = hash_blocking("pw").unwrap();
        let p2 = Arc::clone(&pool);
        let h2 = h.clone();
        let first = tokio::spawn(async move { p2.verify("pw".into(), Some(h2)).await });
        // Let the first take the only slot.
        while pool.depth() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.verify("pw".into(), Some(h)).await,
            Err(PoolError::Busy)
        );
        assert_eq!(first.await.unwrap(), Ok(true));
        assert_eq!(pool.verify("pw".into(), None).await, Ok(false));
    }
}
