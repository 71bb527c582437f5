//! Test harness: a real HTTP origin and the real proxy, both on loopback ephemeral ports.
//!
//! The origin counts requests per path and answers from scripts registered by each test; the
//! proxy is built from a config text exactly as the binary builds it and runs in its own thread
//! until the test drops it.

#![allow(dead_code)]

pub mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

/// A request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// What the origin answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    pub delay: Duration,
}

/// A reply body: all at once, or streamed from a channel the test feeds.
pub enum ReplyBody {
    Full(Bytes),
    Stream(mpsc::Receiver<Bytes>),
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Full(body.into()),
            delay: Duration::ZERO,
        }
    }

    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::new(200, body)
    }

    pub fn header(mut self, name: &str, value: impl ToString) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn stream(status: u16, chunks: mpsc::Receiver<Bytes>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Stream(chunks),
            delay: Duration::ZERO,
        }
    }
}

type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

struct OriginState {
    scripts: Mutex<HashMap<String, Script>>,
    hits: Mutex<HashMap<String, Vec<Seen>>>,
    /// Set to true to drop every open connection.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Connections being served.
    open: std::sync::atomic::AtomicUsize,
    /// Assertions that failed inside scripts, reported to the test when the origin is dropped.
    script_failures: Mutex<Vec<String>>,
}

/// Counts a connection as open while it lives.
struct OpenConnection(Arc<OriginState>);

impl OpenConnection {
    fn new(state: Arc<OriginState>) -> OpenConnection {
        state.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenConnection(state)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Default for OriginState {
    fn default() -> Self {
        OriginState {
            scripts: Mutex::default(),
            hits: Mutex::default(),
            stopped: tokio::sync::watch::channel(false).0,
            open: std::sync::atomic::AtomicUsize::new(0),
            script_failures: Mutex::default(),
        }
    }
}

/// A scripted HTTP/1.1 origin on 127.0.0.1:0.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::serve(listener, Arc::default())
    }

    /// A fresh origin on the address of a stopped one (an origin coming back). The stopped
    /// origin's listener closes once its aborted task is dropped, so binding is retried briefly.
    pub async fn start_on(addr: SocketAddr) -> Origin {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Origin::serve(listener, Arc::default()),
                Err(e) if Instant::now() > deadline => panic!("cannot bind {addr} again: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn serve(listener: TcpListener, state: Arc<OriginState>) -> Origin {
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let mut stopped = state.stopped.subscribe();
                let open = OpenConnection::new(shared.clone());
                tokio::spawn(async move {
                    let _open = open;
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                });
            }
        });
        Origin { addr, state, task }
    }

    /// Answers `path` with `script(request, n)`, where `n` counts this path's requests from 1.
    pub fn route(&self, path: &str, script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(script));
    }

    /// Answers `path` with the same cacheable text every time.
    pub fn fixed(&self, path: &str, cache_control: &'static str, body: &'static str) {
        self.route(path, move |_, _| {
            Reply::ok(body).header("cache-control", cache_control)
        });
    }

    /// How many requests reached `path` (path without query, as requested).
    pub fn hits(&self, path: &str) -> usize {
        self.state.hits.lock().unwrap().get(path).map_or(0, Vec::len)
    }

    /// Every request that reached `path`, oldest first.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Stops accepting connections and drops the open ones: the port then refuses connections,
    /// and no request is answered any more once this returns.
    pub fn stop(&self) {
        self.task.abort();
        self.state.stopped.send_replace(true);
        let wait = || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.state.open.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // Waiting blocks this thread: let the runtime move its tasks (the connections) elsewhere.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }
}

impl Drop for Origin {
    /// Stops serving; a script that failed an assertion fails the test here, in the test's
    /// thread, rather than only in the origin's task.
    fn drop(&mut self) {
        self.stop();
        let failures = std::mem::take(&mut *self.state.script_failures.lock().unwrap());
        if !std::thread::panicking() {
            assert!(failures.is_empty(), "origin script failed: {failures:?}");
        }
    }
}

async fn handle(
    state: Arc<OriginState>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seen = Seen {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    let path = seen.uri.path().to_string();
    let count = {
        let mut hits = state.hits.lock().unwrap();
        let list = hits.entry(path.clone()).or_default();
        list.push(seen.clone());
        list.len()
    };
    let script = state.scripts.lock().unwrap().get(&path).cloned();
    let reply = match script {
        Some(script) => {
            let run = std::panic::AssertUnwindSafe(|| script(&seen, count));
            std::panic::catch_unwind(run).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let failure = format!("{path} (request {count}): {message}");
                state.script_failures.lock().unwrap().push(failure);
                Reply::new(500, "origin script failed")
            })
        }
        None => Reply::new(404, "no such path"),
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = http::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = match reply.body {
        ReplyBody::Full(bytes) => Full::new(bytes).boxed(),
        ReplyBody::Stream(chunks) => {
            let frames = futures_util::stream::unfold(chunks, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
            });
            StreamBody::new(frames).boxed()
        }
    };
    Ok(response.body(body).unwrap())
}

/// A free loopback port for the proxy (or a process) to bind. pingora cannot report the port
/// of a `:0` listener, so the port is chosen here: below the kernel's ephemeral range, where no
/// `:0` bind (test origins, client sockets) can take it between this check and the proxy's
/// bind, and never the same twice in one test process.
pub fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 10_000;
    const SPAN: u16 = 20_000; // 10000..30000, below Linux's default 32768..60999
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % u32::from(SPAN)) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "ran out of test ports");
        let port = FIRST + (offset + n) % SPAN;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if StdListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A fresh, empty directory under the system temp dir for one test's files (configs, keys,
/// logs). The name carries the process id and a per-process sequence number, so two tests of one
/// binary never share a directory even when they pass the same `label`, and one test removing its
/// directory cannot pull files from under another.
pub fn scratch_dir(label: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("edgecache-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback address where nothing listens (connections are refused).
pub fn closed_port() -> SocketAddr {
    free_port()
}

struct TestShutdown(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for TestShutdown {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// The real proxy, built from config text and running until dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    pub storage: &'static edgecache::cache::MokaStorage,
    pub health_events: edgecache::upstream::HealthEvents,
    shutdown: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy with `[server] listen` set to a free port and `body` (sites, cache
    /// settings) after it. Returns once the proxy accepts connections.
    pub fn start(body: &str) -> Proxy {
        Proxy::start_with_server(body, "")
    }

    /// Like [`Proxy::start`], with extra `[server]` keys.
    pub fn start_with_server(body: &str, server_keys: &str) -> Proxy {
        let addr = free_port();
        let threads = if server_keys.contains("threads") {
            ""
        } else {
            "threads = 2\n"
        };
        let log = if server_keys.contains("access_log") {
            ""
        } else {
            "access_log = false\n"
        };
        let text = format!("[server]\nlisten = [\"{addr}\"]\n{threads}{log}{server_keys}\n{body}");
        let config = edgecache::config::Config::parse(&text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        Proxy::run(config, addr)
    }

    /// Starts the proxy from a whole config `text` whose listener is `addr`.
    pub fn start_config(text: &str, addr: SocketAddr) -> Proxy {
        let config = edgecache::config::Config::parse(text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        Proxy::run(config, addr)
    }

    /// Starts the proxy from a config file (which `POST /reload` re-reads), listening on `addr`.
    pub fn start_file(path: &std::path::Path, addr: SocketAddr) -> Proxy {
        let config = edgecache::config::Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        Proxy::run(config, addr)
    }

    fn run(config: edgecache::config::Config, addr: SocketAddr) -> Proxy {
        let built = edgecache::server::build(&config, None).unwrap();
        let storage = built.storage;
        let health_events = built.health_events.clone();
        let shutdown = Arc::new(Notify::new());
        let signal = TestShutdown(shutdown.clone());
        let server = built.server;
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
        });
        wait_until_listening(addr);
        if let Some(admin) = &config.admin {
            wait_until_listening(admin.listen);
        }
        Proxy {
            addr,
            storage,
            health_events,
            shutdown,
            thread: Some(thread),
        }
    }

    /// A proxy with one default site in front of `origin`, and extra `[cache]` keys.
    pub fn for_origin(origin: &Origin, cache_keys: &str) -> Proxy {
        Proxy::start(&format!(
            "[cache]\n{cache_keys}\n[[site]]\nhosts = [\"127.0.0.1\", \"localhost\"]\norigins = [\"{}\"]\nread_timeout = \"2s\"\n",
            origin.addr
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until something accepts connections on `addr` (a readiness check, not a sleep).
pub fn wait_until_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "proxy did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An HTTP/1.1 client that never uses a system proxy and never decompresses.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Polls `check` until it holds (for effects of background work); fails the test, saying
/// `what` was expected, when it does not within `within`.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a check that needs to await.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `ttl` parameter of a `Cache-Status` value.
pub fn ttl_of(cache_status: &str) -> Option<i64> {
    let (_, rest) = cache_status.split_once("ttl=")?;
    rest.split(';').next()?.trim().parse().ok()
}

/// The `Cache-Status` header of a response.
pub fn cache_status(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// GET `path` with extra headers; returns status, Cache-Status and body.
pub async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut request = client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    let cache = cache_status(&resp);
    (status, cache, resp.text().await.unwrap())
}

/// Runs a future to completion from synchronous code such as an `eventually` check (needs the
/// multi-thread runtime).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// Sends raw bytes to `addr` and returns everything it answers until it closes (within 5 s).
pub async fn raw_exchange_with(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "{addr} did not answer and close within 5 s");
    String::from_utf8_lossy(&answer).into_owned()
}
