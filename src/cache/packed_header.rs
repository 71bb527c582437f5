//! A stored response header packed into one buffer. A `ResponseHeader` keeps each field in a
//! hash-map slot of about a hundred bytes plus its own allocation; a cached object of 1 KiB with
//! a dozen header fields spent more on its header than on its body. Packed, the values (and the
//! names that are not common response field names) sit end to end in one `Bytes`, common names
//! are one byte, and a hit unpacks them: values are slices of the shared buffer, not copies, and
//! common names are copied from a table instead of parsed again.

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
    /// End of the stored name (its start is the previous field's end); equal to that start
    /// for a common name.
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
    /// Every stored name and value, end to end.
    fields: Bytes,
    /// Each field's name and where it ends in `fields`.
    spans: Box<[Span]>,
}

impl PackedHeader {
    /// Packs `header` (its status and fields; names come out lower-case).
    pub fn pack(header: &ResponseHeader) -> PackedHeader {
        let size: usize = header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let mut fields = Vec::with_capacity(size);
        let mut spans = Vec::with_capacity(header.headers.len());
        for (name, value) in &header.headers {
            let common = COMMON_NAMES.iter().position(|common| common == name);
            let name = match common.and_then(|index| u8::try_from(index).ok()) {
                Some(index) => index,
                None => {
                    fields.extend_from_slice(name.as_str().as_bytes());
                    STORED_NAME
                }
            };
            let name_end = fields.len() as u32;
            fields.extend_from_slice(value.as_bytes());
            spans.push(Span {
                name,
                name_end,
                value_end: fields.len() as u32,
            });
        }
        PackedHeader {
            status: header.status,
            version: header.version,
            reason: header.get_reason_phrase().map(Into::into),
            fields: Bytes::from(fields),
            spans: spans.into_boxed_slice(),
        }
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
        self.fields.len() + self.spans.len() * std::mem::size_of::<Span>()
    }

    /// Each field's span, with the (start, end) of its stored name (empty for a common name)
    /// and of its value in `fields`.
    fn fields(&self) -> impl Iterator<Item = (Span, (usize, usize), (usize, usize))> + '_ {
        let mut start = 0;
        self.spans.iter().map(move |&span| {
            let (name_end, value_end) = (span.name_end as usize, span.value_end as usize);
            let spans = (span, (start, name_end), (name_end, value_end));
            start = value_end;
            spans
        })
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
        assert!(packed.weight() < 150, "{}", packed.weight());
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
