//! The corners of RFC 9111 (HTTP caching), RFC 9110 (semantics) and RFC 9213 (targeted
//! cache control), one test per rule and named after it, through the default config.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, SystemTime};

use common::{cache_status, client, get, Origin, Proxy, Reply};

/// RFC 9111 §3, §4.2.2: a response with explicit freshness is storable whatever its final
/// status; heuristic freshness only for the heuristically cacheable ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_final_status_with_explicit_freshness_is_stored() {
    let origin = Origin::start().await;
    let statuses = [400u16, 500, 502, 503, 504, 299, 499, 599];
    let freshness: [(&'static str, &'static str); 3] = [
        ("cache-control", "max-age=60"),
        ("cache-control", "s-maxage=60"),
        ("cdn-cache-control", "max-age=60"),
    ];
    for status in statuses {
        for (i, &(name, value)) in freshness.iter().enumerate() {
            origin.route(&format!("/s{status}-{i}"), move |_, _| {
                Reply::new(status, "error page").header(name, value)
            });
        }
        origin.route(&format!("/s{status}-expires"), move |_, _| {
            let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
            Reply::new(status, "error page").header("expires", expires)
        });
        origin.route(&format!("/s{status}-heuristic"), move |_, _| {
            Reply::new(status, "error page").header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        });
    }
    let proxy = Proxy::for_origin(&origin, "");
    for status in statuses {
        let paths = (0..freshness.len())
            .map(|i| format!("/s{status}-{i}"))
            .chain([format!("/s{status}-expires")]);
        for path in paths {
            let (first, _, _) = get(&proxy, &path, &[]).await;
            assert_eq!(first, status, "{path}");
            let (second, cache, body) = get(&proxy, &path, &[]).await;
            assert_eq!((second, body.as_str()), (status, "error page"), "{path}");
            assert!(cache.contains("hit"), "{path}: {cache}");
            assert_eq!(origin.hits(&path), 1, "{path}");
        }
        let heuristic = format!("/s{status}-heuristic");
        get(&proxy, &heuristic, &[]).await;
        get(&proxy, &heuristic, &[]).await;
        assert_eq!(origin.hits(&heuristic), 2, "no heuristic freshness for {status}");
    }
}

/// RFC 9111 §5.2.2.3: with `must-understand`, only understood status codes are stored, and
/// for those the `no-store` that accompanies it is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_understand_stores_only_understood_status_codes() {
    let origin = Origin::start().await;
    for status in [200u16, 299] {
        origin.route(&format!("/mu{status}"), move |_, _| {
            Reply::new(status, "body").header("cache-control", "max-age=60, must-understand, no-store")
        });
    }
    let proxy = Proxy::for_origin(&origin, "");
    for _ in 0..2 {
        get(&proxy, "/mu200", &[]).await;
        get(&proxy, "/mu299", &[]).await;
    }
    assert_eq!(origin.hits("/mu200"), 1, "200 is understood: stored");
    assert_eq!(origin.hits("/mu299"), 2, "299 is not understood: not stored");
}

/// A response that is stale at once (`Age` beyond `max-age`) for `cache_control`.
fn stale_then_failing(origin: &Origin, path: &str, cache_control: &'static str) {
    origin.route(path, move |_, n| match n {
        1 => Reply::ok("stored copy")
            .header("cache-control", cache_control)
            .header("age", "11"),
        _ => Reply::new(503, "origin failing"),
    });
}

/// RFC 9111 §4.2.4: when the origin fails (5xx, refused), a stale copy is served within a
/// default window even without `stale-if-error`; never for responses that forbid it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_by_default_when_the_origin_fails() {
    let origin = Origin::start().await;
    stale_then_failing(&origin, "/plain", "max-age=10");
    let strict = [
        ("/must-revalidate", "max-age=10, must-revalidate"),
        ("/proxy-revalidate", "max-age=10, proxy-revalidate"),
        ("/no-cache", "max-age=10, no-cache"),
        ("/s-maxage", "s-maxage=10"),
    ];
    for (path, cc) in strict {
        stale_then_failing(&origin, path, cc);
    }
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/plain", &[]).await;
    for (path, _) in strict {
        get(&proxy, path, &[]).await;
    }
    let (status, cache, body) = get(&proxy, "/plain", &[]).await;
    assert_eq!((status, body.as_str()), (200, "stored copy"));
    assert!(
        cache.contains("fwd=stale") && cache.contains("stale-if-error"),
        "{cache}"
    );
    for (path, _) in strict {
        let (status, _, body) = get(&proxy, path, &[]).await;
        assert_eq!((status, body.as_str()), (503, "origin failing"), "{path}");
    }
    origin.stop();
    let (status, _, body) = get(&proxy, "/plain", &[]).await;
    assert_eq!((status, body.as_str()), (200, "stored copy"), "origin down");
    for (path, _) in strict {
        let (status, _, _) = get(&proxy, path, &[]).await;
        assert!(status == 502 || status == 504, "{path}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_on_error_window_zero_turns_it_off() {
    let origin = Origin::start().await;
    stale_then_failing(&origin, "/plain", "max-age=10");
    let proxy = Proxy::for_origin(&origin, "stale_if_error = \"0s\"");
    get(&proxy, "/plain", &[]).await;
    let (status, _, _) = get(&proxy, "/plain", &[]).await;
    assert_eq!(status, 503);
}

/// RFC 9111 §4.2.3: a hit's `Age` counts from the `Date` its origin sent, over HTTP/1.1 and
/// HTTP/2, with `Cache-Control` or `Expires` freshness. (RFC 9110 §6.6.1 also wants that `Date`
/// sent unchanged; pingora's HTTP/1 and HTTP/2 servers overwrite it on every response, a known
/// deviation listed in the README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_of_a_hit_counts_from_the_origin_date() {
    let origin = Origin::start().await;
    let sent = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(5));
    let date = sent.clone();
    origin.route("/dated", move |_, _| {
        Reply::ok("dated")
            .header("cache-control", "max-age=600")
            .header("date", &date)
    });
    let with_expires = sent.clone();
    origin.route("/expires", move |_, _| {
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(600));
        Reply::ok("expires")
            .header("expires", expires)
            .header("date", &with_expires)
    });
    let proxy = Proxy::start_with_server(
        &format!(
            "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n",
            origin.addr
        ),
        "h2c = true",
    );
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for path in ["/dated", "/expires"] {
        client().get(proxy.url(path)).send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for client in [client(), h2.clone()] {
            let hit = client.get(proxy.url(path)).send().await.unwrap();
            assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
            assert!(hit.headers().contains_key("date"), "{path}");
            let age: u64 = hit.headers()["age"].to_str().unwrap().parse().unwrap();
            assert!(age >= 6, "{path}: Age {age} counts from the origin's Date");
        }
    }
}

/// RFC 9111 §5.1: `Age` counts as its first valid value; invalid members are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_counts_its_first_valid_value() {
    let origin = Origin::start().await;
    let cases = [
        ("/old-list", "7200, 0", false),
        ("/old-after-junk", "1a, 7200", false),
        ("/junk", "1a", true),
        ("/negative", "-5", true),
    ];
    for (path, age, _) in cases {
        origin.route(path, move |_, _| {
            Reply::ok("aged")
                .header("cache-control", "max-age=3600")
                .header("age", age)
        });
    }
    let proxy = Proxy::for_origin(&origin, "stale_if_error = \"0s\"");
    for (path, age, fresh) in cases {
        get(&proxy, path, &[]).await;
        let (_, cache, _) = get(&proxy, path, &[]).await;
        assert_eq!(cache.contains("hit"), fresh, "Age: {age} -> {cache}");
    }
}

/// RFC 9213 §2.1: `CDN-Cache-Control` is a Structured Field Dictionary; one that does not
/// parse, or has a directive of the wrong type, is ignored whole. It is forwarded unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_cache_control_is_a_structured_dictionary_forwarded_unchanged() {
    let origin = Origin::start().await;
    let cases = [
        ("/valid", "max-age=60", true),
        ("/unparsable", "max-age=60, &&&&&", false),
        ("/wrong-type", "max-age=\"60\"", false),
        ("/decimal", "max-age=60.5", false),
    ];
    for (path, value, _) in cases {
        origin.route(path, move |_, _| {
            Reply::ok("targeted")
                .header("cache-control", "no-store")
                .header("cdn-cache-control", value)
        });
    }
    let proxy = Proxy::for_origin(&origin, "");
    for (path, value, honoured) in cases {
        let first = client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(first.headers()["cdn-cache-control"], value, "forwarded unchanged");
        get(&proxy, path, &[]).await;
        let expected = if honoured { 1 } else { 2 };
        assert_eq!(origin.hits(path), expected, "CDN-Cache-Control: {value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_cache_control_can_be_stripped_per_site() {
    let origin = Origin::start().await;
    origin.route("/cdn", |_, _| {
        Reply::ok("cdn").header("cdn-cache-control", "max-age=60")
    });
    let proxy = Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\nstrip_cdn_cache_control = true\n",
        origin.addr
    ));
    for _ in 0..2 {
        let resp = client().get(proxy.url("/cdn")).send().await.unwrap();
        assert!(!resp.headers().contains_key("cdn-cache-control"));
    }
    assert_eq!(origin.hits("/cdn"), 1, "still honoured");
}

/// RFC 9111 §4.1: list members' order, case and whitespace do not make new variants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_matching_normalises_list_values() {
    let origin = Origin::start().await;
    origin.route("/lang", |_, _| {
        Reply::ok("localised")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language, X-Thing")
    });
    let proxy = Proxy::for_origin(&origin, "");
    for lang in ["en, fr", "fr, en", "EN,fr", "fr,  EN"] {
        get(&proxy, "/lang", &[("accept-language", lang), ("x-thing", "a, b")]).await;
    }
    assert_eq!(origin.hits("/lang"), 1);
    get(&proxy, "/lang", &[("accept-language", "en"), ("x-thing", "a,b")]).await;
    assert_eq!(
        origin.hits("/lang"),
        2,
        "another language list is another variant"
    );
    get(
        &proxy,
        "/lang",
        &[("accept-language", "en"), ("x-thing", "a ,  b")],
    )
    .await;
    assert_eq!(
        origin.hits("/lang"),
        2,
        "whitespace of unknown headers is normalised"
    );
    get(&proxy, "/lang", &[("accept-language", "en"), ("x-thing", "A,b")]).await;
    assert_eq!(origin.hits("/lang"), 3, "case of unknown headers still counts");
}

/// RFC 9110 §5.6.7: recipients parse IMF-fixdate, RFC 850 and asctime dates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_are_parsed_in_all_three_formats() {
    let origin = Origin::start().await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let imf = httpdate::fmt_http_date(later);
    // "Sun, 06 Nov 1994 08:49:37 GMT" -> "Sunday, 06-Nov-94 08:49:37 GMT" / "Sun Nov  6 08:49:37 1994"
    let parts: Vec<&str> = imf.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let (weekday, day, month, year, time) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
    let long_day = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    .into_iter()
    .find(|d| d.starts_with(weekday))
    .unwrap();
    let rfc850 = format!("{long_day}, {day}-{month}-{} {time} GMT", &year[2..]);
    let day_number: u32 = day.parse().unwrap();
    let asctime = format!("{weekday} {month} {day_number:>2} {time} {year}");
    for (path, expires) in [("/imf", imf), ("/rfc850", rfc850), ("/asctime", asctime)] {
        origin.route(path, move |_, _| Reply::ok("dated").header("expires", &expires));
    }
    origin.route("/modified-rfc850", |_, _| {
        Reply::ok("modified").header("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT")
    });
    origin.route("/modified-asctime", |_, _| {
        Reply::ok("modified").header("last-modified", "Sun Nov  6 08:49:37 1994")
    });
    let proxy = Proxy::for_origin(&origin, "");
    for path in [
        "/imf",
        "/rfc850",
        "/asctime",
        "/modified-rfc850",
        "/modified-asctime",
    ] {
        get(&proxy, path, &[]).await;
        let (_, cache, _) = get(&proxy, path, &[]).await;
        assert!(cache.contains("hit"), "{path}: {cache}");
    }
}

/// RFC 9111 §4.2.1: conflicting duplicate directives and invalid `max-age` values make the
/// response stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_or_invalid_max_age_is_stale() {
    let origin = Origin::start().await;
    let one_line = [
        ("/conflict", "max-age=3600, max-age=0"),
        ("/conflict-s", "s-maxage=3600, s-maxage=5"),
        ("/decimal", "max-age=1.5"),
        ("/prefix", "max-age=a100"),
        ("/suffix", "max-age=100a"),
    ];
    for (path, cc) in one_line {
        origin.route(path, move |_, _| Reply::ok("x").header("cache-control", cc));
    }
    origin.route("/two-lines", |_, _| {
        Reply::ok("x")
            .header("cache-control", "max-age=3600")
            .header("cache-control", "max-age=0")
    });
    origin.route("/same-twice", |_, _| {
        Reply::ok("x").header("cache-control", "max-age=3600, max-age=3600")
    });
    let proxy = Proxy::for_origin(&origin, "");
    let stale = one_line.iter().map(|(p, _)| *p).chain(["/two-lines"]);
    for path in stale {
        get(&proxy, path, &[]).await;
        get(&proxy, path, &[]).await;
        assert_eq!(origin.hits(path), 2, "{path} must be stale");
    }
    get(&proxy, "/same-twice", &[]).await;
    let (_, cache, _) = get(&proxy, "/same-twice", &[]).await;
    assert!(
        cache.contains("hit"),
        "a repeated identical directive is no conflict: {cache}"
    );
}

/// RFC 9110 §14.2, §9.3.2: `Range` on `HEAD` is ignored; HEAD gets GET's header fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_head_is_ignored() {
    let origin = Origin::start().await;
    origin.fixed("/head", "max-age=60", "0123456789abcdefghij");
    let proxy = Proxy::for_origin(&origin, "");
    // A miss first, then a hit.
    for _ in 0..2 {
        let head = client()
            .head(proxy.url("/head"))
            .header("range", "bytes=0-9")
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "{}", cache_status(&head));
        assert_eq!(head.headers()["content-length"], "20");
        assert!(!head.headers().contains_key("content-range"));
    }
    let beyond = client()
        .head(proxy.url("/head"))
        .header("range", "bytes=50-60")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 200);
}

/// RFC 9110 §13.1.5: `If-Range` needs a strong match; a weak tag sends the whole 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_range_with_a_weak_etag_never_matches() {
    let origin = Origin::start().await;
    origin.route("/weak", |_, _| {
        Reply::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("etag", "W/\"v1\"")
    });
    origin.route("/strong", |_, _| {
        Reply::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
    });
    let proxy = Proxy::for_origin(&origin, "");
    for _ in 0..2 {
        let weak = client()
            .get(proxy.url("/weak"))
            .header("range", "bytes=0-3")
            .header("if-range", "W/\"v1\"")
            .send()
            .await
            .unwrap();
        assert_eq!(weak.status(), 200, "{}", cache_status(&weak));
        assert_eq!(weak.text().await.unwrap(), "0123456789");
        let strong = client()
            .get(proxy.url("/strong"))
            .header("range", "bytes=0-3")
            .header("if-range", "\"v1\"")
            .send()
            .await
            .unwrap();
        assert_eq!(strong.status(), 206);
        assert_eq!(strong.text().await.unwrap(), "0123");
    }
}

/// RFC 9110 §14.1.2: a suffix range of an empty representation is unsatisfiable; the answer is
/// the whole (empty) 200 or a 416 with `bytes */0`, never an invalid `Content-Range`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suffix_range_on_an_empty_body() {
    let origin = Origin::start().await;
    origin.fixed("/empty", "max-age=60", "");
    let proxy = Proxy::for_origin(&origin, "");
    for _ in 0..2 {
        let resp = client()
            .get(proxy.url("/empty"))
            .header("range", "bytes=-6")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let range = resp
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        match status {
            200 => assert_eq!(range, None),
            416 => assert_eq!(range.as_deref(), Some("bytes */0")),
            other => panic!("{other} {range:?}"),
        }
        assert_eq!(resp.text().await.unwrap(), "");
    }
}

/// RFC 9110 §15.3.7, §15.4.5: a 206 or 304 made on a miss carries the `Vary` its 200 would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_and_not_modified_on_a_miss_carry_vary() {
    let origin = Origin::start().await;
    let text = "compressible text ".repeat(100);
    for path in ["/range-miss", "/inm-miss"] {
        let text = text.clone();
        origin.route(path, move |_, _| {
            Reply::ok(text.clone())
                .header("cache-control", "max-age=60")
                .header("content-type", "text/plain")
                .header("etag", "\"t1\"")
        });
    }
    let proxy = Proxy::for_origin(&origin, "");
    let partial = client()
        .get(proxy.url("/range-miss"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 206);
    let vary = partial
        .headers()
        .get("vary")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase());
    assert!(
        vary.is_some_and(|v| v.contains("accept-encoding")),
        "206 on a miss"
    );
    let not_modified = client()
        .get(proxy.url("/inm-miss"))
        .header("if-none-match", "\"t1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304, "{:?}", not_modified.headers());
    let vary = not_modified
        .headers()
        .get("vary")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase());
    assert!(
        vary.is_some_and(|v| v.contains("accept-encoding")),
        "304 on a miss {:?}",
        not_modified.headers()
    );
}

/// RFC 9110 §12.5.3: a body the origin encoded itself reaches a client that does not accept
/// that coding decoded, on a miss as on a hit; never a 304 for the encoded representation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_encoded_bodies_are_decoded_for_clients_that_refuse_the_coding() {
    let origin = Origin::start().await;
    let text = "text the origin gzipped itself. ".repeat(200);
    let gzipped = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    };
    let refusals = [
        ("/none", None),
        ("/gzip-q0", Some("gzip;q=0, br")),
        ("/star-q0", Some("*;q=0")),
        ("/br-only", Some("br")),
    ];
    for (path, _) in refusals {
        let body = gzipped.clone();
        origin.route(path, move |_, _| {
            Reply::ok(body.clone())
                .header("cache-control", "max-age=60")
                .header("content-type", "text/plain")
                .header("content-encoding", "gzip")
                .header("etag", "\"g1\"")
        });
    }
    let proxy = Proxy::for_origin(&origin, "");
    for (path, accept) in refusals {
        // The miss, then the hit.
        for round in ["miss", "hit"] {
            let mut request = client().get(proxy.url(path));
            if let Some(accept) = accept {
                request = request.header("accept-encoding", accept);
            }
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path} {round}");
            assert!(
                !resp.headers().contains_key("content-encoding")
                    || resp.headers()["content-encoding"] == "br",
                "{path} {round}: {:?}",
                resp.headers()
            );
            if resp.headers().contains_key("content-encoding") {
                continue; // br, re-encoded from the stored identity body on the hit
            }
            assert_eq!(resp.text().await.unwrap(), text, "{path} {round}");
        }
        // The gzip representation's tag does not match the identity one.
        let mut request = client().get(proxy.url(path)).header("if-none-match", "\"g1\"");
        if let Some(accept) = accept {
            request = request.header("accept-encoding", accept);
        }
        let resp = request.send().await.unwrap();
        if resp.status() == 304 {
            let etag = resp
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_string());
            panic!("{path}: 304 for the gzip tag to a client that refuses gzip (etag {etag:?})");
        }
    }
}

/// RFC 9110 §13.1.2, §15.4.5; RFC 9111 §4.3.4: a conditional request that passes through
/// uncached gets the answer for its own representation: the 304 carries the tag its 200 would,
/// and a tag of another coding's representation does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_conditionals_map_the_coding_tags() {
    let origin = Origin::start().await;
    let text = "private text, compressed by the proxy. ".repeat(100);
    origin.route("/private", move |seen, _| {
        let matches = seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.to_str().unwrap().trim_start_matches("W/") == "\"p1\"");
        let reply = if matches {
            Reply::new(304, "")
        } else {
            Reply::ok(text.clone()).header("content-type", "text/plain")
        };
        reply.header("cache-control", "private").header("etag", "\"p1\"")
    });
    let proxy = Proxy::for_origin(&origin, "");
    let gzip = client()
        .get(proxy.url("/private"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    let tag = gzip.headers()["etag"].to_str().unwrap().to_string();
    assert!(tag.contains("~gzip"), "{tag}");

    let same = client()
        .get(proxy.url("/private"))
        .header("accept-encoding", "gzip")
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 304);
    assert_eq!(
        same.headers()["etag"].to_str().unwrap(),
        tag,
        "the 304 names the gzip tag"
    );

    let identity = client()
        .get(proxy.url("/private"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(identity.status(), 200, "another coding's tag does not match");
    assert!(!identity.headers().contains_key("content-encoding"));
    assert_eq!(identity.headers()["etag"], "\"p1\"");
}

/// RFC 9111 §4.3.4, §4.3.5, §3.2: revalidation updates the stored header fields, except those
/// describing the stored body. A `HEAD` on a stale entry revalidates it (pingora asks with a
/// conditional GET, so a HEAD response never has to be merged) and its 304 updates it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_updates_stored_fields_but_never_the_body_framing() {
    let origin = Origin::start().await;
    origin.route("/refresh", |seen, n| {
        let validated = seen.headers.get("if-none-match").is_some_and(|v| v == "\"h1\"");
        if n == 1 || !validated {
            return Reply::ok("0123456789")
                .header("cache-control", "max-age=0")
                .header("etag", "\"h1\"")
                .header("x-version", n);
        }
        Reply::new(304, "")
            .header("cache-control", "max-age=0")
            .header("etag", "\"h1\"")
            .header("x-version", n)
            .header("content-encoding", "gzip")
            .header("content-range", "bytes 0-1/2")
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/refresh", &[]).await;
    let head = client().head(proxy.url("/refresh")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-version"], "2", "HEAD revalidated");
    let seen = origin.seen("/refresh");
    assert_eq!(
        seen[1].method,
        http::Method::GET,
        "revalidated with a conditional GET"
    );
    let resp = client().get(proxy.url("/refresh")).send().await.unwrap();
    assert_eq!(resp.headers()["x-version"], "3");
    assert!(
        !resp.headers().contains_key("content-encoding"),
        "{:?}",
        resp.headers()
    );
    assert!(!resp.headers().contains_key("content-range"));
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(resp.text().await.unwrap(), "0123456789");
}

/// RFC 9111 §3.3, §3.4 as far as pingora's cache model goes: a `Range` miss fetches the whole
/// response once (its range is cut from the fill as it streams) and stores it, so every later
/// range is served from the cache with the right `Content-Range`. pingora stores one complete
/// body per entry, so a `206` from an origin is not stored and parts are not combined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_misses_store_the_whole_response_and_later_ranges_are_hits() {
    let origin = Origin::start().await;
    let body: String = (0..10_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let stored = body.clone();
    origin.route("/big", move |_, _| {
        Reply::ok(stored.clone())
            .header("cache-control", "max-age=60")
            .header("etag", "\"big\"")
    });
    let proxy = Proxy::for_origin(&origin, "");
    for (range, start, end) in [
        ("bytes=100-199", 100, 199),
        ("bytes=9000-", 9000, 9999),
        ("bytes=-10", 9990, 9999),
    ] {
        let resp = client()
            .get(proxy.url("/big"))
            .header("range", range)
            .header("accept-encoding", "identity")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            resp.headers()["content-range"].to_str().unwrap(),
            format!("bytes {start}-{end}/10000"),
        );
        assert_eq!(resp.text().await.unwrap(), body[start..=end], "{range}");
    }
    assert_eq!(origin.hits("/big"), 1, "one whole fetch");
    assert!(
        origin.seen("/big")[0].headers.get("range").is_none(),
        "the miss asked for the whole response"
    );
}
