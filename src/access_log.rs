//! The access log: one line per request, JSON or the combined format, to stdout, stderr or a
//! file.
//!
//! Lines are formatted on the request path and written by a dedicated thread, so a slow disk
//! never stalls a request; when the writer falls behind by more than [`QUEUE_LINES`], lines are
//! dropped and counted. Each reload opens the destination again, so a rotated file is followed.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::AccessLogFormat;
use crate::lazy_thread::LazyThread;

/// Lines waiting for the writer thread before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;

/// Lines dropped because the writer fell behind, since start.
pub static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// What is logged about one request.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// When the request arrived (RFC 3339).
    pub time: String,
    /// Client address.
    pub client: String,
    /// Request method.
    pub method: &'a str,
    /// Host the request was for.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub protocol: String,
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
    /// Time to the origin's response header, in milliseconds.
    pub upstream_ms: Option<f64>,
    /// Time from request to the end of the response, in milliseconds.
    pub total_ms: f64,
    /// Error that ended the request, if any.
    pub error: Option<String>,
}

/// The line of a request refused before it reached the proxy (pingora answered `400` to a
/// malformed or oversized header, or reset an HTTP/2 stream; or the client left mid-header).
pub fn rejected(client: Option<std::net::IpAddr>, protocol: &str) -> Record<'static> {
    Record {
        time: rfc3339(SystemTime::now()),
        client: client.map_or("-".into(), |ip| ip.to_string()),
        method: "-",
        host: "-",
        path: "-",
        protocol: protocol.to_string(),
        status: 400,
        bytes: 0,
        referer: "",
        user_agent: "",
        cache: "-",
        origin: "-",
        upstream_ms: None,
        total_ms: 0.0,
        error: Some("request rejected before routing (malformed, too large or incomplete)".into()),
    }
}

/// An open access log.
pub struct AccessLog {
    format: AccessLogFormat,
    lines: SyncSender<Entry>,
    /// Started by the first line, in the process that serves (see [`LazyThread`]).
    writer: LazyThread,
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
        let (lines, queue) = sync_channel(QUEUE_LINES);
        let name = PathBuf::from(path).display().to_string();
        let writer = LazyThread::new("edgecache-access-log", move || {
            write_lines(queue, BufWriter::new(destination), &name)
        });
        Ok(AccessLog {
            format,
            lines,
            writer,
        })
    }

    /// Queues one line for `record`.
    pub fn log(&self, record: &Record) {
        self.writer.ensure_started();
        let line = match self.format {
            AccessLogFormat::Json => serde_json::to_string(record).unwrap_or_default(),
            AccessLogFormat::Combined => combined(record),
        };
        if self.lines.try_send(Entry::Line(line)).is_err() {
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `within`) until every line queued so far is written out: the process is
    /// about to exit.
    pub fn flush(&self, within: Duration) {
        if !self.writer.is_started() {
            return;
        }
        let deadline = std::time::Instant::now() + within;
        let (done, flushed) = channel();
        let mut marker = Entry::Flush(done);
        loop {
            match self.lines.try_send(marker) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    marker = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = flushed.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

/// What the writer thread is handed.
enum Entry {
    /// One formatted line.
    Line(String),
    /// Flush what came before, then signal.
    Flush(Sender<()>),
}

/// The writer thread: writes lines as they come, flushing whenever the queue is empty. Ends
/// when the log is dropped (a reload replaced it).
fn write_lines(queue: Receiver<Entry>, mut out: BufWriter<Box<dyn Write + Send>>, name: &str) {
    let mut failed = false;
    let mut write = |out: &mut BufWriter<_>, entry: Entry| {
        let line = match entry {
            Entry::Line(line) => line,
            Entry::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
                return;
            }
        };
        let result = out.write_all(line.as_bytes()).and_then(|_| out.write_all(b"\n"));
        if let Err(error) = result {
            if !failed {
                tracing::error!(%error, file = name, "cannot write the access log");
            }
            failed = true;
        }
    };
    while let Ok(line) = queue.recv() {
        write(&mut out, line);
        loop {
            match queue.try_recv() {
                Ok(line) => write(&mut out, line),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// `client - - [27/Nov/2026:16:28:19 +0000] "GET /p HTTP/1.1" 200 123 "referer" "agent"`,
/// then `cache=… origin=… upstream_ms=… total_ms=…`.
fn combined(r: &Record) -> String {
    let upstream = r.upstream_ms.map_or("-".to_string(), |ms| format!("{ms:.3}"));
    format!(
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" host={} cache={} origin={} upstream_ms={} total_ms={:.3}",
        r.client,
        common_log_time(SystemTime::now()),
        r.method,
        r.path,
        r.protocol,
        r.status,
        r.bytes,
        quoted(r.referer),
        quoted(r.user_agent),
        r.host,
        r.cache,
        r.origin,
        upstream,
        r.total_ms,
    )
}

/// A header value safe inside double quotes (`-` when empty).
fn quoted(value: &str) -> String {
    if value.is_empty() {
        return "-".into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `27/Nov/2026:16:28:19 +0000` (the common log format's time, in UTC).
fn common_log_time(time: SystemTime) -> String {
    // "Fri, 27 Nov 2026 16:28:19 GMT"
    let http_date = httpdate::fmt_http_date(time);
    let parts: Vec<&str> = http_date.split(' ').collect();
    match parts.as_slice() {
        [_, day, month, year, clock, _] => format!("{day}/{month}/{year}:{clock} +0000"),
        _ => http_date,
    }
}

/// RFC 3339 time with milliseconds, for JSON lines.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            time: rfc3339(SystemTime::UNIX_EPOCH),
            client: "10.0.0.1".into(),
            method: "GET",
            host: "example.com",
            path: "/a?b=1",
            protocol: "HTTP/1.1".into(),
            status: 200,
            bytes: 512,
            referer: "",
            user_agent: "curl/8 \"x\"",
            cache: "hit",
            origin: "-",
            upstream_ms: None,
            total_ms: 0.25,
            error: None,
        }
    }

    #[test]
    fn combined_lines_follow_the_common_layout() {
        let line = combined(&record());
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(
            line.contains(
                "] \"GET /a?b=1 HTTP/1.1\" 200 512 \"-\" \"curl/8 \\\"x\\\"\" host=example.com cache=hit"
            ),
            "{line}"
        );
        assert!(line.ends_with("upstream_ms=- total_ms=0.250"), "{line}");
    }

    #[test]
    fn log_time_is_day_month_year() {
        assert_eq!(
            common_log_time(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
    }

    #[test]
    fn json_lines_carry_every_field() {
        let json: serde_json::Value = serde_json::to_value(record()).unwrap();
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["cache"], "hit");
        assert_eq!(json["upstream_ms"], serde_json::Value::Null);
    }
}
