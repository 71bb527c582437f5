//! Routing a request: its site by host, its rule by path, its cache target, and the answers
//! that end it early (400 for a bad host, 404 for an unknown one, 308 to HTTPS, a rule's
//! redirect, 429 over a rule's rate limit, a refused `PURGE`).

use pingora::proxy::Session;
use pingora::Result;

use super::ctx::RequestCtx;
use super::respond::{self, respond_text};
use crate::authority;
use crate::cache::CacheTarget;
use crate::compression::Accepted;
use crate::purge;
use crate::runtime::{self, Route};

/// Decides the request's site and cache target; answers 400/404 itself when there is none.
/// An HTTP/1.0 request may omit `Host`: it goes to the default site, uncached.
pub async fn route(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let req = session.req_header();
    let scheme = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    };
    let runtime = ctx.runtime.clone();
    let default_site = runtime.router.default_site();
    let (host, authority) = match authority::host_and_authority(req, scheme) {
        Ok((host, authority)) => (Some(host), Some(authority)),
        Err(false) if default_site.is_some() && authority::is_http10_without_host(req) => (None, None),
        Err(bad_port) => {
            let message = if bad_port {
                "invalid port in Host header\n"
            } else {
                "missing or invalid Host header\n"
            };
            respond_text(session, 400, message).await?;
            return Ok(true);
        }
    };
    let site = match &host {
        Some(host) => runtime.router.route(host),
        None => default_site,
    };
    let Some(site) = site else {
        respond_text(session, 404, "no site is configured for this host\n").await?;
        return Ok(true);
    };
    let settings = &runtime.sites[site].settings;
    for name in &settings.strip_request_headers {
        session.req_header_mut().remove_header(name);
    }
    ctx.route.site = Some(site);
    ctx.route.scheme = scheme;
    ctx.encoding.compress = settings.compress;
    ctx.encoding.accepted = Accepted::of_request(session.req_header());
    let req = session.req_header();
    let rule = runtime::first_match(&runtime.sites[site].routes, &req.method, req.uri.path());
    ctx.route.rule = rule;
    let query = rule.map(|i| &runtime.sites[site].routes[i].settings.query);
    ctx.route.target = match (&host, authority) {
        (Some(host), Some(authority)) => {
            CacheTarget::with_authority(session.req_header(), scheme, host.clone(), authority).map(|target| {
                match query {
                    Some(query) => target.with_query_key(query),
                    None => target,
                }
            })
        }
        _ => None,
    };
    if let Some(rule) = rule.map(|i| &runtime.sites[site].routes[i]) {
        if apply_rule(session, rule).await? {
            return Ok(true);
        }
    }
    if session.req_header().method.as_str() == "PURGE" {
        return authorise_purge(session, ctx).await;
    }
    if let (Some(host), "http", true) = (&host, scheme, settings.redirect_https) {
        respond::redirect_to_https(session, host, runtime.https_port).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Answers the request itself when its rule says so: a redirect, or 429 over the rate limit.
async fn apply_rule(session: &mut Session, rule: &Route) -> Result<bool> {
    if let Some(redirect) = &rule.settings.redirect {
        respond::redirect(session, redirect.status, redirect.to.clone()).await?;
        return Ok(true);
    }
    if let Some(limit) = &rule.settings.rate_limit {
        let req = session.req_header();
        let client = match &limit.header {
            Some(name) => req.headers.get(name).map(|v| v.as_bytes().to_vec()),
            None => None,
        };
        let client = client.unwrap_or_else(|| {
            let ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
            ip.map(|ip| ip.to_string().into_bytes()).unwrap_or_default()
        });
        if let Err(wait) = rule.admit(&client) {
            respond::too_many_requests(session, wait).await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Lets a `PURGE` through to the cache when its client may purge (else 403) and the site
/// caches (else 405).
async fn authorise_purge(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
    if !purge::may_purge(client, &ctx.runtime.purge_allow) {
        respond_text(session, 403, "PURGE is not allowed from this address\n").await?;
        return Ok(true);
    }
    if !ctx.site().is_some_and(|s| s.settings.cache) || ctx.route.target.is_none() {
        respond_text(session, 405, "nothing is cached for this URL\n").await?;
        return Ok(true);
    }
    ctx.route.purge = true;
    Ok(false)
}

/// Whether the request uses the cache: `None` when it does not (a method other than GET and
/// HEAD, a site that does not cache, no target, a GET or HEAD carrying a body), else whether it
/// waits for a fill of the same URL already under way.
pub fn cache_use(session: &mut Session, ctx: &RequestCtx) -> Option<bool> {
    let cacheable_method = matches!(
        session.req_header().method,
        http::Method::GET | http::Method::HEAD
    ) || ctx.route.purge;
    let site_caches = ctx.site().is_some_and(|s| s.settings.cache)
        && ctx.rule().is_none_or(|r| r.settings.cache != Some(false));
    if !cacheable_method || !site_caches || ctx.route.target.is_none() {
        return None;
    }
    // A GET or HEAD with a body ("fat GET") is forwarded with it; the response may depend on
    // the body, which the key does not hold, so it is neither looked up nor stored.
    if !ctx.route.purge && !session.is_body_empty() {
        return None;
    }
    // A peer asking whether this node holds a URL must not queue behind a fill here: that fill
    // may be waiting for the asking peer.
    let probe = ctx.cluster.from_peer.is_some() && crate::cache::policy::only_if_cached(session.req_header());
    Some(!probe)
}
