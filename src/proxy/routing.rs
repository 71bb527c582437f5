//! Virtual hosts: which site serves a request, by `Host` (HTTP/1.1) or `:authority` (HTTP/2).

use std::collections::HashMap;

use pingora::http::RequestHeader;

/// Lower-cases a host and drops its port and any trailing dot (`Example.COM.:8080` → `example.com`).
/// IPv6 literals keep their brackets (`[::1]:80` → `[::1]`).
pub fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _)| host)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The normalised host a request is for: the URI authority when present (HTTP/2, absolute
/// form), else the `Host` header. `None` when both are missing or unusable.
pub fn request_host(req: &RequestHeader) -> Option<String> {
    let raw = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let host = normalize_host(raw);
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    valid.then_some(host)
}

/// Maps hosts to site indexes.
#[derive(Debug, Clone, Default)]
pub struct Router {
    by_host: HashMap<String, usize>,
    default: Option<usize>,
}

impl Router {
    /// A router over `(hosts, is_default)` of each site, in order.
    pub fn new<'a>(sites: impl IntoIterator<Item = (&'a [String], bool)>) -> Router {
        let mut router = Router::default();
        for (index, (hosts, is_default)) in sites.into_iter().enumerate() {
            for host in hosts {
                router.by_host.insert(host.clone(), index);
            }
            if is_default {
                router.default = Some(index);
            }
        }
        router
    }

    /// The site for a normalised host, falling back to the default site.
    pub fn route(&self, host: &str) -> Option<usize> {
        self.by_host.get(host).copied().or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn request_host_rejects_garbage() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(request_host(&req), None);
        req.insert_header("host", "bad host").unwrap();
        assert_eq!(request_host(&req), None);
        req.insert_header("host", "Good.example:80").unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("good.example"));
    }

    #[test]
    fn routes_by_host_then_default() {
        let a = ["a.test".to_string()];
        let b = ["b.test".to_string()];
        let router = Router::new([(&a[..], false), (&b[..], true)]);
        assert_eq!(router.route("a.test"), Some(0));
        assert_eq!(router.route("zzz"), Some(1));
        assert_eq!(Router::new([(&a[..], false)]).route("zzz"), None);
    }
}
