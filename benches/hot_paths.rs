//! Criterion benches of the per-request pure functions and the storage.
//!
//! Run with `cargo bench`. Each bench states what one iteration does.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgecache::cache::{cache_key, CacheTarget, MokaStorage};
use edgecache::config::Config;
use pingora::cache::trace::Span;
use pingora::cache::{CacheMeta, Storage};
use pingora::http::{RequestHeader, ResponseHeader};

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/assets/app.js?v=1234567", None).unwrap();
    req.insert_header("host", "www.example.com").unwrap();
    req.insert_header("accept-encoding", "gzip, br").unwrap();
    req
}

/// One iteration: extract the target from a request header and hash it into a cache key.
fn key_derivation(c: &mut Criterion) {
    let req = request();
    c.bench_function("cache key from request", |b| {
        b.iter(|| {
            let target = CacheTarget::of_request(black_box(&req), "http").unwrap();
            cache_key(&target).to_compact()
        })
    });
}

/// One iteration: decide cacheability and build the metadata of a typical response.
fn cacheability(c: &mut Criterion) {
    let config = Config::built_in().unwrap();
    let policy = edgecache::cache::CachePolicy::new(&config.cache);
    let req = request();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("cache-control", "public, max-age=3600")
        .unwrap();
    resp.insert_header("content-type", "application/javascript")
        .unwrap();
    resp.insert_header("etag", "\"abc\"").unwrap();
    c.bench_function("response cacheability", |b| {
        b.iter(|| policy.response_cacheability(black_box(&req), black_box(&resp), SystemTime::now()))
    });
}

fn meta() -> CacheMeta {
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None).unwrap();
    header
        .insert_header("cache-control", "public, max-age=3600")
        .unwrap();
    header.insert_header("content-length", "1024").unwrap();
    CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
}

/// One iteration: a lookup hit (meta deserialized, body handle created) or one full insert.
fn storage(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let storage = MokaStorage::new(256 << 20, Duration::from_secs(600)).leak();
    let span = Span::inactive().handle();
    let body = Bytes::from(vec![b'x'; 1024]);
    let keys: Vec<_> = (0..1000)
        .map(|i| {
            cache_key(&CacheTarget {
                scheme: "http",
                host: "h".into(),
                path_and_query: format!("/{i}"),
            })
        })
        .collect();
    let meta = meta();
    runtime.block_on(async {
        for key in &keys {
            let mut fill = storage.get_miss_handler(key, &meta, &span).await.unwrap();
            fill.write_body(body.clone(), true).await.unwrap();
            fill.finish().await.unwrap();
        }
    });
    let mut i = 0;
    c.bench_function("storage lookup hit (1 KiB)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            runtime
                .block_on(storage.lookup(&keys[i], &span))
                .unwrap()
                .unwrap()
        })
    });
    c.bench_function("storage insert (1 KiB)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            runtime.block_on(async {
                let mut fill = storage.get_miss_handler(&keys[i], &meta, &span).await.unwrap();
                fill.write_body(body.clone(), true).await.unwrap();
                fill.finish().await.unwrap()
            })
        })
    });
}

criterion_group!(benches, key_derivation, cacheability, storage);
criterion_main!(benches);
