//! The shared cache objects of a process: storage, the per-key fill lock and the predictor of
//! uncacheable keys. pingora needs them `'static`, so they are built (and leaked) once.

use std::time::Duration;

use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::{CacheablePredictor, Predictor};
use pingora::cache::{CacheKey, CacheOptionOverrides, HttpCache, NoCacheReason};

use super::policy;
use super::storage::MokaStorage;
use crate::compression::CompressionPolicy;
use crate::config::Config;

/// Shards of the uncacheable-key predictor.
const PREDICTOR_SHARDS: usize = 16;

/// The shared cache objects (pingora needs them `'static`) and their fixed settings.
pub struct CacheEngine {
    /// Stored responses.
    pub storage: &'static MokaStorage,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static Predictor<PREDICTOR_SHARDS>,
    max_object_size: usize,
    lock_timeout: Duration,
    /// The cache's name in `Cache-Status`.
    pub status_name: String,
}

impl CacheEngine {
    /// Builds (and leaks, once per process) the cache described by `config`.
    pub fn new(config: &Config) -> CacheEngine {
        let settings = &config.cache;
        let compression = CompressionPolicy::new(&config.compression);
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(settings.lock_timeout));
        let predictor = Box::leak(Box::new(Predictor::new(
            1024,
            Some(policy::is_request_specific_reason),
        )));
        CacheEngine {
            storage: MokaStorage::new(settings.max_memory, settings.keep_stale)
                .with_compression(compression, settings.max_object_size)
                .leak(),
            lock,
            predictor,
            max_object_size: settings.max_object_size,
            lock_timeout: settings.lock_timeout,
            status_name: settings.status_name.clone(),
        }
    }

    /// Turns caching on for one request: lookups and fills go to the storage, misses for one
    /// key wait on one fill (up to the lock timeout) unless `wait_for_fills` is off, objects
    /// above the size limit pass through.
    pub fn enable(&self, cache: &mut HttpCache, wait_for_fills: bool) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_timeout);
        cache.enable(
            self.storage,
            None,
            Some(self.predictor),
            wait_for_fills.then_some(self.lock),
            Some(overrides),
        );
        cache.set_max_file_size_bytes(self.max_object_size);
    }

    /// Whether the last response for `key` was refused storage by its origin (`no-store`,
    /// `private`): a request for it then skips the cache altogether. pingora would otherwise
    /// set up a lookup only to bypass it and judge the response again, the bulk of what a
    /// cache costs a pass-through request.
    pub fn origin_refused(&self, key: &CacheKey) -> bool {
        self.predictor.predicted_uncacheable_reason(key) == Some(NoCacheReason::OriginNotCache)
    }

    /// Forgets that `key`'s origin refused storage: its next request goes through the cache,
    /// where its response is judged (and stored) again.
    pub fn forget_refusal(&self, key: &CacheKey) {
        self.predictor.mark_cacheable(key);
    }
}
