//! A stored response header packed into one buffer. A `ResponseHeader` keeps each field in a
//! hash-map slot of about a hundred bytes plus its own allocation; a cached object of 1 KiB with
//! a dozen header fields spent more on its header than on its body. Packed, the values (and the
//! names that are not common response field names) sit end to end in one `Bytes`, common names
//! are one byte, and a hit unpacks them: values are slices of the shared buffer, not copies, and
//! common names are copied from a table instead of parsed again.
//!
//! The headers of one response's codings (identity, gzip, brotli) differ in a few fields only;
//! packed together ([`PackedHeader::pack_all`]) they share one buffer that holds each distinct
//! field once.

use bytes::Bytes;
use http::header;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

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

/// Where one field sits in the buffer: its name index (one of [`COMMON_NAMES`], or
/// [`STORED_NAME`] followed by the name's length and the name), then its value up to `end`.
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
                let earlier = all_spans
                    .iter()
                    .flatten()
                    .chain(&spans)
                    .find(|span| span_holds(&fields, span, index, name, value))
                    .copied();
                spans.push(earlier.unwrap_or_else(|| push_field(&mut fields, index, name, value)));
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
            let value = HeaderValue::from_maybe_shared(self.fields.slice(value.0..value.1))
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
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(index, stored, _)| match COMMON_NAMES.get(usize::from(*index)) {
                Some(common) => common.as_str() == name,
                None => &self.fields[stored.0..stored.1] == name.as_bytes(),
            })
            .map(|(_, _, value)| &self.fields[value.0..value.1])
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

    /// Each field's span, with the (start, end) of its stored name (empty for a common name)
    /// and of its value in `fields`.
    fn fields(&self) -> impl Iterator<Item = (u8, (usize, usize), (usize, usize))> + '_ {
        self.spans
            .iter()
            .map(|span| locate(&self.fields, span))
            .filter(|&(index, _, _)| index != REASON_PHRASE)
    }

    /// A reason phrase other than the status's canonical one: the first record, when there is
    /// one.
    fn reason(&self) -> Option<&[u8]> {
        let (index, _, value) = locate(&self.fields, self.spans.first()?);
        (index == REASON_PHRASE).then(|| &self.fields[value.0..value.1])
    }
}

/// The name index of the field at `span` in `fields`, and the (start, end) of its stored name
/// and of its value.
fn locate(fields: &[u8], span: &Span) -> (u8, (usize, usize), (usize, usize)) {
    let (start, end) = (span.start as usize, span.end as usize);
    let index = fields[start];
    let mut name = (start + 1, start + 1);
    if index == STORED_NAME {
        let mut length = [0; NAME_LENGTH_BYTES];
        length.copy_from_slice(&fields[name.0..name.0 + NAME_LENGTH_BYTES]);
        let name_start = name.0 + NAME_LENGTH_BYTES;
        name = (name_start, name_start + u32::from_le_bytes(length) as usize);
    }
    (index, name, (name.1, end))
}

/// The index of `name` in [`COMMON_NAMES`], or [`STORED_NAME`].
fn name_index(name: &[u8]) -> u8 {
    COMMON_NAMES
        .iter()
        .position(|common| common.as_str().as_bytes() == name)
        .and_then(|index| u8::try_from(index).ok())
        .unwrap_or(STORED_NAME)
}

/// Whether `span` in `fields` is the field `name: value`, `index` being `name`'s
/// [`name_index`].
fn span_holds(fields: &[u8], span: &Span, index: u8, name: &[u8], value: &[u8]) -> bool {
    let (stored_index, stored_name, stored_value) = locate(fields, span);
    let same_name =
        stored_index == index && (index != STORED_NAME || &fields[stored_name.0..stored_name.1] == name);
    same_name && &fields[stored_value.0..stored_value.1] == value
}

/// Bytes [`push_field`] appends for `name: value`.
fn record_len(index: u8, name: &[u8], value: &[u8]) -> usize {
    let stored_name = match index {
        STORED_NAME => NAME_LENGTH_BYTES + name.len(),
        _ => 0,
    };
    1 + stored_name + value.len()
}

/// Appends the field `name: value` to `fields`: its name index, the name itself only when it
/// is not a common one (`index` being its [`name_index`]), and the value.
fn push_field(fields: &mut Vec<u8>, index: u8, name: &[u8], value: &[u8]) -> Span {
    let start = fields.len() as u32;
    fields.push(index);
    if index == STORED_NAME {
        fields.extend_from_slice(&(name.len() as u32).to_le_bytes());
        fields.extend_from_slice(name);
    }
    fields.extend_from_slice(value);
    Span {
        start,
        end: fields.len() as u32,
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
        assert_eq!(packed.get("content-type"), Some(&b"text/html"[..]));
        assert_eq!(packed.get("set-cookie"), Some(&b"a=1"[..]));
        assert_eq!(packed.get("etag"), None);
        assert_eq!(packed.get("cdn-cache-control"), Some(&b"max-age=60"[..]));
        assert_eq!(packed.get("x-empty"), Some(&b""[..]));
        assert_eq!(packed.get("vary"), Some(&b"accept-encoding"[..]));
        assert_eq!(packed.get(&long_name), Some(&b"long"[..]));
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
        assert_eq!(packed[1].get("etag"), Some(&b"W/\"v1~gz\""[..]));
        assert_eq!(packed[0].get("etag"), Some(&b"\"v1\""[..]));
        let alone = PackedHeader::pack(&identity).weight();
        let added = packed[0].weight() - alone;
        // gzip adds the values of its three fields and their name indexes (`content-encoding`
        // is a common name); `odd` adds its reason phrase only: its field is the identity's.
        let gzip_adds = "W/\"v1~gz\"".len() + "900".len() + "gzip".len() + 3;
        assert_eq!(added, gzip_adds + "Nope".len() + 1);
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
