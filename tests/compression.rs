//! Compression end to end: negotiation, one origin fetch per URL, stored codings with their own
//! validators, untouched bodies and on-the-fly compression.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::pages::{fetch, get_with, page, serve_page};
use common::{eventually, Origin, Proxy, Reply};

const FRESH: &str = "public, max-age=60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_accept_encoding_gets_the_preferred_acceptable_coding() {
    let origin = Origin::start().await;
    let body = page(20_000);
    serve_page(&origin, "/page", body.clone(), FRESH);
    let proxy = Proxy::for_origin(&origin, "");
    let cases = [
        ("", "identity"),
        ("gzip", "gzip"),
        ("br", "br"),
        ("gzip, deflate, br", "br"),
        ("br;q=0, gzip", "gzip"),
        ("br;q=0.1, gzip;q=1", "br"),
        ("gzip;q=0", "identity"),
        ("*", "br"),
        ("*;q=0", "identity"),
        ("identity;q=0, gzip;q=0, br;q=0", "identity"),
        ("deflate, zstd", "identity"),
        ("x-gzip", "gzip"),
    ];
    // The first round includes the miss (compressed on the fly), the second is all hits.
    for round in 0..2 {
        for (accept_encoding, expected) in cases {
            let resp = get_with(&proxy, "/page", accept_encoding).await;
            assert_eq!(resp.status, 200);
            assert_eq!(
                resp.coding(),
                expected,
                "round {round}, Accept-Encoding: {accept_encoding:?}"
            );
            assert_eq!(resp.decoded(), body, "round {round}, {accept_encoding:?}");
            assert!(resp.varies_on_accept_encoding(), "{accept_encoding:?}");
        }
    }
    assert_eq!(origin.hits("/page"), 1, "one origin fetch for every coding");
    let seen = origin.seen("/page");
    assert!(
        seen[0].headers.get("accept-encoding").is_none(),
        "the origin is asked for identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_each_coding_share_one_origin_fetch() {
    let origin = Origin::start().await;
    let body = page(50_000);
    serve_page(&origin, "/shared", body.clone(), FRESH);
    let proxy = Proxy::for_origin(&origin, "");
    let identity = get_with(&proxy, "/shared", "identity").await;
    let gzip = get_with(&proxy, "/shared", "gzip").await;
    let brotli = get_with(&proxy, "/shared", "br").await;
    assert_eq!(origin.hits("/shared"), 1);
    assert_eq!(identity.body, body);
    assert_eq!(gzip.decoded(), body);
    assert_eq!(brotli.decoded(), body);
    assert!(gzip.header("cache-status").unwrap().contains("hit"));
    assert!(gzip.body.len() < body.len() / 2 && brotli.body.len() < body.len() / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_304_and_range_work_per_coding() {
    let origin = Origin::start().await;
    let body = page(30_000);
    serve_page(&origin, "/doc", body.clone(), FRESH);
    let proxy = Proxy::for_origin(&origin, "");
    get_with(&proxy, "/doc", "").await;

    let gzip = get_with(&proxy, "/doc", "gzip").await;
    let gzip_etag = gzip.header("etag").unwrap().to_string();
    assert_eq!(gzip_etag, "\"v1~gzip\"");
    assert_eq!(
        gzip.header("content-length").unwrap(),
        gzip.body.len().to_string()
    );

    let head = fetch(&proxy, "HEAD", "/doc", &[("accept-encoding", "gzip")]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.coding(), "gzip");
    assert_eq!(head.header("content-length"), gzip.header("content-length"));
    assert!(head.body.is_empty());

    let not_modified = fetch(
        &proxy,
        "GET",
        "/doc",
        &[("accept-encoding", "gzip"), ("if-none-match", &gzip_etag)],
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some(gzip_etag.as_str()));
    let other_coding = fetch(
        &proxy,
        "GET",
        "/doc",
        &[("accept-encoding", "br"), ("if-none-match", &gzip_etag)],
    )
    .await;
    assert_eq!(
        other_coding.status, 200,
        "a gzip validator does not match the br coding"
    );
    let identity_etag = fetch(&proxy, "GET", "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(identity_etag.status, 304);

    let range = fetch(
        &proxy,
        "GET",
        "/doc",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
    )
    .await;
    assert_eq!(range.status, 206);
    assert_eq!(range.coding(), "gzip");
    let total = gzip.body.len();
    assert_eq!(
        range.header("content-range").unwrap(),
        format!("bytes 0-99/{total}")
    );
    assert_eq!(range.body, gzip.body.slice(0..100));
    assert_eq!(origin.hits("/doc"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coding_first_asked_for_by_many_at_once_is_made_once_and_each_gets_a_whole_body() {
    let origin = Origin::start().await;
    let body = page(300_000);
    serve_page(&origin, "/late", body.clone(), FRESH);
    let proxy = Proxy::for_origin(&origin, "");
    let filled = get_with(&proxy, "/late", "").await;
    assert_eq!(filled.coding(), "identity");
    // Eight clients ask for gzip while it does not exist yet: one request makes it (off the
    // event loop, as the body is large), the others are served what is stored meanwhile.
    let requests = (0..8).map(|_| get_with(&proxy, "/late", "gzip"));
    for resp in futures_util::future::join_all(requests).await {
        assert_eq!(resp.status, 200);
        assert!(resp.header("cache-status").unwrap().contains("hit"));
        assert!(["gzip", "identity"].contains(&resp.coding()), "{}", resp.coding());
        assert_eq!(resp.decoded(), body, "{} body", resp.coding());
        assert!(resp.varies_on_accept_encoding());
    }
    let later = get_with(&proxy, "/late", "gzip").await;
    assert_eq!(later.coding(), "gzip", "the coding was stored");
    assert_eq!(later.header("etag"), Some("\"v1~gzip\""));
    assert_eq!(later.decoded(), body);
    assert_eq!(origin.hits("/late"), 1, "no coding refetches the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_keeps_every_coding_and_sends_the_origin_its_own_etag() {
    let origin = Origin::start().await;
    let body = page(20_000);
    let stored = body.clone();
    origin.route("/reval", move |seen, n| {
        if n > 1 {
            assert_eq!(seen.headers.get("if-none-match").unwrap(), "\"v1\"");
            return Reply::new(304, "")
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60");
        }
        Reply::ok(stored.clone())
            .header("content-type", "text/html")
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\"")
    });
    let proxy = Proxy::for_origin(&origin, "");
    get_with(&proxy, "/reval", "gzip").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revalidated = get_with(&proxy, "/reval", "gzip").await;
    assert_eq!(origin.hits("/reval"), 2);
    assert_eq!(revalidated.coding(), "gzip");
    assert_eq!(revalidated.header("etag"), Some("\"v1~gzip\""));
    assert_eq!(revalidated.decoded(), body);
    for accept_encoding in ["", "gzip", "br"] {
        let hit = get_with(&proxy, "/reval", accept_encoding).await;
        assert!(
            hit.header("cache-status").unwrap().contains("hit"),
            "{accept_encoding:?}"
        );
        assert_eq!(hit.decoded(), body);
    }
    assert_eq!(origin.hits("/reval"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transform_media_and_small_bodies_are_untouched() {
    let origin = Origin::start().await;
    let text = page(10_000);
    let no_transform = text.clone();
    origin.route("/no-transform", move |_, _| {
        Reply::ok(no_transform.clone())
            .header("content-type", "text/html")
            .header("cache-control", "max-age=60, no-transform")
    });
    let image = text.clone();
    origin.route("/image", move |_, _| {
        Reply::ok(image.clone())
            .header("content-type", "image/png")
            .header("cache-control", FRESH)
    });
    origin.route("/small", |_, _| {
        Reply::ok("tiny")
            .header("content-type", "text/plain")
            .header("cache-control", FRESH)
    });
    let proxy = Proxy::for_origin(&origin, "");
    for path in ["/no-transform", "/image", "/small"] {
        for _ in 0..2 {
            let resp = get_with(&proxy, path, "gzip, br").await;
            assert_eq!(resp.coding(), "identity", "{path}");
            assert!(!resp.varies_on_accept_encoding(), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_compressed_bodies_are_kept_and_decoded_for_other_clients() {
    let origin = Origin::start().await;
    let text = page(40_000);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    std::io::Write::write_all(&mut encoder, &text).unwrap();
    let gzipped = Bytes::from(encoder.finish().unwrap());
    let origin_bytes = gzipped.clone();
    origin.route("/pre", move |_, _| {
        Reply::ok(origin_bytes.clone())
            .header("content-type", "application/javascript")
            .header("content-encoding", "gzip")
            .header("cache-control", FRESH)
            .header("etag", "\"gz\"")
    });
    let proxy = Proxy::for_origin(&origin, "");
    // Stored first (a client that accepts the origin's coding gets its bytes as they are).
    let first = get_with(&proxy, "/pre", "gzip").await;
    assert_eq!(first.body, gzipped);
    let gzip = get_with(&proxy, "/pre", "gzip").await;
    assert_eq!(gzip.body, gzipped, "the origin's bytes are served as they are");
    assert_eq!(gzip.header("etag"), Some("\"gz\""));
    let identity = get_with(&proxy, "/pre", "").await;
    assert_eq!(identity.coding(), "identity");
    assert_eq!(identity.body, text);
    assert_eq!(identity.header("etag"), Some("\"gz~identity\""));
    let brotli = get_with(&proxy, "/pre", "br").await;
    assert_eq!(brotli.coding(), "br");
    assert_eq!(brotli.decoded(), text);
    assert_eq!(origin.hits("/pre"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_responses_are_compressed_as_they_stream() {
    let origin = Origin::start().await;
    let body = page(100_000);
    serve_page(&origin, "/private", body.clone(), "private, max-age=60");
    let proxy = Proxy::for_origin(&origin, "");
    for (accept_encoding, coding) in [("gzip", "gzip"), ("br", "br"), ("", "identity")] {
        let resp = get_with(&proxy, "/private", accept_encoding).await;
        assert_eq!(resp.coding(), coding);
        assert_eq!(resp.decoded(), body);
        assert!(resp.varies_on_accept_encoding());
        if coding != "identity" {
            assert!(resp.header("content-length").is_none());
            let etag = resp.header("etag").unwrap();
            assert_eq!(
                etag,
                format!("W/\"v1~{coding}\""),
                "on-the-fly bytes get a weak tag"
            );
        }
    }
    assert_eq!(origin.hits("/private"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_from_the_origin_is_merged_and_still_selects_variants() {
    let origin = Origin::start().await;
    origin.route("/lang", |seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap());
        Reply::ok(format!("{lang} ").repeat(2000))
            .header("content-type", "text/plain")
            .header("cache-control", FRESH)
            .header("vary", "Accept-Language")
    });
    let proxy = Proxy::for_origin(&origin, "");
    for _ in 0..2 {
        for lang in ["en", "fr"] {
            let resp = fetch(
                &proxy,
                "GET",
                "/lang",
                &[("accept-encoding", "gzip"), ("accept-language", lang)],
            )
            .await;
            assert_eq!(resp.coding(), "gzip");
            assert_eq!(resp.decoded(), format!("{lang} ").repeat(2000).into_bytes());
            let vary: Vec<_> = resp
                .headers
                .get_all("vary")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(
                vary.join(", ").to_ascii_lowercase(),
                "accept-language, accept-encoding"
            );
        }
    }
    assert_eq!(origin.hits("/lang"), 2, "one fetch per language, none per coding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_without_compression_forwards_a_normalised_accept_encoding() {
    let origin = Origin::start().await;
    let body = page(10_000);
    serve_page(&origin, "/plain", body.clone(), FRESH);
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\ncompress = false\n",
        origin.addr
    ));
    let resp = get_with(&proxy, "/plain", "deflate, gzip;q=0.5, zstd").await;
    assert_eq!(resp.coding(), "identity");
    assert_eq!(resp.body, body);
    assert_eq!(origin.seen("/plain")[0].headers["accept-encoding"], "gzip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brotli_is_recompressed_at_maximum_quality_in_the_background() {
    let origin = Origin::start().await;
    let body = page(200_000);
    serve_page(&origin, "/hot", body.clone(), FRESH);
    let proxy = Proxy::for_origin(&origin, "");
    get_with(&proxy, "/hot", "").await;
    let first_pass = get_with(&proxy, "/hot", "br").await;
    assert_eq!(first_pass.header("etag"), Some("W/\"v1~br\""));
    let first_len = first_pass.body.len();
    let mut last = None;
    eventually(Duration::from_secs(20), "the brotli coding is upgraded", || {
        let resp = common::block_on(get_with(&proxy, "/hot", "br"));
        let done = resp.header("etag") == Some("\"v1~br\"");
        last = Some(resp);
        done
    })
    .await;
    let last = last.unwrap();
    assert_eq!(last.decoded(), body);
    assert!(last.body.len() < first_len, "{} !< {first_len}", last.body.len());
    assert_eq!(origin.hits("/hot"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_clients_get_identity_for_uncacheable_responses() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let body = page(20_000);
    serve_page(&origin, "/old", body.clone(), "no-store");
    let proxy = Proxy::for_origin(&origin, "");
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /old HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(!head.contains("transfer-encoding: chunked"), "{head}");
    assert!(response.ends_with(&body[body.len() - 100..]));
}
