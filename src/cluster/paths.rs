//! The endpoints on the traffic listener that only peers may use.

/// Paths on the traffic listener that only peers may use.
pub const PEER_PATH_PREFIX: &str = "/.edgecache/peer/";

/// Answers 200 to a peer's health check.
pub const HEALTH_PATH: &str = "/.edgecache/peer/health";

/// Applies a purge sent by a peer (the admin API's JSON body).
pub const PURGE_PATH: &str = "/.edgecache/peer/purge";
