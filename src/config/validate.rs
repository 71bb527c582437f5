//! The validate step: the parsed file checked key by key and frozen into a [`Config`]. Bounds,
//! formats and cross-checks live here; what needs the world outside the file is called from
//! [`super::resolve`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, Locator};
use super::file::{self, FileConfig, OriginSpec, SiteSection};
use super::model::*;
use super::origins::{freeze_health_check, freeze_origin};
use super::resolve::{
    check_access_log, environment_variable, host_name, instance_path, origin_ca_file, resolve_origin,
    site_certificate,
};
use crate::event_kind::EventKind;

pub(super) fn freeze(file: FileConfig, at: &Locator) -> Result<Config, ConfigError> {
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
        let mut settings = freeze_site(site, index, at)?;
        settings.routes = super::routes::freeze_routes(&site.route, &settings, index, at)?;
        sites.push(settings);
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
            upgrade_sock: server
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| instance_path(at.source, "upgrade.sock")),
            pid_file: server
                .pid_file
                .clone()
                .unwrap_or_else(|| instance_path(at.source, "pid")),
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
        cluster: freeze_cluster(file.cluster.as_ref(), at)?,
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

/// A secret given in the file (`key`) or by an environment variable (`key_env`), exactly one of
/// them, for the `(section, key, what needs it)` named.
fn secret_value(
    value: &Option<String>,
    env: &Option<String>,
    (section, key, user): (&str, &str, &str),
    at: &Locator,
) -> Result<String, ConfigError> {
    match (value, env) {
        (Some(value), None) => Ok(value.clone()),
        (None, Some(name)) => environment_variable(name, &format!("{section}.{key}_env"), at),
        (Some(_), Some(_)) => Err(at.error(
            &format!("{section}.{key}"),
            format!("set {key} or {key}_env, not both"),
        )),
        (None, None) => Err(at.error(section, format!("{user} needs {key} or {key}_env"))),
    }
}

fn freeze_admin(
    section: Option<&file::AdminSection>,
    at: &Locator,
) -> Result<Option<AdminSettings>, ConfigError> {
    let Some(section) = section else { return Ok(None) };
    let token = secret_value(
        &section.token,
        &section.token_env,
        ("admin", "token", "the admin API"),
        at,
    )?;
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
    Ok(CompressionSettings::from(section))
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
        strip_cdn_cache_control: site.strip_cdn_cache_control,
        routes: Vec::new(),
    })
}

/// The header names of `strip_request_headers`, checked to be header names.
fn strip_request_headers(
    site: &SiteSection,
    index: usize,
    at: &Locator,
) -> Result<Vec<http::HeaderName>, ConfigError> {
    super::routes::header_names(&site.strip_request_headers)
        .map_err(|(i, m)| at.error(&format!("site[{index}].strip_request_headers[{i}]"), m))
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

/// The smallest cluster secret accepted.
const MIN_CLUSTER_SECRET: usize = 16;

fn freeze_cluster(
    section: Option<&file::ClusterSection>,
    at: &Locator,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let Some(section) = section else { return Ok(None) };
    let secret = secret_value(
        &section.secret,
        &section.secret_env,
        ("cluster", "secret", "the cluster"),
        at,
    )?;
    if secret.len() < MIN_CLUSTER_SECRET {
        let key = if section.secret.is_some() {
            "cluster.secret"
        } else {
            "cluster.secret_env"
        };
        return Err(at.error(
            key,
            format!("the secret must be at least {MIN_CLUSTER_SECRET} characters"),
        ));
    }
    let mut peers: Vec<PeerSettings> = Vec::with_capacity(section.peers.len());
    for (i, peer) in section.peers.iter().enumerate() {
        let key = |field: &str| format!("cluster.peers[{i}].{field}");
        if peer.id.is_empty()
            || !peer
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(at.error(&key("id"), "letters, digits, '-', '_' and '.' only"));
        }
        if peers.iter().any(|p| p.id == peer.id) {
            return Err(at.error(&key("id"), format!("{:?} is listed twice", peer.id)));
        }
        if peer.weight == 0 || peer.weight > 100 {
            return Err(at.error(&key("weight"), "must be between 1 and 100"));
        }
        let addr =
            resolve_origin(&peer.addr).map_err(|m| at.error(&key("addr"), m.replace("origin", "peer")))?;
        peers.push(PeerSettings {
            id: peer.id.clone(),
            addr,
            weight: peer.weight,
        });
    }
    if !peers.iter().any(|p| p.id == section.node) {
        return Err(at.error(
            "cluster.node",
            format!("{:?} is not one of cluster.peers", section.node),
        ));
    }
    check_duration(
        at,
        "cluster.peer_copy_ttl",
        section.peer_copy_ttl.0,
        Duration::ZERO,
        DAY,
    )?;
    check_duration(
        at,
        "cluster.peer_connect_timeout",
        section.peer_connect_timeout.0,
        MILLISECOND,
        HOUR,
    )?;
    check_duration(
        at,
        "cluster.peer_timeout",
        section.peer_timeout.0,
        MILLISECOND,
        HOUR,
    )?;
    Ok(Some(ClusterSettings {
        node: section.node.clone(),
        secret,
        peers,
        peer_copy_ttl: section.peer_copy_ttl.0,
        peer_connect_timeout: section.peer_connect_timeout.0,
        peer_timeout: section.peer_timeout.0,
    }))
}
