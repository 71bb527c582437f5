//! The proxy: pingora's `ProxyHttp` phases wired to routing, caching and origins.
//!
//! Each phase is a switchboard that decides one thing and delegates to the module that knows:
//! routing ([`routing`]), cacheability ([`crate::cache::policy`]), variants
//! ([`crate::cache::vary`]), headers ([`headers`]) and `Cache-Status` ([`cache_status`]).

pub mod cache_status;
pub mod connections;
pub mod ctx;
pub mod headers;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, PurgeStatus, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, OkOrErr, OrErr, Result};

use crate::access_log;
use crate::authority;
use crate::cache::policy::{self, CDN_CACHE_CONTROL};
use crate::cache::storage::TAG_HEADERS;
use crate::cache::{cache_key, variants, vary, CacheTarget, MokaStorage};
use crate::compression::{self, Accepted, Coding, CompressionPolicy, Eligibility};
use crate::config::Config;
use crate::events::EventSink;
use crate::metrics::{Metrics, RequestSample};
use crate::purge::{self, PurgeReport, PurgeVia};
use crate::runtime::{SharedRuntime, Site};
use cache_status::{CacheOutcome, CacheStatus};
use ctx::RequestCtx;

/// `CDN-Cache-Control`, parsed once (it is removed from every response).
const CDN_CACHE_CONTROL_NAME: http::HeaderName = http::HeaderName::from_static(CDN_CACHE_CONTROL);

/// The `Cache-Status` response header (RFC 9211).
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// Shards of the uncacheable-key predictor.
const PREDICTOR_SHARDS: usize = 16;

/// The shared cache objects (pingora needs them `'static`) and their fixed settings.
pub struct CacheEngine {
    /// Stored responses.
    pub storage: &'static MokaStorage,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static Predictor<PREDICTOR_SHARDS>,
    max_object_size: usize,
    lock_timeout: Duration,
    status_name: String,
}

impl CacheEngine {
    /// Builds (and leaks, once per process) the cache described by `config`.
    pub fn new(config: &Config) -> CacheEngine {
        let settings = &config.cache;
        let compression = CompressionPolicy::new(&config.compression);
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(settings.lock_timeout));
        let predictor = Box::leak(Box::new(Predictor::new(
            1024,
            Some(policy::is_request_specific_reason),
        )));
        CacheEngine {
            storage: MokaStorage::new(settings.max_memory, settings.keep_stale)
                .with_compression(compression, settings.max_object_size)
                .leak(),
            lock,
            predictor,
            max_object_size: settings.max_object_size,
            lock_timeout: settings.lock_timeout,
            status_name: settings.status_name.clone(),
        }
    }
}

/// After an origin failed to refresh a stored response, how long its stale copy is served
/// without asking the origin again (within the copy's stale-if-error or stale-while-revalidate
/// window): requests that were waiting for the failed refresh, and those arriving just after it,
/// get the stale copy instead of queueing for the next failure.
const FAILED_REFRESH_BACKOFF: Duration = Duration::from_secs(2);

/// The caching reverse proxy.
pub struct EdgeProxy {
    /// Sites, origins and policies; replaced on reload.
    runtime: SharedRuntime,
    cache: CacheEngine,
    /// URLs (primary key hashes) whose origin just failed to refresh them.
    failed_refreshes: moka::sync::Cache<HashBinary, ()>,
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
            failed_refreshes: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILED_REFRESH_BACKOFF)
                .build(),
            metrics,
            events,
        }
    }

    fn site<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a Site> {
        ctx.route.site.and_then(|i| ctx.runtime.sites.get(i))
    }

    /// Decides the request's site and cache target; answers 400/404 itself when there is none.
    /// An HTTP/1.0 request may omit `Host`: it goes to the default site, uncached.
    async fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let scheme = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            "https"
        } else {
            "http"
        };
        let runtime = ctx.runtime.clone();
        let default_site = runtime.router.default_site();
        let (host, authority) = match authority::host_and_authority(req, scheme) {
            Ok((host, authority)) => (Some(host), Some(authority)),
            Err(false) if default_site.is_some() && authority::is_http10_without_host(req) => (None, None),
            Err(bad_port) => {
                let message = if bad_port {
                    "invalid port in Host header\n"
                } else {
                    "missing or invalid Host header\n"
                };
                respond_text(session, 400, message).await?;
                return Ok(true);
            }
        };
        let site = match &host {
            Some(host) => runtime.router.route(host),
            None => default_site,
        };
        let Some(site) = site else {
            respond_text(session, 404, "no site is configured for this host\n").await?;
            return Ok(true);
        };
        let settings = &runtime.sites[site].settings;
        for name in &settings.strip_request_headers {
            session.req_header_mut().remove_header(name);
        }
        ctx.route.site = Some(site);
        ctx.route.scheme = scheme;
        ctx.encoding.compress = settings.compress;
        ctx.encoding.accepted = Accepted::of_request(session.req_header());
        ctx.route.target = match (&host, authority) {
            (Some(host), Some(authority)) => {
                CacheTarget::with_authority(session.req_header(), scheme, host.clone(), authority)
            }
            _ => None,
        };
        if session.req_header().method.as_str() == "PURGE" {
            return self.authorise_purge(session, ctx).await;
        }
        if let (Some(host), "http", true) = (&host, scheme, settings.redirect_https) {
            self.redirect_to_https(session, host, runtime.https_port).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Lets a `PURGE` through to the cache when its client may purge (else 403) and the site
    /// caches (else 405).
    async fn authorise_purge(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if !purge::may_purge(client, &ctx.runtime.purge_allow) {
            respond_text(session, 403, "PURGE is not allowed from this address\n").await?;
            return Ok(true);
        }
        if !self.site(ctx).is_some_and(|s| s.settings.cache) || ctx.route.target.is_none() {
            respond_text(session, 405, "nothing is cached for this URL\n").await?;
            return Ok(true);
        }
        ctx.route.purge = true;
        Ok(false)
    }

    /// An upstream timeout error once the origin response has taken longer than `total_timeout`.
    fn check_total_timeout(&self, ctx: &RequestCtx) -> Result<()> {
        let limit = self.site(ctx).and_then(|s| s.settings.total_timeout);
        let elapsed = ctx.upstream.started.map(|t| t.elapsed());
        match (limit, elapsed) {
            (Some(limit), Some(elapsed)) if elapsed > limit => Err(Error::explain(
                ErrorType::ReadTimedout,
                "origin response exceeded total_timeout",
            )
            .into_up()),
            _ => Ok(()),
        }
    }

    /// Answers a plain HTTP request with a 308 to the same path and query over HTTPS.
    async fn redirect_to_https(
        &self,
        session: &mut Session,
        host: &str,
        https_port: Option<u16>,
    ) -> Result<()> {
        let path = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let location = match https_port {
            Some(port) => format!("https://{host}:{port}{path}"),
            None => format!("https://{host}{path}"),
        };
        respond_locally(
            session,
            308,
            vec![(http::header::LOCATION, location)],
            "",
            Connection::Keep,
        )
        .await
    }

    /// The primary key hash of the request's URL.
    fn primary_hash(ctx: &RequestCtx) -> Option<HashBinary> {
        ctx.route.target.as_ref().map(|t| cache_key(t).primary_bin())
    }

    /// Remembers that the origin just failed to refresh the request's URL.
    fn refresh_failed(&self, ctx: &RequestCtx) {
        if let Some(hash) = Self::primary_hash(ctx) {
            self.failed_refreshes.insert(hash, ());
        }
    }

    /// Whether a stale stored response is served as it is because its origin just failed to
    /// refresh it and it is within a window that allows serving it stale.
    fn serve_stale_after_failure(&self, meta: &CacheMeta, ctx: &RequestCtx) -> bool {
        let now = SystemTime::now();
        let within_window = meta.serve_stale_if_error(now) || meta.serve_stale_while_revalidate(now);
        within_window && Self::primary_hash(ctx).is_some_and(|h| self.failed_refreshes.contains_key(&h))
    }

    /// Outcome of the cache for this response, from pingora's phase and what the ctx saw.
    fn cache_outcome(session: &Session, ctx: &RequestCtx) -> CacheOutcome {
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

    fn cache_status_header(&self, session: &Session, ctx: &RequestCtx, outcome: CacheOutcome) -> String {
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
            name: &self.cache.status_name,
            outcome,
            ttl: meta
                .filter(|_| outcome.served_from_cache() || stored)
                .map(remaining_ttl),
            fwd_status: ctx.upstream.status,
            stored,
            detail: None,
        }
        .render()
    }

    /// After a successful unsafe request, drops the stored responses it may have changed
    /// (RFC 9111 §4.4): the target URL and same-host `Location` / `Content-Location`.
    fn invalidate_after_unsafe(&self, req: &RequestHeader, resp: &ResponseHeader, ctx: &RequestCtx) {
        let Some(target) = &ctx.route.target else { return };
        if !is_unsafe(&req.method) || !(200..400).contains(&resp.status.as_u16()) {
            return;
        }
        self.cache.storage.invalidate(&cache_key(target));
        for name in ["location", "content-location"] {
            let Some(value) = resp.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(path) = same_host_path(value, &target.host) {
                self.cache
                    .storage
                    .invalidate(&cache_key(&target.with_path(&path)));
            }
        }
    }

    /// Sets up on-the-fly compression of a compressible response from the origin (misses and
    /// uncacheable responses; stored responses already carry their coding).
    fn start_compression(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let from_cache = matches!(
            session.cache.phase(),
            CachePhase::Hit
                | CachePhase::Stale
                | CachePhase::StaleUpdating
                | CachePhase::Revalidated
                | CachePhase::RevalidatedNoCache(_)
        );
        if !ctx.encoding.compress || from_cache {
            return Ok(());
        }
        let runtime = ctx.runtime.clone();
        let policy = &runtime.compression;
        if policy.eligibility(resp) != Eligibility::Compress {
            return Ok(());
        }
        compression::add_vary_accept_encoding(resp)?;
        let accepted = ctx.encoding.accepted;
        let (coding, level) = if accepted.brotli {
            (Coding::Brotli, policy.settings.stream_brotli_level)
        } else if accepted.gzip {
            (Coding::Gzip, policy.settings.stream_gzip_level)
        } else {
            return Ok(());
        };
        // A range of the identity body cannot be re-encoded, and an HTTP/1.0 client cannot
        // receive a chunked stream: both get identity.
        let req = session.req_header();
        if req.headers.contains_key(http::header::RANGE) || req.version < http::Version::HTTP_11 {
            return Ok(());
        }
        compression::recode_header(resp, Coding::Identity, coding, true)?;
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.remove_header(&http::header::ACCEPT_RANGES);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        if session.req_header().method != http::Method::HEAD {
            ctx.encoding.encoder = compression::stream::StreamEncoder::new(coding, level);
        }
        Ok(())
    }

    /// Counts the request in the metrics and writes its access-log line.
    fn record_request(&self, session: &Session, error: Option<&Error>, ctx: &RequestCtx) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let outcome = ctx.cache.outcome;
        let cache = outcome.map_or("-", CacheOutcome::label);
        let total = ctx.started.elapsed();
        let site_metrics = self.site(ctx).map(|s| &s.metrics);
        let sample = RequestSample {
            cache,
            status,
            bytes: session.body_bytes_sent(),
            total_seconds: total.as_secs_f64(),
            origin_seconds: ctx.upstream.header_elapsed.map(|d| d.as_secs_f64()),
            hit: outcome.is_some_and(CacheOutcome::served_from_cache),
            lookup: ctx.cache.enabled,
            coalesced: session.cache.lock_duration().is_some(),
        };
        self.metrics.observe(site_metrics, &sample);
        let Some(log) = &ctx.runtime.access_log else {
            return;
        };
        let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        log.log(&access_log::Record {
            time: access_log::rfc3339(SystemTime::now() - total),
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map_or("-".into(), |a| a.ip().to_string()),
            method: req.method.as_str(),
            host: ctx.route.target.as_ref().map_or("-", |t| t.host.as_str()),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            protocol: format!("{:?}", req.version),
            status,
            bytes: session.body_bytes_sent(),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            cache,
            origin: ctx.upstream.addr.as_deref().unwrap_or("-"),
            upstream_ms: ctx.upstream.header_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            total_ms: total.as_secs_f64() * 1000.0,
            error: error.map(|e| e.to_string()),
        });
    }

    /// `Server-Timing`: the cache outcome, the origin's time to response header, and the
    /// proxy's total time so far.
    fn server_timing(ctx: &RequestCtx, outcome: CacheOutcome) -> String {
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
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    /// Each request keeps the runtime current when it arrives until it ends.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.runtime.load_full())
    }

    /// No downstream modules: pingora's default adds a (disabled) compression module whose
    /// per-request bookkeeping costs hit throughput for nothing.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// The request header is in: its deadline no longer applies.
    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        connections::header_received();
        Ok(())
    }

    /// Routes the request to a site, or answers 400/404.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.route(session, ctx).await
    }

    /// Enables the cache for safe requests to caching sites.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let cacheable_method = matches!(
            session.req_header().method,
            http::Method::GET | http::Method::HEAD
        ) || ctx.route.purge;
        let site_caches = self.site(ctx).is_some_and(|s| s.settings.cache);
        if !cacheable_method || !site_caches || ctx.route.target.is_none() {
            return Ok(());
        }
        // A GET or HEAD with a body ("fat GET") is forwarded with it; the response may depend
        // on the body, which the key does not hold, so it is neither looked up nor stored.
        if !ctx.route.purge && !session.is_body_empty() {
            return Ok(());
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.cache.lock_timeout);
        let engine = &self.cache;
        session.cache.enable(
            engine.storage,
            None,
            Some(engine.predictor),
            Some(engine.lock),
            Some(overrides),
        );
        session.cache.set_max_file_size_bytes(engine.max_object_size);
        ctx.cache.enabled = true;
        Ok(())
    }

    /// An authorised `PURGE` deletes the stored response for its URL (all Vary variants).
    fn is_purge(&self, _session: &Session, ctx: &RequestCtx) -> bool {
        ctx.route.purge
    }

    /// Counts and announces a `PURGE` done on the traffic listener.
    fn purge_response_filter(
        &self,
        _session: &Session,
        ctx: &mut RequestCtx,
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
        Ok(())
    }

    /// Scheme + host + path + query, identical for HTTP/1.1 and HTTP/2. The key's tag tells the
    /// storage which stored coding this client gets.
    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let target = ctx
            .route
            .target
            .as_ref()
            .or_err(ErrorType::InternalError, "cache enabled without a target")?;
        let mut key = cache_key(target);
        key.extensions.insert(ctx.cache.fill_start.clone());
        let tag = variants::user_tag(ctx.encoding.compress, ctx.encoding.accepted);
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
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        ctx.cache.found = true;
        let forced = policy::request_freshness(session.req_header(), meta, SystemTime::now());
        ctx.cache.forced_by_request = forced == Some(ForcedFreshness::ForceExpired);
        if forced.is_none() && !is_fresh && self.serve_stale_after_failure(meta, ctx) {
            ctx.cache.stale_after_failure = true;
            return Ok(Some(ForcedFreshness::ForceFresh));
        }
        Ok(forced)
    }

    /// Selects the stored variant from the response's `Vary`.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let accept_encoding = if ctx.encoding.compress {
            vary::AcceptEncodingVariance::Ignored
        } else {
            vary::AcceptEncodingVariance::Normalized(ctx.encoding.accepted.header_value())
        };
        let variance = vary::variance(meta, req, accept_encoding);
        ctx.cache.vary_lookup |= variance.is_some();
        variance
    }

    /// `only-if-cached` requests never reach the origin: 504 instead.
    async fn proxy_upstream_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<bool> {
        if policy::only_if_cached(session.req_header()) {
            respond_text(session, 504, "not in cache (only-if-cached)\n").await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Picks an origin of the request's site. "No origin" is an upstream error, so a stale copy
    /// can still be served.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let site = self
            .site(ctx)
            .or_err(ErrorType::InternalError, "request has no site")?;
        let key = ctx
            .route
            .target
            .as_ref()
            .map_or(&[][..], |t| t.path_and_query.as_bytes());
        let peer = site.origins.select(key, &ctx.upstream.tried).ok_or_else(|| {
            // An upstream error, so a stale copy can still be served; after a failed attempt,
            // the failure that made us look for another origin is what the client hears about.
            let etype = ctx
                .upstream
                .last_error
                .clone()
                .unwrap_or(ErrorType::HTTPStatus(502));
            Error::explain(etype, "no usable origin").into_up()
        })?;
        ctx.upstream.started = Some(Instant::now());
        ctx.cache.fill_start.start();
        let addr = peer._address.to_string();
        ctx.upstream.tried.push(addr.clone());
        ctx.upstream.addr = Some(addr);
        Ok(peer)
    }

    /// Strips hop-by-hop headers and adds `Via` and `X-Forwarded-*`; sends origin-form URIs
    /// with a `Host` header whatever the client's protocol.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(authority) = upstream_request.uri.authority().map(|a| a.to_string()) {
            if upstream_request.headers.get(http::header::HOST).is_none() {
                upstream_request.insert_header(http::header::HOST, authority)?;
            }
            let path = upstream_request
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            upstream_request.set_uri(
                path.parse()
                    .or_err(ErrorType::InvalidHTTPHeader, "bad request path")?,
            );
        }
        // The origin gets exactly the authority the response is cached under.
        match &ctx.route.target {
            Some(target) => upstream_request.insert_header(http::header::HOST, &target.authority)?,
            None if upstream_request.headers.get(http::header::HOST).is_none() => {
                if let Some(host) = self.site(ctx).and_then(|s| s.settings.hosts.first()) {
                    upstream_request.insert_header(http::header::HOST, host)?;
                }
            }
            None => {}
        }
        headers::strip_request_hop_by_hop(upstream_request);
        if let Some(length) = headers::repeated_content_length(&upstream_request.headers) {
            upstream_request.insert_header(http::header::CONTENT_LENGTH, length)?;
        }
        upstream_request.append_header(
            http::header::VIA,
            ctx.runtime.via.for_version(session.req_header().version),
        )?;
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        headers::set_forwarded(upstream_request, client_ip, ctx.route.scheme);
        origin_codings(upstream_request, ctx)
    }

    /// Decides whether the origin's response is stored and for how long.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
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
        let decision = ctx
            .runtime
            .policy
            .response_cacheability(session.req_header(), resp, now);
        ctx.cache.storable = decision.is_cacheable();
        Ok(decision)
    }

    /// Records origin timing and strips hop-by-hop headers before the response is stored.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.check_total_timeout(ctx)?;
        ctx.upstream.header_elapsed = ctx.upstream.started.map(|t| t.elapsed());
        ctx.upstream.status = Some(resp.status.as_u16());
        if let (Some(site), Some(addr)) = (self.site(ctx), &ctx.upstream.addr) {
            site.origins.record(addr, resp.status.as_u16() < 500);
        }
        headers::strip_response_hop_by_hop(resp);
        // Whatever the origin spoke, the client gets an HTTP/1.1 response (framed for its own
        // version by pingora); an HTTP/1.0 status line would forbid chunked framing.
        resp.set_version(http::Version::HTTP_11);
        if let Some(length) = headers::repeated_content_length(&resp.headers) {
            resp.insert_header(http::header::CONTENT_LENGTH, length)?;
        }
        if resp.status == http::StatusCode::NOT_MODIFIED {
            keep_stored_etag(resp, session.cache.maybe_cache_meta());
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
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        self.check_total_timeout(ctx)?;
        Ok(None)
    }

    /// Final touches on every response, hits included: `Cache-Status`, `Via`, no
    /// `CDN-Cache-Control`; and invalidation after unsafe methods.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let outcome = Self::cache_outcome(session, ctx);
        ctx.cache.outcome = Some(outcome);
        if outcome == CacheOutcome::StaleIfError && !ctx.cache.stale_after_failure {
            self.refresh_failed(ctx);
        }
        resp.remove_header(&CDN_CACHE_CONTROL_NAME);
        for name in &TAG_HEADERS {
            resp.remove_header(name);
        }
        if ctx.runtime.server_timing {
            resp.insert_header("server-timing", Self::server_timing(ctx, outcome))?;
        }
        resp.append_header(
            http::header::VIA,
            ctx.runtime.via.for_version(session.req_header().version),
        )?;
        resp.insert_header(CACHE_STATUS, self.cache_status_header(session, ctx, outcome))?;
        if ctx.route.scheme == "https" {
            if let Some(hsts) = self.site(ctx).and_then(|s| s.settings.hsts.clone()) {
                resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
            }
        }
        self.invalidate_after_unsafe(session.req_header(), resp, ctx);
        frame_for_http10(session, resp);
        self.start_compression(session, resp, ctx)
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
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let Some(encoder) = ctx.encoding.encoder.as_mut() else {
            return Ok(None);
        };
        if body.is_none() && !end_of_stream {
            return Ok(None);
        }
        let chunk = body.as_deref().unwrap_or_default();
        let started = Instant::now();
        let encoded = encoder
            .encode(chunk, end_of_stream)
            .or_err(ErrorType::InternalError, "compressing the response")?;
        *body = (!encoded.is_empty()).then_some(encoded);
        if end_of_stream {
            ctx.encoding.encoder = None;
        }
        Ok(ctx.encoding.pause_after(started.elapsed()))
    }

    /// A connection failure counts against the origin; idempotent requests move on to another
    /// origin, up to the site's retry budget (nothing of the request was sent yet).
    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if is_client_fault(&e) {
            e.set_retry(false);
            return e;
        }
        ctx.upstream.last_error = Some(e.etype().clone());
        if let Some(site) = self.site(ctx) {
            site.origins.record(&peer._address.to_string(), false);
            let retries_left = ctx.upstream.tried.len() <= site.origins.retries;
            if retries_left && session.req_header().method.is_idempotent() {
                e.set_retry(true);
            }
        }
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
        ctx: &mut RequestCtx,
        upstream_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("origin {peer}"));
        if is_client_fault(&e) {
            // The client went away or misbehaved: not the origin's fault, and nobody is left
            // to retry for.
            e.set_retry(false);
            return e;
        }
        ctx.upstream.last_error = Some(e.etype().clone());
        let idempotent =
            session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        if !idempotent {
            e.set_retry(false);
            return e;
        }
        let Some(site) = self.site(ctx) else { return e };
        let no_response_yet = ctx.upstream.status.is_none();
        if upstream_reused && no_response_yet {
            e.retry.decide_reuse(true);
            ctx.upstream.tried.pop();
            return e;
        }
        site.origins.record(&peer._address.to_string(), false);
        let within_budget = ctx.upstream.tried.len() <= site.origins.retries;
        let timed_out = matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
        if no_response_yet && within_budget && !timed_out {
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Serves stale while revalidating whenever the stored response allows it, and on upstream
    /// errors (connection failures, timeouts, 5xx) within its stale-if-error window.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    /// Answers 504 for origin timeouts, 502 for other origin failures, with a `Cache-Status`
    /// saying why.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let code = error_status(e);
        if code > 0 && session.response_written().is_none() {
            let outcome = Self::cache_outcome(session, ctx);
            ctx.cache.outcome = Some(outcome);
            let status = CacheStatus {
                name: &self.cache.status_name,
                outcome,
                ttl: None,
                fwd_status: None,
                stored: false,
                detail: Some(error_detail(e)),
            };
            if let Err(write_error) = respond_error_with_status(session, code, status.render()).await {
                tracing::debug!(error = %write_error, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts and logs the request; a request its client abandoned counts towards the
    /// connection's reset-flood check.
    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        if error.is_some_and(is_client_fault) {
            self.metrics.clients.client_error();
            connections::client_cancelled();
        }
        self.record_request(session, error, ctx);
    }

    /// Failures caused by clients (resets, closed connections, bad requests) are routine at an
    /// edge: they are counted, and logged at debug level only, so junk traffic cannot flood
    /// the log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        is_client_fault(error)
    }
}

/// What the origin is asked for: identity when the proxy compresses (so one fetch serves every
/// client), else the client's acceptable codings in normalised form. Validators lose the
/// proxy's coding suffixes, so the origin sees its own ETags.
fn origin_codings(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let accept_encoding = http::header::ACCEPT_ENCODING;
    let normalized = ctx.encoding.accepted.header_value();
    if ctx.encoding.compress || normalized.is_empty() {
        upstream_request.remove_header(&accept_encoding);
    } else {
        upstream_request.insert_header(accept_encoding, normalized)?;
    }
    for name in [
        http::header::IF_NONE_MATCH,
        http::header::IF_MATCH,
        http::header::IF_RANGE,
    ] {
        let stripped = upstream_request
            .headers
            .get(&name)
            .and_then(compression::origin_validators);
        if let Some(value) = stripped {
            upstream_request.insert_header(name, value)?;
        }
    }
    Ok(())
}

/// A 304 revalidating a stored coding carries the origin's ETag; the stored coding keeps its
/// own (suffixed) one, so the merged header still names the coding served.
fn keep_stored_etag(not_modified: &mut ResponseHeader, stored: Option<&CacheMeta>) {
    let Some(stored_etag) = stored.and_then(|m| m.headers().get(http::header::ETAG)) else {
        return;
    };
    let Some(origin_form) = compression::origin_validators(stored_etag) else {
        return;
    };
    let opaque = |v: &http::HeaderValue| v.as_bytes().strip_prefix(b"W/").unwrap_or(v.as_bytes()).to_vec();
    let same_tag = not_modified
        .headers
        .get(http::header::ETAG)
        .is_some_and(|etag| opaque(etag) == opaque(&origin_form));
    if same_tag {
        not_modified.remove_header(&http::header::ETAG);
    }
}

/// HTTP/1.0 has no chunked framing (RFC 9112 §6.1): pingora turns a response without
/// `Content-Length` into a chunked one, so for an HTTP/1.0 client it is sent close-delimited.
fn frame_for_http10(session: &mut Session, resp: &mut ResponseHeader) {
    if session.req_header().version >= http::Version::HTTP_11
        || !resp.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        return;
    }
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    session.set_keepalive(None);
}

/// An error caused by the client side of the request, never by an origin.
fn is_client_fault(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
}

/// The status sent to the client for a proxying error (0: the client is gone, send nothing).
fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Short reason for a failed forward, for `Cache-Status` `detail`.
fn error_detail(e: &Error) -> &'static str {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => "origin-timeout",
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError => "origin-unreachable",
        HTTPStatus(_) => "origin-error",
        _ if e.esource() == &ErrorSource::Upstream => "origin-error",
        _ => "proxy-error",
    }
}

/// An empty error response carrying `Cache-Status`.
async fn respond_error_with_status(session: &mut Session, code: u16, cache_status: String) -> Result<()> {
    respond_locally(
        session,
        code,
        vec![(CACHE_STATUS, cache_status)],
        "",
        Connection::Close,
    )
    .await
}

fn is_unsafe(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// Path of a `Location`-style value when it names the same host (relative or absolute URL).
fn same_host_path(value: &str, host: &str) -> Option<String> {
    let uri: http::Uri = value.parse().ok()?;
    if let Some(authority) = uri.authority() {
        if authority::normalize_host(authority.as_str()) != host {
            return None;
        }
    } else if !value.starts_with('/') {
        return None;
    }
    Some(uri.path_and_query().map_or("/", |p| p.as_str()).to_string())
}

/// Seconds of freshness left (negative once stale).
fn remaining_ttl(meta: &CacheMeta) -> i64 {
    let now = SystemTime::now();
    match meta.fresh_until().duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64),
    }
}

/// Sends a small plain-text response generated by the proxy itself.
async fn respond_text(session: &mut Session, status: u16, body: &'static str) -> Result<()> {
    let content_type = (
        http::header::CONTENT_TYPE,
        "text/plain; charset=utf-8".to_string(),
    );
    respond_locally(session, status, vec![content_type], body, Connection::Close).await
}

/// Whether the client connection stays open after a locally generated response.
enum Connection {
    Keep,
    Close,
}

/// Writes a response the proxy makes itself (never from cache or origin, never to be cached
/// downstream): `status`, `headers`, a static `body` with its length.
async fn respond_locally(
    session: &mut Session,
    status: u16,
    headers: Vec<(http::HeaderName, String)>,
    body: &'static str,
    connection: Connection,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if matches!(connection, Connection::Close) {
        session.set_keepalive(None);
    }
    if body.is_empty() {
        return session.write_response_header(Box::new(resp), true).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_invalidation_is_same_host_only() {
        assert_eq!(same_host_path("/a?b", "h").as_deref(), Some("/a?b"));
        assert_eq!(same_host_path("http://H:8080/x", "h").as_deref(), Some("/x"));
        assert_eq!(same_host_path("http://other/x", "h"), None);
        assert_eq!(same_host_path("relative", "h"), None);
    }

    #[test]
    fn timeouts_are_504_and_other_origin_errors_502() {
        let timeout = Error::explain(ErrorType::ReadTimedout, "slow").into_up();
        assert_eq!(error_status(&timeout), 504);
        let refused = Error::explain(ErrorType::ConnectRefused, "down").into_up();
        assert_eq!(error_status(&refused), 502);
    }
}
