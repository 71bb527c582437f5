//! A stored response header packed into one buffer. A `ResponseHeader` keeps each field in a
//! hash-map slot of about a hundred bytes plus its own allocation; a cached object of 1 KiB with
//! a dozen header fields spent more on its header than on its body. Packed, the values (and the
//! names that are not common response field names) sit end to end in one `Bytes`, common names
//! are one byte, HTTP dates and common values a few ([`super::field_values`]), and a hit unpacks
//! them: values are slices of the shared buffer or table entries, not copies, and common names
//! are copied from a table instead of parsed again.
//!
//! The headers of one response's codings (identity, gzip, brotli) differ in a few fields only;
//! packed together ([`PackedHeader::pack_all`]) they share one buffer that holds each distinct
//! field once.

use std::borrow::Cow;

use bytes::Bytes;
use http::header;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::field_values::{self, Compact};

/// Field names stored as their index here: the ones origins commonly send with responses.
static COMMON_NAMES: [HeaderName; 36] = [
    header::ACCEPT_RANGES,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    header::AGE,
    header::ALT_SVC,
    header::CACHE_CONTROL,
    header::CONTENT_DISPOSITION,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LENGTH,
    header::CONTENT_LOCATION,
    header::CONTENT_RANGE,
    header::CONTENT_SECURITY_POLICY,
    header::CONTENT_TYPE,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::LINK,
    header::LOCATION,
    header::PRAGMA,
    header::REFERRER_POLICY,
    header::RETRY_AFTER,
    header::SERVER,
    header::SET_COOKIE,
    header::STRICT_TRANSPORT_SECURITY,
    header::VARY,
    header::VIA,
    header::WWW_AUTHENTICATE,
    header::X_CONTENT_TYPE_OPTIONS,
    header::X_FRAME_OPTIONS,
    header::X_XSS_PROTECTION,
];

/// The name index of a field whose name is stored in the buffer, before its value.
const STORED_NAME: u8 = u8::MAX;

/// The index of the record that holds a reason phrase other than the status's canonical one.
const REASON_PHRASE: u8 = u8::MAX - 1;

/// Bytes of a stored name's length, written before the name.
const NAME_LENGTH_BYTES: usize = 4;

/// Flag on a common name's index: the value is one of [`field_values::COMMON_VALUES`], whose
/// index is the next byte.
const COMMON_VALUE: u8 = 0x80;

/// Flag on a common name's index: the value is an HTTP date, the next four bytes its seconds.
const HTTP_DATE: u8 = 0x40;

/// The bits of a common name's index that hold the index itself.
const NAME_BITS: u8 = 0x3f;

/// Where one field sits in the buffer: its name index (one of [`COMMON_NAMES`], possibly
/// flagged with the form of its value, or [`STORED_NAME`] followed by the name's length and the
/// name), then its value up to `end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

/// A response header: its status and its fields, in order.
#[derive(Debug, Clone)]
pub struct PackedHeader {
    status: StatusCode,
    version: http::Version,
    /// Every stored name and value; shared by the headers packed together.
    fields: Bytes,
    /// Each field's name and where it sits in `fields`.
    spans: Box<[Span]>,
}

impl PackedHeader {
    /// Packs `header` (its status and fields; names come out lower-case).
    pub fn pack(header: &ResponseHeader) -> PackedHeader {
        let mut packed = PackedHeader::pack_all(&[header]);
        packed.swap_remove(0)
    }

    /// Packs `headers` into one shared buffer in which a field that several of them carry
    /// (same name, same value) is stored once.
    pub fn pack_all(headers: &[&ResponseHeader]) -> Vec<PackedHeader> {
        // Room for the first header's names and values: most of what the others carry is
        // shared with it, so the buffer rarely grows.
        let first_len = headers.first().map_or(0, |header| {
            header
                .headers
                .iter()
                .map(|(name, value)| {
                    let name = name.as_str().as_bytes();
                    record_len(name_index(name), name, value.as_bytes())
                })
                .sum()
        });
        let mut fields = Vec::with_capacity(first_len);
        let mut all_spans: Vec<Vec<Span>> = Vec::with_capacity(headers.len());
        let mut record = Vec::new();
        for header in headers {
            let mut spans = Vec::with_capacity(header.headers.len());
            let reason = header
                .get_reason_phrase()
                .filter(|&reason| Some(reason) != header.status.canonical_reason());
            let reason = reason.map(|reason| (REASON_PHRASE, &b""[..], reason.as_bytes()));
            let named = header.headers.iter().map(|(name, value)| {
                let name = name.as_str().as_bytes();
                (name_index(name), name, value.as_bytes())
            });
            for (index, name, value) in reason.into_iter().chain(named) {
                record.clear();
                encode_record(&mut record, index, name, value);
                let earlier = all_spans
                    .iter()
                    .flatten()
                    .chain(&spans)
                    .find(|span| fields[span.start as usize..span.end as usize] == record[..])
                    .copied();
                spans.push(earlier.unwrap_or_else(|| {
                    let start = fields.len() as u32;
                    fields.extend_from_slice(&record);
                    Span {
                        start,
                        end: fields.len() as u32,
                    }
                }));
            }
            all_spans.push(spans);
        }
        // Trimmed to its length: `Bytes` keeps a `Vec`'s spare capacity, which `weight` would
        // not count.
        let fields = Bytes::from(fields.into_boxed_slice());
        // The last header takes the buffer itself: cloning a `Bytes` allocates the count that
        // shares it, which a header packed alone does not need.
        let others = headers.len().saturating_sub(1);
        let mut buffers: Vec<Bytes> = std::iter::repeat_with(|| fields.clone()).take(others).collect();
        buffers.push(fields);
        headers
            .iter()
            .zip(all_spans)
            .zip(buffers)
            .map(|((header, spans), fields)| PackedHeader {
                status: header.status,
                version: header.version,
                fields,
                spans: spans.into_boxed_slice(),
            })
            .collect()
    }

    /// The header again, as pingora serves it. The map is filled directly: pingora's
    /// `append_header` would title-case and re-parse every name.
    pub fn unpack(&self) -> Result<ResponseHeader> {
        let mut headers = http::HeaderMap::with_capacity(self.spans.len());
        for (index, name, value) in self.fields() {
            let name = match COMMON_NAMES.get(usize::from(index)) {
                Some(common) => common.clone(),
                None => HeaderName::from_bytes(&self.fields[name.0..name.1])
                    .map_err(|_| Error::explain(ErrorType::InternalError, "stored header name"))?,
            };
            let value = match value {
                Value::Stored(start, end) => HeaderValue::from_maybe_shared(self.fields.slice(start..end)),
                Value::Common(common) => Ok(HeaderValue::from_static(common)),
                Value::Date(seconds) => {
                    HeaderValue::from_maybe_shared(Bytes::from(field_values::render_date(seconds)))
                }
            }
            .map_err(|_| Error::explain(ErrorType::InternalError, "stored header value"))?;
            headers.append(name, value);
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status;
        parts.version = self.version;
        parts.headers = headers;
        let mut header = ResponseHeader::from(parts);
        if let Some(reason) = self.reason() {
            let reason = std::str::from_utf8(reason)
                .map_err(|_| Error::explain(ErrorType::InternalError, "stored reason phrase"))?;
            header.set_reason_phrase(Some(reason))?;
        }
        Ok(header)
    }

    /// The value of the first field called `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        self.fields()
            .find(|(index, stored, _)| match COMMON_NAMES.get(usize::from(*index)) {
                Some(common) => common.as_str() == name,
                None => &self.fields[stored.0..stored.1] == name.as_bytes(),
            })
            .map(|(_, _, value)| match value {
                Value::Stored(start, end) => Cow::Borrowed(&self.fields[start..end]),
                Value::Common(common) => Cow::Borrowed(common.as_bytes()),
                Value::Date(seconds) => Cow::Owned(field_values::render_date(seconds).into_bytes()),
            })
    }

    /// Bytes held: the buffer and the spans.
    pub fn weight(&self) -> usize {
        self.fields.len() + self.spans_weight()
    }

    /// Bytes held by the spans alone: what a header packed together with another adds.
    pub fn spans_weight(&self) -> usize {
        self.spans.len() * std::mem::size_of::<Span>()
    }

    /// Whether `self` and `other` were packed together (they share one buffer).
    pub fn shares_buffer_with(&self, other: &PackedHeader) -> bool {
        self.fields.as_ptr() == other.fields.as_ptr() && self.fields.len() == other.fields.len()
    }

    /// Each field's name index, the (start, end) of its stored name (empty for a common name)
    /// and its value.
    fn fields(&self) -> impl Iterator<Item = (u8, (usize, usize), Value)> + '_ {
        self.spans
            .iter()
            .map(|span| locate(&self.fields, span))
            .filter(|&(index, _, _)| index != REASON_PHRASE)
    }

    /// A reason phrase other than the status's canonical one: the first record, when there is
    /// one.
    fn reason(&self) -> Option<&[u8]> {
        match locate(&self.fields, self.spans.first()?) {
            (REASON_PHRASE, _, Value::Stored(start, end)) => Some(&self.fields[start..end]),
            _ => None,
        }
    }
}

/// A field's value as its record holds it.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// At (start, end) in the buffer.
    Stored(usize, usize),
    /// A table value.
    Common(&'static str),
    /// An HTTP date, in seconds since the Unix epoch.
    Date(u32),
}

/// The name index of the field at `span` in `fields` (without flags), the (start, end) of its
/// stored name, and its value.
fn locate(fields: &[u8], span: &Span) -> (u8, (usize, usize), Value) {
    let (start, end) = (span.start as usize, span.end as usize);
    let index = fields[start];
    let after = start + 1;
    match index {
        STORED_NAME => {
            let mut length = [0; NAME_LENGTH_BYTES];
            length.copy_from_slice(&fields[after..after + NAME_LENGTH_BYTES]);
            let name_start = after + NAME_LENGTH_BYTES;
            let name_end = name_start + u32::from_le_bytes(length) as usize;
            (index, (name_start, name_end), Value::Stored(name_end, end))
        }
        REASON_PHRASE => (index, (after, after), Value::Stored(after, end)),
        _ if index & COMMON_VALUE != 0 => {
            // The table's values are checked when packed; an unknown index is an empty value.
            let value = field_values::common(fields[after]).unwrap_or_default();
            (index & NAME_BITS, (after, after), Value::Common(value))
        }
        _ if index & HTTP_DATE != 0 => {
            let mut seconds = [0; 4];
            seconds.copy_from_slice(&fields[after..after + 4]);
            (
                index & NAME_BITS,
                (after, after),
                Value::Date(u32::from_le_bytes(seconds)),
            )
        }
        _ => (index, (after, after), Value::Stored(after, end)),
    }
}

/// The index of `name` in [`COMMON_NAMES`], or [`STORED_NAME`].
fn name_index(name: &[u8]) -> u8 {
    COMMON_NAMES
        .iter()
        .position(|common| common.as_str().as_bytes() == name)
        .and_then(|index| u8::try_from(index).ok())
        .unwrap_or(STORED_NAME)
}

/// Upper bound of the bytes [`encode_record`] writes for `name: value`.
fn record_len(index: u8, name: &[u8], value: &[u8]) -> usize {
    let stored_name = match index {
        STORED_NAME => NAME_LENGTH_BYTES + name.len(),
        _ => 0,
    };
    1 + stored_name + value.len()
}

/// Writes the record of the field `name: value` to `out`: its name index (`index`, its
/// [`name_index`], or [`REASON_PHRASE`]), the name itself only when it is not a common one, and
/// the value, in compact form when a common name's value has one. Equal fields make equal
/// records.
fn encode_record(out: &mut Vec<u8>, index: u8, name: &[u8], value: &[u8]) {
    let common_name = index <= NAME_BITS;
    match field_values::compact(value).filter(|_| common_name) {
        Some(Compact::Common(at)) => out.extend_from_slice(&[index | COMMON_VALUE, at]),
        Some(Compact::Date(seconds)) => {
            out.push(index | HTTP_DATE);
            out.extend_from_slice(&seconds.to_le_bytes());
        }
        None => {
            out.push(index);
            if index == STORED_NAME {
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name);
            }
            out.extend_from_slice(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacking_gives_the_header_back() {
        let mut header = ResponseHeader::build(404, None).unwrap();
        header.set_reason_phrase(Some("Gone Fishing")).unwrap();
        header.append_header("Content-Type", "text/html").unwrap();
        header.append_header("set-cookie", "a=1").unwrap();
        header.append_header("set-cookie", "b=2").unwrap();
        header.append_header("x-empty", "").unwrap();
        header.append_header("cdn-cache-control", "max-age=60").unwrap();
        header.append_header("vary", "accept-encoding").unwrap();
        let long_name = "x-".repeat(200) + "name";
        header.append_header(long_name.clone(), "long").unwrap();
        let packed = PackedHeader::pack(&header);
        let back = packed.unpack().unwrap();
        assert_eq!(back.status, 404);
        assert_eq!(back.get_reason_phrase(), Some("Gone Fishing"));
        assert_eq!(back.headers, header.headers);
        assert_eq!(packed.get("content-type").as_deref(), Some(&b"text/html"[..]));
        assert_eq!(packed.get("set-cookie").as_deref(), Some(&b"a=1"[..]));
        assert_eq!(packed.get("etag").as_deref(), None);
        assert_eq!(
            packed.get("cdn-cache-control").as_deref(),
            Some(&b"max-age=60"[..])
        );
        assert_eq!(packed.get("x-empty").as_deref(), Some(&b""[..]));
        assert_eq!(packed.get("vary").as_deref(), Some(&b"accept-encoding"[..]));
        assert_eq!(packed.get(&long_name).as_deref(), Some(&b"long"[..]));
        let canonical = PackedHeader::pack(&ResponseHeader::build(404, None).unwrap());
        assert_eq!(
            (canonical.reason(), canonical.fields.len()),
            (None, 0),
            "a canonical reason is not stored"
        );
        assert_eq!(canonical.unpack().unwrap().get_reason_phrase(), Some("Not Found"));
        let without_long = packed.weight() - (long_name.len() + 4 + 1 + NAME_LENGTH_BYTES + 8);
        assert!(without_long < 150, "{without_long}");
    }

    #[test]
    fn dates_and_common_values_are_compact_and_come_back_as_sent() {
        let date = "Wed, 02 Dec 2026 15:23:16 GMT";
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("date", date).unwrap();
        header
            .append_header("last-modified", "Tue, 01 Dec 2026 08:00:00 GMT")
            .unwrap();
        header
            .append_header("expires", "Wednesday, 02-Dec-26 15:23:16 GMT")
            .unwrap();
        header.append_header("vary", "Accept-Encoding").unwrap();
        header
            .append_header("content-type", "text/html; charset=utf-8")
            .unwrap();
        header.append_header("x-coding", "gzip").unwrap();
        let packed = PackedHeader::pack(&header);
        assert_eq!(packed.unpack().unwrap().headers, header.headers);
        assert_eq!(packed.get("date").as_deref(), Some(date.as_bytes()));
        assert_eq!(packed.get("vary").as_deref(), Some(&b"Accept-Encoding"[..]));
        assert_eq!(packed.get("x-coding").as_deref(), Some(&b"gzip"[..]));
        // Two dates in five bytes each, two table values in two; the RFC 850 date and the
        // value of a stored name as sent.
        let as_sent = (1 + "Wednesday, 02-Dec-26 15:23:16 GMT".len()) + (1 + 4 + "x-coding".len() + 4);
        assert_eq!(packed.fields.len(), 2 * 5 + 2 * 2 + as_sent);
    }

    #[test]
    fn headers_packed_together_keep_each_shared_field_once() {
        let mut identity = ResponseHeader::build(200, None).unwrap();
        identity
            .append_header("content-type", "text/html; charset=utf-8")
            .unwrap();
        identity
            .append_header("x-request-trace", "abcdef0123456789")
            .unwrap();
        identity.append_header("etag", "\"v1\"").unwrap();
        identity.append_header("content-length", "5000").unwrap();
        let mut gzip = identity.clone();
        gzip.insert_header("etag", "W/\"v1~gz\"").unwrap();
        gzip.insert_header("content-length", "900").unwrap();
        gzip.append_header("content-encoding", "gzip").unwrap();
        let mut odd = ResponseHeader::build(404, None).unwrap();
        odd.set_reason_phrase(Some("Nope")).unwrap();
        odd.append_header("x-request-trace", "abcdef0123456789").unwrap();
        odd.append_header("x-request-trace", "abcdef0123456789").unwrap();

        let packed = PackedHeader::pack_all(&[&identity, &gzip, &odd]);
        for (packed, header) in packed.iter().zip([&identity, &gzip, &odd]) {
            let back = packed.unpack().unwrap();
            assert_eq!(back.status, header.status);
            assert_eq!(back.get_reason_phrase(), header.get_reason_phrase());
            assert_eq!(back.headers, header.headers);
            assert!(!packed.shares_buffer_with(&PackedHeader::pack(header)));
        }
        assert!(packed[1].shares_buffer_with(&packed[0]) && packed[2].shares_buffer_with(&packed[0]));
        assert_eq!(packed[1].get("etag").as_deref(), Some(&b"W/\"v1~gz\""[..]));
        assert_eq!(packed[0].get("etag").as_deref(), Some(&b"\"v1\""[..]));
        let alone = PackedHeader::pack(&identity).weight();
        let added = packed[0].weight() - alone;
        // gzip adds its three fields: each a name index (all three names are common ones) and
        // its value, `gzip` as an index into the table of common values; `odd` adds its reason
        // phrase only: its field is the identity's.
        let gzip_adds = (1 + "W/\"v1~gz\"".len()) + (1 + "900".len()) + 2;
        assert_eq!(added, gzip_adds + 1 + "Nope".len());
    }

    #[test]
    fn common_names_take_one_buffer_byte() {
        assert!(COMMON_NAMES.len() < usize::from(REASON_PHRASE));
        let mut header = ResponseHeader::build(200, None).unwrap();
        for (at, name) in COMMON_NAMES.iter().enumerate() {
            header.append_header(name.clone(), at.to_string()).unwrap();
        }
        let packed = PackedHeader::pack(&header);
        let values: usize = (0..COMMON_NAMES.len()).map(|at| at.to_string().len()).sum();
        assert_eq!(
            packed.fields.len(),
            values + COMMON_NAMES.len(),
            "values and name indexes"
        );
        assert_eq!(packed.unpack().unwrap().headers, header.headers);
        for name in &COMMON_NAMES {
            assert!(packed.get(name.as_str()).is_some(), "{name}");
        }
    }
}
