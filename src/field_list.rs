//! Comma-separated header lists (RFC 9110 §5.6.1): `Vary`, `Connection`, `Cache-Control` and
//! the like may be split over several field lines, each holding several items. A leaf module.

use http::header::{AsHeaderName, HeaderMap};

/// The items of every `name` field line in `headers`, trimmed, empty ones skipped; lines that
/// are not visible ASCII are ignored.
pub fn items(headers: &HeaderMap, name: impl AsHeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_span_lines_and_skip_empty_ones() {
        let mut headers = HeaderMap::new();
        headers.append("vary", "Accept-Encoding, ,Origin".parse().unwrap());
        headers.append("vary", " cookie ".parse().unwrap());
        let listed: Vec<_> = items(&headers, "vary").collect();
        assert_eq!(listed, ["Accept-Encoding", "Origin", "cookie"]);
        assert_eq!(items(&headers, "connection").count(), 0);
    }
}
