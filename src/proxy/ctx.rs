//! Per-request state, grouped by concern and filled in as the request moves through the phases.

use std::sync::Arc;
use std::time::Instant;

use pingora::cache::CacheKey;

use crate::runtime::{Route as Rule, Runtime, Site};

use crate::cache::CacheTarget;
use crate::compression::stream::StreamEncoder;
use crate::compression::Accepted;

use super::cache_status::CacheOutcome;

/// Everything the proxy remembers about one request.
pub struct RequestCtx {
    /// The sites, origins and policies this request is served with.
    pub runtime: Arc<Runtime>,
    /// When the request arrived.
    pub started: Instant,
    /// Routing results.
    pub route: Route,
    /// What the cache did.
    pub cache: CacheTrace,
    /// What the origin did.
    pub upstream: UpstreamTrace,
    /// Content coding negotiation and on-the-fly compression.
    pub encoding: Encoding,
    /// Its way through the cluster.
    pub cluster: ClusterTrace,
}

impl RequestCtx {
    /// Fresh state for a new request served with `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> RequestCtx {
        RequestCtx {
            runtime,
            started: Instant::now(),
            route: Route::default(),
            cache: CacheTrace::default(),
            upstream: UpstreamTrace::default(),
            encoding: Encoding::default(),
            cluster: ClusterTrace::default(),
        }
    }

    /// The site the request was routed to, once routed.
    pub fn site(&self) -> Option<&Site> {
        self.route.site.and_then(|i| self.runtime.sites.get(i))
    }

    /// The `[[site.route]]` rule that matched the request, if any.
    pub fn rule(&self) -> Option<&Rule> {
        self.site()?.routes.get(self.route.rule?)
    }
}

/// The request's way through the cluster.
#[derive(Debug, Default)]
pub struct ClusterTrace {
    /// The peer that sent it, when its signature holds: served here, never forwarded again.
    pub from_peer: Option<String>,
    /// The peer (index in the peer list) it is being forwarded to.
    pub forwarded_to: Option<usize>,
    /// Peers that failed it already.
    pub tried: Vec<usize>,
}

/// Which site and URL the request is for.
#[derive(Debug, Default)]
pub struct Route {
    /// Index of the site serving the request.
    pub site: Option<usize>,
    /// Index of the site's rule that matched it.
    pub rule: Option<usize>,
    /// `https` when the request came over TLS, else `http`.
    pub scheme: &'static str,
    /// An authorised `PURGE` of the target URL.
    pub purge: bool,
    /// Scheme, host and path used for the cache key and invalidation.
    pub target: Option<CacheTarget>,
}

/// Cache decisions made along the way.
#[derive(Debug, Default)]
pub struct CacheTrace {
    /// Caching was enabled for this request.
    pub enabled: bool,
    /// Caching was skipped: the URL's origin refused storage last time (see
    /// [`crate::cache::CacheEngine::origin_refused`]).
    pub skipped_refused: bool,
    /// The cache key made (and hashed) when the request entered the cache, to ask whether its
    /// origin refused storage; handed on to pingora as the request's key, so it is made once.
    pub key: Option<CacheKey>,
    /// A stored response was found (fresh or not).
    pub found: bool,
    /// A stored response existed for the URL but the variant had to be looked up.
    pub vary_lookup: bool,
    /// The request's own directives forced revalidation.
    pub forced_by_request: bool,
    /// The origin's response was judged storable.
    pub storable: bool,
    /// A stale copy served as it is because its origin just failed to refresh it.
    pub stale_after_failure: bool,
    /// Final outcome, set when the response header goes out.
    pub outcome: Option<CacheOutcome>,
    /// When the origin fetch began, shared with the storage through the cache key, so a purge
    /// after it keeps the response out of the cache.
    pub fill_start: crate::cache::purge_log::FillStart,
}

/// Origin timing and result.
#[derive(Debug, Default)]
pub struct UpstreamTrace {
    /// When the origin was selected.
    pub started: Option<Instant>,
    /// Time from selecting the origin to its response header.
    pub header_elapsed: Option<std::time::Duration>,
    /// Status the origin answered with.
    pub status: Option<u16>,
    /// Address of the origin used.
    pub addr: Option<std::sync::Arc<str>>,
    /// Origins tried so far, in order (retries go elsewhere).
    pub tried: Vec<pingora::protocols::l4::socket::SocketAddr>,
    /// The last failure talking to an origin, reported if no other origin is left.
    pub last_error: Option<pingora::ErrorType>,
    /// Header fields of a 304 from the origin, merged into the stored response.
    pub not_modified: Option<http::HeaderMap>,
}

/// Content coding of the response.
#[derive(Debug, Default)]
pub struct Encoding {
    /// The site compresses responses.
    pub compress: bool,
    /// Codings the client accepts.
    pub accepted: Accepted,
    /// Compresses a response that is not served from the cache as it streams through.
    pub encoder: Option<StreamEncoder>,
    /// Decodes an origin-encoded response for a client that does not accept its coding.
    pub decoder: Option<crate::compression::stream::StreamDecoder>,
    /// Compression time since the stream last paused for other requests.
    pub busy: std::time::Duration,
    /// The coding whose ETag suffix was removed from a passed-through `If-None-Match`: the
    /// origin's 304 names that coding's tag again.
    pub validator_coding: Option<crate::compression::Coding>,
    /// The origin's 200 is one the proxy compresses: a 206 or 304 made from it varies on
    /// `Accept-Encoding` as it would.
    pub origin_compressible: bool,
}

/// Compression time after which an on-the-fly compressed stream gives way to other requests.
const COMPRESSION_SLICE: std::time::Duration = std::time::Duration::from_millis(4);

/// How long the stream then pauses (the shortest timer tick).
const COMPRESSION_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

impl Encoding {
    /// Accounts `spent` compressing one chunk; a pause once a slice of CPU time is used up.
    pub fn pause_after(&mut self, spent: std::time::Duration) -> Option<std::time::Duration> {
        self.busy += spent;
        if self.busy < COMPRESSION_SLICE {
            return None;
        }
        self.busy = std::time::Duration::ZERO;
        Some(COMPRESSION_PAUSE)
    }
}
