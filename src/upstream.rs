//! A tiny "whoami" upstream that echoes what it received: the demo's app,
//! and the real upstream integration tests and benchmarks run against.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the upstream saw, as JSON.
pub fn describe(
    method: &str,
    target: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> serde_json::Value {
    let mut hs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    hs.sort();
    serde_json::json!({
        "method": method,
        "target": target,
        "headers": hs,
        "body": String::from_utf8_lossy(body),
    })
}

fn html_page(info: &serde_json::Value) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut rows = String::new();
    let mut user = None;
    if let Some(hs) = info["headers"].as_array() {
        for h in hs {
            let k = h[0].as_str().unwrap_or("");
            let v = h[1].as_str().unwrap_or("");
            if k == "x-forwarded-user" || k == "remote-user" {
                user = Some(v.to_string());
            }
            let hl = if k.starts_with("x-forwarded-") || k.starts_with("remote-") {
                " class=\"id\""
            } else {
                ""
            };
            rows.push_str(&format!(
                "<tr{hl}><th>{}</th><td>{}</td></tr>\n",
                esc(k),
                esc(v)
            ));
        }
    }
    let who = match user {
        Some(u) => format!(
            "<p>The gateway says you are <strong>{}</strong>.</p>",
            esc(&u)
        ),
        None => "<p>No identity headers: this route is public, or you are not signed in.</p>"
            .to_string(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>whoami</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}}table{{border-collapse:collapse;width:100%}}th,td{{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #ccc;word-break:break-all;vertical-align:top}}tr.id{{background:#fff6d5}}</style></head>\
<body><h1>whoami</h1>{who}<p><code>{} {}</code></p><table>{rows}</table>\
<p><a href=\"/.portcullis/me\">/.portcullis/me</a> · <a href=\"/.portcullis/sessions\">your sessions</a> · <a href=\"/.portcullis/password\">change password</a> · <a href=\"/.portcullis/logout\">sign out</a></p></body></html>",
        esc(info["method"].as_str().unwrap_or("")),
        esc(info["target"].as_str().unwrap_or("")),
    )
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let info = describe(parts.method.as_str(), &target, &parts.headers, &body);
    let html = parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let (ct, body) = if html {
        ("text/html; charset=utf-8", html_page(&info))
    } else {
        ("application/json", info.to_string())
    };
    let resp = Response::builder()
        .status(200)
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}

/// Serves the echo app on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}

/// Starts the echo app on its own thread and runtime; returns its address.
pub fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("whoami".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("whoami: cannot start runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => serve(l).await,
                    Err(e) => eprintln!("whoami: {e}"),
                }
            });
        })?;
    Ok(local)
}
