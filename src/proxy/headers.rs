//! Header rewriting between client and origin: hop-by-hop removal and forwarding headers.

use http::header::{HeaderName, CONNECTION};
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType, OrErr, Result};

use super::ctx::RequestCtx;

use crate::field_list;
use crate::ip_text::IpText;

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the proxy. `Transfer-Encoding` is left
/// to pingora, which re-frames bodies itself; `Upgrade` is kept only for protocol switches.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
];

/// Names listed in `Connection` that the message holds and [`HOP_BY_HOP`] does not cover:
/// hop-by-hop for this message too.
fn connection_listed(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    field_list::items(headers, CONNECTION)
        .filter(|name| !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .filter(|name| name != "transfer-encoding" && name != "upgrade" && headers.contains_key(name))
}

/// Whether `headers` holds a hop-by-hop header (or `Upgrade`): one pass over the names, so the
/// usual message without any is left without a lookup per name.
fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(is_hop_by_hop_or_upgrade)
}

fn is_hop_by_hop_or_upgrade(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || name == http::header::UPGRADE
}

/// The hop-by-hop headers `headers` holds (with `Upgrade`), and those its `Connection` lists.
fn present_hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop_or_upgrade(name))
        .cloned()
        .collect();
    names.extend(connection_listed(headers));
    names
}

/// Removes hop-by-hop headers from a request going to the origin.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader) {
    if !has_hop_by_hop(&req.headers) {
        return;
    }
    for name in present_hop_by_hop(&req.headers) {
        if name != http::header::UPGRADE {
            req.remove_header(&name);
        }
    }
}

/// Removes hop-by-hop headers from a response going to the client (and into the cache).
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if !has_hop_by_hop(&resp.headers) {
        return;
    }
    for name in present_hop_by_hop(&resp.headers) {
        if name != http::header::UPGRADE || resp.status != 101 {
            resp.remove_header(&name);
        }
    }
}

/// The one value of repeated, identical `Content-Length` fields, which are then to be collapsed
/// into one (RFC 9112 §6.3); `None` when there is at most one field or the values differ (left
/// for the parser to reject).
pub fn repeated_content_length(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let mut repeated = false;
    for value in values {
        if value != first {
            return None;
        }
        repeated = true;
    }
    repeated.then(|| first.clone())
}

/// Sets `X-Forwarded-For` (appending the client to any earlier list) and `X-Forwarded-Proto`.
pub fn set_forwarded(req: &mut RequestHeader, client_ip: Option<std::net::IpAddr>, scheme: &'static str) {
    if let Some(ip) = client_ip {
        let earlier = req.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
        let mut value = String::with_capacity(earlier.map_or(0, str::len) + 48);
        if let Some(list) = earlier.filter(|list| !list.trim().is_empty()) {
            value.push_str(list);
            value.push_str(", ");
        }
        value.push_str(IpText::of(ip).as_str());
        let _ = req.insert_header(X_FORWARDED_FOR, value);
    }
    let _ = req.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

/// `X-Forwarded-For`, set on every forwarded request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `X-Forwarded-Proto`, set on every forwarded request.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether `req` carries exactly one `Host` field, equal to `authority`.
fn has_host(req: &RequestHeader, authority: &str) -> bool {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    hosts
        .next()
        .is_some_and(|host| host.as_bytes() == authority.as_bytes())
        && hosts.next().is_none()
}

/// Makes a client's request fit to forward: origin-form URI with a `Host` (whatever the
/// client's protocol), exactly the authority the response is cached under, no hop-by-hop
/// headers, one `Content-Length`, `Via` and `X-Forwarded-*`.
pub fn prepare_for_origin(
    upstream_request: &mut RequestHeader,
    ctx: &RequestCtx,
    client_ip: Option<std::net::IpAddr>,
    client_version: http::Version,
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
        Some(target) if !has_host(upstream_request, &target.authority) => {
            upstream_request.insert_header(http::header::HOST, &target.authority)?
        }
        Some(_) => {}
        None if upstream_request.headers.get(http::header::HOST).is_none() => {
            if let Some(host) = ctx.site().and_then(|s| s.settings.hosts.first()) {
                upstream_request.insert_header(http::header::HOST, host)?;
            }
        }
        None => {}
    }
    strip_request_hop_by_hop(upstream_request);
    if let Some(length) = repeated_content_length(&upstream_request.headers) {
        upstream_request.insert_header(http::header::CONTENT_LENGTH, length)?;
    }
    upstream_request.append_header(http::header::VIA, ctx.runtime.via.for_version(client_version))?;
    set_forwarded(upstream_request, client_ip, ctx.route.scheme);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("x-kept", "1").unwrap();
        strip_request_hop_by_hop(&mut req);
        assert!(req.headers.get("connection").is_none());
        assert!(req.headers.get("keep-alive").is_none());
        assert!(req.headers.get("x-secret").is_none());
        assert!(req.headers.get("x-kept").is_some());
    }

    #[test]
    fn identical_content_lengths_collapse_and_different_ones_stay() {
        let mut headers = HeaderMap::new();
        headers.append("content-length", HeaderValue::from_static("5"));
        assert_eq!(repeated_content_length(&headers), None);
        headers.append("content-length", HeaderValue::from_static("5"));
        assert_eq!(
            repeated_content_length(&headers),
            Some(HeaderValue::from_static("5"))
        );
        headers.append("content-length", HeaderValue::from_static("6"));
        assert_eq!(repeated_content_length(&headers), None);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        set_forwarded(&mut req, Some([127, 0, 0, 1].into()), "http");
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn a_response_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", "5").unwrap();
        assert!(!has_hop_by_hop(&resp.headers));
        resp.insert_header("upgrade", "h2c").unwrap();
        assert!(has_hop_by_hop(&resp.headers));
        strip_response_hop_by_hop(&mut resp);
        assert!(resp.headers.get("upgrade").is_none());
    }
}
