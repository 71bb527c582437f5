//! Prometheus metrics, served as text by the admin API.
//!
//! Request counters and latency histograms are updated once per request, at logging time.
//! Gauges that describe state (cache size, origin health, webhook counters) are read when
//! `/metrics` is scraped, so they cost nothing on the request path. Application latency (the
//! whole request) and origin latency (time to the origin's response header) are separate
//! histograms, so operators see where time goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::status::NodeStatus;

/// Latency buckets in seconds, from cache-hit to slow-origin territory.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Cache outcome labels, in the order [`SiteMetrics`] keeps their counters.
const CACHE_LABELS: [&str; 10] = [
    "hit",
    "miss",
    "pass",
    "revalidate",
    "stale-while-revalidate",
    "stale-if-error",
    "vary-miss",
    "request",
    "bypass",
    "-",
];

/// Status classes, in counter order.
const STATUS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The metric handles of one site, resolved once so a request does no label lookups.
pub struct SiteMetrics {
    name: String,
    bytes: IntCounter,
    request_seconds: Histogram,
    origin_seconds: Histogram,
    requests: IntCounterVec,
    /// `requests` by cache label and status class, created on first use.
    by_outcome: [[OnceLock<IntCounter>; STATUS_LABELS.len()]; CACHE_LABELS.len()],
}

impl SiteMetrics {
    fn requests(&self, cache: &str, status: u16) -> &IntCounter {
        let outcome = CACHE_LABELS
            .iter()
            .position(|l| *l == cache)
            .unwrap_or(CACHE_LABELS.len() - 1);
        let class = status_class(status);
        self.by_outcome[outcome][class].get_or_init(|| {
            self.requests
                .with_label_values(&[&self.name, CACHE_LABELS[outcome], STATUS_LABELS[class]])
        })
    }
}

/// One request as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct RequestSample<'a> {
    /// Cache outcome label.
    pub cache: &'a str,
    /// Response status (0: none sent).
    pub status: u16,
    /// Body bytes sent.
    pub bytes: usize,
    /// Whole-request time in seconds.
    pub total_seconds: f64,
    /// Time to the origin's response header, when the origin was asked.
    pub origin_seconds: Option<f64>,
    /// Served from the cache.
    pub hit: bool,
    /// The cache was consulted.
    pub lookup: bool,
    /// Waited on another request fetching the same URL.
    pub coalesced: bool,
    /// The `[[site.route]]` rule that matched, by name.
    pub route: Option<&'a str>,
}

/// Node-wide running totals the dashboard's history samples: plain atomics next to the
/// Prometheus series, so a sample needs no gathering of every labelled series.
#[derive(Debug, Default)]
pub struct NodeTotals {
    requests: AtomicU64,
    server_errors: AtomicU64,
    bytes_from_cache: AtomicU64,
    bytes_from_origin: AtomicU64,
    /// Origin response times per [`LATENCY_BUCKETS`] bucket, the last one unbounded.
    origin_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

/// [`NodeTotals`] read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TotalsSnapshot {
    /// Requests answered, since start.
    pub requests: u64,
    /// Of them, answered with a 5xx.
    pub server_errors: u64,
    /// Body bytes sent from the cache (hits).
    pub bytes_from_cache: u64,
    /// Body bytes sent otherwise (misses, pass-through, local answers).
    pub bytes_from_origin: u64,
    /// Origin response times per bucket of [`TotalsSnapshot::LATENCY_BOUNDS`].
    pub origin_buckets: Vec<u64>,
}

impl TotalsSnapshot {
    /// Upper bounds (seconds) of the origin latency buckets; the last bucket has none.
    pub const LATENCY_BOUNDS: [f64; LATENCY_BUCKETS.len()] = LATENCY_BUCKETS;
}

impl NodeTotals {
    fn observe(&self, sample: &RequestSample) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if sample.status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let bytes = if sample.hit {
            &self.bytes_from_cache
        } else {
            &self.bytes_from_origin
        };
        bytes.fetch_add(sample.bytes as u64, Ordering::Relaxed);
        if let Some(seconds) = sample.origin_seconds {
            let bucket = LATENCY_BUCKETS
                .iter()
                .position(|bound| seconds <= *bound)
                .unwrap_or(LATENCY_BUCKETS.len());
            self.origin_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The totals now.
    pub fn snapshot(&self) -> TotalsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TotalsSnapshot {
            requests: load(&self.requests),
            server_errors: load(&self.server_errors),
            bytes_from_cache: load(&self.bytes_from_cache),
            bytes_from_origin: load(&self.bytes_from_origin),
            origin_buckets: self.origin_buckets.iter().map(load).collect(),
        }
    }
}

/// Client-connection events, counted where they happen and read when `/metrics` is scraped.
#[derive(Debug, Default)]
pub struct ClientCounters {
    open: AtomicU64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    handshake_timeouts: AtomicU64,
    reset_floods: AtomicU64,
    client_errors: AtomicU64,
}

impl ClientCounters {
    /// A connection refused because a connection limit was reached.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused so far.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A connection closed by a deadline: `header`, `idle` or `handshake`.
    pub fn timed_out(&self, kind: &str) {
        let counter = match kind {
            "header" => &self.header_timeouts,
            "idle" => &self.idle_timeouts,
            _ => &self.handshake_timeouts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP/2 connection closed for cancelling most of its streams.
    pub fn reset_flood(&self) {
        self.reset_floods.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that failed because of its client (reset, closed connection, bad request).
    pub fn client_error(&self) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the number of client connections open now.
    pub fn set_open(&self, open: usize) {
        self.open.store(open as u64, Ordering::Relaxed);
    }
}

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    bytes: IntCounterVec,
    request_seconds: HistogramVec,
    origin_seconds: HistogramVec,
    coalesced: IntCounter,
    route_requests: IntCounterVec,
    purges: IntCounterVec,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    cache_evictions: IntGauge,
    hit_ratio: Gauge,
    origin_up: GaugeVec,
    webhooks: GaugeVec,
    config_version: IntGauge,
    certificate_expiry: GaugeVec,
    access_log_dropped: IntGauge,
    client_gauges: GaugeVec,
    cluster_peer_up: GaugeVec,
    cluster_events: GaugeVec,
    /// Client-connection events, counted by the listeners.
    pub clients: std::sync::Arc<ClientCounters>,
    /// Node-wide totals for the dashboard's history.
    pub totals: NodeTotals,
    hits: AtomicU64,
    lookups: AtomicU64,
    /// Requests that matched no site.
    unrouted: std::sync::OnceLock<SiteMetrics>,
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    #[allow(
        clippy::expect_used,
        reason = "metric names, help texts and labels are constants: a failure is a bug every test hits"
    )]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let histogram_vec = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, &["site"]).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let int_gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let coalesced = IntCounter::new(
            "edgecache_coalesced_requests_total",
            "Requests that waited for another request fetching the same URL",
        )
        .expect("valid metric");
        registry
            .register(Box::new(coalesced.clone()))
            .expect("unique metric");
        let hit_ratio = Gauge::new(
            "edgecache_cache_hit_ratio",
            "Share of cache lookups served from the cache",
        )
        .expect("valid metric");
        registry
            .register(Box::new(hit_ratio.clone()))
            .expect("unique metric");
        Metrics {
            requests: counter_vec(
                "edgecache_requests_total",
                "Requests by site, cache outcome and status class",
                &["site", "cache", "status"],
            ),
            bytes: counter_vec(
                "edgecache_response_bytes_total",
                "Response body bytes sent",
                &["site"],
            ),
            request_seconds: histogram_vec(
                "edgecache_request_duration_seconds",
                "Time from request to the end of the response",
            ),
            origin_seconds: histogram_vec(
                "edgecache_origin_duration_seconds",
                "Time from choosing an origin to its response header",
            ),
            route_requests: counter_vec(
                "edgecache_route_requests_total",
                "Requests by site and the [[site.route]] rule that matched them",
                &["site", "route"],
            ),
            purges: counter_vec(
                "edgecache_purged_entries_total",
                "Entries purged",
                &["kind", "mode"],
            ),
            cache_entries: int_gauge("edgecache_cache_entries", "Stored entries"),
            cache_bytes: int_gauge("edgecache_cache_bytes", "Bytes charged against max_memory"),
            cache_evictions: int_gauge(
                "edgecache_cache_evictions_total",
                "Entries evicted to stay within max_memory",
            ),
            origin_up: gauge_vec(
                "edgecache_origin_up",
                "1 when the origin is usable (health checks, circuit breaker)",
                &["site", "origin"],
            ),
            webhooks: gauge_vec(
                "edgecache_webhook_deliveries_total",
                "Webhook deliveries by result",
                &["result"],
            ),
            config_version: int_gauge(
                "edgecache_config_version",
                "Version of the running config (1 at start)",
            ),
            certificate_expiry: gauge_vec(
                "edgecache_certificate_expiry_seconds",
                "Seconds until the site's TLS certificate expires (negative once expired)",
                &["site"],
            ),
            access_log_dropped: int_gauge(
                "edgecache_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind",
            ),
            client_gauges: gauge_vec(
                "edgecache_client_events",
                "Client connections: open now; refused at a limit, closed by a header, idle or handshake deadline, closed for an HTTP/2 reset flood, requests failed by their client, and client-caused error lines kept out of the log, since start",
                &["event"],
            ),
            cluster_peer_up: gauge_vec(
                "edgecache_cluster_peer_up",
                "Whether each cluster peer answers (1) or is out of the ring (0)",
                &["peer"],
            ),
            cluster_events: gauge_vec(
                "edgecache_cluster_events",
                "Cluster traffic since start: requests forwarded to owners, served for peers, failed at a peer; purges sent to peers, failed (retried), dropped; and the slowest purge fan-out in seconds",
                &["event"],
            ),
            clients: std::sync::Arc::default(),
            totals: NodeTotals::default(),
            coalesced,
            hit_ratio,
            registry,
            hits: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            unrouted: std::sync::OnceLock::new(),
        }
    }

    /// The handles of site `name` (its first host).
    pub fn site(&self, name: &str) -> SiteMetrics {
        SiteMetrics {
            name: name.to_string(),
            bytes: self.bytes.with_label_values(&[name]),
            request_seconds: self.request_seconds.with_label_values(&[name]),
            origin_seconds: self.origin_seconds.with_label_values(&[name]),
            requests: self.requests.clone(),
            by_outcome: Default::default(),
        }
    }

    /// Counts one finished request of `site` (`None`: it matched no site).
    pub fn observe(&self, site: Option<&SiteMetrics>, sample: &RequestSample) {
        // Series for requests that matched no site appear with the first such request.
        let site = site.unwrap_or_else(|| self.unrouted.get_or_init(|| self.site("-")));
        site.requests(sample.cache, sample.status).inc();
        self.totals.observe(sample);
        if let Some(route) = sample.route {
            self.route_requests.with_label_values(&[&site.name, route]).inc();
        }
        site.bytes.inc_by(sample.bytes as u64);
        site.request_seconds.observe(sample.total_seconds);
        if let Some(origin) = sample.origin_seconds {
            site.origin_seconds.observe(origin);
        }
        if sample.coalesced {
            self.coalesced.inc();
        }
        if sample.lookup {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            if sample.hit {
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts entries touched by a purge (`kind`: url, prefix, host, tag; `soft` or hard).
    pub fn purged(&self, kind: &str, soft: bool, entries: usize) {
        let mode = if soft { "soft" } else { "hard" };
        self.purges
            .with_label_values(&[kind, mode])
            .inc_by(entries as u64);
    }

    /// Cache hits and lookups since start.
    pub fn hits_and_lookups(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.lookups.load(Ordering::Relaxed),
        )
    }

    fn render_clients(&self) {
        let c = &self.clients;
        let events = [
            ("open", &c.open),
            ("refused", &c.refused),
            ("header_timeout", &c.header_timeouts),
            ("idle_timeout", &c.idle_timeouts),
            ("handshake_timeout", &c.handshake_timeouts),
            ("h2_reset_flood", &c.reset_floods),
            ("client_error", &c.client_errors),
        ];
        for (event, value) in events {
            let value = value.load(Ordering::Relaxed) as f64;
            self.client_gauges.with_label_values(&[event]).set(value);
        }
        let suppressed = crate::logging::suppressed_client_errors() as f64;
        self.client_gauges
            .with_label_values(&["log_suppressed"])
            .set(suppressed);
    }

    fn render_cluster(&self, status: &NodeStatus) {
        self.cluster_peer_up.reset();
        let Some(cluster) = &status.cluster else { return };
        for peer in &cluster.peers {
            let up = if peer.healthy { 1.0 } else { 0.0 };
            self.cluster_peer_up.with_label_values(&[&peer.id]).set(up);
        }
        for (event, value) in [
            ("forwarded", cluster.forwarded as f64),
            ("served_for_peers", cluster.served_for_peers as f64),
            ("peer_failures", cluster.peer_failures as f64),
            ("purges_sent", cluster.purges.sent as f64),
            ("purges_failed", cluster.purges.failed as f64),
            ("purges_dropped", cluster.purges.dropped as f64),
            ("purge_fanout_max_seconds", cluster.purge_fanout_max_ms / 1000.0),
        ] {
            self.cluster_events.with_label_values(&[event]).set(value);
        }
    }

    /// The Prometheus text exposition of every metric, the state gauges set from `status`.
    pub fn render(&self, status: &NodeStatus) -> String {
        let cache = &status.cache;
        self.cache_entries.set(cache.entries as i64);
        self.cache_bytes.set(cache.bytes as i64);
        self.cache_evictions.set(cache.evictions as i64);
        self.render_clients();
        self.hit_ratio.set(cache.hit_ratio);
        self.origin_up.reset();
        self.certificate_expiry.reset();
        let now = std::time::SystemTime::now();
        for site in &status.sites {
            if let Some(not_after) = site.certificate_not_after {
                let left = match not_after.duration_since(now) {
                    Ok(left) => left.as_secs_f64(),
                    Err(past) => -past.duration().as_secs_f64(),
                };
                self.certificate_expiry.with_label_values(&[&site.name]).set(left);
            }
            for origin in &site.origins {
                let up = if origin.healthy { 1.0 } else { 0.0 };
                self.origin_up
                    .with_label_values(&[&site.name, &origin.addr])
                    .set(up);
            }
        }
        let webhooks = &status.webhooks;
        for (result, count) in [
            ("delivered", webhooks.delivered),
            ("failed", webhooks.failed),
            ("retried", webhooks.retried),
            ("dropped", webhooks.dropped),
        ] {
            self.webhooks.with_label_values(&[result]).set(count as f64);
        }
        self.config_version.set(status.config.version as i64);
        self.render_cluster(status);
        self.access_log_dropped
            .set(crate::access_log::DROPPED_LINES.load(Ordering::Relaxed) as i64);
        let mut text = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8(text).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Index of the status class in [`STATUS_LABELS`].
fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => STATUS_LABELS.len() - 1,
    }
}
