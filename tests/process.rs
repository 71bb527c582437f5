//! The real binary under signals: SIGHUP reloads (good and broken files), a zero-downtime
//! upgrade (`-u`, then SIGQUIT to the old process) and a graceful SIGTERM, each while requests
//! keep coming.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_port, wait_until_listening, Origin, Reply};

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Running {
    child: Child,
    logs: mpsc::Receiver<String>,
}

impl Running {
    fn start(config: &Path, extra: &[&str]) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgecache"));
        command.args(["--config", config.to_str().unwrap()]).args(extra);
        Running::spawn(command)
    }

    /// Runs `command` (the binary, perhaps through a shell), collecting its stderr lines.
    fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, logs) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        Running { child, logs }
    }

    fn signal(&self, name: &str) {
        // The shell's built-in kill: no procps needed on the machine.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for a log line containing `text`.
    fn log_line(&self, text: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits for the process to exit.
    fn exited(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory for one test's config, pid file and upgrade socket.
fn temp_dir(name: &str) -> PathBuf {
    common::scratch_dir(&format!("proc-{name}"))
}

fn write_config(dir: &Path, listen: SocketAddr, origin: SocketAddr) -> PathBuf {
    let file = dir.join("edgecache.toml");
    let text = format!(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 1\naccess_log = false\n\
         grace_period = \"2s\"\ngraceful_shutdown_timeout = \"1s\"\nupgrade_sock = {:?}\npid_file = {:?}\n\
         [[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{origin}\"]\n",
        dir.join("upgrade.sock"),
        dir.join("edgecache.pid"),
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// Requests sent by the request loops of this test binary (for waiting on their progress).
/// Requests sent by one test's request loops (tests run in parallel: each counts its own).
type Sent = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// Waits until the request loops counting into `sent` have sent `more` requests.
async fn traffic_flows(sent: &Sent, more: usize) {
    let start = sent.load(std::sync::atomic::Ordering::Relaxed);
    common::eventually(Duration::from_secs(10), "the request loop makes progress", || {
        sent.load(std::sync::atomic::Ordering::Relaxed) >= start + more
    })
    .await;
}

/// Waits until a process started with `-u` listens on the upgrade socket for the old one.
async fn upgrade_socket_ready(dir: &Path) {
    let socket = dir.join("upgrade.sock");
    common::eventually(
        Duration::from_secs(10),
        "the new process opens the upgrade socket",
        || socket.exists(),
    )
    .await;
}

/// Requests `url` on a new connection each time until `stop` is set; returns every status
/// (or error) and body.
fn request_loop(
    url: String,
    stop: tokio::sync::watch::Receiver<bool>,
    sent: &Sent,
) -> tokio::task::JoinHandle<Vec<Result<String, String>>> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    request_loop_with(client, url, stop, sent)
}

/// Requests `url` with `client` (and its connection pool) until `stop` is set; returns every
/// status (or error) and body.
fn request_loop_with(
    client: reqwest::Client,
    url: String,
    stop: tokio::sync::watch::Receiver<bool>,
    sent: &Sent,
) -> tokio::task::JoinHandle<Vec<Result<String, String>>> {
    let sent = sent.clone();
    tokio::spawn(async move {
        let mut outcomes = Vec::new();
        while !*stop.borrow() {
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = match client.get(&url).send().await {
                Ok(resp) if resp.status() == 200 => resp.text().await.map_err(|e| e.to_string()),
                Ok(resp) => Err(format!("status {}", resp.status())),
                Err(e) => Err(format!("{e:?}")),
            };
            outcomes.push(outcome);
        }
        outcomes
    })
}

fn failures(outcomes: &[Result<String, String>]) -> Vec<&String> {
    outcomes.iter().filter_map(|o| o.as_ref().err()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_switches_origins_without_a_failed_request_and_rejects_a_broken_file() {
    let first = Origin::start().await;
    let second = Origin::start().await;
    for (origin, name) in [(&first, "first"), (&second, "second")] {
        origin.route("/who", move |_, _| {
            Reply::ok(name).header("cache-control", "no-store")
        });
    }
    let dir = temp_dir("hup");
    let listen = free_port();
    let config = write_config(&dir, listen, first.addr);
    let proxy = Running::start(&config, &[]);
    wait_until_listening(listen);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sent = Sent::default();
    let traffic = request_loop(format!("http://{listen}/who"), stopped, &sent);
    traffic_flows(&sent, 20).await;
    write_config(&dir, listen, second.addr);
    proxy.signal("HUP");
    assert!(proxy
        .log_line("config reloaded", Duration::from_secs(10))
        .is_some());
    common::eventually(Duration::from_secs(5), "the new origin gets the traffic", || {
        second.hits("/who") >= 20
    })
    .await;
    stop.send_replace(true);
    let outcomes = traffic.await.unwrap();
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert_eq!(outcomes.last().unwrap().as_deref(), Ok("second"));

    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nhosts = 7\n",
    )
    .unwrap();
    proxy.signal("HUP");
    let rejected = proxy
        .log_line("config reload rejected", Duration::from_secs(10))
        .unwrap();
    assert!(rejected.contains("edgecache.toml:4: site[0].hosts"), "{rejected}");
    let resp = reqwest::get(format!("http://{listen}/who")).await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "second");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_no_request() {
    let origin = Origin::start().await;
    origin.route("/page", |_, _| {
        Reply::ok("page").header("cache-control", "max-age=600")
    });
    let dir = temp_dir("upgrade");
    let listen = free_port();
    let config = write_config(&dir, listen, origin.addr);
    let mut old = Running::start(&config, &[]);
    wait_until_listening(listen);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sent = Sent::default();
    let traffic = request_loop(format!("http://{listen}/page"), stopped, &sent);
    traffic_flows(&sent, 20).await;
    // The new process waits for the listening sockets, which the old one hands over on SIGQUIT.
    let new = Running::start(&config, &["-u"]);
    upgrade_socket_ready(&dir).await;
    old.signal("QUIT");
    assert!(
        old.exited(Duration::from_secs(15)),
        "the old process finishes and exits"
    );
    traffic_flows(&sent, 50).await;
    stop.send_replace(true);
    let outcomes = traffic.await.unwrap();
    assert!(outcomes.len() > 50, "only {} requests", outcomes.len());
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let resp = reqwest::get(format!("http://{listen}/page")).await.unwrap();
    assert_eq!(resp.status(), 200, "the new process serves");
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let origin = slow_origin("done", Duration::from_millis(800)).await;
    let dir = temp_dir("term");
    let listen = free_port();
    let config = write_config(&dir, listen, origin.addr);
    let mut proxy = Running::start(&config, &[]);
    wait_until_listening(listen);

    let in_flight = slow_request_in_flight(&origin, listen).await;
    proxy.signal("TERM");
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "done");
    assert!(
        proxy.exited(Duration::from_secs(10)),
        "the process exits after its requests"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemonized proxy, stopped (SIGTERM by pid) when dropped.
struct Daemon {
    pid_file: PathBuf,
}

impl Daemon {
    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("the daemon wrote its pid file");
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.pid().is_some() {
            self.signal("INT");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_writes_its_access_log_recompresses_brotli_and_reloads_a_relative_config() {
    let origin = Origin::start().await;
    let page = "<p>daemon mode keeps its background work</p>\n".repeat(200);
    origin.route("/page", move |_, _| {
        Reply::ok(page.clone())
            .header("cache-control", "max-age=600")
            .header("content-type", "text/html")
            .header("etag", "\"v1\"")
    });
    origin.fixed("/b", "no-store", "site b");
    let dir = temp_dir("daemon");
    let listen = free_port();
    let config = |hosts: &str| {
        format!(
            "[server]\nlisten = [\"{listen}\"]\nthreads = 1\naccess_log = true\naccess_log_path = \"access.log\"\n\
             pid_file = {:?}\nupgrade_sock = {:?}\n[[site]]\nhosts = [{hosts}]\norigins = [\"{}\"]\n",
            dir.join("edgecache.pid"),
            dir.join("upgrade.sock"),
            origin.addr
        )
    };
    std::fs::write(dir.join("edgecache.toml"), config("\"127.0.0.1\"")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_edgecache"))
        .current_dir(&dir)
        .args(["-d", "--config", "edgecache.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let daemon = Daemon {
        pid_file: dir.join("edgecache.pid"),
    };
    wait_until_listening(listen);

    let client = common::client();
    let br_etag = || async {
        let resp = client
            .get(format!("http://{listen}/page"))
            .header("accept-encoding", "br")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-encoding"], "br");
        resp.headers()["etag"].to_str().unwrap().to_string()
    };
    assert!(br_etag().await.starts_with("W/"), "the first brotli pass is weak");
    common::eventually(
        Duration::from_secs(10),
        "the background brotli recompression runs",
        || !common::block_on(br_etag()).starts_with("W/"),
    )
    .await;
    common::eventually(Duration::from_secs(5), "an access-log line is written", || {
        std::fs::read_to_string(dir.join("access.log")).is_ok_and(|log| log.contains("/page"))
    })
    .await;

    std::fs::write(dir.join("edgecache.toml"), config("\"127.0.0.1\", \"b.test\"")).unwrap();
    daemon.signal("HUP");
    common::eventually(
        Duration::from_secs(10),
        "the reload of a relative config path failed",
        || {
            let resp = common::block_on(
                client
                    .get(format!("http://{listen}/b"))
                    .header("host", "b.test")
                    .send(),
            );
            resp.is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_tls_clients_are_dropped_quickly_without_flooding_the_log() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let dir = temp_dir("junk-tls");
    let certificate = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    std::fs::write(dir.join("a.pem"), certificate.cert.pem()).unwrap();
    std::fs::write(dir.join("a.key"), certificate.key_pair.serialize_pem()).unwrap();
    let (listen, tls) = (free_port(), free_port());
    let config = dir.join("edgecache.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{listen}\"]\nlisten_tls = [\"{tls}\"]\nthreads = 1\naccess_log = false\n\
             handshake_timeout = \"1s\"\nupgrade_sock = {:?}\n\
             [[site]]\nhosts = [\"a.test\"]\norigins = [\"{}\"]\ntls_cert = \"a.pem\"\ntls_key = \"a.key\"\n",
            dir.join("upgrade.sock"),
            origin.addr
        ),
    )
    .unwrap();
    let proxy = Running::start(&config, &[]);
    wait_until_listening(tls);
    for _ in 0..50 {
        let mut junk = tokio::net::TcpStream::connect(tls).await.unwrap();
        junk.write_all(b"\x16\x03\x01\x00\x08notahello").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), junk.read_to_end(&mut rest)).await;
    }
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(tls).await.unwrap();
    let mut nothing = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut nothing)).await;
    assert!(closed.is_ok(), "a client without a ClientHello was kept");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The log keeps serving as a log: a marker line shows everything before it was read.
    let marker = reqwest::get(format!("http://{listen}/marker")).await.unwrap();
    assert_eq!(marker.status(), 404);
    proxy.signal("HUP");
    let mut errors = Vec::new();
    loop {
        let line = proxy
            .logs
            .recv_timeout(Duration::from_secs(10))
            .expect("the reload is logged");
        if line.contains("config reloaded") {
            break;
        }
        if line.contains("ERROR") {
            errors.push(line);
        }
    }
    assert!(errors.len() < 5, "{} ERROR lines: {errors:?}", errors.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A config for `listen` in front of `origin`, with extra `[server]` keys.
fn config_with(dir: &Path, listen: SocketAddr, origin: SocketAddr, server_keys: &str) -> PathBuf {
    let file = dir.join("edgecache.toml");
    let text = format!(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 1\naccess_log = false\nupgrade_sock = {:?}\n{server_keys}\n\
         [[site]]\nhosts = [\"127.0.0.1\"]\norigins = [\"{origin}\"]\n",
        dir.join("upgrade.sock"),
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// Sends one keep-alive request on `stream` and reads its whole (short, sized) answer.
async fn keepalive_request(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return String::from_utf8_lossy(&answer).to_string(),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_cost_at_most_32_kib_each() {
    let origin = Origin::start().await;
    origin.route("/idle", |_, _| {
        Reply::ok("i").header("cache-control", "max-age=600")
    });
    let dir = temp_dir("idle-memory");
    let listen = free_port();
    let proxy = Running::start(&config_with(&dir, listen, origin.addr, ""), &[]);
    wait_until_listening(listen);
    let mut warm = tokio::net::TcpStream::connect(listen).await.unwrap();
    keepalive_request(&mut warm, "/idle").await;
    let before = rss_kib(proxy.child.id());
    let mut idle = Vec::new();
    for _ in 0..400 {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        let answer = keepalive_request(&mut stream, "/idle").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        idle.push(stream);
    }
    let per_connection = (rss_kib(proxy.child.id()) - before) as f64 / idle.len() as f64;
    assert!(
        per_connection <= 32.0,
        "{per_connection:.1} KiB per idle keep-alive connection"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_open_file_limit_are_refused_and_admitted_ones_keep_working() {
    let origin = Origin::start().await;
    origin.route("/fd", |_, _| Reply::ok("fd").header("cache-control", "no-store"));
    let dir = temp_dir("fd-limit");
    let listen = free_port();
    let config = config_with(
        &dir,
        listen,
        origin.addr,
        "origin_pool_size = 0\nmax_connections_per_ip = 100000",
    );
    let script = format!(
        "ulimit -n 400 && exec {} --config {}",
        env!("CARGO_BIN_EXE_edgecache"),
        config.display()
    );
    let mut shell = Command::new("sh");
    shell.args(["-c", &script]);
    let proxy = Running::spawn(shell);
    wait_until_listening(listen);
    assert!(proxy
        .log_line("lowered to fit the open-file limit", Duration::from_secs(5))
        .is_some());
    let mut first = tokio::net::TcpStream::connect(listen).await.unwrap();
    assert!(keepalive_request(&mut first, "/fd")
        .await
        .starts_with("HTTP/1.1 200"));
    let mut held = Vec::new();
    for _ in 0..500 {
        held.push(tokio::net::TcpStream::connect(listen).await.unwrap());
    }
    // Those beyond what the descriptors allow are closed at once, not left hanging.
    common::eventually(
        Duration::from_secs(5),
        "connections beyond the limit are closed",
        || {
            let refused = held
                .iter()
                .filter(|s| matches!(s.try_read(&mut [0u8; 1]), Ok(0)))
                .count();
            refused >= 300
        },
    )
    .await;
    // The admitted connection still reaches the origin: the process has descriptors left.
    let answer = keepalive_request(&mut first, "/fd").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    common::eventually(Duration::from_secs(5), "the request is served", || {
        let resp = common::block_on(reqwest::get(format!("http://{listen}/fd")));
        resp.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_loses_no_request_on_reused_keep_alive_connections() {
    let origin = Origin::start().await;
    origin.route("/kept", |_, _| {
        Reply::ok("kept").header("cache-control", "max-age=600")
    });
    let dir = temp_dir("upgrade-keepalive");
    let listen = free_port();
    let config = write_config(&dir, listen, origin.addr);
    let mut old = Running::start(&config, &[]);
    wait_until_listening(listen);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let sent = Sent::default();
    let loops: Vec<_> = (0..4)
        .map(|_| {
            request_loop_with(
                client.clone(),
                format!("http://{listen}/kept"),
                stopped.clone(),
                &sent,
            )
        })
        .collect();
    traffic_flows(&sent, 100).await;
    let new = Running::start(&config, &["-u"]);
    upgrade_socket_ready(&dir).await;
    old.signal("QUIT");
    assert!(old.exited(Duration::from_secs(15)), "the old process exits");
    traffic_flows(&sent, 200).await;
    stop.send_replace(true);
    let mut outcomes = Vec::new();
    for handle in loops {
        outcomes.extend(handle.await.unwrap());
    }
    assert!(outcomes.len() >= 2000, "only {} requests", outcomes.len());
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a request for `/slow` to the proxy at `listen`, returning once it reached `origin`.
async fn slow_request_in_flight(
    origin: &Origin,
    listen: SocketAddr,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let in_flight = tokio::spawn(reqwest::get(format!("http://{listen}/slow")));
    let reached = || origin.hits("/slow") == 1;
    common::eventually(
        Duration::from_secs(5),
        "the slow request reaches the origin",
        reached,
    )
    .await;
    in_flight
}

/// An origin whose `/slow` answers `body` (uncacheable) after `delay`.
async fn slow_origin(body: &'static str, delay: Duration) -> Origin {
    let origin = Origin::start().await;
    origin.route("/slow", move |_, _| {
        Reply::ok(body).header("cache-control", "no-store").delay(delay)
    });
    origin
}

/// A config with `grace_period` and a webhook endpoint for `node_stopping` at `hook`.
fn stopping_config(
    dir: &Path,
    listen: SocketAddr,
    origin: SocketAddr,
    grace: &str,
    hook: SocketAddr,
) -> PathBuf {
    let file = config_with(
        dir,
        listen,
        origin,
        &format!("grace_period = \"{grace}\"\ngraceful_shutdown_timeout = \"1s\""),
    );
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "[[webhook]]\nurl = \"http://{hook}/hook\"\nevents = [\"node_stopping\"]\nsecret = \"0123456789abcdef\"\n"
    ));
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_in_flight_exits_at_once_after_announcing_the_stop() {
    let origin = Origin::start().await;
    origin.route("/p", |_, _| Reply::ok("p").header("cache-control", "no-store"));
    origin.route("/hook", |_, _| Reply::ok(""));
    let dir = temp_dir("term-idle");
    let listen = free_port();
    let config = stopping_config(&dir, listen, origin.addr, "30s", origin.addr);
    let mut proxy = Running::start(&config, &[]);
    wait_until_listening(listen);
    let resp = common::client()
        .get(format!("http://{listen}/p"))
        .header("connection", "close");
    assert_eq!(resp.send().await.unwrap().status(), 200);

    let signalled = Instant::now();
    proxy.signal("TERM");
    assert!(
        proxy.exited(Duration::from_secs(5)),
        "still running 5 s after SIGTERM with nothing in flight (grace period 30 s)"
    );
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_eq!(origin.hits("/hook"), 1, "node_stopping delivered before exiting");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_on_an_idle_keep_alive_connection_while_draining_is_answered_with_close() {
    let origin = Origin::start().await;
    origin.route("/k", |_, _| Reply::ok("k").header("cache-control", "max-age=600"));
    let dir = temp_dir("term-keepalive");
    let listen = free_port();
    let config = config_with(&dir, listen, origin.addr, "grace_period = \"30s\"");
    let mut proxy = Running::start(&config, &[]);
    wait_until_listening(listen);
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    assert!(keepalive_request(&mut stream, "/k")
        .await
        .starts_with("HTTP/1.1 200"));

    proxy.signal("TERM");
    assert!(proxy
        .log_line("Broadcast graceful shutdown complete", Duration::from_secs(5))
        .is_some());
    // The client's next request comes a little after the drain began, as a client with some
    // think time would send it, on the connection it was told it could keep.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = keepalive_request(&mut stream, "/k").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        proxy.exited(Duration::from_secs(5)),
        "exits once the connection is closed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_cuts_what_is_still_in_flight_and_says_so() {
    let origin = slow_origin("late", Duration::from_secs(20)).await;
    let dir = temp_dir("term-cut");
    let listen = free_port();
    let config = config_with(
        &dir,
        listen,
        origin.addr,
        "grace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"",
    );
    let mut proxy = Running::start(&config, &[]);
    wait_until_listening(listen);
    let in_flight = slow_request_in_flight(&origin, listen).await;
    proxy.signal("TERM");
    let line = proxy.log_line("grace period over", Duration::from_secs(5));
    let line = line.expect("no log line about the cut response");
    assert!(line.contains("requests=1"), "{line}");
    assert!(proxy.exited(Duration::from_secs(5)));
    assert!(in_flight.await.unwrap().is_err(), "the response was cut");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once_even_while_draining() {
    let origin = slow_origin("late", Duration::from_secs(20)).await;
    let dir = temp_dir("int");
    let listen = free_port();
    let config = config_with(&dir, listen, origin.addr, "grace_period = \"30s\"");
    let mut proxy = Running::start(&config, &[]);
    wait_until_listening(listen);
    let in_flight = slow_request_in_flight(&origin, listen).await;
    proxy.signal("TERM");
    assert!(proxy
        .log_line("Broadcast graceful shutdown complete", Duration::from_secs(5))
        .is_some());
    proxy.signal("INT");
    assert!(
        proxy.exited(Duration::from_secs(3)),
        "SIGINT during a 30 s grace period did not stop the process"
    );
    assert!(in_flight.await.unwrap().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `edgecache <args>` to completion: exit code, stdout, stderr.
fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgecache"))
        .args(args)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands_report_purge_and_reload_and_say_why_they_cannot() {
    let origin = Origin::start().await;
    origin.route("/page", |_, n| {
        Reply::ok(format!("v{n}")).header("cache-control", "max-age=600")
    });
    let dir = temp_dir("cli-admin");
    let listen = free_port();
    let admin = free_port();
    let admin_keys = format!("[admin]\nlisten = \"{admin}\"\ntoken = \"cli-token-123\"\n");
    let config = config_with(&dir, listen, origin.addr, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[[site]]", &format!("{admin_keys}[[site]]"));
    std::fs::write(&config, &text).unwrap();
    let _proxy = Running::start(&config, &[]);
    wait_until_listening(listen);
    wait_until_listening(admin);
    let config_arg = config.to_str().unwrap();
    reqwest::get(format!("http://{listen}/page")).await.unwrap();

    let (code, out, err) = run_cli(&["status", "--config", config_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cache: 1 entries"), "{out}");
    let (code, out, _) = run_cli(&["status", "--json", "--config", config_arg]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["cache"]["entries"],
        1
    );
    let (code, out, err) = run_cli(&["purge", "http://127.0.0.1/page", "--config", config_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged: 1 entries deleted"), "{out}");
    let body = reqwest::get(format!("http://{listen}/page"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "v2", "the purge took effect");
    let (code, out, err) = run_cli(&["reload", "--config", config_arg]);
    assert_eq!((code, out.trim()), (0, "config reloaded: version 2"), "{err}");

    let wrong = dir.join("wrong-token.toml");
    std::fs::write(&wrong, text.replace("cli-token-123", "not-the-token")).unwrap();
    let (code, _, err) = run_cli(&["status", "--config", wrong.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("refused the token"), "{err}");
    let without = dir.join("no-admin.toml");
    std::fs::write(&without, text.replace(&admin_keys, "")).unwrap();
    let (code, _, err) = run_cli(&["reload", "--config", without.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no [admin] section"), "{err}");
    let unreachable = dir.join("unreachable.toml");
    let closed = common::closed_port();
    std::fs::write(
        &unreachable,
        text.replace(&admin.to_string(), &closed.to_string()),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["status", "--config", unreachable.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin API"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
