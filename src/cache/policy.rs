//! Cacheability and freshness (RFC 9111), as pure functions over request and response headers.
//!
//! pingora parses `Cache-Control` ([`directives`] picks the field and checks it); this module
//! decides what to store and for how long: any final status with explicit freshness,
//! `must-understand`, `Age` and `Date` folded into the entry's age, `Expires` relative to `Date`,
//! heuristic freshness only for heuristically cacheable statuses with `Last-Modified`, the
//! default stale-if-error window (never for responses that demand revalidation), and the
//! shared-cache rules for `Authorization`, `Set-Cookie` and `Vary: *`. It also applies the request directives pingora leaves alone (`no-cache`,
//! `max-age`, `min-fresh`, `max-stale`).

use std::time::{Duration, SystemTime};

use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::calculate_serve_stale_durations;
use pingora::cache::{CacheMeta, CacheMetaDefaults, ForcedFreshness, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};

use super::directives::{self, response_cache_control};
use crate::config::CacheSettings;
use crate::field_list;

/// Statuses that may be stored with heuristic freshness (RFC 9110 §15.1), minus 206: partial
/// responses are never stored because misses are fetched whole.
const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Whether a response of `status` may be stored at all: any final status (RFC 9111 §3) but
/// 206 (misses are fetched whole) and 304 (it updates a stored response, §4.3.4).
fn storable_status(status: u16) -> bool {
    (200..=999).contains(&status) && status != 206 && status != 304
}

/// Status codes whose requirements this cache knows, for `must-understand` (RFC 9111
/// §5.2.2.3): the ones RFC 9110 defines.
fn understood_status(status: u16) -> bool {
    storable_status(status)
        && http::StatusCode::from_u16(status).is_ok_and(|s| s.canonical_reason().is_some())
}

/// Why a response is not stored (reported as the `NoCacheReason`).
mod reason {
    pub const REQUEST_NO_STORE: &str = "request no-store";
    pub const STATUS: &str = "status not storable";
    pub const NOT_UNDERSTOOD: &str = "must-understand with an unknown status";
    pub const VARY_STAR: &str = "Vary: *";
    pub const SET_COOKIE: &str = "Set-Cookie";
    pub const AUTHORIZATION: &str = "Authorization without public";
    pub const NO_LIFETIME: &str = "no freshness information";
}

/// Whether a reason for not storing comes from the request rather than the response: such
/// reasons must not teach the predictor that the URL is uncacheable for everyone.
pub fn is_request_specific_reason(reason: &'static str) -> bool {
    reason == reason::REQUEST_NO_STORE || reason == reason::AUTHORIZATION
}

/// A per-path rule's say on freshness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleTtl {
    /// Freshness for responses of a heuristically cacheable status that carry none.
    pub default_ttl: Option<Duration>,
    /// Freshness for every storable response, whatever the origin says (the operator's
    /// explicit override, RFC 9111 §4.2.1 allows a cache to be configured so).
    pub override_ttl: Option<Duration>,
}

/// The freshness and stale defaults of one cache, applied to every response.
pub struct CachePolicy {
    defaults: CacheMetaDefaults,
    heuristic_fraction: f64,
    heuristic_max: Duration,
}

fn never_default(_: pingora::http::StatusCode) -> Option<Duration> {
    None
}

impl CachePolicy {
    /// The policy for the given cache settings.
    pub fn new(settings: &CacheSettings) -> CachePolicy {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        CachePolicy {
            defaults: CacheMetaDefaults::new(
                never_default,
                secs(settings.stale_while_revalidate),
                secs(settings.stale_if_error),
            ),
            heuristic_fraction: settings.heuristic_fraction,
            heuristic_max: settings.heuristic_max,
        }
    }

    /// Decides whether `resp` (the answer to `req`) is stored, and builds its metadata.
    pub fn response_cacheability(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        now: SystemTime,
    ) -> RespCacheable {
        self.response_cacheability_under(req, resp, now, RuleTtl::default())
    }

    /// [`CachePolicy::response_cacheability`] under a per-path rule's `ttl`. Neither of its
    /// lifetimes makes storable what is not: `no-store`, `private`, a status without explicit
    /// freshness outside the heuristically cacheable ones.
    pub fn response_cacheability_under(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        now: SystemTime,
        ttl: RuleTtl,
    ) -> RespCacheable {
        use RespCacheable::Uncacheable;
        let custom = |why| Uncacheable(NoCacheReason::Custom(why));
        if CacheControl::from_req_headers(req).is_some_and(|cc| cc.no_store()) {
            return custom(reason::REQUEST_NO_STORE);
        }
        let status = resp.status.as_u16();
        let cc = response_cache_control(resp);
        let cc_lifetime = cc.as_ref().and_then(|cc| cc.fresh_duration());
        let explicit = cc_lifetime.is_some() || resp.headers.contains_key("expires");
        let heuristic = HEURISTIC_STATUSES.contains(&status);
        if !storable_status(status) || !(explicit || heuristic) {
            // A server error is transient: it must not teach the predictor to bypass the cache
            // for the URL (which would also keep a stale copy from being served).
            if resp.status.is_server_error() {
                return Uncacheable(NoCacheReason::UpstreamError);
            }
            return custom(reason::STATUS);
        }
        if has_vary_star(resp) {
            return custom(reason::VARY_STAR);
        }
        let must_understand = cc.as_ref().is_some_and(|cc| cc.has_key("must-understand"));
        if must_understand && !understood_status(status) {
            return custom(reason::NOT_UNDERSTOOD);
        }
        if let Some(cc) = &cc {
            // `must-understand` with an understood status overrides the `no-store` it comes
            // with; `private` still applies.
            let refused = if must_understand {
                cc.private()
            } else {
                cc.is_cacheable() == Cacheable::No
            };
            if refused {
                return Uncacheable(NoCacheReason::OriginNotCache);
            }
        }
        if req.headers.contains_key("authorization")
            && !cc.as_ref().is_some_and(|cc| cc.allow_caching_authorized_req())
        {
            return custom(reason::AUTHORIZATION);
        }
        if resp.headers.contains_key("set-cookie") && !strips_set_cookie(cc.as_ref()) {
            return custom(reason::SET_COOKIE);
        }
        let Some(lifetime) = self.freshness_lifetime(cc_lifetime, resp, now, ttl) else {
            return custom(reason::NO_LIFETIME);
        };
        // The entry is admitted now (pingora orders Vary variants and purges by admission time),
        // but its age started earlier: the age origin becomes the epoch that `Age` counts from.
        let born = now
            .checked_sub(initial_age(resp, now))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let fresh_until = if lifetime.is_zero() {
            born.checked_sub(Duration::from_secs(1)).unwrap_or(born)
        } else {
            born + lifetime
        };
        let (swr, sie) = match &cc {
            // A response that must be validated before every use is never served stale.
            Some(cc) if cc.no_cache() => (0, 0),
            cc => calculate_serve_stale_durations(cc.as_ref(), &self.defaults),
        };
        let mut header = resp.clone();
        // Hits get an `Age` recomputed from the epoch.
        header.remove_header("age");
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
        if born < now {
            meta.set_epoch_override(born);
        }
        RespCacheable::Cacheable(meta)
    }

    /// The freshness lifetime (RFC 9111 §4.2.1), or `None` when the response gives none and no
    /// heuristic applies. `cc_lifetime` is the one its cache directives give, if they do.
    fn freshness_lifetime(
        &self,
        cc_lifetime: Option<Duration>,
        resp: &ResponseHeader,
        now: SystemTime,
        ttl: RuleTtl,
    ) -> Option<Duration> {
        if ttl.override_ttl.is_some() {
            return ttl.override_ttl;
        }
        if directives::freshness_is_unreliable(resp) {
            return Some(Duration::ZERO);
        }
        if let Some(ttl) = cc_lifetime {
            return Some(ttl);
        }
        if resp.headers.contains_key("expires") {
            return Some(expires_lifetime(resp, now));
        }
        if ttl.default_ttl.is_some() && HEURISTIC_STATUSES.contains(&resp.status.as_u16()) {
            return ttl.default_ttl;
        }
        self.heuristic_lifetime(resp, now)
    }

    /// RFC 9111 §4.2.2: a fraction of the time since `Last-Modified`, capped.
    fn heuristic_lifetime(&self, resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
        if !HEURISTIC_STATUSES.contains(&resp.status.as_u16()) {
            return None;
        }
        let last_modified = header_date(resp, "last-modified")?;
        let date = header_date(resp, "date").unwrap_or(now);
        let since_modified = date.duration_since(last_modified).ok()?;
        Some(
            since_modified
                .mul_f64(self.heuristic_fraction)
                .min(self.heuristic_max),
        )
    }
}

/// Header fields a 304 must not change in the stored response (RFC 9111 §3.2, §4.3.4): they
/// describe the stored body, which the 304 does not carry.
const BODY_FRAMING_FIELDS: [&str; 4] = [
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
];

/// The stored response header updated with every field of a 304 (RFC 9111 §4.3.4), except
/// those describing the body.
pub fn merge_not_modified(stored: &ResponseHeader, not_modified: &http::HeaderMap) -> ResponseHeader {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if BODY_FRAMING_FIELDS.contains(&name.as_str()) {
            continue;
        }
        merged.remove_header(name);
        for value in not_modified.get_all(name) {
            let _ = merged.append_header(name.clone(), value.clone());
        }
    }
    merged
}

fn has_vary_star(resp: &ResponseHeader) -> bool {
    field_list::items(&resp.headers, "vary").any(|name| name == "*")
}

/// A `Set-Cookie` response is shareable only when `private="set-cookie"` or
/// `no-cache="set-cookie"` tells the cache to drop the header from the stored copy.
fn strips_set_cookie(cc: Option<&CacheControl>) -> bool {
    let Some(cc) = cc else { return false };
    let lists_cookie = |names: Option<pingora::cache::cache_control::ListValueIter>| {
        names.is_some_and(|mut names| names.any(|n| n.eq_ignore_ascii_case(b"set-cookie")))
    };
    lists_cookie(cc.private_field_names()) || lists_cookie(cc.no_cache_field_names())
}

/// `Expires - Date`; an invalid or repeated `Expires` means already stale (RFC 9111 §5.3).
fn expires_lifetime(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let mut values = resp.headers.get_all("expires").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Duration::ZERO;
    };
    let Some(expires) = value
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return Duration::ZERO;
    };
    let date = header_date(resp, "date").unwrap_or(now);
    expires.duration_since(date).unwrap_or_default()
}

/// The age of the response when it arrived (RFC 9111 §4.2.3, without the request delay):
/// the larger of the origin's `Age` and the apparent age from `Date`.
fn initial_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let age_value = Duration::from_secs(directives::age_seconds(resp).unwrap_or_default());
    let apparent = header_date(resp, "date")
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or_default();
    age_value.max(apparent)
}

fn header_date(resp: &ResponseHeader, name: &str) -> Option<SystemTime> {
    let value = resp.headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// What the request's own `Cache-Control` does to a stored response (RFC 9111 §5.2.1).
///
/// `no-cache`, `max-age` exceeded and `min-fresh` not met force revalidation; `max-stale`
/// accepts a stale response unless the response demands revalidation.
pub fn request_freshness(req: &RequestHeader, meta: &CacheMeta, now: SystemTime) -> Option<ForcedFreshness> {
    let Some(cc) = CacheControl::from_req_headers(req) else {
        return pragma_no_cache(req).then_some(ForcedFreshness::ForceExpired);
    };
    if cc.no_cache() {
        return Some(ForcedFreshness::ForceExpired);
    }
    if let Ok(Some(max_age)) = cc.max_age() {
        if meta.age() > Duration::from_secs(max_age.into()) || max_age == 0 {
            return Some(ForcedFreshness::ForceExpired);
        }
    }
    let fresh_for = meta.fresh_until().duration_since(now).ok();
    if let Some(min_fresh) = directive_seconds(&cc, "min-fresh") {
        if fresh_for.is_none_or(|left| left < Duration::from_secs(min_fresh)) {
            return Some(ForcedFreshness::ForceExpired);
        }
    }
    if fresh_for.is_none() && cc.has_key("max-stale") && !demands_revalidation(meta) {
        let stale_for = now.duration_since(meta.fresh_until()).unwrap_or_default();
        let accepted =
            directive_seconds(&cc, "max-stale").is_none_or(|limit| stale_for <= Duration::from_secs(limit));
        if accepted {
            return Some(ForcedFreshness::ForceFresh);
        }
    }
    None
}

/// Whether the request's `Cache-Control` has `only-if-cached`: answer from the cache or 504.
pub fn only_if_cached(req: &RequestHeader) -> bool {
    CacheControl::from_req_headers(req).is_some_and(|cc| cc.only_if_cached())
}

fn pragma_no_cache(req: &RequestHeader) -> bool {
    req.headers
        .get("pragma")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"))
}

fn directive_seconds(cc: &CacheControl, name: &str) -> Option<u64> {
    let key = pingora::cache::cache_control::DirectiveKey::from_lowercase(name);
    let value = cc.directives.get(&key)?.as_ref()?;
    value.parse_as_delta_seconds().ok().map(u64::from)
}

fn demands_revalidation(meta: &CacheMeta) -> bool {
    response_cache_control(meta.response_header()).is_some_and(|cc| {
        cc.must_revalidate() || cc.proxy_revalidate() || cc.no_cache() || cc.has_key("s-maxage")
    })
}

#[cfg(test)]
mod tests;
