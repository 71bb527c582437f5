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
    /// with the time to wait when it is over the limit.
    pub fn admit(&self, client: &[u8]) -> Result<(), Duration> {
        let (Some(limiter), Some(limit)) = (&self.limiter, &self.settings.rate_limit) else {
            return Ok(());
        };
        let seen = limiter.observe(&client, 1);
        if seen > limit.requests as isize {
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
