//! A graceful shutdown that does not drop connections accepted just before it.
//!
//! When pingora shuts a service down (SIGTERM, or the old process of an upgrade), it stops
//! accepting and immediately drops every connection still waiting for its request header. That
//! is right for idle keep-alive connections, but a connection accepted a moment earlier, whose
//! request is still on the wire, is dropped too and its client sees a reset. [`Draining`] delays
//! that cleanup by [`SETTLE`], so requests already sent on such connections are read and served.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// How long connections without a request yet are kept after the listeners close.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Wraps an HTTP application, delaying its shutdown cleanup by [`SETTLE`].
pub struct Draining<A> {
    inner: Arc<A>,
}

impl<A> Draining<A> {
    /// `app`, drained gently.
    pub fn new(app: A) -> Draining<A> {
        Draining { inner: Arc::new(app) }
    }
}

#[async_trait]
impl<A> HttpServerApp for Draining<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        tokio::time::sleep(SETTLE).await;
        self.inner.http_cleanup().await;
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.clone().process_custom_session(stream, shutdown).await
    }
}
