//! Which `Range` requests are answered with part of a response (RFC 9110 §14), before
//! pingora's range filter cuts the body: only GET has range handling (a `HEAD` gets the header
//! fields GET's 200 would); `If-Range` needs a strong validator, so a weak one never matches
//! (§13.1.5); and an empty representation is sent whole, as no byte of it can be selected.

use http::header::{CONTENT_LENGTH, IF_RANGE, RANGE};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{range_header_filter, RangeType};

/// Most ranges of one multipart request (pingora's default).
const MAX_RANGES: Option<usize> = Some(200);

/// The ranges of `resp` that `req` asks for; `resp` gets the matching status and fields.
pub fn range_type(req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
    if req.headers.contains_key(RANGE) && ignores_range(req, resp) {
        let mut whole = req.clone();
        whole.remove_header(&RANGE);
        return range_header_filter(&whole, resp, MAX_RANGES);
    }
    range_header_filter(req, resp, MAX_RANGES)
}

/// Whether `req`'s `Range` is ignored and the whole response sent.
fn ignores_range(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let weak_if_range = req
        .headers
        .get(IF_RANGE)
        .is_some_and(|v| v.as_bytes().starts_with(b"W/"));
    let empty = resp
        .headers
        .get(CONTENT_LENGTH)
        .is_some_and(|len| len.as_bytes().trim_ascii() == b"0");
    req.method != http::Method::GET || weak_if_range || empty
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        for (name, value) in headers {
            req.insert_header(*name, *value).unwrap();
        }
        req
    }

    fn resp(len: usize) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", len).unwrap();
        resp.insert_header("etag", "W/\"v1\"").unwrap();
        resp
    }

    #[test]
    fn get_gets_its_range() {
        let mut ok = resp(20);
        let range = range_type(&req("GET", &[("range", "bytes=0-9")]), &mut ok);
        assert!(matches!(range, RangeType::Single(_)));
        assert_eq!(ok.status, 206);
    }

    #[test]
    fn head_weak_if_range_and_empty_bodies_get_the_whole_response() {
        let cases = [
            (req("HEAD", &[("range", "bytes=0-9")]), 20),
            (
                req("GET", &[("range", "bytes=0-9"), ("if-range", "W/\"v1\"")]),
                20,
            ),
            (req("GET", &[("range", "bytes=-6")]), 0),
        ];
        for (req, len) in cases {
            let mut whole = resp(len);
            assert_eq!(range_type(&req, &mut whole), RangeType::None);
            assert_eq!(whole.status, 200);
            assert!(whole.headers.get("content-range").is_none());
        }
    }
}
