//! Several nodes, one cache space.
//!
//! Every node is configured with the same peer list. Each URL (its primary cache key, so all
//! Vary variants and codings of it) has one owner by consistent hashing over the peers
//! ([`ring`]). A node that misses forwards the request, signed ([`signature`]), to the owner,
//! which serves it from its cache or fetches it from the origin, never forwarding it again. A
//! peer that fails is skipped for the request (the next node on the ring, or the origin) and
//! taken out of the ring until its health check passes again ([`health`]). Purges are applied
//! locally and sent to every peer ([`fanout`]). No gossip, no consensus, no shared store: the
//! nodes talk HTTP to each other on their traffic listeners.

pub mod fanout;
pub mod health;
pub mod ring;
pub mod signature;

use std::sync::Arc;

use crate::config::{ClusterSettings, PeerSettings};
use fanout::PurgeFanout;
use health::PeerHealth;
use ring::Ring;
use signature::Signed;

/// Paths on the traffic listener that only peers may use.
pub const PEER_PATH_PREFIX: &str = "/.edgecache/peer/";

/// Answers 200 to a peer's health check.
pub const HEALTH_PATH: &str = "/.edgecache/peer/health";

/// Applies a purge sent by a peer (the admin API's JSON body).
pub const PURGE_PATH: &str = "/.edgecache/peer/purge";

/// The parts of the cluster that outlive reloads: what is known of the peers' health and the
/// purges still owed to them.
#[derive(Clone)]
pub struct ClusterParts {
    /// Which peers answer, and the cluster's counters.
    pub health: Arc<PeerHealth>,
    /// Sends purges to peers.
    pub fanout: Arc<PurgeFanout>,
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
}

impl Cluster {
    /// The cluster of `settings`, with the long-lived `parts`.
    pub fn new(settings: ClusterSettings, parts: &ClusterParts) -> Cluster {
        let me = settings
            .peers
            .iter()
            .position(|p| p.id == settings.node)
            .unwrap_or_default();
        Cluster {
            ring: Ring::new(&settings.peers),
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

    /// The owner of `key` when every peer answers (for status and tests).
    pub fn owner(&self, key: &[u8]) -> Option<&PeerSettings> {
        let first = *self.ring.candidates(key).first()?;
        self.settings.peers.get(first)
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
