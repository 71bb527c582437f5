//! What a matched `[[site.route]]` rule changes on the way through: the request sent to the
//! origin (path prefix stripped, headers set and removed), the response sent to the client
//! (headers set and removed), and the cache key's extra parts (listed request headers and
//! cookies, which select a variant of the URL's entry the way `Vary` does, so a purge of the
//! URL removes them all).

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use super::ctx::RequestCtx;
use crate::cache::policy::RuleTtl;

/// Rewrites the request to the origin as the rule says: `strip_prefix`, `request_headers`.
/// A request forwarded to its owner in the cluster goes as it came: the owner applies the rule
/// when it asks the origin.
pub fn rewrite_for_origin(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(rule) = ctx.rule().filter(|_| !super::peer::is_forwarded(ctx)) else {
        return Ok(());
    };
    let settings = &rule.settings;
    if let Some(prefix) = &settings.strip_prefix {
        if let Some(stripped) = strip_prefix(&upstream_request.uri, prefix) {
            upstream_request.set_uri(stripped);
        }
    }
    let edits = &settings.request_headers;
    for name in &edits.remove {
        upstream_request.remove_header(name);
    }
    for (name, value) in &edits.set {
        upstream_request.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Edits the response to the client as the rule says (`response_headers`), hits included.
pub fn edit_response(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(rule) = ctx.rule() else {
        return Ok(());
    };
    let edits = &rule.settings.response_headers;
    for name in &edits.remove {
        resp.remove_header(name);
    }
    for (name, value) in &edits.set {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// `uri` without `prefix` at the start of its path (`/static/a.css` → `/a.css`; the prefix
/// itself → `/`); `None` when the path does not start with it on a segment boundary.
fn strip_prefix(uri: &http::Uri, prefix: &str) -> Option<http::Uri> {
    let path = uri.path();
    let rest = path.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = if rest.is_empty() { "/" } else { rest };
    let rewritten = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    rewritten.parse().ok()
}

/// The rule's freshness settings for the response being stored.
pub fn ttl(ctx: &RequestCtx) -> RuleTtl {
    ctx.rule().map_or_else(RuleTtl::default, |rule| RuleTtl {
        default_ttl: rule.settings.default_ttl,
        override_ttl: rule.settings.override_ttl,
    })
}

/// Whether the rule overrides the origin's freshness (`Cache-Status` says `detail=override`).
pub fn overrides_ttl(ctx: &RequestCtx) -> bool {
    ctx.rule()
        .is_some_and(|rule| rule.settings.override_ttl.is_some())
}

/// The rule's extra cache-key parts of `req`: each listed header's value and each listed
/// cookie's value (empty when absent), named so they cannot collide with `Vary` headers.
pub fn key_parts(req: &RequestHeader, ctx: &RequestCtx) -> Vec<(String, Vec<u8>)> {
    let Some(rule) = ctx.rule() else {
        return Vec::new();
    };
    let settings = &rule.settings;
    let mut parts = Vec::with_capacity(settings.key_headers.len() + settings.key_cookies.len());
    for name in &settings.key_headers {
        let mut value = Vec::new();
        for (i, line) in req.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(line.as_bytes().trim_ascii());
        }
        parts.push((format!("key-header:{name}"), value));
    }
    for cookie in &settings.key_cookies {
        let value = cookie_value(req, cookie).unwrap_or_default();
        parts.push((format!("key-cookie:{cookie}"), value.as_bytes().to_vec()));
    }
    parts
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie_value<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stripped_on_segment_boundaries() {
        let uri = |s: &str| -> http::Uri { s.parse().unwrap() };
        assert_eq!(
            strip_prefix(&uri("/static/a.css?v=1"), "/static").unwrap(),
            "/a.css?v=1"
        );
        assert_eq!(strip_prefix(&uri("/static"), "/static").unwrap(), "/");
        assert_eq!(strip_prefix(&uri("/staticky"), "/static"), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1; lang=fr").unwrap();
        req.append_header("cookie", "b=2").unwrap();
        assert_eq!(cookie_value(&req, "lang"), Some("fr"));
        assert_eq!(cookie_value(&req, "b"), Some("2"));
        assert_eq!(cookie_value(&req, "la"), None);
    }
}
