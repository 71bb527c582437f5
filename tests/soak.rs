//! Soak test: the real binary under a realistic mix for as long as you like.
//!
//! `cargo test --test soak -- --duration 600 --connections 64` runs it for ten minutes (the test
//! suite runs it for 60 s). The mix: Zipf-popular URLs over a working set ten times
//! `max_memory`, 10 % uncacheable, conditional and Range requests, purges, slow and failing
//! origin responses, slow clients, an origin restart and a config reload mid-run. Every body is
//! checked against what the origin serves for its URL.
//!
//! It fails on a 5xx not caused by an injected origin fault, a panic, a body that does not match,
//! or RSS beyond the cache bound plus [`RSS_MARGIN_MIB`]; it prints requests, errors by kind, hit
//! ratio, origin requests saved, latency percentiles and RSS over time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, wait_until_listening, Origin, Reply};

/// The cache size the proxy runs with.
const MAX_MEMORY_MIB: u64 = 4;

/// RSS allowed above the RSS at the start of the run, beyond `max_memory` (bodies being fetched,
/// compression working memory, connections, allocator slack).
const RSS_MARGIN_MIB: u64 = 96;

/// Cacheable objects: about ten times `max_memory` (8 KiB on average).
const OBJECTS: u64 = 5_000;

/// Run settings from the command line.
struct Settings {
    duration: Duration,
    connections: usize,
}

fn settings() -> Option<Settings> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test some_filter` passes the filter to every test binary: run only when asked.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let positional_values: Vec<String> = ["--duration", "--connections"]
        .iter()
        .filter_map(|name| value(name).map(|v| v.to_string()))
        .collect();
    let unrelated = filters
        .iter()
        .any(|f| !f.contains("soak") && !positional_values.contains(f));
    if unrelated || args.iter().any(|a| a == "--list") {
        return None;
    }
    Some(Settings {
        duration: Duration::from_secs(value("--duration").unwrap_or(60)),
        connections: value("--connections").unwrap_or(32) as usize,
    })
}

/// The body the origin serves for object `i`: its size and bytes depend on `i` alone.
fn object_body(i: u64) -> Vec<u8> {
    let size = 1024 + (i * 7919 % 15) as usize * 1024;
    let line = format!("object {i} line of text, compressible and checkable\n");
    line.as_bytes().iter().copied().cycle().take(size).collect()
}

/// Zipf-like pick of an object: popular ones far more often.
fn zipf(rng: &mut fastrand::Rng) -> u64 {
    let u = rng.f64().max(1e-9);
    ((OBJECTS as f64).powf(u) as u64)
        .saturating_sub(1)
        .min(OBJECTS - 1)
}

/// What went wrong, by kind.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    hits: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    faults: Mutex<BTreeMap<String, u64>>,
    latencies_us: Mutex<Vec<u64>>,
}

impl Tally {
    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn fault(&self, kind: &str) {
        *self.faults.lock().unwrap().entry(kind.to_string()).or_default() += 1;
    }
}

fn config_text(listen: SocketAddr, origin: SocketAddr, dir: &std::path::Path, via: &str) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 2\naccess_log = false\nvia = \"{via}\"\n\
         purge_allow = [\"127.0.0.1\"]\nupgrade_sock = {:?}\n\
         [cache]\nmax_memory = \"{MAX_MEMORY_MIB}MiB\"\nmax_object_size = \"1MiB\"\n\
         [[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{origin}\"]\nread_timeout = \"2s\"\nretries = 0\neject_after_failures = 0\n",
        dir.join("upgrade.sock")
    )
}

/// Requests the origin received, over every path.
fn origin_requests(origin: &Origin) -> usize {
    let objects = (0..OBJECTS).map(|i| origin.hits(&format!("/obj/{i}")));
    let others =
        (0..100u64).map(|i| origin.hits(&format!("/nocache/{i}")) + origin.hits(&format!("/flaky/{i}")));
    objects.chain(others).sum()
}

fn routes(origin: &Origin) {
    for i in 0..OBJECTS {
        let body = bytes::Bytes::from(object_body(i));
        origin.route(&format!("/obj/{i}"), move |_, _| {
            Reply::ok(body.clone())
                .header("cache-control", "max-age=30")
                .header("content-type", "text/plain")
                .header("etag", format!("\"o{i}\""))
        });
    }
    for i in 0..100u64 {
        let body = bytes::Bytes::from(object_body(i));
        origin.route(&format!("/nocache/{i}"), move |_, _| {
            Reply::ok(body.clone()).header("cache-control", "no-store")
        });
        origin.route(&format!("/flaky/{i}"), move |_, n| {
            if n % 4 == 0 {
                Reply::new(500, "injected fault").header("cache-control", "no-store")
            } else if n % 5 == 0 {
                Reply::ok("slow")
                    .header("cache-control", "no-store")
                    .delay(Duration::from_millis(300))
            } else {
                Reply::ok("fine").header("cache-control", "no-store")
            }
        });
    }
}

/// One client connection's loop: a mixed request, checked, until `stop`.
async fn client_loop(
    proxy: SocketAddr,
    seed: u64,
    slow: bool,
    stop: Arc<AtomicBool>,
    faults: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let roll = rng.u32(0..100);
        let (path, expect): (String, Option<Vec<u8>>) = match roll {
            0..=9 => {
                let i = rng.u64(0..100);
                (format!("/nocache/{i}"), Some(object_body(i)))
            }
            10..=12 => (format!("/flaky/{}", rng.u64(0..100)), None),
            _ => {
                let i = zipf(&mut rng);
                (format!("/obj/{i}"), Some(object_body(i)))
            }
        };
        let mut request = client.get(format!("http://{proxy}{path}"));
        let conditional = roll == 13;
        let ranged = roll == 14;
        let purge = roll == 15;
        if conditional {
            let i: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
            request = request.header("if-none-match", format!("\"o{i}\""));
        }
        if ranged {
            request = request.header("range", "bytes=10-99");
        }
        if (16..40).contains(&roll) {
            request = request.header("accept-encoding", "gzip");
        }
        if purge {
            request = client.request(
                reqwest::Method::from_bytes(b"PURGE").unwrap(),
                format!("http://{proxy}{path}"),
            );
        }
        let started = Instant::now();
        let response = request.send().await;
        let response = match response {
            Ok(response) => response,
            Err(e) if faults.load(Ordering::Relaxed) => {
                tally.fault(&format!("transport during origin restart: {}", e.is_connect()));
                continue;
            }
            Err(e) => {
                tally.error(format!("transport: {e}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let cache_status = common::cache_status(&response);
        let encoding = response
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let body = if slow {
            let mut body = Vec::new();
            let mut response = response;
            while let Ok(Some(chunk)) = response.chunk().await {
                body.extend_from_slice(&chunk);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            body
        } else {
            response.bytes().await.map(|b| b.to_vec()).unwrap_or_default()
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        tally
            .latencies_us
            .lock()
            .unwrap()
            .push(started.elapsed().as_micros() as u64);
        if cache_status.contains("hit") {
            tally.hits.fetch_add(1, Ordering::Relaxed);
        }
        if purge {
            if status != 200 && status != 404 {
                tally.error(format!("PURGE answered {status}"));
            }
            continue;
        }
        // While the origin restarts, a fresh origin may briefly answer 404 before its routes
        // are set up: a fault of the test's making like the 5xx.
        if status >= 500 || (status == 404 && faults.load(Ordering::Relaxed)) {
            let injected = path.starts_with("/flaky/") || faults.load(Ordering::Relaxed);
            if injected {
                tally.fault(&format!("{status} from an injected origin fault"));
            } else {
                tally.error(format!("{status} on {path} ({cache_status})"));
            }
            continue;
        }
        let Some(expected) = expect else { continue };
        let body = match encoding.as_deref() {
            Some("gzip") => {
                let mut decoded = Vec::new();
                let _ =
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut decoded);
                decoded
            }
            _ => body,
        };
        let ok = match status {
            200 => body == expected,
            206 => body[..] == expected[10..100.min(expected.len())],
            304 => conditional,
            _ => false,
        };
        if !ok {
            tally.error(format!(
                "{status} on {path}: body does not match ({} bytes, {cache_status})",
                body.len()
            ));
        }
    }
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib / 1024
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() {
    let Some(settings) = settings() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(soak(settings));
}

async fn soak(settings: Settings) {
    let mut origin = Origin::start().await;
    routes(&origin);
    let origin_addr = origin.addr;
    let dir = common::scratch_dir("soak");
    let listen = free_port();
    let config = dir.join("edgecache.toml");
    std::fs::write(&config, config_text(listen, origin_addr, &dir, "soak-a")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgecache"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let panicked = Arc::new(AtomicBool::new(false));
    let stderr = child.stderr.take().unwrap();
    let saw_panic = panicked.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("panicked") {
                eprintln!("proxy: {line}");
                saw_panic.store(true, Ordering::Relaxed);
            }
        }
    });
    wait_until_listening(listen);
    let rss_start = rss_mib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..settings.connections)
        .map(|c| {
            let slow = c % 8 == 7;
            tokio::spawn(client_loop(
                listen,
                c as u64 + 1,
                slow,
                stop.clone(),
                faults.clone(),
                tally.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let mut rss_samples = Vec::new();
    let mut restarted = false;
    let mut origin_total = 0;
    let mut reloaded = false;
    while started.elapsed() < settings.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let elapsed = started.elapsed();
        rss_samples.push((elapsed.as_secs(), rss_mib(pid)));
        if !restarted && elapsed >= settings.duration / 3 {
            restarted = true;
            faults.store(true, Ordering::Relaxed);
            origin_total += origin_requests(&origin);
            origin.stop();
            drop(origin);
            tokio::time::sleep(Duration::from_millis(500)).await;
            origin = Origin::start_on(origin_addr).await;
            routes(&origin);
            tokio::time::sleep(Duration::from_secs(3)).await;
            faults.store(false, Ordering::Relaxed);
        }
        if !reloaded && elapsed >= settings.duration * 2 / 3 {
            reloaded = true;
            std::fs::write(&config, config_text(listen, origin_addr, &dir, "soak-b")).unwrap();
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -HUP {pid}")])
                .status();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    origin_total += origin_requests(&origin);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let requests = tally.requests.load(Ordering::Relaxed);
    let hits = tally.hits.load(Ordering::Relaxed);
    let mut latencies = tally.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    let rss_peak = rss_samples.iter().map(|(_, r)| *r).max().unwrap_or(0);
    println!(
        "soak: {} s, {} connections",
        settings.duration.as_secs(),
        settings.connections
    );
    println!(
        "requests: {requests} ({:.0}/s)",
        requests as f64 / settings.duration.as_secs_f64()
    );
    println!("hit ratio: {:.1} %", 100.0 * hits as f64 / requests.max(1) as f64);
    println!(
        "origin requests: {origin_total} ({:.1} % of requests saved)",
        100.0 * (1.0 - origin_total as f64 / requests.max(1) as f64)
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!("injected faults seen: {:?}", tally.faults.lock().unwrap());
    println!("errors: {:?}", tally.errors.lock().unwrap());
    let series: Vec<String> = rss_samples
        .iter()
        .filter(|(s, _)| *s % 10 == 0)
        .map(|(s, r)| format!("{s}s:{r}"))
        .collect();
    println!(
        "RSS MiB (start {rss_start}, peak {rss_peak}, max_memory {MAX_MEMORY_MIB}): {}",
        series.join(" ")
    );

    assert!(!panicked.load(Ordering::Relaxed), "the proxy panicked");
    assert!(
        tally.errors.lock().unwrap().is_empty(),
        "errors: {:?}",
        tally.errors.lock().unwrap()
    );
    assert!(requests > 0);
    assert!(
        rss_peak <= rss_start + MAX_MEMORY_MIB + RSS_MARGIN_MIB,
        "RSS reached {rss_peak} MiB from {rss_start} MiB"
    );
}
