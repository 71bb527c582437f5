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

/// Where one field sits in the buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Index in [`COMMON_NAMES`], or [`STORED_NAME`].
    name: u8,
    /// Start of the stored name, or of the value for a common name.
    start: u32,
    /// End of the stored name (`start` for a common name).
    name_end: u32,
    /// End of the value, which starts at `name_end`.
    value_end: u32,
}

/// A response header: its status and its fields, in order.
#[derive(Debug, Clone)]
pub struct PackedHeader {
    status: StatusCode,
    version: http::Version,
    /// A reason phrase other than the status's canonical one.
    reason: Option<Box<str>>,
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
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum()
        });
        let mut fields = Vec::with_capacity(first_len);
        let mut all_spans: Vec<Vec<Span>> = Vec::with_capacity(headers.len());
        for header in headers {
            let mut spans = Vec::with_capacity(header.headers.len());
            for (name, value) in &header.headers {
                let index = name_index(name);
                let earlier = all_spans
                    .iter()
                    .flatten()
                    .chain(&spans)
                    .find(|span| span_holds(&fields, span, index, name, value.as_bytes()))
                    .copied();
                spans.push(earlier.unwrap_or_else(|| push_field(&mut fields, index, name, value.as_bytes())));
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
                reason: header.get_reason_phrase().map(Into::into),
                fields,
                spans: spans.into_boxed_slice(),
            })
            .collect()
    }

    /// The header again, as pingora serves it. The map is filled directly: pingora's
    /// `append_header` would title-case and re-parse every name.
    pub fn unpack(&self) -> Result<ResponseHeader> {
        let mut headers = http::HeaderMap::with_capacity(self.spans.len());
        for (span, name, value) in self.fields() {
            let name = match COMMON_NAMES.get(usize::from(span.name)) {
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
        if let Some(reason) = &self.reason {
            header.set_reason_phrase(Some(reason))?;
        }
        Ok(header)
    }

    /// The value of the first field called `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(
                |(span, stored, _)| match COMMON_NAMES.get(usize::from(span.name)) {
                    Some(common) => common.as_str() == name,
                    None => &self.fields[stored.0..stored.1] == name.as_bytes(),
                },
            )
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
    fn fields(&self) -> impl Iterator<Item = (Span, (usize, usize), (usize, usize))> + '_ {
        self.spans.iter().map(|&span| {
            let (start, name_end, value_end) = (
                span.start as usize,
                span.name_end as usize,
                span.value_end as usize,
            );
            (span, (start, name_end), (name_end, value_end))
        })
    }
}

/// The index of `name` in [`COMMON_NAMES`], or [`STORED_NAME`].
fn name_index(name: &HeaderName) -> u8 {
    COMMON_NAMES
        .iter()
        .position(|common| common == name)
        .and_then(|index| u8::try_from(index).ok())
        .unwrap_or(STORED_NAME)
}

/// Whether `span` in `fields` is the field `name: value`, `index` being `name`'s
/// [`name_index`].
fn span_holds(fields: &[u8], span: &Span, index: u8, name: &HeaderName, value: &[u8]) -> bool {
    let same_name = span.name == index
        && (index != STORED_NAME
            || &fields[span.start as usize..span.name_end as usize] == name.as_str().as_bytes());
    same_name && &fields[span.name_end as usize..span.value_end as usize] == value
}

/// Appends the field `name: value` to `fields` (the name only when it is not a common one,
/// `index` being its [`name_index`]).
fn push_field(fields: &mut Vec<u8>, index: u8, name: &HeaderName, value: &[u8]) -> Span {
    let start = fields.len() as u32;
    if index == STORED_NAME {
        fields.extend_from_slice(name.as_str().as_bytes());
    }
    let name_end = fields.len() as u32;
    fields.extend_from_slice(value);
    Span {
        name: index,
        start,
        name_end,
        value_end: fields.len() as u32,
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
        assert!(packed.weight() < 180, "{}", packed.weight());
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
        // gzip adds the values of its three fields (`content-encoding` is a common name);
        // `odd` adds nothing: its field is the identity's.
        assert_eq!(added, "W/\"v1~gz\"".len() + "900".len() + "gzip".len());
    }

    #[test]
    fn common_names_take_no_buffer_bytes() {
        assert!(COMMON_NAMES.len() < usize::from(STORED_NAME));
        let mut header = ResponseHeader::build(200, None).unwrap();
        for (at, name) in COMMON_NAMES.iter().enumerate() {
            header.append_header(name.clone(), at.to_string()).unwrap();
        }
        let packed = PackedHeader::pack(&header);
        let values: usize = (0..COMMON_NAMES.len()).map(|at| at.to_string().len()).sum();
        assert_eq!(packed.fields.len(), values, "only the values are stored");
        assert_eq!(packed.unpack().unwrap().headers, header.headers);
        for name in &COMMON_NAMES {
            assert!(packed.get(name.as_str()).is_some(), "{name}");
        }
    }
}
