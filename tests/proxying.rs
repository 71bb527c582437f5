//! Proxying behaviour: routing, header rewriting, streaming and failures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, closed_port, get, Origin, Proxy, Reply};

/// Sends raw bytes to the proxy and returns everything it answers until it closes.
async fn raw_exchange(proxy: &Proxy, request: &[u8]) -> String {
    common::raw_exchange_with(proxy.addr, request).await
}

fn two_sites(a: &Origin, b: &Origin, b_is_default: bool) -> Proxy {
    Proxy::start(&format!(
        "[[site]]\nhosts = [\"a.test\"]\norigins = [\"{}\"]\n\n[[site]]\nhosts = [\"b.test\"]\ndefault = {b_is_default}\norigins = [\"{}\"]\n",
        a.addr, b.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_host_case_insensitively_ignoring_the_port() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.fixed("/", "no-store", "site a");
    b.fixed("/", "no-store", "site b");
    let proxy = two_sites(&a, &b, false);
    let answer = raw_exchange(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: A.Test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("site a"), "{answer}");
    let answer = raw_exchange(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("site b"), "{answer}");
    let answer = raw_exchange(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("no site is configured for this host"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_hosts_go_to_the_default_site() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    b.fixed("/", "no-store", "default site");
    let proxy = two_sites(&a, &b, true);
    let answer = raw_exchange(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("default site"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_and_malformed_requests_get_400() {
    let origin = Origin::start().await;
    let proxy = Proxy::for_origin(&origin, "");
    for request in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: bad host name\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n",
    ] {
        let answer = raw_exchange(&proxy, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} -> {answer}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(origin.hits("/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let origin = Origin::start().await;
    origin.route("/headers", |_, _| {
        Reply::ok("h")
            .header("cache-control", "no-store")
            .header("connection", "x-origin-private")
            .header("x-origin-private", "1")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
    });
    let proxy = Proxy::for_origin(&origin, "");
    let resp = client()
        .get(proxy.url("/headers"))
        .header("connection", "x-client-private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "192.0.2.7")
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("x-origin-private"));
    assert!(!resp.headers().contains_key("keep-alive"));
    assert_eq!(resp.headers()["x-kept"], "1");
    assert_eq!(resp.headers()["via"], "1.1 edgecache");

    let seen = &origin.seen("/headers")[0];
    for dropped in ["x-client-private", "keep-alive", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(dropped),
            "{dropped} reached the origin"
        );
    }
    assert_eq!(
        seen.headers["host"],
        proxy.addr.to_string(),
        "Host is passed through"
    );
    assert_eq!(seen.headers["via"], "1.1 edgecache");
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_origin_answers_502() {
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n",
        closed_port()
    ));
    let started = Instant::now();
    let (status, cache, _) = get(&proxy, "/", &[]).await;
    assert_eq!(status, 502);
    assert_eq!(cache, "edgecache; fwd=uri-miss; detail=origin-unreachable");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_origin_answers_504_after_the_read_timeout() {
    let origin = Origin::start().await;
    origin.route("/silent", |_, _| {
        Reply::ok("too late").delay(Duration::from_secs(10))
    });
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\nread_timeout = \"500ms\"\n",
        origin.addr
    ));
    let started = Instant::now();
    let (status, cache, _) = get(&proxy, "/silent", &[]).await;
    let waited = started.elapsed();
    assert_eq!(status, 504);
    assert!(cache.ends_with("detail=origin-timeout"), "{cache}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_bodies_are_streamed_not_buffered() {
    let origin = Origin::start().await;
    let (feed, chunks) = tokio::sync::mpsc::channel(4);
    let chunks = std::sync::Mutex::new(Some(chunks));
    origin.route("/stream", move |_, _| {
        let chunks = chunks.lock().unwrap().take().expect("one request");
        Reply::stream(200, chunks).header("cache-control", "no-store")
    });
    let proxy = Proxy::for_origin(&origin, "");
    let mut resp = client().get(proxy.url("/stream")).send().await.unwrap();
    let first = Bytes::from(vec![b'a'; 64 * 1024]);
    feed.send(first.clone()).await.unwrap();
    // The origin has sent one chunk and is still open: the client must already have it.
    let mut received = 0;
    while received < first.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        received += chunk.len();
    }
    tokio::spawn(async move {
        for _ in 0..16 {
            feed.send(Bytes::from(vec![b'b'; 1024 * 1024])).await.unwrap();
        }
    });
    while let Some(chunk) = resp.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, 64 * 1024 + 16 * 1024 * 1024);
}
