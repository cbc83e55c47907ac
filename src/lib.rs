//! portcullis: an authentication gateway built on Pingora.
//!
//! Start with `docs/ARCHITECTURE.md` for the module map and one request's
//! path through them. The hot path is in [`gateway`].

pub mod access;
pub mod accounts;
pub mod admin;
pub mod app;
pub mod audit;
pub mod canonical;
pub mod cli;
pub mod clock;
pub mod config;
pub mod csrf;
pub mod demo;
pub mod device;
pub mod diag;
pub mod gateway;
pub mod headers;
pub mod import;
pub mod legacy;
pub mod metrics;
pub mod password_rules;
pub mod passwords;
pub mod policy;
pub mod redirect;
pub mod sched;
pub mod server;
pub mod session;
pub mod store;
pub mod throttle;
pub mod ui;
pub mod upstream;
