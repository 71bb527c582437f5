//! The text of a line: JSON (the default) or the combined format, built by the writer thread
//! from the records the requests left.

use std::cell::RefCell;
use std::io::{self, Write};
use std::thread::LocalKey;
use std::time::{Duration, SystemTime};

use super::Record;
use crate::ip_text::IpText;

/// The JSON line of `r`: the object its `Serialize` form gives, with the same keys in the same
/// order and the same escaping, written directly (serde's field-by-field path and `Display`
/// formatting cost about as much as the rest of a cache hit).
pub(super) fn write_json(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(b"{\"time\":\"");
    push_rfc3339_millis(out, r.time);
    out.extend_from_slice(b"\",\"client\":\"");
    push_client(out, r.client);
    out.extend_from_slice(b"\",\"method\":");
    push_json_str(out, r.method);
    out.extend_from_slice(b",\"host\":");
    push_json_str(out, r.host);
    out.extend_from_slice(b",\"path\":");
    push_json_str(out, r.path);
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(version_name(r.protocol).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(r.status).as_bytes());
    out.extend_from_slice(b",\"bytes\":");
    out.extend_from_slice(itoa::Buffer::new().format(r.bytes).as_bytes());
    out.extend_from_slice(b",\"referer\":");
    push_json_str(out, r.referer);
    out.extend_from_slice(b",\"user_agent\":");
    push_json_str(out, r.user_agent);
    out.extend_from_slice(b",\"cache\":");
    push_json_str(out, r.cache);
    out.extend_from_slice(b",\"origin\":");
    push_json_str(out, r.origin);
    out.extend_from_slice(b",\"upstream_ms\":");
    push_json_f64(out, r.upstream_ms);
    out.extend_from_slice(b",\"total_ms\":");
    push_json_f64(out, Some(r.total_ms));
    out.extend_from_slice(b",\"error\":");
    match &r.error {
        Some(error) => push_json_str(out, error),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(route) = r.route {
        out.extend_from_slice(b",\"route\":");
        push_json_str(out, route);
    }
    out.push(b'}');
}

/// `value` as a JSON string, escaped as serde_json escapes it. Most values need no escaping:
/// they are checked in one pass that the compiler vectorises and copied whole.
fn push_json_str(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if bytes
        .iter()
        .fold(false, |any, &byte| any | needs_json_escape(byte))
    {
        push_json_escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

/// Whether serde_json escapes `byte` inside a string.
fn needs_json_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// `bytes` with quotes, backslashes and control characters escaped.
fn push_json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut clean_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..at]);
        clean_from = at + 1;
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
    }
    out.extend_from_slice(&bytes[clean_from..]);
}

/// A number as serde_json writes an `f64` (`null` when absent or not finite).
fn push_json_f64(out: &mut Vec<u8>, value: Option<f64>) {
    match value.filter(|v| v.is_finite()) {
        Some(v) => out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

thread_local! {
    /// The second last formatted as RFC 3339 (`YYYY-MM-DDTHH:MM:SS`): lines of one second
    /// share it.
    static RFC3339_SECOND: SecondText = const { RefCell::new((u64::MAX, String::new())) };
    /// The second last formatted for the combined format (`27/Nov/2026:16:28:19 +0000`).
    static COMMON_SECOND: SecondText = const { RefCell::new((u64::MAX, String::new())) };
}

/// A second since the epoch and its text in one format.
type SecondText = RefCell<(u64, String)>;

/// Appends the text of `second` kept in `cache`, made by `format` when the second changes.
fn push_second(
    out: &mut Vec<u8>,
    cache: &'static LocalKey<SecondText>,
    second: u64,
    format: fn(SystemTime) -> String,
) {
    cache.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (
                second,
                format(SystemTime::UNIX_EPOCH + Duration::from_secs(second)),
            );
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

/// `time` as RFC 3339 with milliseconds (`2026-11-30T23:00:00.123Z`), as
/// `humantime::format_rfc3339_millis` writes it, with the date part formatted once a second.
fn push_rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    push_second(out, &RFC3339_SECOND, since_epoch.as_secs(), |second| {
        let mut text = humantime::format_rfc3339_seconds(second).to_string();
        text.truncate(19); // without the `Z`
        text
    });
    let millis = since_epoch.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// `HTTP/1.1` and the like.
pub(super) fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `client - - [27/Nov/2026:16:28:19 +0000] "GET /p HTTP/1.1" 200 123 "referer" "agent"`,
/// then `host=… cache=… origin=… upstream_ms=… total_ms=…` and `route=…` when a rule matched.
pub(super) fn write_combined(out: &mut Vec<u8>, r: &Record) -> io::Result<()> {
    push_client(out, r.client);
    out.extend_from_slice(b" - - [");
    push_common_log_time(out, r.time);
    out.extend_from_slice(b"] \"");
    for (text, separator) in [
        (r.method, b" " as &[u8]),
        (r.path, b" "),
        (version_name(r.protocol), b"\" "),
    ] {
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(separator);
    }
    out.extend_from_slice(itoa::Buffer::new().format(r.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(r.bytes).as_bytes());
    out.extend_from_slice(b" \"");
    push_quoted(out, r.referer);
    out.extend_from_slice(b"\" \"");
    push_quoted(out, r.user_agent);
    for (label, text) in [
        (b"\" host=" as &[u8], r.host),
        (b" cache=", r.cache),
        (b" origin=", r.origin),
    ] {
        out.extend_from_slice(label);
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b" upstream_ms=");
    match r.upstream_ms {
        Some(ms) => write!(out, "{ms:.3}")?,
        None => out.push(b'-'),
    }
    write!(out, " total_ms={:.3}", r.total_ms)?;
    if let Some(route) = r.route {
        out.extend_from_slice(b" route=");
        out.extend_from_slice(route.as_bytes());
    }
    Ok(())
}

/// A header value safe inside double quotes: backslashes and quotes escaped, `-` when empty.
fn push_quoted(out: &mut Vec<u8>, value: &str) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    for &byte in value.as_bytes() {
        if byte == b'\\' || byte == b'"' {
            out.push(b'\\');
        }
        out.push(byte);
    }
}

/// `time` as the common log format writes it, the text made once a second.
fn push_common_log_time(out: &mut Vec<u8>, time: SystemTime) {
    let second = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    push_second(out, &COMMON_SECOND, second, common_log_time);
}

/// The client's address, or `-`.
fn push_client(out: &mut Vec<u8>, client: Option<std::net::IpAddr>) {
    match client {
        Some(ip) => out.extend_from_slice(IpText::of(ip).as_str().as_bytes()),
        None => out.push(b'-'),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::rejected;
    use std::net::IpAddr;

    fn record() -> Record<'static> {
        Record {
            time: SystemTime::UNIX_EPOCH,
            client: Some(IpAddr::from([10, 0, 0, 1])),
            method: "GET",
            host: "example.com",
            path: "/a?b=1",
            protocol: http::Version::HTTP_11,
            status: 200,
            bytes: 512,
            referer: "",
            user_agent: "curl/8 \"x\"",
            cache: "hit",
            origin: "-",
            upstream_ms: None,
            total_ms: 0.25,
            error: None,
            route: None,
        }
    }

    #[test]
    fn combined_lines_follow_the_common_layout() {
        let mut line = Vec::new();
        write_combined(&mut line, &record()).unwrap();
        let line = String::from_utf8(line).unwrap();
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
    fn combined_lines_carry_every_field_in_order() {
        let mut full = record();
        full.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_075_999_007);
        full.client = None;
        full.referer = "https://a.test/\\x";
        full.upstream_ms = Some(12.0625);
        full.total_ms = 1234.5678;
        full.route = Some("static");
        let mut lines = Vec::new();
        for _ in 0..2 {
            write_combined(&mut lines, &full).unwrap();
            lines.push(b'\n');
        }
        let line = "- - - [30/Nov/2026:21:59:59 +0000] \"GET /a?b=1 HTTP/1.1\" 200 512 \
                    \"https://a.test/\\\\x\" \"curl/8 \\\"x\\\"\" host=example.com cache=hit origin=- \
                    upstream_ms=12.062 total_ms=1234.568 route=static\n";
        assert_eq!(String::from_utf8(lines).unwrap(), line.repeat(2));
    }

    #[test]
    fn log_time_is_day_month_year() {
        assert_eq!(
            common_log_time(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
    }

    #[test]
    fn json_lines_are_what_serde_writes() {
        let awkward = "q\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é😀 end";
        let mut records = vec![record(), rejected(None, http::Version::HTTP_2)];
        let mut full = record();
        full.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_075_999_007);
        full.client = Some(IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]));
        full.path = awkward;
        full.referer = awkward;
        full.user_agent = "";
        full.upstream_ms = Some(12.0);
        full.total_ms = 1234.5678;
        full.error = Some(awkward);
        full.route = Some("static \"assets\"");
        records.push(full);
        let mut odd = record();
        odd.upstream_ms = Some(f64::NAN);
        odd.total_ms = 1e-7;
        odd.time = SystemTime::UNIX_EPOCH + Duration::from_millis(999);
        odd.client = Some(IpAddr::from([255, 255, 0, 9]));
        records.push(odd);
        for record in &records {
            let mut line = Vec::new();
            write_json(&mut line, record);
            let expected = serde_json::to_string(record).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), expected);
        }
    }

    #[test]
    fn json_lines_carry_every_field() {
        let json: serde_json::Value = serde_json::to_value(record()).unwrap();
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["cache"], "hit");
        assert_eq!(json["upstream_ms"], serde_json::Value::Null);
    }
}
