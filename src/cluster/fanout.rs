//! Purges reach every node. A purge applied here is sent, signed, to every peer at once; the
//! caller gets each peer's answer within [`FANOUT_DEADLINE`] even when one hangs, and peers
//! that did not acknowledge are queued for retries with backoff (see `services`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use super::health::ClusterCounters;
use super::paths::PURGE_PATH;
use super::signature::PEER_HEADER;

/// Longest a purge waits for its peers' answers.
pub const FANOUT_DEADLINE: Duration = Duration::from_millis(1500);

/// Deliveries waiting to be retried before new ones are dropped.
const RETRY_QUEUE: usize = 1024;

/// Attempts per peer before a purge is given up (counted).
pub(super) const MAX_ATTEMPTS: u32 = 8;

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
pub(super) struct Owed {
    /// The peer's id.
    pub(super) peer: String,
    /// The purge (the admin API's JSON).
    pub(super) body: Arc<Vec<u8>>,
    /// Attempts made so far.
    pub(super) attempt: u32,
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

    /// Sends the purge `body` to every target at once; their answers, within
    /// [`FANOUT_DEADLINE`]. Targets that did not acknowledge are queued for retries.
    pub async fn send(
        &self,
        targets: Vec<PeerTarget>,
        body: Vec<u8>,
        counters: &ClusterCounters,
    ) -> Vec<PeerPurge> {
        let started = Instant::now();
        let body = Arc::new(body);
        let sends = targets.iter().map(|target| {
            let body = body.clone();
            async move {
                let answer = self.deliver(target, &body, FANOUT_DEADLINE).await;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let (ok, purged, error) = match answer {
                    Ok(purged) => (true, Some(purged), None),
                    Err(error) => (false, None, Some(error)),
                };
                PeerPurge {
                    node: target.id.clone(),
                    ok,
                    purged,
                    ms,
                    error,
                }
            }
        });
        let answers = futures_util::future::join_all(sends).await;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.purge_fanout_max_us.fetch_max(took, Ordering::Relaxed);
        for answer in &answers {
            if answer.ok {
                counters.purges_sent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.purge_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %answer.node, error = ?answer.error, "purge not acknowledged by a peer: retrying");
            self.owe(
                Owed {
                    peer: answer.node.clone(),
                    body: body.clone(),
                    attempt: 1,
                },
                counters,
            );
        }
        answers
    }

    /// Queues a purge still owed to a peer (counted as dropped when the queue is full).
    pub(super) fn owe(&self, owed: Owed, counters: &ClusterCounters) {
        if self.owed.try_send(owed).is_err() {
            counters.purges_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The queue of owed purges, for the one service that retries them.
    pub(super) fn take_queue(&self) -> Option<mpsc::Receiver<Owed>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// One delivery to `target`: the entries it purged.
    pub(super) async fn deliver(
        &self,
        target: &PeerTarget,
        body: &[u8],
        within: Duration,
    ) -> Result<u64, String> {
        let request = self
            .client
            .post(format!("http://{}{PURGE_PATH}", target.host))
            .header(PEER_HEADER, &target.peer_header)
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

/// Where a purge goes: a peer, its address, and the signed header for this body.
#[derive(Debug, Clone)]
pub struct PeerTarget {
    /// The peer's id.
    pub id: String,
    /// Its traffic listener, `host:port`.
    pub host: String,
    /// The peer header signing the purge.
    pub peer_header: String,
}
