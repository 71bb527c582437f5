//! Live reload: on SIGHUP (or `POST /reload` on the admin API) the config file is re-read,
//! validated, and applied without dropping a connection or emptying the cache.
//!
//! Sites, origins, health checks, cache and compression policies, TLS certificates, purge and
//! logging settings and webhooks are swapped atomically: requests already running finish on the
//! config they started with, new ones get the new one. An invalid file is rejected with its
//! file, line and key in the log and a `config_rejected` event, and the running config stays.
//! Listeners, worker threads, `max_memory`, `max_object_size` and the admin listener need an
//! upgrade (`-u`); a reload that changes them says so in the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::signal::unix::{signal, SignalKind};

use crate::cache::MokaStorage;
use crate::cluster::ClusterParts;
use crate::compression::CompressionPolicy;
use crate::config::{Config, ConfigError};
use crate::event_kind::EventKind;
use crate::events::{Endpoints, EventSink};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, SharedRuntime};
use crate::tls::SniResolver;
use crate::upstream::HealthEvents;

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The file is valid but could not be put in place (an origin or the access log).
    #[error("{file}: cannot apply config: {source}")]
    Apply {
        /// The config file.
        file: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The proxy runs on the built-in config, which has no file to re-read.
    #[error("running on the built-in config: there is no file to reload")]
    BuiltIn,
}

/// The running parts a reload replaces or updates.
pub struct Targets {
    /// Sites, origins, policies, logging, admin token.
    pub runtime: SharedRuntime,
    /// The cache, whose compression policy changes.
    pub storage: &'static MokaStorage,
    /// Certificates served on the TLS listeners.
    pub certificates: Arc<SniResolver>,
    /// Where new origin pools publish health changes.
    pub health_events: HealthEvents,
    /// Webhook endpoints.
    pub webhooks: Endpoints,
    /// What the cluster keeps across reloads.
    pub cluster: ClusterParts,
    /// Where reloads and rejections are announced.
    pub events: EventSink,
    /// Metrics the new sites count into.
    pub metrics: Arc<Metrics>,
}

/// Applies the config file to the running process.
pub struct Reloader {
    /// The file to re-read; `None` for the built-in config.
    config_file: Option<PathBuf>,
    /// The config of the running process (for settings a reload cannot change).
    started_with: Config,
    targets: Targets,
    /// One reload at a time.
    applying: Mutex<()>,
}

impl Reloader {
    /// A reloader for the file `config` came from, updating `targets`.
    pub fn new(config: &Config, targets: Targets) -> Reloader {
        Reloader {
            config_file: Some(config.source.clone()).filter(|path| path.is_file()),
            started_with: config.clone(),
            targets,
            applying: Mutex::new(()),
        }
    }

    /// Re-reads, validates and applies the config file; returns the new config version. On
    /// error nothing changes. Logs and emits an event either way.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let result = self.apply();
        match &result {
            Ok(version) => {
                tracing::info!(version, "config reloaded");
                self.targets
                    .events
                    .emit(EventKind::ConfigReload, serde_json::json!({ "version": version }));
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                self.targets.events.emit(
                    EventKind::ConfigRejected,
                    serde_json::json!({ "error": e.to_string() }),
                );
            }
        }
        result
    }

    fn apply(&self) -> Result<u64, ReloadError> {
        let file = self.config_file.as_ref().ok_or(ReloadError::BuiltIn)?;
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let config = Config::load(file)?;
        let targets = &self.targets;
        let version = targets.runtime.load().version + 1;
        let runtime = Runtime::new(
            &config,
            version,
            &targets.health_events,
            &targets.metrics,
            &targets.cluster,
        )
        .map_err(|source| ReloadError::Apply {
            file: file.clone(),
            source,
        })?;
        self.warn_about_fixed_settings(&config);
        targets
            .storage
            .set_compression(CompressionPolicy::new(&config.compression));
        targets.certificates.replace(config.certificates());
        targets.webhooks.store(Arc::new(config.webhooks.clone()));
        targets.runtime.store(Arc::new(runtime));
        Ok(version)
    }

    /// Logs the settings that changed in the file but only take effect after an upgrade.
    fn warn_about_fixed_settings(&self, config: &Config) {
        let old = &self.started_with;
        let changed = [
            ("server.listen", old.server.listen != config.server.listen),
            (
                "server.listen_tls",
                old.server.listen_tls != config.server.listen_tls,
            ),
            ("server.threads", old.server.threads != config.server.threads),
            (
                "cache.max_memory",
                old.cache.max_memory != config.cache.max_memory,
            ),
            (
                "cache.max_object_size",
                old.cache.max_object_size != config.cache.max_object_size,
            ),
            (
                "admin.listen",
                old.admin.as_ref().map(|a| a.listen) != config.admin.as_ref().map(|a| a.listen),
            ),
        ];
        for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
            tracing::warn!(
                key,
                "this setting changed but only takes effect after an upgrade (-u)"
            );
        }
    }
}

/// Reloads on SIGHUP.
pub struct HangupWatcher {
    reloader: Arc<Reloader>,
}

impl HangupWatcher {
    /// A watcher applying `reloader` on each SIGHUP.
    pub fn new(reloader: Arc<Reloader>) -> HangupWatcher {
        HangupWatcher { reloader }
    }
}

#[async_trait]
impl BackgroundService for HangupWatcher {
    async fn start_with_ready_notifier(&self, mut shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP: config reload disabled");
                ready.notify_ready();
                return;
            }
        };
        ready.notify_ready();
        loop {
            tokio::select! {
                _ = hangups.recv() => {
                    let _ = self.reloader.reload();
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
