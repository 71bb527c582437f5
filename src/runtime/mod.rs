//! The reloadable part of the proxy: sites, origins and policies, replaced as one on reload.
//!
//! Each request takes the current [`Runtime`] when it starts and keeps it to the end, so a
//! reload never mixes two configs within one request, and in-flight requests finish on the
//! config they started with. Listeners, worker threads, the cache's memory bound and the admin
//! listener are fixed for the life of the process.

mod router;
mod routes;
mod via;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::cache::CachePolicy;
use crate::cluster::{Cluster, ClusterParts};
use crate::compression::CompressionPolicy;
use crate::config::{Config, SiteSettings};
use crate::metrics::{Metrics, SiteMetrics};
use crate::upstream::{HealthEvents, OriginPool};
pub use router::Router;
pub use routes::{first_match, Route};
pub use via::Via;

/// One site at run time: its settings and its origin pool.
pub struct Site {
    /// Validated settings.
    pub settings: SiteSettings,
    /// Where its misses go.
    pub origins: Arc<OriginPool>,
    /// Its request metrics.
    pub metrics: SiteMetrics,
    /// Its per-path rules, in order.
    pub routes: Vec<Route>,
}

impl Site {
    /// The origins requests under `route` (an index into `routes`) go to.
    pub fn pool(&self, route: Option<usize>) -> &Arc<OriginPool> {
        route
            .and_then(|i| self.routes.get(i))
            .and_then(|r| r.origins.as_ref())
            .unwrap_or(&self.origins)
    }
}

/// Everything a reload replaces.
pub struct Runtime {
    /// 1 for the config loaded at startup, +1 per applied reload.
    pub version: u64,
    /// When this version was applied.
    pub loaded_at: SystemTime,
    /// The sites, in config order.
    pub sites: Vec<Site>,
    /// Host → site.
    pub router: Router,
    /// Cacheability defaults.
    pub policy: CachePolicy,
    /// What is compressed and how.
    pub compression: CompressionPolicy,
    /// `Via` values.
    pub via: Via,
    /// Port of the first TLS listener, for HTTPS redirects (None: 443 or no TLS listener).
    pub https_port: Option<u16>,
    /// Networks whose clients may send `PURGE`.
    pub purge_allow: Vec<ipnet::IpNet>,
    /// Add `Server-Timing` to responses.
    pub server_timing: bool,
    /// Where access-log lines go (None: off).
    pub access_log: Option<AccessLog>,
    /// The admin API's bearer token (None: every admin request is refused).
    pub admin_token: Option<String>,
    /// The cluster this node belongs to (None: a node on its own).
    pub cluster: Option<Arc<Cluster>>,
}

/// The current runtime, shared by the proxy, the reloader, the admin API and health checks.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

impl Runtime {
    /// The runtime for `config`, numbered `version`, counting requests in `metrics`, its
    /// cluster (if any) built on the long-lived `cluster` parts.
    pub fn new(
        config: &Config,
        version: u64,
        events: &HealthEvents,
        metrics: &Metrics,
        cluster: &ClusterParts,
    ) -> std::io::Result<Runtime> {
        let mut sites = Vec::with_capacity(config.sites.len());
        for settings in &config.sites {
            let name = settings.hosts.first().map_or("default", String::as_str);
            let routes = settings
                .routes
                .iter()
                .map(|route| Route::new(route, events))
                .collect::<std::io::Result<_>>()?;
            sites.push(Site {
                settings: settings.clone(),
                origins: Arc::new(OriginPool::new(settings, events)?),
                metrics: metrics.site(name),
                routes,
            });
        }
        Ok(Runtime {
            version,
            loaded_at: SystemTime::now(),
            sites,
            router: Router::new(config.sites.iter().map(|s| (&s.hosts[..], s.default))),
            policy: CachePolicy::new(&config.cache),
            compression: CompressionPolicy::new(&config.compression),
            via: Via::new(&config.server.via),
            https_port: config
                .server
                .listen_tls
                .first()
                .map(|a| a.port())
                .filter(|p| *p != 443),
            purge_allow: config.server.purge_allow.clone(),
            server_timing: config.server.server_timing,
            access_log: match config.server.access_log {
                true => Some(
                    AccessLog::open(&config.server.access_log_path, config.server.access_log_format)
                        .map_err(|e| {
                            let path = config.server.access_log_path.display();
                            std::io::Error::new(
                                e.kind(),
                                format!("server.access_log_path: cannot open {path}: {e}"),
                            )
                        })?,
                ),
                false => None,
            },
            admin_token: config.admin.as_ref().map(|a| a.token.clone()),
            cluster: config
                .cluster
                .clone()
                .map(|settings| Arc::new(Cluster::new(settings, cluster))),
        })
    }

    /// `purge` as the cache keys hold its URL: a URL purge's query reduced as the matching
    /// `[[site.route]]` rule reduces it in keys (so purging `/a?utm_source=x` finds `/a`).
    pub fn keyed_purge(&self, mut purge: crate::purge::Purge) -> crate::purge::Purge {
        if let crate::purge::PurgeScope::Url { host, path, .. } = &mut purge.scope {
            let Some(site) = self.router.route(host).map(|i| &self.sites[i]) else {
                return purge;
            };
            let bare = path.split('?').next().unwrap_or_default();
            if let Some(rule) = first_match(&site.routes, &http::Method::GET, bare) {
                let keyed = crate::cache::key::normalize_query(path, &site.routes[rule].settings.query);
                *path = keyed.into_owned();
            }
        }
        purge
    }

    /// The origin pools of every site and route (what the health checker checks).
    pub fn pools(&self) -> Vec<Arc<OriginPool>> {
        let routes = self
            .sites
            .iter()
            .flat_map(|s| &s.routes)
            .filter_map(|r| r.origins.clone());
        self.sites
            .iter()
            .map(|s| s.origins.clone())
            .chain(routes)
            .collect()
    }
}

/// A shared handle on `runtime`.
pub fn shared(runtime: Runtime) -> SharedRuntime {
    Arc::new(ArcSwap::from_pointee(runtime))
}
