//! Stale copies served for a short while after their origin failed to refresh them.
//!
//! When a refresh fails (a 5xx, a timeout) and the stored copy may be served stale
//! (`stale-if-error`, `stale-while-revalidate`), the requests that queued behind the failed
//! refresh and those that come just after it would each try the origin again, and each fail.
//! Instead the URL is remembered for [`FAILED_REFRESH_BACKOFF`], and its stale copy is served as
//! it is meanwhile.

use std::time::{Duration, SystemTime};

use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::CacheMeta;

use super::key::{cache_key, CacheTarget};

/// How long a URL whose refresh failed is served stale without asking its origin again.
pub const FAILED_REFRESH_BACKOFF: Duration = Duration::from_secs(2);

/// URLs remembered, at most (the oldest are forgotten first).
const MAX_URLS: u64 = 100_000;

/// URLs (primary key hashes) whose origin just failed to refresh them.
pub struct FailedRefreshes(moka::sync::Cache<HashBinary, ()>);

impl Default for FailedRefreshes {
    fn default() -> Self {
        FailedRefreshes(
            moka::sync::Cache::builder()
                .max_capacity(MAX_URLS)
                .time_to_live(FAILED_REFRESH_BACKOFF)
                .build(),
        )
    }
}

impl FailedRefreshes {
    /// Remembers that the origin just failed to refresh `target`.
    pub fn record(&self, target: &CacheTarget) {
        self.0.insert(cache_key(target).primary_bin(), ());
    }

    /// Whether the stale `meta` stored for `target` is served as it is: its origin just failed
    /// to refresh it, and it is within a window that allows serving it stale.
    pub fn serves_stale(&self, meta: &CacheMeta, target: &CacheTarget) -> bool {
        let now = SystemTime::now();
        let within_window = meta.serve_stale_if_error(now) || meta.serve_stale_while_revalidate(now);
        within_window && self.0.contains_key(&cache_key(target).primary_bin())
    }
}
