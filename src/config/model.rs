//! The frozen config: what the rest of the node reads, every value checked and every name
//! resolved.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::file::{AccessLogFormat, CompressionSection, HealthCheckKind, LbPolicy};

/// The frozen runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from (for messages).
    pub source: PathBuf,
    /// Listeners and process settings.
    pub server: ServerSettings,
    /// Cache sizing and defaults.
    pub cache: CacheSettings,
    /// What is compressed and how hard.
    pub compression: CompressionSettings,
    /// The sites, in file order.
    pub sites: Vec<SiteSettings>,
    /// Address of the built-in sample origin, when enabled.
    pub demo_listen: Option<SocketAddr>,
    /// The admin API, when enabled.
    pub admin: Option<AdminSettings>,
    /// Event receivers.
    pub webhooks: Vec<WebhookSettings>,
    /// The cluster this node belongs to, if any.
    pub cluster: Option<ClusterSettings>,
}

/// Validated `[cluster]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id (one of `peers`).
    pub node: String,
    /// The key signing requests between peers (never logged: `Debug` hides it).
    pub secret: String,
    /// Every node, this one included, in config order.
    pub peers: Vec<PeerSettings>,
    /// Longest a node keeps its own copy of a response fetched through its owner.
    pub peer_copy_ttl: Duration,
    /// Connect timeout to a peer.
    pub peer_connect_timeout: Duration,
    /// Longest wait for a peer's response header.
    pub peer_timeout: Duration,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("node", &self.node)
            .field("secret", &"<hidden>")
            .field("peers", &self.peers)
            .field("peer_copy_ttl", &self.peer_copy_ttl)
            .finish_non_exhaustive()
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// Its id, the same on every node.
    pub id: String,
    /// Its plain-HTTP traffic listener.
    pub addr: SocketAddr,
    /// Its share of the keys, relative to the others.
    pub weight: u32,
}

/// Validated `[admin]`.
#[derive(Clone)]
pub struct AdminSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The bearer token (never logged: `Debug` hides it).
    pub token: String,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &"<hidden>")
            .finish()
    }
}

/// Validated `[[webhook]]`.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Where events are POSTed.
    pub url: http::Uri,
    /// Event types sent (`*`: all).
    pub events: Vec<String>,
    /// HMAC key (never logged).
    pub secret: String,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("events", &self.events)
            .finish()
    }
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Plain HTTP listen addresses (at least one).
    pub listen: Vec<SocketAddr>,
    /// HTTPS listen addresses.
    pub listen_tls: Vec<SocketAddr>,
    /// CA certificates trusted for TLS to origins (None: the system's).
    pub origin_ca_file: Option<PathBuf>,
    /// Idle connections kept open to origins.
    pub origin_pool_size: usize,
    /// Networks whose clients may send `PURGE` (empty: nobody).
    pub purge_allow: Vec<ipnet::IpNet>,
    /// Worker threads of the proxy service (at least one).
    pub threads: usize,
    /// Accept cleartext HTTP/2 (prior knowledge) on the plain listeners.
    pub h2c: bool,
    /// Pseudonym used in `Via`.
    pub via: String,
    /// Wait before a graceful shutdown stops accepting.
    pub grace_period: Duration,
    /// Wait for in-flight requests during a graceful shutdown.
    pub graceful_shutdown_timeout: Duration,
    /// Socket used for zero-downtime upgrades.
    pub upgrade_sock: String,
    /// Pid file when daemonized.
    pub pid_file: String,
    /// Whether to write access-log lines.
    pub access_log: bool,
    /// Their format.
    pub access_log_format: AccessLogFormat,
    /// `stdout`, `stderr` or a file.
    pub access_log_path: PathBuf,
    /// Add `Server-Timing` to responses.
    pub server_timing: bool,
    /// This node's name in events and status.
    pub node_name: String,
    /// Bounds on client connections.
    pub clients: ClientLimits,
}

/// The bounds on client connections (`[server]`; enforced by `proxy::connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Time allowed for a request header to arrive in full.
    pub header_timeout: Duration,
    /// Idle time allowed between requests (HTTP/1.1 keep-alive, HTTP/2 without streams).
    pub keepalive_timeout: Duration,
    /// Time allowed for the TLS ClientHello or the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Time a write to the client may wait (a client that stops reading).
    pub send_timeout: Duration,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Client connections open at once from one address.
    pub max_connections_per_ip: usize,
    /// Requests served on one connection before it is closed (HTTP/1.1) or drained (HTTP/2).
    pub max_requests_per_connection: u32,
}

/// Validated `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Hard bound on cached bytes.
    pub max_memory: u64,
    /// Largest response that is stored.
    pub max_object_size: usize,
    /// Coalescing wait bound.
    pub lock_timeout: Duration,
    /// Default stale-while-revalidate window.
    pub stale_while_revalidate: Duration,
    /// Default stale-if-error window.
    pub stale_if_error: Duration,
    /// Fraction of the `Last-Modified` age used as heuristic freshness.
    pub heuristic_fraction: f64,
    /// Cap of heuristic freshness.
    pub heuristic_max: Duration,
    /// Extra retention of stale responses that carry a validator.
    pub keep_stale: Duration,
    /// Name in `Cache-Status`.
    pub status_name: String,
}

/// Validated `[compression]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionSettings {
    /// Media type patterns that are compressed.
    pub types: Vec<String>,
    /// Smallest body compressed.
    pub min_size: usize,
    /// gzip level of stored responses (1-9).
    pub gzip_level: u32,
    /// Brotli quality of stored responses when first stored (0-11).
    pub brotli_level: u32,
    /// Brotli quality of the background recompression (0: none).
    pub brotli_background_level: u32,
    /// gzip level of on-the-fly compression.
    pub stream_gzip_level: u32,
    /// Brotli quality of on-the-fly compression.
    pub stream_brotli_level: u32,
}

impl Default for CompressionSettings {
    /// The defaults of the `[compression]` section.
    fn default() -> Self {
        CompressionSettings::from(&CompressionSection::default())
    }
}

impl From<&CompressionSection> for CompressionSettings {
    /// The section as written (its levels checked by the caller).
    fn from(section: &CompressionSection) -> Self {
        CompressionSettings {
            types: section.types.clone(),
            min_size: section.min_size.as_usize(),
            gzip_level: section.gzip_level,
            brotli_level: section.brotli_level,
            brotli_background_level: section.brotli_background_level,
            stream_gzip_level: section.stream_gzip_level,
            stream_brotli_level: section.stream_brotli_level,
        }
    }
}

/// Validated `[[site]]`.
#[derive(Debug, Clone)]
pub struct SiteSettings {
    /// Lower-cased host names without ports.
    pub hosts: Vec<String>,
    /// Origins, resolved at startup (at least one primary).
    pub origins: Vec<OriginSettings>,
    /// Selection policy.
    pub lb: LbPolicy,
    /// Retries of idempotent requests on other origins after connection failures.
    pub retries: usize,
    /// Consecutive failures that eject an origin (0: never).
    pub eject_after_failures: usize,
    /// Cool-down of an ejected origin.
    pub eject_for: Duration,
    /// Active health checks, when configured.
    pub health_check: Option<HealthCheckSettings>,
    /// Whether unmatched hosts go to this site.
    pub default: bool,
    /// Whether responses are cached.
    pub cache: bool,
    /// Whether responses are compressed for clients that accept it.
    pub compress: bool,
    /// TLS to origins.
    pub origin_tls: bool,
    /// SNI for TLS to origins.
    pub origin_sni: String,
    /// Verify origin certificates.
    pub origin_verify_cert: bool,
    /// Offer HTTP/2 to TLS origins.
    pub origin_http2: bool,
    /// Idle time after which a pooled origin connection is closed.
    pub origin_idle_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-read timeout (including the first byte).
    pub read_timeout: Duration,
    /// Per-write timeout.
    pub write_timeout: Duration,
    /// Bound on a whole origin response (None: unbounded).
    pub total_timeout: Option<Duration>,
    /// Certificate for this site's hosts on TLS listeners.
    pub tls: Option<crate::tls::LoadedCertificate>,
    /// Redirect plain HTTP to HTTPS.
    pub redirect_https: bool,
    /// `Strict-Transport-Security` value for HTTPS responses.
    pub hsts: Option<http::HeaderValue>,
    /// Request headers removed before lookup and forwarding.
    pub strip_request_headers: Vec<http::HeaderName>,
    /// `CDN-Cache-Control` is removed from responses to clients.
    pub strip_cdn_cache_control: bool,
    /// Per-path rules, in order: the first that matches applies.
    pub routes: Vec<RouteSettings>,
}

/// Validated `[[site.route]]`.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// `name`, else the route's index.
    pub name: String,
    /// Which paths it matches.
    pub path: PathMatch,
    /// Which methods it matches (None: all).
    pub methods: Option<Vec<http::Method>>,
    /// Its own origin pool: the site's settings with the route's origins and overrides.
    pub pool: Option<Box<SiteSettings>>,
    /// `Some(false)`: bypass the cache.
    pub cache: Option<bool>,
    /// Freshness for responses that carry none.
    pub default_ttl: Option<Duration>,
    /// Freshness for every storable response.
    pub override_ttl: Option<Duration>,
    /// What of the query the cache key holds.
    pub query: QueryKey,
    /// Request headers added to the cache key (lower-case).
    pub key_headers: Vec<http::HeaderName>,
    /// Cookies added to the cache key.
    pub key_cookies: Vec<String>,
    /// Removed from the start of the path before forwarding.
    pub strip_prefix: Option<String>,
    /// Edits of the request to the origin.
    pub request_headers: HeaderEdits,
    /// Edits of the response to the client.
    pub response_headers: HeaderEdits,
    /// Requests allowed per client and period.
    pub rate_limit: Option<RateLimitSettings>,
    /// Answer with this redirect.
    pub redirect: Option<RedirectSettings>,
}

/// How a route matches paths.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// This path exactly.
    Exact(String),
    /// Paths starting with this.
    Prefix(String),
    /// Paths this expression finds a match in.
    Regex(regex::Regex),
}

impl PathMatch {
    /// Whether `path` (without the query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }
}

/// What of the query string goes into the cache key.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum QueryKey {
    /// All of it, as sent.
    #[default]
    Keep,
    /// All parameters, sorted (so their order does not split the cache).
    Sort,
    /// None of it.
    Ignore,
    /// Only parameters matching these patterns (sorted).
    Only(Vec<NamePattern>),
    /// All parameters but those matching these patterns (sorted).
    Without(Vec<NamePattern>),
}

/// A parameter name pattern: exact, or with one `*` standing for any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// Before the `*` (the whole name when there is none).
    pub prefix: String,
    /// After the `*` (None: no `*`).
    pub suffix: Option<String>,
}

impl NamePattern {
    /// The pattern written as `text`.
    pub fn new(text: &str) -> NamePattern {
        match text.split_once('*') {
            Some((prefix, suffix)) => NamePattern {
                prefix: prefix.to_string(),
                suffix: Some(suffix.to_string()),
            },
            None => NamePattern {
                prefix: text.to_string(),
                suffix: None,
            },
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match &self.suffix {
            None => name == self.prefix,
            Some(suffix) => {
                name.len() >= self.prefix.len() + suffix.len()
                    && name.starts_with(self.prefix.as_str())
                    && name.ends_with(suffix.as_str())
            }
        }
    }
}

/// Header edits: set (replace) and remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// Set, replacing any value.
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Removed.
    pub remove: Vec<http::HeaderName>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// A validated rate limit.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period.
    pub per: Duration,
    /// Counted by the value of this request header (None: by client address).
    pub header: Option<http::HeaderName>,
}

/// A validated redirect.
#[derive(Debug, Clone)]
pub struct RedirectSettings {
    /// `Location`.
    pub to: http::HeaderValue,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// One validated origin.
#[derive(Debug, Clone)]
pub struct OriginSettings {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Relative share of requests (at least 1).
    pub weight: usize,
    /// Used only when no primary is usable.
    pub backup: bool,
}

/// Validated `[site.health_check]`.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    /// HTTP or TCP.
    pub kind: HealthCheckKind,
    /// Path of HTTP checks.
    pub path: String,
    /// `Host` of HTTP checks.
    pub host: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Expected status of HTTP checks.
    pub expected_status: u16,
    /// Successes to become healthy.
    pub healthy_after: usize,
    /// Failures to become unhealthy.
    pub unhealthy_after: usize,
}

impl Config {
    /// The sites that have a TLS certificate, with their hosts, for the SNI resolver.
    pub fn certificates(&self) -> impl Iterator<Item = crate::tls::SiteCertificate<'_>> {
        self.sites.iter().filter_map(|site| {
            Some(crate::tls::SiteCertificate {
                hosts: &site.hosts,
                default: site.default,
                certificate: site.tls.as_ref()?,
            })
        })
    }
}
