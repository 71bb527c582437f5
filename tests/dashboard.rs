//! The dashboard in a real browser: headless Chromium driven over WebDriver by `chromedriver`
//! (Debian's `chromium` and `chromium-driver` packages), against a real node and origin.
//! Without them the tests fail and say what to install: they are never skipped.
//!
//! The purge test saves a screenshot of the page in `target/tmp/dashboard.png`. With
//! `DASHBOARD_TRAFFIC_SECONDS=N` it first sends N seconds of mixed traffic, so the charts have
//! a history (that is how the README's screenshot is made).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{cache_status, client, eventually_async, free_port, Origin, Proxy, Reply};
use fantoccini::{Client, ClientBuilder, Locator};

const TOKEN: &str = "dashboard-test-token";

/// chromedriver and the browser session it drives; both end with the value.
struct Browser {
    driver: Child,
    client: Client,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session.
    async fn start() -> Browser {
        let port = free_port().port();
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {binary} ({e}): the dashboard tests need headless Chromium and its \
                     WebDriver; on Debian: apt-get install chromium chromium-driver"
                )
            });
        let status = format!("http://127.0.0.1:{port}/status");
        eventually_async(Duration::from_secs(20), "chromedriver answers", || async {
            client().get(&status).send().await.is_ok()
        })
        .await;
        let mut options = serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1500", "--no-proxy-server"],
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = "/usr/bin/chromium".into();
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("headless Chromium did not start: {e}"));
        Browser { driver, client }
    }

    /// The text content of the element with `id` (also when it is hidden).
    async fn text(&self, id: &str) -> String {
        let script = "return document.getElementById(arguments[0]).textContent;";
        let value = self.client.execute(script, vec![id.into()]).await.unwrap();
        value.as_str().unwrap_or_default().to_string()
    }

    /// Whether the element with `id` is hidden.
    async fn hidden(&self, id: &str) -> bool {
        let script = "return document.getElementById(arguments[0]).hidden;";
        let value = self.client.execute(script, vec![id.into()]).await.unwrap();
        value.as_bool().unwrap()
    }

    /// Waits until the element with `id` has text accepted by `check`; returns that text.
    async fn wait_for_text(&self, id: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            last = self.text(id).await;
            if check(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: #{id} still says {last:?}");
    }

    /// Types `token` into the login form and submits it.
    async fn log_in(&self, admin: SocketAddr, token: &str) {
        self.client.goto(&format!("http://{admin}/")).await.unwrap();
        let field = self
            .client
            .wait()
            .for_element(Locator::Id("token"))
            .await
            .unwrap();
        field.send_keys(token).await.unwrap();
        self.click("#login-form button[type=submit]").await;
    }

    /// Clicks the element `css` selects, as a user would.
    async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element.click().await.unwrap();
    }

    async fn close(self) {
        let Browser { mut driver, client } = self;
        let _ = client.close().await;
        let _ = driver.kill();
        let _ = driver.wait();
    }
}

/// A node with an admin listener in front of `origin`; returns it and its admin address.
fn node(origin: &Origin) -> (Proxy, SocketAddr) {
    let (addr, admin) = (free_port(), free_port());
    let text = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\naccess_log = false\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{}\"]\n",
        origin.addr
    );
    (Proxy::start_config(&text, addr), admin)
}

fn cached_page(origin: &Origin) {
    origin.route("/page", |_, _| {
        Reply::ok("a cached page").header("cache-control", "max-age=300")
    });
}

/// `DASHBOARD_TRAFFIC_SECONDS` of requests over 200 URLs (Zipf-like: low numbers more often),
/// a tenth of them uncacheable, at a rate that swells and ebbs.
async fn mixed_traffic(proxy: &Proxy, origin: &Origin) {
    let seconds: u64 = std::env::var("DASHBOARD_TRAFFIC_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if seconds == 0 {
        return;
    }
    origin.route("/item", |seen, _| {
        let slow = seen.uri.query() == Some("n=7");
        let reply = Reply::ok("x".repeat(2048)).header("cache-control", "max-age=20");
        if slow {
            reply.delay(Duration::from_millis(40))
        } else {
            reply
        }
    });
    origin.route("/private", |_, _| {
        Reply::ok("mine").header("cache-control", "private")
    });
    let client = client();
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut n: u64 = 0;
    while std::time::Instant::now() < end {
        n += 1;
        let pick = (n * 7919) % 1000;
        let url = if pick < 100 {
            proxy.url("/private")
        } else {
            proxy.url(&format!("/item?n={}", (pick * pick) % 200 / (1 + pick % 7)))
        };
        let _ = client.get(url).send().await;
        let phase = (n / 200) % 4;
        tokio::time::sleep(Duration::from_millis(5 + 5 * phase)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_shows_no_data() {
    let origin = Origin::start().await;
    cached_page(&origin);
    let (proxy, admin) = node(&origin);
    let resp = client().get(proxy.url("/page")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let browser = Browser::start().await;

    browser.log_in(admin, "not-the-token").await;
    let error = browser
        .wait_for_text("login-error", "a refused token says so", |t| !t.is_empty())
        .await;
    assert!(error.contains("refused"), "{error}");
    assert!(browser.hidden("dashboard").await, "the dashboard stays hidden");
    for id in ["requests-total", "cache-fill", "identity", "events"] {
        assert_eq!(browser.text(id).await, "", "#{id} shows data without the token");
    }
    let rows = browser
        .client
        .execute(
            "return document.querySelectorAll('#sites tbody tr').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rows, 0, "no site rows without the token");
    let saved = browser
        .client
        .execute("return sessionStorage.length;", vec![])
        .await
        .unwrap();
    assert_eq!(saved, 0, "a refused token is not kept");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counters_and_purge_from_the_page() {
    let origin = Origin::start().await;
    cached_page(&origin);
    let (proxy, admin) = node(&origin);
    let browser = Browser::start().await;

    browser.log_in(admin, TOKEN).await;
    let before = browser
        .wait_for_text("requests-total", "the page shows the request counter", |t| {
            t.parse::<u64>().is_ok()
        })
        .await;
    assert!(!browser.hidden("dashboard").await);
    let before: u64 = before.parse().unwrap();
    let sites = browser.text("sites").await;
    assert!(sites.contains(&origin.addr.to_string()), "origin listed: {sites}");

    // Traffic through the proxy moves the counter on the page.
    for _ in 0..5 {
        let resp = client().get(proxy.url("/page")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let hit = client().get(proxy.url("/page")).send().await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    browser
        .wait_for_text("requests-total", "the counter moves with traffic", |t| {
            t.parse::<u64>().is_ok_and(|n| n >= before + 6)
        })
        .await;

    // Purge the page with the form: the next request is a miss.
    let field = browser.client.find(Locator::Id("purge-value")).await.unwrap();
    field.send_keys(&proxy.url("/page")).await.unwrap();
    browser.click("#purge-form button[type=submit]").await;
    let result = browser
        .wait_for_text("purge-result", "the purge answers", |t| t.starts_with("Purged"))
        .await;
    assert_eq!(result, "Purged 1 entry");
    let after = client().get(proxy.url("/page")).send().await.unwrap();
    let status = cache_status(&after);
    assert!(status.contains("fwd=uri-miss"), "purged page refetched: {status}");
    assert_eq!(origin.hits("/page"), 2);

    // The purge shows among the recent events; the history has samples for the charts.
    browser
        .wait_for_text("events", "the purge is listed as an event", |t| {
            t.contains("purge")
        })
        .await;
    mixed_traffic(&proxy, &origin).await;
    let screenshot = browser.client.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, screenshot).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    // Readable on a phone: nothing wider than the screen but the tables, which scroll inside
    // their own box.
    browser.client.set_window_size(390, 844).await.unwrap();
    let overflow = browser
        .client
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than a phone by {overflow}px"
    );
    let phone = browser.client.screenshot().await.unwrap();
    std::fs::write(path.with_file_name("dashboard-phone.png"), phone).unwrap();
    browser.close().await;
}
