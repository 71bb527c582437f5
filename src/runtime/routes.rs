//! A site's `[[site.route]]` rules at run time: each with its own origin pool (when it has
//! origins) and its rate estimator, and the first-match lookup, which costs a few comparisons
//! per rule (a regex search for `path_regex` rules).

use std::sync::Arc;
use std::time::Duration;

use pingora_limits::rate::Rate;

use crate::config::RouteSettings;
use crate::upstream::{HealthEvents, OriginPool};

/// One rule, ready to apply.
pub struct Route {
    /// Validated settings.
    pub settings: RouteSettings,
    /// Its own origins (None: the site's).
    pub origins: Option<Arc<OriginPool>>,
    /// Requests per client in the current and previous period (None: no limit).
    limiter: Option<Rate>,
}

impl Route {
    /// The rule for `settings`, its pool's health changes published on `events`.
    pub fn new(settings: &RouteSettings, events: &HealthEvents) -> std::io::Result<Route> {
        let origins = match &settings.pool {
            Some(pool) => Some(Arc::new(OriginPool::new(pool, events)?)),
            None => None,
        };
        Ok(Route {
            limiter: settings.rate_limit.as_ref().map(|limit| Rate::new(limit.per)),
            settings: settings.clone(),
            origins,
        })
    }

    /// Counts a request of `client` (its address, or the configured header's value); `Err`
    /// with the time to wait when it is over the limit. The count is a sliding window: the
    /// current period's requests plus the previous period's, weighted by how much of the
    /// previous period the window still covers, so a burst across a period boundary is counted
    /// whole.
    pub fn admit(&self, client: &[u8]) -> Result<(), Duration> {
        let (Some(limiter), Some(limit)) = (&self.limiter, &self.settings.rate_limit) else {
            return Ok(());
        };
        limiter.observe(&client, 1);
        let in_window = limiter.rate_with(&client, |period| {
            let previous_share = 1.0 - period.current_interval_fraction.clamp(0.0, 1.0);
            period.curr_samples as f64 + period.prev_samples as f64 * previous_share
        });
        if in_window > f64::from(limit.requests) + 1e-9 {
            return Err(limit.per);
        }
        Ok(())
    }
}

/// The index of the first of `routes` that matches `method` and `path` (without the query).
pub fn first_match(routes: &[Route], method: &http::Method, path: &str) -> Option<usize> {
    routes.iter().position(|route| {
        let settings = &route.settings;
        settings.methods.as_ref().is_none_or(|m| m.contains(method)) && settings.path.matches(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(requests: u32, per: Duration) -> Route {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nhosts = [\"a.example\"]\norigins = [\"127.0.0.1:2\"]\n\
             [[site.route]]\npath = \"/\"\nrate_limit = {{ requests = {requests}, per = \"{}ms\" }}\n",
            per.as_millis()
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        Route::new(&config.sites[0].routes[0], &crate::upstream::health_events()).unwrap()
    }

    #[test]
    fn a_burst_across_a_period_boundary_is_counted_whole() {
        let route = limited(3, Duration::from_millis(200));
        // Two requests late in one period, the rest early in the next.
        std::thread::sleep(Duration::from_millis(150));
        assert!(route.admit(b"c").is_ok());
        assert!(route.admit(b"c").is_ok());
        std::thread::sleep(Duration::from_millis(60));
        let rest: Vec<bool> = (0..3).map(|_| route.admit(b"c").is_ok()).collect();
        assert_eq!(rest, [true, false, false], "three in the window, then refused");
        assert!(route.admit(b"other").is_ok(), "clients are counted apart");
    }

    #[test]
    fn the_limit_lifts_once_the_window_passed() {
        let route = limited(2, Duration::from_millis(100));
        assert!(route.admit(b"c").is_ok());
        assert!(route.admit(b"c").is_ok());
        assert_eq!(route.admit(b"c"), Err(Duration::from_millis(100)));
        std::thread::sleep(Duration::from_millis(250));
        assert!(route.admit(b"c").is_ok());
    }
}
