//! Compact forms of common response field values, for [`super::packed_header`].
//!
//! Many responses carry some values word for word (`bytes`, `Accept-Encoding`,
//! `text/html; charset=utf-8`): stored as an index into [`COMMON_VALUES`], each takes one byte
//! and a hit serves it from the table without touching the buffer. HTTP dates (`Date`,
//! `Last-Modified`, `Expires`, 29 bytes each, on nearly every response) are stored as four bytes
//! of seconds and written out again on a hit. Only values that come back byte for byte are
//! compacted: a date in another format, or with a day of the week that does not match, is
//! stored as sent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;

/// Values common enough across origins to be worth a table entry.
pub static COMMON_VALUES: [&str; 64] = [
    "bytes",
    "none",
    "Accept-Encoding",
    "accept-encoding",
    "Origin",
    "Accept",
    "gzip",
    "br",
    "deflate",
    "zstd",
    "identity",
    "chunked",
    "keep-alive",
    "close",
    "nosniff",
    "SAMEORIGIN",
    "DENY",
    "1; mode=block",
    "0",
    "*",
    "true",
    "no-cache",
    "no-store",
    "private",
    "public",
    "must-revalidate",
    "no-cache, no-store, must-revalidate",
    "max-age=31536000",
    "public, max-age=31536000",
    "public, max-age=31536000, immutable",
    "max-age=31536000; includeSubDomains",
    "max-age=31536000; includeSubDomains; preload",
    "max-age=63072000; includeSubDomains; preload",
    "strict-origin-when-cross-origin",
    "no-referrer",
    "no-referrer-when-downgrade",
    "same-origin",
    "text/html",
    "text/html; charset=utf-8",
    "text/html; charset=UTF-8",
    "text/plain",
    "text/plain; charset=utf-8",
    "text/css",
    "text/css; charset=utf-8",
    "text/javascript",
    "text/javascript; charset=utf-8",
    "application/javascript",
    "application/javascript; charset=utf-8",
    "application/json",
    "application/json; charset=utf-8",
    "application/xml",
    "application/octet-stream",
    "application/pdf",
    "application/wasm",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/svg+xml",
    "image/x-icon",
    "font/woff2",
    "font/woff",
    "video/mp4",
];

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only date form compacted.
const HTTP_DATE_LEN: usize = 29;

/// A value in compact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compact {
    /// Index into [`COMMON_VALUES`].
    Common(u8),
    /// An HTTP date, in seconds since the Unix epoch.
    Date(u32),
}

/// The compact form of `value`, when it has one.
pub fn compact(value: &[u8]) -> Option<Compact> {
    if value.len() == HTTP_DATE_LEN {
        return compact_date(value).map(Compact::Date);
    }
    common_indexes().get(value).copied().map(Compact::Common)
}

/// The index of each of [`COMMON_VALUES`], by value: a stored field is looked up once, not
/// compared with the whole table.
fn common_indexes() -> &'static HashMap<&'static [u8], u8> {
    static INDEXES: OnceLock<HashMap<&'static [u8], u8>> = OnceLock::new();
    INDEXES.get_or_init(|| {
        COMMON_VALUES
            .iter()
            .zip(0..=u8::MAX)
            .map(|(value, index)| (value.as_bytes(), index))
            .collect()
    })
}

/// The table value at `index`.
pub fn common(index: u8) -> Option<&'static str> {
    COMMON_VALUES.get(usize::from(index)).copied()
}

/// The date `seconds` after the Unix epoch, as an IMF-fixdate.
pub fn render_date(seconds: u32) -> String {
    http_date(seconds).to_string()
}

/// The date `seconds` after the Unix epoch, ready to be written out.
fn http_date(seconds: u32) -> httpdate::HttpDate {
    httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(seconds.into()))
}

/// Dates recently written out on this thread, in slots picked by a hash of their seconds (not
/// the seconds modulo the slot count: dates a whole number of hours or days apart are common):
/// the `Date` and `Last-Modified` of the objects hit most are written once, then shared.
const RENDERED_SLOTS: usize = 16;

thread_local! {
    static RENDERED: RefCell<[Option<(u32, HeaderValue)>; RENDERED_SLOTS]> =
        const { RefCell::new([const { None }; RENDERED_SLOTS]) };
}

/// The field value of the date `seconds` after the Unix epoch, as an IMF-fixdate.
pub fn date_value(seconds: u32) -> HeaderValue {
    RENDERED.with(|rendered| {
        let mut rendered = rendered.borrow_mut();
        let slot = &mut rendered[(seconds.wrapping_mul(0x9e37_79b9) >> 28) as usize % RENDERED_SLOTS];
        match slot {
            Some((at, value)) if *at == seconds => value.clone(),
            _ => {
                let value = HeaderValue::from_maybe_shared(Bytes::from(render_date(seconds)))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                *slot = Some((seconds, value.clone()));
                value
            }
        }
    })
}

/// `value`'s seconds since the Unix epoch, if it is an IMF-fixdate that [`render_date`] writes
/// back identically.
fn compact_date(value: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(value).ok()?;
    let date: SystemTime = httpdate::parse_http_date(text).ok()?;
    let seconds = u32::try_from(date.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    // Written back into a buffer of the value's length: a longer rendering fails to fit.
    let mut rendered = [0u8; HTTP_DATE_LEN];
    let mut out = &mut rendered[..];
    write!(out, "{}", http_date(seconds)).ok()?;
    (out.is_empty() && rendered[..] == *value).then_some(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_come_back_byte_for_byte_or_are_not_compacted() {
        let date = b"Wed, 02 Dec 2026 15:23:16 GMT";
        let Some(Compact::Date(seconds)) = compact(date) else {
            panic!("an IMF-fixdate is compacted");
        };
        assert_eq!(render_date(seconds).as_bytes(), date);
        // Parsable, but not written back the same way: stored as sent.
        for kept in [
            &b"Thu, 02 Dec 2026 15:23:16 GMT"[..], // wrong day of the week
            b"Wednesday, 02-Dec-26 15:23:16 GMT",  // RFC 850
            b"Wed Dec  2 15:23:16 2026",           // asctime
            b"Wed, 02 Dec 2126 15:23:16 GMT",      // past u32 seconds
            b"Wed, 02 Dec 2026 15:23:16 UTC",
        ] {
            assert_eq!(compact(kept), None, "{}", String::from_utf8_lossy(kept));
        }
    }

    #[test]
    fn a_date_value_is_the_same_whether_written_or_reused() {
        for seconds in [1_764_000_000, 1_764_003_600, 1_764_000_000, 1_764_003_600, 0] {
            assert_eq!(date_value(seconds).as_bytes(), render_date(seconds).as_bytes());
        }
    }

    #[test]
    fn table_values_are_distinct_valid_field_values() {
        for (at, value) in COMMON_VALUES.iter().enumerate() {
            assert!(http::HeaderValue::from_str(value).is_ok(), "{value}");
            assert_ne!(value.len(), HTTP_DATE_LEN, "{value}");
            assert_eq!(
                compact(value.as_bytes()),
                Some(Compact::Common(at as u8)),
                "{value}"
            );
            assert_eq!(common(at as u8), Some(*value));
        }
        assert_eq!(compact(b"text/html;charset=utf-8"), None);
    }
}
