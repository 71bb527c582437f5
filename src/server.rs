//! Assembles the pingora server from a [`Config`]: process settings, the proxy service and its
//! listeners, background services (reload, health checks, webhooks), the admin API and the
//! optional demo origin.

use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use arc_swap::ArcSwap;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApi;
use crate::cache::CacheEngine;
use crate::cluster::services::{PeerChecker, PurgeRetries};
use crate::cluster::ClusterParts;
use crate::config::Config;
use crate::demo;
use crate::events::{self, Endpoints};
use crate::history::{History, Sampler};
use crate::metrics::Metrics;
use crate::proxy::connections::{
    fit_to_descriptor_limit, ClientConnections, ClientHelloDeadline, ConnectionTable, RejectedRequests,
};
use crate::proxy::EdgeProxy;
use crate::reload::{HangupWatcher, Reloader, Targets};
use crate::runtime::{self, Runtime, SharedRuntime};
use crate::stop::{Stopper, PINGORA_GRACE_MARGIN};
use crate::tls::SniResolver;
use crate::upstream::{health_events, HealthCheckRunner, HealthEvents};

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A site's origins or the access log could not be set up.
    #[error("cannot set up sites and logging: {0}")]
    Origins(#[from] std::io::Error),
    /// A TLS listener could not be set up.
    #[error("cannot set up TLS listener: {0}")]
    Tls(Box<pingora::Error>),
}

/// A server ready to run, with handles the caller may want (tests read cache stats).
pub struct EdgeServer {
    /// The pingora server; call `run_forever` (or `run` with a custom shutdown signal).
    pub server: Server,
    /// The cache storage shared by all requests.
    pub storage: &'static crate::cache::MokaStorage,
    /// Origin health changes, for whoever subscribes.
    pub health_events: HealthEvents,
    /// Ends the process once a shutdown has drained the connections, or on SIGINT: the binary
    /// adds it as a service (a process hosting the server for tests keeps its own signals).
    pub stopper: Stopper,
}

/// Read buffer of a client connection. pingora's default (64 KiB, allocated when the connection
/// is accepted) makes every idle connection cost about 100 KiB; request headers are read into
/// their own buffer, so a small one costs no throughput.
const CLIENT_READ_BUFFER: usize = 4 * 1024;

/// Write buffer of a client connection. A response whose header and body fit leaves in one
/// `send` (pingora's default, one TCP segment of 1460 bytes, took two for anything larger than
/// about 1 KiB); each byte here is resident in every idle connection, so it is not larger.
const CLIENT_WRITE_BUFFER: usize = 4 * 1024;

/// Adds the plain listeners.
fn add_plain_listeners<A>(config: &Config, service: &mut Service<A>) {
    for addr in &config.server.listen {
        let buffers = L4BufferSettings::new(CLIENT_READ_BUFFER, CLIENT_WRITE_BUFFER);
        service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
}

/// Adds the HTTPS listeners, with certificates chosen by SNI among the sites and HTTP/2 by ALPN;
/// a client over its connection limits, or without a ClientHello in time, is dropped first.
fn add_tls_listeners<A>(
    config: &Config,
    resolver: &Arc<SniResolver>,
    table: &Arc<ConnectionTable>,
    service: &mut Service<A>,
) -> Result<(), BuildError> {
    for addr in &config.server.listen_tls {
        let mut settings = TlsSettings::intermediate("", "").map_err(BuildError::Tls)?;
        settings.set_cert_resolver(resolver.clone());
        settings.enable_h2();
        let buffers = L4BufferSettings::new(CLIENT_READ_BUFFER, CLIENT_WRITE_BUFFER);
        let listener = ListenerConfig::tcp(addr.to_string())
            .tls(settings)
            .l4_buffer(buffers);
        service.add_listener(listener);
    }
    if !config.server.listen_tls.is_empty() {
        let deadline = ClientHelloDeadline::new(table.clone());
        service.endpoints().set_pre_tls_callback(Arc::new(deadline));
    }
    Ok(())
}

/// The cluster's background work: peer health checks and purge retries (idle without
/// `[cluster]`; a reload may add one).
fn add_cluster_services(server: &mut Server, runtime: &SharedRuntime, parts: &ClusterParts) {
    let current = runtime.clone();
    let checker = PeerChecker::new(move || current.load().cluster.clone());
    server.add_service(background_service("peer health checks", checker));
    let current = runtime.clone();
    let retries = PurgeRetries::new(parts.fanout.clone(), move || current.load().cluster.clone());
    server.add_service(background_service("purge retries", retries));
}

/// pingora's process settings derived from our config.
///
/// With one worker thread there is nothing to steal: pingora then runs the proxy on a
/// single-threaded scheduler, which costs less per request and per task (pass-through about a
/// quarter less CPU). With more threads work stealing stays on: pingora 0.9's other scheduler
/// registers a listener with one thread's I/O driver and serves its connections on any thread,
/// and a fast shutdown can leave a thread spinning on a listener whose driver is gone.
fn server_conf(config: &Config) -> ServerConf {
    let settings = &config.server;
    ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some((settings.grace_period + PINGORA_GRACE_MARGIN).as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: settings.upgrade_sock.clone(),
        pid_file: settings.pid_file.clone(),
        ca_file: settings.origin_ca_file.as_ref().map(|p| p.display().to_string()),
        upstream_keepalive_pool_size: settings.origin_pool_size,
        work_stealing: settings.threads > 1,
        ..ServerConf::default()
    }
}

/// Builds the server: bootstraps pingora (taking over listeners on `--upgrade`) and adds the
/// proxy service on every listen address, the reload, health-check and webhook services, the
/// admin API and the demo origin when configured.
pub fn build(config: &Config, opt: Option<Opt>) -> Result<EdgeServer, BuildError> {
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config));
    server.bootstrap();
    let cache = CacheEngine::new(config);
    let storage = cache.storage;
    let health_events = health_events();
    let metrics = Arc::new(Metrics::new());
    let webhooks: Endpoints = Arc::new(ArcSwap::from_pointee(config.webhooks.clone()));
    let (events, dispatcher) = events::channel(&config.server.node_name, webhooks.clone());
    let cluster = ClusterParts::new(events.clone());
    let runtime = runtime::shared(Runtime::new(config, 1, &health_events, &metrics, &cluster)?);
    add_cluster_services(&mut server, &runtime, &cluster);
    let dispatcher = dispatcher.watching_health(&health_events).watching_cache(storage);
    let webhooks_finished = dispatcher.finished();
    server.add_service(background_service("webhooks", dispatcher));
    let pools = runtime.clone();
    let checks = HealthCheckRunner::new(move || pools.load().pools());
    server.add_service(background_service("health checks", checks));

    let proxy = EdgeProxy::new(runtime.clone(), cache, metrics.clone(), events.clone());
    let mut app = HttpProxy::new(proxy, server.configuration.clone());
    app.handle_init_modules();
    let mut limits = config.server.clients.clone();
    limits.max_connections = fit_to_descriptor_limit(limits.max_connections, config.server.origin_pool_size);
    let table = ConnectionTable::new(limits, metrics.clients.clone());
    let log_runtime = runtime.clone();
    let rejected: RejectedRequests = Arc::new(move |client, protocol| {
        if let Some(log) = &log_runtime.load().access_log {
            let version = match protocol {
                "HTTP/2.0" => http::Version::HTTP_2,
                _ => http::Version::HTTP_11,
            };
            log.log(&crate::access_log::rejected(client, version));
        }
    });
    let log_runtime = runtime.clone();
    let flush_access_log = Arc::new(move || {
        if let Some(log) = &log_runtime.load().access_log {
            log.flush();
        }
    });
    let stopper = Stopper::new(
        config.server.grace_period,
        table.clone(),
        webhooks_finished,
        flush_access_log,
    );
    let connections = ClientConnections::new(app, table.clone(), config.server.h2c, rejected);
    let mut service = Service::new("edgecache proxy".to_string(), connections);
    add_plain_listeners(config, &mut service);
    let certificates = Arc::new(SniResolver::new(config.certificates()));
    add_tls_listeners(config, &certificates, &table, &mut service)?;
    let reloader = Arc::new(Reloader::new(
        config,
        Targets {
            runtime: runtime.clone(),
            storage,
            certificates,
            health_events: health_events.clone(),
            webhooks,
            cluster,
            events: events.clone(),
            metrics: metrics.clone(),
        },
    ));
    // The reload service installs its SIGHUP handler before the listeners open, so a HUP sent
    // once the proxy accepts connections is always handled (never the default: terminate).
    let hangups = HangupWatcher::new(reloader.clone());
    let reload_handle = server.add_service(background_service("config reload", hangups));
    let proxy_handle = server.add_service(service);
    proxy_handle.add_dependency(&reload_handle);
    if let Some(admin) = &config.admin {
        let history = Arc::new(History::default());
        let sampler = Sampler::new(history.clone(), metrics.clone(), storage, &health_events);
        server.add_service(background_service("dashboard history", sampler));
        let api = AdminApi::new(runtime, storage, metrics, reloader, events, history);
        let mut admin_service = Service::new("edgecache admin".to_string(), api);
        admin_service.add_tcp(&admin.listen.to_string());
        server.add_service(admin_service);
    }
    if let Some(addr) = config.demo_listen {
        server.add_service(demo::service(addr));
    }
    Ok(EdgeServer {
        server,
        storage,
        health_events,
        stopper,
    })
}
