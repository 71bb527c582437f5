//! The text of a line: JSON (the default) or the combined format, built by the writer thread
//! from the records the requests left.

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::IpAddr;
use std::thread::LocalKey;
use std::time::{Duration, SystemTime};

use super::Record;
use crate::ip_text::IpText;

/// A record as the writer formats it: its strings as bytes, copied from the request's strings
/// and never checked again (the line is bytes too).
pub(super) struct Fields<'a> {
    pub time: SystemTime,
    pub client: Option<IpAddr>,
    pub protocol: http::Version,
    pub status: u16,
    pub bytes: u64,
    pub upstream: Option<Duration>,
    pub total: Duration,
    pub method: &'a [u8],
    pub host: &'a [u8],
    pub path: &'a [u8],
    pub referer: &'a [u8],
    pub user_agent: &'a [u8],
    pub cache: &'a [u8],
    pub origin: &'a [u8],
    pub error: Option<&'a [u8]>,
    pub route: Option<&'a [u8]>,
}

impl<'a> From<&Record<'a>> for Fields<'a> {
    fn from(r: &Record<'a>) -> Fields<'a> {
        Fields {
            time: r.time,
            client: r.client,
            protocol: r.protocol,
            status: r.status,
            bytes: r.bytes as u64,
            upstream: r.upstream,
            total: r.total,
            method: r.method.as_bytes(),
            host: r.host.as_bytes(),
            path: r.path.as_bytes(),
            referer: r.referer.as_bytes(),
            user_agent: r.user_agent.as_bytes(),
            cache: r.cache.as_bytes(),
            origin: r.origin.as_bytes(),
            error: r.error.map(str::as_bytes),
            route: r.route.map(str::as_bytes),
        }
    }
}

/// A duration in milliseconds as the line gives it: nanoseconds divided by a million, so
/// the shortest decimal that reads back as this number is the exact count of nanoseconds.
pub(super) fn millis(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1e6
}

/// The JSON line of `r`: the object the [`Record`]'s `Serialize` form gives, with the same
/// keys in the same order and the same escaping, written directly (serde's field-by-field
/// path and `Display` formatting cost about as much as the rest of a cache hit).
pub(super) fn write_json(out: &mut Vec<u8>, r: &Fields) {
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
    match r.upstream {
        Some(upstream) => push_json_millis(out, upstream),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"total_ms\":");
    push_json_millis(out, r.total);
    out.extend_from_slice(b",\"error\":");
    match r.error {
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
/// they are checked eight bytes at a time and copied whole.
fn push_json_str(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    if needs_json_escape(value) {
        push_json_escaped(out, value);
    } else {
        out.extend_from_slice(value);
    }
    out.push(b'"');
}

/// Whether serde_json escapes any byte of `bytes` inside a string: a control character, a
/// quote or a backslash.
fn needs_json_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A word has a byte below `n` (n <= 128) when `(x - n per byte) & !x & HIGH` is not zero;
    // a byte equal to `c` is a zero byte of `x ^ c per byte`.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let x = u64::from_ne_bytes(word.try_into().unwrap_or_default());
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        if below(x, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
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

/// `duration` in milliseconds as serde_json writes [`millis`] of it. From 10 ns to 10^15 ns
/// (about 11.6 days) that number's shortest decimal is the exact count of nanoseconds over a
/// million, with at most 15 significant digits, which ryu writes in plain notation: it is
/// written from the integer here; other durations go through ryu.
fn push_json_millis(out: &mut Vec<u8>, duration: Duration) {
    let nanos = duration.as_nanos();
    if !(10..1_000_000_000_000_000).contains(&nanos) {
        out.extend_from_slice(ryu::Buffer::new().format_finite(millis(duration)).as_bytes());
        return;
    }
    let nanos = nanos as u64;
    out.extend_from_slice(itoa::Buffer::new().format(nanos / 1_000_000).as_bytes());
    out.push(b'.');
    let fraction = nanos % 1_000_000;
    if fraction == 0 {
        out.push(b'0');
        return;
    }
    let digits = [100_000, 10_000, 1_000, 100, 10, 1].map(|unit| b'0' + (fraction / unit % 10) as u8);
    let significant = 6 - decimal_trailing_zeros(fraction);
    out.extend_from_slice(&digits[..significant]);
}

/// How many decimal zeros `n` ends with (none for zero).
fn decimal_trailing_zeros(mut n: u64) -> usize {
    let mut zeros = 0;
    while n != 0 && n.is_multiple_of(10) {
        n /= 10;
        zeros += 1;
    }
    zeros
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
pub(super) fn write_combined(out: &mut Vec<u8>, r: &Fields) -> io::Result<()> {
    push_client(out, r.client);
    out.extend_from_slice(b" - - [");
    push_common_log_time(out, r.time);
    out.extend_from_slice(b"] \"");
    for (text, separator) in [
        (r.method, b" " as &[u8]),
        (r.path, b" "),
        (version_name(r.protocol).as_bytes(), b"\" "),
    ] {
        out.extend_from_slice(text);
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
        out.extend_from_slice(text);
    }
    out.extend_from_slice(b" upstream_ms=");
    match r.upstream {
        Some(upstream) => write!(out, "{:.3}", millis(upstream))?,
        None => out.push(b'-'),
    }
    write!(out, " total_ms={:.3}", millis(r.total))?;
    if let Some(route) = r.route {
        out.extend_from_slice(b" route=");
        out.extend_from_slice(route);
    }
    Ok(())
}

/// A header value safe inside double quotes: backslashes and quotes escaped, `-` when empty.
fn push_quoted(out: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    for &byte in value {
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
fn push_client(out: &mut Vec<u8>, client: Option<IpAddr>) {
    match client {
        Some(ip) => out.extend_from_slice(IpText::of(ip).as_bytes()),
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
            upstream: None,
            total: Duration::from_micros(250),
            error: None,
            route: None,
        }
    }

    fn combined(record: &Record) -> String {
        let mut line = Vec::new();
        write_combined(&mut line, &record.into()).unwrap();
        String::from_utf8(line).unwrap()
    }

    fn json(record: &Record) -> String {
        let mut line = Vec::new();
        write_json(&mut line, &record.into());
        String::from_utf8(line).unwrap()
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
    fn combined_lines_carry_every_field_in_order() {
        let mut full = record();
        full.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_075_999_007);
        full.client = None;
        full.referer = "https://a.test/\\x";
        full.upstream = Some(Duration::from_micros(12_062));
        full.total = Duration::from_nanos(1_234_567_800);
        full.route = Some("static");
        let line = "- - - [30/Nov/2026:21:59:59 +0000] \"GET /a?b=1 HTTP/1.1\" 200 512 \
                    \"https://a.test/\\\\x\" \"curl/8 \\\"x\\\"\" host=example.com cache=hit origin=- \
                    upstream_ms=12.062 total_ms=1234.568 route=static";
        assert_eq!(combined(&full), line);
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
        full.upstream = Some(Duration::from_millis(12));
        full.total = Duration::from_nanos(1_234_567_800);
        full.error = Some(awkward);
        full.route = Some("static \"assets\"");
        records.push(full);
        let mut odd = record();
        odd.upstream = Some(Duration::from_secs(40 * 24 * 3600));
        odd.total = Duration::from_nanos(1);
        odd.time = SystemTime::UNIX_EPOCH + Duration::from_millis(999);
        odd.client = Some(IpAddr::from([255, 255, 0, 9]));
        records.push(odd);
        for record in &records {
            assert_eq!(json(record), serde_json::to_string(record).unwrap());
        }
    }

    #[test]
    fn json_lines_carry_every_field() {
        let json: serde_json::Value = serde_json::to_value(record()).unwrap();
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["cache"], "hit");
        assert_eq!(json["upstream_ms"], serde_json::Value::Null);
        assert_eq!(json["total_ms"], 0.25);
    }

    #[test]
    fn milliseconds_are_written_as_ryu_writes_them() {
        let mut random = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let small = 0..200_000u64;
        let round = (0..16).flat_map(|exp| [10u64.pow(exp) - 1, 10u64.pow(exp), 10u64.pow(exp) + 1]);
        let spread: Vec<u64> = (0..200_000).map(|i| next() >> (i % 60)).collect();
        for nanos in small.chain(round).chain(spread) {
            let duration = Duration::from_nanos(nanos);
            let mut text = Vec::new();
            push_json_millis(&mut text, duration);
            let expected = ryu::Buffer::new().format_finite(millis(duration)).to_string();
            assert_eq!(String::from_utf8(text).unwrap(), expected, "{nanos} ns");
        }
    }

    #[test]
    fn escapes_are_found_at_every_position() {
        for len in 0..20 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = byte;
                    let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                    assert_eq!(needs_json_escape(&text), expected, "{byte:#x} at {at} of {len}");
                }
            }
            assert!(!needs_json_escape(&vec![0xe9; len]));
        }
    }
}
