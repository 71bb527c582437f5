//! The cluster's background services: every peer's health checked each second, and purges
//! peers did not acknowledge retried with backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::fanout::{Owed, PurgeFanout, MAX_ATTEMPTS};
use super::health::CHECK_INTERVAL;
use super::paths::HEALTH_PATH;
use super::signature::{Signed, PEER_HEADER};
use super::Cluster;

/// Checks every peer of the running cluster, every [`CHECK_INTERVAL`].
pub struct PeerChecker {
    cluster: Box<dyn Fn() -> Option<Arc<Cluster>> + Send + Sync>,
}

impl PeerChecker {
    /// Checks the peers of whatever cluster `cluster` returns at each round.
    pub fn new(cluster: impl Fn() -> Option<Arc<Cluster>> + Send + Sync + 'static) -> PeerChecker {
        PeerChecker {
            cluster: Box::new(cluster),
        }
    }

    async fn check_all(client: &reqwest::Client, cluster: &Cluster) {
        let checks = cluster.others().map(|peer| async move {
            let host = peer.addr.to_string();
            let signed = Signed {
                method: "GET",
                host: &host,
                path: HEALTH_PATH,
                body: b"",
            };
            let answer = client
                .get(format!("http://{host}{HEALTH_PATH}"))
                .header(PEER_HEADER, cluster.sign(signed))
                .timeout(cluster.settings.peer_connect_timeout + CHECK_INTERVAL)
                .send()
                .await;
            let up = answer.is_ok_and(|a| a.status().is_success());
            cluster.health.set(&peer.id, up);
        });
        futures_util::future::join_all(checks).await;
    }
}

#[async_trait]
impl BackgroundService for PeerChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(cluster) = (self.cluster)() {
                        PeerChecker::check_all(cluster.fanout.client(), &cluster).await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Retries the purges peers did not acknowledge, with exponential backoff from one second.
pub struct PurgeRetries {
    fanout: Arc<PurgeFanout>,
    cluster: Box<dyn Fn() -> Option<Arc<Cluster>> + Send + Sync>,
}

impl PurgeRetries {
    /// Retries what `fanout` queued, to the peers of whatever cluster `cluster` returns.
    pub fn new(
        fanout: Arc<PurgeFanout>,
        cluster: impl Fn() -> Option<Arc<Cluster>> + Send + Sync + 'static,
    ) -> PurgeRetries {
        PurgeRetries {
            fanout,
            cluster: Box::new(cluster),
        }
    }

    async fn retry(fanout: Arc<PurgeFanout>, cluster: Arc<Cluster>, owed: Owed) {
        let backoff = Duration::from_secs(1 << (owed.attempt - 1).min(5));
        tokio::time::sleep(backoff).await;
        let Some(peer) = cluster.others().find(|p| p.id == owed.peer) else {
            return;
        };
        let target = cluster.purge_target(peer, &owed.body);
        let counters = &cluster.health.counters;
        match fanout
            .deliver(&target, &owed.body, cluster.settings.peer_timeout)
            .await
        {
            Ok(_) => {
                counters.purges_sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %owed.peer, attempt = owed.attempt + 1, "purge delivered to a peer on retry");
            }
            Err(_) if owed.attempt + 1 < MAX_ATTEMPTS => {
                fanout.owe(
                    Owed {
                        attempt: owed.attempt + 1,
                        ..owed
                    },
                    counters,
                );
            }
            Err(error) => {
                counters.purges_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(peer = %owed.peer, %error, "purge given up for a peer after {MAX_ATTEMPTS} attempts");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for PurgeRetries {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut queue) = self.fanout.take_queue() else {
            return;
        };
        loop {
            tokio::select! {
                owed = queue.recv() => {
                    let Some(owed) = owed else { return };
                    if let Some(cluster) = (self.cluster)() {
                        tokio::spawn(PurgeRetries::retry(self.fanout.clone(), cluster, owed));
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
