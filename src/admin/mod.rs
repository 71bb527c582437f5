//! The admin API: a separate listener (loopback by default) for operators and scripts.
//!
//! `GET /` is the dashboard ([`dashboard`]): a page with no data in it, which asks for the
//! token and then calls the endpoints below like any script. Every other request needs
//! `Authorization: Bearer <token>`; without it the answer is 401 and nothing else happens. The
//! token is the running config's, so a reload rotates it. Endpoints:
//! - `GET /status`: JSON with requests, cache size, hit ratio, per-site origin health, config
//!   version, uptime and webhook counters;
//! - `GET /history?after=<ms>`: the samples of the last 15 minutes ([`History`]) newer than
//!   `after` (milliseconds since the epoch; all without it);
//! - `GET /events`: the newest events (purges, health changes, reloads...), newest first;
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
use serde_json::json;

mod dashboard;

use crate::cache::MokaStorage;
use crate::cluster::Cluster;
use crate::events::EventSink;
use crate::history::{History, SAMPLE_INTERVAL};
use crate::metrics::Metrics;
use crate::purge::{self, PurgeVia};
use crate::reload::Reloader;
use crate::runtime::{SharedRuntime, Site};
use crate::status::{
    CacheStatus, ClusterStatus, ConfigStatus, NodeStatus, OriginStatus, PeerStatus, PurgeDeliveries,
    RequestTotals, SiteStatus, WebhookCounts,
};

/// How `/status` and `/metrics` show the cluster.
fn cluster_status(cluster: &Cluster) -> ClusterStatus {
    let counters = &cluster.health.counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let peers = cluster.settings.peers.iter().map(|peer| PeerStatus {
        id: peer.id.clone(),
        addr: peer.addr.to_string(),
        weight: peer.weight,
        healthy: peer.id == cluster.node() || cluster.health.is_up(&peer.id),
    });
    ClusterStatus {
        node: cluster.node().to_string(),
        ring_fingerprint: cluster.ring.fingerprint().to_string(),
        peers: peers.collect(),
        forwarded: load(&counters.forwarded),
        served_for_peers: load(&counters.served_for_peers),
        peer_failures: load(&counters.peer_failures),
        purges: PurgeDeliveries {
            sent: load(&counters.purges_sent),
            failed: load(&counters.purge_failures),
            dropped: load(&counters.purges_dropped),
        },
        purge_fanout_max_ms: load(&counters.purge_fanout_max_us) as f64 / 1000.0,
    }
}

/// How `/status` and `/metrics` show `site`; `history` knows when its origins changed health.
fn site_status(site: &Site, history: &History) -> SiteStatus {
    let not_after = site.settings.tls.as_ref().map(|c| c.not_after);
    let name = site.settings.hosts.first().map_or("default", String::as_str);
    let route_pools = site
        .routes
        .iter()
        .filter_map(|r| Some((Some(r.settings.name.as_str()), r.origins.as_ref()?)));
    let origins = std::iter::once((None, &site.origins))
        .chain(route_pools)
        .flat_map(|(route, pool)| pool.health().into_iter().map(move |o| (route, o)))
        .map(|(route, o)| OriginStatus {
            health_since: history
                .health_changed(name, &o.addr)
                .map(crate::access_log::rfc3339),
            addr: o.addr,
            route: route.map(str::to_string),
            backup: o.backup,
            healthy: o.healthy,
            failures: o.failures,
            last_failure: o.last_failure.map(crate::access_log::rfc3339),
        });
    SiteStatus {
        name: name.to_string(),
        hosts: site.settings.hosts.clone(),
        default: site.settings.default,
        origins: origins.collect(),
        certificate_expires: not_after.map(crate::access_log::rfc3339),
        certificate_not_after: not_after,
    }
}

/// Largest request body accepted (purge requests are tiny).
const MAX_BODY: usize = 64 * 1024;

/// The admin application.
pub struct AdminApi {
    runtime: SharedRuntime,
    storage: &'static MokaStorage,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    events: EventSink,
    history: Arc<History>,
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
        history: Arc<History>,
    ) -> AdminApi {
        AdminApi {
            runtime,
            storage,
            metrics,
            reloader,
            events,
            history,
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

    /// The node's state now, for `/status` and `/metrics`.
    fn snapshot(&self) -> NodeStatus {
        let runtime = self.runtime.load_full();
        let (hits, lookups) = self.metrics.hits_and_lookups();
        let stats = &self.events.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let totals = self.metrics.totals.snapshot();
        NodeStatus {
            node: self.events.node().to_string(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            config: ConfigStatus {
                version: runtime.version,
                loaded_at: crate::access_log::rfc3339(runtime.loaded_at),
            },
            requests: RequestTotals {
                total: totals.requests,
                server_errors: totals.server_errors,
                bytes_from_cache: totals.bytes_from_cache,
                bytes_from_origin: totals.bytes_from_origin,
            },
            cache: CacheStatus {
                entries: self.storage.entry_count(),
                bytes: self.storage.weighted_size(),
                max_bytes: self.storage.max_bytes(),
                evictions: self.storage.evictions(),
                hits,
                lookups,
                hit_ratio: CacheStatus::ratio(hits, lookups),
            },
            sites: runtime
                .sites
                .iter()
                .map(|site| site_status(site, &self.history))
                .collect(),
            webhooks: WebhookCounts {
                delivered: load(&stats.delivered),
                failed: load(&stats.failed),
                retried: load(&stats.retried),
                dropped: load(&stats.dropped),
            },
            cluster: runtime.cluster.as_deref().map(cluster_status),
        }
    }

    fn status(&self) -> Response<Vec<u8>> {
        json_response(StatusCode::OK, json!(self.snapshot()))
    }

    /// The samples newer than the `after` query parameter.
    fn history(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let after = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("after="))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let samples = self.history.samples_after(after);
        let answer = json!({ "interval_seconds": SAMPLE_INTERVAL.as_secs(), "samples": samples });
        compact_json_response(StatusCode::OK, &answer)
    }

    fn events(&self) -> Response<Vec<u8>> {
        compact_json_response(StatusCode::OK, &json!({ "events": self.events.recent() }))
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let text = self.metrics.render(&self.snapshot());
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .body(text.into_bytes())
            .unwrap_or_default()
    }

    /// Applies a purge here and, in a cluster, on every peer (their answers listed).
    async fn purge(&self, body: &[u8]) -> Response<Vec<u8>> {
        let purge = match purge::parse_purge_request(body) {
            Ok(parsed) => parsed,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        let purge = self.runtime.load().keyed_purge(purge);
        let purged = purge.apply(self.storage);
        let report = purge.report(purged, PurgeVia::AdminApi);
        report.send(&self.metrics, &self.events);
        let Some(cluster) = self.runtime.load().cluster.clone() else {
            return json_response(StatusCode::OK, json!({ "purged": purged, "soft": purge.soft }));
        };
        let peers = cluster.purge_peers(purge.request_body()).await;
        let answer = json!({ "purged": purged, "soft": purge.soft, "node": cluster.node(), "peers": peers });
        json_response(StatusCode::OK, answer)
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
        let request = session.req_header();
        if let Some(asset) = dashboard::asset(&request.method, request.uri.path()) {
            return asset;
        }
        if !self.authorized(session) {
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            resp.headers_mut()
                .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
            return resp;
        }
        let method = session.req_header().method.clone();
        let uri = session.req_header().uri.clone();
        match (method.as_str(), uri.path()) {
            ("GET", "/status") => self.status(),
            ("GET", "/history") => self.history(uri.query()),
            ("GET", "/events") => self.events(),
            ("GET", "/metrics") => self.metrics(),
            ("POST", "/purge") => match read_body(session).await {
                Ok(body) => self.purge(&body).await,
                Err(resp) => resp,
            },
            ("POST", "/reload") => self.reload(),
            (_, "/status" | "/history" | "/events" | "/metrics" | "/purge" | "/reload") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }
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
    json_body(status, body)
}

/// Like [`json_response`] without the indentation, for the larger answers scripts poll.
fn compact_json_response(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    json_body(status, serde_json::to_vec(value).unwrap_or_default())
}

/// A JSON answer that is never cached.
fn json_body(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
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
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"short", b"secret-token"));
    }
}
