//! Criterion micro-benchmarks for the hot pieces: rule matching, path
//! canonicalisation, cookie parse + session lookup, header strip + inject.
//! Run with `cargo bench --bench micro`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use portcullis::policy::{load, Request, Subject};

// The gateway binary runs on mimalloc; measure the pieces on it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn policy_text(rules: usize) -> String {
    let mut t = String::from("[groups.staff]\npermissions = [\"reports.view\"]\n");
    for i in 0..rules.saturating_sub(1) {
        t.push_str(&format!(
            "[[rule]]\npath = \"/area{i}/**\"\ngroups = [\"staff\"]\n"
        ));
    }
    t.push_str("[[rule]]\npath = \"/**\"\nallow = \"authenticated\"\n");
    t
}

fn rule_matching(c: &mut Criterion) {
    let groups = vec!["staff".to_string()];
    let perms: Vec<String> = Vec::new();
    let who = Subject {
        superuser: false,
        groups: &groups,
        permissions: &perms,
    };
    let m = http::Method::GET;
    for n in [10, 100, 1000] {
        let (policy, _) = load::compile(&[(Path::new("p.toml"), &policy_text(n))], false)
            .expect("policy compiles");
        c.bench_function(&format!("decide/{n}_rules/last_matches"), |b| {
            b.iter(|| {
                policy
                    .decide(
                        black_box(&Request {
                            method: &m,
                            host: "app.example",
                            path: "/reports/2025/q3",
                        }),
                        Some(&who),
                    )
                    .outcome
            })
        });
    }
}

fn canonicalisation(c: &mut Criterion) {
    c.bench_function("canonicalize/plain", |b| {
        b.iter(|| {
            portcullis::canonical::canonicalize(black_box(b"/reports/2025/q3?format=csv"), None)
        })
    });
    c.bench_function("canonicalize/dots_and_escapes", |b| {
        b.iter(|| {
            portcullis::canonical::canonicalize(
                black_box(b"/a/./b/../c//%7Euser/caf%c3%a9?x=1"),
                None,
            )
        })
    });
}

fn session_lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = portcullis::store::Store::open(dir.path(), 8 << 20).expect("store");
    let sessions = portcullis::session::Sessions::new(
        Arc::new(store),
        Duration::from_secs(1800),
        Duration::from_secs(43200),
        10_000,
    );
    let (id, _) = sessions
        .create("alice", "127.0.0.1", "bench", false)
        .expect("session");
    let cookie = id.to_cookie_value();
    c.bench_function("session/cookie_parse_and_lookup", |b| {
        b.iter(|| {
            let id = portcullis::session::SessionId::from_cookie_value(black_box(&cookie))
                .expect("valid cookie");
            matches!(
                sessions.lookup(&id.hash()),
                Ok(portcullis::session::Lookup::Valid(_))
            )
        })
    });
}

/// The store path: a session picked at random from many more than the
/// cache holds, so nearly every lookup reads sled and evicts an entry.
fn session_lookup_cold(c: &mut Criterion) {
    const SESSIONS: usize = 50_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = portcullis::store::Store::open(dir.path(), 32 << 20).expect("store");
    let sessions = portcullis::session::Sessions::new(
        Arc::new(store),
        Duration::from_secs(1800),
        Duration::from_secs(43200),
        1_000,
    );
    let hashes: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let (id, _) = sessions
                .create(
                    "alice",
                    "127.0.0.1",
                    "Mozilla/5.0 (X11; Linux x86_64)",
                    false,
                )
                .expect("session");
            id.hash()
        })
        .collect();
    // A cheap deterministic shuffle (no rand in the hot loop).
    let mut i: usize = 0;
    c.bench_function("session/lookup_cold_50k_cache_1k", |b| {
        b.iter(|| {
            i = (i + 7919) % SESSIONS;
            matches!(
                sessions.lookup(black_box(&hashes[i])),
                Ok(portcullis::session::Lookup::Valid(_))
            )
        })
    });
}

fn headers(c: &mut Criterion) {
    let cfg = portcullis::config::HeadersConfig {
        preset: portcullis::config::HeaderPreset::Portcullis,
        user: None,
        email: None,
        groups: None,
        name: None,
        preferred_username: None,
    };
    let ih = portcullis::headers::IdentityHeaders::new(&cfg, &[], true, Vec::new());
    let mut user = portcullis::accounts::User::new("alice");
    user.email = Some("alice@example.com".into());
    user.groups = vec!["staff".into(), "accounting".into()];
    user.first_name = "Alice".into();
    user.last_name = "Liddell".into();
    let user = Arc::new(user);
    let mut base = pingora::http::RequestHeader::build("GET", b"/reports", None).expect("request");
    for (k, v) in [
        ("host", "app.example"),
        ("user-agent", "Mozilla/5.0"),
        ("accept", "text/html"),
        ("accept-language", "en"),
        ("cookie", "portcullis_session=x; theme=dark"),
        ("x-forwarded-user", "mallory"),
    ] {
        base.insert_header(k, v).expect("header");
    }
    // The clone alone: Pingora makes it for every forwarded request, so it
    // is the baseline the two below add to.
    c.bench_function("headers/clone_only", |b| {
        b.iter(|| black_box(&base).clone())
    });
    // As the forward step does it: the header taken apart into `http`'s
    // parts, edited, and put back together.
    c.bench_function("headers/strip", |b| {
        b.iter(|| {
            let mut parts: http::request::Parts = base.clone().into();
            ih.strip(&mut parts.headers);
            pingora::http::RequestHeader::from(parts)
        })
    });
    c.bench_function("headers/strip_and_inject", |b| {
        b.iter(|| {
            let mut parts: http::request::Parts = base.clone().into();
            parts.headers.reserve(8);
            ih.strip(&mut parts.headers);
            ih.inject(&mut parts.headers, black_box(&user));
            pingora::http::RequestHeader::from(parts)
        })
    });
}

criterion_group!(
    benches,
    rule_matching,
    canonicalisation,
    session_lookup,
    session_lookup_cold,
    headers
);
criterion_main!(benches);
