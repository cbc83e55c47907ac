// placeholder until the throttle module lands
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};
#[derive(Debug, Clone, serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub account_ip_free: u32,
    pub ip_free: u32,
    pub account_per_hour: u32,
    pub max_backoff_secs: u64,
    pub max_entries: usize,
}
pub struct Throttle;
impl Throttle {
    pub fn new(_c: ThrottleConfig) -> Self {
        Throttle
    }
    pub fn check(&self, _a: &str, _ip: IpAddr, _now: Instant) -> Result<(), Duration> {
        Ok(())
    }
    pub fn record_failure(&self, _a: &str, _ip: IpAddr, _now: Instant) {}
    pub fn record_success(&self, _a: &str, _ip: IpAddr, _now: Instant) {}
    pub fn unlock(&self, _a: &str) {}
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        true
    }
}
