//! Per-path rules (`[[site.route]]`) end to end: routing to another pool, cache bypass,
//! default and override lifetimes, query modes, key headers and cookies, path rewrites,
//! header edits, redirects, rate limits, purges under normalised keys, reloads, and the
//! config checks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{client, free_port, get, Origin, Proxy, Reply};

const TOKEN: &str = "rules-admin-token";

/// A proxy with one site in front of `origin` and the given `[[site.route]]` tables.
fn proxy_with_routes(origin: &Origin, routes: &str) -> Proxy {
    Proxy::start(&format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n{routes}",
        origin.addr
    ))
}

/// An origin answering every listed path with `body` and `cache_control` (if any).
fn pages(origin: &Origin, paths: &[&str], cache_control: Option<&'static str>) {
    for path in paths {
        origin.route(path, move |seen, n| {
            let reply = Reply::ok(format!("{} #{n}", seen.uri));
            match cache_control {
                Some(cc) => reply.header("cache-control", cc),
                None => reply,
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_sends_its_paths_to_its_own_pool() {
    let site_origin = Origin::start().await;
    let api_origin = Origin::start().await;
    pages(&site_origin, &["/page"], Some("max-age=60"));
    pages(&api_origin, &["/api/users"], Some("max-age=60"));
    let proxy = proxy_with_routes(
        &site_origin,
        &format!(
            "[[site.route]]\nname = \"api\"\npath_prefix = \"/api/\"\norigins = [\"{}\"]\n",
            api_origin.addr
        ),
    );
    assert_eq!(get(&proxy, "/api/users", &[]).await.0, 200);
    assert_eq!(get(&proxy, "/page", &[]).await.0, 200);
    assert_eq!(api_origin.hits("/api/users"), 1);
    assert_eq!(site_origin.hits("/page"), 1);
    assert_eq!(site_origin.hits("/api/users"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_bypass_the_cache() {
    let origin = Origin::start().await;
    pages(&origin, &["/admin/panel"], Some("max-age=60"));
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath_prefix = \"/admin\"\ncache = false\n",
    );
    for _ in 0..2 {
        let (status, cache, _) = get(&proxy, "/admin/panel", &[]).await;
        assert_eq!(status, 200);
        assert!(cache.contains("fwd=bypass"), "{cache}");
    }
    assert_eq!(origin.hits("/admin/panel"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ttl_applies_only_to_responses_without_freshness() {
    let origin = Origin::start().await;
    pages(&origin, &["/s/bare"], None);
    pages(&origin, &["/s/no-store"], Some("no-store"));
    pages(&origin, &["/s/private"], Some("private"));
    pages(&origin, &["/s/short"], Some("max-age=0"));
    origin.route("/s/error", |_, _| Reply::new(500, "broken"));
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath_prefix = \"/s/\"\ndefault_ttl = \"1m\"\n",
    );
    for path in ["/s/bare", "/s/no-store", "/s/private", "/s/short", "/s/error"] {
        get(&proxy, path, &[]).await;
        get(&proxy, path, &[]).await;
    }
    assert_eq!(origin.hits("/s/bare"), 1, "no freshness: default_ttl");
    for path in ["/s/no-store", "/s/private", "/s/short", "/s/error"] {
        assert_eq!(origin.hits(path), 2, "{path}: default_ttl must not apply");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_ttl_replaces_the_origins_freshness_and_says_so() {
    let origin = Origin::start().await;
    pages(&origin, &["/o/short"], Some("max-age=0"));
    pages(&origin, &["/o/no-store"], Some("no-store"));
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath_prefix = \"/o/\"\noverride_ttl = \"7d\"\n",
    );
    let (_, first, _) = get(&proxy, "/o/short", &[]).await;
    assert!(
        first.contains("stored") && first.contains("detail=override"),
        "{first}"
    );
    let (_, hit, _) = get(&proxy, "/o/short", &[]).await;
    assert!(hit.contains("hit") && hit.contains("detail=override"), "{hit}");
    let ttl = common::ttl_of(&hit).unwrap();
    assert!(ttl > 6 * 86_400, "{hit}");
    assert_eq!(origin.hits("/o/short"), 1);
    get(&proxy, "/o/no-store", &[]).await;
    get(&proxy, "/o/no-store", &[]).await;
    assert_eq!(origin.hits("/o/no-store"), 2, "no-store is still not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_modes_decide_what_the_key_holds() {
    let origin = Origin::start().await;
    let paths = ["/keep", "/sort", "/ignore", "/only", "/drop"];
    pages(&origin, &paths, Some("max-age=60"));
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath = \"/sort\"\nquery = \"sort\"\n\
         [[site.route]]\npath = \"/ignore\"\nquery = \"ignore\"\n\
         [[site.route]]\npath = \"/only\"\nquery = { keep = [\"v\"] }\n\
         [[site.route]]\npath = \"/drop\"\nquery = { drop = [\"utm_*\", \"fbclid\"] }\n",
    );
    let cases: [(&str, [&str; 2], usize); 5] = [
        ("/keep", ["a=1&b=2", "b=2&a=1"], 2),
        ("/sort", ["a=1&b=2", "b=2&a=1"], 1),
        ("/ignore", ["a=1", "a=2"], 1),
        ("/only", ["v=1&x=1", "x=2&v=1"], 1),
        ("/drop", ["utm_source=news&v=1", "v=1&utm_source=ads&fbclid=z"], 1),
    ];
    for (path, queries, fetches) in cases {
        for query in queries {
            let (status, _, _) = get(&proxy, &format!("{path}?{query}"), &[]).await;
            assert_eq!(status, 200);
        }
        assert_eq!(origin.hits(path), fetches, "{path}");
    }
    get(&proxy, "/only?v=2", &[]).await;
    assert_eq!(origin.hits("/only"), 2, "a kept parameter still splits the key");
    let seen = origin.seen("/drop");
    assert_eq!(
        seen[0].uri.query(),
        Some("utm_source=news&v=1"),
        "the origin gets the query as sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_headers_and_cookies_make_variants() {
    let origin = Origin::start().await;
    pages(&origin, &["/device", "/lang"], Some("max-age=60"));
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath = \"/device\"\nkey_headers = [\"X-Device\"]\n\
         [[site.route]]\npath = \"/lang\"\nkey_cookies = [\"lang\"]\n",
    );
    for device in ["mobile", "desktop", "mobile"] {
        get(&proxy, "/device", &[("x-device", device)]).await;
    }
    assert_eq!(origin.hits("/device"), 2);
    for cookie in ["lang=fr; session=1", "lang=en", "session=2; lang=fr"] {
        get(&proxy, "/lang", &[("cookie", cookie)]).await;
    }
    assert_eq!(origin.hits("/lang"), 2, "other cookies do not split the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_rewrites_the_path_to_the_origin() {
    let origin = Origin::start().await;
    pages(&origin, &["/app.css"], Some("max-age=60"));
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath_prefix = \"/static/\"\nstrip_prefix = \"/static\"\n",
    );
    let (status, _, body) = get(&proxy, "/static/app.css?v=3", &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("/app.css?v=3"), "{body}");
    assert_eq!(origin.hits("/app.css"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_apply_both_ways_and_on_hits() {
    let origin = Origin::start().await;
    origin.route("/h", |seen, _| {
        let from_edge = seen
            .headers
            .get("x-from-edge")
            .map_or("-", |v| v.to_str().unwrap())
            .to_string();
        let debug = seen.headers.contains_key("x-debug");
        Reply::ok(format!("from-edge={from_edge} debug={debug}"))
            .header("cache-control", "max-age=60")
            .header("x-powered-by", "php")
    });
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath = \"/h\"\n\
         request_headers = { set = { \"X-From-Edge\" = \"1\" }, remove = [\"X-Debug\"] }\n\
         response_headers = { set = { \"X-Frame-Options\" = \"DENY\" }, remove = [\"X-Powered-By\"] }\n",
    );
    for round in ["miss", "hit"] {
        let resp = client()
            .get(proxy.url("/h"))
            .header("x-debug", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-frame-options"], "DENY", "{round}");
        assert!(!resp.headers().contains_key("x-powered-by"), "{round}");
        assert_eq!(resp.text().await.unwrap(), "from-edge=1 debug=false", "{round}");
    }
    assert_eq!(origin.hits("/h"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_redirect() {
    let origin = Origin::start().await;
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath = \"/old\"\nredirect = { to = \"https://example.com/new\", status = 301 }\n",
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(proxy.url("/old")).send().await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "https://example.com/new");
    assert_eq!(origin.hits("/old"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_recover_after_the_window() {
    let origin = Origin::start().await;
    pages(&origin, &["/limited"], None);
    let proxy = proxy_with_routes(
        &origin,
        "[[site.route]]\npath = \"/limited\"\nrate_limit = { requests = 3, per = \"1s\" }\n",
    );
    let start = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = client().get(proxy.url("/limited")).send().await.unwrap();
        if resp.status() == 429 {
            assert_eq!(resp.headers()["retry-after"], "1");
        }
        statuses.push(resp.status().as_u16());
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "the burst fits in one window"
    );
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // The window passes: the client is let through again (the estimator keeps two windows).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&proxy, "/limited", &[]).await.0, 200);
}

/// A node whose config file can be rewritten and reloaded through the admin API.
struct Node {
    proxy: Proxy,
    admin: SocketAddr,
    file: PathBuf,
}

impl Node {
    fn start(name: &str, site: &str) -> Node {
        let dir = common::scratch_dir(&format!("rules-{name}"));
        let (addr, admin) = (free_port(), free_port());
        let file = dir.join("edgecache.toml");
        std::fs::write(&file, Node::config(addr, admin, site)).unwrap();
        Node {
            proxy: Proxy::start_file(&file, addr),
            admin,
            file,
        }
    }

    fn config(addr: SocketAddr, admin: SocketAddr, site: &str) -> String {
        format!(
            "[server]\nlisten = [\"{addr}\"]\nthreads = 2\naccess_log = false\n\
             [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n{site}"
        )
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = client()
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_by_url_finds_the_entry_under_its_normalised_key() {
    let origin = Origin::start().await;
    pages(&origin, &["/p"], Some("max-age=600"));
    let site = format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n\
         [[site.route]]\nname = \"pages\"\npath = \"/p\"\nquery = {{ drop = [\"utm_*\"] }}\n",
        origin.addr
    );
    let node = Node::start("purge", &site);
    get(&node.proxy, "/p?utm_source=news&v=1", &[]).await;
    let url = format!(
        "http://127.0.0.1:{}/p?v=1&utm_medium=mail",
        node.proxy.addr.port()
    );
    let answer = node
        .admin(
            reqwest::Method::POST,
            "/purge",
            Some(serde_json::json!({ "url": url })),
        )
        .await;
    assert_eq!(answer["purged"], 1, "{answer}");
    let (_, cache, _) = get(&node.proxy, "/p?v=1", &[]).await;
    assert!(cache.contains("fwd=uri-miss"), "{cache}");
    assert_eq!(origin.hits("/p"), 2);
    // A request is counted once its response is sent: the last one may still be on its way.
    let counted = r#"edgecache_route_requests_total{route="pages",site="127.0.0.1"} 2"#;
    common::eventually_async(Duration::from_secs(5), "both requests are counted", || async {
        let metrics = node.admin(reqwest::Method::GET, "/metrics", None).await;
        metrics.as_str().is_some_and(|text| text.contains(counted))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_rule_under_traffic() {
    let origin = Origin::start().await;
    pages(&origin, &["/r"], None);
    let site = |value: &str| {
        format!(
            "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n\
             [[site.route]]\npath = \"/r\"\nresponse_headers = {{ set = {{ \"X-Rule\" = \"{value}\" }} }}\n",
            origin.addr
        )
    };
    let node = Node::start("reload", &site("one"));
    let url = node.proxy.url("/r");
    let traffic = tokio::spawn(async move {
        let client = client();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let rule = resp.headers()["x-rule"].to_str().unwrap().to_string();
            if seen.last() != Some(&rule) {
                seen.push(rule.clone());
            }
            if rule == "two" {
                return seen;
            }
        }
        panic!("the new rule never applied: {seen:?}");
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(
        &node.file,
        Node::config(node.proxy.addr, node.admin, &site("two")),
    )
    .unwrap();
    let answer = node.admin(reqwest::Method::POST, "/reload", None).await;
    assert_eq!(answer["version"], 2, "{answer}");
    let seen = traffic.await.unwrap();
    assert_eq!(seen, ["one", "two"]);
}

/// The config check names file, line and key for rules it can prove wrong.
#[test]
fn the_config_check_refuses_rules_it_can_prove_wrong() {
    let cases = [
        (
            "path_prefix = \"/static/\"\n[[site.route]]\npath = \"/static/app.css\"\n",
            "route[1].path",
            "can never match",
        ),
        (
            "path_regex = \"^/img/(.*\\\\.png$\"\n",
            "route[0].path_regex",
            "invalid regular expression",
        ),
        ("path = \"/a\"\nttl = \"1d\"\n", "unknown field", "ttl"),
        (
            "path_prefix = \"/static/\"\nstrip_prefix = \"/assets\"\n",
            "route[0].strip_prefix",
            "must be the start",
        ),
        (
            "path = \"/a\"\nquery = \"shuffle\"\n",
            "route[0].query",
            "shuffle",
        ),
        (
            "path = \"/a\"\nrate_limit = { requests = 0, per = \"1s\" }\n",
            "rate_limit.requests",
            "at least 1",
        ),
        (
            "path = \"/a\"\nredirect = { to = \"/b\", status = 200 }\n",
            "redirect.status",
            "not a redirect",
        ),
    ];
    for (route, key, message) in cases {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nhosts = [\"a.example\"]\norigins = [\"127.0.0.1:2\"]\n\
             [[site.route]]\n{route}"
        );
        let error = edgecache::config::Config::parse(&text, std::path::Path::new("rules.toml"))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string();
        assert!(error.contains("rules.toml:"), "{error}");
        assert!(error.contains(key) && error.contains(message), "{error}");
    }
    // A later rule that only an earlier one with fewer methods covers is reachable.
    let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nhosts = [\"a.example\"]\norigins = [\"127.0.0.1:2\"]\n\
                [[site.route]]\npath_prefix = \"/api/\"\nmethods = [\"GET\"]\n\
                [[site.route]]\npath = \"/api/x\"\n";
    edgecache::config::Config::parse(text, std::path::Path::new("rules.toml")).unwrap();
}
