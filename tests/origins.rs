//! Several origins per site: load balancing, retries, backups, health and origin protection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{client, closed_port, get, Origin, Proxy, Reply};

fn counting(origin: &Origin, path: &str, name: &'static str) {
    origin.route(path, move |_, _| {
        Reply::ok(name).header("cache-control", "no-store")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    counting(&a, "/w", "a");
    counting(&b, "/w", "b");
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\", {{ addr = \"{}\", weight = 3 }}]\n",
        a.addr, b.addr
    ));
    for _ in 0..400 {
        assert_eq!(get(&proxy, "/w", &[]).await.0, 200);
    }
    let (hits_a, hits_b) = (a.hits("/w"), b.hits("/w"));
    assert_eq!(hits_a + hits_b, 400);
    assert!((80..=120).contains(&hits_a), "a got {hits_a}, b got {hits_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_each_url_on_one_origin() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\nlb = \"consistent\"\norigins = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    ));
    for i in 0..30 {
        let path = format!("/c{i}");
        counting(&a, &path, "a");
        counting(&b, &path, "b");
        for _ in 0..3 {
            get(&proxy, &path, &[]).await;
        }
        let (hits_a, hits_b) = (a.hits(&path), b.hits(&path));
        assert!(
            hits_a == 3 && hits_b == 0 || hits_a == 0 && hits_b == 3,
            "{path}: a {hits_a}, b {hits_b}"
        );
    }
    let used_a = (0..30).filter(|i| a.hits(&format!("/c{i}")) > 0).count();
    assert!(
        (5..=25).contains(&used_a),
        "both origins hold a share of URLs: a has {used_a}/30"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_origin_loses_no_idempotent_request() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    counting(&a, "/loop", "a");
    counting(&b, "/loop", "b");
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\", \"{}\"]\nretries = 1\n",
        a.addr, b.addr
    ));
    for i in 0..200 {
        if i == 100 {
            a.stop();
        }
        let (status, _, body) = get(&proxy, "/loop", &[]).await;
        assert_eq!(status, 200, "request {i}");
        assert!(i < 100 || body == "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_never_retried() {
    let live = Origin::start().await;
    live.route("/post", |seen, _| Reply::ok(format!("{}", seen.method)));
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\", \"{}\"]\nretries = 1\neject_after_failures = 0\n",
        closed_port(),
        live.addr
    ));
    let mut failed = 0;
    for _ in 0..6 {
        let resp = client().post(proxy.url("/post")).body("x").send().await.unwrap();
        if resp.status() == 502 {
            failed += 1;
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    assert!(failed > 0, "some POSTs went to the dead origin");
    assert_eq!(live.hits("/post"), 6 - failed, "a failed POST was not sent again");
    for _ in 0..6 {
        assert_eq!(get(&proxy, "/post", &[]).await.0, 200, "GETs are retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_serve_only_while_no_primary_is_usable() {
    let primary = Origin::start().await;
    let backup = Origin::start().await;
    for origin in [&primary, &backup] {
        origin.fixed("/health", "no-store", "ok");
    }
    counting(&primary, "/b", "primary");
    counting(&backup, "/b", "backup");
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\", {{ addr = \"{}\", backup = true }}]\n\
         eject_for = \"100ms\"\n[site.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n",
        primary.addr, backup.addr
    ));
    assert_eq!(get(&proxy, "/b", &[]).await.2, "primary");
    let primary_addr = primary.addr;
    primary.stop();
    for _ in 0..5 {
        let (status, _, body) = get(&proxy, "/b", &[]).await;
        assert_eq!((status, body.as_str()), (200, "backup"));
    }
    let back = Origin::start_on(primary_addr).await;
    back.fixed("/health", "no-store", "ok");
    counting(&back, "/b", "primary");
    common::eventually_async(
        Duration::from_secs(10),
        "control returns to the primary",
        || async { get(&proxy, "/b", &[]).await.2 == "primary" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_origin_down_cached_urls_are_served_stale_and_others_fail_fast() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for origin in [&a, &b] {
        origin.route("/cached", |_, _| {
            Reply::ok("kept")
                .header("cache-control", "max-age=10")
                .header("age", "11")
        });
    }
    let proxy = Proxy::start(&format!(
        "[cache]\nstale_if_error = \"10m\"\n[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    ));
    get(&proxy, "/cached", &[]).await;
    a.stop();
    b.stop();
    for _ in 0..3 {
        let (status, cache, body) = get(&proxy, "/cached", &[]).await;
        assert_eq!((status, body.as_str()), (200, "kept"));
        assert!(cache.contains("stale"), "{cache}");
    }
    let started = Instant::now();
    let (status, _, _) = get(&proxy, "/uncached", &[]).await;
    assert!(status == 502 || status == 503, "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_changes_are_published() {
    let origin = Origin::start().await;
    origin.fixed("/health", "no-store", "ok");
    let addr = origin.addr;
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"h.test\"]\norigins = [\"{addr}\"]\n[site.health_check]\ntype = \"tcp\"\ninterval = \"50ms\"\n"
    ));
    let mut events = proxy.health_events.subscribe();
    origin.stop();
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.origin, addr.to_string());
    assert!(!event.healthy);
    assert_eq!(event.site, "h.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_outliving_total_timeout_is_cut_off() {
    let origin = Origin::start().await;
    origin.route("/trickle", |_, _| {
        let (feed, chunks) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if feed.send(bytes::Bytes::from_static(b"chunk")).await.is_err() {
                    return;
                }
            }
        });
        Reply::stream(200, chunks).header("cache-control", "no-store")
    });
    origin.fixed("/quick", "no-store", "quick");
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\nread_timeout = \"1s\"\ntotal_timeout = \"500ms\"\n",
        origin.addr
    ));
    let started = Instant::now();
    let body = client()
        .get(proxy.url("/trickle"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    assert!(
        body.is_err() || body.unwrap().len() < 100,
        "the 2 s response must be cut short"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(&proxy, "/quick", &[]).await.2, "quick");
}

/// An origin that answers the first request on each connection and closes the connection when
/// a second one arrives, as a keep-alive timeout racing a reused connection does.
async fn one_request_per_connection_origin() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok";
                let _ = stream.write_all(reply).await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_the_origin_are_retried_not_held_against_it() {
    let addr = one_request_per_connection_origin().await;
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{addr}\"]\neject_after_failures = 1\n"
    ));
    for i in 0..10 {
        let (status, _, body) = get(&proxy, "/pooled", &[]).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_without_a_healthy_origin_says_so() {
    let dead = common::closed_port();
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{dead}\"]\n[site.health_check]\ntype = \"tcp\"\ninterval = \"50ms\"\n"
    ));
    common::eventually_async(
        Duration::from_secs(5),
        "the 502 names the unhealthy origins",
        || async {
            let resp = common::client().get(proxy.url("/x")).send().await.unwrap();
            let cache = common::cache_status(&resp);
            let (status, body) = (resp.status().as_u16(), resp.text().await.unwrap());
            status == 502
                && cache.ends_with("detail=no-healthy-origin")
                && body.starts_with("no healthy origin")
        },
    )
    .await;
}
