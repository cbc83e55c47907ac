//! Scheduling hints for the gateway's own threads (Linux; elsewhere they
//! do nothing).
//!
//! Password hashing must never delay proxying: the hash threads run at
//! `SCHED_IDLE`, and the proxy threads ask for a longer time slice. With
//! only the first, the Linux scheduler (EEVDF) still hands an idle-policy
//! thread the CPU at a timer tick when a busy proxy thread has used up its
//! default 3 ms slice, and takes it back only at the next tick (4 ms at
//! `HZ=250`): a `perf sched` trace of a login flood showed exactly that.

use std::cell::Cell;

/// How much nicer than the proxy the hashing threads are, where
/// `SCHED_IDLE` is not available.
const HASH_NICENESS: i32 = 10;

/// The slice a proxy thread asks for. Long enough to drain a burst of
/// requests without a tick handing the CPU to a hash; the scheduler
/// accepts 0.1–100 ms.
const PROXY_SLICE_NS: u64 = 20_000_000;

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

thread_local! {
    static SLICE_ASKED: Cell<bool> = const { Cell::new(false) };
}

/// Called for every request on a proxy thread; asks once per thread for
/// [`PROXY_SLICE_NS`]. Best effort: kernels before 6.12 ignore the slice,
/// and a refusal changes nothing else.
pub fn proxy_thread() {
    if SLICE_ASKED.with(|c| c.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    set_slice(PROXY_SLICE_NS);
}

/// `sched_setattr` keeping the thread's policy (`SCHED_OTHER`) and nice
/// value and setting only its slice (`sched_runtime`).
#[cfg(target_os = "linux")]
fn set_slice(ns: u64) {
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
            return;
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
        libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The slice as the kernel reports it (`/proc/thread-self/sched`), if
    /// this kernel shows it.
    fn slice_ns() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        s.lines()
            .find(|l| l.starts_with("se.slice"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|ms| (ms * 1e6) as u64)
    }

    #[test]
    fn a_proxy_thread_asks_for_its_slice_once_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            proxy_thread();
            proxy_thread();
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, before);
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
            // Kernels without custom slices (before 6.12) keep their own.
            if let Some(ns) = slice_ns() {
                if ns == PROXY_SLICE_NS {
                    return;
                }
                eprintln!("slice {ns} ns: this kernel ignores custom slices");
            }
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
