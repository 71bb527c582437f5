//! A proxy with one worker thread, which then runs on a single-threaded scheduler: long work
//! (compressing a large body) must not hold up the other requests.
//!
//! In its own test binary: pingora 0.9 remembers a single-threaded scheduler per OS thread in a
//! thread-local that outlives the thread, so a thread created later in the same process can
//! inherit the stopped proxy's scheduler and hand connections to it. One process per proxy, as
//! the binary runs, never meets that.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::pages::{get_with, page, serve_page};
use common::{client, Origin, Proxy};

const FRESH: &str = "public, max-age=60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressing_a_large_body_does_not_stall_other_requests() {
    let origin = Origin::start().await;
    let big = page(5 << 20);
    serve_page(&origin, "/big", big.clone(), FRESH);
    origin.fixed("/small", FRESH, "small");
    // One worker thread: anything that blocked it would delay every other request.
    let proxy = Proxy::start_with_server(
        &format!(
            "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n",
            origin.addr
        ),
        "threads = 1",
    );
    get_with(&proxy, "/small", "").await;

    let started = Instant::now();
    let big_url = proxy.url("/big");
    let big_request = tokio::spawn(async move {
        let resp = client()
            .get(big_url)
            .header("accept-encoding", "gzip, br")
            .send()
            .await
            .unwrap();
        resp.bytes().await.unwrap();
        Instant::now()
    });
    let mut slowest = Duration::ZERO;
    let mut completed = 0;
    while !big_request.is_finished() {
        let sent = Instant::now();
        let small = get_with(&proxy, "/small", "").await;
        assert_eq!(small.body, "small");
        slowest = slowest.max(sent.elapsed());
        completed += 1;
    }
    let big_done = big_request.await.unwrap();
    assert!(
        completed > 3,
        "only {completed} small requests overlapped the big one"
    );
    assert!(
        slowest < Duration::from_millis(150),
        "a small request took {slowest:?} while {:?} of compression ran",
        big_done - started
    );
    let stored = get_with(&proxy, "/big", "gzip").await;
    assert_eq!(stored.coding(), "gzip");
    assert_eq!(stored.decoded(), big);
    assert_eq!(origin.hits("/big"), 1);
}
