//! The proxy: pingora's `ProxyHttp` phases wired to routing, caching and origins.
//!
//! Each phase is a switchboard that decides one thing and delegates to the module that knows:
//! client connections ([`connections`]), routing ([`route`]), cacheability
//! ([`crate::cache::policy`]), variants ([`crate::cache::vary`]), requests to origins
//! ([`headers`]) and retries ([`retry`]), content codings ([`encoding`]), what every response
//! carries ([`decorate`], [`cache_status`]), locally made answers ([`respond`]) and errors
//! ([`errors`]), and what is recorded ([`record`]).

pub mod cache_status;
pub mod connections;
pub mod ctx;
pub mod decorate;
pub mod encoding;
pub mod errors;
pub mod headers;
pub mod peer;
pub mod ranges;
pub mod record;
pub mod respond;
pub mod retry;
pub mod route;
pub mod rules;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, PurgeStatus, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, OkOrErr, Result};

use crate::cache::failed_refreshes::FailedRefreshes;
use crate::cache::policy;
use crate::cache::{cache_key, codings, directives, invalidation, vary, CacheEngine};
use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::purge::{PurgeReport, PurgeVia};
use crate::runtime::SharedRuntime;
use cache_status::{CacheOutcome, CacheStatus};
use ctx::RequestCtx;
use errors::{error_detail, error_status, is_client_fault};
use respond::{frame_for_http10, respond_text};

/// The caching reverse proxy.
pub struct EdgeProxy {
    /// Sites, origins and policies; replaced on reload.
    runtime: SharedRuntime,
    cache: CacheEngine,
    /// URLs whose origin just failed to refresh them.
    failed_refreshes: FailedRefreshes,
    metrics: Arc<Metrics>,
    /// Where `PURGE` requests are announced.
    events: EventSink,
}

impl EdgeProxy {
    /// A proxy serving `runtime` from `cache`, counting requests in `metrics` and announcing
    /// purges on `events`.
    pub fn new(
        runtime: SharedRuntime,
        cache: CacheEngine,
        metrics: Arc<Metrics>,
        events: EventSink,
    ) -> EdgeProxy {
        EdgeProxy {
            runtime,
            cache,
            failed_refreshes: FailedRefreshes::default(),
            metrics,
            events,
        }
    }

    /// Remembers that the origin just failed to refresh the request's URL.
    fn refresh_failed(&self, ctx: &RequestCtx) {
        if let Some(target) = &ctx.route.target {
            self.failed_refreshes.record(target);
        }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    /// Boxed: pingora keeps the context in its request future, in three places, and that
    /// future is built on the stack and then copied into its own box for every request; a
    /// pointer there instead of the whole context keeps about 2 KiB out of that copy.
    type CTX = Box<RequestCtx>;

    /// Each request keeps the runtime current when it arrives until it ends.
    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx::new(self.runtime.load_full()))
    }

    /// No downstream modules: pingora's default adds a (disabled) compression module whose
    /// per-request bookkeeping costs hit throughput for nothing.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// The request header is in: its deadline no longer applies.
    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<()> {
        connections::header_received();
        Ok(())
    }

    /// Routes the request to a site, or answers 400/404.
    /// Answers the cluster's peer endpoints; trusts a peer's signed request; routes the request
    /// to a site, or answers 400/404.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let endpoints = peer::PeerEndpoints {
            storage: self.cache.storage,
            metrics: &self.metrics,
            events: &self.events,
        };
        if peer::before_routing(endpoints, session, ctx).await? {
            return Ok(true);
        }
        route::route(session, ctx).await
    }

    /// Enables the cache for safe requests to caching sites, unless the URL's origin refused
    /// storage last time.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        let Some(wait_for_fills) = route::cache_use(session, ctx) else {
            return Ok(());
        };
        ctx.cache.enabled = true;
        if let (Some(target), false) = (&ctx.route.target, ctx.route.purge) {
            let key = cache_key(target);
            if self.cache.origin_refused(&key) {
                ctx.cache.skipped_refused = true;
                return Ok(());
            }
            ctx.cache.key = Some(key);
        }
        self.cache.enable(&mut session.cache, wait_for_fills);
        Ok(())
    }

    /// An authorised `PURGE` deletes the stored response for its URL (all Vary variants).
    fn is_purge(&self, _session: &Session, ctx: &Self::CTX) -> bool {
        ctx.route.purge
    }

    /// Counts and announces a `PURGE` done on the traffic listener.
    fn purge_response_filter(
        &self,
        _session: &Session,
        ctx: &mut Self::CTX,
        purge_status: PurgeStatus,
        _purge_response: &mut std::borrow::Cow<'static, ResponseHeader>,
    ) -> Result<()> {
        let entries = usize::from(matches!(purge_status, PurgeStatus::Found));
        let target = ctx.route.target.as_ref().map_or(String::new(), |t| {
            format!("{}://{}{}", t.scheme, t.host, t.path_and_query)
        });
        let report = PurgeReport {
            kind: "url",
            target: &target,
            soft: false,
            entries,
            via: PurgeVia::PurgeMethod,
        };
        report.send(&self.metrics, &self.events);
        peer::fan_out_url_purge(ctx, &target);
        Ok(())
    }

    /// Scheme + host + path + query, identical for HTTP/1.1 and HTTP/2. The key's tag tells the
    /// storage which stored coding this client gets.
    fn cache_key_callback(&self, _session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        let target = ctx
            .route
            .target
            .as_ref()
            .or_err(ErrorType::InternalError, "cache enabled without a target")?;
        let mut key = ctx.cache.key.take().unwrap_or_else(|| cache_key(target));
        key.extensions.insert(ctx.cache.fill_start.clone());
        let tag = codings::user_tag(ctx.encoding.compress, ctx.encoding.accepted);
        if !tag.is_empty() {
            key.user_tag = tag.to_string();
        }
        Ok(key)
    }

    /// Applies the request's `no-cache`, `max-age`, `min-fresh` and `max-stale`; serves a stale
    /// copy as it is for a short while after its origin failed to refresh it.
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<ForcedFreshness>> {
        ctx.cache.found = true;
        let forced = policy::request_freshness(session.req_header(), meta, SystemTime::now());
        ctx.cache.forced_by_request = forced == Some(ForcedFreshness::ForceExpired);
        if forced.is_none()
            && !is_fresh
            && ctx
                .route
                .target
                .as_ref()
                .is_some_and(|t| self.failed_refreshes.serves_stale(meta, t))
        {
            ctx.cache.stale_after_failure = true;
            return Ok(Some(ForcedFreshness::ForceFresh));
        }
        Ok(forced)
    }

    /// Selects the stored variant from the response's `Vary`.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let accept_encoding = if ctx.encoding.compress {
            vary::AcceptEncodingVariance::Ignored
        } else {
            vary::AcceptEncodingVariance::Normalized(ctx.encoding.accepted.header_value())
        };
        let key_parts = rules::key_parts(req, ctx);
        let variance = vary::variance(meta, req, accept_encoding, key_parts);
        ctx.cache.vary_lookup |= variance.is_some();
        variance
    }

    /// `only-if-cached` requests never reach the origin: 504 instead.
    async fn proxy_upstream_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        if policy::only_if_cached(session.req_header()) {
            respond_text(session, 504, "not in cache (only-if-cached)\n").await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Picks an origin of the request's site. "No origin" is an upstream error, so a stale copy
    /// can still be served.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        match peer::forward_to_owner(ctx).await {
            Some(owner) => Ok(owner),
            None => retry::next_origin(ctx),
        }
    }

    /// Strips hop-by-hop headers and adds `Via` and `X-Forwarded-*`; sends origin-form URIs
    /// with a `Host` header whatever the client's protocol.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let version = session.req_header().version;
        headers::prepare_for_origin(upstream_request, ctx, client_ip, version)?;
        rules::rewrite_for_origin(upstream_request, ctx)?;
        encoding::origin_codings(upstream_request, session.cache.enabled(), ctx)?;
        peer::sign_forwarded(upstream_request, ctx)
    }

    /// Decides whether the origin's response is stored and for how long.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        let merged;
        let resp = match ctx.upstream.not_modified.take() {
            Some(fields) => {
                merged = policy::merge_not_modified(resp, &fields);
                &merged
            }
            None => resp,
        };
        if resp.status.is_server_error() && ctx.cache.found {
            // A refresh (in the background or not) that failed: the stored copy stays in service.
            self.refresh_failed(ctx);
        }
        let now = SystemTime::now();
        let decision =
            ctx.runtime
                .policy
                .response_cacheability_under(session.req_header(), resp, now, rules::ttl(ctx));
        let decision = peer::cap_peer_copy(decision, ctx);
        ctx.cache.storable = decision.is_cacheable();
        Ok(decision)
    }

    /// Records origin timing and strips hop-by-hop headers before the response is stored.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        errors::check_total_timeout(ctx)?;
        ctx.upstream.header_elapsed = ctx.upstream.started.map(|t| t.elapsed());
        ctx.upstream.status = Some(resp.status.as_u16());
        if let (Some(site), Some(addr), false) = (ctx.site(), &ctx.upstream.addr, peer::is_forwarded(ctx)) {
            site.pool(ctx.route.rule).record(addr, resp.status.as_u16() < 500);
        }
        headers::strip_response_hop_by_hop(resp);
        peer::date_relayed_fill(resp, ctx);
        // Whatever the origin spoke, the client gets an HTTP/1.1 response (framed for its own
        // version by pingora); an HTTP/1.0 status line would forbid chunked framing.
        resp.set_version(http::Version::HTTP_11);
        if let Some(length) = headers::repeated_content_length(&resp.headers) {
            resp.insert_header(http::header::CONTENT_LENGTH, length)?;
        }
        encoding::note_origin_response(session.req_header(), resp, ctx);
        if ctx.cache.skipped_refused && !directives::refuses_storage(resp) {
            if let Some(target) = &ctx.route.target {
                self.cache.forget_refusal(&cache_key(target));
            }
        }
        if resp.status == http::StatusCode::NOT_MODIFIED {
            encoding::keep_stored_etag(resp, session.cache.maybe_cache_meta());
            ctx.upstream.not_modified = Some(resp.headers.clone());
        }
        Ok(())
    }

    /// Aborts an origin response that outlives the site's `total_timeout`.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        errors::check_total_timeout(ctx)?;
        Ok(None)
    }

    /// Final touches on every response, hits included: `Cache-Status`, `Via`, no
    /// `CDN-Cache-Control`; and invalidation after unsafe methods.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let outcome = decorate::cache_outcome(session, ctx);
        ctx.cache.outcome = Some(outcome);
        if outcome == CacheOutcome::StaleIfError && !ctx.cache.stale_after_failure {
            self.refresh_failed(ctx);
        }
        decorate::decorate(session, resp, ctx, &self.cache.status_name)?;
        rules::edit_response(resp, ctx)?;
        peer::mark_fetched(session, resp, ctx)?;
        if let Some(target) = &ctx.route.target {
            invalidation::invalidate_after_unsafe(self.cache.storage, target, session.req_header(), resp);
        }
        frame_for_http10(session, resp);
        encoding::start_compression(session, resp, ctx)
    }

    /// Compresses a response that is not served from the cache as it streams through. A large
    /// body from a fast origin would otherwise keep the worker thread compressing without a
    /// break (tokio preempts by I/O operations, not time), so the stream pauses briefly after
    /// every few milliseconds of compression to let other requests run.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        encoding::compress_chunk(body, end_of_stream, ctx)
    }

    /// A connection failure counts against the origin; idempotent requests move on to another
    /// origin, up to the site's retry budget (nothing of the request was sent yet).
    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent();
        if peer::after_connect_failure(&mut e, idempotent, ctx) {
            return e;
        }
        retry::after_connect_failure(&mut e, &peer._address.to_string(), idempotent, ctx);
        e
    }

    /// A failure after connecting (reset, timeout) counts against the origin, and an idempotent
    /// request that got no response byte yet is retried on another origin within the budget.
    /// A pooled connection the origin had already closed is not the origin's fault: the request
    /// is retried on a fresh connection, to the same origin if need be.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        upstream_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("origin {peer}"));
        let idempotent =
            session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        if peer::after_proxy_failure(&mut e, idempotent, upstream_reused, ctx) {
            return e;
        }
        let failure = retry::ProxyFailure {
            origin: &peer._address.to_string(),
            idempotent,
            upstream_reused,
        };
        retry::after_proxy_failure(&mut e, &failure, ctx);
        e
    }

    /// `Range` handling for responses from the cache and fills: GET only, strong `If-Range`,
    /// never a range of an empty body ([`ranges`]).
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> pingora::proxy::RangeType {
        ranges::range_type(session.req_header(), resp)
    }

    /// Serves stale while revalidating whenever the stored response allows it, and on upstream
    /// errors (connection failures, timeouts, 5xx) within its stale-if-error window.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    /// Answers 504 for origin timeouts, 502 for other origin failures, with a `Cache-Status`
    /// saying why.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Self::CTX) -> FailToProxy {
        let code = error_status(e);
        if code > 0 && session.response_written().is_none() {
            let outcome = decorate::cache_outcome(session, ctx);
            ctx.cache.outcome = Some(outcome);
            let status = CacheStatus::of_failure(&self.cache.status_name, outcome, error_detail(e));
            respond::error_with_status(session, code, status.render(), errors::error_body(e)).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts and logs the request; a request its client abandoned counts towards the
    /// connection's reset-flood check.
    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        if error.is_some_and(is_client_fault) {
            self.metrics.clients.client_error();
            connections::client_cancelled();
        }
        record::record_request(&self.metrics, session, error, ctx);
    }

    /// Failures caused by clients (resets, closed connections, bad requests) are routine at an
    /// edge: they are counted, and logged at debug level only, so junk traffic cannot flood
    /// the log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        is_client_fault(error)
    }
}
