//! Operations end to end: the admin API (token, status, metrics, purge, reload), webhooks,
//! access logs and `Server-Timing`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{cache_status, client, eventually, free_port, Origin, Proxy, Reply};
use hmac::Mac;

const TOKEN: &str = "test-admin-token";

/// A config file in a fresh directory, a proxy started from it, and its admin address.
struct Node {
    proxy: Proxy,
    admin: SocketAddr,
    dir: PathBuf,
    file: PathBuf,
}

impl Node {
    /// Starts a node whose config is `[server]` keys, `[admin]`, then `body`.
    fn start(name: &str, server_keys: &str, body: &str) -> Node {
        let dir = common::scratch_dir(&format!("ops-{name}"));
        let (addr, admin) = (free_port(), free_port());
        let file = dir.join("edgecache.toml");
        std::fs::write(&file, Node::config(addr, admin, server_keys, body)).unwrap();
        let proxy = Proxy::start_file(&file, addr);
        Node {
            proxy,
            admin,
            dir,
            file,
        }
    }

    fn config(addr: SocketAddr, admin: SocketAddr, server_keys: &str, body: &str) -> String {
        format!(
            "[server]\nlisten = [\"{addr}\"]\nthreads = 2\naccess_log = false\n{server_keys}\n\
             [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n{body}"
        )
    }

    /// Rewrites the config file with a new body (same listeners).
    fn rewrite(&self, server_keys: &str, body: &str) {
        let text = Node::config(self.proxy.addr, self.admin, server_keys, body);
        std::fs::write(&self.file, text).unwrap();
    }

    async fn admin(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = client()
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = request.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn purge(&self, body: serde_json::Value) -> u64 {
        let (status, text) = self.admin("POST", "/purge", Some(body)).await;
        assert_eq!(status, 200, "{text}");
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        answer["purged"].as_u64().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn site(origin: &Origin) -> String {
    format!(
        "[[site]]\nhosts = [\"127.0.0.1\", \"localhost\"]\norigins = [\"{}\"]\n",
        origin.addr
    )
}

/// Tagged, validated, cacheable pages: the origin answers 304 to a matching `If-None-Match`.
fn tagged_pages(origin: &Origin, paths: &[(&'static str, &'static str)]) {
    for (path, tags) in paths {
        let tags = *tags;
        origin.route(path, move |seen, _| {
            if seen.headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                return Reply::new(304, "").header("etag", "\"v1\"");
            }
            Reply::ok(format!("page {tags}"))
                .header("cache-control", "max-age=600")
                .header("etag", "\"v1\"")
                .header("surrogate-key", tags)
                .header("cache-tag", "all")
        });
    }
}

async fn get(proxy: &Proxy, host: &str, path: &str) -> reqwest::Response {
    client()
        .get(proxy.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_need_the_token() {
    let origin = Origin::start().await;
    let node = Node::start("token", "", &site(&origin));
    for auth in [None, Some("Bearer wrong-token-x"), Some(TOKEN)] {
        let mut request = client().get(format!("http://{}/status", node.admin));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let purge = client()
        .post(format!("http://{}/purge", node.admin))
        .body(serde_json::json!({ "host": "127.0.0.1" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 401);
    let (status, text) = node.admin("GET", "/status", None).await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["config"]["version"], 1);
    assert_eq!(status["sites"][0]["origins"][0]["addr"], origin.addr.to_string());
    assert_eq!(status["sites"][0]["origins"][0]["healthy"], true);
    assert!(status["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(node.admin("GET", "/nothing", None).await.0, 404);
    assert_eq!(node.admin("GET", "/purge", None).await.0, 405);
    for path in ["/history", "/events", "/metrics"] {
        let resp = client()
            .get(format!("http://{}{path}", node.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    // The dashboard page needs no token and holds no data.
    let page = client()
        .get(format!("http://{}/", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let page = page.text().await.unwrap();
    assert!(page.contains("Admin token"));
    assert!(!page.contains(&origin.addr.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_samples_traffic_and_origin_failures() {
    let origin = Origin::start().await;
    origin.fixed("/ok", "max-age=60", "fine");
    origin.route("/broken", |_, _| Reply::new(500, "down"));
    let node = Node::start("history", "", &site(&origin));
    for _ in 0..4 {
        assert_eq!(get(&node.proxy, "127.0.0.1", "/ok").await.status(), 200);
    }
    assert_eq!(get(&node.proxy, "127.0.0.1", "/broken").await.status(), 500);
    let deadline = Instant::now() + Duration::from_secs(10);
    let sample = loop {
        let (_, text) = node.admin("GET", "/history", None).await;
        let history: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(history["interval_seconds"], 2);
        let samples = history["samples"].as_array().unwrap();
        let busy = samples
            .iter()
            .find(|s| s["requests_per_second"].as_f64().unwrap() > 0.0);
        if let Some(sample) = busy {
            break sample.clone();
        }
        assert!(Instant::now() < deadline, "no sample with the traffic: {history}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(sample["hit_ratio"].as_f64().unwrap() > 0.5, "{sample}");
    assert!(sample["errors_per_second"].as_f64().unwrap() > 0.0, "{sample}");
    assert!(
        sample["origin_latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{sample}"
    );
    assert!(sample["cache_entries"].as_u64().unwrap() >= 1, "{sample}");
    // Only newer samples after a given time.
    let time = sample["time"].as_u64().unwrap();
    let (_, text) = node.admin("GET", &format!("/history?after={time}"), None).await;
    let newer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(newer["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["time"].as_u64().unwrap() > time));

    let (_, text) = node.admin("GET", "/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["requests"]["total"], 5);
    assert_eq!(status["requests"]["server_errors"], 1);
    let origin_status = &status["sites"][0]["origins"][0];
    assert_eq!(origin_status["failures"], 1, "{origin_status}");
    assert!(origin_status["last_failure"].is_string(), "{origin_status}");
    let (_, text) = node.admin("GET", "/events", None).await;
    let events: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(events["events"][0]["type"], "node_started", "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_and_soft_purges_by_url_prefix_host_and_tag() {
    let origin = Origin::start().await;
    let paths = [
        ("/a/1", "product-1 shelf"),
        ("/a/2", "product-2 shelf"),
        ("/b/1", "product-3"),
    ];
    tagged_pages(&origin, &paths);
    let node = Node::start("purge", "", &site(&origin));
    for host in ["127.0.0.1", "localhost"] {
        for (path, _) in paths {
            let resp = get(&node.proxy, host, path).await;
            assert_eq!(resp.status(), 200);
            assert!(
                resp.headers().get("surrogate-key").is_none(),
                "tags are not sent to clients"
            );
            assert!(resp.headers().get("cache-tag").is_none());
        }
    }
    let hits = |path| origin.hits(path);
    assert_eq!((hits("/a/1"), hits("/a/2"), hits("/b/1")), (2, 2, 2));

    // Hard purge of one URL: the next request is a miss that refetches.
    let url = format!("http://127.0.0.1:{}/a/1", node.proxy.addr.port());
    assert_eq!(node.purge(serde_json::json!({ "url": url })).await, 1);
    let refetched = get(&node.proxy, "127.0.0.1", "/a/1").await;
    assert!(
        cache_status(&refetched).contains("fwd=uri-miss"),
        "{}",
        cache_status(&refetched)
    );
    assert_eq!(hits("/a/1"), 3);
    assert!(origin.seen("/a/1")[2].headers.get("if-none-match").is_none());

    // Soft purge by tag: entries stay, and the next request revalidates (304 from the origin).
    assert_eq!(
        node.purge(serde_json::json!({ "tag": "shelf", "soft": true }))
            .await,
        4
    );
    let revalidated = get(&node.proxy, "localhost", "/a/2").await;
    let status = cache_status(&revalidated);
    assert!(
        status.contains("fwd=stale") && status.contains("fwd-status=304"),
        "{status}"
    );
    assert_eq!(revalidated.text().await.unwrap(), "page product-2 shelf");
    assert_eq!(
        origin.seen("/a/2").last().unwrap().headers["if-none-match"],
        "\"v1\""
    );

    // Prefix (hard) on one host only.
    let prefix = format!("http://localhost:{}/a/", node.proxy.addr.port());
    assert_eq!(node.purge(serde_json::json!({ "prefix": prefix })).await, 2);
    assert!(cache_status(&get(&node.proxy, "localhost", "/a/2").await).contains("uri-miss"));
    assert!(cache_status(&get(&node.proxy, "127.0.0.1", "/b/1").await).contains("hit"));

    // A whole host, softly; then a tag shared by everything, hard.
    assert_eq!(
        node.purge(serde_json::json!({ "host": "127.0.0.1", "soft": true }))
            .await,
        3
    );
    assert_eq!(node.purge(serde_json::json!({ "tag": "all" })).await, 5);
    assert_eq!(node.proxy.storage.entry_count(), 0);
    let (status, text) = node
        .admin(
            "POST",
            "/purge",
            Some(serde_json::json!({ "url": "x", "tag": "y" })),
        )
        .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried_until_the_receiver_comes_back() {
    let origin = Origin::start().await;
    origin.fixed("/page", "max-age=600", "page");
    let receiver_addr = free_port();
    let webhook = format!(
        "[[webhook]]\nurl = \"http://{receiver_addr}/hook\"\nevents = [\"purge\"]\nsecret = \"s3cret\"\n"
    );
    let node = Node::start("webhook", "", &format!("{}{webhook}", site(&origin)));
    get(&node.proxy, "127.0.0.1", "/page").await;

    // The receiver is down: purges and requests are not slowed down by deliveries.
    assert_eq!(node.purge(serde_json::json!({ "host": "127.0.0.1" })).await, 1);
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&node.proxy, "127.0.0.1", "/page").await.status(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(5), "a failed delivery is retried", || {
        let text = common::block_on(node.admin("GET", "/status", None)).1;
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        status["webhooks"]["retried"].as_u64().unwrap() >= 1
    })
    .await;

    // The receiver comes back: the retried delivery arrives, signed.
    let receiver = Origin::start_on(receiver_addr).await;
    receiver.route("/hook", |_, _| Reply::new(204, ""));
    eventually(Duration::from_secs(15), "the delivery is retried", || {
        receiver.hits("/hook") >= 1
    })
    .await;
    let delivery = &receiver.seen("/hook")[0];
    let event: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(event["type"], "purge");
    assert_eq!(event["details"]["kind"], "host");
    assert_eq!(event["details"]["entries"], 1);
    assert!(event["time"].as_str().unwrap().ends_with('Z'));
    assert!(event["node"].as_str().is_some_and(|n| !n.is_empty()));
    let signature = delivery.headers["x-edgecache-signature"].to_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&delivery.body);
    let hex = signature.strip_prefix("sha256=").unwrap();
    let expected: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    mac.verify_slice(&expected).expect("signature verifies");
    // The Standard Webhooks headers: an id, the attempt's time, and their signature.
    let header = |name: &str| delivery.headers[name].to_str().unwrap().to_string();
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    assert!(id.starts_with("msg_"), "{id}");
    let sent: u64 = timestamp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(sent) < 60, "{sent} vs {now}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&delivery.body);
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(header("webhook-signature"), format!("v1,{expected}"));
}

/// `name{labels}` → value, from Prometheus text; panics on a malformed line.
fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    let mut values = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        values.insert(series.to_string(), value);
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move() {
    let origin = Origin::start().await;
    origin.fixed("/m", "max-age=600", "metric me");
    let node = Node::start("metrics", "", &site(&origin));
    let scrape = || async {
        let (status, text) = node.admin("GET", "/metrics", None).await;
        assert_eq!(status, 200);
        parse_metrics(&text)
    };
    let before = scrape().await;
    let unrouted: Vec<&String> = before.keys().filter(|k| k.contains(r#"site="-""#)).collect();
    assert!(
        unrouted.is_empty(),
        "series for unrouted requests before any: {unrouted:?}"
    );
    for _ in 0..3 {
        get(&node.proxy, "127.0.0.1", "/m").await;
    }
    // A request is counted once its response is sent: the last one may still be on its way.
    let counted = r#"edgecache_request_duration_seconds_count{site="127.0.0.1"}"#;
    common::eventually_async(
        Duration::from_secs(5),
        "the three requests are counted",
        || async { scrape().await.get(counted) == Some(&3.0) },
    )
    .await;
    let after = scrape().await;
    let hit = r#"edgecache_requests_total{cache="hit",site="127.0.0.1",status="2xx"}"#;
    let miss = r#"edgecache_requests_total{cache="miss",site="127.0.0.1",status="2xx"}"#;
    assert_eq!(after.get(hit), Some(&2.0), "{after:#?}");
    assert_eq!(after.get(miss), Some(&1.0));
    origin.fixed("/never", "no-store", "uncacheable");
    get(&node.proxy, "127.0.0.1", "/never").await;
    let pass = r#"edgecache_requests_total{cache="pass",site="127.0.0.1",status="2xx"}"#;
    common::eventually_async(
        Duration::from_secs(5),
        "an uncacheable response is a pass",
        || async { scrape().await.get(pass) == Some(&1.0) },
    )
    .await;
    assert_eq!(before.get(hit), None);
    assert_eq!(after["edgecache_cache_entries"], 1.0);
    assert!(after["edgecache_cache_bytes"] > 0.0);
    assert!((after["edgecache_cache_hit_ratio"] - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        after[r#"edgecache_request_duration_seconds_count{site="127.0.0.1"}"#],
        3.0
    );
    assert_eq!(
        after[r#"edgecache_origin_duration_seconds_count{site="127.0.0.1"}"#],
        1.0
    );
    let up = format!(
        r#"edgecache_origin_up{{origin="{}",site="127.0.0.1"}}"#,
        origin.addr
    );
    assert_eq!(after[&up], 1.0);
    assert_eq!(after[r#"edgecache_response_bytes_total{site="127.0.0.1"}"#], 27.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_origins_and_a_broken_file_keeps_the_running_config() {
    let first = Origin::start().await;
    let second = Origin::start().await;
    for (origin, name) in [(&first, "first"), (&second, "second")] {
        origin.route("/who", move |_, _| {
            Reply::ok(name).header("cache-control", "no-store")
        });
    }
    let receiver = Origin::start().await;
    receiver.route("/hook", |_, _| Reply::new(200, ""));
    let webhook = format!(
        "[[webhook]]\nurl = \"http://{}/hook\"\nevents = [\"config_reload\", \"config_rejected\"]\nsecret = \"k\"\n",
        receiver.addr
    );
    let node = Node::start("reload", "", &format!("{}{webhook}", site(&first)));
    assert_eq!(
        get(&node.proxy, "127.0.0.1", "/who").await.text().await.unwrap(),
        "first"
    );
    get(&node.proxy, "127.0.0.1", "/who").await;

    // A concurrent loop of requests sees no failure while the origin changes.
    let url = node.proxy.url("/who");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(async move {
        let mut answers = Vec::new();
        while !*stopped.borrow() {
            let resp = client().get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            answers.push(resp.text().await.unwrap());
        }
        answers
    });
    node.rewrite("", &format!("{}{webhook}", site(&second)));
    let (status, text) = node.admin("POST", "/reload", None).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"version\": 2"), "{text}");
    let served_by_second = second.hits("/who");
    eventually(
        Duration::from_secs(5),
        "the loop reaches the second origin",
        || second.hits("/who") >= served_by_second + 10,
    )
    .await;
    stop.send_replace(true);
    let answers = traffic.await.unwrap();
    assert_eq!(answers.last().map(String::as_str), Some("second"), "{answers:?}");
    assert!(answers.iter().all(|a| a == "first" || a == "second"));

    // A broken file is rejected with file, line and key, and the running config stays.
    std::fs::write(
        &node.file,
        "[server]\nlisten = [\"127.0.0.1:1\"]\nthreads = \"two\"\n",
    )
    .unwrap();
    let (status, text) = node.admin("POST", "/reload", None).await;
    assert_eq!(status, 422);
    assert!(text.contains("edgecache.toml:3: server.threads"), "{text}");
    assert_eq!(
        get(&node.proxy, "127.0.0.1", "/who").await.text().await.unwrap(),
        "second"
    );
    let (_, status) = node.admin("GET", "/status", None).await;
    assert!(status.contains("\"version\": 2"), "{status}");
    eventually(Duration::from_secs(5), "both reload events delivered", || {
        receiver.hits("/hook") >= 2
    })
    .await;
    let kinds: Vec<String> = receiver
        .seen("/hook")
        .iter()
        .map(|d| serde_json::from_slice::<serde_json::Value>(&d.body).unwrap()["type"].to_string())
        .collect();
    assert!(kinds.contains(&"\"config_reload\"".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"\"config_rejected\"".to_string()), "{kinds:?}");
    assert_eq!(first.hits("/who") + second.hits("/who"), 2 + answers.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_and_server_timing() {
    let origin = Origin::start().await;
    origin.fixed("/logged", "max-age=600", "logged");
    let dir = common::scratch_dir("ops-log");
    for (format, check) in [("json", 0), ("combined", 1)] {
        let log = dir.join(format!("access-{format}.log"));
        let keys = format!(
            "access_log = true\naccess_log_format = \"{format}\"\naccess_log_path = {:?}\nserver_timing = true",
            log.to_str().unwrap()
        );
        let proxy = Proxy::start_with_server(&site(&origin), &keys);
        for _ in 0..2 {
            let resp = client()
                .get(proxy.url("/logged?x=1"))
                .header("user-agent", "ops-test")
                .send()
                .await
                .unwrap();
            let timing = resp.headers()["server-timing"].to_str().unwrap().to_string();
            assert!(timing.starts_with("cache;desc="), "{timing}");
            assert!(timing.contains("edge;dur="), "{timing}");
        }
        eventually(Duration::from_secs(5), "two access-log lines written", || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap();
        // Lines are written as requests end; the miss (which also stores) may end second.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_by_key(|line| !(line.contains("\"cache\":\"miss\"") || line.contains("cache=miss")));
        if check == 0 {
            let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
            assert_eq!(first["path"], "/logged?x=1");
            assert_eq!(first["status"], 200);
            assert_eq!(first["cache"], "miss");
            assert_eq!(first["origin"], origin.addr.to_string());
            assert!(first["upstream_ms"].as_f64().is_some());
            assert!(first["total_ms"].as_f64().is_some());
            let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
            assert_eq!(second["cache"], "hit");
            assert_eq!(second["user_agent"], "ops-test");
        } else {
            assert!(lines[1].starts_with("127.0.0.1 - - ["), "{}", lines[1]);
            assert!(
                lines[1].contains("\"GET /logged?x=1 HTTP/1.1\" 200 6 \"-\" \"ops-test\""),
                "{}",
                lines[1]
            );
            assert!(
                lines[1].contains("cache=hit origin=- upstream_ms=- total_ms="),
                "{}",
                lines[1]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purged_entry_still_covers_an_origin_failure() {
    let origin = Origin::start().await;
    origin.route("/sie", |_, _| {
        Reply::ok("kept")
            .header("cache-control", "max-age=600, stale-if-error=600")
            .header("etag", "\"k\"")
    });
    let node = Node::start("soft-sie", "", &site(&origin));
    get(&node.proxy, "127.0.0.1", "/sie").await;
    assert_eq!(
        node.purge(serde_json::json!({ "url": "127.0.0.1/sie", "soft": true }))
            .await,
        1
    );
    origin.stop();
    let resp = get(&node.proxy, "127.0.0.1", "/sie").await;
    assert_eq!(resp.status(), 200);
    assert!(
        cache_status(&resp).contains("stale-if-error"),
        "{}",
        cache_status(&resp)
    );
    assert_eq!(resp.text().await.unwrap(), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_purge_is_announced_and_counted() {
    let origin = Origin::start().await;
    origin.fixed("/p", "max-age=600", "p");
    let receiver = Origin::start().await;
    receiver.route("/hook", |_, _| Reply::new(200, ""));
    let node = Node::start(
        "traffic-purge",
        "purge_allow = [\"127.0.0.1\"]",
        &format!(
            "{}[[webhook]]\nurl = \"http://{}/hook\"\nsecret = \"k\"\n",
            site(&origin),
            receiver.addr
        ),
    );
    get(&node.proxy, "127.0.0.1", "/p").await;
    let purge = client()
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            node.proxy.url("/p"),
        )
        .header("host", "127.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    eventually(Duration::from_secs(5), "the purge is announced", || {
        receiver.seen("/hook").iter().any(|d| {
            let event: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
            event["type"] == "purge" && event["details"]["via"] == "PURGE" && event["details"]["entries"] == 1
        })
    })
    .await;
    let (_, text) = node.admin("GET", "/metrics", None).await;
    let metrics = parse_metrics(&text);
    assert_eq!(
        metrics[r#"edgecache_purged_entries_total{kind="url",mode="hard"}"#],
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_health_changes_and_start_are_sent_as_events() {
    let origin = Origin::start().await;
    origin.fixed("/health", "no-store", "ok");
    let receiver = Origin::start().await;
    receiver.route("/hook", |_, _| Reply::new(200, ""));
    let body = format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n\
         [site.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
         [[webhook]]\nurl = \"http://{}/hook\"\nevents = [\"origin_health\", \"node_started\"]\nsecret = \"k\"\n",
        origin.addr, receiver.addr
    );
    let node = Node::start("health-events", "node_name = \"edge-test\"", &body);
    let events = || -> Vec<serde_json::Value> {
        receiver
            .seen("/hook")
            .iter()
            .map(|d| serde_json::from_slice(&d.body).unwrap())
            .collect()
    };
    eventually(Duration::from_secs(5), "node_started delivered", || {
        events().iter().any(|e| e["type"] == "node_started")
    })
    .await;
    assert_eq!(events()[0]["node"], "edge-test");
    origin.stop();
    eventually(Duration::from_secs(5), "origin_health (down) delivered", || {
        events().iter().any(|e| {
            e["type"] == "origin_health"
                && e["details"]["origin"] == origin.addr.to_string()
                && e["details"]["healthy"] == false
        })
    })
    .await;
    let (_, text) = node.admin("GET", "/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["sites"][0]["origins"][0]["healthy"], false);
    assert_eq!(status["node"], "edge-test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_admin_token() {
    let origin = Origin::start().await;
    let node = Node::start("rotate", "", &site(&origin));
    let text =
        Node::config(node.proxy.addr, node.admin, "", &site(&origin)).replace(TOKEN, "rotated-token-2");
    std::fs::write(&node.file, text).unwrap();
    assert_eq!(node.admin("POST", "/reload", None).await.0, 200);
    assert_eq!(
        node.admin("GET", "/status", None).await.0,
        401,
        "the old token is refused"
    );
    let resp = client()
        .get(format!("http://{}/status", node.admin))
        .bearer_auth("rotated-token-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_under_memory_pressure_are_announced() {
    let origin = Origin::start().await;
    for n in 0..12 {
        origin.route(&format!("/big/{n}"), |_, _| {
            Reply::ok(vec![b'x'; 16 * 1024]).header("cache-control", "max-age=600")
        });
    }
    let receiver = Origin::start().await;
    receiver.route("/hook", |_, _| Reply::new(200, ""));
    let body = format!(
        "[cache]\nmax_memory = \"64KiB\"\nmax_object_size = \"32KiB\"\n{}\
         [[webhook]]\nurl = \"http://{}/hook\"\nevents = [\"cache_eviction\"]\nsecret = \"k\"\n",
        site(&origin),
        receiver.addr
    );
    let node = Node::start("evictions", "", &body);
    for n in 0..12 {
        get(&node.proxy, "127.0.0.1", &format!("/big/{n}")).await;
    }
    eventually(
        Duration::from_secs(5),
        "a cache_eviction event is delivered",
        || receiver.hits("/hook") >= 1,
    )
    .await;
    let event: serde_json::Value = serde_json::from_slice(&receiver.seen("/hook")[0].body).unwrap();
    assert_eq!(event["type"], "cache_eviction");
    assert!(event["details"]["evicted"].as_u64().unwrap() >= 1, "{event}");
    assert!(
        event["details"]["bytes"].as_u64().unwrap() <= 64 * 1024,
        "{event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let origin = Origin::start().await;
    let node = Node::start("bearer-case", "", &site(&origin));
    for scheme in ["bearer", "BEARER", "Bearer ", "bEaReR"] {
        let resp = client()
            .get(format!("http://{}/status", node.admin))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme:?}");
    }
}

#[test]
fn the_grafana_dashboard_uses_only_documented_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/config/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("edgecache_"));
            for name in names {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
                assert!(
                    readme.contains(&format!("`{base}`")),
                    "{name} in {:?} is not a documented metric",
                    panel["title"]
                );
            }
        }
    }
}
