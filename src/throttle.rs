//! Login throttling, consulted before any password is hashed so that a
//! guessing attacker cannot make the gateway spend Argon2 time for free.
//!
//! # Design goal
//!
//! An attacker at one IP is slowed quickly; a real user at another IP is not
//! locked out by that attacker. Three counters serve that goal:
//!
//! * **(account, client)** — few free failures, then exponential back-off.
//!   It locks only the attacker's own pair, so the account's owner, coming
//!   from elsewhere, is unaffected.
//! * **client** — more free failures (shared NATs are common), then the same
//!   back-off. It slows a client that sprays many accounts, including a flood
//!   of random user names, whatever the account counters say.
//! * **account** — no back-off at all, only a high hourly cap (ASVS 5.0 asks
//!   for at most 100 failures per account per hour). It bounds distributed
//!   guessing without letting a botnet lock the owner out cheaply.
//!
//! The hourly cap is a sliding hour kept in one-minute buckets rather than a
//! fixed window, because a fixed window lets an attacker put a full quota at
//! the end of one window and another at the start of the next. The buckets
//! keep a failure counted for between 60 and 61 minutes, so no 60-minute span
//! ever sees more than the cap (as long as callers honour [`Throttle::check`];
//! concurrent attempts that all passed `check` can overshoot by their number).
//!
//! IPv6 clients are counted per /64, since a single host usually controls a
//! whole /64 and could otherwise use a fresh address for every guess;
//! IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
//!
//! Memory is bounded by [`ThrottleConfig::max_entries`]. Accounts are kept as
//! keyed 64-bit hashes, so an attacker choosing enormous user names cannot
//! inflate an entry. When a shard is full, expired entries go first, then the
//! entries that are not currently refusing anything, oldest first; entries
//! that are refusing go last, so flooding the table does not free the
//! flooder (or the attacker of a particular pair) from its back-off.

use parking_lot::Mutex;
use std::{
    collections::{hash_map::RandomState, HashMap},
    fmt,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher},
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

/// A key whose last failure is this old is forgotten.
const DECAY: Duration = Duration::from_secs(3600);
const SLOT_SECS: u64 = 60;
/// One more bucket than an hour has minutes: the current, partly elapsed
/// minute plus the 60 before it, so that a failure is never dropped before a
/// full hour has passed.
const BUCKETS: usize = 61;
/// Small tables are split less: each shard evicts on its own, so tiny shards
/// would start evicting while the table as a whole still had room.
const MIN_ENTRIES_PER_SHARD: usize = 4096;
const MAX_SHARDS: usize = 16;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// failures allowed per (account, client IP) before back-off starts; default 5
    pub account_ip_free: u32,
    /// failures allowed per client IP (any account) before back-off; default 30
    pub ip_free: u32,
    /// hard cap of failures per account per hour from all IPs (ASVS: ≤ 100); default 100.
    /// 0 refuses every attempt for an hour after any failure.
    pub account_per_hour: u32,
    /// longest back-off, seconds; default 900. Values above an hour act as an
    /// hour, because a key is forgotten an hour after its last failure.
    pub max_backoff_secs: u64,
    /// memory bound: max tracked keys; default 100_000. Each failure may
    /// need three keys, so very small values weaken throttling.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            account_ip_free: 5,
            ip_free: 30,
            account_per_hour: 100,
            max_backoff_secs: 900,
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    Pair(u64, IpAddr),
    Client(IpAddr),
    Account(u64),
    /// A known browser's device cookie for an account: it stands in for
    /// the account's cap, and has a limit of its own, as the pair's, so a
    /// copied cookie gains an attacker nothing from many addresses.
    Device(u64, u64),
}

/// An [`Id`] with its keyed hash, computed once per attempt and then used
/// both to pick the shard and as the shard map's hash, instead of hashing
/// every key again for each map operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    id: Id,
    spread: u64,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.spread);
    }
}

/// Passes a [`Key`]'s precomputed hash through unchanged.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `Key` is hashed with this;
        // any deterministic mixing will do.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Entry {
    last_failure: Instant,
    /// All failures for back-off keys; for account keys, the failures still
    /// held in `window`, an upper bound on those of the last hour. Kept here
    /// so that the usual "far below the cap" answer needs no trip through
    /// the box, which matters when a sweep ranks a whole shard.
    failures: u32,
    /// Only account keys pay for the buckets.
    window: Option<Box<HourWindow>>,
}

impl Entry {
    fn fresh(key: &Key, now: Instant) -> Self {
        let window = match key.id {
            Id::Account(_) => Some(Box::new(HourWindow::new(now))),
            Id::Pair(..) | Id::Client(_) | Id::Device(..) => None,
        };
        Self {
            last_failure: now,
            failures: 0,
            window,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_failure) >= DECAY
    }

    fn record(&mut self, now: Instant) {
        // Callers on different threads may pass slightly out-of-order
        // instants; keeping the latest stops the key from ageing backwards.
        self.last_failure = self.last_failure.max(now);
        self.failures = match &mut self.window {
            None => self.failures.saturating_add(1),
            Some(window) => u32::try_from(window.record(now)).unwrap_or(u32::MAX),
        };
    }
}

/// Failure counts per minute for the last hour of one account.
struct HourWindow {
    origin: Instant,
    latest_slot: u64,
    /// Sum of all buckets.
    stored: u64,
    buckets: [u32; BUCKETS],
}

impl HourWindow {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            latest_slot: 0,
            stored: 0,
            buckets: [0; BUCKETS],
        }
    }

    fn bucket(slot: u64) -> usize {
        // The remainder is below BUCKETS, so it always fits.
        (slot % BUCKETS as u64) as usize
    }

    fn slot(&self, now: Instant) -> u64 {
        let slot = now.saturating_duration_since(self.origin).as_secs() / SLOT_SECS;
        slot.max(self.latest_slot)
    }

    /// Returns how many failures the buckets now hold.
    fn record(&mut self, now: Instant) -> u64 {
        let slot = self.slot(now);
        if slot - self.latest_slot >= BUCKETS as u64 {
            self.buckets = [0; BUCKETS];
            self.stored = 0;
        } else {
            for stale in self.latest_slot + 1..=slot {
                let count = std::mem::take(&mut self.buckets[Self::bucket(stale)]);
                self.stored -= u64::from(count);
            }
        }
        self.latest_slot = slot;
        let count = &mut self.buckets[Self::bucket(slot)];
        if *count < u32::MAX {
            *count += 1;
            self.stored += 1;
        }
        self.stored
    }

    fn wait(&self, now: Instant, cap: u32) -> Option<Duration> {
        let first_live = self.slot(now).saturating_sub(BUCKETS as u64 - 1);
        let live = first_live..=self.latest_slot;
        let mut total: u64 = live
            .clone()
            .map(|slot| u64::from(self.buckets[Self::bucket(slot)]))
            .sum();
        let released = |total: u64| total == 0 || total < u64::from(cap);
        if released(total) {
            return None;
        }
        for slot in live {
            total -= u64::from(self.buckets[Self::bucket(slot)]);
            if released(total) {
                let free_at = slot
                    .saturating_add(BUCKETS as u64)
                    .saturating_mul(SLOT_SECS);
                let elapsed = now.saturating_duration_since(self.origin);
                let wait = Duration::from_secs(free_at).saturating_sub(elapsed);
                return (!wait.is_zero()).then_some(wait);
            }
        }
        None
    }
}

#[derive(Debug, Clone, Copy)]
struct Policy {
    pair_free: u32,
    client_free: u32,
    account_cap: u32,
    max_backoff: Duration,
}

impl Policy {
    /// Standing in the top two bits, then older before newer (ages beyond
    /// the 146 years that 62 bits of nanoseconds hold tie, harmlessly).
    fn eviction_rank(&self, key: &Key, entry: &Entry, now: Instant) -> u64 {
        let age = now.saturating_duration_since(entry.last_failure);
        let standing = if age >= DECAY {
            Standing::Expired
        } else if self.live_wait(key, entry, now, age).is_some() {
            Standing::Refusing
        } else {
            Standing::Idle
        };
        let youth_limit = (1u64 << AGE_BITS) - 1;
        let age = u64::try_from(age.as_nanos())
            .unwrap_or(u64::MAX)
            .min(youth_limit);
        (standing as u64) << AGE_BITS | (youth_limit - age)
    }

    fn wait(&self, key: &Key, entry: &Entry, now: Instant) -> Option<Duration> {
        let age = now.saturating_duration_since(entry.last_failure);
        if age >= DECAY {
            return None;
        }
        self.live_wait(key, entry, now, age)
    }

    /// `wait` for an entry already known not to have expired; `age` is the
    /// time since its last failure.
    fn live_wait(&self, key: &Key, entry: &Entry, now: Instant, age: Duration) -> Option<Duration> {
        let free = match key.id {
            Id::Pair(..) | Id::Device(..) => self.pair_free,
            Id::Client(_) => self.client_free,
            Id::Account(_) if entry.failures < self.account_cap => return None,
            Id::Account(_) => {
                let wait = entry.window.as_ref()?.wait(now, self.account_cap)?;
                // The bucket walk can overshoot by up to a minute; the entry
                // is forgotten an hour after its last failure regardless.
                return Some(wait.min(DECAY - age));
            }
        };
        let over = entry.failures.checked_sub(free).filter(|&over| over > 0)?;
        let secs = 1u64.checked_shl(over - 1).unwrap_or(u64::MAX);
        let delay = Duration::from_secs(secs).min(self.max_backoff).min(DECAY);
        let wait = delay.saturating_sub(age);
        (!wait.is_zero()).then_some(wait)
    }
}

struct Shard {
    map: HashMap<Key, Entry, BuildHasherDefault<Prehashed>>,
    cap: usize,
}

impl Shard {
    fn entry_mut(&mut self, key: Key, now: Instant, policy: &Policy) -> Option<&mut Entry> {
        if self.cap == 0 {
            return None;
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.sweep(now, policy);
        }
        let entry = self
            .map
            .entry(key)
            .or_insert_with(|| Entry::fresh(&key, now));
        if entry.expired(now) {
            *entry = Entry::fresh(&key, now);
        }
        Some(entry)
    }

    /// Makes room for at least a tenth of the capacity, so that the O(n)
    /// sweep runs at most once per cap/10 insertions.
    fn sweep(&mut self, now: Instant, policy: &Policy) {
        let target = self.cap - (self.cap / 10).max(1);
        let mut ranks: Vec<u64> = self
            .map
            .iter()
            .map(|(key, entry)| policy.eviction_rank(key, entry, now))
            .collect();
        let expired = ranks
            .iter()
            .filter(|&&rank| rank < EXPIRED_RANK_END)
            .count();
        // Expired entries rank lowest, so they are always among the excess.
        let excess = self.map.len().saturating_sub(target).max(expired);
        let Some(last) = excess.checked_sub(1) else {
            return;
        };
        let (below, &mut threshold, _) = ranks.select_nth_unstable(last);
        let below_threshold = below.iter().filter(|&&rank| rank < threshold).count();
        // Ties at the threshold are removed only as far as needed, so a
        // sweep never evicts more than it must.
        let mut ties_to_remove = excess - below_threshold;
        self.map.retain(|key, entry| {
            let rank = policy.eviction_rank(key, entry, now);
            if rank < threshold {
                false
            } else if rank == threshold && ties_to_remove > 0 {
                ties_to_remove -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// Eviction order, lowest first: expired, then idle, then refusing entries.
#[derive(Debug, Clone, Copy)]
enum Standing {
    Expired = 0,
    Idle = 1,
    Refusing = 2,
}

const AGE_BITS: u32 = 62;
const EXPIRED_RANK_END: u64 = (Standing::Idle as u64) << AGE_BITS;

/// Login throttle shared by all request handlers.
pub struct Throttle {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    policy: Policy,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("entries", &self.len())
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Throttle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        let count = (cfg.max_entries / MIN_ENTRIES_PER_SHARD).clamp(1, MAX_SHARDS);
        let (base, extra) = (cfg.max_entries / count, cfg.max_entries % count);
        // Per-shard caps that add up to max_entries keep the global bound
        // without a shared counter that every shard would contend on.
        let shards = (0..count)
            .map(|i| {
                Mutex::new(Shard {
                    map: HashMap::default(),
                    cap: base + usize::from(i < extra),
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            policy: Policy {
                pair_free: cfg.account_ip_free,
                client_free: cfg.ip_free,
                account_cap: cfg.account_per_hour,
                max_backoff: Duration::from_secs(cfg.max_backoff_secs),
            },
        }
    }

    /// Ok(()) if an attempt may proceed now, Err(retry_after) if not.
    /// `account` is already normalised (lower-case) by the caller.
    pub fn check(&self, account: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.check_for(account, ip, now, None)
    }

    /// [`Throttle::check`] for a login attempt. A browser that has signed
    /// in to this account before (`device`: its verified device cookie)
    /// is not held to the per-account cap, which is shared with every
    /// attacker and would let them lock the real user out; the cookie's
    /// own limit stands in for it, and the per-address limits still apply.
    pub fn check_for(
        &self,
        account: &str,
        ip: IpAddr,
        now: Instant,
        device: Option<&str>,
    ) -> Result<(), Duration> {
        self.check_keys(self.capped_keys(account, ip, device), now)
    }

    /// [`Throttle::check`] by address only: the pair and the client, not
    /// the shared per-account cap, for attempts that name no account
    /// (registration), where one cap for everyone would let a few dozen
    /// addresses shut the door on every newcomer.
    pub fn check_per_address(&self, label: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let [pair, client, _] = self.keys(label, ip);
        self.check_keys([pair, client], now)
    }

    /// The longest wait any of these counters imposes; expired ones are
    /// forgotten on the way.
    fn check_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = (Key, &'a Mutex<Shard>)>,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut longest: Option<Duration> = None;
        for (key, shard) in keys {
            let mut shard = shard.lock();
            let state = shard
                .map
                .get(&key)
                .map(|entry| (entry.expired(now), self.policy.wait(&key, entry, now)));
            if let Some((expired, wait)) = state {
                if expired {
                    shard.map.remove(&key);
                }
                longest = longest.max(wait);
            }
        }
        match longest {
            None => Ok(()),
            Some(wait) => Err(whole_seconds(wait)),
        }
    }

    /// One failure on each of these counters.
    fn record_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = (Key, &'a Mutex<Shard>)>,
        now: Instant,
    ) {
        for (key, shard) in keys {
            let mut shard = shard.lock();
            if let Some(entry) = shard.entry_mut(key, now, &self.policy) {
                entry.record(now);
            }
        }
    }

    /// [`Throttle::keys`] with the last, capping counter being a known
    /// browser's own (see [`Throttle::check_for`]) when there is one.
    fn capped_keys(
        &self,
        account: &str,
        ip: IpAddr,
        device: Option<&str>,
    ) -> [(Key, &Mutex<Shard>); 3] {
        let mut keys = self.keys(account, ip);
        if let Some(d) = device {
            keys[2] = self.device_key(account, d);
        }
        keys
    }

    /// An attempt counted by address only (see [`Throttle::check_per_address`]).
    pub fn record_per_address(&self, label: &str, ip: IpAddr, now: Instant) {
        let [pair, client, _] = self.keys(label, ip);
        self.record_keys([pair, client], now);
    }

    pub fn record_failure(&self, account: &str, ip: IpAddr, now: Instant) {
        self.record_failure_for(account, ip, now, None);
    }

    /// A failed attempt, counted against the account's cap whatever the
    /// browser, and against its device cookie when it had one.
    pub fn record_failure_for(
        &self,
        account: &str,
        ip: IpAddr,
        now: Instant,
        device: Option<&str>,
    ) {
        let device = device.map(|d| self.device_key(account, d));
        self.record_keys(self.keys(account, ip).into_iter().chain(device), now);
    }

    /// success resets the (account, ip) and account counters (not the IP's)
    pub fn record_success(&self, account: &str, ip: IpAddr, _now: Instant) {
        self.record_success_for(account, ip, None);
    }

    /// [`Throttle::record_success`] for a browser that may have a device
    /// cookie. With one, the cookie's count is cleared but the account's
    /// is not: the account's cap holds the attackers', and a known browser
    /// signs in past it anyway, so clearing it would only hand them a
    /// fresh quota at every real login.
    pub fn record_success_for(&self, account: &str, ip: IpAddr, device: Option<&str>) {
        // The client counter survives: one valid login must not launder a
        // client that is spraying other accounts.
        let [pair, _client, cap] = self.capped_keys(account, ip, device);
        for (key, shard) in [pair, cap] {
            shard.lock().map.remove(&key);
        }
    }

    /// operator `user unlock NAME`: forget everything about this account
    pub fn unlock(&self, account: &str) {
        let wanted = self.hasher.hash_one(account);
        // Pair keys are spread over every shard; a full scan is acceptable
        // for a rare operator command.
        for shard in self.shards.iter() {
            shard.lock().map.retain(|key, _| match key.id {
                Id::Pair(hash, _) | Id::Account(hash) | Id::Device(hash, _) => hash != wanted,
                Id::Client(_) => true,
            });
        }
    }

    /// number of tracked keys (for metrics/tests)
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.lock().map.is_empty())
    }

    /// The three keys of an attempt, each with the shard that holds it.
    fn keys(&self, account: &str, ip: IpAddr) -> [(Key, &Mutex<Shard>); 3] {
        // Keyed hashing: user names are attacker-chosen, and with an
        // unkeyed hash they could be picked to collide with a victim's.
        let account = self.hasher.hash_one(account);
        let client = client_of(ip);
        let client_hash = self.hasher.hash_one(client);
        [
            // Both inputs are independent keyed hashes, so their XOR is as
            // well spread as either.
            (Id::Pair(account, client), account ^ client_hash),
            (Id::Client(client), client_hash),
            (Id::Account(account), account),
        ]
        .map(|(id, spread)| (Key { id, spread }, self.shard(spread)))
    }

    fn device_key(&self, account: &str, device: &str) -> (Key, &Mutex<Shard>) {
        let account = self.hasher.hash_one(account);
        let device = self.hasher.hash_one(device);
        let spread = account ^ device.rotate_left(17);
        (
            Key {
                id: Id::Device(account, device),
                spread,
            },
            self.shard(spread),
        )
    }

    fn shard(&self, spread: u64) -> &Mutex<Shard> {
        // The map inside the shard indexes by the low bits and tags by the
        // top seven; the shard takes bits from neither, or each shard would
        // fill only a fraction of its table.
        let bits = (spread >> 32) & 0xffff;
        // The remainder is below the shard count, so it fits in usize.
        &self.shards[(bits % self.shards.len() as u64) as usize]
    }
}

fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Retry-After is sent in whole seconds; rounding down could invite a retry
/// that is still refused, and 0 would invite an immediate one.
fn whole_seconds(wait: Duration) -> Duration {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn fail_n(t: &Throttle, account: &str, ip: IpAddr, now: Instant, n: u32) {
        for _ in 0..n {
            t.record_failure(account, ip, now);
        }
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Throttle>();
    }

    #[test]
    fn default_config_matches_documentation() {
        let cfg = ThrottleConfig::default();
        assert_eq!(cfg.account_ip_free, 5);
        assert_eq!(cfg.ip_free, 30);
        assert_eq!(cfg.account_per_hour, 100);
        assert_eq!(cfg.max_backoff_secs, 900);
        assert_eq!(cfg.max_entries, 100_000);
    }

    #[test]
    fn free_failures_are_not_throttled() {
        let t = Throttle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        fail_n(&t, "alice", v4(1), t0, 5);
        assert_eq!(t.check("alice", v4(1), t0), Ok(()));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let t = Throttle::new(ThrottleConfig::default());
        let ip = v4(1);
        let mut now = Instant::now();
        fail_n(&t, "alice", ip, now, 5);
        let mut expected = 1;
        for _ in 0..15 {
            t.record_failure("alice", ip, now);
            assert_eq!(t.check("alice", ip, now), Err(secs(expected)));
            let almost = now + secs(expected) - Duration::from_millis(1);
            assert_eq!(t.check("alice", ip, almost), Err(secs(1)));
            now += secs(expected);
            assert_eq!(t.check("alice", ip, now), Ok(()));
            expected = (expected * 2).min(900);
        }
        assert_eq!(expected, 900);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let t = Throttle::new(ThrottleConfig::default());
        let ip = v4(1);
        let t0 = Instant::now();
        fail_n(&t, "alice", ip, t0, 7); // 2 s back-off
        let later = t0 + Duration::from_millis(500);
        assert_eq!(t.check("alice", ip, later), Err(secs(2)));
        let later = t0 + Duration::from_millis(1999);
        assert_eq!(t.check("alice", ip, later), Err(secs(1)));
    }

    #[test]
    fn success_resets_pair_and_account_but_not_client() {
        let t = Throttle::new(ThrottleConfig::default());
        let ip = v4(1);
        let t0 = Instant::now();
        fail_n(&t, "alice", ip, t0, 8);
        assert!(t.check("alice", ip, t0).is_err());
        t.record_success("alice", ip, t0);
        assert_eq!(t.check("alice", ip, t0), Ok(()));
        // Counting starts over: five more free failures.
        fail_n(&t, "alice", ip, t0, 5);
        assert_eq!(t.check("alice", ip, t0), Ok(()));

        // 5 + 26 = 31 failures from this client: past its allowance of 30.
        for i in 0..26 {
            t.record_failure(&format!("user{i}"), ip, t0);
        }
        assert!(t.check("someone-else", ip, t0).is_err());
        t.record_success("alice", ip, t0);
        assert!(t.check("someone-else", ip, t0).is_err());
    }

    #[test]
    fn attacker_does_not_lock_out_user_at_another_ip() {
        let t = Throttle::new(ThrottleConfig::default());
        let (attacker, user) = (v4(66), v4(1));
        let mut now = Instant::now();
        for _ in 0..50 {
            t.record_failure("alice", attacker, now);
            now += Duration::from_millis(100);
        }
        assert!(t.check("alice", attacker, now).is_err());
        assert_eq!(t.check("alice", user, now), Ok(()));
        // Even the user's own typos only count against the user's pair.
        fail_n(&t, "alice", user, now, 3);
        assert_eq!(t.check("alice", user, now), Ok(()));
    }

    #[test]
    fn account_cap_bounds_distributed_guessing() {
        let t = Throttle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        for i in 0..99 {
            t.record_failure("alice", v4(i), t0 + secs(u64::from(i)));
        }
        let t99 = t0 + secs(99);
        assert_eq!(t.check("alice", v4(5000), t99), Ok(()));
        t.record_failure("alice", v4(99), t99);

        let wait = t.check("alice", v4(5000), t99).unwrap_err();
        // The first failure stops counting between 60 and 61 minutes on.
        assert!(
            wait >= secs(3600 - 99) && wait <= secs(3660 - 99),
            "{wait:?}"
        );
        // Other accounts and the same clients are unaffected.
        assert_eq!(t.check("bob", v4(5000), t99), Ok(()));
        assert_eq!(t.check("bob", v4(1), t99), Ok(()));

        assert!(t.check("alice", v4(5000), t0 + secs(3599)).is_err());
        assert_eq!(t.check("alice", v4(5000), t0 + secs(3661)), Ok(()));
    }

    #[test]
    fn account_cap_is_a_sliding_hour() {
        // A fixed window would allow 1 + 99 at its end and 100 more right
        // after it rolls over.
        let t = Throttle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        t.record_failure("alice", v4(0), t0);
        let late = t0 + secs(59 * 60);
        for i in 1..100 {
            t.record_failure("alice", v4(i), late);
        }
        let after_first_ages_out = t0 + secs(61 * 60);
        assert_eq!(t.check("alice", v4(5000), after_first_ages_out), Ok(()));
        t.record_failure("alice", v4(100), after_first_ages_out);
        let wait = t
            .check("alice", v4(5000), after_first_ages_out)
            .unwrap_err();
        assert!(wait >= secs(58 * 60) && wait <= secs(59 * 60), "{wait:?}");
    }

    #[test]
    fn counts_decay_after_an_hour() {
        let t = Throttle::new(ThrottleConfig::default());
        let ip = v4(1);
        let t0 = Instant::now();
        fail_n(&t, "alice", ip, t0, 20);
        assert_eq!(t.check("alice", ip, t0 + secs(899)), Err(secs(1)));
        // Back-off itself is over after 900 s, but the count is still there.
        t.record_failure("alice", ip, t0 + secs(900));
        assert_eq!(t.check("alice", ip, t0 + secs(900)), Err(secs(900)));

        let later = t0 + secs(900) + DECAY;
        assert_eq!(t.check("alice", ip, later), Ok(()));
        assert!(t.is_empty(), "expired keys are dropped when seen");
        fail_n(&t, "alice", ip, later, 5);
        assert_eq!(t.check("alice", ip, later), Ok(()));
        t.record_failure("alice", ip, later);
        assert_eq!(t.check("alice", ip, later), Err(secs(1)));
    }

    #[test]
    fn unlock_forgets_the_account_only() {
        let t = Throttle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        for i in 0..100 {
            fail_n(&t, "alice", v4(i % 5), t0, 1);
        }
        fail_n(&t, "bob", v4(0), t0, 15);
        assert!(t.check("alice", v4(9), t0).is_err());
        assert!(t.check("alice", v4(0), t0).is_err());

        t.unlock("alice");
        assert_eq!(t.check("alice", v4(9), t0), Ok(()));
        assert_eq!(t.check("alice", v4(1), t0), Ok(()));
        // Client v4(0) has 20 + 15 failures in all: still over its allowance.
        assert!(t.check("alice", v4(0), t0).is_err());
        assert_eq!(t.check("bob", v4(3), t0), Ok(()));
        // bob's pair and account, and the five client keys.
        assert_eq!(t.len(), 7);
    }

    #[test]
    fn ipv6_clients_are_grouped_per_64() {
        let t = Throttle::new(ThrottleConfig::default());
        let t0 = Instant::now();
        for i in 0..6u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i));
            t.record_failure("alice", ip, t0);
        }
        let sibling = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9));
        assert!(t.check("alice", sibling, t0).is_err());
        let other_net = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert_eq!(t.check("alice", other_net, t0), Ok(()));

        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        fail_n(&t, "bob", mapped, t0, 6);
        let plain = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert!(t.check("bob", plain, t0).is_err());
    }

    /// Cheap deterministic pseudo-random names; the generator's quality
    /// does not matter, only that names rarely repeat.
    fn names(seed: u64) -> impl Iterator<Item = String> {
        let mut state = seed | 1;
        std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{state:x}")
        })
    }

    #[test]
    fn flood_of_random_names_stays_bounded_and_flooder_stays_throttled() {
        let max_entries = 10_000;
        let t = Throttle::new(ThrottleConfig {
            max_entries,
            ..ThrottleConfig::default()
        });
        let flooder = v4(666);
        let t0 = Instant::now();
        for (i, name) in names(7).take(1_000_000).enumerate() {
            let now = t0 + Duration::from_micros(i as u64);
            t.record_failure(&name, flooder, now);
            if i.is_multiple_of(4096) {
                assert!(t.len() <= max_entries);
            }
        }
        let end = t0 + secs(1);
        assert!(t.len() <= max_entries);
        assert_eq!(t.check("fresh-name", flooder, end), Err(secs(900)));
        assert_eq!(t.check("fresh-name", v4(1), end), Ok(()));
    }

    #[test]
    fn distributed_flood_does_not_evict_a_refusing_pair() {
        let max_entries = 5_000;
        let t = Throttle::new(ThrottleConfig {
            max_entries,
            ..ThrottleConfig::default()
        });
        let (attacker, t0) = (v4(666), Instant::now());
        fail_n(&t, "alice", attacker, t0, 15);
        for (i, name) in names(11).take(200_000).enumerate() {
            let i = i as u32;
            t.record_failure(
                &name,
                v4(1000 + i),
                t0 + Duration::from_micros(u64::from(i)),
            );
        }
        assert!(t.len() <= max_entries);
        assert!(t.check("alice", attacker, t0 + secs(1)).is_err());
        assert_eq!(t.check("alice", v4(1), t0 + secs(1)), Ok(()));
    }

    #[test]
    fn concurrent_use_stays_bounded() {
        let max_entries = 20_000;
        let t = Throttle::new(ThrottleConfig {
            max_entries,
            ..ThrottleConfig::default()
        });
        let t0 = Instant::now();
        std::thread::scope(|scope| {
            for worker in 0..4u32 {
                let t = &t;
                scope.spawn(move || {
                    for (i, name) in names(u64::from(worker) + 1).take(20_000).enumerate() {
                        let ip = v4(worker * 100_000 + i as u32 % 500);
                        let now = t0 + Duration::from_millis(i as u64);
                        let _ = t.check(&name, ip, now);
                        t.record_failure(&name, ip, now);
                    }
                });
            }
        });
        assert!(t.len() <= max_entries);
    }

    #[test]
    fn zero_capacity_tracks_nothing_and_never_panics() {
        let t = Throttle::new(ThrottleConfig {
            max_entries: 0,
            ..ThrottleConfig::default()
        });
        let t0 = Instant::now();
        fail_n(&t, "alice", v4(1), t0, 50);
        assert!(t.is_empty());
        assert_eq!(t.check("alice", v4(1), t0), Ok(()));
    }

    #[test]
    fn config_rejects_unknown_fields_and_fills_defaults() {
        use serde::de::value::{Error, MapDeserializer};
        use serde::Deserialize;
        let partial = MapDeserializer::<_, Error>::new([("ip_free", 7u32)].into_iter());
        let cfg = ThrottleConfig::deserialize(partial).unwrap();
        assert_eq!((cfg.ip_free, cfg.account_ip_free), (7, 5));
        let unknown = MapDeserializer::<_, Error>::new([("ipfree", 7u32)].into_iter());
        assert!(ThrottleConfig::deserialize(unknown).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Check(u8, u8),
        Fail(u8, u8),
        Success(u8, u8),
        Unlock(u8),
        Advance(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (any::<u8>(), any::<u8>()).prop_map(|(a, i)| Op::Check(a, i)),
            6 => (any::<u8>(), any::<u8>()).prop_map(|(a, i)| Op::Fail(a, i)),
            1 => (any::<u8>(), any::<u8>()).prop_map(|(a, i)| Op::Success(a, i)),
            1 => any::<u8>().prop_map(Op::Unlock),
            2 => (0u32..8000).prop_map(Op::Advance),
        ]
    }

    fn ip_of(n: u8) -> IpAddr {
        if n.is_multiple_of(2) {
            v4(u32::from(n))
        } else {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, u16::from(n), 0, 0, 0, 0, 1))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn len_stays_bounded_and_check_never_panics(
            max_entries in 0usize..40,
            account_ip_free in prop_oneof![Just(0u32), Just(u32::MAX), 0u32..8],
            ip_free in prop_oneof![Just(0u32), Just(u32::MAX), 0u32..40],
            account_per_hour in prop_oneof![Just(0u32), Just(u32::MAX), 0u32..120],
            max_backoff_secs in prop_oneof![Just(0u64), Just(u64::MAX), 0u64..2000],
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let t = Throttle::new(ThrottleConfig {
                account_ip_free, ip_free, account_per_hour, max_backoff_secs, max_entries,
            });
            let mut now = Instant::now();
            for op in ops {
                match op {
                    Op::Check(a, i) => {
                        if let Err(wait) = t.check(&format!("u{}", a % 16), ip_of(i % 8), now) {
                            prop_assert!(wait >= secs(1));
                            prop_assert!(wait <= secs(3660));
                        }
                    }
                    Op::Fail(a, i) => t.record_failure(&format!("u{}", a % 16), ip_of(i % 8), now),
                    Op::Success(a, i) => t.record_success(&format!("u{}", a % 16), ip_of(i % 8), now),
                    Op::Unlock(a) => t.unlock(&format!("u{}", a % 16)),
                    Op::Advance(s) => now += secs(u64::from(s)),
                }
                prop_assert!(t.len() <= max_entries);
            }
        }
    }
}
