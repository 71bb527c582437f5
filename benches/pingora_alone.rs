//! pingora's HTTP proxy with nothing added: every request goes to one origin, no cache, no
//! filters. `benches/compare.sh` runs it as the `pingora` contender of its `pass-1k` row, to
//! show how much of edgecache's pass-through cost is pingora's own request loop.
//!
//! `pingora_alone LISTEN ORIGIN`, e.g. `pingora_alone 127.0.0.1:19086 127.0.0.1:19080`. Run
//! without those two arguments (as `cargo bench` does) it exits at once.

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

/// The allocator edgecache runs on, so that the two differ only in what edgecache adds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Forwards every request to the origin at this address.
struct ForwardAll(String);

#[async_trait]
impl ProxyHttp for ForwardAll {
    type CTX = ();

    fn new_ctx(&self) {}

    /// No downstream modules, as in edgecache.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, origin] = args.as_slice() else {
        eprintln!("usage: pingora_alone LISTEN ORIGIN (not a benchmark of its own)");
        return;
    };
    if listen.starts_with('-') {
        return;
    }
    // One thread without work stealing, as edgecache runs with `threads = 1`.
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, ForwardAll(origin.clone()));
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
