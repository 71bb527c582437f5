//! Several nodes, one cache space.
//!
//! Every node is configured with the same peer list. Each URL (its primary cache key, so all
//! Vary variants and codings of it) has one owner by consistent hashing over the peers
//! ([`ring`]). A node that misses forwards the request, signed ([`signature`]), to the owner,
//! which serves it from its cache or fetches it from the origin, never forwarding it again. A
//! peer that fails is skipped for the request (the next node on the ring, or the origin) and
//! taken out of the ring until its health check passes again ([`health`]). Purges are applied
//! locally and sent to every peer ([`fanout`]); the checks and retries run as [`services`].
//! No gossip, no consensus, no shared store: the nodes talk HTTP to each other on their
//! traffic listeners.

pub mod fanout;
pub mod health;
mod node;
pub mod paths;
pub mod ring;
pub mod services;
pub mod signature;

pub use node::{Cluster, ClusterParts, TAKEOVER_WINDOW};
pub use paths::{HEALTH_PATH, PEER_PATH_PREFIX, PURGE_PATH};
