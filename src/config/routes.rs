//! Checking and freezing `[[site.route]]` rules: matchers, methods, an own origin pool built on
//! the site's settings, cache policy, cache-key parts, rewrites, header edits, rate limits and
//! redirects. Also proves what it can about the order: a rule that an earlier one always
//! matches first can never apply, and is refused.

use super::error::{ConfigError, Locator};
use super::file::{HeaderEditsSection, QuerySection, RateLimitSection, RedirectSection, RouteSection};
use super::model::*;

/// Longest period of a rate limit (pingora's estimator keeps two periods per key).
const MAX_RATE_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

/// The routes of site `site_index`, whose own settings are `site`.
pub(super) fn freeze_routes(
    sections: &[RouteSection],
    site: &SiteSettings,
    site_index: usize,
    at: &Locator,
) -> Result<Vec<RouteSettings>, ConfigError> {
    let mut routes = Vec::with_capacity(sections.len());
    for (index, section) in sections.iter().enumerate() {
        let key = |field: &str| format!("site[{site_index}].route[{index}].{field}");
        let route = freeze_route(section, site, index, at, &key)?;
        if let Some(earlier) = routes.iter().find(|r| shadows(r, &route)) {
            return Err(at.error(
                &key(matcher_key(section)),
                format!(
                    "this route can never match: route {:?} before it matches every request it would",
                    earlier.name
                ),
            ));
        }
        routes.push(route);
    }
    Ok(routes)
}

/// The key naming the route's matcher, for errors about it.
fn matcher_key(section: &RouteSection) -> &'static str {
    match (&section.path, &section.path_prefix, &section.path_regex) {
        (Some(_), _, _) => "path",
        (_, Some(_), _) => "path_prefix",
        (_, _, Some(_)) => "path_regex",
        _ => "name",
    }
}

fn freeze_route(
    section: &RouteSection,
    site: &SiteSettings,
    index: usize,
    at: &Locator,
    key: &dyn Fn(&str) -> String,
) -> Result<RouteSettings, ConfigError> {
    let path = path_match(section).map_err(|(field, m)| at.error(&key(field), m))?;
    let strip_prefix = match &section.strip_prefix {
        Some(strip) => Some(check_strip_prefix(strip, &path).map_err(|m| at.error(&key("strip_prefix"), m))?),
        None => None,
    };
    let methods = match &section.methods {
        Some(methods) => Some(
            methods
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        at.error(&key(&format!("methods[{i}]")), format!("{m:?} is not a method"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let ttl = |value: &Option<super::units::HumanDuration>, field: &str| match value {
        Some(d) if d.0.is_zero() => Err(at.error(&key(field), "must be greater than zero")),
        Some(d) => Ok(Some(d.0)),
        None => Ok(None),
    };
    Ok(RouteSettings {
        name: section.name.clone().unwrap_or_else(|| index.to_string()),
        path,
        methods,
        pool: route_pool(section, site, at, key)?,
        cache: section.cache,
        default_ttl: ttl(&section.default_ttl, "default_ttl")?,
        override_ttl: ttl(&section.override_ttl, "override_ttl")?,
        query: query_key(section.query.as_ref()).map_err(|m| at.error(&key("query"), m))?,
        key_headers: header_names(&section.key_headers)
            .map_err(|(i, m)| at.error(&key(&format!("key_headers[{i}]")), m))?,
        key_cookies: section.key_cookies.clone(),
        strip_prefix,
        request_headers: header_edits(section.request_headers.as_ref(), "request_headers", at, key)?,
        response_headers: header_edits(section.response_headers.as_ref(), "response_headers", at, key)?,
        rate_limit: match &section.rate_limit {
            Some(limit) => Some(
                rate_limit(limit).map_err(|(field, m)| at.error(&key(&format!("rate_limit.{field}")), m))?,
            ),
            None => None,
        },
        redirect: match &section.redirect {
            Some(redirect) => Some(
                freeze_redirect(redirect)
                    .map_err(|(field, m)| at.error(&key(&format!("redirect.{field}")), m))?,
            ),
            None => None,
        },
    })
}

fn path_match(section: &RouteSection) -> Result<PathMatch, (&'static str, String)> {
    let given = [&section.path, &section.path_prefix, &section.path_regex];
    if given.iter().filter(|m| m.is_some()).count() > 1 {
        return Err(("path", "give one of path, path_prefix and path_regex".into()));
    }
    if let Some(path) = &section.path {
        check_path(path).map_err(|m| ("path", m))?;
        return Ok(PathMatch::Exact(path.clone()));
    }
    if let Some(prefix) = &section.path_prefix {
        check_path(prefix).map_err(|m| ("path_prefix", m))?;
        return Ok(PathMatch::Prefix(prefix.clone()));
    }
    if let Some(pattern) = &section.path_regex {
        let regex = regex::Regex::new(pattern)
            .map_err(|e| ("path_regex", format!("invalid regular expression: {e}")))?;
        return Ok(PathMatch::Regex(regex));
    }
    Ok(PathMatch::Any)
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        return Err(format!("{path:?} must be a path starting with / (no query)"));
    }
    Ok(())
}

/// `strip` must be a leading part of every path the route matches.
fn check_strip_prefix(strip: &str, path: &PathMatch) -> Result<String, String> {
    let covered = match path {
        PathMatch::Prefix(prefix) | PathMatch::Exact(prefix) => prefix.starts_with(strip),
        PathMatch::Any | PathMatch::Regex(_) => false,
    };
    if !strip.starts_with('/') || strip.len() < 2 {
        return Err(format!("{strip:?} must be a path prefix such as \"/static\""));
    }
    if !covered {
        return Err(format!(
            "{strip:?} must be the start of the route's path or path_prefix, so every path it matches has it"
        ));
    }
    Ok(strip.trim_end_matches('/').to_string())
}

/// The route's own pool: the site's origin settings with the route's origins and overrides.
fn route_pool(
    section: &RouteSection,
    site: &SiteSettings,
    at: &Locator,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<Box<SiteSettings>>, ConfigError> {
    let Some(specs) = &section.origins else {
        let pool_keys = [
            section.lb.is_some(),
            section.retries.is_some(),
            section.health_check.is_some(),
            section.connect_timeout.is_some(),
            section.read_timeout.is_some(),
            section.write_timeout.is_some(),
        ];
        if pool_keys.contains(&true) {
            return Err(at.error(
                &key("origins"),
                "pool settings (lb, retries, health_check, timeouts) need the route's own origins",
            ));
        }
        return Ok(None);
    };
    if specs.is_empty() {
        return Err(at.error(&key("origins"), "at least one origin is required"));
    }
    let mut pool = site.clone();
    pool.routes = Vec::new();
    pool.origins = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            super::origins::freeze_origin(spec).map_err(|m| at.error(&key(&format!("origins[{i}]")), m))
        })
        .collect::<Result<_, _>>()?;
    if pool.origins.iter().all(|o| o.backup) {
        return Err(at.error(&key("origins"), "at least one origin must not be a backup"));
    }
    if let Some(lb) = section.lb {
        pool.lb = lb;
    }
    if let Some(retries) = section.retries {
        pool.retries = retries;
    }
    if let Some(check) = &section.health_check {
        let frozen = super::origins::freeze_health_check(check)
            .map_err(|(field, m)| at.error(&key(&format!("health_check.{field}")), m))?;
        pool.health_check = Some(frozen);
    }
    for (value, target, field) in [
        (
            section.connect_timeout,
            &mut pool.connect_timeout,
            "connect_timeout",
        ),
        (section.read_timeout, &mut pool.read_timeout, "read_timeout"),
        (section.write_timeout, &mut pool.write_timeout, "write_timeout"),
    ] {
        if let Some(timeout) = value {
            if timeout.0.is_zero() {
                return Err(at.error(&key(field), "must be greater than zero"));
            }
            *target = timeout.0;
        }
    }
    Ok(Some(Box::new(pool)))
}

fn query_key(section: Option<&QuerySection>) -> Result<QueryKey, String> {
    let patterns = |names: &[String]| -> Result<Vec<NamePattern>, String> {
        names
            .iter()
            .map(|n| match n.matches('*').count() {
                0 | 1 if !n.is_empty() => Ok(NamePattern::new(n)),
                _ => Err(format!("{n:?}: a parameter name, with at most one *")),
            })
            .collect()
    };
    match section {
        None => Ok(QueryKey::Keep),
        Some(QuerySection::Mode(mode)) => match mode.as_str() {
            "keep" => Ok(QueryKey::Keep),
            "sort" => Ok(QueryKey::Sort),
            "ignore" => Ok(QueryKey::Ignore),
            other => Err(format!(
                "{other:?}: use \"keep\", \"sort\", \"ignore\", {{ keep = [...] }} or {{ drop = [...] }}"
            )),
        },
        Some(QuerySection::Lists {
            keep: Some(keep),
            drop: None,
        }) => Ok(QueryKey::Only(patterns(keep)?)),
        Some(QuerySection::Lists {
            keep: None,
            drop: Some(drop),
        }) => Ok(QueryKey::Without(patterns(drop)?)),
        Some(QuerySection::Lists { .. }) => Err("give one of keep = [...] and drop = [...]".into()),
    }
}

/// `names` parsed as header names; the index and the reason of the first that is not one.
pub(super) fn header_names(names: &[String]) -> Result<Vec<http::HeaderName>, (usize, String)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (i, format!("{name:?} is not a header name")))
        })
        .collect()
}

fn header_edits(
    section: Option<&HeaderEditsSection>,
    field: &str,
    at: &Locator,
    key: &dyn Fn(&str) -> String,
) -> Result<HeaderEdits, ConfigError> {
    let Some(section) = section else {
        return Ok(HeaderEdits::default());
    };
    let mut edits = HeaderEdits::default();
    for (name, value) in &section.set {
        let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            at.error(
                &key(&format!("{field}.set")),
                format!("{name:?} is not a header name"),
            )
        })?;
        if is_framing(&header) {
            return Err(at.error(
                &key(&format!("{field}.set")),
                format!("{name} describes the message framing and cannot be set"),
            ));
        }
        let value = http::HeaderValue::from_str(value).map_err(|_| {
            at.error(
                &key(&format!("{field}.set")),
                format!("the value of {name} is not a valid header value"),
            )
        })?;
        edits.set.push((header, value));
    }
    let remove =
        header_names(&section.remove).map_err(|(i, m)| at.error(&key(&format!("{field}.remove[{i}]")), m))?;
    if let Some(framing) = remove.iter().find(|h| is_framing(h)) {
        return Err(at.error(
            &key(&format!("{field}.remove")),
            format!("{framing} describes the message framing and cannot be removed"),
        ));
    }
    edits.remove = remove;
    Ok(edits)
}

/// Fields a header edit must not touch: they frame the message or route it.
fn is_framing(name: &http::HeaderName) -> bool {
    use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
    [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, HOST, UPGRADE].contains(name)
}

fn rate_limit(section: &RateLimitSection) -> Result<RateLimitSettings, (&'static str, String)> {
    if section.requests == 0 {
        return Err(("requests", "must be at least 1".into()));
    }
    if section.per.0 < std::time::Duration::from_millis(100) || section.per.0 > MAX_RATE_PERIOD {
        return Err(("per", "must be between 100ms and 1h".into()));
    }
    let header = match section.key.as_str() {
        "client_ip" => None,
        other => {
            let name = other.strip_prefix("header:").ok_or((
                "key",
                format!("{other:?}: use \"client_ip\" or \"header:<name>\" (a header a trusted proxy in front sets)"),
            ))?;
            Some(
                http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| ("key", format!("{name:?} is not a header name")))?,
            )
        }
    };
    Ok(RateLimitSettings {
        requests: section.requests,
        per: section.per.0,
        header,
    })
}

fn freeze_redirect(section: &RedirectSection) -> Result<RedirectSettings, (&'static str, String)> {
    if ![301, 302, 303, 307, 308].contains(&section.status) {
        return Err((
            "status",
            format!(
                "{} is not a redirect status (301, 302, 303, 307, 308)",
                section.status
            ),
        ));
    }
    let to = http::HeaderValue::from_str(&section.to)
        .ok()
        .filter(|_| !section.to.is_empty())
        .ok_or(("to", format!("{:?} is not a valid Location", section.to)))?;
    Ok(RedirectSettings {
        to,
        status: section.status,
    })
}

/// Whether `earlier` matches every request `later` matches (so `later` never applies): it
/// covers `later`'s paths and methods. Only what can be proved: prefixes and exact paths.
fn shadows(earlier: &RouteSettings, later: &RouteSettings) -> bool {
    let methods_covered = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    };
    let paths_covered = match (&earlier.path, &later.path) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(e), PathMatch::Prefix(l) | PathMatch::Exact(l)) => l.starts_with(e.as_str()),
        (PathMatch::Exact(e), PathMatch::Exact(l)) => e == l,
        _ => false,
    };
    methods_covered && paths_covered
}
