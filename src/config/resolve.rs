//! The resolve step: what loading a config reads from outside the file. Names resolved by
//! DNS, certificates and CA files read, the access-log file opened, the host name read. Each
//! failure is reported with its key like any other config error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, Locator};
use super::file::{self, SiteSection};

/// The access log's file can be opened for appending (checked now, so `--check` and a reload
/// report it with its key instead of failing later).
pub(super) fn check_access_log(
    server: &file::ServerSection,
    path: &Path,
    at: &Locator,
) -> Result<(), ConfigError> {
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
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "edgecache".into())
}

/// The origin CA file, relative to the config file, checked to hold PEM certificates.
pub(super) fn origin_ca_file(
    server: &file::ServerSection,
    at: &Locator,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = &server.origin_ca_file else {
        return Ok(None);
    };
    let path = at.relative(path);
    crate::tls::check_ca_file(&path).map_err(|m| at.error("server.origin_ca_file", m))?;
    Ok(Some(path))
}

/// Loads the site's certificate and key, when it has them; paths are relative to the config
/// file's directory.
pub(super) fn site_certificate(
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

pub(super) fn resolve_origin(origin: &str) -> Result<SocketAddr, String> {
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

/// The value of the environment variable `name`, which the config names at `key` (a secret
/// kept out of the file).
pub(super) fn environment_variable(name: &str, key: &str, at: &Locator) -> Result<String, ConfigError> {
    std::env::var(name).map_err(|_| at.error(key, format!("environment variable {name:?} is not set")))
}

/// A per-instance runtime file: `edgecache-<hash of the config path>.<suffix>` in
/// `$XDG_RUNTIME_DIR` (or `/tmp`), so two instances on one host, started from different config
/// files, never share a pid file or an upgrade socket, while the old and new process of an
/// upgrade (same file) find the same socket.
pub(super) fn instance_path(config: &Path, suffix: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(config.to_string_lossy().as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    dir.join(format!("edgecache-{hash}.{suffix}"))
        .display()
        .to_string()
}
