//! Events and webhooks: what happened on this node, POSTed to every subscribed endpoint.
//!
//! Anything may [`EventSink::emit`] an event: it goes into a bounded queue with a `try_send`,
//! so the request path never waits (a full queue drops the event and counts it). The
//! [`WebhookDispatcher`] background service takes events off the queue and delivers each to the
//! endpoints whose filter matches, concurrently, retrying failures with exponential backoff
//! and jitter. Each body is signed: `X-Edgecache-Signature: sha256=<hex HMAC-SHA256 of the
//! body keyed by the endpoint's secret>`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::cache::MokaStorage;
use crate::config::WebhookSettings;
use crate::event_kind::EventKind;
use crate::upstream::HealthEvents;

/// Events kept for the dashboard's "recent events" list.
pub const RECENT_EVENTS: usize = 100;

/// Events waiting for delivery before new ones are dropped.
pub const QUEUE_EVENTS: usize = 1024;

/// Deliveries in flight at once (each with its retries).
const MAX_IN_FLIGHT: usize = 64;

/// Attempts per delivery, the first included.
const MAX_ATTEMPTS: u32 = 8;

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`], plus up to 50 % jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Time allowed for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the cache is checked for evictions.
const EVICTION_CHECK: Duration = Duration::from_secs(1);

/// Least time between two eviction events (the evictions in between are added up).
const EVICTION_EVENT_INTERVAL: Duration = Duration::from_secs(10);

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-edgecache-signature";

/// The Standard Webhooks headers (standardwebhooks.com): the message id (the same on every
/// retry, for receivers to drop repeats), the attempt's time and its signature.
pub const STANDARD_ID_HEADER: &str = "webhook-id";
/// See [`STANDARD_ID_HEADER`].
pub const STANDARD_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// See [`STANDARD_ID_HEADER`].
pub const STANDARD_SIGNATURE_HEADER: &str = "webhook-signature";

/// One event as sent.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened (RFC 3339).
    pub time: String,
    /// The node it happened on.
    pub node: String,
    /// Type-specific details.
    pub details: serde_json::Value,
}

/// Delivery counters, for metrics and status.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Deliveries acknowledged with a 2xx.
    pub delivered: AtomicU64,
    /// Deliveries given up after every attempt failed.
    pub failed: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// Where events are emitted from: cheap to clone, never blocks.
#[derive(Clone)]
pub struct EventSink {
    queue: mpsc::Sender<Event>,
    node: Arc<str>,
    recent: Arc<Mutex<VecDeque<Event>>>,
    /// Delivery counters.
    pub stats: Arc<WebhookStats>,
}

impl EventSink {
    /// Queues an event; drops (and counts) it when the queue is full.
    pub fn emit(&self, kind: EventKind, details: serde_json::Value) {
        let event = self.event(kind, details);
        self.remember(&event);
        if self.queue.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keeps `event` among the [`RECENT_EVENTS`] newest, whether or not a webhook wants it.
    fn remember(&self, event: &Event) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(event.clone());
    }

    /// The newest events, newest first.
    pub fn recent(&self) -> Vec<Event> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    /// An event of this node, happening now.
    fn event(&self, kind: EventKind, details: serde_json::Value) -> Event {
        Event {
            kind,
            time: crate::access_log::rfc3339(SystemTime::now()),
            node: self.node.to_string(),
            details,
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// The endpoints events go to; replaced on reload.
pub type Endpoints = Arc<ArcSwap<Vec<WebhookSettings>>>;

/// A sink and the dispatcher that drains it.
pub fn channel(node: &str, endpoints: Endpoints) -> (EventSink, WebhookDispatcher) {
    let (queue, receiver) = mpsc::channel(QUEUE_EVENTS);
    let stats = Arc::new(WebhookStats::default());
    let sink = EventSink {
        queue,
        node: node.into(),
        recent: Arc::default(),
        stats: stats.clone(),
    };
    let dispatcher = WebhookDispatcher {
        receiver: Mutex::new(Some(receiver)),
        endpoints,
        stats,
        sink: sink.clone(),
        health: None,
        storage: None,
        finished: watch::channel(false).0,
    };
    (sink, dispatcher)
}

/// The background service delivering events, and turning origin health changes and cache
/// evictions into events.
pub struct WebhookDispatcher {
    receiver: Mutex<Option<mpsc::Receiver<Event>>>,
    endpoints: Endpoints,
    stats: Arc<WebhookStats>,
    sink: EventSink,
    health: Option<HealthEvents>,
    storage: Option<&'static MokaStorage>,
    finished: watch::Sender<bool>,
}

impl WebhookDispatcher {
    /// Becomes `true` once the dispatcher has stopped, its `node_stopping` announced: the
    /// process waits for it before exiting.
    pub fn finished(&self) -> watch::Receiver<bool> {
        self.finished.subscribe()
    }

    /// Also emits `origin_health` events for changes published on `health`.
    pub fn watching_health(mut self, health: &HealthEvents) -> WebhookDispatcher {
        self.health = Some(health.clone());
        self
    }

    /// Also emits `cache_eviction` events when `storage` evicts under memory pressure.
    pub fn watching_cache(mut self, storage: &'static MokaStorage) -> WebhookDispatcher {
        self.storage = Some(storage);
        self
    }

    /// One delivery of `event` per endpoint subscribed to it, all sharing one body.
    fn deliveries(&self, client: &reqwest::Client, event: &Event) -> Vec<Delivery> {
        let endpoints = self.endpoints.load_full();
        let subscribed: Vec<_> = endpoints
            .iter()
            .filter(|e| e.events.iter().any(|k| event.kind.matches(k)))
            .collect();
        if subscribed.is_empty() {
            return Vec::new();
        }
        let body = Arc::new(serde_json::to_vec(event).unwrap_or_default());
        subscribed
            .into_iter()
            .map(|endpoint| Delivery {
                client: client.clone(),
                url: endpoint.url.to_string(),
                signature: sign(&endpoint.secret, &body),
                secret: endpoint.secret.clone(),
                id: message_id(),
                kind: event.kind,
                body: body.clone(),
                stats: self.stats.clone(),
            })
            .collect()
    }

    /// Sends `event` to every endpoint subscribed to it, each delivery in its own task.
    async fn dispatch(&self, client: &reqwest::Client, permits: &Arc<Semaphore>, event: &Event) {
        for delivery in self.deliveries(client, event) {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            tokio::spawn(async move {
                delivery.run(MAX_ATTEMPTS).await;
                drop(permit);
            });
        }
    }

    /// Emits `cache_eviction` when entries were evicted since `seen`, at most once per
    /// [`EVICTION_EVENT_INTERVAL`]; returns the eviction count the next check compares with.
    fn announce_evictions(
        &self,
        storage: &MokaStorage,
        seen: u64,
        last_event: &mut Option<std::time::Instant>,
    ) -> u64 {
        let evictions = storage.evictions();
        let quiet = last_event.is_none_or(|at| at.elapsed() >= EVICTION_EVENT_INTERVAL);
        if evictions <= seen || !quiet {
            return seen;
        }
        *last_event = Some(std::time::Instant::now());
        self.sink.emit(
            EventKind::CacheEviction,
            serde_json::json!({
                "evicted": evictions - seen,
                "entries": storage.entry_count(),
                "bytes": storage.weighted_size(),
            }),
        );
        evictions
    }

    /// Delivers `node_stopping` with a single quick attempt per endpoint before shutdown.
    async fn announce_stop(&self, client: &reqwest::Client) {
        let stopping = self.sink.event(EventKind::NodeStopping, serde_json::json!({}));
        let deliveries = self.deliveries(client, &stopping);
        let all = futures_util::future::join_all(deliveries.iter().map(|d| d.run(1)));
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
    }
}

#[async_trait]
impl BackgroundService for WebhookDispatcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
        self.finished.send_replace(true);
    }
}

impl WebhookDispatcher {
    /// Delivers events until shutdown, then announces the stop.
    async fn run(&self, mut shutdown: ShutdownWatch) {
        let Some(mut receiver) = self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let client = match reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .no_proxy()
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot create the webhook client: webhooks disabled");
                return;
            }
        };
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut health = self.health.as_ref().map(|h| h.subscribe());
        let mut eviction_check = tokio::time::interval(EVICTION_CHECK);
        let mut evictions_seen = self.storage.map_or(0, |s| s.evictions());
        let mut last_eviction_event: Option<std::time::Instant> = None;
        self.sink.emit(
            EventKind::NodeStarted,
            serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }),
        );
        loop {
            tokio::select! {
                event = receiver.recv() => match event {
                    Some(event) => self.dispatch(&client, &permits, &event).await,
                    None => return,
                },
                change = async { health.as_mut()?.recv().await.ok() }, if health.is_some() => {
                    if let Some(change) = change {
                        self.sink.emit(EventKind::OriginHealth, serde_json::json!({
                            "site": change.site, "origin": change.origin, "healthy": change.healthy,
                        }));
                    }
                }
                _ = eviction_check.tick() => {
                    if let Some(storage) = self.storage {
                        evictions_seen = self.announce_evictions(storage, evictions_seen, &mut last_eviction_event);
                    }
                }
                _ = shutdown.changed() => {
                    self.announce_stop(&client).await;
                    return;
                }
            }
        }
    }
}

/// One event on its way to one endpoint.
struct Delivery {
    client: reqwest::Client,
    url: String,
    signature: String,
    /// The endpoint's secret, for the Standard Webhooks signature of each attempt.
    secret: String,
    /// The message id, the same for every attempt.
    id: String,
    kind: EventKind,
    body: Arc<Vec<u8>>,
    stats: Arc<WebhookStats>,
}

impl Delivery {
    /// Tries up to `attempts` times with backoff; counts the outcome.
    async fn run(&self, attempts: u32) {
        for attempt in 1..=attempts {
            match self.attempt().await {
                Ok(()) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(error) if attempt < attempts => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(url = %self.url, attempt, %error, "webhook delivery failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(error) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %self.url, event = self.kind.name(), %error, "webhook delivery failed; giving up");
                }
            }
        }
    }

    async fn attempt(&self) -> Result<(), String> {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-edgecache-event", self.kind.name())
            .header(SIGNATURE_HEADER, &self.signature)
            .header(STANDARD_ID_HEADER, &self.id)
            .header(STANDARD_TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                STANDARD_SIGNATURE_HEADER,
                standard_signature(&self.secret, &self.id, timestamp, &self.body),
            )
            .body(self.body.as_ref().clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}

/// The wait after failed attempt `attempt` (1-based): exponential, capped, with jitter.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_BACKOFF);
    base + base.mul_f64(fastrand::f64() * 0.5)
}

/// A message id: time-ordered and unique enough (`msg_` + milliseconds + 32 random bits).
fn message_id() -> String {
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("msg_{millis:x}{:08x}", fastrand::u32(..))
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the secret's bytes (Standard
/// Webhooks; its libraries take the key as `whsec_` + base64 of the secret).
#[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
pub fn standard_signature(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(digest))
}

/// `sha256=<hex>` HMAC-SHA256 of `body` keyed by `secret`.
#[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..12 {
            let wait = backoff(attempt);
            let base = FIRST_BACKOFF.saturating_mul(1 << (attempt - 1)).min(MAX_BACKOFF);
            assert!(wait >= base && wait <= base.mul_f64(1.5), "{attempt}: {wait:?}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (sink, _dispatcher) = channel("n", Arc::new(ArcSwap::from_pointee(Vec::new())));
        for _ in 0..QUEUE_EVENTS + 3 {
            sink.emit(EventKind::Purge, serde_json::json!({}));
        }
        assert_eq!(sink.stats.dropped.load(Ordering::Relaxed), 3);
    }
}
