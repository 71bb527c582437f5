//! Criterion benches of the per-request pure functions and the storage.
//!
//! Run with `cargo bench`. Each bench states what one iteration does.

#![allow(missing_docs)] // criterion_main! generates an undocumented main
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant, SystemTime};

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

/// The header of a typical static response from nginx (eight fields).
fn meta() -> CacheMeta {
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None).unwrap();
    for (name, value) in [
        ("server", "nginx/1.22.1"),
        ("date", "Mon, 30 Nov 2026 18:00:00 GMT"),
        ("content-type", "application/octet-stream"),
        ("content-length", "1024"),
        ("last-modified", "Mon, 30 Nov 2026 17:00:00 GMT"),
        ("etag", "\"6761f0a4-400\""),
        ("accept-ranges", "bytes"),
        ("cache-control", "public, max-age=3600"),
    ] {
        header.insert_header(name, value).unwrap();
    }
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
                authority: "h".into(),
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
    // The size side of a stored entry: what 1,000 entries of a 1 KiB response weigh, each.
    println!(
        "stored entry (1 KiB body, 8 header fields): {} bytes charged against max_memory",
        storage.weighted_size() / storage.entry_count().max(1)
    );
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

/// HTML-like text of `len` bytes from a fixed vocabulary, the kind of body that gets compressed.
fn html_text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "<div class=\"item\">",
        "</div>",
        "<a href=\"/product/",
        "\">",
        "</a>",
        "price",
        "<span>",
        "</span>",
        "edge",
        "cache",
        "description",
        "\n",
    ];
    let mut text = Vec::with_capacity(len + 32);
    let mut state: u32 = 7;
    while text.len() < len {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        text.extend_from_slice(WORDS[(state >> 16) as usize % WORDS.len()].as_bytes());
        text.extend_from_slice(format!("{} ", state % 1000).as_bytes());
    }
    text.truncate(len);
    text
}

/// One iteration: compress a whole body once, as when a response is stored (default levels)
/// and as the background recompression does (brotli 11).
fn compression(c: &mut Criterion) {
    use edgecache::compression::Coding;
    let defaults = edgecache::config::CompressionSettings::default();
    let mut group = c.benchmark_group("compress");
    group.sample_size(10);
    for (label, len) in [("1KiB", 1024), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let text = html_text(len);
        group.throughput(criterion::Throughput::Bytes(len as u64));
        let levels = [
            ("gzip", Coding::Gzip, defaults.gzip_level),
            ("gzip-stream", Coding::Gzip, defaults.stream_gzip_level),
            ("br", Coding::Brotli, defaults.brotli_level),
            ("br-stream", Coding::Brotli, defaults.stream_brotli_level),
            ("br-background", Coding::Brotli, defaults.brotli_background_level),
        ];
        for (name, coding, level) in levels {
            if name == "br-background" && len > (64 << 10) {
                continue; // seconds per iteration; the 64 KiB figure gives the rate
            }
            let id = format!("{name} q{level} {label}");
            group.bench_function(id, |b| b.iter(|| coding.encode(black_box(&text), level)));
        }
    }
    group.finish();
}

/// One iteration: a hit that selects the gzip coding of a 100 KiB stored page.
fn compressed_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let storage = MokaStorage::new(256 << 20, Duration::from_secs(600)).leak();
    let span = Span::inactive().handle();
    let mut key = cache_key(&CacheTarget {
        scheme: "http",
        host: "h".into(),
        authority: "h".into(),
        path_and_query: "/page".into(),
    });
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.insert_header("content-type", "text/html").unwrap();
    header.insert_header("cache-control", "max-age=3600").unwrap();
    let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header);
    key.user_tag = "cg".into();
    runtime.block_on(async {
        let mut fill = storage.get_miss_handler(&key, &meta, &span).await.unwrap();
        fill.write_body(Bytes::from(html_text(100 << 10)), true)
            .await
            .unwrap();
        fill.finish().await.unwrap();
    });
    c.bench_function("storage lookup hit (100 KiB, gzip coding)", |b| {
        b.iter(|| runtime.block_on(storage.lookup(&key, &span)).unwrap().unwrap())
    });
}

/// One iteration: a tag purge that matches nothing, scanning 100,000 stored entries (the cost
/// of every prefix, host and tag purge is this scan plus the entries it touches).
fn purge_scan(c: &mut Criterion) {
    use edgecache::purge::PurgeScope;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let storage = MokaStorage::new(1 << 30, Duration::from_secs(600)).leak();
    let span = Span::inactive().handle();
    let meta = meta();
    let body = Bytes::from_static(b"x");
    runtime.block_on(async {
        for i in 0..100_000 {
            let key = cache_key(&CacheTarget {
                scheme: "http",
                host: "h".into(),
                authority: "h".into(),
                path_and_query: format!("/item/{i}"),
            });
            let mut fill = storage.get_miss_handler(&key, &meta, &span).await.unwrap();
            fill.write_body(body.clone(), true).await.unwrap();
            fill.finish().await.unwrap();
        }
    });
    let scope = PurgeScope::Tag("absent".into());
    let mut group = c.benchmark_group("purge");
    group.sample_size(10);
    group.bench_function("tag purge scan (100k entries)", |b| {
        b.iter(|| storage.purge_scope(black_box(&scope), false))
    });
    group.finish();
}

/// A site with `n` rules: prefixes and exact paths, every eighth a regex.
fn routed_site(n: usize) -> Vec<edgecache::runtime::Route> {
    let mut text = String::from(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nhosts = [\"a.example\"]\norigins = [\"127.0.0.1:2\"]\n",
    );
    for i in 0..n {
        let matcher = match i % 8 {
            7 => format!("path_regex = \"^/r{i}/.*\\\\.(png|jpg)$\""),
            k if k % 2 == 0 => format!("path_prefix = \"/section{i}/\""),
            _ => format!("path = \"/page{i}\""),
        };
        text.push_str(&format!(
            "[[site.route]]\n{matcher}\nquery = {{ drop = [\"utm_*\", \"fbclid\"] }}\n"
        ));
    }
    let config = Config::parse(&text, std::path::Path::new("bench.toml")).unwrap();
    let events = edgecache::upstream::health_events();
    config.sites[0]
        .routes
        .iter()
        .map(|r| edgecache::runtime::Route::new(r, &events).unwrap())
        .collect()
}

/// One iteration: find the rule of a request among 32 (the last one matches, or none does),
/// and reduce a query the way a `drop` rule does for the key.
fn route_matching(c: &mut Criterion) {
    let routes = routed_site(32);
    let get = http::Method::GET;
    c.bench_function("route match, last of 32 rules", |b| {
        b.iter(|| edgecache::runtime::first_match(black_box(&routes), &get, black_box("/r31/photo.png")))
    });
    c.bench_function("route match, none of 32 rules", |b| {
        b.iter(|| edgecache::runtime::first_match(black_box(&routes), &get, black_box("/nowhere/at/all")))
    });
    let query = edgecache::config::QueryKey::Without(vec![
        edgecache::config::NamePattern::new("utm_*"),
        edgecache::config::NamePattern::new("fbclid"),
    ]);
    c.bench_function("query key, drop utm_* of 4 parameters", |b| {
        b.iter(|| {
            edgecache::cache::key::normalize_query(black_box("/a?utm_source=x&v=1&fbclid=y&b=2"), &query)
                .len()
        })
    });
}

/// One iteration: the header work of a pass-through request: hop-by-hop fields stripped from a
/// browser's request and `X-Forwarded-*` set, then hop-by-hop fields stripped from the origin's
/// response (which says `Connection: keep-alive`, as most do).
fn pass_through_headers(c: &mut Criterion) {
    use edgecache::proxy::headers::{set_forwarded, strip_request_hop_by_hop, strip_response_hop_by_hop};
    let mut req = request();
    for (name, value) in [
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("connection", "keep-alive"),
        ("cookie", "session=4f8e2a9c1b7d"),
    ] {
        req.insert_header(name, value).unwrap();
    }
    let mut resp = ResponseHeader::build(200, None).unwrap();
    for (name, value) in [
        ("server", "nginx"),
        ("date", "Mon, 30 Nov 2026 17:00:00 GMT"),
        ("content-type", "text/html"),
        ("content-length", "1024"),
        ("connection", "keep-alive"),
        ("cache-control", "no-store"),
    ] {
        resp.insert_header(name, value).unwrap();
    }
    let client = Some(std::net::IpAddr::from([192, 168, 10, 27]));
    c.bench_function("pass-through header work", |b| {
        b.iter(|| {
            let mut req = req.clone();
            strip_request_hop_by_hop(&mut req);
            set_forwarded(&mut req, client, "http");
            let mut resp = resp.clone();
            strip_response_hop_by_hop(&mut resp);
            (req, resp)
        })
    });
}

/// The access log, in each format: what a request pays (its record queued for the writer,
/// which writes to /dev/null every 10 ms), and the whole cost of a line (1,000 records queued,
/// then formatted and written at once, as the writer does; reported per line).
fn access_log_line(c: &mut Criterion) {
    use edgecache::access_log::{AccessLog, Record};
    use edgecache::config::AccessLogFormat;
    let record = Record {
        time: SystemTime::now(),
        client: Some([192, 168, 10, 27].into()),
        method: "GET",
        host: "www.example.com",
        path: "/assets/app.js?v=1234567",
        protocol: http::Version::HTTP_11,
        status: 200,
        bytes: 1024,
        referer: "https://www.example.com/",
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        cache: "hit",
        origin: "-",
        upstream: None,
        total: Duration::from_micros(210),
        error: None,
        route: None,
    };
    for (name, format) in [
        ("json", AccessLogFormat::Json),
        ("combined", AccessLogFormat::Combined),
    ] {
        let log = AccessLog::open(std::path::Path::new("/dev/null"), format).unwrap();
        // Timed in runs of 1,000 with the writer's work done between them, so records are
        // queued, not dropped because the writer fell behind a tight loop.
        c.bench_function(&format!("access-log record queued ({name})"), |b| {
            b.iter_custom(|iters| {
                let mut queuing = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let run = left.min(1000);
                    let started = Instant::now();
                    for _ in 0..run {
                        log.log(black_box(&record));
                    }
                    queuing += started.elapsed();
                    log.flush();
                    left -= run;
                }
                queuing
            })
        });
        let mut group = c.benchmark_group("access-log line written");
        group.throughput(criterion::Throughput::Elements(1000));
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..1000 {
                    log.log(black_box(&record));
                }
                log.flush();
            })
        });
        group.finish();
    }
}

criterion_group!(
    benches,
    access_log_line,
    pass_through_headers,
    route_matching,
    key_derivation,
    cacheability,
    storage,
    compression,
    compressed_hit,
    purge_scan
);
criterion_main!(benches);
