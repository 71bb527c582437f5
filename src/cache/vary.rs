//! Vary (RFC 9111 §4.1): which stored variant a request selects.
//!
//! pingora stores one variant per distinct variance hash; this module computes the hash from the
//! request headers named by the stored response's `Vary`. Header names are compared
//! case-insensitively, and values are normalised (repeated fields joined, whitespace around
//! commas dropped; for the `Accept-*` lists, also case and member order) so trivially different
//! spellings share a variant. `Accept-Encoding` is
//! special: when the proxy compresses, one entry holds every coding and it plays no part in
//! the variant; otherwise its normalised form (at most four spellings) does.

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

use crate::field_list;

/// How `Vary: Accept-Encoding` selects a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptEncodingVariance {
    /// The proxy compresses: every coding lives in one entry.
    Ignored,
    /// The origin's codings are stored as variants, keyed by this normalised value.
    Normalized(&'static str),
}

/// The variance hash of `req` against a stored response, or `None` when it has no `Vary` and
/// there are no `key_parts` (extra named values a per-path rule adds to the key).
pub fn variance(
    meta: &CacheMeta,
    req: &RequestHeader,
    accept_encoding: AcceptEncodingVariance,
    key_parts: Vec<(String, Vec<u8>)>,
) -> Option<HashBinary> {
    let names = vary_names(meta);
    let mut builder = VarianceBuilder::new();
    for (name, value) in key_parts {
        builder.add_owned_name_value(name, value);
    }
    for name in names {
        let value = if name == "accept-encoding" {
            match accept_encoding {
                AcceptEncodingVariance::Ignored => continue,
                AcceptEncodingVariance::Normalized(value) => value.as_bytes().to_vec(),
            }
        } else {
            normalized_value(req, &name)
        };
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// Lower-cased, sorted, de-duplicated header names listed in the stored `Vary`.
fn vary_names(meta: &CacheMeta) -> Vec<String> {
    let mut names: Vec<String> = field_list::items(meta.headers(), "vary")
        .map(str::to_ascii_lowercase)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Request headers that are case-insensitive lists whose member order carries no meaning
/// for the selection (preferences are in their `q` weights).
const UNORDERED_LISTS: [&str; 3] = ["accept", "accept-charset", "accept-language"];

fn normalized_value(req: &RequestHeader, name: &str) -> Vec<u8> {
    let mut items: Vec<Vec<u8>> = req
        .headers
        .get_all(name)
        .into_iter()
        .flat_map(|field| field.as_bytes().split(|b| *b == b','))
        .map(|item| item.trim_ascii().to_vec())
        .filter(|item| !item.is_empty())
        .collect();
    if UNORDERED_LISTS.contains(&name) {
        for item in &mut items {
            item.make_ascii_lowercase();
            item.retain(|b| !b.is_ascii_whitespace());
        }
        items.sort();
        items.dedup();
    }
    items.join(&b',')
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
        let variance = |meta: &CacheMeta, req: &RequestHeader| variance(meta, req, IGNORED, Vec::new());
        let en = variance(&meta, &req(&[("accept-language", "en")]));
        let fr = variance(&meta, &req(&[("accept-language", "fr")]));
        let en_other = variance(&meta, &req(&[("accept-language", "en"), ("user-agent", "x")]));
        assert!(en.is_some());
        assert_ne!(en, fr);
        assert_eq!(en, en_other);
    }

    #[test]
    fn whitespace_and_case_of_names_do_not_split_variants() {
        let meta = meta_with_vary("x-device, ACCEPT-LANGUAGE");
        let a = variance(
            &meta,
            &req(&[("x-device", "a,b"), ("accept-language", "en")]),
            IGNORED,
            Vec::new(),
        );
        let b = variance(
            &meta,
            &req(&[("x-device", "a, b"), ("accept-language", "en")]),
            IGNORED,
            Vec::new(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn accept_encoding_is_ignored_or_normalised() {
        let meta = meta_with_vary("Accept-Encoding");
        let gzip = req(&[("accept-encoding", "gzip")]);
        assert_eq!(variance(&meta, &gzip, IGNORED, Vec::new()), None);
        let normalized = |value| {
            variance(
                &meta,
                &gzip,
                AcceptEncodingVariance::Normalized(value),
                Vec::new(),
            )
        };
        assert_ne!(normalized("gzip"), normalized("br, gzip"));
        assert_eq!(normalized("gzip"), normalized("gzip"));
    }

    const IGNORED: AcceptEncodingVariance = AcceptEncodingVariance::Ignored;

    #[test]
    fn accept_lists_ignore_order_and_case() {
        let meta = meta_with_vary("Accept-Language");
        let of = |value| variance(&meta, &req(&[("accept-language", value)]), IGNORED, Vec::new());
        assert_eq!(of("en, fr"), of("fr, en"));
        assert_eq!(of("en, fr"), of("EN,fr"));
        assert_eq!(of("en;q=0.5, fr"), of("fr, en; q=0.5"));
        assert_ne!(of("en"), of("en, fr"));
    }

    #[test]
    fn no_vary_means_no_variance() {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("x", "y").unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, header);
        assert_eq!(variance(&meta, &req(&[]), IGNORED, Vec::new()), None);
    }
}
