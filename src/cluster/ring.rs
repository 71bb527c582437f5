//! Which node owns a key: ketama consistent hashing (pingora's) over the peers.
//!
//! The ring's identity of a peer is its id, not its address, so every node computes the same
//! owners whatever addresses it reaches the others at. pingora's ring is keyed by socket
//! address, so each id is given a stable synthetic address (from the SHA-256 of the id) to
//! stand for it on the ring.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};

use pingora_ketama::{Bucket, Continuum};
use sha2::{Digest, Sha256};

use crate::config::PeerSettings;

/// The ring over one peer list.
pub struct Ring {
    continuum: Continuum,
    /// Synthetic ring address → index in the peer list.
    index_of: HashMap<SocketAddr, usize>,
    peers: usize,
    fingerprint: String,
}

impl Ring {
    /// The ring of `peers` (weights give more points).
    pub fn new(peers: &[PeerSettings]) -> Ring {
        let buckets: Vec<Bucket> = peers
            .iter()
            .map(|p| Bucket::new(ring_point(&p.id), p.weight))
            .collect();
        let index_of = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (ring_point(&p.id), i))
            .collect();
        Ring {
            continuum: Continuum::new(&buckets),
            index_of,
            peers: peers.len(),
            fingerprint: fingerprint(peers),
        }
    }

    /// Every peer (as indexes into the peer list), in the order the ring gives them for `key`:
    /// the owner first, then who takes over when it is gone. The same on every node.
    pub fn candidates(&self, key: &[u8]) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.peers);
        for addr in self.continuum.node_iter(key).take(self.peers * 200 + 1) {
            let Some(&index) = self.index_of.get(addr) else {
                continue;
            };
            if !order.contains(&index) {
                order.push(index);
                if order.len() == self.peers {
                    break;
                }
            }
        }
        order
    }

    /// A short hash of the peer ids and weights: nodes that print different fingerprints do
    /// not agree on the ring.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The stand-in address of a peer id on the ring.
fn ring_point(id: &str) -> SocketAddr {
    let digest = Sha256::digest(id.as_bytes());
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&digest[..16]);
    SocketAddr::from((Ipv6Addr::from(octets), 0))
}

fn fingerprint(peers: &[PeerSettings]) -> String {
    let mut lines: Vec<String> = peers.iter().map(|p| format!("{} {}", p.id, p.weight)).collect();
    lines.sort();
    let digest = Sha256::digest(lines.join("\n").as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(ids: &[&str]) -> Vec<PeerSettings> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| PeerSettings {
                id: id.to_string(),
                addr: SocketAddr::from(([127, 0, 0, i as u8 + 2], 8080)),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn owners_spread_evenly_and_a_new_node_takes_about_its_share() {
        let three = Ring::new(&peers(&["a", "b", "c"]));
        let four = Ring::new(&peers(&["a", "b", "c", "d"]));
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
        let mut owned = [0usize; 3];
        let mut moved = 0;
        for key in &keys {
            let before = three.candidates(key.as_bytes());
            let after = four.candidates(key.as_bytes());
            assert_eq!(before.len(), 3);
            owned[before[0]] += 1;
            if before[0] != after[0] {
                moved += 1;
                assert_eq!(after[0], 3, "a key moved between old nodes");
            }
        }
        assert!(owned.iter().all(|n| (2_500..4_200).contains(n)), "{owned:?}");
        assert!((1_900..3_100).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn the_ring_depends_on_ids_not_addresses() {
        let mut moved = peers(&["a", "b", "c"]);
        moved[0].addr = SocketAddr::from(([10, 0, 0, 1], 80));
        let (x, y) = (Ring::new(&peers(&["a", "b", "c"])), Ring::new(&moved));
        assert_eq!(x.candidates(b"k"), y.candidates(b"k"));
        assert_eq!(x.fingerprint(), y.fingerprint());
        assert_ne!(x.fingerprint(), Ring::new(&peers(&["a", "b"])).fingerprint());
    }
}
