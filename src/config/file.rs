//! The config file as written: serde structs mirroring the TOML, with defaults and no logic.
//!
//! Every struct denies unknown fields so a misspelt key is an error rather than a silent default.
//! Values that can be checked in isolation (addresses, sizes, durations) are checked while
//! parsing, so the error points at the line of the bad value.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::units::{ByteSize, HumanDuration};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listeners and process settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Cache sizing and defaults.
    #[serde(default)]
    pub cache: CacheSection,
    /// What is compressed and how hard.
    #[serde(default)]
    pub compression: CompressionSection,
    /// Virtual hosts, each with its origins.
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteSection>,
    /// Starts the built-in sample origin (used by the default config and the quick start).
    pub demo: Option<DemoSection>,
    /// The admin API (purge, status, metrics, reload); off without this section.
    pub admin: Option<AdminSection>,
    /// Endpoints that receive events.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookSection>,
    /// Several nodes sharing one cache space; off without this section.
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's id; must be one of the peers.
    pub node: String,
    /// The key signing every request between peers (at least 16 characters).
    pub secret: Option<String>,
    /// Environment variable holding the secret instead.
    pub secret_env: Option<String>,
    /// Every node of the cluster, this one included: identical on every node.
    pub peers: Vec<PeerSection>,
    /// Longest a node keeps its own copy of a response fetched through its owner.
    #[serde(default = "peer_copy_ttl")]
    pub peer_copy_ttl: HumanDuration,
    /// Connect timeout to a peer.
    #[serde(default = "peer_connect_timeout")]
    pub peer_connect_timeout: HumanDuration,
    /// Longest wait for a peer's response header (and between reads of its body).
    #[serde(default = "peer_timeout")]
    pub peer_timeout: HumanDuration,
}

/// One `peers` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The node's id, the same in every node's config.
    pub id: String,
    /// Its plain-HTTP traffic listener, `host:port`.
    pub addr: String,
    /// Its share of the keys, relative to the others.
    #[serde(default = "peer_weight")]
    pub weight: u32,
}

fn peer_weight() -> u32 {
    1
}

fn peer_copy_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn peer_connect_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(500))
}

fn peer_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Where the admin API listens (keep it on loopback or a private network).
    #[serde(default = "admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token every request must carry.
    pub token: Option<String>,
    /// Environment variable holding the token instead.
    pub token_env: Option<String>,
}

fn admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// One `[[webhook]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// Event types sent to it (`["*"]`: all).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Key of the `HMAC-SHA256` signature of each body.
    pub secret: String,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Plain HTTP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// PEM file of CA certificates trusted for TLS to origins (default: the system's).
    pub origin_ca_file: Option<std::path::PathBuf>,
    /// Idle connections kept open to origins, over all sites.
    pub origin_pool_size: usize,
    /// Client addresses or networks (`"10.0.0.0/8"`, `"::1"`) allowed to send `PURGE`.
    pub purge_allow: Vec<String>,
    /// HTTPS listen addresses (certificates come from the sites).
    pub listen_tls: Vec<SocketAddr>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Accept cleartext HTTP/2 with prior knowledge on the plain listeners.
    pub h2c: bool,
    /// Pseudonym of this proxy in `Via` headers (the machine name is never used).
    pub via: String,
    /// On SIGTERM (or SIGQUIT during an upgrade) the listeners close at once; in-flight requests
    /// then get this long to finish before the process exits (the wait is not cut short).
    pub grace_period: HumanDuration,
    /// After the grace period, how long background work (compression on blocking threads) may
    /// take to stop.
    pub graceful_shutdown_timeout: HumanDuration,
    /// Unix socket used to hand listeners to a new process during an upgrade (default: one
    /// per config file, see the resolve step).
    pub upgrade_sock: Option<String>,
    /// Where the pid is written when running as a daemon (default: one per config file).
    pub pid_file: Option<String>,
    /// Write one access-log line per request.
    pub access_log: bool,
    /// `json` or `combined`.
    pub access_log_format: AccessLogFormat,
    /// `"stdout"`, `"stderr"` or a file path (relative to the config file), appended to.
    pub access_log_path: String,
    /// Add a `Server-Timing` header (cache outcome, origin time, total time) to responses.
    pub server_timing: bool,
    /// Name of this node in webhook events and the status page (default: the host name).
    pub node_name: Option<String>,
    /// Time allowed for a client's request header to arrive in full.
    pub client_header_timeout: HumanDuration,
    /// Idle time allowed between a client's requests (HTTP/1.1 keep-alive, HTTP/2).
    pub keepalive_timeout: HumanDuration,
    /// Time allowed for a client's TLS ClientHello or HTTP/2 preface.
    pub handshake_timeout: HumanDuration,
    /// Time a write to a client may wait before the client is dropped.
    pub send_timeout: HumanDuration,
    /// Client connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Client connections open at once from one address.
    pub max_connections_per_ip: usize,
    /// Requests served on one client connection before it is closed.
    pub max_requests_per_connection: u32,
}

/// Access-log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// The Apache/nginx combined format, followed by cache and timing fields.
    Combined,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            listen_tls: Vec::new(),
            origin_ca_file: None,
            origin_pool_size: 128,
            purge_allow: Vec::new(),
            threads: 2,
            h2c: false,
            via: "edgecache".into(),
            grace_period: HumanDuration(Duration::from_secs(5)),
            graceful_shutdown_timeout: HumanDuration(Duration::from_secs(5)),
            upgrade_sock: None,
            pid_file: None,
            access_log: true,
            access_log_format: AccessLogFormat::Json,
            access_log_path: "stdout".into(),
            server_timing: false,
            node_name: None,
            client_header_timeout: HumanDuration(Duration::from_secs(60)),
            keepalive_timeout: HumanDuration(Duration::from_secs(75)),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_requests_per_connection: 1_000,
        }
    }
}

/// `[cache]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Hard bound on cached bytes (bodies plus headers).
    pub max_memory: ByteSize,
    /// Larger responses are streamed through and not stored.
    pub max_object_size: ByteSize,
    /// How long concurrent misses for one key wait for the request already fetching it.
    pub lock_timeout: HumanDuration,
    /// Stale-while-revalidate window used when the origin gives none.
    pub stale_while_revalidate: HumanDuration,
    /// Stale-if-error window used when the origin gives none: how long past its freshness a
    /// stored response is served when its origin fails (`0s`: never without the directive).
    pub stale_if_error: HumanDuration,
    /// Fraction of the time since `Last-Modified` used as heuristic freshness.
    pub heuristic_fraction: f64,
    /// Upper bound of heuristic freshness.
    pub heuristic_max: HumanDuration,
    /// How long a stale response with a validator is kept for revalidation past its windows.
    pub keep_stale: HumanDuration,
    /// Name of this cache in the `Cache-Status` response header.
    pub status_name: String,
}

/// How long a stale response is served when its origin fails and the response names no
/// window of its own (nginx `proxy_cache_use_stale error timeout`, Varnish grace).
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(300);

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            max_memory: ByteSize(256 << 20),
            max_object_size: ByteSize(16 << 20),
            lock_timeout: HumanDuration(Duration::from_secs(5)),
            stale_while_revalidate: HumanDuration(Duration::ZERO),
            stale_if_error: HumanDuration(DEFAULT_STALE_IF_ERROR),
            heuristic_fraction: 0.1,
            heuristic_max: HumanDuration(Duration::from_secs(86_400)),
            keep_stale: HumanDuration(Duration::from_secs(600)),
            status_name: "edgecache".into(),
        }
    }
}

/// `[compression]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSection {
    /// Media types compressed: exact (`application/json`) or with one `*` (`text/*`).
    pub types: Vec<String>,
    /// Bodies smaller than this are sent as they are.
    pub min_size: ByteSize,
    /// gzip level (1-9) of stored responses.
    pub gzip_level: u32,
    /// Brotli quality (0-11) of stored responses when first stored.
    pub brotli_level: u32,
    /// Brotli quality that responses served as brotli are recompressed to in the background
    /// (0: never).
    pub brotli_background_level: u32,
    /// gzip level for responses compressed as they stream through (misses, uncacheable).
    pub stream_gzip_level: u32,
    /// Brotli quality for responses compressed as they stream through.
    pub stream_brotli_level: u32,
}

impl Default for CompressionSection {
    fn default() -> Self {
        let types = [
            "text/*",
            "application/json",
            "application/*+json",
            "application/javascript",
            "application/x-javascript",
            "application/ecmascript",
            "application/xml",
            "application/*+xml",
            "image/svg+xml",
            "image/x-icon",
            "image/vnd.microsoft.icon",
            "application/wasm",
            "font/ttf",
            "font/otf",
            "font/collection",
            "application/vnd.ms-fontobject",
            "application/x-font-ttf",
        ];
        CompressionSection {
            types: types.iter().map(|t| t.to_string()).collect(),
            min_size: ByteSize(256),
            gzip_level: 6,
            brotli_level: 5,
            brotli_background_level: 11,
            stream_gzip_level: 1,
            stream_brotli_level: 2,
        }
    }
}

/// One `[[site]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Host names served by this site (case-insensitive, port ignored); may be left out for
    /// the default site.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Origin servers: `"host:port"` or `{ addr = "host:port", weight = 2, backup = true }`.
    pub origins: Vec<OriginSpec>,
    /// How requests are spread over the origins.
    #[serde(default)]
    pub lb: LbPolicy,
    /// How many other origins an idempotent request is retried on after a connection failure.
    #[serde(default = "one")]
    pub retries: usize,
    /// Consecutive failures (connection errors, timeouts, 5xx) that eject an origin (0: never).
    #[serde(default = "three")]
    pub eject_after_failures: usize,
    /// How long an ejected origin is left alone before one trial request.
    #[serde(default = "ten_seconds")]
    pub eject_for: HumanDuration,
    /// Active health checks.
    pub health_check: Option<HealthCheckSection>,
    /// Requests whose host matches no site go here.
    #[serde(default)]
    pub default: bool,
    /// Cache this site's responses (set false to proxy only).
    #[serde(default = "yes")]
    pub cache: bool,
    /// Compress this site's responses for clients that accept gzip or brotli.
    #[serde(default = "yes")]
    pub compress: bool,
    /// Connect to origins with TLS.
    #[serde(default)]
    pub origin_tls: bool,
    /// SNI and certificate name for TLS to origins; defaults to the origin's host.
    pub origin_sni: Option<String>,
    /// Verify origin certificates (only turn off for testing).
    #[serde(default = "yes")]
    pub origin_verify_cert: bool,
    /// Offer HTTP/2 to TLS origins (ALPN), falling back to HTTP/1.1.
    #[serde(default)]
    pub origin_http2: bool,
    /// How long an idle pooled connection to an origin is kept.
    #[serde(default = "one_minute")]
    pub origin_idle_timeout: HumanDuration,
    /// Timeout to establish a connection to an origin.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Timeout for each read from an origin, including the wait for the first response byte.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: HumanDuration,
    /// Timeout for each write to an origin.
    #[serde(default = "default_read_timeout")]
    pub write_timeout: HumanDuration,
    /// Bound on a whole origin response, from choosing the origin to its last byte (none by default).
    pub total_timeout: Option<HumanDuration>,
    /// PEM certificate chain (leaf first) served for this site's hosts on TLS listeners.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// Answer plain HTTP requests with a 308 redirect to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// `Strict-Transport-Security` value added to HTTPS responses.
    pub hsts: Option<String>,
    /// Request headers removed before the request is looked up or forwarded (for example
    /// `X-Forwarded-Host` when the origin trusts it but the cache key does not hold it).
    #[serde(default)]
    pub strip_request_headers: Vec<String>,
    /// Remove `CDN-Cache-Control` from responses to clients (it is forwarded by default, for
    /// caches further down; RFC 9213).
    #[serde(default)]
    pub strip_cdn_cache_control: bool,
    /// Per-path rules, first match wins (`[[site.route]]`).
    #[serde(default)]
    pub route: Vec<RouteSection>,
}

/// One `[[site.route]]`: which requests it matches and what it changes for them. Every key
/// but the matchers is optional; what a route leaves out, the site decides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Shown in metrics and the access log (default: the route's index).
    pub name: Option<String>,
    /// Matches paths starting with this.
    pub path_prefix: Option<String>,
    /// Matches this path exactly.
    pub path: Option<String>,
    /// Matches paths this regular expression finds a match in.
    pub path_regex: Option<String>,
    /// Matches only these methods.
    pub methods: Option<Vec<String>>,
    /// Its own origin pool (else the site's).
    pub origins: Option<Vec<OriginSpec>>,
    /// How requests are spread over its origins.
    pub lb: Option<LbPolicy>,
    /// Retries on other origins of its pool.
    pub retries: Option<usize>,
    /// Active health checks of its pool.
    pub health_check: Option<HealthCheckSection>,
    /// Timeout to connect to its origins.
    pub connect_timeout: Option<HumanDuration>,
    /// Timeout of each read from its origins.
    pub read_timeout: Option<HumanDuration>,
    /// Timeout of each write to its origins.
    pub write_timeout: Option<HumanDuration>,
    /// `false`: never looked up in nor stored in the cache.
    pub cache: Option<bool>,
    /// Freshness of responses that carry none (no `Cache-Control` freshness, no `Expires`).
    pub default_ttl: Option<HumanDuration>,
    /// Freshness of every storable response, whatever the origin says.
    pub override_ttl: Option<HumanDuration>,
    /// What of the query string the cache key holds.
    pub query: Option<QuerySection>,
    /// Request headers whose values are part of the cache key.
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Cookies whose values are part of the cache key.
    #[serde(default)]
    pub key_cookies: Vec<String>,
    /// Removed from the start of the path before the request goes to the origin.
    pub strip_prefix: Option<String>,
    /// Edits of the request sent to the origin.
    pub request_headers: Option<HeaderEditsSection>,
    /// Edits of the response sent to the client.
    pub response_headers: Option<HeaderEditsSection>,
    /// Requests allowed per client and period; beyond: 429.
    pub rate_limit: Option<RateLimitSection>,
    /// Answer with a redirect instead of proxying.
    pub redirect: Option<RedirectSection>,
}

/// `query = "keep" | "sort" | "ignore"` or `{ keep = [...] }` / `{ drop = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum QuerySection {
    /// `keep`, `sort` or `ignore`.
    Mode(String),
    /// Only these parameters (`*` wildcards), or all but these.
    Lists {
        /// Parameters kept; the others are left out of the key.
        keep: Option<Vec<String>>,
        /// Parameters left out of the key.
        drop: Option<Vec<String>>,
    },
}

/// `{ set = { "Name" = "value" }, remove = ["Name"] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsSection {
    /// Headers set (replacing any value).
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `{ requests = 100, per = "1s", key = "client_ip" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period.
    pub per: HumanDuration,
    /// `client_ip` (default), or `header:<name>` to count by a header a trusted front sets.
    #[serde(default = "client_ip")]
    pub key: String,
}

fn client_ip() -> String {
    "client_ip".into()
}

/// `{ to = "https://example.com/new", status = 301 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSection {
    /// The `Location`.
    pub to: String,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default = "moved_permanently")]
    pub status: u16,
}

fn moved_permanently() -> u16 {
    301
}

/// `[demo]`: a sample origin inside the binary, so the proxy can be tried with nothing else running.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSection {
    /// Where the sample origin listens.
    pub listen: SocketAddr,
}

/// One origin: a plain address, or a table with a weight and a backup flag.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "an origin: \"host:port\" or { addr = \"host:port\", weight = 1, backup = false }"
)]
pub enum OriginSpec {
    /// `"host:port"`, weight 1, primary.
    Addr(String),
    /// `{ addr, weight, backup }`.
    Table(OriginTable),
}

/// The table form of an origin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginTable {
    /// `host:port`.
    pub addr: String,
    /// Relative share of requests (round robin and random).
    #[serde(default = "one")]
    pub weight: usize,
    /// Used only when no primary origin is usable.
    #[serde(default)]
    pub backup: bool,
}

/// Origin selection policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Ketama consistent hashing on the URL: each origin keeps a stable share of URLs.
    Consistent,
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// GET a path and expect a status.
    #[default]
    Http,
    /// Open a TCP (or TLS) connection.
    Tcp,
}

/// `[site.health_check]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `http` or `tcp`.
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// Path requested by HTTP checks.
    #[serde(default = "root_path")]
    pub path: String,
    /// `Host` sent by HTTP checks (default: the site's first host).
    pub host: Option<String>,
    /// Time between checks.
    #[serde(default = "two_seconds")]
    pub interval: HumanDuration,
    /// Time allowed for one check.
    #[serde(default = "one_second")]
    pub timeout: HumanDuration,
    /// Status an HTTP check expects.
    #[serde(default = "status_ok")]
    pub expected_status: u16,
    /// Consecutive successes that mark an origin healthy.
    #[serde(default = "one")]
    pub healthy_after: usize,
    /// Consecutive failures that mark an origin unhealthy.
    #[serde(default = "one")]
    pub unhealthy_after: usize,
}

fn one() -> usize {
    1
}

fn three() -> usize {
    3
}

fn root_path() -> String {
    "/".into()
}

fn status_ok() -> u16 {
    200
}

fn one_second() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn two_seconds() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn one_minute() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn ten_seconds() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn yes() -> bool {
    true
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
