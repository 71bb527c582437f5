//! Live reload on SIGHUP: re-read the config file, validate it, and apply what can change in
//! place. Today that is the TLS certificates; other changes take effect with a zero-downtime
//! upgrade (`-u`). An invalid file is rejected with its file, line and key in the log, and the
//! running config stays.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::tls::SniResolver;

/// Reloads the config file named at startup.
pub struct Reloader {
    /// The file to re-read; `None` for the built-in config.
    config_file: Option<PathBuf>,
    certificates: Arc<SniResolver>,
}

impl Reloader {
    /// A reloader for the file `config` came from, updating `certificates`.
    pub fn new(config: &Config, certificates: Arc<SniResolver>) -> Reloader {
        let config_file = Some(config.source.clone()).filter(|path| path.is_file());
        Reloader {
            config_file,
            certificates,
        }
    }

    /// Re-reads and validates the config file, then applies it. On error nothing changes.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let Some(file) = &self.config_file else {
            tracing::info!("running on the built-in config: nothing to reload");
            return Ok(());
        };
        let config = Config::load(file)?;
        self.certificates.replace(&config);
        Ok(())
    }

    fn on_hangup(&self) {
        match self.reload() {
            Ok(()) => tracing::info!("config reloaded: TLS certificates updated"),
            Err(e) => tracing::error!(error = %e, "config reload rejected; the running config stays"),
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
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
                _ = hangups.recv() => self.on_hangup(),
                _ = shutdown.changed() => break,
            }
        }
    }
}
