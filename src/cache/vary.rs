//! Vary (RFC 9111 §4.1): which stored variant a request selects.
//!
//! pingora stores one variant per distinct variance hash; this module computes the hash from the
//! request headers named by the stored response's `Vary`. Header names are compared
//! case-insensitively, and values are normalised (repeated fields joined, whitespace around
//! commas dropped) so trivially different spellings share a variant.

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

/// The variance hash of `req` against a stored response, or `None` when it has no `Vary`.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let names = vary_names(meta);
    if names.is_empty() {
        return None;
    }
    let mut builder = VarianceBuilder::new();
    for name in names {
        let value = normalized_value(req, &name);
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// Lower-cased, sorted, de-duplicated header names listed in the stored `Vary`.
fn vary_names(meta: &CacheMeta) -> Vec<String> {
    let mut names: Vec<String> = meta
        .headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn normalized_value(req: &RequestHeader, name: &str) -> Vec<u8> {
    let mut value = Vec::new();
    for field in req.headers.get_all(name) {
        for item in field.as_bytes().split(|b| *b == b',') {
            if !value.is_empty() {
                value.push(b',');
            }
            value.extend_from_slice(item.trim_ascii());
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::SystemTime;

    fn meta_with_vary(vary: &str) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("vary", vary).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now, now, 0, 0, header)
    }

    fn req(headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            req.append_header(*name, *value).unwrap();
        }
        req
    }

    #[test]
    fn variants_follow_listed_headers_only() {
        let meta = meta_with_vary("Accept-Language");
        let en = variance(&meta, &req(&[("accept-language", "en")]));
        let fr = variance(&meta, &req(&[("accept-language", "fr")]));
        let en_other = variance(&meta, &req(&[("accept-language", "en"), ("user-agent", "x")]));
        assert!(en.is_some());
        assert_ne!(en, fr);
        assert_eq!(en, en_other);
    }

    #[test]
    fn whitespace_and_case_of_names_do_not_split_variants() {
        let meta = meta_with_vary("accept-encoding, ACCEPT-LANGUAGE");
        let a = variance(
            &meta,
            &req(&[("accept-encoding", "gzip,br"), ("accept-language", "en")]),
        );
        let b = variance(
            &meta,
            &req(&[("accept-encoding", "gzip, br"), ("accept-language", "en")]),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn no_vary_means_no_variance() {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("x", "y").unwrap();
        let now = SystemTime::now();
        assert_eq!(variance(&CacheMeta::new(now, now, 0, 0, header), &req(&[])), None);
    }
}
