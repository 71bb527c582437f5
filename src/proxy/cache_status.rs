//! The `Cache-Status` response header (RFC 9211): how this cache handled the request.

use std::time::SystemTime;

use pingora::cache::CacheMeta;

/// The `Cache-Status` response header (RFC 9211).
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// How the cache took part in one response, gathered over the request's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from cache, fresh.
    Hit,
    /// Served stale while a background request revalidates.
    StaleWhileRevalidate,
    /// Served stale because the origin failed.
    StaleIfError,
    /// Forwarded: nothing stored for this URL.
    UriMiss,
    /// Forwarded: stored responses exist for this URL but none for this variant.
    VaryMiss,
    /// Forwarded: the stored response was stale and had to be validated or refetched.
    Stale,
    /// Forwarded: the request's own directives demanded validation.
    Request,
    /// Forwarded: caching does not apply to this request (method, site setting).
    Bypass,
}

impl CacheOutcome {
    /// Short label for access logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::StaleWhileRevalidate => "stale-while-revalidate",
            CacheOutcome::StaleIfError => "stale-if-error",
            CacheOutcome::UriMiss => "miss",
            CacheOutcome::VaryMiss => "vary-miss",
            CacheOutcome::Stale => "revalidate",
            CacheOutcome::Request => "request",
            CacheOutcome::Bypass => "bypass",
        }
    }

    /// Whether the response came out of the cache.
    pub fn served_from_cache(self) -> bool {
        matches!(
            self,
            CacheOutcome::Hit | CacheOutcome::StaleWhileRevalidate | CacheOutcome::StaleIfError
        )
    }
}

/// The parts of a `Cache-Status` entry.
#[derive(Debug, Clone, Copy)]
pub struct CacheStatus<'a> {
    /// This cache's name.
    pub name: &'a str,
    /// What happened.
    pub outcome: CacheOutcome,
    /// Remaining freshness in seconds (negative when stale), when a stored response was used.
    pub ttl: Option<i64>,
    /// Status the origin answered with, when the request was forwarded.
    pub fwd_status: Option<u16>,
    /// Whether the response was stored (or its stored headers refreshed).
    pub stored: bool,
    /// Extra explanation, e.g. why forwarding failed.
    pub detail: Option<&'a str>,
}

impl<'a> CacheStatus<'a> {
    /// The value for a request whose forwarding failed (`detail` says why).
    pub fn of_failure(name: &'a str, outcome: CacheOutcome, detail: &'a str) -> CacheStatus<'a> {
        CacheStatus {
            name,
            outcome,
            ttl: None,
            fwd_status: None,
            stored: false,
            detail: Some(detail),
        }
    }

    /// Renders the header value, e.g. `edgecache; fwd=uri-miss; fwd-status=200; stored`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(96);
        out.push_str(self.name);
        let fwd = match self.outcome {
            CacheOutcome::Hit => None,
            CacheOutcome::StaleWhileRevalidate | CacheOutcome::StaleIfError => Some("stale"),
            CacheOutcome::UriMiss => Some("uri-miss"),
            CacheOutcome::VaryMiss => Some("vary-miss"),
            CacheOutcome::Stale => Some("stale"),
            CacheOutcome::Request => Some("request"),
            CacheOutcome::Bypass => Some("bypass"),
        };
        if self.outcome.served_from_cache() {
            out.push_str("; hit");
        }
        // Built with pushes rather than `write!`: this runs for every response.
        let mut number = itoa::Buffer::new();
        if let Some(fwd) = fwd.filter(|_| self.outcome != CacheOutcome::StaleWhileRevalidate) {
            out.push_str("; fwd=");
            out.push_str(fwd);
        }
        if let Some(status) = self.fwd_status.filter(|_| !self.outcome.served_from_cache()) {
            out.push_str("; fwd-status=");
            out.push_str(number.format(status));
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            out.push_str(number.format(ttl));
        }
        if self.stored {
            out.push_str("; stored");
        }
        let detail = match self.outcome {
            CacheOutcome::StaleWhileRevalidate => Some("stale-while-revalidate"),
            CacheOutcome::StaleIfError => Some("stale-if-error"),
            _ => self.detail,
        };
        if let Some(detail) = detail {
            out.push_str("; detail=");
            out.push_str(detail);
        }
        out
    }
}

/// Seconds of freshness left (negative once stale).
pub fn remaining_ttl(meta: &CacheMeta) -> i64 {
    let now = SystemTime::now();
    match meta.fresh_until().duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(outcome: CacheOutcome, ttl: Option<i64>, fwd_status: Option<u16>, stored: bool) -> String {
        CacheStatus {
            name: "edge",
            outcome,
            ttl,
            fwd_status,
            stored,
            detail: None,
        }
        .render()
    }

    #[test]
    fn renders_rfc_9211_members() {
        assert_eq!(
            status(CacheOutcome::Hit, Some(30), None, false),
            "edge; hit; ttl=30"
        );
        assert_eq!(
            status(CacheOutcome::UriMiss, None, Some(200), true),
            "edge; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            status(CacheOutcome::Stale, Some(60), Some(304), true),
            "edge; fwd=stale; fwd-status=304; ttl=60; stored"
        );
        assert_eq!(
            status(CacheOutcome::StaleIfError, Some(-5), Some(502), false),
            "edge; hit; fwd=stale; ttl=-5; detail=stale-if-error"
        );
        assert_eq!(
            status(CacheOutcome::StaleWhileRevalidate, Some(-1), None, false),
            "edge; hit; ttl=-1; detail=stale-while-revalidate"
        );
        assert_eq!(
            status(CacheOutcome::Bypass, None, Some(201), false),
            "edge; fwd=bypass; fwd-status=201"
        );
    }
}
