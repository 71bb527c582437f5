//! The access log: one line per request, JSON or the combined format, to stdout, stderr or a
//! file.
//!
//! A request copies its record into the log's pending bytes ([`packed`]): no formatting, no
//! allocation, no system call and no wake-up of another thread per request. A dedicated thread
//! turns what is pending into lines ([`format`]) every [`WRITE_INTERVAL`] and writes them in
//! blocks of [`BLOCK_BYTES`], so neither formatting nor a slow disk is on a request's path; past
//! [`MAX_PENDING_BYTES`] waiting, lines are dropped and counted. Each reload opens the
//! destination again, so a rotated file is followed.

mod format;
mod packed;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::config::AccessLogFormat;
use crate::lazy_thread::LazyThread;

/// How often the writer thread writes out what is pending. Short enough that one round's work
/// (about half a microsecond per line) is a fraction of a millisecond at tens of thousands of requests per
/// second: with one core, requests wait while the writer runs.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(10);

/// Text gathered before it is written: lines are formatted straight into it.
pub const BLOCK_BYTES: usize = 64 * 1024;

/// Bytes of records waiting for the writer before new lines are dropped.
pub const MAX_PENDING_BYTES: usize = 8 << 20;

/// Lines dropped because the writer fell behind, since start.
pub static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// What is logged about one request.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// When the request arrived (RFC 3339 in the line).
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// Client address (`-` when unknown).
    #[serde(serialize_with = "serialize_client")]
    pub client: Option<IpAddr>,
    /// Request method.
    pub method: &'a str,
    /// Host the request was for.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`...
    #[serde(serialize_with = "serialize_version")]
    pub protocol: http::Version,
    /// Status sent (0: none).
    pub status: u16,
    /// Body bytes sent.
    pub bytes: usize,
    /// `Referer`.
    pub referer: &'a str,
    /// `User-Agent`.
    pub user_agent: &'a str,
    /// Cache outcome (`hit`, `miss`, `stale`...).
    pub cache: &'a str,
    /// Origin address used, if any.
    pub origin: &'a str,
    /// Time to the origin's response header (`upstream_ms` in the line, in milliseconds).
    #[serde(rename = "upstream_ms", serialize_with = "serialize_upstream_ms")]
    pub upstream: Option<Duration>,
    /// Time from request to the end of the response (`total_ms`, in milliseconds).
    #[serde(rename = "total_ms", serialize_with = "serialize_total_ms")]
    pub total: Duration,
    /// Error that ended the request, if any.
    pub error: Option<&'a str>,
    /// Name of the `[[site.route]]` rule that matched, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
}

/// The line of a request refused before it reached the proxy (pingora answered `400` to a
/// malformed or oversized header, or reset an HTTP/2 stream; or the client left mid-header).
pub fn rejected(client: Option<IpAddr>, protocol: http::Version) -> Record<'static> {
    Record {
        time: SystemTime::now(),
        client,
        method: "-",
        host: "-",
        path: "-",
        protocol,
        status: 400,
        bytes: 0,
        referer: "",
        user_agent: "",
        cache: "-",
        origin: "-",
        upstream: None,
        total: Duration::ZERO,
        error: Some("request rejected before routing (malformed, too large or incomplete)"),
        route: None,
    }
}

/// An open access log.
pub struct AccessLog {
    shared: Arc<Shared>,
    /// Started by the first line, in the process that serves (see [`LazyThread`]).
    writer: LazyThread,
}

/// What the request path and the writer thread share.
struct Shared {
    /// Records waiting to be written, packed one after the other.
    pending: Mutex<Vec<u8>>,
    /// The destination; locked before `pending` by whoever writes.
    out: Mutex<Output>,
    /// The log was replaced (a reload): the writer writes what is left and ends.
    closed: AtomicBool,
}

/// The destination and whether writing to it failed already (reported once).
struct Output {
    file: Box<dyn Write + Send>,
    format: AccessLogFormat,
    /// The records being written (swapped with the pending ones, capacity kept).
    batch: Vec<u8>,
    /// Lines formatted and not yet written, up to about [`BLOCK_BYTES`] (capacity kept).
    block: Vec<u8>,
    name: String,
    failed: bool,
}

impl AccessLog {
    /// Opens `path` (`stdout`, `stderr` or a file, appended to); its writer thread starts with
    /// the first line.
    pub fn open(path: &Path, format: AccessLogFormat) -> io::Result<AccessLog> {
        let destination: Box<dyn Write + Send> = match path.to_str() {
            Some("stdout") => Box::new(io::stdout()),
            Some("stderr") => Box::new(io::stderr()),
            _ => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            out: Mutex::new(Output {
                file: destination,
                format,
                batch: Vec::with_capacity(64 * 1024),
                block: Vec::with_capacity(BLOCK_BYTES + 4096),
                name: PathBuf::from(path).display().to_string(),
                failed: false,
            }),
            closed: AtomicBool::new(false),
        });
        let for_writer = shared.clone();
        let writer = LazyThread::new("edgecache-access-log", move || write_lines(&for_writer));
        Ok(AccessLog { shared, writer })
    }

    /// Appends `record` to what the writer will write next, or counts it as dropped when the
    /// writer is [`MAX_PENDING_BYTES`] behind.
    pub fn log(&self, record: &Record) {
        self.writer.ensure_started();
        let mut pending = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING_BYTES {
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
            return;
        }
        packed::pack(&mut pending, record);
    }

    /// Writes out every line logged so far: the process is about to exit.
    pub fn flush(&self) {
        self.shared.write_pending();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl Shared {
    /// Writes whatever is pending.
    fn write_pending(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let out = &mut *out;
        std::mem::swap(
            &mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()),
            &mut out.batch,
        );
        if out.batch.is_empty() {
            return;
        }
        let result = out.write_batch();
        out.batch.clear();
        out.block.clear();
        if let Err(error) = result {
            if !out.failed {
                tracing::error!(%error, file = %out.name, "cannot write the access log");
            }
            out.failed = true;
        }
    }
}

impl Output {
    /// Formats the records of `batch` into `block`, writing it out whenever it holds
    /// [`BLOCK_BYTES`]: the text of a batch is never held whole, and a line is copied once.
    fn write_batch(&mut self) -> io::Result<()> {
        for record in packed::records(&self.batch) {
            let line_start = self.block.len();
            let formatted = match self.format {
                AccessLogFormat::Json => {
                    format::write_json(&mut self.block, &record);
                    true
                }
                AccessLogFormat::Combined => format::write_combined(&mut self.block, &record).is_ok(),
            };
            if !formatted {
                self.block.truncate(line_start);
                continue;
            }
            self.block.push(b'\n');
            if self.block.len() >= BLOCK_BYTES {
                self.file.write_all(&self.block)?;
                self.block.clear();
            }
        }
        self.file.write_all(&self.block)?;
        self.file.flush()
    }
}

/// The writer thread: writes what is pending every [`WRITE_INTERVAL`]; ends once the log was
/// replaced and everything is written.
fn write_lines(shared: &Shared) {
    loop {
        std::thread::sleep(WRITE_INTERVAL);
        let closed = shared.closed.load(Ordering::Acquire);
        shared.write_pending();
        if closed {
            return;
        }
    }
}

fn serialize_time<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

fn serialize_client<S: Serializer>(client: &Option<IpAddr>, serializer: S) -> Result<S::Ok, S::Error> {
    match client {
        Some(ip) => serializer.collect_str(ip),
        None => serializer.serialize_str("-"),
    }
}

fn serialize_upstream_ms<S: Serializer>(
    upstream: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    upstream.map(format::millis).serialize(serializer)
}

fn serialize_total_ms<S: Serializer>(total: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(format::millis(*total))
}

fn serialize_version<S: Serializer>(version: &http::Version, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(format::version_name(*version))
}

/// RFC 3339 time with milliseconds, for JSON lines.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
