//! RFC 9111 caching behaviour, end to end: a real origin, the real proxy, real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, SystemTime};

use common::{cache_status, client, eventually, get, Origin, Proxy, Reply};

const FRESH: &str = "public, max-age=60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_is_a_hit_with_age_and_cache_status() {
    let origin = Origin::start().await;
    origin.fixed("/page", FRESH, "hello");
    let proxy = Proxy::for_origin(&origin, "");

    let first = client().get(proxy.url("/page")).send().await.unwrap();
    let status = cache_status(&first);
    // max-age=60, a second or so spent on the way.
    let ttl = common::ttl_of(&status).unwrap_or_default();
    assert!((57..=60).contains(&ttl), "{status}");
    assert_eq!(
        status.replace(&format!("ttl={ttl}"), "ttl=N"),
        "edgecache; fwd=uri-miss; fwd-status=200; ttl=N; stored"
    );
    assert_eq!(first.text().await.unwrap(), "hello");
    let second = client().get(proxy.url("/page")).send().await.unwrap();
    assert!(
        cache_status(&second).starts_with("edgecache; hit; ttl="),
        "{}",
        cache_status(&second)
    );
    assert!(second.headers().contains_key("age"));
    assert_eq!(second.text().await.unwrap(), "hello");
    assert_eq!(origin.hits("/page"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_requests_share_one_entry() {
    let origin = Origin::start().await;
    origin.fixed("/shared", FRESH, "one entry");
    let proxy = Proxy::start_with_server(
        &format!(
            "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n",
            origin.addr
        ),
        "h2c = true",
    );
    let h1 = client().get(proxy.url("/shared?x=1")).send().await.unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    let h2_client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let h2 = h2_client.get(proxy.url("/shared?x=1")).send().await.unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert!(cache_status(&h2).contains("hit"), "{}", cache_status(&h2));
    assert_eq!(h2.text().await.unwrap(), "one entry");
    assert_eq!(origin.hits("/shared"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_share_an_entry_and_head_is_fetched_as_get() {
    let origin = Origin::start().await;
    origin.fixed("/h", FRESH, "body bytes");
    let proxy = Proxy::for_origin(&origin, "");
    let head = client().head(proxy.url("/h")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "10");
    assert_eq!(head.text().await.unwrap(), "");
    let (_, status, body) = get(&proxy, "/h", &[]).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(body, "body bytes");
    assert_eq!(origin.hits("/h"), 1);
    assert_eq!(origin.seen("/h")[0].method, http::Method::GET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_are_part_of_the_key() {
    let origin = Origin::start().await;
    origin.route("/q", |seen, _| {
        Reply::ok(seen.uri.query().unwrap_or("").to_string()).header("cache-control", FRESH)
    });
    let proxy = Proxy::for_origin(&origin, "");
    assert_eq!(get(&proxy, "/q?a=1", &[]).await.2, "a=1");
    assert_eq!(get(&proxy, "/q?a=2", &[]).await.2, "a=2");
    assert_eq!(get(&proxy, "/q?a=1", &[]).await.2, "a=1");
    assert_eq!(origin.hits("/q"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_maxage_overrides_max_age_and_upstream_age_counts() {
    let origin = Origin::start().await;
    // max-age alone would keep this fresh; s-maxage=5 with Age 10 makes it stale on arrival.
    origin.route("/s", |_, _| {
        Reply::ok("s")
            .header("cache-control", "max-age=600, s-maxage=5")
            .header("age", "10")
    });
    // Age 100 beyond max-age 60: stale on arrival.
    origin.route("/old", |_, _| {
        Reply::ok("old")
            .header("cache-control", "max-age=60")
            .header("age", "100")
    });
    // Age 30 within max-age 60: fresh, and hits report an Age of at least 30.
    origin.route("/aged", |_, _| {
        Reply::ok("aged")
            .header("cache-control", "max-age=60")
            .header("age", "30")
    });
    let proxy = Proxy::for_origin(&origin, "");
    for path in ["/s", "/old", "/aged"] {
        get(&proxy, path, &[]).await;
    }
    get(&proxy, "/s", &[]).await;
    get(&proxy, "/old", &[]).await;
    let aged = client().get(proxy.url("/aged")).send().await.unwrap();
    let age: u64 = aged.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age >= 30, "age {age}");
    assert_eq!(
        (origin.hits("/s"), origin.hits("/old"), origin.hits("/aged")),
        (2, 2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_gives_freshness_and_an_invalid_expires_is_stale() {
    let origin = Origin::start().await;
    origin.route("/exp", |_, _| {
        let now = SystemTime::now();
        Reply::ok("e")
            .header("date", httpdate::fmt_http_date(now))
            .header("expires", httpdate::fmt_http_date(now + Duration::from_secs(120)))
    });
    origin.route("/bad-exp", |_, _| Reply::ok("b").header("expires", "0"));
    let proxy = Proxy::for_origin(&origin, "");
    for _ in 0..2 {
        get(&proxy, "/exp", &[]).await;
        get(&proxy, "/bad-exp", &[]).await;
    }
    assert_eq!(origin.hits("/exp"), 1);
    assert_eq!(origin.hits("/bad-exp"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heuristic_freshness_needs_last_modified_and_a_heuristic_status() {
    let origin = Origin::start().await;
    let ten_days_ago = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(864_000));
    let lm = ten_days_ago.clone();
    origin.route("/lm", move |_, _| Reply::ok("lm").header("last-modified", &lm));
    let lm = ten_days_ago.clone();
    origin.route("/redirect", move |_, _| {
        Reply::new(302, "")
            .header("last-modified", &lm)
            .header("location", "/lm")
    });
    origin.route("/bare", |_, _| Reply::ok("no freshness information"));
    let proxy = Proxy::for_origin(&origin, "");
    for _ in 0..2 {
        for path in ["/lm", "/redirect", "/bare"] {
            get(&proxy, path, &[]).await;
        }
    }
    assert_eq!(origin.hits("/lm"), 1, "heuristically fresh");
    assert_eq!(origin.hits("/redirect"), 2, "302 is not heuristically cacheable");
    assert_eq!(origin.hits("/bare"), 2, "no default TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_private_are_not_stored() {
    let origin = Origin::start().await;
    origin.fixed("/ns", "no-store", "ns");
    origin.fixed("/priv", "private, max-age=60", "p");
    let proxy = Proxy::for_origin(&origin, "");
    for _ in 0..2 {
        get(&proxy, "/ns", &[]).await;
        let (_, status, _) = get(&proxy, "/priv", &[]).await;
        assert!(!status.contains("stored"), "{status}");
    }
    assert_eq!((origin.hits("/ns"), origin.hits("/priv")), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_whose_origin_stops_refusing_storage_is_cached_again() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    let origin = Origin::start().await;
    let refusing = Arc::new(AtomicBool::new(true));
    let flag = refusing.clone();
    origin.route("/flip", move |_, _| {
        let directives = if flag.load(SeqCst) { "no-store" } else { FRESH };
        Reply::ok("flip").header("cache-control", directives)
    });
    let proxy = Proxy::for_origin(&origin, "");
    let (_, first, _) = get(&proxy, "/flip", &[]).await;
    assert!(
        first.contains("fwd=uri-miss") && !first.contains("stored"),
        "{first}"
    );
    for _ in 0..3 {
        let (code, again, body) = get(&proxy, "/flip", &[]).await;
        assert_eq!(
            (code, again.as_str(), body.as_str()),
            (200, first.as_str(), "flip")
        );
    }
    assert_eq!(
        origin.hits("/flip"),
        4,
        "every request for a refused URL reaches the origin"
    );

    refusing.store(false, SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&proxy, "/flip", &[]).await.1);
    }
    assert!(statuses[2].contains("hit"), "{statuses:?}");
    let fetched = origin.hits("/flip");
    get(&proxy, "/flip", &[]).await;
    assert_eq!(origin.hits("/flip"), fetched, "served from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_is_stored_and_revalidated_every_time() {
    let origin = Origin::start().await;
    origin.route("/nc", |seen, _| {
        if seen.headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
            Reply::new(304, "")
                .header("etag", "\"v1\"")
                .header("cache-control", "no-cache")
        } else {
            Reply::ok("validated body")
                .header("etag", "\"v1\"")
                .header("cache-control", "no-cache")
        }
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/nc", &[]).await;
    let (status, cache, body) = get(&proxy, "/nc", &[]).await;
    assert_eq!((status, body.as_str()), (200, "validated body"));
    assert!(cache.contains("fwd=stale; fwd-status=304"), "{cache}");
    let seen = origin.seen("/nc");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_forbids_serving_stale_on_error() {
    let origin = Origin::start().await;
    let script = |cc: &'static str| {
        move |_: &common::Seen, n: usize| {
            if n == 1 {
                Reply::ok("cached")
                    .header("cache-control", cc)
                    .header("age", "20")
            } else {
                Reply::new(500, "origin broke")
            }
        }
    };
    origin.route(
        "/strict",
        script("max-age=10, must-revalidate, stale-if-error=600"),
    );
    origin.route("/lenient", script("max-age=10, stale-if-error=600"));
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/strict", &[]).await;
    get(&proxy, "/lenient", &[]).await;
    let (strict_status, _, _) = get(&proxy, "/strict", &[]).await;
    let (lenient_status, lenient_cache, lenient_body) = get(&proxy, "/lenient", &[]).await;
    assert_eq!(strict_status, 500);
    assert_eq!((lenient_status, lenient_body.as_str()), (200, "cached"));
    assert!(lenient_cache.contains("stale-if-error"), "{lenient_cache}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_variant_per_header_value_and_vary_star_is_never_reused() {
    let origin = Origin::start().await;
    origin.route("/lang", |seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        Reply::ok(lang)
            .header("cache-control", FRESH)
            .header("vary", "Accept-Language")
    });
    origin.fixed("/star", FRESH, "star");
    origin.route("/star", |_, _| {
        Reply::ok("star")
            .header("cache-control", FRESH)
            .header("vary", "*")
    });
    let proxy = Proxy::for_origin(&origin, "");
    for lang in ["en", "fr", "en", "fr"] {
        let (_, _, body) = get(&proxy, "/lang", &[("accept-language", lang)]).await;
        assert_eq!(body, lang);
    }
    let (_, status, body) = get(&proxy, "/lang", &[("accept-language", "de")]).await;
    assert_eq!(body, "de");
    assert!(status.contains("fwd=vary-miss"), "{status}");
    assert_eq!(origin.hits("/lang"), 3);
    get(&proxy, "/star", &[]).await;
    get(&proxy, "/star", &[]).await;
    assert_eq!(origin.hits("/star"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_requests_are_shared_only_when_the_response_allows() {
    let origin = Origin::start().await;
    origin.fixed("/auth-default", "max-age=60", "secret");
    origin.fixed("/auth-public", "public, max-age=60", "shared");
    let proxy = Proxy::for_origin(&origin, "");
    let auth = [("authorization", "Bearer token")];
    for _ in 0..2 {
        get(&proxy, "/auth-default", &auth).await;
        get(&proxy, "/auth-public", &auth).await;
    }
    assert_eq!(
        (origin.hits("/auth-default"), origin.hits("/auth-public")),
        (2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_responses_are_not_shared() {
    let origin = Origin::start().await;
    origin.route("/cookie", |_, n| {
        Reply::ok("c")
            .header("cache-control", FRESH)
            .header("set-cookie", format!("id={n}"))
    });
    let proxy = Proxy::for_origin(&origin, "");
    let first = client().get(proxy.url("/cookie")).send().await.unwrap();
    let second = client().get(proxy.url("/cookie")).send().await.unwrap();
    assert_eq!(first.headers()["set-cookie"], "id=1");
    assert_eq!(second.headers()["set-cookie"], "id=2");
    assert_eq!(origin.hits("/cookie"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_no_cache_and_max_age_zero_force_revalidation() {
    let origin = Origin::start().await;
    origin.route("/rev", |seen, _| {
        if seen.headers.contains_key("if-none-match") {
            Reply::new(304, "")
                .header("etag", "\"r\"")
                .header("cache-control", FRESH)
        } else {
            Reply::ok("rev")
                .header("etag", "\"r\"")
                .header("cache-control", FRESH)
        }
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/rev", &[]).await;
    let (_, status, body) = get(&proxy, "/rev", &[("cache-control", "no-cache")]).await;
    assert_eq!(body, "rev");
    assert!(status.contains("fwd=request"), "{status}");
    get(&proxy, "/rev", &[("cache-control", "max-age=0")]).await;
    get(&proxy, "/rev", &[("pragma", "no-cache")]).await;
    let (_, status, _) = get(&proxy, "/rev", &[]).await;
    assert!(status.contains("hit"), "{status}");
    let seen = origin.seen("/rev");
    assert_eq!(seen.len(), 4);
    assert!(seen[1..].iter().all(|s| s.headers["if-none-match"] == "\"r\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_answers_504_on_a_miss() {
    let origin = Origin::start().await;
    origin.fixed("/oic", FRESH, "cached");
    let proxy = Proxy::for_origin(&origin, "");
    let only = [("cache-control", "only-if-cached")];
    assert_eq!(get(&proxy, "/oic", &only).await.0, 504);
    assert_eq!(origin.hits("/oic"), 0);
    get(&proxy, "/oic", &[]).await;
    assert_eq!(
        get(&proxy, "/oic", &only).await,
        (200, get(&proxy, "/oic", &[]).await.1, "cached".into())
    );
    assert_eq!(origin.hits("/oic"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_no_store_is_not_stored_but_can_be_served_from_cache() {
    let origin = Origin::start().await;
    origin.fixed("/rns", FRESH, "x");
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/rns", &[("cache-control", "no-store")]).await;
    get(&proxy, "/rns", &[]).await;
    assert_eq!(
        origin.hits("/rns"),
        2,
        "the no-store request must not have filled the cache"
    );
    let (_, status, _) = get(&proxy, "/rns", &[("cache-control", "no-store")]).await;
    assert!(status.contains("hit"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_accepts_and_min_fresh_refuses() {
    let origin = Origin::start().await;
    origin.route("/stale", |_, _| {
        Reply::ok("stale")
            .header("cache-control", "max-age=10")
            .header("age", "30")
    });
    origin.fixed("/fresh", "max-age=60", "fresh");
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/stale", &[]).await;
    get(&proxy, "/fresh", &[]).await;
    let (_, status, _) = get(&proxy, "/stale", &[("cache-control", "max-stale=60")]).await;
    assert!(status.contains("hit"), "{status}");
    get(&proxy, "/stale", &[("cache-control", "max-stale=5")]).await;
    assert_eq!(origin.hits("/stale"), 2);
    get(&proxy, "/fresh", &[("cache-control", "min-fresh=10")]).await;
    get(&proxy, "/fresh", &[("cache-control", "min-fresh=120")]).await;
    assert_eq!(origin.hits("/fresh"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_get_304_from_cache() {
    let origin = Origin::start().await;
    let last_modified = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let lm = last_modified.clone();
    origin.route("/cond", move |_, _| {
        Reply::ok("conditional")
            .header("cache-control", FRESH)
            .header("etag", "\"c1\"")
            .header("last-modified", &lm)
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/cond", &[]).await;
    assert_eq!(get(&proxy, "/cond", &[("if-none-match", "\"c1\"")]).await.0, 304);
    assert_eq!(
        get(&proxy, "/cond", &[("if-none-match", "\"other\"")]).await.0,
        200
    );
    let now = httpdate::fmt_http_date(SystemTime::now());
    assert_eq!(get(&proxy, "/cond", &[("if-modified-since", &now)]).await.0, 304);
    assert_eq!(origin.hits("/cond"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_304_refreshes_stored_headers_and_serves_the_stored_body() {
    let origin = Origin::start().await;
    origin.route("/refresh", |seen, n| {
        if seen.headers.contains_key("if-none-match") {
            Reply::new(304, "")
                .header("etag", "\"e\"")
                .header("cache-control", "max-age=60")
                .header("x-version", n)
        } else {
            Reply::ok("original body")
                .header("etag", "\"e\"")
                .header("cache-control", "max-age=10")
                .header("age", "20")
                .header("x-version", n)
        }
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/refresh", &[]).await;
    let revalidated = client().get(proxy.url("/refresh")).send().await.unwrap();
    assert_eq!(revalidated.headers()["x-version"], "2");
    assert_eq!(revalidated.text().await.unwrap(), "original body");
    let hit = client().get(proxy.url("/refresh")).send().await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(hit.headers()["x-version"], "2");
    assert_eq!(origin.hits("/refresh"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_pass_through_and_invalidate() {
    let origin = Origin::start().await;
    origin.fixed("/item", FRESH, "item");
    origin.fixed("/list", FRESH, "list");
    let proxy = Proxy::for_origin(&origin, "");
    origin.route("/create", |_, _| {
        Reply::new(201, "created").header("location", "/list")
    });
    get(&proxy, "/item", &[]).await;
    get(&proxy, "/list", &[]).await;

    let put = client().put(proxy.url("/item")).body("new").send().await.unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(origin.seen("/item").last().unwrap().body, "new");
    let post = client()
        .post(proxy.url("/create"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 201);
    let (_, status, _) = get(&proxy, "/item", &[]).await;
    assert!(status.contains("fwd=uri-miss"), "{status}");
    let (_, status, _) = get(&proxy, "/list", &[]).await;
    assert!(
        status.contains("fwd=uri-miss"),
        "Location target invalidated: {status}"
    );
    assert_eq!(origin.hits("/item"), 3, "GET, PUT, GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_responses_to_unsafe_methods_do_not_invalidate() {
    let origin = Origin::start().await;
    origin.route("/keep", |seen, _| match seen.method {
        http::Method::GET => Reply::ok("keep").header("cache-control", FRESH),
        _ => Reply::new(409, "conflict"),
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/keep", &[]).await;
    let post = client().post(proxy.url("/keep")).send().await.unwrap();
    assert_eq!(post.status(), 409);
    let (_, status, _) = get(&proxy, "/keep", &[]).await;
    assert!(status.contains("hit"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_cache_control_is_honoured_and_forwarded() {
    let origin = Origin::start().await;
    origin.route("/cdn", |_, _| {
        Reply::ok("cdn")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=60")
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/cdn", &[]).await;
    let hit = client().get(proxy.url("/cdn")).send().await.unwrap();
    assert!(cache_status(&hit).contains("hit"));
    assert_eq!(hit.headers()["cdn-cache-control"], "max-age=60");
    assert_eq!(hit.headers()["cache-control"], "no-store");
    assert_eq!(origin.hits("/cdn"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_coalesced_into_one_origin_request() {
    let origin = Origin::start().await;
    origin.route("/slow", |_, _| {
        Reply::ok("slow")
            .header("cache-control", FRESH)
            .delay(Duration::from_millis(400))
    });
    let proxy = Proxy::for_origin(&origin, "");
    let url = proxy.url("/slow");
    let requests = (0..10).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { client().get(url).send().await.unwrap().text().await.unwrap() })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), "slow");
    }
    assert_eq!(origin.hits("/slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_background() {
    let origin = Origin::start().await;
    origin.route("/swr", |_, n| {
        let reply =
            Reply::ok(format!("v{n}")).header("cache-control", "max-age=10, stale-while-revalidate=60");
        if n == 1 {
            reply.header("age", "11")
        } else {
            reply.delay(Duration::from_millis(200))
        }
    });
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/swr", &[]).await;
    let started = std::time::Instant::now();
    let (_, status, body) = get(&proxy, "/swr", &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "stale must not wait for the origin"
    );
    assert_eq!(body, "v1");
    assert!(status.contains("detail=stale-while-revalidate"), "{status}");
    eventually(
        Duration::from_secs(5),
        "the background refresh reached the origin",
        || origin.hits("/swr") == 2,
    )
    .await;
    common::eventually_async(Duration::from_secs(5), "the refreshed body is served", || async {
        get(&proxy, "/swr", &[]).await.2 == "v2"
    })
    .await;
    assert_eq!(origin.hits("/swr"), 2, "exactly one background refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_stale_on_5xx_and_when_the_origin_is_down() {
    let origin = Origin::start().await;
    origin.route("/sie", |_, n| match n {
        1 => Reply::ok("good")
            .header("cache-control", "max-age=10, stale-if-error=600")
            .header("age", "11"),
        _ => Reply::new(503, "down"),
    });
    origin.route("/default-sie", |_, _| {
        Reply::ok("default")
            .header("cache-control", "max-age=10")
            .header("age", "11")
    });
    let proxy = Proxy::for_origin(&origin, "stale_if_error = \"5m\"");
    get(&proxy, "/sie", &[]).await;
    get(&proxy, "/default-sie", &[]).await;
    let (status, cache, body) = get(&proxy, "/sie", &[]).await;
    assert_eq!((status, body.as_str()), (200, "good"));
    assert!(
        cache.contains("fwd=stale") && cache.contains("stale-if-error"),
        "{cache}"
    );

    origin.stop();
    let (status, cache, body) = get(&proxy, "/default-sie", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "default"),
        "configured default window applies"
    );
    assert!(cache.contains("stale-if-error"), "{cache}");
    let (status, _, _) = get(&proxy, "/never-cached", &[]).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_on_hits() {
    let origin = Origin::start().await;
    origin.fixed("/range", FRESH, "0123456789abcdefghij");
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/range", &[]).await;
    let single = client()
        .get(proxy.url("/range"))
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(single.status(), 206);
    assert_eq!(single.headers()["content-range"], "bytes 2-5/20");
    assert_eq!(single.text().await.unwrap(), "2345");
    let multi = client()
        .get(proxy.url("/range"))
        .header("range", "bytes=0-1,18-")
        .send()
        .await
        .unwrap();
    assert_eq!(multi.status(), 206);
    let content_type = multi.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("multipart/byteranges"), "{content_type}");
    let body = multi.text().await.unwrap();
    assert!(
        body.contains("Content-Range: bytes 0-1/20") && body.contains("ij"),
        "{body}"
    );
    let unsatisfiable = client()
        .get(proxy.url("/range"))
        .header("range", "bytes=50-60")
        .send()
        .await
        .unwrap();
    assert_eq!(unsatisfiable.status(), 416);
    assert_eq!(origin.hits("/range"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_max_object_size_are_streamed_not_stored() {
    let origin = Origin::start().await;
    origin.route("/big", |_, _| {
        Reply::ok(vec![b'x'; 64 * 1024]).header("cache-control", FRESH)
    });
    origin.route("/small", |_, _| {
        Reply::ok(vec![b'y'; 1024]).header("cache-control", FRESH)
    });
    let proxy = Proxy::for_origin(&origin, "max_object_size = \"16KiB\"");
    for _ in 0..2 {
        assert_eq!(get(&proxy, "/big", &[]).await.2.len(), 64 * 1024);
        get(&proxy, "/small", &[]).await;
    }
    assert_eq!((origin.hits("/big"), origin.hits("/small")), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_bytes_stay_within_max_memory() {
    let origin = Origin::start().await;
    origin.route("/fill", |_, _| {
        Reply::ok(vec![b'z'; 8 * 1024]).header("cache-control", FRESH)
    });
    let proxy = Proxy::for_origin(&origin, "max_memory = \"128KiB\"\nmax_object_size = \"16KiB\"");
    for i in 0..64 {
        get(&proxy, &format!("/fill?n={i}"), &[]).await;
    }
    let stored = proxy.storage.weighted_size();
    assert!(stored > 0 && stored <= 128 * 1024, "stored {stored} bytes");
    assert!(proxy.storage.entry_count() < 64);
}

async fn purge(proxy: &Proxy, path: &str) -> u16 {
    let method = reqwest::Method::from_bytes(b"PURGE").unwrap();
    client()
        .request(method, proxy.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_from_an_allowed_address_deletes_every_variant() {
    let origin = Origin::start().await;
    origin.route("/p", |seen, n| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        Reply::ok(format!("{lang} v{n}"))
            .header("cache-control", FRESH)
            .header("vary", "Accept-Language")
    });
    let proxy = Proxy::start_with_server(
        &format!(
            "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n",
            origin.addr
        ),
        "purge_allow = [\"127.0.0.0/8\"]",
    );
    for lang in ["en", "fr"] {
        get(&proxy, "/p", &[("accept-language", lang)]).await;
    }
    assert_eq!(purge(&proxy, "/p").await, 200);
    assert_eq!(purge(&proxy, "/never-stored").await, 404);
    assert_eq!(get(&proxy, "/p", &[("accept-language", "en")]).await.2, "en v3");
    assert_eq!(get(&proxy, "/p", &[("accept-language", "fr")]).await.2, "fr v4");
    assert_eq!(origin.hits("/p"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_from_other_addresses_is_refused() {
    let origin = Origin::start().await;
    origin.fixed("/keep", FRESH, "kept");
    let proxy = Proxy::for_origin(&origin, "");
    get(&proxy, "/keep", &[]).await;
    assert_eq!(purge(&proxy, "/keep").await, 403);
    let (_, status, _) = get(&proxy, "/keep", &[]).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(origin.hits("/keep"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_field_values_come_back_byte_for_byte_on_hits() {
    let origin = Origin::start().await;
    // `Date` is stored too, but pingora's servers write the time of the response instead (see the
    // README): it is sent, and checked only through the `Age` it yields.
    let date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
    let sent: Vec<(&str, String)> = vec![
        ("last-modified", "Tue, 01 Dec 2026 08:00:00 GMT".into()),
        // Not an IMF-fixdate that writes back the same (a wrong weekday, an RFC 850 date).
        ("expires", "Thu, 02 Dec 2026 15:23:16 GMT".into()),
        ("x-legacy-date", "Wednesday, 02-Dec-26 15:23:16 GMT".into()),
        ("content-type", "text/plain; charset=utf-8".into()),
        ("x-frame-options", "SAMEORIGIN".into()),
        ("x-coding", "gzip".into()),
    ];
    let fields = sent.clone();
    origin.route("/fields", move |_, _| {
        let reply = Reply::ok("fields")
            .header("cache-control", FRESH)
            .header("date", &date);
        fields
            .iter()
            .fold(reply, |reply, (name, value)| reply.header(name, value))
    });
    let proxy = Proxy::for_origin(&origin, "");
    for expected in ["stored", "hit"] {
        let resp = client().get(proxy.url("/fields")).send().await.unwrap();
        assert!(cache_status(&resp).contains(expected), "{}", cache_status(&resp));
        for (name, value) in &sent {
            let got: Vec<_> = resp.headers().get_all(*name).iter().collect();
            assert_eq!(got, [value.as_str()], "{name} on the {expected} response");
        }
        if expected == "hit" {
            let age: u64 = resp.headers()["age"].to_str().unwrap().parse().unwrap();
            assert!(
                (29..=40).contains(&age),
                "age {age} counts from the origin's Date"
            );
        }
        assert_eq!(resp.text().await.unwrap(), "fields");
    }
    assert_eq!(origin.hits("/fields"), 1);
}
