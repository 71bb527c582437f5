//! Client connections: how many there may be, how long each may take, and what each may cost.
//!
//! pingora serves a connection for as long as its client likes: reads time out per read (so a
//! client trickling a header byte at a time is never dropped), an HTTP/1.1 keep-alive connection
//! waits forever for its next request, an HTTP/2 connection with no stream and a cleartext client
//! that never finishes the HTTP/2 preface are kept, and there is no limit on connections. This
//! module wraps the HTTP application with the bounds an edge needs:
//!
//! - at most `max_connections` client connections, and `max_connections_per_ip` per address;
//!   beyond them a new connection is closed at once and counted;
//! - a deadline for each request header (`client_header_timeout`; on a reused connection the
//!   keep-alive wait comes on top), an idle timeout between requests (`keepalive_timeout`, HTTP/1.1
//!   and HTTP/2), a deadline for the TLS ClientHello and the HTTP/2 preface
//!   (`handshake_timeout`), and a send timeout for clients that stop reading (`send_timeout`);
//! - at most `max_requests_per_connection` requests per connection, and an HTTP/2 connection
//!   whose client cancels at least half of its streams (past [`RESET_FLOOD_MIN_STREAMS`]) is
//!   closed with `GOAWAY(ENHANCE_YOUR_CALM)`: the "rapid reset" attack;
//! - pipelined HTTP/1.1 requests are answered in order.
//!
//! Deadlines use pingora's coarse timer wheel (10 ms ticks), which costs no wake-up of the
//! event loop per request, unlike tokio's timers.
//!
//! On shutdown (SIGTERM, or the old process of an upgrade) every connection drains: a request
//! in flight finishes and its answer says `Connection: close`; an idle keep-alive connection is
//! kept for [`DRAIN_IDLE`] in case its client already sent its next request (which is answered,
//! with `Connection: close`), then closed; HTTP/2 connections get `GOAWAY`. pingora aborts the
//! requests still reading their header when its cleanup runs, so the cleanup waits for the idle
//! connections first. The table counts open connections and requests in flight, so the process
//! can exit as soon as the last one is done.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession as H2Session};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Digest, GetSocketDigest, Stream, ALPN};
use pingora::server::ShutdownWatch;
use pingora_timeout::Elapsed;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::config::ClientLimits;
use crate::metrics::ClientCounters;

/// How long a keep-alive connection idle when draining begins may still bring its next request.
/// A client may send a request at the very moment the server closes its idle connection, and
/// then sees the connection fail; keeping it briefly answers that request instead.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// How long a request whose first byte arrived may still take over its header after the idle
/// connections closed, before pingora's cleanup aborts it.
const DRAIN_HEADER: Duration = Duration::from_millis(250);

/// Streams an HTTP/2 connection must have opened before its cancellations are judged.
pub const RESET_FLOOD_MIN_STREAMS: usize = 100;

/// Rejected (malformed) HTTP/2 streams tolerated per connection, as pingora's own accept loop.
const MAX_REJECTED_STREAMS: usize = 32;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest TLS record a ClientHello arrives in (2^14 plus expansion, RFC 8446 §5.2).
const MAX_TLS_RECORD: usize = 16_384 + 2_048;

/// Descriptors kept aside for listeners, log files, the admin API and health checks.
const RESERVED_DESCRIPTORS: u64 = 128;

/// The client connections the open-file limit leaves room for, at most `wanted`: the soft limit
/// is first raised to the hard one, then each client connection is counted with the origin
/// connection it may hold, besides `pooled` idle origin connections and a reserve. Past the
/// limit `accept` would fail and pingora's listeners would stall; below it, extra connections
/// are refused one by one.
pub fn fit_to_descriptor_limit(wanted: usize, pooled: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit; max_connections kept");
            return wanted;
        }
    };
    let spare = limit.saturating_sub(RESERVED_DESCRIPTORS + pooled as u64);
    let fit = usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1);
    if wanted <= fit {
        return wanted;
    }
    tracing::warn!(
        max_connections = wanted,
        open_file_limit = limit,
        using = fit,
        "server.max_connections lowered to fit the open-file limit (raise LimitNOFILE / ulimit -n)"
    );
    fit
}

/// The open connections, in total and per client address.
pub struct ConnectionTable {
    limits: ClientLimits,
    open: AtomicUsize,
    requests: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    counters: Arc<ClientCounters>,
}

impl ConnectionTable {
    /// A table enforcing `limits`, counting into `counters`.
    pub fn new(limits: ClientLimits, counters: Arc<ClientCounters>) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable {
            limits,
            open: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            counters,
        })
    }

    /// A slot for a new connection from `ip`, or `None` (counted) when a limit is reached.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.counters.refused();
            return None;
        }
        self.counters.set_open(self.open());
        // Dropping the slot on refusal gives the place back.
        let mut slot = Slot {
            table: self.clone(),
            ip: None,
        };
        let Some(ip) = ip else { return Some(slot) };
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.limits.max_connections_per_ip {
            drop(per_ip);
            self.counters.refused();
            return None;
        }
        *count += 1;
        slot.ip = Some(ip);
        Some(slot)
    }

    /// Whether a connection from `ip` would be admitted now (checked before a TLS handshake).
    fn has_room(&self, ip: Option<IpAddr>) -> bool {
        if self.open.load(Ordering::Acquire) >= self.limits.max_connections {
            return false;
        }
        let per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        ip.is_none_or(|ip| per_ip.get(&ip).copied().unwrap_or(0) < self.limits.max_connections_per_ip)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Requests being served now (their header read or being read, their answer not yet sent).
    pub fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Counts a request in flight until the returned guard is dropped.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

impl crate::stop::ClientWork for ConnectionTable {
    fn open_connections(&self) -> usize {
        self.open()
    }

    fn requests_in_flight(&self) -> usize {
        ConnectionTable::requests_in_flight(self)
    }
}

/// One request in flight; uncounted when dropped.
struct InFlight(Arc<ConnectionTable>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted connection; frees its place when dropped.
struct Slot {
    table: Arc<ConnectionTable>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.open.fetch_sub(1, Ordering::AcqRel);
        self.table.counters.set_open(self.table.open());
        let Some(ip) = self.ip else { return };
        let mut per_ip = self.table.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

tokio::task_local! {
    /// Set once the request header of the request being served has been read.
    static HEADER_READ: Cell<bool>;
    /// The HTTP/2 connection the stream being served belongs to.
    static H2_STREAMS: Arc<StreamTally>;
}

/// Called by the proxy once a request header has been read: stops the header deadline.
pub fn header_received() {
    let _ = HEADER_READ.try_with(|read| read.set(true));
}

/// Called by the proxy when a request ended because its client went away (an HTTP/2 stream
/// reset, a closed connection): counts towards the connection's reset-flood check.
pub fn client_cancelled() {
    let _ = H2_STREAMS.try_with(|tally| tally.cancelled());
}

/// Streams of one HTTP/2 connection: opened, cancelled by the client, in flight.
#[derive(Default)]
struct StreamTally {
    opened: AtomicUsize,
    cancelled: AtomicUsize,
    active: AtomicUsize,
    idle: Notify,
    flood: Notify,
}

impl StreamTally {
    fn cancelled(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::AcqRel) + 1;
        if is_reset_flood(self.opened.load(Ordering::Acquire), cancelled) {
            self.flood.notify_one();
        }
    }

    /// Resolves once no stream has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            while self.active.load(Ordering::Acquire) != 0 {
                self.idle.notified().await;
            }
            let busy_again = self.idle.notified();
            tokio::select! {
                _ = pingora_timeout::sleep(idle) => {
                    if self.active.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                _ = busy_again => {}
            }
        }
    }
}

/// A connection whose client cancelled at least half of its streams, once it opened enough of
/// them for the share to mean something (Envoy's premature-reset rule, minus the time window).
fn is_reset_flood(opened: usize, cancelled: usize) -> bool {
    opened >= RESET_FLOOD_MIN_STREAMS && cancelled * 2 >= opened
}

/// Marks a stream in flight while it lives.
struct ActiveStream(Arc<StreamTally>);

impl ActiveStream {
    fn start(tally: &Arc<StreamTally>) -> ActiveStream {
        tally.active.fetch_add(1, Ordering::AcqRel);
        tally.idle.notify_waiters();
        ActiveStream(tally.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Told about each request refused before it reached the proxy (a header pingora rejected as
/// malformed or too large, or that the client abandoned half-sent), with the client's address
/// and the protocol, so it still gets its access-log line.
pub type RejectedRequests = Arc<dyn Fn(Option<IpAddr>, &'static str) + Send + Sync>;

/// Wraps an HTTP application with the client-connection bounds of [`ClientLimits`].
pub struct ClientConnections<A> {
    app: Arc<A>,
    table: Arc<ConnectionTable>,
    h2c: bool,
    rejected: RejectedRequests,
}

impl<A> ClientConnections<A> {
    /// `app` behind the limits of `table`; `h2c` accepts cleartext HTTP/2 by prior knowledge;
    /// requests refused before reaching `app` are reported to `rejected`.
    pub fn new(
        app: A,
        table: Arc<ConnectionTable>,
        h2c: bool,
        rejected: RejectedRequests,
    ) -> ClientConnections<A> {
        ClientConnections {
            app: Arc::new(app),
            table,
            h2c,
            rejected,
        }
    }

    fn limits(&self) -> &ClientLimits {
        &self.table.limits
    }

    /// HTTP/2 or not: by ALPN over TLS, by the preface on cleartext with h2c (which must arrive
    /// within the handshake timeout). `None`: the client sent nothing usable in time.
    async fn speaks_h2(&self, stream: &mut Stream) -> Option<bool> {
        if stream.get_ssl_digest().is_some() {
            return Some(matches!(stream.selected_alpn_proto(), Some(ALPN::H2)));
        }
        if !self.h2c {
            return Some(false);
        }
        let mut preface = [0u8; H2_PREFACE.len()];
        let deadline = self.limits().handshake_timeout;
        match pingora_timeout::timeout(deadline, stream.try_peek(&mut preface)).await {
            Ok(Ok(true)) => Some(preface == H2_PREFACE),
            Ok(Ok(false)) => Some(false),
            Ok(Err(_)) => None,
            Err(_) => {
                self.table.counters.timed_out("handshake");
                None
            }
        }
    }
}

impl<A> ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Serves HTTP/1.x requests one after the other, pipelined ones in order. Between requests
    /// the connection waits for its client's next byte holding only the stream: the state of a
    /// request (about 40 KiB) is created when a request arrives, so idle connections stay cheap.
    async fn serve_h1(&self, mut stream: Stream, client: Option<IpAddr>, shutdown: &ShutdownWatch) {
        let limits = self.limits();
        let mut persistent = None;
        let mut idle_limit = limits.header_timeout;
        loop {
            if !has_pipelined_request(&persistent)
                && !self.next_request(&mut stream, idle_limit, shutdown).await
            {
                return;
            }
            let mut session = ServerSession::new_http1(stream);
            match persistent {
                Some(persistent) => persistent.apply_to_session(&mut session),
                None => {
                    let reuses = limits.max_requests_per_connection.saturating_sub(1);
                    session.set_keepalive_reuses_remaining(Some(reuses));
                    session.set_pipelining_enabled(true);
                }
            }
            let keepalive = (!*shutdown.borrow()).then(|| limits.keepalive_timeout.as_secs().max(1));
            session.set_keepalive(keepalive);
            session.set_write_timeout(Some(limits.send_timeout));
            let reused = self
                .serve_one(session, client, limits.header_timeout, shutdown)
                .await;
            let Some(reused) = reused else { return };
            (stream, persistent) = reused.consume();
            idle_limit = limits.keepalive_timeout;
        }
    }

    /// Waits for the first byte of the next request: `false` when the client closes, stays
    /// silent for `idle_limit`, or the server drains (idle connections then close after
    /// [`DRAIN_IDLE`], so clients move to the new process of an upgrade).
    async fn next_request(
        &self,
        stream: &mut Stream,
        idle_limit: Duration,
        shutdown: &ShutdownWatch,
    ) -> bool {
        let mut byte = [0u8; 1];
        let mut shutdown = shutdown.clone();
        let closing = async {
            let _ = shutdown.wait_for(|down| *down).await;
            pingora_timeout::sleep(DRAIN_IDLE).await;
        };
        tokio::select! {
            peeked = pingora_timeout::timeout(idle_limit, stream.try_peek(&mut byte)) => match peeked {
                Ok(peeked) => peeked.is_ok(),
                Err(_) => {
                    self.table.counters.timed_out("idle");
                    false
                }
            },
            _ = closing => false,
        }
    }

    /// One HTTP/1.x request, dropped if its header is not complete within `header_deadline`.
    async fn serve_one(
        &self,
        session: ServerSession,
        client: Option<IpAddr>,
        header_deadline: Duration,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora::apps::ReusedHttpStream> {
        let _in_flight = self.table.request_started();
        // pingora returns the request's state (about 15 KiB) already boxed, so the futures
        // wrapped around it below stay small.
        let serve = self.app.process_new_http(session, shutdown);
        HEADER_READ
            .scope(Cell::new(false), async {
                let reused = match until_header_deadline(serve, header_deadline).await {
                    Ok(reused) => reused,
                    Err(_) => {
                        self.table.counters.timed_out("header");
                        return None;
                    }
                };
                // A request began (its first byte was read) but never reached the proxy.
                if reused.is_none() && !HEADER_READ.with(Cell::get) && !*shutdown.borrow() {
                    self.table.counters.client_error();
                    (self.rejected)(client, "HTTP/1.1");
                }
                reused
            })
            .await
    }

    /// Serves an HTTP/2 connection: streams in their own tasks, closed when idle, drained after
    /// `max_requests_per_connection` streams, cut with `ENHANCE_YOUR_CALM` on a reset flood.
    async fn serve_h2(&self, stream: Stream, client: Option<IpAddr>, shutdown: &ShutdownWatch) {
        let limits = self.limits();
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let handshake = h2_server::handshake(stream, self.app.h2_options());
        let mut conn = match pingora_timeout::timeout(limits.handshake_timeout, handshake).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
            Err(_) => {
                self.table.counters.timed_out("handshake");
                return;
            }
        };
        let tally = Arc::new(StreamTally::default());
        let mut shutdown_watch = shutdown.clone();
        let mut draining = false;
        let mut rejected = 0;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown_watch.changed(), if !draining => {
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                _ = tally.flood.notified() => {
                    self.table.counters.reset_flood();
                    tracing::debug!("HTTP/2 client cancels most of its streams: closing the connection");
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    let flush = H2Session::from_h2_conn(&mut conn, digest.clone());
                    let _ = pingora_timeout::timeout(limits.handshake_timeout, flush).await;
                    return;
                }
                next = H2Session::from_h2_conn(&mut conn, digest.clone()) => next,
                _ = tally.idle_for(limits.keepalive_timeout), if !draining => {
                    self.table.counters.timed_out("idle");
                    return;
                }
            };
            match next {
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    self.table.counters.client_error();
                    (self.rejected)(client, "HTTP/2.0");
                    rejected += 1;
                    if rejected > MAX_REJECTED_STREAMS {
                        conn.abrupt_shutdown(h2::Reason::PROTOCOL_ERROR);
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(session))) => {
                    let opened = tally.opened.fetch_add(1, Ordering::AcqRel) + 1;
                    self.spawn_stream(session, &tally, shutdown);
                    if opened >= limits.max_requests_per_connection as usize && !draining {
                        conn.graceful_shutdown();
                        draining = true;
                    }
                }
            }
        }
    }

    /// Serves one HTTP/2 stream in its own task, counted in flight and in the connection's tally.
    fn spawn_stream(&self, session: H2Session, tally: &Arc<StreamTally>, shutdown: &ShutdownWatch) {
        let app = self.app.clone();
        let shutdown = shutdown.clone();
        let active = ActiveStream::start(tally);
        let in_flight = self.table.request_started();
        let tally = tally.clone();
        let send_timeout = self.limits().send_timeout;
        tokio::spawn(H2_STREAMS.scope(tally, async move {
            let _active = (active, in_flight);
            let mut session = ServerSession::new_http2(session);
            session.set_write_timeout(Some(send_timeout));
            app.process_new_http(session, &shutdown).await;
        }));
    }
}

#[async_trait]
impl<A> ServerApp for ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let ip = peer_ip(stream.get_socket_digest().as_deref());
        let _slot = self.table.admit(ip)?;
        match self.speaks_h2(&mut stream).await? {
            // Boxed: inline, HTTP/2's larger connection state would size every connection's.
            true => Box::pin(self.serve_h2(stream, ip, shutdown)).await,
            false => self.serve_h1(stream, ip, shutdown).await,
        }
        None
    }

    async fn cleanup(&self) {
        pingora_timeout::sleep(DRAIN_IDLE + DRAIN_HEADER).await;
        self.app.http_cleanup().await;
    }
}

/// Runs `serve` (within a [`HEADER_READ`] scope), failing it when its request header has not
/// been read within `deadline`. The deadline's timer is only armed when the first poll of
/// `serve` did not already read the header: mostly the whole header is in the socket buffer by
/// the time a request starts, and then no timer is created, moved or cancelled at all.
async fn until_header_deadline<F: Future>(serve: F, deadline: Duration) -> Result<F::Output, Elapsed> {
    let mut serve = std::pin::pin!(serve);
    if let Poll::Ready(output) = std::future::poll_fn(|cx| Poll::Ready(serve.as_mut().poll(cx))).await {
        return Ok(output);
    }
    if HEADER_READ.with(Cell::get) {
        return Ok(serve.await);
    }
    let expired = async {
        pingora_timeout::sleep(deadline).await;
        if HEADER_READ.with(Cell::get) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        output = serve => Ok(output),
        _ = expired => Err(Elapsed),
    }
}

/// Whether the previous request left a pipelined request behind, already read from the stream
/// (then no new byte will come before it is answered). pingora 0.9.1 offers no accessor for
/// this, so its `Debug` form is read, and only up to that field. Should the field ever be
/// missing from it, a request is assumed to be pending: the session then waits for it itself.
fn has_pipelined_request(persistent: &Option<pingora::apps::HttpPersistentSettings>) -> bool {
    use std::fmt::Write;
    let Some(settings) = persistent else { return false };
    let mut finder = PipelinedPrefixFinder::default();
    let _ = write!(finder, "{settings:?}");
    finder.found != Some(false)
}

/// Reads the `pipelined_prefix` field out of a `Debug` rendering piece by piece, and stops the
/// rendering (with an error) as soon as its value has begun.
#[derive(Default)]
struct PipelinedPrefixFinder {
    /// The field's name was written: its value comes next.
    at_field: bool,
    /// `Some(true)` when the value is `Some(..)`.
    found: Option<bool>,
}

impl std::fmt::Write for PipelinedPrefixFinder {
    fn write_str(&mut self, piece: &str) -> std::fmt::Result {
        if !self.at_field {
            self.at_field = piece == "pipelined_prefix";
            return Ok(());
        }
        let value = piece.trim_start_matches([':', ' ']);
        if value.is_empty() {
            return Ok(());
        }
        self.found = Some(value.starts_with("Some"));
        Err(std::fmt::Error)
    }
}

/// The client address of a connection.
fn peer_ip(digest: Option<&pingora::protocols::SocketDigest>) -> Option<IpAddr> {
    digest?.peer_addr()?.as_inet().map(|addr| addr.ip())
}

/// Before a TLS handshake: refuses a client over its limits, and drops one whose ClientHello does
/// not arrive within the handshake timeout (pingora bounds the whole handshake at 60 s only).
pub struct ClientHelloDeadline {
    table: Arc<ConnectionTable>,
}

impl ClientHelloDeadline {
    /// The check for connections counted in `table`.
    pub fn new(table: Arc<ConnectionTable>) -> ClientHelloDeadline {
        ClientHelloDeadline { table }
    }
}

#[async_trait]
impl PreTlsProcess for ClientHelloDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        use pingora::{Error, ErrorType};
        let ip = peer_ip(stream.get_socket_digest().as_deref());
        if !self.table.has_room(ip) {
            self.table.counters.refused();
            return Error::e_explain(ErrorType::AcceptError, "client connection limit reached");
        }
        let deadline = self.table.limits.handshake_timeout;
        match pingora_timeout::timeout(deadline, read_client_hello(stream)).await {
            Ok(Ok(record)) => {
                stream.rewind(&record);
                Ok(())
            }
            Ok(Err(e)) => Error::e_because(ErrorType::HandshakeError, "reading the ClientHello", e),
            Err(_) => {
                self.table.counters.timed_out("handshake");
                Error::e_explain(ErrorType::TLSHandshakeTimedout, "no ClientHello in time")
            }
        }
    }
}

/// Reads the first TLS record (the ClientHello) whole.
async fn read_client_hello(stream: &mut L4Stream) -> std::io::Result<Vec<u8>> {
    let mut record = vec![0u8; 5];
    stream.read_exact(&mut record).await?;
    let length = usize::from(u16::from_be_bytes([record[3], record[4]])).min(MAX_TLS_RECORD);
    record.resize(5 + length, 0);
    stream.read_exact(&mut record[5..]).await?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, per_ip: usize) -> Arc<ConnectionTable> {
        let limits = ClientLimits {
            header_timeout: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(1),
            max_connections: max,
            max_connections_per_ip: per_ip,
            max_requests_per_connection: 10,
        };
        ConnectionTable::new(limits, Arc::default())
    }

    #[test]
    fn limits_hold_in_total_and_per_address_and_free_on_drop() {
        let table = table(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = table.admit(Some(a)).unwrap();
        let _second = table.admit(Some(a)).unwrap();
        assert!(table.admit(Some(a)).is_none(), "per-address limit");
        let _third = table.admit(Some(b)).unwrap();
        assert!(table.admit(Some(b)).is_none(), "total limit");
        assert_eq!(table.open(), 3);
        drop(first);
        assert!(table.has_room(Some(a)));
        assert!(table.admit(Some(a)).is_some());
        assert_eq!(table.counters.refused_total(), 2);
    }

    #[test]
    fn the_pipelined_prefix_is_read_from_the_debug_form() {
        use std::fmt::Write;
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Settings {
            keepalive_timeout: Option<u64>,
            user_context: Option<Box<dyn std::any::Any>>,
            pipelined_prefix: Option<Vec<u8>>,
            pipelining_enabled: bool,
        }
        let found = |prefix: Option<Vec<u8>>| {
            let settings = Settings {
                keepalive_timeout: Some(60),
                user_context: None,
                pipelined_prefix: prefix,
                pipelining_enabled: true,
            };
            let mut finder = PipelinedPrefixFinder::default();
            let _ = write!(finder, "{settings:?}");
            finder.found
        };
        assert_eq!(found(None), Some(false));
        assert_eq!(found(Some(b"GET / HTTP/1.1".to_vec())), Some(true));
    }

    #[test]
    fn a_flood_is_half_the_streams_cancelled_past_the_minimum() {
        let min = RESET_FLOOD_MIN_STREAMS;
        assert!(!is_reset_flood(min - 1, min - 1), "too few streams to judge");
        assert!(!is_reset_flood(min, min / 2 - 1));
        assert!(is_reset_flood(min, min / 2));
        assert!(is_reset_flood(10 * min, 10 * min));
        assert!(!is_reset_flood(10 * min, min));
    }
}
