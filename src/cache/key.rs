//! Cache keys: scheme + host + path + query, framed so no two different URLs share a key.
//!
//! HTTP/1.1 requests carry the host in `Host` and the path in an origin-form URI; HTTP/2
//! requests carry both in the URI. [`CacheTarget`] extracts the same components from either, so
//! one URL maps to one entry whatever the client protocol. GET and HEAD share the entry (the
//! method is not part of the key; pingora fetches HEAD misses as GET).

use std::borrow::Cow;

use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use pingora::http::RequestHeader;

use crate::config::QueryKey;

/// The URL components that identify a cached resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTarget {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Lower-cased host without port.
    pub host: String,
    /// The host plus its port when not the scheme's default: what the origin receives as `Host`
    /// and what the key holds.
    pub authority: String,
    /// Path and query exactly as requested (`/` when empty).
    pub path_and_query: String,
}

impl CacheTarget {
    /// The target of a request, or `None` when it has no usable host or path (e.g. `OPTIONS *`).
    pub fn of_request(req: &RequestHeader, scheme: &'static str) -> Option<CacheTarget> {
        let (host, authority) = crate::authority::host_and_authority(req, scheme).ok()?;
        CacheTarget::with_authority(req, scheme, host, authority)
    }

    /// The target of `req` once its host and authority are known; `None` without a usable path.
    pub fn with_authority(
        req: &RequestHeader,
        scheme: &'static str,
        host: String,
        authority: String,
    ) -> Option<CacheTarget> {
        let path_and_query = req.uri.path_and_query()?.as_str();
        if !path_and_query.starts_with('/') {
            return None;
        }
        Some(CacheTarget {
            scheme,
            host,
            authority,
            path_and_query: path_and_query.to_string(),
        })
    }

    /// The target with its query reduced to what `query` keeps in the key.
    pub fn with_query_key(mut self, query: &QueryKey) -> CacheTarget {
        let normalized = normalize_query(&self.path_and_query, query);
        if normalized.len() != self.path_and_query.len() || matches!(normalized, Cow::Owned(_)) {
            self.path_and_query = normalized.into_owned();
        }
        self
    }

    /// The same host and scheme with another path (used to invalidate `Location` targets).
    pub fn with_path(&self, path_and_query: &str) -> CacheTarget {
        CacheTarget {
            scheme: self.scheme,
            host: self.host.clone(),
            authority: self.authority.clone(),
            path_and_query: path_and_query.to_string(),
        }
    }
}

/// `path_and_query` with its query reduced to what `mode` keeps in the key: as sent, sorted,
/// none, or only the parameters kept (sorted). Parameters are compared by name as sent.
pub fn normalize_query<'a>(path_and_query: &'a str, mode: &QueryKey) -> Cow<'a, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let keeps = |name: &str| match mode {
        QueryKey::Keep | QueryKey::Sort => true,
        QueryKey::Ignore => false,
        QueryKey::Only(patterns) => patterns.iter().any(|p| p.matches(name)),
        QueryKey::Without(patterns) => !patterns.iter().any(|p| p.matches(name)),
    };
    match mode {
        QueryKey::Keep => return Cow::Borrowed(path_and_query),
        QueryKey::Ignore => return Cow::Borrowed(path),
        _ => {}
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| keeps(p.split_once('=').map_or(*p, |(name, _)| name)))
        .collect();
    params.sort_unstable();
    if params.is_empty() {
        return Cow::Borrowed(path);
    }
    Cow::Owned(format!("{path}?{}", params.join("&")))
}

/// Builds the pingora cache key of a target: scheme, authority (host and non-default port),
/// path and query.
///
/// Each component is length-prefixed, so `("a", "bc")` and `("ab", "c")` differ.
pub fn cache_key(target: &CacheTarget) -> CacheKey {
    let parts = [
        target.scheme.as_bytes(),
        target.authority.as_bytes(),
        target.path_and_query.as_bytes(),
    ];
    let mut primary = Vec::with_capacity(12 + parts.iter().map(|p| p.len()).sum::<usize>());
    for part in parts {
        primary.extend_from_slice(&(part.len() as u32).to_be_bytes());
        primary.extend_from_slice(part);
    }
    let mut key = CacheKey::new(primary, "");
    // Hash once: pingora asks for the hash several times per request.
    key.set_primary_bin_override(key.primary_bin());
    key
}

/// The (scheme, authority, path and query) a key's primary bytes were built from.
pub fn components(primary: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut rest = primary;
    let mut next = || -> Option<&[u8]> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let part = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(part)
    };
    Some((next()?, next()?, next()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamePattern;

    #[test]
    fn query_modes_shape_the_key() {
        let url = "/a?utm_source=x&v=2&b=1&fbclid=z";
        let drop = QueryKey::Without(vec![NamePattern::new("utm_*"), NamePattern::new("fbclid")]);
        assert_eq!(normalize_query(url, &QueryKey::Keep), url);
        assert_eq!(normalize_query(url, &QueryKey::Ignore), "/a");
        assert_eq!(
            normalize_query(url, &QueryKey::Sort),
            "/a?b=1&fbclid=z&utm_source=x&v=2"
        );
        assert_eq!(normalize_query(url, &drop), "/a?b=1&v=2");
        let keep = QueryKey::Only(vec![NamePattern::new("v")]);
        assert_eq!(normalize_query(url, &keep), "/a?v=2");
        assert_eq!(normalize_query("/a?utm_x=1", &drop), "/a");
        assert_eq!(normalize_query("/a", &drop), "/a");
    }

    fn target(host: &str, path: &str) -> CacheTarget {
        CacheTarget {
            scheme: "http",
            host: host.into(),
            authority: host.into(),
            path_and_query: path.into(),
        }
    }

    #[test]
    fn h1_and_h2_forms_give_one_key() {
        let mut h1 = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        h1.insert_header("Host", "Example.com:8080").unwrap();
        let mut h2 = RequestHeader::build_no_case("GET", b"/", None).unwrap();
        h2.set_uri(http::Uri::from_static("http://example.com:8080/a?b=1"));
        let t1 = CacheTarget::of_request(&h1, "http").unwrap();
        let t2 = CacheTarget::of_request(&h2, "http").unwrap();
        assert_eq!(t1, t2);
        assert_eq!(cache_key(&t1).primary_bin(), cache_key(&t2).primary_bin());
    }

    #[test]
    fn components_are_read_back() {
        let key = cache_key(&target("h", "/p?q"));
        let parts = components(key.primary_key()).unwrap();
        assert_eq!(parts, (&b"http"[..], &b"h"[..], &b"/p?q"[..]));
        assert!(components(b"junk").is_none());
    }

    #[test]
    fn component_boundaries_are_framed() {
        let a = cache_key(&target("ab", "/c"));
        let b = cache_key(&target("a", "b/c"));
        assert_ne!(a.primary_bin(), b.primary_bin());
    }

    #[test]
    fn query_and_scheme_are_part_of_the_key() {
        let plain = cache_key(&target("h", "/p"));
        assert_ne!(plain.primary_bin(), cache_key(&target("h", "/p?x")).primary_bin());
        let mut https = target("h", "/p");
        https.scheme = "https";
        assert_ne!(plain.primary_bin(), cache_key(&https).primary_bin());
    }

    #[test]
    fn a_non_default_port_is_a_different_key() {
        let request = |host: &str| {
            let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
            req.insert_header("Host", host).unwrap();
            cache_key(&CacheTarget::of_request(&req, "http").unwrap()).primary_bin()
        };
        assert_eq!(request("site.test"), request("SITE.test.:80"));
        assert_ne!(request("site.test"), request("site.test:6666"));
    }

    #[test]
    fn asterisk_form_has_no_target() {
        let mut req = RequestHeader::build("OPTIONS", b"*", None).unwrap();
        req.insert_header("Host", "h").unwrap();
        assert!(CacheTarget::of_request(&req, "http").is_none());
    }
}
