//! Which peers answer. A peer that fails a forwarded request is out at once (passive); every
//! [`CHECK_INTERVAL`] each peer's health endpoint is asked (active), which takes a dead peer
//! out within about two seconds and brings it back once it answers. Changes are logged and
//! announced as `peer_health` events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use crate::event_kind::EventKind;
use crate::events::EventSink;

/// How often each peer is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Cluster traffic since start.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Requests this node forwarded to an owner.
    pub forwarded: AtomicU64,
    /// Requests this node served for a peer.
    pub served_for_peers: AtomicU64,
    /// Forwarded requests that failed (and went to the next node or the origin).
    pub peer_failures: AtomicU64,
    /// Purges sent to peers and acknowledged.
    pub purges_sent: AtomicU64,
    /// Purge deliveries to peers that failed (retried from the queue).
    pub purge_failures: AtomicU64,
    /// Purge deliveries given up after the last retry.
    pub purges_dropped: AtomicU64,
    /// Slowest purge fan-out so far, in microseconds.
    pub purge_fanout_max_us: AtomicU64,
}

/// The health of every peer, by id; unknown peers count as up.
#[derive(Default)]
pub struct PeerHealth {
    down: RwLock<HashMap<String, bool>>,
    events: Option<EventSink>,
    /// Cluster traffic counters.
    pub counters: ClusterCounters,
}

impl PeerHealth {
    /// Every peer up; changes announced on `events`.
    pub fn new(events: EventSink) -> PeerHealth {
        PeerHealth {
            events: Some(events),
            ..PeerHealth::default()
        }
    }

    /// Whether `peer` takes requests.
    pub fn is_up(&self, peer: &str) -> bool {
        let down = self.down.read().unwrap_or_else(|e| e.into_inner());
        !down.get(peer).copied().unwrap_or(false)
    }

    /// A forwarded request to `peer` failed: out until its check passes.
    pub fn failed(&self, peer: &str) {
        self.counters.peer_failures.fetch_add(1, Ordering::Relaxed);
        self.set(peer, false);
    }

    /// Records a check of `peer`.
    pub fn set(&self, peer: &str, up: bool) {
        let mut down = self.down.write().unwrap_or_else(|e| e.into_inner());
        let was_up = !down.get(peer).copied().unwrap_or(false);
        down.insert(peer.to_string(), !up);
        drop(down);
        if was_up != up {
            if up {
                tracing::info!(peer, "cluster peer is back");
            } else {
                tracing::warn!(peer, "cluster peer is down: its keys go to the next node");
            }
            if let Some(events) = &self.events {
                let details = serde_json::json!({ "peer": peer, "healthy": up });
                events.emit(EventKind::PeerHealth, details);
            }
        }
    }
}
