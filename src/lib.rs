//! edgecache: a caching reverse proxy and edge CDN node on pingora.
//!
//! Client connections are admitted and bounded first ([`proxy::connections`]: limits per node
//! and per address, header, idle, handshake and send deadlines, HTTP/2 reset floods, draining
//! on shutdown). A request then moves through these phases (see [`proxy::EdgeProxy`]):
//!
//! 1. `request_filter`: route by `Host` to a site ([`proxy::route`], hosts read by
//!    [`authority`], sites by [`runtime::Router`]); 400/404 otherwise; then by path to the
//!    site's first matching `[[site.route]]` rule ([`runtime::first_match`], applied by
//!    [`proxy::rules`]: redirects, rate limits, key shape, rewrites, header edits).
//! 2. `request_cache_filter` / `cache_key_callback`: enable the cache for GET/HEAD
//!    ([`cache::CacheEngine`]) and derive the key from scheme, host, path and query
//!    ([`cache::key`]).
//! 3. lookup in [`cache::MokaStorage`]; `cache_vary_filter` picks the variant
//!    ([`cache::vary`]); `cache_hit_filter` applies request directives ([`cache::policy`]).
//! 4. hit: served from memory (304, HEAD and Range handled by pingora). Miss or stale: one
//!    request per key goes to an origin ([`upstream`], prepared by [`proxy::headers`], retried
//!    by [`proxy::retry`]) while others wait on the cache lock.
//! 5. `response_cache_filter`: store or not, and for how long ([`cache::policy`]).
//! 6. `response_filter`: `Cache-Status`, `Via` and the rest ([`proxy::decorate`]); on-the-fly
//!    compression of responses not served from the cache ([`proxy::encoding`]); `logging`:
//!    metrics and one access-log line ([`proxy::record`]).
//!
//! Stored responses are compressed once per coding ([`cache::codings`]); the storage picks
//! the coding each client accepts. Sites, origins and policies live in a [`runtime::Runtime`]
//! that [`reload`] replaces as a whole. Purges, from the [`admin`] API or the `PURGE` method,
//! go through [`purge`]; the admin listener also serves the dashboard, drawn from [`history`].
//! Webhooks ([`events`], kinds in [`event_kind`]), health checks
//! ([`upstream::HealthCheckRunner`]) and the [`stop`] watcher run as background services next
//! to the proxy; [`server`] assembles them all.
//!
//! In a cluster ([`cluster`]), a miss goes first to the URL's owner among the peers
//! ([`proxy::peer`]), and purges reach every node.
//!
//! Imports point down: leaf modules ([`authority`], [`field_list`], [`event_kind`],
//! [`status`]) import nothing of the crate; [`config`], [`cache`] and [`compression`] never
//! import from [`proxy`], [`runtime`] or the services.

pub mod access_log;
pub mod admin;
pub mod admin_client;
pub mod authority;
pub mod cache;
pub mod cluster;
pub mod compression;
pub mod config;
pub mod demo;
pub mod event_kind;
pub mod events;
pub mod field_list;
pub mod history;
pub mod ip_text;
pub mod lazy_thread;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod purge;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod status;
pub mod stop;
pub mod tls;
pub mod upstream;
