//! The cluster as one node sees it: the ring, the peers' health, and what outlives reloads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fanout::{PeerPurge, PeerTarget, PurgeFanout};
use super::health::PeerHealth;
use super::paths::PURGE_PATH;
use super::ring::Ring;
use super::signature::{self, Signed};
use crate::config::{ClusterSettings, PeerSettings};

/// How long after this node started, or its peer list changed, a miss on a key it owns asks
/// the next node on the ring first: the key's owner before the change (a node added or back
/// takes its keys from the node after it on the ring).
pub const TAKEOVER_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The parts of the cluster that outlive reloads: what is known of the peers' health, the
/// purges still owed to them, and when the peer list last changed.
#[derive(Clone, Default)]
pub struct ClusterParts {
    /// Which peers answer, and the cluster's counters.
    pub health: Arc<PeerHealth>,
    /// Sends purges to peers.
    pub fanout: Arc<PurgeFanout>,
    /// The running ring's fingerprint, and until when keys are taken over.
    takeover: Arc<Mutex<Option<(String, Instant)>>>,
}

impl ClusterParts {
    /// Parts announcing peer health changes on `events`.
    pub fn new(events: crate::events::EventSink) -> ClusterParts {
        ClusterParts {
            health: Arc::new(PeerHealth::new(events)),
            ..ClusterParts::default()
        }
    }

    /// Until when keys are taken over from their previous owners, for the ring `fingerprint`:
    /// extended when the ring is new (at start, or the peers changed).
    fn takeover_until(&self, fingerprint: &str) -> Instant {
        let mut takeover = self.takeover.lock().unwrap_or_else(|e| e.into_inner());
        match takeover.as_ref() {
            Some((running, until)) if running == fingerprint => *until,
            _ => {
                let until = Instant::now() + TAKEOVER_WINDOW;
                *takeover = Some((fingerprint.to_string(), until));
                until
            }
        }
    }
}

/// The cluster as configured now (rebuilt on reload), with the peers' health, which outlives
/// reloads.
pub struct Cluster {
    /// The validated `[cluster]` section.
    pub settings: ClusterSettings,
    /// Owners of keys.
    pub ring: Ring,
    /// This node's index in `settings.peers`.
    me: usize,
    /// Which peers answer, and the cluster's counters.
    pub health: Arc<PeerHealth>,
    /// Sends purges to peers.
    pub fanout: Arc<PurgeFanout>,
    /// Until when a miss on an owned key asks the key's previous owner first.
    takeover_until: Instant,
}

impl Cluster {
    /// The cluster of `settings`, with the long-lived `parts`.
    pub fn new(settings: ClusterSettings, parts: &ClusterParts) -> Cluster {
        let me = settings
            .peers
            .iter()
            .position(|p| p.id == settings.node)
            .unwrap_or_default();
        let ring = Ring::new(&settings.peers);
        Cluster {
            takeover_until: parts.takeover_until(ring.fingerprint()),
            ring,
            settings,
            me,
            health: parts.health.clone(),
            fanout: parts.fanout.clone(),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// The other nodes.
    pub fn others(&self) -> impl Iterator<Item = &PeerSettings> {
        let me = self.me;
        self.settings
            .peers
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != me)
            .map(|(_, p)| p)
    }

    /// The peer a miss for `key` goes to: the first node on the ring that answers and was not
    /// `tried` for this request. `None`: this node comes first, so it asks the origin itself.
    pub fn forward_target(&self, key: &[u8], tried: &[usize]) -> Option<(usize, &PeerSettings)> {
        for index in self.ring.candidates(key) {
            if index == self.me {
                return None;
            }
            let peer = &self.settings.peers[index];
            if !tried.contains(&index) && self.health.is_up(&peer.id) {
                return Some((index, peer));
            }
        }
        None
    }

    /// The node that owned `key` before this node took it over (the next node on the ring),
    /// while this node is new to its ring: a new owner asks it before the origin, so adding or
    /// returning a node does not send its keys to the origin.
    pub fn previous_owner(&self, key: &[u8], tried: &[usize]) -> Option<(usize, &PeerSettings)> {
        if Instant::now() >= self.takeover_until {
            return None;
        }
        let candidates = self.ring.candidates(key);
        if candidates.first() != Some(&self.me) {
            return None;
        }
        let index = *candidates.get(1)?;
        let peer = &self.settings.peers[index];
        (!tried.contains(&index) && self.health.is_up(&peer.id)).then_some((index, peer))
    }

    /// Sends the purge `body` (the admin API's JSON) to every other node at once; their
    /// answers within the fan-out deadline. Peers that did not acknowledge are retried.
    pub async fn purge_peers(&self, body: Vec<u8>) -> Vec<PeerPurge> {
        let targets = self.others().map(|peer| self.purge_target(peer, &body)).collect();
        self.fanout.send(targets, body, &self.health.counters).await
    }

    /// Where and how to send the purge `body` to `peer`, signed now.
    pub fn purge_target(&self, peer: &PeerSettings, body: &[u8]) -> PeerTarget {
        let host = peer.addr.to_string();
        let signed = Signed {
            method: "POST",
            host: &host,
            path: PURGE_PATH,
            body,
        };
        PeerTarget {
            id: peer.id.clone(),
            peer_header: self.sign(signed),
            host,
        }
    }

    /// The peer header value for `request`, signed by this node now.
    pub fn sign(&self, request: Signed) -> String {
        signature::sign(&self.settings.secret, self.node(), signature::unix_now(), request)
    }

    /// The peer that signed `value` for `request`, if the signature holds.
    pub fn verify(&self, value: &str, request: Signed) -> Option<String> {
        let node = signature::verify(&self.settings.secret, value, request, signature::unix_now())?;
        self.settings
            .peers
            .iter()
            .any(|p| p.id == node)
            .then(|| node.to_string())
    }
}
