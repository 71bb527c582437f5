//! What every response gets on its way to the client, hits included: `Cache-Status`, `Via`,
//! `Server-Timing` when enabled, HSTS over HTTPS; and what it loses: the purge-tag headers,
//! which are for this cache only, and `CDN-Cache-Control` when the site says so.

use pingora::cache::CachePhase;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::cache_status::{remaining_ttl, CacheOutcome, CacheStatus, CACHE_STATUS};
use super::ctx::RequestCtx;
use crate::cache::directives::CDN_CACHE_CONTROL_NAME;
use crate::cache::storage::TAG_HEADERS;

/// Adds and removes the headers every response gets; `ctx.cache.outcome` is set.
pub fn decorate(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &RequestCtx,
    status_name: &str,
) -> Result<()> {
    let Some(outcome) = ctx.cache.outcome else {
        return Ok(());
    };
    // Looked up before removing: pingora's removal also searches its case map, and the
    // fields are usually absent.
    if ctx.site().is_some_and(|s| s.settings.strip_cdn_cache_control)
        && resp.headers.contains_key(&CDN_CACHE_CONTROL_NAME)
    {
        resp.remove_header(&CDN_CACHE_CONTROL_NAME);
    }
    for name in &TAG_HEADERS {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
    if ctx.runtime.server_timing {
        resp.insert_header("server-timing", server_timing(ctx, outcome))?;
    }
    resp.append_header(
        http::header::VIA,
        ctx.runtime.via.for_version(session.req_header().version),
    )?;
    resp.insert_header(
        CACHE_STATUS,
        cache_status_header(status_name, session, ctx, outcome),
    )?;
    if ctx.route.scheme == "https" {
        if let Some(hsts) = ctx.site().and_then(|s| s.settings.hsts.clone()) {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
    }
    Ok(())
}

/// Outcome of the cache for this response, from pingora's phase and what the ctx saw.
pub fn cache_outcome(session: &Session, ctx: &RequestCtx) -> CacheOutcome {
    let trace = &ctx.cache;
    if trace.stale_after_failure {
        return CacheOutcome::StaleIfError;
    }
    match session.cache.phase() {
        CachePhase::Hit => CacheOutcome::Hit,
        CachePhase::StaleUpdating => CacheOutcome::StaleWhileRevalidate,
        CachePhase::Stale => CacheOutcome::StaleIfError,
        _ if trace.forced_by_request => CacheOutcome::Request,
        _ if trace.found => CacheOutcome::Stale,
        _ if trace.vary_lookup => CacheOutcome::VaryMiss,
        _ if trace.enabled => CacheOutcome::UriMiss,
        _ => CacheOutcome::Bypass,
    }
}

/// The `Cache-Status` value of a response served or forwarded normally.
pub fn cache_status_header(name: &str, session: &Session, ctx: &RequestCtx, outcome: CacheOutcome) -> String {
    let phase = session.cache.phase();
    let meta = session
        .cache
        .maybe_cache_meta()
        .filter(|_| outcome != CacheOutcome::Bypass);
    let stored = match phase {
        CachePhase::Miss | CachePhase::Expired => ctx.cache.storable,
        CachePhase::Revalidated => true,
        _ => false,
    };
    CacheStatus {
        name,
        outcome,
        ttl: meta
            .filter(|_| outcome.served_from_cache() || stored)
            .map(remaining_ttl),
        fwd_status: ctx.upstream.status,
        stored,
        detail: (super::rules::overrides_ttl(ctx) && (stored || outcome.served_from_cache()))
            .then_some("override"),
    }
    .render()
}

/// `Server-Timing`: the cache outcome, the origin's time to response header, and the
/// proxy's total time so far.
pub fn server_timing(ctx: &RequestCtx, outcome: CacheOutcome) -> String {
    let mut timing = format!("cache;desc={}", outcome.label());
    if let Some(origin) = ctx.upstream.header_elapsed {
        timing.push_str(&format!(", origin;dur={:.1}", origin.as_secs_f64() * 1000.0));
    }
    timing.push_str(&format!(
        ", edge;dur={:.1}",
        ctx.started.elapsed().as_secs_f64() * 1000.0
    ));
    timing
}
