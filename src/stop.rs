//! How the process stops.
//!
//! pingora stops in two ways. SIGINT ends the process at once. SIGTERM, and the old process of
//! an upgrade once it handed its listeners over, broadcast the shutdown and then sleep for the
//! whole grace period, however little is left to do, deaf to a SIGINT sent meanwhile. The
//! [`Stopper`] service takes over from the broadcast:
//!
//! - the process exits as soon as no client connection is left (how they drain is up to the
//!   connection layer) and the work that must outlive them is done: the `node_stopping` webhook
//!   and the access log's last lines;
//! - when `grace_period` ends first, it says how many requests it cuts, and exits;
//! - a SIGINT, at any time, exits at once.
//!
//! pingora's own grace period is set one second longer ([`PINGORA_GRACE_MARGIN`]), as a backstop
//! that never decides.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How much longer pingora's own grace period is than the configured one.
pub const PINGORA_GRACE_MARGIN: Duration = Duration::from_secs(1);

/// How often the open connections are counted while draining.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// How long no connection must be open before the process counts as drained: a connection
/// the listener accepted just as the shutdown began may not be counted yet (it is between
/// pingora's accept and the connection layer), and exiting then would reset it.
const DRAIN_SETTLE: Duration = Duration::from_millis(250);

/// How long the `node_stopping` delivery may hold the exit (it gives up after 2 s itself).
const WEBHOOKS_WAIT: Duration = Duration::from_secs(3);

/// The client work in progress, as the connection layer counts it.
pub trait ClientWork: Send + Sync {
    /// Client connections open, idle ones included.
    fn open_connections(&self) -> usize;
    /// Requests being served.
    fn requests_in_flight(&self) -> usize;
}

/// The background service that ends the process once draining is over (or on SIGINT).
pub struct Stopper {
    grace_period: Duration,
    clients: Arc<dyn ClientWork>,
    webhooks_finished: watch::Receiver<bool>,
    flush_access_log: Arc<dyn Fn() + Send + Sync>,
}

impl Stopper {
    /// Ends the process when `clients` has nothing left after a shutdown (and within
    /// `grace_period` reports what it cuts), once `webhooks_finished` and `flush_access_log`
    /// have run.
    pub fn new(
        grace_period: Duration,
        clients: Arc<dyn ClientWork>,
        webhooks_finished: watch::Receiver<bool>,
        flush_access_log: Arc<dyn Fn() + Send + Sync>,
    ) -> Stopper {
        Stopper {
            grace_period,
            clients,
            webhooks_finished,
            flush_access_log,
        }
    }

    /// Waits for the connections to be gone, or for the grace period to end: `true` when they
    /// are gone.
    async fn drained(&self) -> bool {
        let deadline = tokio::time::Instant::now() + self.grace_period;
        loop {
            if self.clients.open_connections() == 0 {
                tokio::time::sleep(DRAIN_SETTLE).await;
                if self.clients.open_connections() == 0 {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Lets the background work finish, then exits the process.
    async fn exit(&self, announce_stop: bool) -> ! {
        if announce_stop {
            let mut finished = self.webhooks_finished.clone();
            let done = async move { finished.wait_for(|done| *done).await.is_ok() };
            let _ = tokio::time::timeout(WEBHOOKS_WAIT, done).await;
        }
        let flush = self.flush_access_log.clone();
        let _ = tokio::task::spawn_blocking(move || flush()).await;
        std::process::exit(0)
    }
}

#[async_trait]
impl BackgroundService for Stopper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interrupt = match signal(SignalKind::interrupt()) {
            Ok(interrupt) => Some(interrupt),
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGINT: it waits for the grace period");
                None
            }
        };
        let interrupted = async {
            match interrupt.as_mut() {
                Some(interrupt) => interrupt.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(interrupted);
        tokio::select! {
            _ = &mut interrupted => {
                self.exit(false).await;
            }
            _ = async move { shutdown.wait_for(|down| *down).await.is_ok() } => {}
        }
        tracing::info!(
            connections = self.clients.open_connections(),
            requests = self.clients.requests_in_flight(),
            grace_period = ?self.grace_period,
            "draining: the process exits when the last connection closes"
        );
        tokio::select! {
            _ = &mut interrupted => {
                let cut = self.clients.requests_in_flight();
                tracing::warn!(requests = cut, "SIGINT while draining: stopping now, cutting the requests in flight");
                self.exit(false).await;
            }
            drained = self.drained() => {
                if drained {
                    tracing::info!("drained: no connection left, exiting");
                } else {
                    let cut = self.clients.requests_in_flight();
                    tracing::warn!(requests = cut, "grace period over: cutting the responses still in flight");
                }
                self.exit(true).await;
            }
        }
    }
}
