//! After an origin failure: whether it counts against the origin, and whether the request is
//! tried again (on another origin, or on a fresh connection to the same one).

use std::time::Instant;

use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OkOrErr, Result};

use super::ctx::RequestCtx;
use super::errors::{is_client_fault, NO_HEALTHY_ORIGIN};

/// The origin of the request's site (or its rule's pool) to try next (not one tried already). "No origin" is an
/// upstream error, so a stale copy can still be served; after a failed attempt, the failure
/// that made the request look for another origin is what the client hears about.
pub fn next_origin(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let site = ctx
        .site()
        .or_err(ErrorType::InternalError, "request has no site")?;
    let key = ctx
        .route
        .target
        .as_ref()
        .map_or(&[][..], |t| t.path_and_query.as_bytes());
    let pool = site.pool(ctx.route.rule);
    let peer = pool.select(key, &ctx.upstream.tried).ok_or_else(|| {
        let etype = ctx.upstream.last_error.clone().unwrap_or(NO_HEALTHY_ORIGIN);
        Error::explain(etype, "no usable origin").into_up()
    })?;
    let name = pool.origin_name(&peer._address);
    ctx.upstream.started = Some(Instant::now());
    ctx.cache.fill_start.start();
    ctx.upstream.addr = Some(name);
    ctx.upstream.tried.push(peer._address.clone());
    Ok(peer)
}

/// A failure after the connection to an origin was made.
pub struct ProxyFailure<'a> {
    /// The origin's address.
    pub origin: &'a str,
    /// The request may be sent twice (idempotent, and its body is still buffered).
    pub idempotent: bool,
    /// The connection came from the pool.
    pub upstream_reused: bool,
}

/// A connection failure counts against the origin; an idempotent request moves on to another
/// origin, up to the site's retry budget (nothing of the request was sent yet). A client fault
/// is never retried nor held against the origin.
pub fn after_connect_failure(e: &mut Error, origin: &str, idempotent: bool, ctx: &mut RequestCtx) {
    if is_client_fault(e) {
        e.set_retry(false);
        return;
    }
    ctx.upstream.last_error = Some(e.etype().clone());
    let Some(site) = ctx.site() else { return };
    let pool = site.pool(ctx.route.rule);
    pool.record(origin, false);
    let retries_left = ctx.upstream.tried.len() <= pool.retries;
    if retries_left && idempotent {
        e.set_retry(true);
    }
}

/// A failure after connecting (reset, timeout) counts against the origin, and an idempotent
/// request that got no response byte yet is retried on another origin within the budget. A
/// pooled connection the origin had already closed is not the origin's fault: the request is
/// retried on a fresh connection, to the same origin if need be.
pub fn after_proxy_failure(e: &mut Error, failure: &ProxyFailure, ctx: &mut RequestCtx) {
    if is_client_fault(e) {
        // The client went away or misbehaved: not the origin's fault, and nobody is left to
        // retry for.
        e.set_retry(false);
        return;
    }
    ctx.upstream.last_error = Some(e.etype().clone());
    if !failure.idempotent {
        e.set_retry(false);
        return;
    }
    if ctx.site().is_none() {
        return;
    }
    let no_response_yet = ctx.upstream.status.is_none();
    if failure.upstream_reused && no_response_yet {
        e.retry.decide_reuse(true);
        ctx.upstream.tried.pop();
        return;
    }
    let Some(site) = ctx.site() else { return };
    let pool = site.pool(ctx.route.rule);
    pool.record(failure.origin, false);
    let within_budget = ctx.upstream.tried.len() <= pool.retries;
    let timed_out = matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
    e.set_retry(no_response_yet && within_budget && !timed_out);
}
