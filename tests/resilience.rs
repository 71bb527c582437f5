//! Correctness under concurrency and origin failure: purges racing fills.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{client, eventually, get, Origin, Proxy, Reply};
use edgecache::purge::PurgeScope;

/// An origin whose first answer for `path` is slow and old, and every later one new.
fn old_then_new(origin: &Origin, path: &str) {
    origin.route(path, |_, n| {
        if n == 1 {
            Reply::ok("old")
                .header("cache-control", "max-age=600")
                .delay(Duration::from_millis(800))
        } else {
            Reply::ok("new").header("cache-control", "max-age=600")
        }
    });
}

fn proxy_for(origin: &Origin) -> Proxy {
    Proxy::start_with_server(
        &format!(
            "[[site]]\nhosts = [\"127.0.0.1\", \"localhost\"]\norigins = [\"{}\"]\n",
            origin.addr
        ),
        "purge_allow = [\"127.0.0.1\"]\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_wins_over_a_fill_already_in_flight() {
    let origin = Origin::start().await;
    old_then_new(&origin, "/racing");
    let proxy = proxy_for(&origin);
    let url = proxy.url("/racing");
    let in_flight =
        tokio::spawn(async move { client().get(url).send().await.unwrap().text().await.unwrap() });
    eventually(Duration::from_secs(5), "the fill reached the origin", || {
        origin.hits("/racing") == 1
    })
    .await;
    let purge = client()
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            proxy.url("/racing"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 404, "nothing was stored yet");
    assert_eq!(
        in_flight.await.unwrap(),
        "old",
        "the request in flight still gets its answer"
    );
    let (_, _, body) = get(&proxy, "/racing", &[]).await;
    assert_eq!(body, "new", "the fill that started before the purge was stored");
    assert_eq!(origin.hits("/racing"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_purge_soft_or_hard_wins_over_a_fill_already_in_flight() {
    let origin = Origin::start().await;
    old_then_new(&origin, "/scoped/a");
    old_then_new(&origin, "/scoped/b");
    let proxy = proxy_for(&origin);
    for (path, soft) in [("/scoped/a", true), ("/scoped/b", false)] {
        let url = proxy.url(path);
        let in_flight =
            tokio::spawn(async move { client().get(url).send().await.unwrap().text().await.unwrap() });
        eventually(Duration::from_secs(5), "the fill reached the origin", || {
            origin.hits(path) == 1
        })
        .await;
        let scope = PurgeScope::Prefix {
            scheme: None,
            host: "127.0.0.1".into(),
            path: "/scoped/".into(),
        };
        proxy.storage.purge_scope(&scope, soft);
        assert_eq!(in_flight.await.unwrap(), "old");
        let (_, _, body) = get(&proxy, path, &[]).await;
        assert_eq!(
            body, "new",
            "soft = {soft}: the old fill was stored after the purge"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_refresh_keeps_serving_the_stale_copy() {
    let origin = Origin::start().await;
    origin.route("/swr", |_, n| {
        if n == 1 {
            Reply::ok("good").header("cache-control", "max-age=1, stale-while-revalidate=60")
        } else {
            Reply::new(500, "bad").header("cache-control", "no-store")
        }
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy, "/swr", &[]).await.2, "good");
    // Once stale, a request is answered from the cache while a refresh (which fails) runs.
    eventually(
        Duration::from_secs(5),
        "a background refresh reaches the origin",
        || {
            let (status, _, body) = common::block_on(get(&proxy, "/swr", &[]));
            assert_eq!((status, body.as_str()), (200, "good"));
            origin.hits("/swr") >= 2
        },
    )
    .await;
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let url = proxy.url("/swr");
            tokio::spawn(async move {
                let resp = client().get(url).send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), (200, "good".to_string()));
    }
    assert!(
        origin.hits("/swr") < 40,
        "{} origin requests for 50 clients",
        origin.hits("/swr")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_coalesced_behind_a_failing_revalidation_get_the_stale_if_error_copy() {
    let origin = Origin::start().await;
    origin.route("/sie", |_, n| match n {
        1 => Reply::ok("good").header("cache-control", "max-age=1, stale-if-error=300"),
        2 => Reply::new(500, "slow failure").delay(Duration::from_millis(1500)),
        _ => Reply::new(500, "bad"),
    });
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\nread_timeout = \"1s\"\n",
        origin.addr
    ));
    assert_eq!(get(&proxy, "/sie", &[]).await.2, "good");
    // Freshness is a matter of time: wait out max-age (any request would start the revalidation).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let url = proxy.url("/sie");
        clients.push(tokio::spawn(async move {
            let resp = client().get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.unwrap());
    }
    assert!(
        answers.iter().all(|a| *a == (200, "good".to_string())),
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_collected_by_concurrent_misses_stay_within_the_cache_size() {
    const HALF: usize = 512 * 1024;
    let origin = Origin::start().await;
    let (release, released) = tokio::sync::watch::channel(false);
    for i in 0..12 {
        let released = released.clone();
        origin.route(&format!("/big/{i}"), move |_, _| {
            // Half the body now, the rest once every request holds its first half.
            let (chunks, body) = tokio::sync::mpsc::channel(2);
            let mut released = released.clone();
            tokio::spawn(async move {
                let _ = chunks.send(bytes::Bytes::from(vec![b'a'; HALF])).await;
                let _ = released.wait_for(|go| *go).await;
                let _ = chunks.send(bytes::Bytes::from(vec![b'b'; HALF])).await;
            });
            let mut reply = Reply::stream(200, body);
            reply.headers.push(("cache-control".into(), "max-age=600".into()));
            reply
                .headers
                .push(("content-type".into(), "application/octet-stream".into()));
            reply
        });
    }
    let proxy = Proxy::start(&format!(
        "[cache]\nmax_memory = \"4MiB\"\nmax_object_size = \"2MiB\"\n[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n",
        origin.addr
    ));
    let requests: Vec<_> = (0..12)
        .map(|i| {
            let url = proxy.url(&format!("/big/{i}"));
            tokio::spawn(async move { client().get(url).send().await.unwrap().bytes().await.unwrap() })
        })
        .collect();
    eventually(Duration::from_secs(5), "every fill reached the origin", || {
        (0..12).all(|i| origin.hits(&format!("/big/{i}")) == 1)
    })
    .await;
    // Every fill has (or has given up) its first half once the budget is full.
    eventually(Duration::from_secs(5), "the fill budget is full", || {
        proxy.storage.fill_bytes().0 >= 3 * HALF
    })
    .await;
    release.send_replace(true);
    for request in requests {
        let body = request.await.unwrap();
        assert_eq!(body.len(), 2 * HALF, "a client got a cut response");
        assert!(body[..HALF].iter().all(|b| *b == b'a') && body[HALF..].iter().all(|b| *b == b'b'));
    }
    let (now, peak) = proxy.storage.fill_bytes();
    assert!(peak <= 4 << 20, "fills held {peak} bytes at once");
    let _ = now;
    eventually(Duration::from_secs(5), "the fill budget is given back", || {
        proxy.storage.fill_bytes().0 == 0
    })
    .await;
    let stored = (0..12).filter(|i| {
        let (_, status, _) = common::block_on(get(&proxy, &format!("/big/{i}"), &[]));
        status.contains("hit")
    });
    assert!(stored.count() >= 1, "the fills that fit were stored");
}
