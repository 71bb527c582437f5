//! Purging: what may be purged, by whom, and how it is reported.
//!
//! Two ways in. The admin API's `POST /purge` takes a JSON body naming one URL, a URL prefix, a
//! host or a tag, hard or soft ([`parse_purge_request`], applied with [`Purge::apply`]). The
//! `PURGE` method on the traffic listener deletes one URL, for clients in `purge_allow`
//! ([`may_purge`]); pingora applies it. Both end in one [`PurgeReport`]: a counter, a log line
//! and a `purge` event, with the same payload. The storage side (what a scope covers, and purges
//! winning over fills in flight) is [`crate::cache::purge_log`].

use std::net::IpAddr;

use serde::Deserialize;

pub use crate::cache::purge_log::PurgeScope;
use crate::cache::MokaStorage;
use crate::event_kind::EventKind;
use crate::events::EventSink;
use crate::metrics::Metrics;

/// Which door a purge came through, as its event's `via` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeVia<'a> {
    /// `POST /purge` on the admin API.
    AdminApi,
    /// The `PURGE` method on the traffic listener.
    PurgeMethod,
    /// Sent by the cluster peer with this id (which took it through one of the others).
    Peer(&'a str),
}

impl PurgeVia<'_> {
    fn as_str(&self) -> String {
        match self {
            PurgeVia::AdminApi => "admin".into(),
            PurgeVia::PurgeMethod => "PURGE".into(),
            PurgeVia::Peer(node) => format!("peer:{node}"),
        }
    }
}

/// A checked purge: what it names and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// `url`, `prefix`, `host` or `tag`.
    pub kind: &'static str,
    /// The target as the operator wrote it.
    pub target: String,
    /// What it covers in the cache.
    pub scope: PurgeScope,
    /// Mark stale instead of deleting.
    pub soft: bool,
}

impl Purge {
    /// Purges the scope from `storage`: the number of entries deleted (or marked stale).
    pub fn apply(&self, storage: &MokaStorage) -> usize {
        storage.purge_scope(&self.scope, self.soft)
    }

    /// The `POST /purge` body asking for this purge (what peers are sent).
    pub fn request_body(&self) -> Vec<u8> {
        request_body(self.kind, &self.target, self.soft)
    }

    /// The report of this purge having touched `entries`.
    pub fn report<'a>(&'a self, entries: usize, via: PurgeVia<'a>) -> PurgeReport<'a> {
        PurgeReport {
            kind: self.kind,
            target: &self.target,
            soft: self.soft,
            entries,
            via,
        }
    }
}

/// What a done purge tells the operator.
#[derive(Debug, Clone, Copy)]
pub struct PurgeReport<'a> {
    /// `url`, `prefix`, `host` or `tag`.
    pub kind: &'static str,
    /// The target as given (for `PURGE`, the URL as requested).
    pub target: &'a str,
    /// Marked stale rather than deleted.
    pub soft: bool,
    /// Entries touched.
    pub entries: usize,
    /// Where the purge came from.
    pub via: PurgeVia<'a>,
}

impl PurgeReport<'_> {
    /// Counts the purge, logs it and emits its `purge` event.
    pub fn send(&self, metrics: &Metrics, events: &EventSink) {
        let (kind, target, soft, entries) = (self.kind, self.target, self.soft, self.entries);
        let via = self.via.as_str();
        let via = via.as_str();
        metrics.purged(kind, soft, entries);
        tracing::info!(kind, target, soft, entries, via, "purge");
        events.emit(
            EventKind::Purge,
            serde_json::json!({ "kind": kind, "target": target, "soft": soft, "entries": entries, "via": via }),
        );
    }
}

/// The `POST /purge` body for a purge of `kind` (`url`, `prefix`, `host`, `tag`) of `target`.
pub fn request_body(kind: &str, target: &str, soft: bool) -> Vec<u8> {
    let mut body = serde_json::Map::new();
    body.insert(kind.into(), target.into());
    body.insert("soft".into(), soft.into());
    serde_json::Value::Object(body).to_string().into_bytes()
}

/// Whether a `PURGE` from `client` is allowed by `allow` (the `purge_allow` networks).
pub fn may_purge(client: Option<IpAddr>, allow: &[ipnet::IpNet]) -> bool {
    client.is_some_and(|ip| allow.iter().any(|net| net.contains(&ip)))
}

/// A `POST /purge` body, parsed and checked. Public so the parser can be tested on any input.
pub fn parse_purge_request(body: &[u8]) -> Result<Purge, String> {
    let request: PurgeRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid purge request: {e}"))?;
    request.checked()
}

/// `POST /purge` body: exactly one of `url`, `prefix`, `host`, `tag`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    tag: Option<String>,
    /// Mark stale instead of deleting.
    #[serde(default)]
    soft: bool,
}

impl PurgeRequest {
    /// The purge this body asks for.
    fn checked(&self) -> Result<Purge, String> {
        let (kind, target, scope) = self.scope()?;
        Ok(Purge {
            kind,
            target,
            scope,
            soft: self.soft,
        })
    }

    /// The kind, the target as given, and the scope.
    fn scope(&self) -> Result<(&'static str, String, PurgeScope), String> {
        let given = [&self.url, &self.prefix, &self.host, &self.tag];
        if given.iter().filter(|v| v.is_some()).count() != 1 {
            return Err("give exactly one of url, prefix, host, tag".into());
        }
        if let Some(url) = &self.url {
            let (scheme, host, path) = split_url(url)?;
            return Ok(("url", url.clone(), PurgeScope::Url { scheme, host, path }));
        }
        if let Some(prefix) = &self.prefix {
            let (scheme, host, path) = split_url(prefix)?;
            return Ok((
                "prefix",
                prefix.clone(),
                PurgeScope::Prefix { scheme, host, path },
            ));
        }
        if let Some(host) = &self.host {
            let normalized = crate::authority::normalize_host(host);
            return Ok(("host", host.clone(), PurgeScope::Host(normalized)));
        }
        let tag = self.tag.clone().unwrap_or_default();
        if tag.is_empty() {
            return Err("tag must not be empty".into());
        }
        Ok(("tag", tag.clone(), PurgeScope::Tag(tag)))
    }
}

/// `http://Host:port/path?q` → (`Some("http")`, `host`, `/path?q`); `//host/path` and
/// `host/path` leave the scheme open (both http and https).
fn split_url(url: &str) -> Result<(Option<String>, String, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => (Some(scheme.to_string()), rest),
        Some(_) => return Err(format!("{url:?}: only http and https URLs are cached")),
        None => (None, url.trim_start_matches("//")),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = crate::authority::normalize_host(host);
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok((scheme, host, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_and_path() {
        assert_eq!(
            split_url("http://Example.com:8080/a?b").unwrap(),
            (Some("http".into()), "example.com".into(), "/a?b".into())
        );
        assert_eq!(
            split_url("example.com").unwrap(),
            (None, "example.com".into(), "/".into())
        );
        assert!(split_url("ftp://x/y").is_err());
        assert!(split_url("http:///y").is_err());
    }

    #[test]
    fn purge_requests_name_exactly_one_target() {
        let parse = |text: &str| serde_json::from_str::<PurgeRequest>(text).unwrap().scope();
        assert!(parse(r#"{"url": "http://h/a", "tag": "t"}"#).is_err());
        assert!(parse(r#"{"soft": true}"#).is_err());
        let (kind, _, scope) = parse(r#"{"tag": "product-1", "soft": true}"#).unwrap();
        assert_eq!((kind, scope), ("tag", PurgeScope::Tag("product-1".into())));
    }
}
