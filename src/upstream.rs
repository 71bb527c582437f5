//! Origin pools: which origin a forwarded request goes to, and how it is connected.
//!
//! Each site has a primary pool and an optional backup pool, each a pingora `LoadBalancer`
//! (weighted round robin, random, or Ketama consistent hashing on the URL). Active health checks
//! are run by [`HealthCheckRunner`] for whichever pools the running config has, so a reload
//! that changes origins also changes what is checked; a passive circuit breaker ejects an origin
//! after consecutive connection failures or 5xx answers, until a cool-down passes and one trial
//! request decides. Backups are used only while no primary is usable.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::http::ResponseHeader;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{HealthCheckKind, HealthCheckSettings, LbPolicy, OriginSettings, SiteSettings};

/// How many backends the selector may try before giving up on finding a usable one.
const MAX_SELECT_ITERATIONS: usize = 256;

/// A change of an origin's health, seen by an active check or the circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// First host of the site (its name in logs).
    pub site: String,
    /// The origin address.
    pub origin: String,
    /// Its new state.
    pub healthy: bool,
}

/// Where health changes are published (for logs now; metrics and webhooks subscribe later).
pub type HealthEvents = tokio::sync::broadcast::Sender<HealthEvent>;

/// A new channel for health events.
pub fn health_events() -> HealthEvents {
    tokio::sync::broadcast::channel(256).0
}

/// One pool of origins behind one selection policy.
enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Random(Arc<LoadBalancer<Random>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

impl Balancer {
    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }

    fn backends(&self) -> &Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }
}

/// Builds a load balancer over `origins`, with its active health check when configured.
fn balancer(
    origins: &[&OriginSettings],
    site: &SiteSettings,
    events: &HealthEvents,
) -> std::io::Result<Balancer> {
    fn build<S>(
        backends: BTreeSet<Backend>,
        site: &SiteSettings,
        events: &HealthEvents,
    ) -> std::io::Result<Arc<LoadBalancer<S>>>
    where
        S: pingora::lb::selection::BackendSelection + Send + Sync + 'static,
        S::Iter: pingora::lb::selection::BackendIter,
    {
        let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Static::new(backends)));
        lb.update()
            .now_or_never()
            .ok_or_else(|| std::io::Error::other("static origin discovery blocked"))?
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(check) = &site.health_check {
            lb.set_health_check(health_check(check, site, events));
        }
        Ok(Arc::new(lb))
    }
    let mut backends = BTreeSet::new();
    for origin in origins {
        let backend = Backend::new_with_weight(&origin.addr.to_string(), origin.weight)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        backends.insert(backend);
    }
    Ok(match site.lb {
        LbPolicy::RoundRobin => Balancer::RoundRobin(build(backends, site, events)?),
        LbPolicy::Random => Balancer::Random(build(backends, site, events)?),
        LbPolicy::Consistent => Balancer::Consistent(build(backends, site, events)?),
    })
}

fn site_name(site: &SiteSettings) -> String {
    site.hosts.first().cloned().unwrap_or_else(|| "default".into())
}

/// The active check described by the config.
fn health_check(
    check: &HealthCheckSettings,
    site: &SiteSettings,
    events: &HealthEvents,
) -> Box<dyn HealthCheck + Send + Sync> {
    let observer = Box::new(HealthLogger {
        site: site_name(site),
        events: events.clone(),
    });
    match check.kind {
        HealthCheckKind::Tcp => {
            let mut tcp = if site.origin_tls {
                TcpHealthCheck::new_tls(&site.origin_sni)
            } else {
                TcpHealthCheck::new()
            };
            tcp.consecutive_success = check.healthy_after;
            tcp.consecutive_failure = check.unhealthy_after;
            tcp.peer_template.options.connection_timeout = Some(check.timeout);
            tcp.health_changed_callback = Some(observer);
            tcp
        }
        HealthCheckKind::Http => {
            let host = check.host.clone().unwrap_or_else(|| site_name(site));
            let mut http = HttpHealthCheck::new(&host, site.origin_tls);
            if let Ok(uri) = check.path.parse() {
                http.req.set_uri(uri);
            }
            http.consecutive_success = check.healthy_after;
            http.consecutive_failure = check.unhealthy_after;
            http.peer_template.options.connection_timeout = Some(check.timeout);
            http.peer_template.options.read_timeout = Some(check.timeout);
            http.peer_template.options.verify_cert = site.origin_verify_cert;
            let expected = check.expected_status;
            http.validator = Some(Box::new(move |resp: &ResponseHeader| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::Custom("unexpected status"),
                        format!("health check got {}, expected {expected}", resp.status),
                    )
                }
            }));
            http.health_changed_callback = Some(observer);
            Box::new(http)
        }
    }
}

/// Logs and publishes health changes.
struct HealthLogger {
    site: String,
    events: HealthEvents,
}

impl HealthLogger {
    fn publish(site: &str, events: &HealthEvents, origin: String, healthy: bool) {
        if healthy {
            tracing::info!(site, origin, "origin is healthy");
        } else {
            tracing::warn!(site, origin, "origin is unhealthy");
        }
        let _ = events.send(HealthEvent {
            site: site.to_string(),
            origin,
            healthy,
        });
    }
}

#[async_trait]
impl HealthObserve for HealthLogger {
    async fn observe(&self, target: &Backend, healthy: bool) {
        HealthLogger::publish(&self.site, &self.events, target.addr.to_string(), healthy);
    }
}

/// Passive health: consecutive failures eject an origin for a cool-down, after which one trial
/// request decides whether it comes back.
struct CircuitBreaker {
    eject_after: usize,
    eject_for: Duration,
    states: Mutex<HashMap<String, BreakerState>>,
}

#[derive(Default)]
struct BreakerState {
    consecutive_failures: usize,
    ejected_until: Option<Instant>,
    trial_in_flight: bool,
    /// Failed requests since the pool was built, and when the last one happened.
    failures: u64,
    last_failure: Option<SystemTime>,
}

impl CircuitBreaker {
    /// Whether a request may go to `origin` now (claims the trial slot of an ejected origin
    /// whose cool-down has passed).
    fn admits(&self, origin: &SocketAddr) -> bool {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.is_empty() {
            return true;
        }
        let Some(state) = states.get_mut(origin.to_string().as_str()) else {
            return true;
        };
        match state.ejected_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if state.trial_in_flight => false,
            Some(_) => {
                state.trial_in_flight = true;
                true
            }
        }
    }

    /// Whether `origin` is ejected now, its failed requests and when the last one happened.
    fn state(&self, origin: &str) -> (bool, u64, Option<SystemTime>) {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = states.get(origin) else {
            return (false, 0, None);
        };
        let ejected = state.ejected_until.is_some_and(|until| Instant::now() < until);
        (ejected, state.failures, state.last_failure)
    }

    /// Records an outcome; returns the new health when it changed.
    fn record(&self, origin: &str, success: bool) -> Option<bool> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if success && !states.contains_key(origin) {
            // An origin with no failure on record stays without a record.
            return None;
        }
        let state = states.entry(origin.to_string()).or_default();
        let was_ejected = state.ejected_until.is_some();
        if success {
            *state = BreakerState {
                failures: state.failures,
                last_failure: state.last_failure,
                ..BreakerState::default()
            };
            return was_ejected.then_some(true);
        }
        state.failures += 1;
        state.last_failure = Some(SystemTime::now());
        state.consecutive_failures += 1;
        state.trial_in_flight = false;
        if state.consecutive_failures >= self.eject_after && self.eject_after > 0 {
            state.ejected_until = Some(Instant::now() + self.eject_for);
            return (!was_ejected).then_some(false);
        }
        None
    }
}

/// One origin as the status page and metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginHealth {
    /// `host:port`.
    pub addr: String,
    /// A backup origin.
    pub backup: bool,
    /// Usable: passing its active checks (if any) and not ejected by the circuit breaker.
    pub healthy: bool,
    /// Requests it failed (connection errors, timeouts, 5xx) since the config was applied.
    pub failures: u64,
    /// When it last failed one.
    pub last_failure: Option<SystemTime>,
}

/// The origins of one site with their connection settings.
pub struct OriginPool {
    site: String,
    /// Time between active health checks (None: no active checks).
    check_interval: Option<Duration>,
    next_check: Mutex<Instant>,
    primary: Balancer,
    backup: Option<Balancer>,
    breaker: CircuitBreaker,
    events: HealthEvents,
    /// How many other origins an idempotent request may be retried on.
    pub retries: usize,
    tls: bool,
    sni: String,
    verify_cert: bool,
    http2: bool,
    idle_timeout: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Each origin's address as text, made once: requests carry it to logs and metrics.
    names: HashMap<SocketAddr, Arc<str>>,
}

impl OriginPool {
    /// The pool of a site; its active checks run when [`HealthCheckRunner`] sees it.
    pub fn new(site: &SiteSettings, events: &HealthEvents) -> std::io::Result<OriginPool> {
        let primaries: Vec<_> = site.origins.iter().filter(|o| !o.backup).collect();
        let backups: Vec<_> = site.origins.iter().filter(|o| o.backup).collect();
        let primary = balancer(&primaries, site, events)?;
        let backup = if backups.is_empty() {
            None
        } else {
            Some(balancer(&backups, site, events)?)
        };
        let mut names = HashMap::new();
        for balancer in std::iter::once(&primary).chain(backup.as_ref()) {
            for backend in balancer.backends().get_backend().iter() {
                names.insert(backend.addr.clone(), Arc::from(backend.addr.to_string()));
            }
        }
        let pool = OriginPool {
            names,
            site: site_name(site),
            check_interval: site.health_check.as_ref().map(|c| c.interval),
            next_check: Mutex::new(Instant::now()),
            primary,
            backup,
            breaker: CircuitBreaker {
                eject_after: site.eject_after_failures,
                eject_for: site.eject_for,
                states: Mutex::default(),
            },
            events: events.clone(),
            retries: site.retries,
            tls: site.origin_tls,
            sni: site.origin_sni.clone(),
            verify_cert: site.origin_verify_cert,
            http2: site.origin_http2,
            idle_timeout: site.origin_idle_timeout,
            connect_timeout: site.connect_timeout,
            read_timeout: site.read_timeout,
            write_timeout: site.write_timeout,
        };
        Ok(pool)
    }

    /// Runs the active health checks of every origin if they are due.
    pub async fn run_due_health_checks(&self) {
        let Some(interval) = self.check_interval else {
            return;
        };
        {
            let mut next = self.next_check.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now < *next {
                return;
            }
            *next = now + interval;
        }
        let backup = self.backup.as_ref().map(|b| b.backends().run_health_check(true));
        self.primary.backends().run_health_check(true).await;
        if let Some(backup) = backup {
            backup.await;
        }
    }

    /// Every origin with its current health.
    pub fn health(&self) -> Vec<OriginHealth> {
        let mut origins = Vec::new();
        for (balancer, backup) in [(Some(&self.primary), false), (self.backup.as_ref(), true)] {
            let Some(balancer) = balancer else { continue };
            let backends = balancer.backends();
            for backend in backends.get_backend().iter() {
                let addr = backend.addr.to_string();
                let (ejected, failures, last_failure) = self.breaker.state(&addr);
                origins.push(OriginHealth {
                    healthy: backends.ready(backend) && !ejected,
                    addr,
                    backup,
                    failures,
                    last_failure,
                });
            }
        }
        origins
    }

    /// The peer for a request: a healthy primary not yet `tried` and not ejected by the circuit
    /// breaker, else such a backup. When the breaker has ejected every healthy origin, it is
    /// ignored rather than failing every request (a lone origin is never locked out by it).
    /// `None` when no origin is usable.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<Box<HttpPeer>> {
        let untried = |backend: &Backend, healthy: bool| healthy && !tried.contains(&backend.addr);
        let admitted = |backend: &Backend, healthy: bool| {
            healthy && !tried.contains(&backend.addr) && self.breaker.admits(&backend.addr)
        };
        let backend = self.pick(key, admitted).or_else(|| self.pick(key, untried))?;
        let mut peer = HttpPeer::new(backend, self.tls, self.sni.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect_timeout);
        options.total_connection_timeout = Some(self.connect_timeout * 2);
        options.read_timeout = Some(self.read_timeout);
        options.write_timeout = Some(self.write_timeout);
        options.verify_cert = self.verify_cert;
        options.verify_hostname = self.verify_cert;
        options.idle_timeout = Some(self.idle_timeout);
        if self.http2 && self.tls {
            peer.options.set_http_version(2, 1);
        }
        Some(Box::new(peer))
    }

    /// The text form of an origin's address (made once per pool).
    pub fn origin_name(&self, addr: &SocketAddr) -> Arc<str> {
        match self.names.get(addr) {
            Some(name) => name.clone(),
            None => Arc::from(addr.to_string()),
        }
    }

    /// A primary accepted by `accept`, else a backup.
    fn pick(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool + Copy) -> Option<Backend> {
        self.primary
            .select_with(key, accept)
            .or_else(|| self.backup.as_ref().and_then(|b| b.select_with(key, accept)))
    }

    /// Feeds the circuit breaker: a response below 500 is a success; a connection failure,
    /// a timeout or a 5xx is a failure.
    pub fn record(&self, origin: &str, success: bool) {
        if let Some(healthy) = self.breaker.record(origin, success) {
            HealthLogger::publish(&self.site, &self.events, origin.to_string(), healthy);
        }
    }
}

/// Runs the due active health checks of the pools the running config has, every tick.
pub struct HealthCheckRunner {
    pools: Box<dyn Fn() -> Vec<Arc<OriginPool>> + Send + Sync>,
}

/// How often the runner looks for due checks (the shortest useful check interval).
const HEALTH_TICK: Duration = Duration::from_millis(100);

impl HealthCheckRunner {
    /// A runner over whatever `pools` returns at each tick (the current config's pools).
    pub fn new(pools: impl Fn() -> Vec<Arc<OriginPool>> + Send + Sync + 'static) -> HealthCheckRunner {
        HealthCheckRunner {
            pools: Box::new(pools),
        }
    }
}

#[async_trait]
impl BackgroundService for HealthCheckRunner {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(HEALTH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let pools = (self.pools)();
            futures_util::future::join_all(pools.iter().map(|p| p.run_due_health_checks())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &str) -> SocketAddr {
        let port = if name == "a" { 1 } else { 2 };
        SocketAddr::Inet(([127, 0, 0, 1], port).into())
    }

    #[test]
    fn breaker_ejects_then_admits_one_trial() {
        let breaker = CircuitBreaker {
            eject_after: 2,
            eject_for: Duration::ZERO,
            states: Mutex::default(),
        };
        assert_eq!(breaker.record("127.0.0.1:1", false), None);
        assert_eq!(breaker.record("127.0.0.1:1", false), Some(false));
        assert!(breaker.admits(&addr("a")), "cool-down over: one trial");
        assert!(!breaker.admits(&addr("a")), "only one trial at a time");
        assert_eq!(breaker.record("127.0.0.1:1", true), Some(true));
        assert!(breaker.admits(&addr("a")));
    }

    #[test]
    fn breaker_keeps_origins_out_during_cool_down() {
        let breaker = CircuitBreaker {
            eject_after: 1,
            eject_for: Duration::from_secs(60),
            states: Mutex::default(),
        };
        breaker.record("127.0.0.1:1", false);
        assert!(!breaker.admits(&addr("a")));
        assert!(breaker.admits(&addr("b")));
    }
}
