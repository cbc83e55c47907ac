//! An https upstream: certificates are checked unless the operator turns
//! that off, and the request still arrives intact.

mod common;
use common::*;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed TLS server answering every request with the path it saw.
fn tls_upstream(dir: &std::path::Path) -> std::net::SocketAddr {
    // A private CA and a leaf certificate it signs (webpki refuses a CA
    // certificate used as the server's own).
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for this test (make test installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(dir.join("leaf.ext"), "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = vec![0u8; 8192];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
                    let body = format!("tls upstream saw: {line}");
                    let _ = tls
                        .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    addr
}

#[test]
fn https_upstream_is_verified_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let up = tls_upstream(dir.path());
    let policy = "[[rule]]\npath = \"/**\"\nallow = \"anyone\"\n".to_string();

    // Self-signed: refused by default.
    let strict = Gw::with(Opts {
        upstream: Some(format!("https://127.0.0.1:{}", up.port())),
        policy: policy.clone(),
        ..Opts::default()
    });
    let r = strict.client().get(strict.url("/a/b?c=d")).send().unwrap();
    assert_eq!(
        r.status(),
        502,
        "an unverifiable certificate must not be accepted"
    );

    // verify_cert = false: forwarded over TLS.
    let lax = Gw::with(Opts {
        upstream: Some(format!("https://127.0.0.1:{}", up.port())),
        upstream_opts: "verify_cert = false".into(),
        policy,
        ..Opts::default()
    });
    let r = lax.client().get(lax.url("/a/b?c=d")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "tls upstream saw: GET /a/b?c=d HTTP/1.1");

    // A private CA: trusted through ca_file, with certificate and name checks on.
    let ca = Gw::with(Opts {
        upstream: Some(format!("https://127.0.0.1:{}", up.port())),
        upstream_opts: format!("ca_file = \"{}\"", dir.path().join("ca.pem").display()),
        policy: "[[rule]]\npath = \"/**\"\nallow = \"anyone\"\n".into(),
        ..Opts::default()
    });
    let r = ca.client().get(ca.url("/ok")).send().unwrap();
    assert_eq!(r.status(), 200, "{}", ca.log());
    assert_eq!(r.text().unwrap(), "tls upstream saw: GET /ok HTTP/1.1");
}
