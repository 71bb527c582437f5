//! Invalidation after unsafe requests (RFC 9111 §4.4): a successful `POST`, `PUT`, `DELETE`...
//! may have changed what the cache holds for its URL and for the same-host URLs its
//! `Location` and `Content-Location` name, so those stored responses are dropped.

use pingora::http::{RequestHeader, ResponseHeader};

use super::key::{cache_key, CacheTarget};
use super::storage::MokaStorage;
use crate::authority;

/// After a successful unsafe request, drops the stored responses it may have changed
/// (RFC 9111 §4.4): the target URL and same-host `Location` / `Content-Location`.
pub fn invalidate_after_unsafe(
    storage: &MokaStorage,
    target: &CacheTarget,
    req: &RequestHeader,
    resp: &ResponseHeader,
) {
    if !is_unsafe(&req.method) || !(200..400).contains(&resp.status.as_u16()) {
        return;
    }
    storage.invalidate(&cache_key(target));
    for name in ["location", "content-location"] {
        let Some(value) = resp.headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(path) = same_host_path(value, &target.host) {
            storage.invalidate(&cache_key(&target.with_path(&path)));
        }
    }
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
}
