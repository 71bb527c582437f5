//! TLS termination: certificates by SNI, HTTP/2 by ALPN, HTTPS redirects and HSTS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{free_port, get, wait_until_listening, Origin, Proxy, Reply};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A throwaway CA and a leaf certificate per host, written as PEM files to a fresh directory.
struct TestPki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    ca_pem: String,
    leaf_der: Vec<(String, Vec<u8>)>,
}

impl TestPki {
    fn new(name: &str, hosts: &[&str]) -> TestPki {
        let dir = common::scratch_dir(&format!("tls-{name}"));
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = ca.pem();
        let mut pki = TestPki {
            dir,
            ca,
            ca_key,
            ca_pem,
            leaf_der: Vec::new(),
        };
        for host in hosts {
            pki.issue(host);
        }
        pki
    }

    /// Issues a new key pair and certificate for `host`, replacing its files; returns the DER.
    fn issue(&mut self, host: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![host.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.cert(host), cert.pem()).unwrap();
        std::fs::write(self.key(host), key.serialize_pem()).unwrap();
        self.leaf_der.retain(|(h, _)| h != host);
        self.leaf_der.push((host.to_string(), cert.der().to_vec()));
        cert.der().to_vec()
    }

    fn cert(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.pem"))
    }

    fn key(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.key"))
    }

    fn leaf(&self, host: &str) -> &[u8] {
        &self.leaf_der.iter().find(|(h, _)| h == host).unwrap().1
    }

    /// A client trusting the CA that sends `host` to `addr`.
    fn client(&self, tls_addr: SocketAddr, hosts: &[&str], http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_info(true)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap());
        for host in hosts {
            builder = builder.resolve(host, tls_addr);
        }
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn site(hosts: &str, origin: &Origin, pki: &TestPki, host: &str, extra: &str) -> String {
    format!(
        "[[site]]\nhosts = [{hosts}]\norigins = [\"{}\"]\ntls_cert = {:?}\ntls_key = {:?}\n{extra}\n",
        origin.addr,
        pki.cert(host),
        pki.key(host)
    )
}

fn start(body: &str) -> (Proxy, SocketAddr) {
    let tls_addr = free_port();
    let proxy = Proxy::start_with_server(body, &format!("listen_tls = [\"{tls_addr}\"]"));
    wait_until_listening(tls_addr);
    (proxy, tls_addr)
}

fn peer_certificate(resp: &reqwest::Response) -> Vec<u8> {
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    info.peer_certificate().expect("peer certificate").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sni_name_gets_its_sites_certificate_over_http2() {
    let pki = TestPki::new("sni", &["a.test", "b.test"]);
    let (a, b) = (Origin::start().await, Origin::start().await);
    a.fixed("/", "no-store", "site a");
    b.fixed("/", "no-store", "site b");
    let body = site("\"a.test\"", &a, &pki, "a.test", "") + &site("\"b.test\"", &b, &pki, "b.test", "");
    let (_proxy, tls_addr) = start(&body);
    let client = pki.client(tls_addr, &["a.test", "b.test"], false);
    for host in ["a.test", "b.test"] {
        let resp = client
            .get(format!("https://{host}:{}/", tls_addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(peer_certificate(&resp), pki.leaf(host));
        assert_eq!(resp.text().await.unwrap(), format!("site {}", &host[..1]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_tls_share_one_cache_entry() {
    let pki = TestPki::new("share", &["a.test"]);
    let origin = Origin::start().await;
    origin.fixed("/shared", "max-age=60", "cached once");
    let (_proxy, tls_addr) = start(&site("\"a.test\"", &origin, &pki, "a.test", ""));
    let url = format!("https://a.test:{}/shared", tls_addr.port());
    let h1 = pki
        .client(tls_addr, &["a.test"], true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    let h2 = pki
        .client(tls_addr, &["a.test"], false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert!(
        common::cache_status(&h2).contains("hit"),
        "{}",
        common::cache_status(&h2)
    );
    assert_eq!(origin.hits("/shared"), 1);
    assert_eq!(origin.seen("/shared")[0].headers["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_and_https_carries_hsts() {
    let pki = TestPki::new("redirect", &["a.test"]);
    let origin = Origin::start().await;
    origin.fixed("/page", "no-store", "secure");
    let extra = "redirect_https = true\nhsts = \"max-age=31536000\"";
    let (proxy, tls_addr) = start(&site("\"a.test\"", &origin, &pki, "a.test", extra));
    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = plain
        .get(proxy.url("/page?x=1"))
        .header("host", "a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://a.test:{}/page?x=1", tls_addr.port())
    );
    assert!(!resp.headers().contains_key("strict-transport-security"));
    let secure = pki.client(tls_addr, &["a.test"], false);
    let resp = secure
        .get(format!("https://a.test:{}/page", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(resp.text().await.unwrap(), "secure");
    assert_eq!(origin.hits("/page"), 1, "the redirect did not reach the origin");
}

/// The certificate a fresh TLS connection to `host` is served.
async fn served_certificate(pki: &TestPki, tls_addr: SocketAddr, host: &str) -> Vec<u8> {
    let client = pki.client(tls_addr, &[host], false);
    let resp = client
        .get(format!("https://{host}:{}/", tls_addr.port()))
        .send()
        .await
        .unwrap();
    peer_certificate(&resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_keeps_them_when_the_file_is_broken() {
    use std::io::BufRead;
    let mut pki = TestPki::new("reload", &["a.test"]);
    let (plain_addr, tls_addr) = (free_port(), free_port());
    let config = pki.dir.join("edgecache.toml");
    let text = format!(
        "[server]\nlisten = [\"{plain_addr}\"]\nlisten_tls = [\"{tls_addr}\"]\nthreads = 1\n\
         upgrade_sock = {:?}\n[[site]]\nhosts = [\"a.test\"]\norigins = [\"{}\"]\n\
         tls_cert = \"a.test.pem\"\ntls_key = \"a.test.key\"\n",
        pki.dir.join("upgrade.sock"),
        common::closed_port()
    );
    std::fs::write(&config, text).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_edgecache"))
            .args(["--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (log_lines, logs) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_lines.send(line);
        }
    });
    let hangup = |pid: u32| {
        // The shell's built-in kill: no procps needed on the machine.
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -HUP {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    };
    wait_until_listening(tls_addr);
    assert_eq!(
        served_certificate(&pki, tls_addr, "a.test").await,
        pki.leaf("a.test")
    );

    let renewed = pki.issue("a.test");
    hangup(child.0.id());
    common::eventually_async(
        std::time::Duration::from_secs(10),
        "the renewed certificate is served after SIGHUP",
        || async { served_certificate(&pki, tls_addr, "a.test").await == renewed },
    )
    .await;

    std::fs::write(pki.cert("a.test"), "broken").unwrap();
    hangup(child.0.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = Vec::new();
    let rejected = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match logs.recv_timeout(left) {
            Ok(line) if line.contains("config reload rejected") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    assert!(
        rejected.as_ref().is_some_and(|line| line.contains("a.test.pem")),
        "{rejected:?} after {seen:#?}"
    );
    assert_eq!(served_certificate(&pki, tls_addr, "a.test").await, renewed);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the proxy must keep running"
    );
}

/// Kills the child process when dropped, so a failing test leaves nothing running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check(text: &str) -> String {
    edgecache::config::Config::parse(text, Path::new("tls.toml"))
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn broken_certificates_are_clear_config_errors() {
    let pki = TestPki::new("broken", &["a.test", "b.test"]);
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let site = |cert: &Path, key: &Path| {
        format!("[[site]]\nhosts = [\"a.test\"]\norigins = [\"127.0.0.1:1\"]\ntls_cert = {cert:?}\ntls_key = {key:?}\n")
    };
    let err = check(&site(&garbage, &pki.key("a.test")));
    assert!(
        err.contains("tls.toml:4: site[0].tls_cert:") && err.contains("no certificate found"),
        "{err}"
    );
    let err = check(&site(&pki.cert("a.test"), &pki.key("b.test")));
    assert!(
        err.contains("site[0].tls_cert") && err.contains("do not form a key pair"),
        "{err}"
    );
    let err = check(&site(&pki.dir.join("missing.pem"), &pki.key("a.test")));
    assert!(err.contains("missing.pem"), "{err}");
    let err = check(
        "[server]\nlisten_tls = [\"127.0.0.1:0\"]\n[[site]]\nhosts = [\"a\"]\norigins = [\"127.0.0.1:1\"]\n",
    );
    assert!(err.contains("server.listen_tls"), "{err}");
}

#[test]
fn certificates_close_to_expiry_are_detected() {
    let pki = TestPki::new("expiry", &["a.test"]);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["soon.test".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2000, 1, 1);
    params.not_before = rcgen::date_time_ymd(1999, 1, 1);
    let cert = params.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    let (cert_file, key_file) = (pki.dir.join("soon.pem"), pki.dir.join("soon.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let soon = edgecache::tls::LoadedCertificate::load(&cert_file, &key_file).unwrap();
    assert!(soon.expires_within(edgecache::tls::EXPIRY_WARNING));
    let fresh = edgecache::tls::LoadedCertificate::load(&pki.cert("a.test"), &pki.key("a.test")).unwrap();
    assert!(
        !fresh.expires_within(edgecache::tls::EXPIRY_WARNING),
        "rcgen's default validity is years"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_origins_verifies_with_the_configured_ca_and_offers_http2() {
    let pki = TestPki::new("upstream", &["origin.test"]);
    let origin = Origin::start().await;
    origin.route("/up", |seen, _| {
        let via: Vec<_> = seen
            .headers
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        Reply::ok(via.join(", ")).header("cache-control", "no-store")
    });
    // An HTTPS origin: a second proxy terminating TLS in front of the plain origin.
    let (_tls_origin, tls_origin_addr) = start(&site(
        "\"origin.test\"",
        &origin,
        &pki,
        "origin.test",
        "default = true",
    ));
    let ca_file = pki.dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let upstream_tls = format!(
        "[[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{tls_origin_addr}\"]\norigin_tls = true\n\
         origin_sni = \"origin.test\"\norigin_http2 = true\n"
    );
    let trusting = Proxy::start_with_server(&upstream_tls, &format!("origin_ca_file = {ca_file:?}"));
    let (status, _, via) = get(&trusting, "/up", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        via, "1.1 edgecache, 2 edgecache",
        "HTTP/2 was negotiated with the TLS origin"
    );

    let untrusting = Proxy::start(&upstream_tls);
    let (status, cache, _) = get(&untrusting, "/up", &[]).await;
    assert_eq!(status, 502, "an origin certificate from an unknown CA is refused");
    assert!(cache.contains("detail=origin-"), "{cache}");
    assert_eq!(origin.hits("/up"), 1);
}

#[test]
fn check_rejects_a_broken_certificate_file() {
    let pki = TestPki::new("check", &["a.test"]);
    std::fs::write(
        pki.cert("a.test"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let config = pki.dir.join("edgecache.toml");
    let text = "[server]\nlisten_tls = [\"127.0.0.1:8443\"]\n[[site]]\nhosts = [\"a.test\"]\n\
                origins = [\"127.0.0.1:3000\"]\ntls_cert = \"a.test.pem\"\ntls_key = \"a.test.key\"\n";
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgecache"))
        .args(["--check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:6: site[0].tls_cert: {}",
        config.display(),
        pki.cert("a.test").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_reported_in_status_and_metrics() {
    let pki = TestPki::new("expiry", &["a.test"]);
    let origin = Origin::start().await;
    let admin = free_port();
    let body = format!("[admin]\nlisten = \"{admin}\"\ntoken = \"expiry-token\"\n")
        + &site("\"a.test\"", &origin, &pki, "a.test", "");
    let (_proxy, _) = start(&body);
    let fetch = |path: &'static str| async move {
        common::client()
            .get(format!("http://{admin}{path}"))
            .bearer_auth("expiry-token")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let status: serde_json::Value = serde_json::from_str(&fetch("/status").await).unwrap();
    let expires = status["sites"][0]["certificate_expires"].as_str().unwrap();
    let expires = humantime::parse_rfc3339(expires).unwrap();
    assert!(expires > std::time::SystemTime::now() + std::time::Duration::from_secs(86_400));
    let metrics = fetch("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("edgecache_certificate_expiry_seconds{site=\"a.test\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let seconds: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(seconds > 86_400.0, "{line}");
}
