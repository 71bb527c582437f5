//! The node's recent past: a sample every two seconds of the last 15 minutes (request rate,
//! hit ratio, bytes from the cache and from origins, origin latency percentiles, cache fill),
//! and when each origin last changed health. The dashboard draws its charts from it, so a page
//! opened a minute after a spike still shows the spike. Kept in memory only; a restart starts
//! an empty history.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::cache::MokaStorage;
use crate::metrics::{Metrics, TotalsSnapshot};
use crate::upstream::HealthEvents;

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// How far back the history reaches.
pub const KEPT: Duration = Duration::from_secs(15 * 60);

/// Samples kept: [`KEPT`] of [`SAMPLE_INTERVAL`]s.
const CAPACITY: usize = (KEPT.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize;

/// Origin response time percentiles over one sample's interval, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OriginLatency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// What happened during one [`SAMPLE_INTERVAL`], and the cache's fill at its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// End of the interval, milliseconds since the Unix epoch.
    pub time: u64,
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// Of those answered with a 5xx, per second.
    pub errors_per_second: f64,
    /// Share of cache lookups that were hits (`None`: no lookup in the interval).
    pub hit_ratio: Option<f64>,
    /// Body bytes per second sent from the cache.
    pub cache_bytes_per_second: f64,
    /// Body bytes per second sent from origins (misses, pass-through).
    pub origin_bytes_per_second: f64,
    /// Origin response times (`None`: no origin was asked).
    pub origin_latency_ms: Option<OriginLatency>,
    /// Bytes stored, as charged against `max_memory`.
    pub cache_bytes: u64,
    /// Entries stored.
    pub cache_entries: u64,
}

/// The samples and origin health changes, shared by the sampler and the admin API.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    /// When each (site, origin) last changed health.
    health_changes: Mutex<HashMap<(String, String), SystemTime>>,
}

impl History {
    /// The samples newer than `after` (milliseconds since the epoch), oldest first.
    pub fn samples_after(&self, after: u64) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().filter(|s| s.time > after).cloned().collect()
    }

    /// When the origin `origin` of site `site` last changed health (`None`: not since start).
    pub fn health_changed(&self, site: &str, origin: &str) -> Option<SystemTime> {
        let changes = self.health_changes.lock().unwrap_or_else(|p| p.into_inner());
        changes.get(&(site.to_string(), origin.to_string())).copied()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    fn health_change(&self, site: String, origin: String) {
        let mut changes = self.health_changes.lock().unwrap_or_else(|p| p.into_inner());
        changes.insert((site, origin), SystemTime::now());
    }
}

/// The counters at one moment.
struct Reading {
    at: Instant,
    totals: TotalsSnapshot,
    hits: u64,
    lookups: u64,
}

impl Reading {
    fn take(metrics: &Metrics) -> Reading {
        let (hits, lookups) = metrics.hits_and_lookups();
        Reading {
            at: Instant::now(),
            totals: metrics.totals.snapshot(),
            hits,
            lookups,
        }
    }
}

/// The sample of the interval from `before` to `after`.
fn sample(before: &Reading, after: &Reading, storage: &MokaStorage) -> Sample {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(0.001);
    let rate = |b: u64, a: u64| a.saturating_sub(b) as f64 / seconds;
    let (b, a) = (&before.totals, &after.totals);
    let lookups = after.lookups.saturating_sub(before.lookups);
    let hits = after.hits.saturating_sub(before.hits);
    let buckets: Vec<u64> = a
        .origin_buckets
        .iter()
        .enumerate()
        .map(|(i, a)| a.saturating_sub(b.origin_buckets.get(i).copied().unwrap_or(0)))
        .collect();
    Sample {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        requests_per_second: rate(b.requests, a.requests),
        errors_per_second: rate(b.server_errors, a.server_errors),
        hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
        cache_bytes_per_second: rate(b.bytes_from_cache, a.bytes_from_cache),
        origin_bytes_per_second: rate(b.bytes_from_origin, a.bytes_from_origin),
        origin_latency_ms: origin_latency(&buckets),
        cache_bytes: storage.weighted_size(),
        cache_entries: storage.entry_count(),
    }
}

/// Percentiles of the origin response times counted in `buckets`.
fn origin_latency(buckets: &[u64]) -> Option<OriginLatency> {
    let total: u64 = buckets.iter().sum();
    (total > 0).then(|| OriginLatency {
        p50: percentile_ms(buckets, total, 0.50),
        p90: percentile_ms(buckets, total, 0.90),
        p99: percentile_ms(buckets, total, 0.99),
    })
}

/// The `q` quantile of `total` observations counted in `buckets`, interpolated linearly inside
/// the bucket it falls in (as Prometheus' `histogram_quantile` does); the unbounded last bucket
/// reports the highest bound.
fn percentile_ms(buckets: &[u64], total: u64, q: f64) -> f64 {
    let bounds = TotalsSnapshot::LATENCY_BOUNDS;
    let rank = q * total as f64;
    let mut below = 0.0;
    for (index, count) in buckets.iter().enumerate() {
        let count = *count as f64;
        if count > 0.0 && below + count >= rank {
            let Some(upper) = bounds.get(index) else {
                break;
            };
            let lower = index.checked_sub(1).map_or(0.0, |i| bounds[i]);
            let within = ((rank - below) / count).clamp(0.0, 1.0);
            return (lower + (upper - lower) * within) * 1000.0;
        }
        below += count;
    }
    bounds[bounds.len() - 1] * 1000.0
}

/// The background service taking a sample every [`SAMPLE_INTERVAL`] and noting origin health
/// changes.
pub struct Sampler {
    history: Arc<History>,
    metrics: Arc<Metrics>,
    storage: &'static MokaStorage,
    health: HealthEvents,
}

impl Sampler {
    /// A sampler filling `history` from `metrics`, `storage` and the changes on `health`.
    pub fn new(
        history: Arc<History>,
        metrics: Arc<Metrics>,
        storage: &'static MokaStorage,
        health: &HealthEvents,
    ) -> Sampler {
        Sampler {
            history,
            metrics,
            storage,
            health: health.clone(),
        }
    }
}

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut health = self.health.subscribe();
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        // Counting from zero: requests answered before this service started are in the first
        // sample, not lost.
        let mut before = Reading {
            at: Instant::now(),
            totals: TotalsSnapshot::default(),
            hits: 0,
            lookups: 0,
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticks.tick() => {
                    let after = Reading::take(&self.metrics);
                    self.history.push(sample(&before, &after, self.storage));
                    before = after;
                }
                change = health.recv() => match change {
                    Ok(change) => self.history.health_change(change.site, change.origin),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(counts: &[(usize, u64)]) -> Vec<u64> {
        let mut buckets = vec![0; TotalsSnapshot::LATENCY_BOUNDS.len() + 1];
        for (index, count) in counts {
            buckets[*index] = *count;
        }
        buckets
    }

    #[test]
    fn percentiles_interpolate_inside_buckets() {
        // 100 observations between 1 ms and 2.5 ms (bucket 4).
        let latency = origin_latency(&buckets(&[(4, 100)])).unwrap();
        assert!((latency.p50 - 1.75).abs() < 1e-9, "{latency:?}");
        assert!((latency.p99 - 2.485).abs() < 1e-9, "{latency:?}");
    }

    #[test]
    fn slow_tail_shows_in_p99_only() {
        // 98 fast (bucket 0, ≤ 0.1 ms), 2 slow (bucket 12, 0.5–1 s).
        let latency = origin_latency(&buckets(&[(0, 98), (12, 2)])).unwrap();
        assert!(latency.p50 <= 0.1 && latency.p90 <= 0.1, "{latency:?}");
        assert!(latency.p99 > 500.0, "{latency:?}");
    }

    #[test]
    fn unbounded_bucket_reports_the_highest_bound() {
        let latency = origin_latency(&buckets(&[(14, 3)])).unwrap();
        assert_eq!(latency.p50, 5000.0);
    }

    #[test]
    fn no_observation_no_percentiles() {
        assert_eq!(origin_latency(&buckets(&[])), None);
    }
}
