//! Origin pools: which origin a forwarded request goes to, and how it is connected.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::upstreams::peer::HttpPeer;

use crate::config::SiteSettings;

/// How many backends the selector may try before giving up on finding a healthy one.
const MAX_SELECT_ITERATIONS: usize = 256;

/// The origins of one site with their connection settings.
pub struct OriginPool {
    balancer: Arc<LoadBalancer<RoundRobin>>,
    tls: bool,
    sni: String,
    verify_cert: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl OriginPool {
    /// A round-robin pool over the site's origins.
    pub fn new(site: &SiteSettings) -> std::io::Result<OriginPool> {
        let balancer = LoadBalancer::try_from_iter(site.origins.iter().copied())?;
        Ok(OriginPool {
            balancer: Arc::new(balancer),
            tls: site.origin_tls,
            sni: site.origin_sni.clone(),
            verify_cert: site.origin_verify_cert,
            connect_timeout: site.connect_timeout,
            read_timeout: site.read_timeout,
            write_timeout: site.write_timeout,
        })
    }

    /// The peer for the next request, or `None` when no origin is usable.
    pub fn select(&self, key: &[u8]) -> Option<Box<HttpPeer>> {
        let backend = self.balancer.select(key, MAX_SELECT_ITERATIONS)?;
        let mut peer = HttpPeer::new(backend, self.tls, self.sni.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect_timeout);
        options.total_connection_timeout = Some(self.connect_timeout * 2);
        options.read_timeout = Some(self.read_timeout);
        options.write_timeout = Some(self.write_timeout);
        options.verify_cert = self.verify_cert;
        options.verify_hostname = self.verify_cert;
        Some(Box::new(peer))
    }
}
