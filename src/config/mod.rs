//! Configuration: parse the TOML file, validate it, and freeze it into the runtime [`Config`].
//!
//! Loading is `parse → validate → freeze`. Every error is a [`ConfigError`] naming the file, the
//! line and the key, so `edgecache --check` and a failed reload point straight at the problem.

mod file;
pub mod units;

use crate::event_kind::EventKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{AccessLogFormat, HealthCheckKind, LbPolicy};
use file::{FileConfig, HealthCheckSection, OriginSpec, SiteSection};

/// The config used when no `--config` is given: the proxy on 127.0.0.1:8080 in front of the
/// built-in sample origin, so caching can be tried with nothing else running.
pub const BUILT_IN_CONFIG: &str = include_str!("../../config/default.toml");

/// Name shown for the built-in config in messages.
pub const BUILT_IN_NAME: &str = "<built-in default config>";

/// A config that could not be loaded, located as precisely as the parser allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read config: {source}")]
    Read {
        /// The path given.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but a key is missing, unknown or has a bad value.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The path given.
        file: PathBuf,
        /// 1-based line of the offending key or value (the first line if unknown).
        line: usize,
        /// Dotted path of the key, e.g. `site[0].origins[1]`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

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
        CompressionSettings {
            types: types.iter().map(|t| t.to_string()).collect(),
            min_size: 256,
            gzip_level: 6,
            brotli_level: 5,
            brotli_background_level: 11,
            stream_gzip_level: 1,
            stream_brotli_level: 2,
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

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The built-in default config.
    pub fn built_in() -> Result<Config, ConfigError> {
        Config::parse(BUILT_IN_CONFIG, Path::new(BUILT_IN_NAME))
    }

    /// Parses and validates config text; `source` only labels errors.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let locator = Locator { text, source };
        let deserializer = toml::Deserializer::new(text);
        let file: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|span| line_of_offset(text, span.start))
                .unwrap_or_else(|| locator.line_of_key(&key));
            ConfigError::Invalid {
                file: source.to_path_buf(),
                line,
                key: if key == "." { "(file)".into() } else { key },
                message: inner.message().to_string(),
            }
        })?;
        freeze(file, &locator)
    }
}

/// Maps key paths back to lines for errors found after parsing.
struct Locator<'a> {
    text: &'a str,
    source: &'a Path,
}

impl Locator<'_> {
    /// `path` as written in the config, made relative to the config file's directory.
    fn relative(&self, path: &Path) -> PathBuf {
        match self.source.parent() {
            Some(dir) if path.is_relative() && self.source.is_file() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.to_path_buf(),
            line: self.line_of_key(key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Line of the value at a dotted key path such as `site[1].hosts[0]`, or of its nearest
    /// ancestor that has a position; line 1 when nothing matches.
    fn line_of_key(&self, key: &str) -> usize {
        let Ok(doc) = self.text.parse::<toml_edit::ImDocument<String>>() else {
            return 1;
        };
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for segment in key.split('.').filter(|s| !s.is_empty()) {
            let (name, index) = split_index(segment);
            let Some(next) = item.get(name) else { break };
            item = next;
            best = item.span().or(best);
            if let Some(i) = index {
                let Some(next) = item.get(i) else { break };
                item = next;
                best = item.span().or(best);
            }
        }
        best.map(|span| line_of_offset(self.text, span.start))
            .unwrap_or(1)
    }
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn freeze(file: FileConfig, at: &Locator) -> Result<Config, ConfigError> {
    let server = &file.server;
    if server.listen.is_empty() {
        return Err(at.error("server.listen", "at least one listen address is required"));
    }
    check_server_bounds(server, at)?;
    check_cache_bounds(&file.cache, at)?;
    if !is_token(&server.via) {
        return Err(at.error("server.via", "must be a single word of visible characters"));
    }
    let cache = &file.cache;
    if !is_token(&cache.status_name) {
        return Err(at.error("cache.status_name", "must be a single word of visible characters"));
    }
    if cache.max_memory.0 == 0 {
        return Err(at.error("cache.max_memory", "must be greater than zero"));
    }
    if cache.max_object_size > cache.max_memory {
        return Err(at.error("cache.max_object_size", "must not exceed cache.max_memory"));
    }
    if !(0.0..=1.0).contains(&cache.heuristic_fraction) {
        return Err(at.error("cache.heuristic_fraction", "must be between 0 and 1"));
    }
    if file.sites.is_empty() {
        return Err(at.error("site", "at least one [[site]] is required"));
    }
    if !server.listen_tls.is_empty() && file.sites.iter().all(|s| s.tls_cert.is_none()) {
        return Err(at.error(
            "server.listen_tls",
            "TLS listeners need at least one site with tls_cert and tls_key",
        ));
    }
    let mut sites = Vec::with_capacity(file.sites.len());
    for (index, site) in file.sites.iter().enumerate() {
        check_site_bounds(site, index, at)?;
        sites.push(freeze_site(site, index, at)?);
    }
    let access_log_path = match server.access_log_path.as_str() {
        "stdout" | "stderr" => PathBuf::from(&server.access_log_path),
        path => at.relative(Path::new(path)),
    };
    check_access_log(server, &access_log_path, at)?;
    check_hosts_unique(&sites, at)?;
    if sites.iter().filter(|s| s.default).count() > 1 {
        let second = sites.iter().enumerate().filter(|(_, s)| s.default).nth(1);
        let index = second.map(|(i, _)| i).unwrap_or(0);
        return Err(at.error(
            &format!("site[{index}].default"),
            "only one site can be the default",
        ));
    }
    Ok(Config {
        source: at.source.to_path_buf(),
        server: ServerSettings {
            listen: server.listen.clone(),
            listen_tls: server.listen_tls.clone(),
            origin_ca_file: origin_ca_file(server, at)?,
            origin_pool_size: server.origin_pool_size,
            purge_allow: purge_networks(server, at)?,
            threads: server.threads,
            h2c: server.h2c,
            via: server.via.clone(),
            grace_period: server.grace_period.0,
            graceful_shutdown_timeout: server.graceful_shutdown_timeout.0,
            upgrade_sock: server.upgrade_sock.clone(),
            pid_file: server.pid_file.clone(),
            access_log: server.access_log,
            access_log_format: server.access_log_format,
            access_log_path,
            server_timing: server.server_timing,
            node_name: server.node_name.clone().unwrap_or_else(host_name),
            clients: client_limits(server, at)?,
        },
        cache: CacheSettings {
            max_memory: cache.max_memory.0,
            max_object_size: cache.max_object_size.as_usize(),
            lock_timeout: cache.lock_timeout.0,
            stale_while_revalidate: cache.stale_while_revalidate.0,
            stale_if_error: cache.stale_if_error.0,
            heuristic_fraction: cache.heuristic_fraction,
            heuristic_max: cache.heuristic_max.0,
            keep_stale: cache.keep_stale.0,
            status_name: cache.status_name.clone(),
        },
        compression: freeze_compression(&file.compression, at)?,
        sites,
        demo_listen: file.demo.as_ref().map(|d| d.listen),
        admin: freeze_admin(file.admin.as_ref(), at)?,
        webhooks: freeze_webhooks(&file.webhooks, at)?,
    })
}

/// The bounds on client connections, each checked to be usable.
fn client_limits(server: &file::ServerSection, at: &Locator) -> Result<ClientLimits, ConfigError> {
    let durations = [
        ("client_header_timeout", server.client_header_timeout.0),
        ("keepalive_timeout", server.keepalive_timeout.0),
        ("handshake_timeout", server.handshake_timeout.0),
        ("send_timeout", server.send_timeout.0),
    ];
    for (name, value) in durations {
        check_duration(at, &format!("server.{name}"), value, SECOND, HOUR)?;
    }
    let counts = [
        ("max_connections", server.max_connections),
        ("max_connections_per_ip", server.max_connections_per_ip),
        (
            "max_requests_per_connection",
            server.max_requests_per_connection as usize,
        ),
    ];
    for (name, value) in counts {
        check_count(at, &format!("server.{name}"), value, 1, MAX_CLIENT_COUNT)?;
    }
    Ok(ClientLimits {
        header_timeout: server.client_header_timeout.0,
        keepalive_timeout: server.keepalive_timeout.0,
        handshake_timeout: server.handshake_timeout.0,
        send_timeout: server.send_timeout.0,
        max_connections: server.max_connections,
        max_connections_per_ip: server.max_connections_per_ip,
        max_requests_per_connection: server.max_requests_per_connection,
    })
}

/// Largest client connection or request count accepted.
const MAX_CLIENT_COUNT: usize = 1_000_000;

/// A duration bound: `key` must lie within `min..=max` (both inclusive).
fn check_duration(
    at: &Locator,
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(at.error(
            key,
            format!(
                "{} is out of range: expected {} to {}",
                humantime::format_duration(value),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// A count bound: `key` must lie within `min..=max`.
fn check_count(at: &Locator, key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(at.error(key, format!("{value} is out of range: expected {min} to {max}")));
    }
    Ok(())
}

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// Process-wide settings within bounds a running server can honour.
fn check_server_bounds(server: &file::ServerSection, at: &Locator) -> Result<(), ConfigError> {
    check_count(at, "server.threads", server.threads, 1, 1024)?;
    check_count(
        at,
        "server.origin_pool_size",
        server.origin_pool_size,
        0,
        1_000_000,
    )?;
    check_duration(
        at,
        "server.grace_period",
        server.grace_period.0,
        Duration::ZERO,
        HOUR,
    )?;
    check_duration(
        at,
        "server.graceful_shutdown_timeout",
        server.graceful_shutdown_timeout.0,
        Duration::ZERO,
        HOUR,
    )
}

/// Cache durations within bounds (a zero lock timeout would disable coalescing silently).
fn check_cache_bounds(cache: &file::CacheSection, at: &Locator) -> Result<(), ConfigError> {
    check_duration(at, "cache.lock_timeout", cache.lock_timeout.0, MILLISECOND, HOUR)?;
    let windows = [
        ("cache.stale_while_revalidate", cache.stale_while_revalidate.0),
        ("cache.stale_if_error", cache.stale_if_error.0),
        ("cache.heuristic_max", cache.heuristic_max.0),
        ("cache.keep_stale", cache.keep_stale.0),
    ];
    for (key, value) in windows {
        check_duration(at, key, value, Duration::ZERO, YEAR)?;
    }
    Ok(())
}

/// A site's timeouts, retries and ejection settings within usable bounds: a zero timeout would
/// fail every request, a huge one would hold connections forever.
fn check_site_bounds(site: &SiteSection, index: usize, at: &Locator) -> Result<(), ConfigError> {
    let key = |field: &str| format!("site[{index}].{field}");
    let timeouts = [
        ("connect_timeout", site.connect_timeout.0),
        ("read_timeout", site.read_timeout.0),
        ("write_timeout", site.write_timeout.0),
    ];
    for (field, value) in timeouts {
        check_duration(at, &key(field), value, MILLISECOND, HOUR)?;
    }
    if let Some(total) = site.total_timeout {
        check_duration(at, &key("total_timeout"), total.0, MILLISECOND, DAY)?;
    }
    check_duration(
        at,
        &key("origin_idle_timeout"),
        site.origin_idle_timeout.0,
        Duration::ZERO,
        DAY,
    )?;
    check_duration(at, &key("eject_for"), site.eject_for.0, Duration::ZERO, DAY)?;
    check_count(at, &key("retries"), site.retries, 0, 16)?;
    check_count(
        at,
        &key("eject_after_failures"),
        site.eject_after_failures,
        0,
        1_000_000,
    )?;
    if let Some(check) = &site.health_check {
        check_duration(
            at,
            &key("health_check.interval"),
            check.interval.0,
            MILLISECOND,
            DAY,
        )?;
        check_duration(
            at,
            &key("health_check.timeout"),
            check.timeout.0,
            MILLISECOND,
            HOUR,
        )?;
    }
    Ok(())
}

/// The access log's file can be opened for appending (checked now, so `--check` and a reload
/// report it with its key instead of failing later).
fn check_access_log(server: &file::ServerSection, path: &Path, at: &Locator) -> Result<(), ConfigError> {
    if !server.access_log || matches!(server.access_log_path.as_str(), "stdout" | "stderr") {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| {
            at.error(
                "server.access_log_path",
                format!("cannot open {}: {e}", path.display()),
            )
        })
}

/// The machine's host name, the default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "edgecache".into())
}

fn freeze_admin(
    section: Option<&file::AdminSection>,
    at: &Locator,
) -> Result<Option<AdminSettings>, ConfigError> {
    let Some(section) = section else { return Ok(None) };
    let token = match (&section.token, &section.token_env) {
        (Some(token), None) => token.clone(),
        (None, Some(name)) => std::env::var(name).map_err(|_| {
            at.error(
                "admin.token_env",
                format!("environment variable {name:?} is not set"),
            )
        })?,
        (Some(_), Some(_)) => return Err(at.error("admin.token", "set token or token_env, not both")),
        (None, None) => return Err(at.error("admin", "the admin API needs token or token_env")),
    };
    if token.len() < 8 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(at.error(
            if section.token.is_some() {
                "admin.token"
            } else {
                "admin.token_env"
            },
            "the token must be at least 8 visible ASCII characters",
        ));
    }
    Ok(Some(AdminSettings {
        listen: section.listen,
        token,
    }))
}

fn freeze_webhooks(
    sections: &[file::WebhookSection],
    at: &Locator,
) -> Result<Vec<WebhookSettings>, ConfigError> {
    let mut webhooks = Vec::with_capacity(sections.len());
    for (index, section) in sections.iter().enumerate() {
        let key = |field: &str| format!("webhook[{index}].{field}");
        let url: http::Uri = section
            .url
            .parse()
            .map_err(|_| at.error(&key("url"), format!("{:?} is not a URL", section.url)))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(at.error(&key("url"), "expected an http:// or https:// URL"));
        }
        for (i, event) in section.events.iter().enumerate() {
            if event != "*" && EventKind::named(event).is_none() {
                return Err(at.error(
                    &key(&format!("events[{i}]")),
                    format!(
                        "unknown event {event:?}: expected \"*\" or one of {}",
                        EventKind::ALL.map(EventKind::name).join(", ")
                    ),
                ));
            }
        }
        if section.secret.is_empty() {
            return Err(at.error(&key("secret"), "must not be empty"));
        }
        webhooks.push(WebhookSettings {
            url,
            events: section.events.clone(),
            secret: section.secret.clone(),
        });
    }
    Ok(webhooks)
}

fn freeze_compression(
    section: &file::CompressionSection,
    at: &Locator,
) -> Result<CompressionSettings, ConfigError> {
    let levels = [
        ("gzip_level", section.gzip_level, 1..=9),
        ("stream_gzip_level", section.stream_gzip_level, 1..=9),
        ("brotli_level", section.brotli_level, 0..=11),
        ("stream_brotli_level", section.stream_brotli_level, 0..=11),
        ("brotli_background_level", section.brotli_background_level, 0..=11),
    ];
    for (name, level, range) in levels {
        if !range.contains(&level) {
            return Err(at.error(
                &format!("compression.{name}"),
                format!(
                    "{level} is out of range: expected {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
        }
    }
    for (i, pattern) in section.types.iter().enumerate() {
        let valid =
            pattern.contains('/') && pattern.matches('*').count() <= 1 && !pattern.contains([' ', ';']);
        if !valid {
            return Err(at.error(
                &format!("compression.types[{i}]"),
                format!("{pattern:?} is not a media type pattern (e.g. \"text/*\", \"application/json\")"),
            ));
        }
    }
    Ok(CompressionSettings {
        types: section.types.clone(),
        min_size: section.min_size.as_usize(),
        gzip_level: section.gzip_level,
        brotli_level: section.brotli_level,
        brotli_background_level: section.brotli_background_level,
        stream_gzip_level: section.stream_gzip_level,
        stream_brotli_level: section.stream_brotli_level,
    })
}

/// The origin CA file, relative to the config file, checked to hold PEM certificates.
fn origin_ca_file(server: &file::ServerSection, at: &Locator) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = &server.origin_ca_file else {
        return Ok(None);
    };
    let path = at.relative(path);
    crate::tls::check_ca_file(&path).map_err(|m| at.error("server.origin_ca_file", m))?;
    Ok(Some(path))
}

/// `purge_allow` entries as networks; a bare address is a network of one.
fn purge_networks(server: &file::ServerSection, at: &Locator) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let mut networks = Vec::with_capacity(server.purge_allow.len());
    for (i, entry) in server.purge_allow.iter().enumerate() {
        let network = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                at.error(
                    &format!("server.purge_allow[{i}]"),
                    format!("{entry:?} is not an address or network (e.g. \"10.0.0.0/8\", \"::1\")"),
                )
            })?;
        networks.push(network);
    }
    Ok(networks)
}

/// An HTTP token: what `Via` pseudonyms and `Cache-Status` names must be.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b))
}

fn freeze_site(site: &SiteSection, index: usize, at: &Locator) -> Result<SiteSettings, ConfigError> {
    let key = |field: &str| format!("site[{index}].{field}");
    if site.hosts.is_empty() && !site.default {
        return Err(at.error(
            &key("hosts"),
            "list at least one host, or mark the site `default = true`",
        ));
    }
    let mut hosts = Vec::with_capacity(site.hosts.len());
    for (i, host) in site.hosts.iter().enumerate() {
        let normalized = crate::authority::normalize_host(host);
        if normalized.is_empty() || normalized.contains(['/', ' ', '@']) {
            return Err(at.error(
                &key(&format!("hosts[{i}]")),
                format!("invalid host name {host:?}"),
            ));
        }
        hosts.push(normalized);
    }
    if site.origins.is_empty() {
        return Err(at.error(&key("origins"), "at least one origin is required"));
    }
    let mut origins = Vec::with_capacity(site.origins.len());
    for (i, origin) in site.origins.iter().enumerate() {
        origins.push(freeze_origin(origin).map_err(|m| at.error(&key(&format!("origins[{i}]")), m))?);
    }
    if origins.iter().all(|o| o.backup) {
        return Err(at.error(&key("origins"), "at least one origin must not be a backup"));
    }
    let first_addr = site.origins.first().map(|o| match o {
        OriginSpec::Addr(addr) => addr.as_str(),
        OriginSpec::Table(table) => table.addr.as_str(),
    });
    let origin_sni = site
        .origin_sni
        .clone()
        .or_else(|| {
            first_addr
                .and_then(|o| o.rsplit_once(':'))
                .map(|(h, _)| h.to_string())
        })
        .unwrap_or_default();
    let health_check = match &site.health_check {
        Some(check) => Some(
            freeze_health_check(check)
                .map_err(|(field, m)| at.error(&key(&format!("health_check.{field}")), m))?,
        ),
        None => None,
    };
    Ok(SiteSettings {
        hosts,
        origins,
        lb: site.lb,
        retries: site.retries,
        eject_after_failures: site.eject_after_failures,
        eject_for: site.eject_for.0,
        health_check,
        default: site.default,
        cache: site.cache,
        compress: site.compress,
        origin_tls: site.origin_tls,
        origin_sni,
        origin_verify_cert: site.origin_verify_cert,
        origin_http2: site.origin_http2,
        origin_idle_timeout: site.origin_idle_timeout.0,
        connect_timeout: site.connect_timeout.0,
        read_timeout: site.read_timeout.0,
        write_timeout: site.write_timeout.0,
        total_timeout: site.total_timeout.map(|t| t.0),
        tls: site_certificate(site, index, at)?,
        redirect_https: site.redirect_https,
        hsts: site_hsts(site, index, at)?,
        strip_request_headers: strip_request_headers(site, index, at)?,
    })
}

/// The header names of `strip_request_headers`, checked to be header names.
fn strip_request_headers(
    site: &SiteSection,
    index: usize,
    at: &Locator,
) -> Result<Vec<http::HeaderName>, ConfigError> {
    let mut names = Vec::with_capacity(site.strip_request_headers.len());
    for (i, name) in site.strip_request_headers.iter().enumerate() {
        let parsed = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            at.error(
                &format!("site[{index}].strip_request_headers[{i}]"),
                format!("{name:?} is not a header name"),
            )
        })?;
        names.push(parsed);
    }
    Ok(names)
}

/// Loads the site's certificate and key, when it has them; paths are relative to the config
/// file's directory.
fn site_certificate(
    site: &SiteSection,
    index: usize,
    at: &Locator,
) -> Result<Option<crate::tls::LoadedCertificate>, ConfigError> {
    let key = |field: &str| format!("site[{index}].{field}");
    let (cert_file, key_file) = match (&site.tls_cert, &site.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (at.relative(cert), at.relative(key)),
        (Some(_), None) => return Err(at.error(&key("tls_cert"), "tls_key is required with tls_cert")),
        (None, Some(_)) => return Err(at.error(&key("tls_key"), "tls_cert is required with tls_key")),
    };
    crate::tls::LoadedCertificate::load(&cert_file, &key_file)
        .map(Some)
        .map_err(|message| at.error(&key("tls_cert"), message))
}

fn site_hsts(
    site: &SiteSection,
    index: usize,
    at: &Locator,
) -> Result<Option<http::HeaderValue>, ConfigError> {
    let Some(hsts) = &site.hsts else { return Ok(None) };
    let valid = hsts.to_ascii_lowercase().contains("max-age=");
    match http::HeaderValue::from_str(hsts) {
        Ok(value) if valid => Ok(Some(value)),
        _ => Err(at.error(
            &format!("site[{index}].hsts"),
            format!("invalid Strict-Transport-Security value {hsts:?}: expected e.g. \"max-age=31536000\""),
        )),
    }
}

fn freeze_origin(origin: &OriginSpec) -> Result<OriginSettings, String> {
    let (addr, weight, backup) = match origin {
        OriginSpec::Addr(addr) => (addr.as_str(), 1, false),
        OriginSpec::Table(table) => (table.addr.as_str(), table.weight, table.backup),
    };
    if weight == 0 {
        return Err(format!("origin {addr:?}: weight must be at least 1"));
    }
    Ok(OriginSettings {
        addr: resolve_origin(addr)?,
        weight,
        backup,
    })
}

fn freeze_health_check(check: &HealthCheckSection) -> Result<HealthCheckSettings, (&'static str, String)> {
    if check.interval.0.is_zero() {
        return Err(("interval", "must be greater than zero".into()));
    }
    if !check.path.starts_with('/') {
        return Err(("path", format!("{:?} must start with /", check.path)));
    }
    if !(100..600).contains(&check.expected_status) {
        return Err((
            "expected_status",
            format!("{} is not an HTTP status", check.expected_status),
        ));
    }
    Ok(HealthCheckSettings {
        kind: check.kind,
        path: check.path.clone(),
        host: check.host.clone(),
        interval: check.interval.0,
        timeout: check.timeout.0,
        expected_status: check.expected_status,
        healthy_after: check.healthy_after.max(1),
        unhealthy_after: check.unhealthy_after.max(1),
    })
}

fn resolve_origin(origin: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if !origin.contains(':') {
        return Err(format!("origin {origin:?} must be host:port"));
    }
    origin
        .to_socket_addrs()
        .map_err(|e| format!("origin {origin:?} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("origin {origin:?} resolves to no address"))
}

fn check_hosts_unique(sites: &[SiteSettings], at: &Locator) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashMap::new();
    for (index, site) in sites.iter().enumerate() {
        for (i, host) in site.hosts.iter().enumerate() {
            if let Some(first) = seen.insert(host.clone(), index) {
                return Err(at.error(
                    &format!("site[{index}].hosts[{i}]"),
                    format!("host {host:?} is already served by site[{first}]"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
