//! Scheduling hints for the gateway's own threads (Linux; elsewhere they
//! do nothing).
//!
//! Password hashing must never delay proxying: the hash threads run at
//! `SCHED_IDLE`. That is not quite enough on a CPU the hash shares with a
//! busy proxy thread: the Linux scheduler (EEVDF) still hands an
//! idle-policy thread the CPU at a timer tick once the proxy thread has
//! used its slice (1.4 ms by default here), and takes it back only at the
//! next tick (4 ms at `HZ=250`); a `perf sched` trace of a login flood
//! showed exactly that. So while passwords are being checked, and for a
//! second after, proxy threads ask for a 20 ms slice (`sched_setattr`),
//! long enough to drain a burst of requests before a tick can hand the CPU
//! over.
//!
//! Only then: a long slice kept all the time cost about 7 % of throughput
//! under `wrk` when the gateway, the app and the client share the CPUs
//! (the proxy threads held the CPUs the app and client were waiting for),
//! see docs/BENCHMARKS.md.
//!
//! The long slice stops the hand-over when the proxy thread's own slice
//! runs out, not when another thread's wake-up cancels its protection
//! (Pingora's timer thread wakes every 10 ms). So a hashing thread also
//! offers the CPU back every 0.5 ms while a check runs ([`CheckTimer`]):
//! a timer signal whose handler calls `sched_yield`, which lets the
//! scheduler give a waiting proxy thread the CPU then, not at the next
//! tick.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// How much nicer than the proxy the hashing threads are, where
/// `SCHED_IDLE` is not available.
const HASH_NICENESS: i32 = 10;

/// The slice a proxy thread asks for while passwords are being checked;
/// the kernel accepts 0.1–100 ms.
const PROXY_SLICE_NS: u64 = 20_000_000;

/// How long after the last check the proxy threads keep the long slice,
/// so steady logins do not flip it back and forth.
const HOLD_MS: u64 = 1_000;

/// Wall-clock milliseconds until which proxy threads should keep the long
/// slice; 0 when no check has run lately (the common case costs the proxy
/// one atomic load per request).
static LONG_SLICE_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Puts the calling hashing thread below every request-serving thread:
/// `SCHED_IDLE` runs it only on CPU time nothing else wants and lets a
/// waking proxy thread preempt it at once (a nice value alone still let a
/// hash hold the CPU for a scheduler slice, a few ms of tail latency).
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, HASH_NICENESS);
        }
    }
}

/// Runs one password check on a hashing thread: proxy threads take the
/// long slice for its duration and [`HOLD_MS`] after, and the thread's
/// [`CheckTimer`], if it has one, offers the CPU back meanwhile.
pub fn run_check<T>(timer: Option<&CheckTimer>, check: impl FnOnce() -> T) -> T {
    hashing();
    if let Some(t) = timer {
        t.arm();
    }
    let out = check();
    if let Some(t) = timer {
        t.disarm();
    }
    hashing();
    out
}

fn hashing() {
    LONG_SLICE_UNTIL.store(
        crate::clock::unix_millis_coarse() + HOLD_MS,
        Ordering::Relaxed,
    );
}

thread_local! {
    /// Whether this proxy thread holds the long slice now.
    static LONG_SLICE: Cell<bool> = const { Cell::new(false) };
}

/// Called for every request on a proxy thread: takes the long slice while
/// checks run and gives it back a second after the last one. Best effort:
/// kernels before 6.12 ignore the slice, and a refusal changes nothing
/// else.
#[inline]
pub fn proxy_thread() {
    let until = LONG_SLICE_UNTIL.load(Ordering::Relaxed);
    LONG_SLICE.with(|held| {
        if until == 0 && !held.get() {
            return;
        }
        let want = until != 0 && crate::clock::unix_millis_coarse() < until;
        if want != held.get() {
            held.set(want);
            #[cfg(target_os = "linux")]
            let _ = set_slice(if want { PROXY_SLICE_NS } else { 0 });
        }
        if !want && until != 0 {
            // Back to the one-load fast path, unless a check began since.
            let _ =
                LONG_SLICE_UNTIL.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    });
}

/// How often a hashing thread offers the CPU back during a check.
const OFFER_EVERY_NS: i64 = 500_000;

thread_local! {
    /// Offers made so far by this thread (const-initialised, so the signal
    /// handler can touch it).
    static OFFERS: Cell<u64> = const { Cell::new(0) };
}

/// A per-thread timer that makes the calling (hashing) thread offer its
/// CPU back every [`OFFER_EVERY_NS`] while armed. Create it on the thread
/// it serves; arm it around each check.
pub struct CheckTimer {
    #[cfg(target_os = "linux")]
    timer: libc::timer_t,
}

#[cfg(target_os = "linux")]
fn offer_signal() -> libc::c_int {
    // glibc keeps the first real-time signals for itself and reports the
    // first free one as SIGRTMIN; nothing else in the gateway uses these.
    libc::SIGRTMIN() + 6
}

#[cfg(target_os = "linux")]
extern "C" fn offer_cpu(_: libc::c_int) {
    // Only async-signal-safe work: a system call and an atomic add, with
    // errno kept for the interrupted code.
    // SAFETY: errno is thread-local and always valid to read and write.
    unsafe {
        let errno = *libc::__errno_location();
        libc::sched_yield();
        *libc::__errno_location() = errno;
    }
    OFFERS.with(|n| n.set(n.get() + 1));
}

impl CheckTimer {
    /// A timer for the calling thread, or `None` where the system has no
    /// thread-directed timers (the checks then simply run unbroken).
    pub fn for_this_thread() -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            static HANDLER: std::sync::Once = std::sync::Once::new();
            HANDLER.call_once(|| {
                // SAFETY: installs a handler that only does async-signal-safe
                // work; SA_RESTART keeps interrupted system calls going.
                unsafe {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = offer_cpu as extern "C" fn(libc::c_int) as usize;
                    sa.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut sa.sa_mask);
                    libc::sigaction(offer_signal(), &sa, std::ptr::null_mut());
                }
            });
            // SAFETY: a zeroed sigevent with its documented fields set, and
            // an out-pointer for the new timer's id.
            unsafe {
                let mut sev: libc::sigevent = std::mem::zeroed();
                sev.sigev_notify = libc::SIGEV_THREAD_ID;
                sev.sigev_signo = offer_signal();
                sev.sigev_notify_thread_id = libc::syscall(libc::SYS_gettid) as libc::c_int;
                let mut timer: libc::timer_t = std::ptr::null_mut();
                if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) != 0 {
                    return None;
                }
                Some(CheckTimer { timer })
            }
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Starts the offers (call just before a check).
    pub fn arm(&self) {
        #[cfg(target_os = "linux")]
        self.set(OFFER_EVERY_NS);
    }

    /// Stops them (call right after).
    pub fn disarm(&self) {
        #[cfg(target_os = "linux")]
        self.set(0);
    }

    #[cfg(target_os = "linux")]
    fn set(&self, ns: i64) {
        let every = libc::timespec {
            tv_sec: 0,
            tv_nsec: ns,
        };
        let spec = libc::itimerspec {
            it_interval: every,
            it_value: every,
        };
        // SAFETY: `self.timer` is a live timer made by `timer_create`.
        unsafe {
            libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut());
        }
    }
}

impl Drop for CheckTimer {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: deletes the timer made in `for_this_thread`, once.
        unsafe {
            libc::timer_delete(self.timer);
        }
    }
}

/// The scheduler slice (ns) in the text of a `/proc/…/task/…/sched` file,
/// if the kernel shows it.
pub fn slice_in(sched_file: &str) -> Option<u64> {
    sched_file
        .lines()
        .find(|l| l.starts_with("se.slice"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Whether this system honours the long slice (Linux 6.12+, and not
/// refused by a sandbox): a scratch thread asks for it and reads it back.
pub fn custom_slices_work() -> bool {
    #[cfg(target_os = "linux")]
    {
        std::thread::spawn(|| {
            set_slice(PROXY_SLICE_NS)
                && std::fs::read_to_string("/proc/thread-self/sched")
                    .ok()
                    .and_then(|s| slice_in(&s))
                    == Some(PROXY_SLICE_NS)
        })
        .join()
        .unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// `sched_setattr` keeping the thread's policy (`SCHED_OTHER`) and nice
/// value and setting only its slice (`sched_runtime`; 0 is the kernel's
/// default). False when the kernel refused.
#[cfg(target_os = "linux")]
fn set_slice(ns: u64) -> bool {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    // SAFETY: plain system calls on the calling thread, with a correctly
    // sized `sched_attr` (the 48-byte first version).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() != 0 || libc::sched_getscheduler(0) != libc::SCHED_OTHER {
            return false;
        }
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_OTHER as u32,
            flags: 0,
            nice,
            priority: 0,
            runtime: ns,
            deadline: 0,
            period: 0,
        };
        libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The slice as the kernel reports it (`se.slice` in
    /// `/proc/thread-self/sched`, in ns), if this kernel shows it.
    fn slice_ns() -> Option<u64> {
        slice_in(&std::fs::read_to_string("/proc/thread-self/sched").ok()?)
    }

    #[test]
    fn the_long_slice_is_taken_and_given_back_keeping_policy_and_nice() {
        std::thread::spawn(|| {
            let Some(default) = slice_ns() else {
                eprintln!("this kernel does not show its slices");
                return;
            };
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let took = set_slice(PROXY_SLICE_NS);
            let during = slice_ns();
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, nice);
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
            let _ = set_slice(0);
            assert_eq!(slice_ns(), Some(default), "given back");
            // Kernels without custom slices (before 6.12) keep their own.
            assert!(
                during == Some(PROXY_SLICE_NS) || during == Some(default),
                "{during:?}"
            );
            assert_eq!(custom_slices_work(), took && during == Some(PROXY_SLICE_NS));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_check_offers_the_cpu_while_it_runs_and_leaves_the_work_intact() {
        std::thread::spawn(|| {
            let timer = CheckTimer::for_this_thread().expect("thread timer");
            let hash = crate::passwords::hash_blocking("correct horse").expect("hash");
            let before = OFFERS.with(Cell::get);
            let started = std::time::Instant::now();
            let (right, wrong) = run_check(Some(&timer), || {
                // Checks and a sleep run through the signals unharmed.
                std::thread::sleep(std::time::Duration::from_millis(5));
                (
                    crate::legacy::verify_any("correct horse", &hash),
                    crate::legacy::verify_any("wrong horse", &hash),
                )
            });
            let armed_for = started.elapsed();
            assert!(right && !wrong);
            // Proxy threads are told to hold the long slice for a while.
            assert!(LONG_SLICE_UNTIL.load(Ordering::Relaxed) > crate::clock::unix_millis_coarse());
            let offers = OFFERS.with(Cell::get) - before;
            // Every 0.5 ms of wall time; the thread may lose the CPU to a
            // loaded machine, and pending signals of one kind merge.
            assert!(
                offers >= 4,
                "{offers} offers in {armed_for:?} with the timer armed"
            );
            let after = OFFERS.with(Cell::get);
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert_eq!(OFFERS.with(Cell::get), after, "disarmed");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_hash_thread_runs_at_idle_priority() {
        std::thread::spawn(|| {
            lower_this_thread();
            let policy = unsafe { libc::sched_getscheduler(0) };
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            assert!(policy == libc::SCHED_IDLE || nice == HASH_NICENESS);
        })
        .join()
        .unwrap();
    }
}
