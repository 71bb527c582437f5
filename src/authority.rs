//! The host and authority a request names, normalised once for every module that needs them:
//! routing picks a site by host, the cache keys on the authority, purges and config compare
//! hosts. A leaf module: it depends on nothing in the crate.

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

/// The host a request names as written: the URI authority when present (HTTP/2, absolute
/// form), else the `Host` header.
fn raw_authority(req: &RequestHeader) -> Option<&str> {
    match req.uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => req.headers.get(http::header::HOST)?.to_str().ok(),
    }
}

/// The normalised host a request is for: the URI authority when present (HTTP/2, absolute
/// form), else the `Host` header. `None` when both are missing or unusable.
pub fn request_host(req: &RequestHeader) -> Option<String> {
    let host = normalize_host(raw_authority(req)?);
    is_valid_host(&host).then_some(host)
}

/// A registered name (letters, digits, `-`, `.`, `_`) or a bracketed IPv6 literal: nothing a
/// port could be confused with.
fn is_valid_host(host: &str) -> bool {
    let name_byte = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => {
            !literal.is_empty()
                && literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        }
        None => !host.is_empty() && host.bytes().all(name_byte),
    }
}

/// An HTTP/1.0 request without `Host` (allowed in HTTP/1.0): served by the default site.
pub fn is_http10_without_host(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_10
        && req.uri.authority().is_none()
        && !req.headers.contains_key(http::header::HOST)
}

/// The port written after a host (`None` when absent or empty); `Err` when it is not a port.
fn port_of(raw: &str) -> Result<Option<u16>, ()> {
    let raw = raw.trim();
    let after_host = if raw.starts_with('[') {
        raw.split_once(']').map_or("", |(_, rest)| rest)
    } else {
        raw.rsplit_once(':').map_or("", |(_, port)| port)
    };
    let port = after_host.strip_prefix(':').unwrap_or(after_host);
    if port.is_empty() {
        return Ok(None);
    }
    port.parse().map(Some).map_err(|_| ())
}

/// The authority a request is forwarded with and cached under: its normalised host, plus the
/// port unless it is `scheme`'s default (`Site.TEST.:80` → `site.test`, `site.test:8080` stays).
/// Forwarding exactly what is keyed means no request can store a response built for another
/// authority under a key others hit. `None` when the host or port is unusable.
pub fn request_authority(req: &RequestHeader, scheme: &str) -> Option<String> {
    host_and_authority(req, scheme)
        .ok()
        .map(|(_, authority)| authority)
}

/// The normalised host and the authority (see [`request_authority`]) of a request, computed
/// once: `Err(true)` when it names a host with an unusable port, `Err(false)` when it names none.
pub fn host_and_authority(req: &RequestHeader, scheme: &str) -> Result<(String, String), bool> {
    let host = request_host(req).ok_or(false)?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = raw_authority(req).map(port_of).ok_or(false)?.map_err(|_| true)?;
    let authority = match port {
        Some(port) if port != default_port => {
            let mut authority = String::with_capacity(host.len() + 6);
            authority.push_str(&host);
            authority.push(':');
            authority.push_str(itoa::Buffer::new().format(port));
            authority
        }
        _ => host.clone(),
    };
    Ok((host, authority))
}

/// The host part of an authority built by [`request_authority`] (the port removed).
pub fn host_of_authority(authority: &[u8]) -> &[u8] {
    let end = if authority.first() == Some(&b'[') {
        authority
            .iter()
            .position(|b| *b == b']')
            .map_or(authority.len(), |i| i + 1)
    } else {
        authority
            .iter()
            .rposition(|b| *b == b':')
            .unwrap_or(authority.len())
    };
    &authority[..end]
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
        req.insert_header("host", "::").unwrap();
        assert_eq!(request_host(&req), None);
        req.insert_header("host", "[::1").unwrap();
        assert_eq!(request_host(&req), None);
        req.insert_header("host", "Good.example:80").unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("good.example"));
    }

    #[test]
    fn authority_keeps_non_default_ports_only() {
        let with_host = |host: &str| {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("host", host).unwrap();
            req
        };
        let authority = |host: &str, scheme: &str| request_authority(&with_host(host), scheme);
        assert_eq!(authority("Site.TEST.", "http").as_deref(), Some("site.test"));
        assert_eq!(authority("site.test:80", "http").as_deref(), Some("site.test"));
        assert_eq!(authority("site.test:", "http").as_deref(), Some("site.test"));
        assert_eq!(
            authority("SITE.test:6666", "http").as_deref(),
            Some("site.test:6666")
        );
        assert_eq!(authority("site.test:443", "https").as_deref(), Some("site.test"));
        assert_eq!(
            authority("site.test:443", "http").as_deref(),
            Some("site.test:443")
        );
        assert_eq!(authority("[::1]:8080", "http").as_deref(), Some("[::1]:8080"));
        assert_eq!(authority("site.test:port", "http"), None);
        assert_eq!(authority("site.test:99999", "http"), None);
        assert_eq!(host_of_authority(b"site.test:6666"), b"site.test");
        assert_eq!(host_of_authority(b"site.test"), b"site.test");
        assert_eq!(host_of_authority(b"[::1]:80"), b"[::1]");
        assert_eq!(host_of_authority(b"[::1]"), b"[::1]");
    }
}
