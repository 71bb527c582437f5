//! Several real nodes on one machine (127.0.0.2, 127.0.0.3, ... on one port) sharing one
//! cache space: each URL fetched from the origin once, concurrent misses coalesced across
//! nodes, purges reaching every node, forged peer headers ignored, a hung peer not holding a
//! purge, and a killed node losing no request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::{Duration, Instant};

use common::{free_port, Origin, Proxy, Reply};
use edgecache::cluster::ring::Ring;
use edgecache::config::PeerSettings;

const SECRET: &str = "0123456789abcdef-cluster";
const TOKEN: &str = "admin-token-for-tests";
const HOST: &str = "site.test";

/// A port free on 127.0.0.2 up to 127.0.0.(n + 1), for the traffic listeners of `n` nodes.
fn cluster_port(n: u8) -> u16 {
    loop {
        let port = free_port().port();
        let free = (2..n + 2).all(|i| StdListener::bind(SocketAddr::from(([127, 0, 0, i], port))).is_ok());
        if free {
            return port;
        }
    }
}

/// Node `i` (from 0) of a cluster whose nodes listen on `port`.
fn node_addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2 + i as u8], port))
}

fn node_id(i: usize) -> String {
    format!("edge-{}", i + 1)
}

/// The `[cluster]` section of node `me` among `nodes` nodes on `port`.
fn cluster_section(me: usize, nodes: usize, port: u16) -> String {
    let peers: Vec<String> = (0..nodes)
        .map(|i| format!("{{ id = \"{}\", addr = \"{}\" }}", node_id(i), node_addr(i, port)))
        .collect();
    format!(
        "[cluster]\nnode = \"{}\"\nsecret = \"{SECRET}\"\npeer_timeout = \"2s\"\npeers = [{}]\n",
        node_id(me),
        peers.join(", ")
    )
}

/// The whole config of node `me`: its listener, its admin API one port up, the cluster, and a
/// site in front of `origin`.
fn node_config(me: usize, nodes: usize, port: u16, admin_port: u16, origin: SocketAddr) -> String {
    let addr = node_addr(me, port);
    let admin = SocketAddr::new(addr.ip(), admin_port);
    format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\naccess_log = false\nnode_name = \"{}\"\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n{}\
         [[site]]\nhosts = [\"{HOST}\"]\norigins = [\"{origin}\"]\n",
        node_id(me),
        cluster_section(me, nodes, port)
    )
}

/// `nodes` in-process nodes in front of `origin`.
struct Cluster {
    /// Running while the cluster lives.
    _nodes: Vec<Proxy>,
    port: u16,
    admin_port: u16,
}

impl Cluster {
    /// In-process nodes `which` of a cluster of `count` nodes on `port`.
    fn of(
        which: std::ops::Range<usize>,
        count: usize,
        port: u16,
        admin_port: u16,
        origin: &Origin,
    ) -> Cluster {
        let config = |i| node_config(i, count, port, admin_port, origin.addr);
        let nodes = which
            .map(|i| Proxy::start_config(&config(i), node_addr(i, port)))
            .collect();
        Cluster {
            _nodes: nodes,
            port,
            admin_port,
        }
    }

    /// Starts `count` nodes and returns once each sees every other as healthy.
    async fn start(count: usize, origin: &Origin) -> Cluster {
        let port = cluster_port(count as u8);
        let admin_port = cluster_port(count as u8);
        let cluster = Cluster::of(0..count, count, port, admin_port, origin);
        for node in 0..count {
            cluster.all_peers_healthy(node).await;
        }
        cluster
    }

    /// Waits until `node` sees every peer as healthy (peers started after it were not, yet).
    async fn all_peers_healthy(&self, node: usize) {
        common::eventually_async(Duration::from_secs(10), "every peer is seen healthy", || async {
            let status = self.admin(node, "GET", "/status", None).await;
            let peers = status["cluster"]["peers"].as_array().cloned().unwrap_or_default();
            peers.iter().all(|p| p["healthy"] == true)
        })
        .await;
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", node_addr(node, self.port))
    }

    async fn get(&self, node: usize, path: &str) -> (u16, String) {
        let resp = common::client()
            .get(self.url(node, path))
            .header("host", HOST)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn admin(&self, node: usize, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let url = format!(
            "http://{}{path}",
            SocketAddr::new(node_addr(node, self.port).ip(), self.admin_port)
        );
        let mut request = common::client()
            .request(method.parse().unwrap(), url)
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        serde_json::from_str(&request.send().await.unwrap().text().await.unwrap()).unwrap()
    }
}

/// The ring the nodes compute, for the test to know owners.
fn ring(nodes: usize, port: u16) -> Ring {
    let peers: Vec<PeerSettings> = (0..nodes)
        .map(|i| PeerSettings {
            id: node_id(i),
            addr: node_addr(i, port),
            weight: 1,
        })
        .collect();
    Ring::new(&peers)
}

/// The index of the node owning `path` on `HOST`.
fn owner_of(ring: &Ring, path: &str) -> usize {
    use pingora::cache::key::CacheHashKey;
    let target = edgecache::cache::CacheTarget {
        scheme: "http",
        host: HOST.into(),
        authority: HOST.into(),
        path_and_query: path.into(),
    };
    ring.candidates(&edgecache::cache::cache_key(&target).primary_bin())[0]
}

fn counted(origin: &Origin, path: &str) {
    origin.route(path, |_, n| {
        Reply::ok(format!("v{n}")).header("cache-control", "max-age=600")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_url_is_fetched_from_the_origin_once_across_three_nodes() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..100).map(|i| format!("/u/{i}")).collect();
    for path in &paths {
        counted(&origin, path);
    }
    let cluster = Cluster::start(3, &origin).await;
    for node in 0..3 {
        for path in &paths {
            assert_eq!(cluster.get(node, path).await, (200, "v1".to_string()));
        }
    }
    for path in &paths {
        assert_eq!(origin.hits(path), 1, "{path} fetched more than once");
        let seen = &origin.seen(path)[0];
        assert!(
            seen.headers.get("x-edgecache-peer").is_none(),
            "the peer header reached the origin"
        );
    }
    let ring = ring(3, cluster.port);
    let owned_by_first = paths.iter().filter(|p| owner_of(&ring, p) == 0).count();
    let status = cluster.admin(0, "GET", "/status", None).await;
    assert_eq!(status["cluster"]["node"], "edge-1");
    assert_eq!(status["cluster"]["peers"].as_array().unwrap().len(), 3);
    let fingerprint = status["cluster"]["ring_fingerprint"].clone();
    assert_eq!(
        cluster.admin(2, "GET", "/status", None).await["cluster"]["ring_fingerprint"],
        fingerprint
    );
    // Node 1 forwarded the URLs it does not own, once each.
    assert_eq!(
        status["cluster"]["forwarded"],
        (100 - owned_by_first) as u64,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_url_requested_100_times_across_three_nodes_is_fetched_once() {
    let origin = Origin::start().await;
    origin.route("/cold", |_, _| {
        Reply::ok("cold")
            .header("cache-control", "max-age=600")
            .delay(Duration::from_millis(300))
    });
    let cluster = std::sync::Arc::new(Cluster::start(3, &origin).await);
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.get(i % 3, "/cold").await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), (200, "cold".to_string()));
    }
    assert_eq!(origin.hits("/cold"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_peer_header_is_a_client_request() {
    let origin = Origin::start().await;
    let cluster = Cluster::start(3, &origin).await;
    let ring = ring(3, cluster.port);
    // A URL node 1 does not own: a trusted peer request would be served by node 1 itself.
    let path = (0..)
        .map(|i| format!("/forged/{i}"))
        .find(|p| owner_of(&ring, p) != 0)
        .unwrap();
    counted(&origin, &path);
    let now = edgecache::cluster::signature::unix_now();
    let forged = format!("edge-2 {now} {}", "0".repeat(64));
    let resp = common::client()
        .get(cluster.url(0, &path))
        .header("host", HOST)
        .header("x-edgecache-peer", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let owner = owner_of(&ring, &path);
    assert_eq!(cluster.get(owner, &path).await, (200, "v1".to_string()));
    assert_eq!(
        origin.hits(&path),
        1,
        "the forged request was not forwarded to the owner"
    );
    let status = cluster.admin(0, "GET", "/status", None).await;
    assert_eq!(status["cluster"]["forwarded"], 1);
    // The peer endpoints refuse unsigned callers.
    let purge = common::client()
        .post(cluster.url(0, "/.edgecache/peer/purge"))
        .body(r#"{"host": "site.test"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_on_one_node_reaches_every_node() {
    let origin = Origin::start().await;
    counted(&origin, "/p");
    let cluster = Cluster::start(3, &origin).await;
    for node in 0..3 {
        assert_eq!(cluster.get(node, "/p").await.1, "v1");
    }
    let started = Instant::now();
    let answer = cluster
        .admin(1, "POST", "/purge", Some(r#"{"url": "http://site.test/p"}"#))
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let peers = answer["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{answer}");
    assert!(peers.iter().all(|p| p["ok"] == true), "{answer}");
    for node in 0..3 {
        assert_eq!(
            cluster.get(node, "/p").await.1,
            "v2",
            "node {node} kept the purged body"
        );
    }
    assert_eq!(origin.hits("/p"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_peer_does_not_hold_a_purge() {
    let origin = Origin::start().await;
    counted(&origin, "/h");
    let port = cluster_port(3);
    let admin_port = cluster_port(3);
    // Node 3 accepts connections and never answers.
    let hung = StdListener::bind(node_addr(2, port)).unwrap();
    let cluster = Cluster::of(0..2, 3, port, admin_port, &origin);
    let started = Instant::now();
    let answer = cluster
        .admin(0, "POST", "/purge", Some(r#"{"host": "site.test"}"#))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let peers = answer["peers"].as_array().unwrap();
    let by_id = |id: &str| peers.iter().find(|p| p["node"] == id).unwrap().clone();
    assert_eq!(by_id("edge-2")["ok"], true, "{answer}");
    assert_eq!(by_id("edge-3")["ok"], false, "{answer}");
    drop(hung);
}

/// A node running as its own process, killed when dropped.
struct NodeProcess(std::process::Child);

impl NodeProcess {
    fn start(config: &std::path::Path) -> NodeProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_edgecache"))
            .args(["--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        NodeProcess(child)
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.0.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `count` nodes as processes (configs in a fresh directory), `extra` appended to each
/// `[cluster]` section; returns once each sees the others healthy.
async fn start_processes(
    name: &str,
    count: usize,
    origin: &Origin,
    extra: &str,
) -> (Cluster, Vec<NodeProcess>) {
    let dir = common::scratch_dir(&format!("cluster-{name}"));
    let port = cluster_port(count as u8);
    let admin_port = cluster_port(count as u8);
    let processes = (0..count)
        .map(|i| {
            let text = node_config(i, count, port, admin_port, origin.addr);
            let text = text.replace("[[site]]", &format!("{extra}[[site]]"));
            let path = dir.join(format!("node{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let process = NodeProcess::start(&path);
            common::wait_until_listening(node_addr(i, port));
            process
        })
        .collect();
    let cluster = Cluster {
        _nodes: Vec::new(),
        port,
        admin_port,
    };
    for node in 0..count {
        cluster.all_peers_healthy(node).await;
    }
    (cluster, processes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_loses_no_request_and_only_its_keys_are_refetched() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..60).map(|i| format!("/k/{i}")).collect();
    for path in &paths {
        origin.route(path, |_, _| {
            Reply::ok("body").header("cache-control", "max-age=600")
        });
    }
    // No copies kept by non-owners: every request is served by its owner.
    let (cluster, processes) = start_processes("kill", 3, &origin, "peer_copy_ttl = \"0s\"\n").await;
    for path in &paths {
        assert_eq!(cluster.get(0, path).await, (200, "body".to_string()));
    }
    let cluster = std::sync::Arc::new(cluster);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loops: Vec<_> = (0..4)
        .map(|l| {
            let (cluster, paths, stopped, served) =
                (cluster.clone(), paths.clone(), stopped.clone(), served.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut i = l;
                while !*stopped.borrow() {
                    let path = &paths[i % paths.len()];
                    let url = cluster.url(i % 2, path);
                    match common::client().get(&url).header("host", HOST).send().await {
                        Ok(resp) if resp.status() == 200 => {}
                        Ok(resp) => failures.push(format!("{url}: {}", resp.status())),
                        Err(e) => failures.push(format!("{url}: {e}")),
                    }
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
                failures
            })
        })
        .collect();
    let progress = |more: usize| {
        let start = served.load(std::sync::atomic::Ordering::Relaxed);
        let served = served.clone();
        move || served.load(std::sync::atomic::Ordering::Relaxed) >= start + more
    };
    common::eventually(Duration::from_secs(10), "the loops run", progress(200)).await;
    processes[2].signal("KILL");
    common::eventually(Duration::from_secs(20), "the loops run on", progress(2000)).await;
    stop.send_replace(true);
    let mut failures = Vec::new();
    for l in loops {
        failures.extend(l.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let ring = ring(3, cluster.port);
    let mut refetched_dead = 0;
    for path in &paths {
        let hits = origin.hits(path);
        if owner_of(&ring, path) == 2 {
            // Its next owner fetches it again (a node that times out on a busy peer may too).
            refetched_dead += usize::from(hits > 1);
        } else {
            assert_eq!(hits, 1, "{path} (a live node's) was refetched");
        }
    }
    assert!(
        refetched_dead > 0,
        "no key of the dead node was served by another node"
    );
    drop(processes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_added_by_reload_takes_a_quarter_of_the_keys_without_refetching_them() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..200).map(|i| format!("/grow/{i}")).collect();
    for path in &paths {
        counted(&origin, path);
    }
    let dir = common::scratch_dir("cluster-grow");
    let port = cluster_port(4);
    let admin_port = cluster_port(4);
    let write = |node: usize, nodes: usize| {
        let path = dir.join(format!("node{node}.toml"));
        std::fs::write(&path, node_config(node, nodes, port, admin_port, origin.addr)).unwrap();
        path
    };
    let mut nodes: Vec<Proxy> = (0..3)
        .map(|i| Proxy::start_file(&write(i, 3), node_addr(i, port)))
        .collect();
    let mut cluster = Cluster {
        _nodes: Vec::new(),
        port,
        admin_port,
    };
    for node in 0..3 {
        cluster.all_peers_healthy(node).await;
    }
    for path in &paths {
        assert_eq!(cluster.get(0, path).await.1, "v1");
    }
    nodes.push(Proxy::start_file(&write(3, 4), node_addr(3, port)));
    for node in 0..3 {
        write(node, 4);
        let answer = cluster.admin(node, "POST", "/reload", None).await;
        assert_eq!(answer["version"], 2, "{answer}");
    }
    for node in 0..4 {
        cluster.all_peers_healthy(node).await;
    }
    // The new node has nothing yet: every URL is served by its owner, the new node's own keys
    // by asking their previous owner.
    for path in &paths {
        assert_eq!(cluster.get(3, path).await.1, "v1", "{path}");
    }
    let refetched: Vec<&String> = paths.iter().filter(|p| origin.hits(p) > 1).collect();
    assert!(refetched.is_empty(), "refetched from the origin: {refetched:?}");
    let (before, after) = (ring(3, port), ring(4, port));
    let moved = paths
        .iter()
        .filter(|p| owner_of(&before, p) != owner_of(&after, p))
        .count();
    let share = moved as f64 / paths.len() as f64;
    assert!(
        (0.17..=0.33).contains(&share),
        "{moved} of {} keys moved",
        paths.len()
    );
    cluster._nodes = nodes;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_peer_does_not_hold_a_purge_and_applies_it_when_it_wakes() {
    let origin = Origin::start().await;
    let (cluster, processes) = start_processes("frozen", 3, &origin, "").await;
    let ring = ring(3, cluster.port);
    let path = (0..)
        .map(|i| format!("/frozen/{i}"))
        .find(|p| owner_of(&ring, p) == 2)
        .unwrap();
    counted(&origin, &path);
    for node in 0..3 {
        assert_eq!(cluster.get(node, &path).await.1, "v1");
    }
    processes[2].signal("STOP");
    let started = Instant::now();
    let body = format!(r#"{{"url": "http://{HOST}{path}"}}"#);
    let answer = cluster.admin(0, "POST", "/purge", Some(&body)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let peers = answer["peers"].as_array().unwrap();
    let frozen = peers.iter().find(|p| p["node"] == "edge-3").unwrap();
    assert_eq!(frozen["ok"], false, "{answer}");
    assert_eq!(peers.iter().find(|p| p["node"] == "edge-2").unwrap()["ok"], true);
    processes[2].signal("CONT");
    common::eventually_async(
        Duration::from_secs(10),
        "the woken peer serves the new body",
        || async { cluster.get(2, &path).await.1 != "v1" },
    )
    .await;
    let status = cluster.admin(0, "GET", "/status", None).await;
    assert!(
        status["cluster"]["purges"]["failed"].as_u64().unwrap() >= 1,
        "{status}"
    );
    drop(processes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_peer_leaves_the_ring_within_two_seconds_and_it_is_announced() {
    let origin = Origin::start().await;
    let receiver = Origin::start().await;
    receiver.route("/hook", |_, _| Reply::new(204, ""));
    let port = cluster_port(3);
    let admin_port = cluster_port(3);
    let webhook = format!(
        "[[webhook]]\nurl = \"http://{}/hook\"\nevents = [\"peer_health\"]\nsecret = \"0123456789abcdef\"\n",
        receiver.addr
    );
    let mut nodes: Vec<Proxy> = (0..3)
        .map(|i| {
            let text = node_config(i, 3, port, admin_port, origin.addr) + &webhook;
            Proxy::start_config(&text, node_addr(i, port))
        })
        .collect();
    let cluster = Cluster {
        _nodes: Vec::new(),
        port,
        admin_port,
    };
    cluster.all_peers_healthy(0).await;
    let stopped = Instant::now();
    drop(nodes.pop());
    common::eventually_async(
        Duration::from_secs(5),
        "node 1 sees edge-3 out of the ring",
        || async {
            let status = cluster.admin(0, "GET", "/status", None).await;
            let peers = status["cluster"]["peers"].as_array().cloned().unwrap_or_default();
            peers.iter().any(|p| p["id"] == "edge-3" && p["healthy"] == false)
        },
    )
    .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(2500),
        "{:?}",
        stopped.elapsed()
    );
    common::eventually(Duration::from_secs(5), "a peer_health event is delivered", || {
        receiver.seen("/hook").iter().any(|d| {
            let event: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
            event["type"] == "peer_health"
                && event["details"]["peer"] == "edge-3"
                && event["details"]["healthy"] == false
        })
    })
    .await;
    drop(nodes);
}
