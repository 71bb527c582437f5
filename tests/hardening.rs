//! Hostile clients: cache poisoning, resource exhaustion, and blaming origins for client faults.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{raw_exchange_with, Origin, Proxy, Reply};

/// A site `a.test` (also the default) whose origin answers with the `Host` it received.
async fn host_echo() -> (Origin, Proxy) {
    let origin = Origin::start().await;
    origin.route("/echo", |seen, _| {
        let host = seen
            .headers
            .get("host")
            .map_or("-", |v| v.to_str().unwrap())
            .to_string();
        Reply::ok(host).header("cache-control", "max-age=60")
    });
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"a.test\"]\ndefault = true\norigins = [\"{}\"]\nstrip_request_headers = [\"X-Forwarded-Host\"]\n",
        origin.addr
    ));
    (origin, proxy)
}

fn body_of(answer: &str) -> &str {
    answer.split("\r\n\r\n").nth(1).unwrap_or("")
}

async fn get_with_host(proxy: &Proxy, host: &str) -> String {
    let request = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_exchange_with(proxy.addr, request.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_another_port_cannot_poison_the_plain_host() {
    let (origin, proxy) = host_echo().await;
    let poisoned = get_with_host(&proxy, "a.test:6666").await;
    assert_eq!(body_of(&poisoned), "a.test:6666", "{poisoned}");
    let plain = get_with_host(&proxy, "a.test").await;
    assert_eq!(body_of(&plain), "a.test", "{plain}");
    assert_eq!(origin.hits("/echo"), 2, "the port variant must be its own entry");
    for same in ["A.TEST.", "a.test:80", "a.test."] {
        let answer = get_with_host(&proxy, same).await;
        assert_eq!(body_of(&answer), "a.test", "Host {same}: {answer}");
        assert!(
            answer.contains("hit"),
            "Host {same} is the plain host's entry: {answer}"
        );
    }
    assert_eq!(origin.hits("/echo"), 2);
    let bad_port = get_with_host(&proxy, "a.test:http").await;
    assert!(bad_port.starts_with("HTTP/1.1 400"), "{bad_port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_neither_served_from_nor_stored_in_the_cache() {
    let (origin, proxy) = host_echo().await;
    let fat = b"GET /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let answer = raw_exchange_with(proxy.addr, fat).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(origin.seen("/echo")[0].body, "hello");
    let plain = get_with_host(&proxy, "a.test").await;
    assert_eq!(
        origin.hits("/echo"),
        2,
        "the fat GET's response was stored: {plain}"
    );
    let again = raw_exchange_with(proxy.addr, fat).await;
    assert_eq!(
        origin.hits("/echo"),
        3,
        "a fat GET was served from the cache: {again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_request_headers_never_reach_the_origin() {
    let (origin, proxy) = host_echo().await;
    let request =
        b"GET /echo HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Host: evil.test\r\nConnection: close\r\n\r\n";
    raw_exchange_with(proxy.addr, request).await;
    let seen = &origin.seen("/echo")[0];
    assert!(
        seen.headers.get("x-forwarded-host").is_none(),
        "{:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_goes_to_the_default_site() {
    let (origin, proxy) = host_echo().await;
    let answer = raw_exchange_with(proxy.addr, b"GET /echo HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
    assert_eq!(body_of(&answer), "a.test", "{answer}");
    assert_eq!(origin.hits("/echo"), 1);
}

/// Reads until the peer closes (Ok: bytes read) or `within` passes (Err).
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Result<usize, String> {
    use tokio::io::AsyncReadExt;
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(total),
            Ok(Ok(n)) => total += n,
            Err(_) => return Err(format!("still open after {within:?} ({total} bytes read)")),
        }
    }
}

fn limits_proxy(origin: &Origin, server_keys: &str) -> Proxy {
    Proxy::start_with_server(
        &format!(
            "[[site]]\nhosts = [\"a.test\"]\ndefault = true\norigins = [\"{}\"]\n",
            origin.addr
        ),
        server_keys,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_header_trickled_byte_by_byte_is_cut_off_at_the_header_deadline() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let proxy = limits_proxy(&origin, "client_header_timeout = \"1s\"\n");
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let started = std::time::Instant::now();
    let header =
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for byte in header {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if started.elapsed() > std::time::Duration::from_secs(4) {
            break;
        }
    }
    closed_within(&mut stream, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "a trickled header kept the connection for {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    origin.fixed("/k", "max-age=60", "k");
    let proxy = limits_proxy(&origin, "keepalive_timeout = \"1s\"\n");
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /k HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let read = closed_within(&mut stream, std::time::Duration::from_secs(4)).await;
    let bytes = read.expect("the idle connection was kept open");
    assert!(bytes > 0, "the request was answered before the connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_that_stall_in_the_preface_or_stay_idle_are_closed() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let proxy = limits_proxy(
        &origin,
        "h2c = true\nhandshake_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\n",
    );
    let mut half = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    closed_within(&mut half, std::time::Duration::from_secs(4))
        .await
        .unwrap();
    closed_within(&mut silent, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    // A full handshake and no stream: the HTTP/2 idle timeout.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(4), connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was kept open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_limit_are_refused_and_places_come_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    origin.fixed("/c", "max-age=60", "c");
    let proxy = limits_proxy(&origin, "max_connections_per_ip = 3\n");
    let mut held = Vec::new();
    for _ in 0..3 {
        // A request answered on each shows it was admitted; each then stays open, idle.
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /c HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nc") {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "a held connection was closed");
            answer.extend_from_slice(&buf[..n]);
        }
        held.push(stream);
    }
    let request = b"GET /c HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    common::eventually(
        std::time::Duration::from_secs(5),
        "a fourth connection is refused",
        || {
            let answer = common::block_on(raw_exchange_with(proxy.addr, request));
            answer.is_empty()
        },
    )
    .await;
    held.pop();
    common::eventually(
        std::time::Duration::from_secs(5),
        "the freed place is given back",
        || {
            let answer = common::block_on(raw_exchange_with(proxy.addr, request));
            answer.starts_with("HTTP/1.1 200")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let body = bytes::Bytes::from(vec![b'x'; 64 << 20]);
    origin.route("/big", move |_, _| {
        Reply::ok(body.clone())
            .header("cache-control", "no-store")
            .header("content-type", "application/octet-stream")
    });
    let proxy = limits_proxy(&origin, "send_timeout = \"1s\"\n");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    // Not reading: the proxy's writes stall until the send timeout drops the client.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let read = closed_within(&mut stream, std::time::Duration::from_secs(10)).await;
    let bytes = read.expect("the stalled client was still being served");
    assert!(
        bytes < 64 << 20,
        "the whole body was delivered to a client that stopped reading"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_cancelling_its_streams_gets_goaway_enhance_your_calm() {
    let origin = Origin::start().await;
    origin.route("/slow", |_, _| {
        Reply::ok("slow")
            .header("cache-control", "no-store")
            .delay(std::time::Duration::from_millis(300))
    });
    let proxy = limits_proxy(&origin, "h2c = true\n");
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut sent = 0;
    for i in 0..400 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let request = http::Request::get(format!("http://a.test/slow?{i}"))
            .body(())
            .unwrap();
        let Ok((_response, mut stream)) = client.send_request(request, true) else {
            break;
        };
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        stream.send_reset(h2::Reason::CANCEL);
    }
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
    let error = ended
        .expect("the connection stayed open")
        .unwrap()
        .expect_err("the connection ended without an error");
    assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{error}");
    assert!(sent < 400, "all {sent} streams were accepted");
    assert!(
        origin.hits("/slow") < 200,
        "{} origin requests",
        origin.hits("/slow")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_are_neither_retried_nor_held_against_the_origins() {
    use tokio::io::AsyncWriteExt;
    let (a, b) = (Origin::start().await, Origin::start().await);
    for origin in [&a, &b] {
        origin.route("/wait", |_, _| {
            Reply::ok("w")
                .header("cache-control", "no-store")
                .delay(std::time::Duration::from_millis(500))
        });
        origin.fixed("/ok", "no-store", "ok");
    }
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"a.test\"]\norigins = [\"{}\", \"{}\"]\nretries = 1\neject_after_failures = 2\n",
        a.addr, b.addr
    ));
    for sent in 0..12 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /wait HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let reached = || a.hits("/wait") + b.hits("/wait") > sent;
        common::eventually(
            std::time::Duration::from_secs(5),
            "the request reached an origin",
            reached,
        )
        .await;
        drop(stream);
    }
    // A retry would follow the hang-up at once; give it longer than the origins' answer takes.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let origin_requests = a.hits("/wait") + b.hits("/wait");
    assert_eq!(origin_requests, 12, "abandoned requests were retried");
    for _ in 0..4 {
        let answer = raw_exchange_with(
            proxy.addr,
            b"GET /ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(
        a.hits("/ok"),
        2,
        "an origin was ejected for its clients' hang-ups"
    );
    assert_eq!(b.hits("/ok"), 2);
}

/// An origin on loopback that answers every request with the raw `response` and closes; returns
/// its address and the raw request heads it received.
async fn raw_origin(
    response: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request).into_owned());
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, heads)
}

/// An HTTP/1.0 origin answering every request with a cacheable HTML body and closing.
async fn http10_origin() -> std::net::SocketAddr {
    let response = "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nCache-Control: max-age=60\r\n\r\n<p>an old origin speaks HTTP/1.0 </p>";
    raw_origin(response).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_from_an_http10_origin_reach_http11_clients_as_http11() {
    let origin = http10_origin().await;
    let proxy = Proxy::start(&format!(
        "[compression]\nmin_size = 16\n[[site]]\nhosts = [\"a.test\"]\norigins = [\"{origin}\"]\n"
    ));
    for (path, accept) in [
        ("/old", "identity"),
        ("/old", "identity"),
        ("/old", "gzip"),
        ("/new", "gzip"),
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: a.test\r\nAccept-Encoding: {accept}\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_exchange_with(proxy.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{accept}: {answer}");
    }
    let answer = raw_exchange_with(proxy.addr, b"GET /fresh HTTP/1.0\r\nHost: a.test\r\n\r\n").await;
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
    assert!(answer.ends_with("</p>"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_repeated_content_lengths_reach_the_origin_as_one() {
    let (origin, heads) =
        raw_origin("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"a.test\"]\norigins = [\"{origin}\"]\n"
    ));
    let request = b"POST /post HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let answer = raw_exchange_with(proxy.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = heads.lock().unwrap()[0].to_ascii_lowercase();
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (origin, proxy) = host_echo().await;
    for path in ["/one", "/two", "/three"] {
        origin.route(path, move |_, _| {
            Reply::ok(path).header("cache-control", "no-store")
        });
    }
    let pipelined = b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nGET /two HTTP/1.1\r\nHost: a.test\r\n\r\nGET /three HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange_with(proxy.addr, pipelined).await;
    let statuses = answer.matches("HTTP/1.1 200").count();
    assert_eq!(statuses, 3, "{answer}");
    let (one, two, three) = (answer.find("/one"), answer.find("/two"), answer.find("/three"));
    assert!(one < two && two < three, "{answer}");
}

#[test]
fn the_default_site_needs_no_hosts() {
    let text = "[[site]]\ndefault = true\norigins = [\"127.0.0.1:1\"]\n";
    let config = edgecache::config::Config::parse(text, std::path::Path::new("default.toml"));
    assert!(config.is_ok(), "{:?}", config.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_rejected_as_malformed_still_get_an_access_log_line() {
    let origin = Origin::start().await;
    let dir = common::scratch_dir("rejected-log");
    let log = dir.join("access.log");
    let proxy = Proxy::start_with_server(
        &format!(
            "[[site]]\nhosts = [\"a.test\"]\norigins = [\"{}\"]\n",
            origin.addr
        ),
        &format!("access_log = true\naccess_log_path = {:?}\n", log),
    );
    let answer = raw_exchange_with(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nBad Header Line\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    common::eventually(
        std::time::Duration::from_secs(5),
        "the rejected request is logged",
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|text| text.contains("\"status\":400") && text.contains("rejected"))
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
