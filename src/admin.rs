//! The admin API: a separate listener (loopback by default) for operators and scripts.
//!
//! Every request needs `Authorization: Bearer <token>`; without it the answer is 401 and
//! nothing else happens. The token is the running config's, so a reload rotates it. Endpoints:
//! - `GET /status`: JSON with cache size, hit ratio, per-site origin health, config version,
//!   uptime and webhook counters;
//! - `GET /metrics`: Prometheus text;
//! - `POST /purge`: JSON `{"url"|"prefix"|"host"|"tag": "...", "soft": false}`, answers how many
//!   entries were touched;
//! - `POST /reload`: re-reads the config file (like SIGHUP).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::json;

use crate::cache::storage::PurgeScope;
use crate::cache::MokaStorage;
use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::proxy::runtime::SharedRuntime;
use crate::reload::Reloader;

/// Largest request body accepted (purge requests are tiny).
const MAX_BODY: usize = 64 * 1024;

/// The admin application.
pub struct AdminApi {
    runtime: SharedRuntime,
    storage: &'static MokaStorage,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    events: EventSink,
    started: Instant,
}

impl AdminApi {
    /// The API answering to the token of the running config (`runtime`).
    pub fn new(
        runtime: SharedRuntime,
        storage: &'static MokaStorage,
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
        events: EventSink,
    ) -> AdminApi {
        AdminApi {
            runtime,
            storage,
            metrics,
            reloader,
            events,
            started: Instant::now(),
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(value) = session.req_header().headers.get(http::header::AUTHORIZATION) else {
            return false;
        };
        let Some(presented) = bearer_credentials(value.as_bytes()) else {
            return false;
        };
        let runtime = self.runtime.load();
        let Some(token) = &runtime.admin_token else {
            return false;
        };
        constant_time_eq(presented, token.as_bytes())
    }

    fn status(&self) -> Response<Vec<u8>> {
        let runtime = self.runtime.load_full();
        let (hits, lookups) = self.metrics.hits_and_lookups();
        let sites: Vec<_> = runtime
            .sites
            .iter()
            .map(|site| {
                let origins: Vec<_> = site
                    .origins
                    .health()
                    .into_iter()
                    .map(|o| json!({ "addr": o.addr, "backup": o.backup, "healthy": o.healthy }))
                    .collect();
                let certificate_expires = site
                    .settings
                    .tls
                    .as_ref()
                    .map(|c| crate::access_log::rfc3339(c.not_after));
                json!({
                    "hosts": site.settings.hosts,
                    "default": site.settings.default,
                    "origins": origins,
                    "certificate_expires": certificate_expires,
                })
            })
            .collect();
        let stats = &self.events.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        json_response(
            StatusCode::OK,
            json!({
                "node": self.events.node(),
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_seconds": self.started.elapsed().as_secs_f64(),
                "config": {
                    "version": runtime.version,
                    "loaded_at": crate::access_log::rfc3339(runtime.loaded_at),
                },
                "cache": {
                    "entries": self.storage.entry_count(),
                    "bytes": self.storage.weighted_size(),
                    "evictions": self.storage.evictions(),
                    "hits": hits,
                    "lookups": lookups,
                    "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
                },
                "sites": sites,
                "webhooks": {
                    "delivered": load(&stats.delivered),
                    "failed": load(&stats.failed),
                    "retried": load(&stats.retried),
                    "dropped": load(&stats.dropped),
                },
            }),
        )
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let text = self
            .metrics
            .render(&self.runtime.load(), self.storage, &self.events.stats);
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .body(text.into_bytes())
            .unwrap_or_default()
    }

    fn purge(&self, body: &[u8]) -> Response<Vec<u8>> {
        let (request, (kind, target, scope)) = match parse_purge_request(body) {
            Ok(parsed) => parsed,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        let purged = self.storage.purge_scope(&scope, request.soft);
        self.metrics.purged(kind, request.soft, purged);
        tracing::info!(kind, target, soft = request.soft, purged, "purge");
        self.events.emit(
            "purge",
            json!({ "kind": kind, "target": target, "soft": request.soft, "entries": purged }),
        );
        json_response(StatusCode::OK, json!({ "purged": purged, "soft": request.soft }))
    }

    fn reload(&self) -> Response<Vec<u8>> {
        match self.reloader.reload() {
            Ok(version) => json_response(StatusCode::OK, json!({ "version": version })),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            resp.headers_mut()
                .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
            return resp;
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/status") => self.status(),
            ("GET", "/metrics") => self.metrics(),
            ("POST", "/purge") => match read_body(session).await {
                Ok(body) => self.purge(&body),
                Err(resp) => resp,
            },
            ("POST", "/reload") => self.reload(),
            (_, "/status" | "/metrics" | "/purge" | "/reload") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }
}

/// `POST /purge` body: exactly one of `url`, `prefix`, `host`, `tag`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    tag: Option<String>,
    /// Mark stale instead of deleting.
    #[serde(default)]
    pub soft: bool,
}

impl PurgeRequest {
    /// The kind, the target as given, and the scope.
    fn scope(&self) -> Result<(&'static str, String, PurgeScope), String> {
        let given = [&self.url, &self.prefix, &self.host, &self.tag];
        if given.iter().filter(|v| v.is_some()).count() != 1 {
            return Err("give exactly one of url, prefix, host, tag".into());
        }
        if let Some(url) = &self.url {
            let (scheme, host, path) = split_url(url)?;
            return Ok(("url", url.clone(), PurgeScope::Url { scheme, host, path }));
        }
        if let Some(prefix) = &self.prefix {
            let (scheme, host, path) = split_url(prefix)?;
            return Ok((
                "prefix",
                prefix.clone(),
                PurgeScope::Prefix { scheme, host, path },
            ));
        }
        if let Some(host) = &self.host {
            let normalized = crate::proxy::routing::normalize_host(host);
            return Ok(("host", host.clone(), PurgeScope::Host(normalized)));
        }
        let tag = self.tag.clone().unwrap_or_default();
        if tag.is_empty() {
            return Err("tag must not be empty".into());
        }
        Ok(("tag", tag.clone(), PurgeScope::Tag(tag)))
    }
}

/// A purge request body, parsed and checked: the request, and its kind, target as given and
/// scope. Public so the parser can be tested on any input.
pub fn parse_purge_request(
    body: &[u8],
) -> Result<(PurgeRequest, (&'static str, String, PurgeScope)), String> {
    let request: PurgeRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid purge request: {e}"))?;
    let scope = request.scope()?;
    Ok((request, scope))
}

/// `http://Host:port/path?q` → (`Some("http")`, `host`, `/path?q`); `//host/path` and
/// `host/path` leave the scheme open (both http and https).
fn split_url(url: &str) -> Result<(Option<String>, String, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => (Some(scheme.to_string()), rest),
        Some(_) => return Err(format!("{url:?}: only http and https URLs are cached")),
        None => (None, url.trim_start_matches("//")),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = crate::proxy::routing::normalize_host(host);
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok((scheme, host, path.to_string()))
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json_response(status, json!({ "error": message }))
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 9110 §11.1) and may be followed by several spaces.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_and_path() {
        assert_eq!(
            split_url("http://Example.com:8080/a?b").unwrap(),
            (Some("http".into()), "example.com".into(), "/a?b".into())
        );
        assert_eq!(
            split_url("example.com").unwrap(),
            (None, "example.com".into(), "/".into())
        );
        assert!(split_url("ftp://x/y").is_err());
        assert!(split_url("http:///y").is_err());
    }

    #[test]
    fn purge_requests_name_exactly_one_target() {
        let parse = |text: &str| serde_json::from_str::<PurgeRequest>(text).unwrap().scope();
        assert!(parse(r#"{"url": "http://h/a", "tag": "t"}"#).is_err());
        assert!(parse(r#"{"soft": true}"#).is_err());
        let (kind, _, scope) = parse(r#"{"tag": "product-1", "soft": true}"#).unwrap();
        assert_eq!((kind, scope), ("tag", PurgeScope::Tag("product-1".into())));
    }

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"short", b"secret-token"));
    }
}
