//! Hostile clients: cache poisoning, resource exhaustion, and blaming origins for client faults.

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
