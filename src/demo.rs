//! A tiny sample origin built into the binary, so the proxy can be tried with nothing else
//! running. Enabled by `[demo]` in the config (the built-in default config has it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

/// The sample origin: `/` is cacheable for a minute, `/private` never, anything else is 404.
/// Each answer says how many requests the origin has seen, which shows the cache at work.
#[derive(Default)]
pub struct DemoOrigin {
    served: AtomicU64,
}

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let path = session.req_header().uri.path().to_string();
        let (status, cache_control, body) = match path.as_str() {
            "/" => (
                200,
                "public, max-age=60",
                format!("Hello from the demo origin (request #{served} it has served).\n"),
            ),
            "/private" => (
                200,
                "private, no-store",
                format!("Never cached (request #{served}).\n"),
            ),
            _ => (404, "max-age=10", format!("Not found: {path}\n")),
        };
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("cache-control", cache_control)
            .header("etag", format!("\"demo-{}\"", body.len()))
            .header("content-length", body.len())
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}

/// The demo origin as a pingora service listening on `addr`.
pub fn service(addr: SocketAddr) -> Service<HttpServer<DemoOrigin>> {
    let mut service = Service::new("demo origin".into(), HttpServer::new_app(DemoOrigin::default()));
    service.add_tcp(&addr.to_string());
    service
}

/// Prints, once the proxy is up, what two requests for `/` through it look like: the first
/// fetched from the demo origin and stored, the second a cache hit.
pub fn show_caching(proxy: SocketAddr) {
    let mut target = proxy;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    std::thread::spawn(move || {
        for attempt in 1..=2 {
            match fetch_root(target) {
                Ok(summary) => println!("demo: GET http://{target}/ #{attempt} -> {summary}"),
                Err(e) => {
                    println!("demo: proxy at {target} did not answer: {e}");
                    return;
                }
            }
        }
        println!("demo: try it yourself: curl -si http://{target}/");
    });
}

/// One `GET /` over a plain socket, summarised as status line, `Cache-Status` and body.
fn fetch_root(target: SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(target) {
            Ok(stream) => break stream,
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    // The `Host` curl sends for the URL printed, so the suggested curl hits what this stored.
    let request = format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default().to_string();
    let cache_status = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("cache-status:"))
        .unwrap_or("cache-status: -")
        .to_string();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(format!("{status} | {cache_status} | {body}"))
}
