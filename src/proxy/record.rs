//! What is recorded about each request once it is done: its metrics sample and its
//! access-log line.

use std::time::SystemTime;

use pingora::proxy::Session;
use pingora::Error;

use super::cache_status::CacheOutcome;
use super::ctx::RequestCtx;
use crate::access_log;
use crate::metrics::{Metrics, RequestSample};

/// Counts the request in the metrics and writes its access-log line.
pub fn record_request(metrics: &Metrics, session: &Session, error: Option<&Error>, ctx: &RequestCtx) {
    let req = session.req_header();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let outcome = ctx.cache.outcome;
    let cache = log_label(outcome, ctx);
    let total = ctx.started.elapsed();
    let site_metrics = ctx.site().map(|s| &s.metrics);
    let sample = RequestSample {
        cache,
        status,
        bytes: session.body_bytes_sent(),
        total_seconds: total.as_secs_f64(),
        origin_seconds: ctx.upstream.header_elapsed.map(|d| d.as_secs_f64()),
        hit: outcome.is_some_and(CacheOutcome::served_from_cache),
        lookup: ctx.cache.enabled,
        coalesced: session.cache.lock_duration().is_some(),
        route: ctx.rule().map(|rule| rule.settings.name.as_str()),
    };
    metrics.observe(site_metrics, &sample);
    let Some(log) = &ctx.runtime.access_log else {
        return;
    };
    let error_text = error.map(|e| e.to_string());
    let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    log.log(&access_log::Record {
        time: SystemTime::now() - total,
        client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        method: req.method.as_str(),
        host: ctx.route.target.as_ref().map_or("-", |t| t.host.as_str()),
        path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        protocol: req.version,
        status,
        bytes: session.body_bytes_sent(),
        referer: header(http::header::REFERER),
        user_agent: header(http::header::USER_AGENT),
        cache,
        origin: ctx.upstream.addr.as_deref().unwrap_or("-"),
        upstream: ctx.upstream.header_elapsed,
        total,
        error: error_text.as_deref(),
        route: sample.route,
    });
}

/// The cache label of a request in metrics and the access log: the outcome's, except that a
/// response fetched for a lookup and not stored (uncacheable) is a `pass`, as most caches say,
/// not a `miss`.
fn log_label(outcome: Option<CacheOutcome>, ctx: &RequestCtx) -> &'static str {
    match outcome {
        Some(CacheOutcome::UriMiss | CacheOutcome::VaryMiss) if !ctx.cache.storable => "pass",
        Some(outcome) => outcome.label(),
        None => "-",
    }
}
