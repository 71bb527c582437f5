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
use std::collections::HashMap;
use std::sync::OnceLock;

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

/// Flag on a common name's index: the value is one of [`field_values::COMMON_VALUES`], whose
/// index is the next byte.
const COMMON_VALUE: u8 = 0x80;

/// Flag on a common name's index: the value is an HTTP date, the next four bytes its seconds.
const HTTP_DATE: u8 = 0x40;

/// The bits of a common name's index that hold the index itself.
const NAME_BITS: u8 = 0x3f;

/// Which records of the shared buffer make up one header, in order.
#[derive(Debug, Clone)]
enum Records {
    /// The buffer's first `len` bytes, `count` records one after another: the first header
    /// packed, which needs no offsets.
    Leading { len: u32, count: u32 },
    /// The offset of each record: a header that shares records with one packed before it.
    At(Box<[u32]>),
}

/// A response header: its status and its fields, in order.
#[derive(Debug, Clone)]
pub struct PackedHeader {
    status: StatusCode,
    version: http::Version,
    /// Every field record; shared by the headers packed together.
    fields: Bytes,
    /// Which of them are this header's.
    records: Records,
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
        // Room for the first header's records: most of what the others carry is shared with
        // it, so the buffer rarely grows.
        let first_len = headers.first().map_or(0, |header| {
            header
                .headers
                .iter()
                .map(|(name, value)| record_len(name.as_str().as_bytes(), value.as_bytes()))
                .sum()
        });
        let mut fields = Vec::with_capacity(first_len);
        let mut all_starts: Vec<Vec<u32>> = Vec::with_capacity(headers.len());
        let mut record = Vec::new();
        // The first header's records lead the buffer in order unless one repeats an earlier
        // one: then it needs no offsets.
        let mut first_records = None;
        for header in headers {
            let mut starts = Vec::with_capacity(header.headers.len());
            for (index, name, value) in header_fields(header) {
                record.clear();
                encode_record(&mut record, index, name, value);
                let earlier = all_starts
                    .iter()
                    .flatten()
                    .chain(&starts)
                    .copied()
                    .find(|&start| {
                        let start = start as usize;
                        fields.get(start..start + record.len()) == Some(&record[..])
                    });
                starts.push(earlier.unwrap_or_else(|| {
                    let start = fields.len() as u32;
                    fields.extend_from_slice(&record);
                    start
                }));
            }
            if all_starts.is_empty() && starts.windows(2).all(|pair| pair[0] < pair[1]) {
                first_records = u32::try_from(fields.len()).ok();
            }
            all_starts.push(starts);
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
            .zip(all_starts)
            .zip(buffers)
            .enumerate()
            .map(|(at, ((header, starts), fields))| PackedHeader {
                status: header.status,
                version: header.version,
                fields,
                records: match (at, first_records) {
                    (0, Some(len)) => Records::Leading {
                        len,
                        count: starts.len() as u32,
                    },
                    _ => Records::At(starts.into_boxed_slice()),
                },
            })
            .collect()
    }

    /// The header again, as pingora serves it. The map is filled directly: pingora's
    /// `append_header` would title-case and re-parse every name.
    pub fn unpack(&self) -> Result<ResponseHeader> {
        let mut headers = http::HeaderMap::with_capacity(self.len());
        for field in self.fields() {
            let name = match COMMON_NAMES.get(usize::from(field.index)) {
                Some(common) => common.clone(),
                None => HeaderName::from_bytes(&self.fields[field.name.0..field.name.1])
                    .map_err(|_| Error::explain(ErrorType::InternalError, "stored header name"))?,
            };
            let value = match field.value {
                Value::Stored(start, end) => HeaderValue::from_maybe_shared(self.fields.slice(start..end)),
                Value::Common(common) => Ok(HeaderValue::from_static(common)),
                Value::Date(seconds) => Ok(field_values::date_value(seconds)),
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
            .find(|field| match COMMON_NAMES.get(usize::from(field.index)) {
                Some(common) => common.as_str() == name,
                None => &self.fields[field.name.0..field.name.1] == name.as_bytes(),
            })
            .map(|field| match field.value {
                Value::Stored(start, end) => Cow::Borrowed(&self.fields[start..end]),
                Value::Common(common) => Cow::Borrowed(common.as_bytes()),
                Value::Date(seconds) => Cow::Owned(field_values::render_date(seconds).into_bytes()),
            })
    }

    /// Bytes held: the buffer and the record offsets.
    pub fn weight(&self) -> usize {
        self.fields.len() + self.offsets_weight()
    }

    /// Bytes held by the record offsets alone: what a header packed together with another
    /// adds.
    pub fn offsets_weight(&self) -> usize {
        match &self.records {
            Records::Leading { .. } => 0,
            Records::At(starts) => std::mem::size_of_val::<[u32]>(starts),
        }
    }

    /// Whether `self` and `other` were packed together (they share one buffer).
    pub fn shares_buffer_with(&self, other: &PackedHeader) -> bool {
        self.fields.as_ptr() == other.fields.as_ptr() && self.fields.len() == other.fields.len()
    }

    /// How many records the header has, for sizing the map it unpacks into.
    fn len(&self) -> usize {
        match &self.records {
            Records::Leading { count, .. } => *count as usize,
            Records::At(starts) => starts.len(),
        }
    }

    /// The header's records, in order, reason phrase included.
    fn records(&self) -> impl Iterator<Item = Field> + '_ {
        let (leading, starts) = match &self.records {
            Records::Leading { len, .. } => (Some(*len as usize), &[][..]),
            Records::At(starts) => (None, &starts[..]),
        };
        let mut next = 0;
        let leading = std::iter::from_fn(move || {
            let field = (next < leading?).then(|| decode(&self.fields, next))?;
            next = field.end;
            Some(field)
        });
        let at = starts.iter().map(|&start| decode(&self.fields, start as usize));
        leading.chain(at)
    }

    /// The header's fields, in order.
    fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.records().filter(|field| field.index != REASON_PHRASE)
    }

    /// A reason phrase other than the status's canonical one: the first record, when there is
    /// one.
    fn reason(&self) -> Option<&[u8]> {
        match self.records().next()? {
            Field {
                index: REASON_PHRASE,
                value: Value::Stored(start, end),
                ..
            } => Some(&self.fields[start..end]),
            _ => None,
        }
    }
}

/// The fields of `header` to pack, as (name index, name, value): its reason phrase first when
/// it is not the status's canonical one.
fn header_fields<'h>(header: &'h ResponseHeader) -> impl Iterator<Item = (u8, &'h [u8], &'h [u8])> + 'h {
    let reason = header
        .get_reason_phrase()
        .filter(|&reason| Some(reason) != header.status.canonical_reason())
        .map(|reason| (REASON_PHRASE, &b""[..], reason.as_bytes()));
    let named = header
        .headers
        .iter()
        .map(|(name, value)| (name_index(name), name.as_str().as_bytes(), value.as_bytes()));
    reason.into_iter().chain(named)
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

/// One decoded record.
#[derive(Debug, Clone, Copy)]
struct Field {
    /// Its name index, without flags: one of [`COMMON_NAMES`], [`STORED_NAME`] or
    /// [`REASON_PHRASE`].
    index: u8,
    /// The (start, end) of its stored name in the buffer; empty for a common name.
    name: (usize, usize),
    value: Value,
    /// Where the next record starts.
    end: usize,
}

/// The record at `start` in `fields`: a name index (a common name's flagged with the form of
/// its value), then the name's length and the name for [`STORED_NAME`], then the value: a
/// table index, four bytes of date, or its length and bytes.
fn decode(fields: &[u8], start: usize) -> Field {
    let index = fields[start];
    let mut at = start + 1;
    let mut name = (at, at);
    if index == STORED_NAME {
        let length = read_varint(fields, &mut at);
        name = (at, at + length);
        at = name.1;
    }
    // Only a common name's index carries flags.
    let flags = match index {
        STORED_NAME | REASON_PHRASE => 0,
        _ => index & !NAME_BITS,
    };
    let (index, value, end) = match flags {
        // The table's values are checked when packed; an unknown index is an empty value.
        COMMON_VALUE => {
            let value = field_values::common(fields[at]).unwrap_or_default();
            (index & NAME_BITS, Value::Common(value), at + 1)
        }
        HTTP_DATE => {
            let mut seconds = [0; 4];
            seconds.copy_from_slice(&fields[at..at + 4]);
            (
                index & NAME_BITS,
                Value::Date(u32::from_le_bytes(seconds)),
                at + 4,
            )
        }
        _ => {
            let length = read_varint(fields, &mut at);
            (index, Value::Stored(at, at + length), at + length)
        }
    };
    Field {
        index,
        name,
        value,
        end,
    }
}

/// The index of `name` in [`COMMON_NAMES`], or [`STORED_NAME`].
fn name_index(name: &HeaderName) -> u8 {
    static INDEXES: OnceLock<HashMap<&'static str, u8>> = OnceLock::new();
    let indexes = INDEXES.get_or_init(|| {
        COMMON_NAMES
            .iter()
            .zip(0..NAME_BITS)
            .map(|(common, index)| (common.as_str(), index))
            .collect()
    });
    indexes.get(name.as_str()).copied().unwrap_or(STORED_NAME)
}

/// Upper bound of the bytes [`encode_record`] writes for `name: value`.
fn record_len(name: &[u8], value: &[u8]) -> usize {
    1 + VARINT_MAX + name.len() + VARINT_MAX + value.len()
}

/// Writes the record of the field `name: value` to `out` (see [`decode`]): `index` is
/// `name`'s [`name_index`], or [`REASON_PHRASE`]; a common name's value takes its compact
/// form when it has one. Equal fields make equal records.
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
                write_varint(out, name.len());
                out.extend_from_slice(name);
            }
            write_varint(out, value.len());
            out.extend_from_slice(value);
        }
    }
}

/// The most bytes [`write_varint`] writes for a `u32`.
const VARINT_MAX: usize = 5;

/// Appends `value` seven bits at a time, low bits first, the high bit of each byte set when
/// another follows (LEB128): lengths under 128 take one byte.
fn write_varint(out: &mut Vec<u8>, value: usize) {
    let mut value = value;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads what [`write_varint`] wrote at `at`, moving `at` past it.
fn read_varint(fields: &[u8], at: &mut usize) -> usize {
    let mut value = 0;
    let mut shift = 0;
    loop {
        let byte = fields[*at];
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
        shift += 7;
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
        // Its record: index, name length (two bytes), name, value length, value.
        let without_long = packed.weight() - (1 + 2 + long_name.len() + 1 + "long".len());
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
        let as_sent = (2 + "Wednesday, 02-Dec-26 15:23:16 GMT".len()) + (2 + "x-coding".len() + 1 + 4);
        assert_eq!(packed.fields.len(), 2 * 5 + 2 * 2 + as_sent);
    }

    #[test]
    fn a_field_repeated_word_for_word_is_stored_once() {
        let link = "</a.css>; rel=preload";
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("link", link).unwrap();
        header.append_header("x-a", "1").unwrap();
        header.append_header("link", link).unwrap();
        let packed = PackedHeader::pack(&header);
        assert_eq!(packed.unpack().unwrap().headers, header.headers);
        assert!(matches!(packed.records, Records::At(_)), "the repeat points back");
        assert_eq!(packed.fields.len(), (2 + link.len()) + (2 + 3 + 2));
        let plain = PackedHeader::pack(&ResponseHeader::build(200, None).unwrap());
        assert!(matches!(plain.records, Records::Leading { len: 0, count: 0 }));
        assert_eq!(plain.unpack().unwrap().headers.len(), 0);
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
        // its value's length and bytes, `gzip` as an index into the table of common values; `odd` adds its reason
        // phrase only: its field is the identity's.
        let gzip_adds = (2 + "W/\"v1~gz\"".len()) + (2 + "900".len()) + 2;
        assert_eq!(added, gzip_adds + 2 + "Nope".len());
    }

    #[test]
    fn common_names_are_one_byte_and_leave_room_for_flags() {
        assert!(COMMON_NAMES.len() <= usize::from(NAME_BITS));
        let mut header = ResponseHeader::build(200, None).unwrap();
        for (at, name) in COMMON_NAMES.iter().enumerate() {
            header.append_header(name.clone(), at.to_string()).unwrap();
        }
        let packed = PackedHeader::pack(&header);
        // Each record: the name index, the value's length and the value ("0" is a table value,
        // one index byte instead).
        let values: usize = (1..COMMON_NAMES.len()).map(|at| 2 + at.to_string().len()).sum();
        assert_eq!(packed.fields.len(), 2 + values, "name indexes and values");
        assert_eq!(packed.unpack().unwrap().headers, header.headers);
        for name in &COMMON_NAMES {
            assert!(packed.get(name.as_str()).is_some(), "{name}");
        }
    }
}
