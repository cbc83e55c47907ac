//! Scheduling hints for the gateway's own threads (Linux; elsewhere they
//! do nothing).
//!
//! Password hashing must never delay proxying: the hash threads run at
//! `SCHED_IDLE`. That is not quite enough on a CPU the hash shares with a
//! busy proxy thread: the Linux scheduler (EEVDF) still hands an
//! idle-policy thread the CPU at a timer tick once the proxy thread has
//! used its slice, and takes it back only at the next tick (4 ms at
//! `HZ=250`). Asking for a 20 ms slice for the proxy threads
//! (`sched_setattr`) stopped that in the pinned benchmark, but cost about
//! 7 % of throughput under `wrk` when the gateway, the app and the client
//! share the CPUs, the common case, so it was taken out again
//! (docs/BENCHMARKS.md).

/// How much nicer than the proxy the hashing threads are, where
/// `SCHED_IDLE` is not available.
const HASH_NICENESS: i32 = 10;

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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

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
