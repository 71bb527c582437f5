//! Header rewriting between client and origin: hop-by-hop removal and forwarding headers.

use http::header::{HeaderName, CONNECTION};
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType, OrErr, Result};

use super::ctx::RequestCtx;

use crate::field_list;

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

/// Names listed in `Connection`, which are hop-by-hop for this message.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    field_list::items(headers, CONNECTION)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .filter(|name| name != "transfer-encoding" && name != "upgrade")
        .collect()
}

/// Removes hop-by-hop headers from a request going to the origin.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader) {
    for name in connection_listed(&req.headers) {
        req.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
}

/// Removes hop-by-hop headers from a response going to the client (and into the cache).
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    for name in connection_listed(&resp.headers) {
        resp.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        resp.remove_header(name);
    }
    if resp.status != 101 {
        resp.remove_header("upgrade");
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
pub fn set_forwarded(req: &mut RequestHeader, client_ip: Option<std::net::IpAddr>, scheme: &str) {
    if let Some(ip) = client_ip {
        let earlier = req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let value = match earlier {
            Some(list) if !list.trim().is_empty() => format!("{list}, {ip}"),
            _ => ip.to_string(),
        };
        let _ = req.insert_header("x-forwarded-for", value);
    }
    let _ = req.insert_header("x-forwarded-proto", scheme);
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
        Some(target) => upstream_request.insert_header(http::header::HOST, &target.authority)?,
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
}
