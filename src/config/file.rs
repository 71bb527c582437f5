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
    /// Virtual hosts, each with its origins.
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteSection>,
    /// Starts the built-in sample origin (used by the default config and the quick start).
    pub demo: Option<DemoSection>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Plain HTTP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listen addresses (certificates come from the sites).
    pub listen_tls: Vec<SocketAddr>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Accept cleartext HTTP/2 with prior knowledge on the plain listeners.
    pub h2c: bool,
    /// Pseudonym of this proxy in `Via` headers (the machine name is never used).
    pub via: String,
    /// How long a graceful shutdown waits before it stops accepting connections.
    pub grace_period: HumanDuration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub graceful_shutdown_timeout: HumanDuration,
    /// Unix socket used to hand listeners to a new process during an upgrade.
    pub upgrade_sock: String,
    /// Where the pid is written when running as a daemon.
    pub pid_file: String,
    /// Emit one access-log event per request.
    pub access_log: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            listen_tls: Vec::new(),
            threads: 2,
            h2c: false,
            via: "edgecache".into(),
            grace_period: HumanDuration(Duration::from_secs(0)),
            graceful_shutdown_timeout: HumanDuration(Duration::from_secs(10)),
            upgrade_sock: "/tmp/edgecache_upgrade.sock".into(),
            pid_file: "/tmp/edgecache.pid".into(),
            access_log: true,
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
    /// Stale-if-error window used when the origin gives none.
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

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            max_memory: ByteSize(256 << 20),
            max_object_size: ByteSize(16 << 20),
            lock_timeout: HumanDuration(Duration::from_secs(5)),
            stale_while_revalidate: HumanDuration(Duration::ZERO),
            stale_if_error: HumanDuration(Duration::ZERO),
            heuristic_fraction: 0.1,
            heuristic_max: HumanDuration(Duration::from_secs(86_400)),
            keep_stale: HumanDuration(Duration::from_secs(600)),
            status_name: "edgecache".into(),
        }
    }
}

/// One `[[site]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Host names served by this site (case-insensitive, port ignored).
    pub hosts: Vec<String>,
    /// Origin servers as `host:port`.
    pub origins: Vec<String>,
    /// Requests whose host matches no site go here.
    #[serde(default)]
    pub default: bool,
    /// Cache this site's responses (set false to proxy only).
    #[serde(default = "yes")]
    pub cache: bool,
    /// Connect to origins with TLS.
    #[serde(default)]
    pub origin_tls: bool,
    /// SNI and certificate name for TLS to origins; defaults to the origin's host.
    pub origin_sni: Option<String>,
    /// Verify origin certificates (only turn off for testing).
    #[serde(default = "yes")]
    pub origin_verify_cert: bool,
    /// Timeout to establish a connection to an origin.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Timeout for each read from an origin, including the wait for the first response byte.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: HumanDuration,
    /// Timeout for each write to an origin.
    #[serde(default = "default_read_timeout")]
    pub write_timeout: HumanDuration,
    /// PEM certificate chain (leaf first) served for this site's hosts on TLS listeners.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// Answer plain HTTP requests with a 308 redirect to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// `Strict-Transport-Security` value added to HTTPS responses.
    pub hsts: Option<String>,
}

/// `[demo]`: a sample origin inside the binary, so the proxy can be tried with nothing else running.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSection {
    /// Where the sample origin listens.
    pub listen: SocketAddr,
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
