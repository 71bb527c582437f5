//! Purges reach every node. A purge applied here is sent, signed, to every peer at once; the
//! caller gets each peer's answer within [`FANOUT_DEADLINE`] even when one hangs, and peers
//! that did not acknowledge are retried from a queue with backoff ([`PurgeRetries`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::sync::mpsc;

use super::signature::{Signed, PEER_HEADER};
use super::{Cluster, PURGE_PATH};

/// Longest a purge waits for its peers' answers.
pub const FANOUT_DEADLINE: Duration = Duration::from_millis(1500);

/// Deliveries waiting to be retried before new ones are dropped.
const RETRY_QUEUE: usize = 1024;

/// Attempts per peer before a purge is given up (counted).
const MAX_ATTEMPTS: u32 = 8;

/// What one peer answered to a purge.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPurge {
    /// The peer's id.
    pub node: String,
    /// It applied the purge.
    pub ok: bool,
    /// Entries it purged.
    pub purged: Option<u64>,
    /// Time to its answer, in milliseconds.
    pub ms: f64,
    /// Why it did not acknowledge (it is retried).
    pub error: Option<String>,
}

/// One purge still owed to one peer.
struct Owed {
    peer: String,
    body: Arc<Vec<u8>>,
    attempt: u32,
}

/// Sends purges to peers.
pub struct PurgeFanout {
    client: reqwest::Client,
    owed: mpsc::Sender<Owed>,
    queue: Mutex<Option<mpsc::Receiver<Owed>>>,
}

impl Default for PurgeFanout {
    fn default() -> Self {
        let (owed, queue) = mpsc::channel(RETRY_QUEUE);
        PurgeFanout {
            client: reqwest::Client::builder().no_proxy().build().unwrap_or_default(),
            owed,
            queue: Mutex::new(Some(queue)),
        }
    }
}

impl PurgeFanout {
    /// The HTTP client peers are reached with outside the proxy path.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the purge `body` (the admin API's JSON) to every other node of `cluster` at once;
    /// their answers, within [`FANOUT_DEADLINE`]. Peers that did not acknowledge are queued
    /// for retries.
    pub async fn send(&self, cluster: &Cluster, body: Vec<u8>) -> Vec<PeerPurge> {
        let started = Instant::now();
        let body = Arc::new(body);
        let sends = cluster.others().map(|peer| {
            let body = body.clone();
            async move {
                let answer = self
                    .deliver(cluster, &peer.addr.to_string(), &body, FANOUT_DEADLINE)
                    .await;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let (ok, purged, error) = match answer {
                    Ok(purged) => (true, Some(purged), None),
                    Err(error) => (false, None, Some(error)),
                };
                PeerPurge {
                    node: peer.id.clone(),
                    ok,
                    purged,
                    ms,
                    error,
                }
            }
        });
        let answers = futures_util::future::join_all(sends).await;
        let counters = &cluster.health.counters;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.purge_fanout_max_us.fetch_max(took, Ordering::Relaxed);
        for answer in &answers {
            if answer.ok {
                counters.purges_sent.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.purge_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %answer.node, error = ?answer.error, "purge not acknowledged by a peer: retrying");
                let owed = Owed {
                    peer: answer.node.clone(),
                    body: body.clone(),
                    attempt: 1,
                };
                if self.owed.try_send(owed).is_err() {
                    counters.purges_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        answers
    }

    /// One signed delivery to `host`: the entries it purged.
    async fn deliver(
        &self,
        cluster: &Cluster,
        host: &str,
        body: &[u8],
        within: Duration,
    ) -> Result<u64, String> {
        let signed = Signed {
            method: "POST",
            host,
            path: PURGE_PATH,
            body,
        };
        let request = self
            .client
            .post(format!("http://{host}{PURGE_PATH}"))
            .header(PEER_HEADER, cluster.sign(signed))
            .header("content-type", "application/json")
            .timeout(within)
            .body(body.to_vec());
        let answer = request.send().await.map_err(|e| e.to_string())?;
        if !answer.status().is_success() {
            return Err(format!("status {}", answer.status()));
        }
        let text = answer.text().await.map_err(|e| e.to_string())?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok(value["purged"].as_u64().unwrap_or(0))
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
        let host = peer.addr.to_string();
        let counters = &cluster.health.counters;
        match fanout
            .deliver(&cluster, &host, &owed.body, cluster.settings.peer_timeout)
            .await
        {
            Ok(_) => {
                counters.purges_sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %owed.peer, attempt = owed.attempt + 1, "purge delivered to a peer on retry");
            }
            Err(_) if owed.attempt + 1 < MAX_ATTEMPTS => {
                let again = Owed {
                    attempt: owed.attempt + 1,
                    ..owed
                };
                if fanout.owed.try_send(again).is_err() {
                    counters.purges_dropped.fetch_add(1, Ordering::Relaxed);
                }
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
        let queue = self.fanout.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut queue) = queue else { return };
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
