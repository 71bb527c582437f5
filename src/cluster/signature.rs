//! The signed header that marks a request as coming from a peer.
//!
//! `X-Edgecache-Peer: <node> <unix seconds> <hex HMAC-SHA256>`, the HMAC keyed with the cluster
//! secret over the node id, the time, the method, the `Host` as sent, the path and query, and
//! the SHA-256 of the body when there is one. A peer request is trusted only with a valid
//! signature made within [`MAX_SKEW`] of the receiver's clock; anything else is a client's
//! header and is removed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The header carrying a peer's signature.
pub const PEER_HEADER: &str = "x-edgecache-peer";

/// How far apart two nodes' clocks may be.
pub const MAX_SKEW: Duration = Duration::from_secs(120);

/// What a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The request method.
    pub method: &'a str,
    /// The `Host` header as sent.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// The request body (empty for none).
    pub body: &'a [u8],
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The header value signing `request` as `node` at `time` (Unix seconds).
pub fn sign(secret: &str, node: &str, time: u64, request: Signed) -> String {
    format!("{node} {time} {}", hex(&mac(secret, node, time, request)))
}

/// The node that signed `value` for `request`, when the signature is valid and made within
/// [`MAX_SKEW`] of `now`.
pub fn verify<'v>(secret: &str, value: &'v str, request: Signed, now: u64) -> Option<&'v str> {
    let mut parts = value.split(' ');
    let (node, time, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || node.is_empty() {
        return None;
    }
    let time: u64 = time.parse().ok()?;
    if time.abs_diff(now) > MAX_SKEW.as_secs() {
        return None;
    }
    let expected = hex(&mac(secret, node, time, request));
    constant_time_eq(expected.as_bytes(), signature.as_bytes()).then_some(node)
}

#[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
fn mac(secret: &str, node: &str, time: u64, request: Signed) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    let body = if request.body.is_empty() {
        String::new()
    } else {
        hex(&Sha256::digest(request.body))
    };
    for part in [
        node,
        &time.to_string(),
        request.method,
        request.host,
        request.path,
        &body,
    ] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: Signed = Signed {
        method: "GET",
        host: "site.test",
        path: "/a?b",
        body: b"",
    };

    #[test]
    fn a_signature_verifies_only_for_what_it_signed_and_when() {
        let value = sign("0123456789abcdef", "edge-1", 1000, REQUEST);
        assert_eq!(verify("0123456789abcdef", &value, REQUEST, 1000), Some("edge-1"));
        assert_eq!(verify("0123456789abcdef", &value, REQUEST, 1119), Some("edge-1"));
        assert_eq!(verify("0123456789abcdef", &value, REQUEST, 1121), None, "too old");
        assert_eq!(verify("another-secret!!", &value, REQUEST, 1000), None);
        let other = Signed {
            path: "/a?c",
            ..REQUEST
        };
        assert_eq!(verify("0123456789abcdef", &value, other, 1000), None);
        let forged = value.replace("edge-1", "edge-2");
        assert_eq!(verify("0123456789abcdef", &forged, REQUEST, 1000), None);
        assert_eq!(verify("0123456789abcdef", "garbage", REQUEST, 1000), None);
    }
}
