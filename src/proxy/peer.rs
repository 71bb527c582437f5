//! The cluster on the request path: trusting a peer's signed request, the endpoints only
//! peers may use, forwarding a miss to the key's owner, and what a forwarded request changes.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use pingora::cache::key::CacheHashKey;
use pingora::cache::{CacheMeta, RespCacheable};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

use super::ctx::RequestCtx;
use super::respond::{self, respond_text};
use crate::cache::{cache_key, CacheTarget, MokaStorage};
use crate::cluster::signature::{Signed, MAX_SKEW, PEER_HEADER};
use crate::cluster::{Cluster, HEALTH_PATH, PEER_PATH_PREFIX, PURGE_PATH};
use crate::config::PeerSettings;
use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::purge::{self, PurgeVia};

/// Largest purge body a peer may send.
const MAX_PEER_BODY: usize = 64 * 1024;

/// In a cluster, before routing: answers a peer endpoint (`true`: the request is done), and
/// trusts or drops a peer header.
pub async fn before_routing(
    endpoints: PeerEndpoints<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    if ctx.runtime.cluster.is_none() {
        return Ok(false);
    }
    if serve_endpoint(endpoints, session, ctx).await? {
        return Ok(true);
    }
    accept_peer_header(session.req_header_mut(), ctx);
    Ok(false)
}

/// Sends a `PURGE` of `url` done here to every peer, in the background.
pub fn fan_out_url_purge(ctx: &RequestCtx, url: &str) {
    let Some(cluster) = ctx.runtime.cluster.clone() else {
        return;
    };
    let body = crate::purge::request_body("url", url, false);
    tokio::spawn(async move { cluster.purge_peers(body).await });
}

/// A connection to the owner failed: it is out, and the next node on the ring or the origin
/// serves the request (`true`: the error was the peer's, and is decided).
pub fn after_connect_failure(e: &mut pingora::Error, idempotent: bool, ctx: &mut RequestCtx) -> bool {
    if super::errors::is_client_fault(e) || !forward_failed(ctx) {
        return false;
    }
    e.set_retry(idempotent);
    true
}

/// The owner failed after the connection was made. A pooled connection it had closed is tried
/// again on a new connection; else the owner is out and the request moves on, while nothing of
/// the response was sent (`true`: the error was the peer's, and is decided).
pub fn after_proxy_failure(
    e: &mut pingora::Error,
    idempotent: bool,
    upstream_reused: bool,
    ctx: &mut RequestCtx,
) -> bool {
    if !is_forwarded(ctx) || super::errors::is_client_fault(e) {
        return false;
    }
    let no_response_yet = ctx.upstream.status.is_none();
    if upstream_reused && no_response_yet {
        ctx.cluster.tried.pop();
        ctx.cluster.forwarded_to = None;
        e.retry.decide_reuse(true);
        return true;
    }
    forward_failed(ctx);
    e.set_retry(idempotent && no_response_yet);
    true
}

/// Removes the peer header from the request and, when its signature holds, notes which peer
/// sent the request: it is served here and never forwarded again. A header that does not
/// verify (a client's) is dropped, and the request is a client's like any other.
pub fn accept_peer_header(req: &mut RequestHeader, ctx: &mut RequestCtx) {
    let Some(value) = req.remove_header(PEER_HEADER) else {
        return;
    };
    let Some(cluster) = &ctx.runtime.cluster else {
        return;
    };
    let value = value.to_str().unwrap_or_default();
    let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let signed = Signed {
        method: req.method.as_str(),
        host: host
            .or(req.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default(),
        path,
        body: b"",
    };
    ctx.cluster.from_peer = cluster.verify(value, signed);
    if ctx.cluster.from_peer.is_some() {
        cluster
            .health
            .counters
            .served_for_peers
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// What the peer endpoints act on.
pub struct PeerEndpoints<'a> {
    /// The cache purges apply to.
    pub storage: &'static MokaStorage,
    /// Where purges are counted.
    pub metrics: &'a Metrics,
    /// Where purges are announced.
    pub events: &'a EventSink,
}

/// Answers a request for a peer endpoint (health, purge): `true` when it was one. Only a
/// request signed by a peer (its body included) gets anything but 403.
pub async fn serve_endpoint(
    endpoints: PeerEndpoints<'_>,
    session: &mut Session,
    ctx: &RequestCtx,
) -> Result<bool> {
    let Some(cluster) = &ctx.runtime.cluster else {
        return Ok(false);
    };
    let req = session.req_header();
    let path = req.uri.path().to_string();
    if !path.starts_with(PEER_PATH_PREFIX) {
        return Ok(false);
    }
    let value = req
        .headers
        .get(PEER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let method = req.method.as_str().to_string();
    let body = read_body(session).await;
    let signed = Signed {
        method: &method,
        host: &host,
        path: &path,
        body: &body,
    };
    let Some(peer) = cluster.verify(&value, signed) else {
        respond_text(session, 403, "not a signed peer request\n").await?;
        return Ok(true);
    };
    match (method.as_str(), path.as_str()) {
        ("GET", HEALTH_PATH) => respond_text(session, 200, "ok\n").await?,
        ("POST", PURGE_PATH) => match purge::parse_purge_request(&body) {
            Ok(request) => {
                let request = ctx.runtime.keyed_purge(request);
                let purged = request.apply(endpoints.storage);
                request
                    .report(purged, PurgeVia::Peer(&peer))
                    .send(endpoints.metrics, endpoints.events);
                respond_json(session, &serde_json::json!({ "purged": purged })).await?;
            }
            Err(message) => {
                tracing::warn!(peer, message, "a peer sent a purge this node cannot read");
                respond_text(session, 400, "invalid purge\n").await?;
            }
        },
        _ => respond_text(session, 404, "no such peer endpoint\n").await?,
    }
    Ok(true)
}

/// The request body, up to [`MAX_PEER_BODY`] (what is beyond is left unread: the signature
/// will not hold).
async fn read_body(session: &mut Session) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_PEER_BODY {
            break;
        }
    }
    body
}

async fn respond_json(session: &mut Session, value: &serde_json::Value) -> Result<()> {
    let content_type = (http::header::CONTENT_TYPE, "application/json".to_string());
    respond::respond_locally(
        session,
        200,
        vec![content_type],
        value.to_string(),
        respond::Connection::Keep,
    )
    .await
}

/// The peer a cache miss goes to instead of the origin: the first node on the ring for the
/// URL that answers, unless that is this node, or the request came from a peer (one hop at
/// most), or it is not a cache lookup. When this node is the owner since the peers last
/// changed, the previous owner is asked first whether it still holds the URL.
pub async fn forward_to_owner(ctx: &mut RequestCtx) -> Option<Box<HttpPeer>> {
    let cluster = ctx.runtime.cluster.clone()?;
    if ctx.cluster.from_peer.is_some() || !ctx.cache.enabled || ctx.route.purge {
        return None;
    }
    let target = ctx.route.target.clone()?;
    let key = cache_key(&target).primary_bin();
    let (index, owner) = match cluster.forward_target(&key, &ctx.cluster.tried) {
        Some(owner) => owner,
        None => {
            let (index, previous) = cluster.previous_owner(&key, &ctx.cluster.tried)?;
            if !still_holds(&cluster, previous, &target).await {
                ctx.cluster.tried.push(index);
                return None;
            }
            (index, previous)
        }
    };
    let mut peer = HttpPeer::new(owner.addr, false, String::new());
    let options = &mut peer.options;
    options.connection_timeout = Some(cluster.settings.peer_connect_timeout);
    options.total_connection_timeout = Some(cluster.settings.peer_connect_timeout * 2);
    options.read_timeout = Some(cluster.settings.peer_timeout);
    ctx.cluster.forwarded_to = Some(index);
    ctx.cluster.tried.push(index);
    ctx.upstream.started = Some(std::time::Instant::now());
    ctx.upstream.addr = Some(owner.addr.to_string().into());
    ctx.cache.fill_start.start();
    cluster.health.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    Some(Box::new(peer))
}

/// Whether `peer` holds a fresh copy of `target` (a signed `HEAD` with `only-if-cached`).
async fn still_holds(cluster: &Cluster, peer: &PeerSettings, target: &CacheTarget) -> bool {
    let path = &target.path_and_query;
    let signed = Signed {
        method: "HEAD",
        host: &target.authority,
        path,
        body: b"",
    };
    let probe = cluster
        .fanout
        .client()
        .head(format!("http://{}{path}", peer.addr))
        .header(http::header::HOST, &target.authority)
        .header(http::header::CACHE_CONTROL, "only-if-cached")
        .header(PEER_HEADER, cluster.sign(signed))
        .timeout(cluster.settings.peer_timeout)
        .send()
        .await;
    probe.is_ok_and(|answer| answer.status() == 200)
}

/// Signs a request being forwarded to its owner (after it was made fit for an origin).
pub fn sign_forwarded(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let (Some(cluster), Some(_)) = (&ctx.runtime.cluster, ctx.cluster.forwarded_to) else {
        return Ok(());
    };
    let host = upstream_request
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let path = upstream_request
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method = upstream_request.method.as_str().to_string();
    let signed = Signed {
        method: &method,
        host: &host,
        path: &path,
        body: b"",
    };
    upstream_request.insert_header(PEER_HEADER, cluster.sign(signed))?;
    Ok(())
}

/// The forwarded request failed at its peer: the peer is out of the ring until its check
/// passes, and the request goes to the next node or the origin. `true` when it was forwarded.
pub fn forward_failed(ctx: &mut RequestCtx) -> bool {
    let Some(index) = ctx.cluster.forwarded_to.take() else {
        return false;
    };
    if let Some(cluster) = &ctx.runtime.cluster {
        if let Some(peer) = cluster.settings.peers.get(index) {
            cluster.health.failed(&peer.id);
        }
    }
    true
}

/// A response that came through its owner is kept here for at most `peer_copy_ttl`, so a purge
/// this node missed cannot leave it stale for long.
pub fn cap_peer_copy(decision: RespCacheable, ctx: &RequestCtx) -> RespCacheable {
    let (Some(cluster), Some(_)) = (&ctx.runtime.cluster, ctx.cluster.forwarded_to) else {
        return decision;
    };
    let RespCacheable::Cacheable(meta) = decision else {
        return decision;
    };
    let cap = SystemTime::now() + cluster.settings.peer_copy_ttl;
    if meta.fresh_until() <= cap {
        return RespCacheable::Cacheable(meta);
    }
    let capped = CacheMeta::new(
        cap,
        meta.created(),
        meta.stale_while_revalidate_sec(),
        meta.stale_if_error_sec(),
        meta.response_header().clone(),
    );
    RespCacheable::Cacheable(capped)
}

/// Whether the request is on its way to a peer rather than an origin.
pub fn is_forwarded(ctx: &RequestCtx) -> bool {
    ctx.cluster.forwarded_to.is_some()
}

/// The header with which an owner tells a peer when it fetched the body it relays (Unix
/// milliseconds); removed before the response is stored or served.
pub const FETCHED_HEADER: &str = "x-edgecache-fetched";

/// On a response for a peer: when its body was fetched from the origin (a stored response's
/// creation, else the request's start).
pub fn mark_fetched(
    session: &Session,
    resp: &mut pingora::http::ResponseHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    if ctx.cluster.from_peer.is_none() {
        return Ok(());
    }
    let fetched = match session.cache.maybe_cache_meta() {
        Some(meta) if ctx.cache.found => meta.created(),
        _ => SystemTime::now() - ctx.started.elapsed(),
    };
    let millis = fetched
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    resp.insert_header(FETCHED_HEADER, millis.to_string())?;
    Ok(())
}

/// On a response relayed by the owner: its fill dates from when the owner fetched it (less the
/// clock skew allowed), so a purge made here since keeps this copy out of the cache.
pub fn date_relayed_fill(resp: &mut pingora::http::ResponseHeader, ctx: &RequestCtx) {
    let Some(value) = resp.remove_header(FETCHED_HEADER) else {
        return;
    };
    if ctx.cluster.forwarded_to.is_none() {
        return;
    }
    let Some(millis) = value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    let fetched = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    let age = SystemTime::now().duration_since(fetched).unwrap_or_default() + MAX_SKEW;
    if let Some(at) = std::time::Instant::now().checked_sub(age) {
        ctx.cache.fill_start.back_to(at);
    }
}
