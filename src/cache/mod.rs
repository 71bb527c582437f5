//! The HTTP cache: storage on moka, cache keys, cacheability policy, Vary variants, the
//! stored content codings of each response and admission to a full cache.
//!
//! pingora-cache runs the state machine (lookup, coalescing, revalidation, stale serving,
//! Range on hits); this module supplies the parts it leaves to the application.

pub mod admission;
pub mod codings;
pub mod directives;
pub mod engine;
pub mod failed_refreshes;
mod field_values;
pub mod fill_budget;
pub mod invalidation;
pub mod key;
pub mod packed_header;
pub mod policy;
pub mod purge_log;
pub mod sketch;
pub mod storage;
pub mod vary;

pub use engine::CacheEngine;
pub use key::{cache_key, CacheTarget};
pub use policy::CachePolicy;
pub use storage::MokaStorage;
