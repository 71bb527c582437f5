//! A snapshot of the node: what `/status` shows as JSON and `/metrics` exposes as gauges, taken
//! once per admin request so both read the same state. A leaf module of plain data; the admin
//! API takes the snapshot from the running config, the cache and the counters.

use std::time::SystemTime;

use serde::Serialize;

/// The node at one moment.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// This node's name (`server.node_name`).
    pub node: String,
    /// The running edgecache version.
    pub version: &'static str,
    /// Seconds since the process started serving.
    pub uptime_seconds: f64,
    /// The running config.
    pub config: ConfigStatus,
    /// Requests and bytes answered since start.
    pub requests: RequestTotals,
    /// The cache's size and hit counts.
    pub cache: CacheStatus,
    /// Each site's origins and certificate.
    pub sites: Vec<SiteStatus>,
    /// Webhook deliveries since start.
    pub webhooks: WebhookCounts,
    /// The cluster, when this node is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// This node's view of its cluster.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// This node's id.
    pub node: String,
    /// A hash of the peer ids and weights: every node should show the same.
    pub ring_fingerprint: String,
    /// Every node, this one included.
    pub peers: Vec<PeerStatus>,
    /// Requests this node forwarded to an owner, since start.
    pub forwarded: u64,
    /// Requests this node served for peers, since start.
    pub served_for_peers: u64,
    /// Forwarded requests that failed at their peer, since start.
    pub peer_failures: u64,
    /// Purge deliveries to peers acknowledged, failed (retried) and given up, since start.
    pub purges: PurgeDeliveries,
    /// The slowest purge fan-out so far, in milliseconds.
    pub purge_fanout_max_ms: f64,
}

/// One node of the cluster.
#[derive(Debug, Serialize)]
pub struct PeerStatus {
    /// Its id.
    pub id: String,
    /// Its traffic listener.
    pub addr: String,
    /// Its share of the keys, relative to the others.
    pub weight: u32,
    /// Answering (this node always is).
    pub healthy: bool,
}

/// Purge deliveries to peers.
#[derive(Debug, Serialize)]
pub struct PurgeDeliveries {
    /// Acknowledged.
    pub sent: u64,
    /// Not acknowledged at first (then retried).
    pub failed: u64,
    /// Given up after the last retry, or dropped from a full queue.
    pub dropped: u64,
}

/// Which config runs.
#[derive(Debug, Serialize)]
pub struct ConfigStatus {
    /// 1 at startup, +1 per applied reload.
    pub version: u64,
    /// When it was applied (RFC 3339).
    pub loaded_at: String,
}

/// Requests answered since start, all sites together.
#[derive(Debug, Serialize)]
pub struct RequestTotals {
    /// Requests answered.
    pub total: u64,
    /// Of them, answered with a 5xx.
    pub server_errors: u64,
    /// Body bytes sent from the cache.
    pub bytes_from_cache: u64,
    /// Body bytes sent from origins (misses, pass-through) or made here.
    pub bytes_from_origin: u64,
}

/// The cache's contents and hit counts.
#[derive(Debug, Serialize)]
pub struct CacheStatus {
    /// Entries stored.
    pub entries: u64,
    /// Bytes stored (as weighed against `max_memory`).
    pub bytes: u64,
    /// `max_memory`: the most bytes it holds.
    pub max_bytes: u64,
    /// Entries evicted under memory pressure since start.
    pub evictions: u64,
    /// Lookups that were hits, since start.
    pub hits: u64,
    /// Lookups since start.
    pub lookups: u64,
    /// `hits / lookups` (0 before the first lookup).
    pub hit_ratio: f64,
}

impl CacheStatus {
    /// The hit ratio of `hits` out of `lookups`.
    pub fn ratio(hits: u64, lookups: u64) -> f64 {
        match lookups {
            0 => 0.0,
            _ => hits as f64 / lookups as f64,
        }
    }
}

/// One site.
#[derive(Debug, Serialize)]
pub struct SiteStatus {
    /// The name metrics label it with: its first host, or `default`.
    #[serde(skip)]
    pub name: String,
    /// Host names served.
    pub hosts: Vec<String>,
    /// The default site (serves unknown hosts).
    pub default: bool,
    /// Its origins and their health.
    pub origins: Vec<OriginStatus>,
    /// When its certificate expires (RFC 3339), if it has one.
    pub certificate_expires: Option<String>,
    /// The same, as a time.
    #[serde(skip)]
    pub certificate_not_after: Option<SystemTime>,
}

/// One origin.
#[derive(Debug, Serialize)]
pub struct OriginStatus {
    /// `host:port`.
    pub addr: String,
    /// The `[[site.route]]` rule whose own pool it is in (absent: the site's pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// A backup origin.
    pub backup: bool,
    /// Usable now.
    pub healthy: bool,
    /// When its health last changed (RFC 3339; `None`: not since the node started).
    pub health_since: Option<String>,
    /// Requests it failed since the config was applied.
    pub failures: u64,
    /// When it last failed one (RFC 3339).
    pub last_failure: Option<String>,
}

/// Webhook deliveries since start.
#[derive(Debug, Serialize)]
pub struct WebhookCounts {
    /// Delivered (2xx).
    pub delivered: u64,
    /// Given up after the last retry.
    pub failed: u64,
    /// Attempts retried.
    pub retried: u64,
    /// Dropped because the queue was full.
    pub dropped: u64,
}
