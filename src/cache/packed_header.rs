//! A stored response header packed into one buffer. A `ResponseHeader` keeps each field in a
//! hash-map slot of about a hundred bytes plus its own allocation; a cached object of 1 KiB with
//! a dozen header fields spent more on its header than on its body. Packed, the names and values
//! sit end to end in one `Bytes` with an array of offsets, and a hit unpacks them (the values
//! are slices of the shared buffer, not copies), which costs about what cloning the map did.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

/// A response header: its status and its fields, in order.
#[derive(Debug, Clone)]
pub struct PackedHeader {
    status: StatusCode,
    version: http::Version,
    /// A reason phrase other than the status's canonical one.
    reason: Option<Box<str>>,
    /// Every name and value, end to end.
    fields: Bytes,
    /// Where each field's name and value end in `fields`.
    ends: Box<[(u32, u32)]>,
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
        let mut ends = Vec::with_capacity(header.headers.len());
        for (name, value) in &header.headers {
            fields.extend_from_slice(name.as_str().as_bytes());
            let name_end = fields.len() as u32;
            fields.extend_from_slice(value.as_bytes());
            ends.push((name_end, fields.len() as u32));
        }
        PackedHeader {
            status: header.status,
            version: header.version,
            reason: header.get_reason_phrase().map(Into::into),
            fields: Bytes::from(fields),
            ends: ends.into_boxed_slice(),
        }
    }

    /// The header again, as pingora serves it. The map is filled directly: pingora's
    /// `append_header` would title-case and re-parse every name.
    pub fn unpack(&self) -> Result<ResponseHeader> {
        let mut headers = http::HeaderMap::with_capacity(self.ends.len());
        for (name, value) in self.spans() {
            let name = HeaderName::from_bytes(&self.fields[name.0..name.1])
                .map_err(|_| Error::explain(ErrorType::InternalError, "stored header name"))?;
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
        self.spans()
            .find(|(n, _)| &self.fields[n.0..n.1] == name.as_bytes())
            .map(|(_, v)| &self.fields[v.0..v.1])
    }

    /// Bytes held: the buffer and the offsets.
    pub fn weight(&self) -> usize {
        self.fields.len() + self.ends.len() * std::mem::size_of::<(u32, u32)>()
    }

    /// The (start, end) of each field's name and value in `fields`.
    fn spans(&self) -> impl Iterator<Item = ((usize, usize), (usize, usize))> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let spans = ((start, name_end), (name_end, value_end));
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
        let packed = PackedHeader::pack(&header);
        let back = packed.unpack().unwrap();
        assert_eq!(back.status, 404);
        assert_eq!(back.get_reason_phrase(), Some("Gone Fishing"));
        assert_eq!(back.headers, header.headers);
        assert_eq!(packed.get("content-type"), Some(&b"text/html"[..]));
        assert_eq!(packed.get("set-cookie"), Some(&b"a=1"[..]));
        assert_eq!(packed.get("etag"), None);
        assert!(packed.weight() < 100, "{}", packed.weight());
    }
}
