//! This proxy's `Via` header values, built from the config once per reload.

use http::HeaderValue;

/// This proxy's `Via` entries (RFC 9110 §7.6.3), built once per protocol version.
#[derive(Debug, Clone)]
pub struct Via {
    http10: HeaderValue,
    http11: HeaderValue,
    http2: HeaderValue,
}

impl Via {
    /// `Via` values naming this proxy by `pseudonym` (validated as a header value by the config).
    pub fn new(pseudonym: &str) -> Via {
        let value = |protocol: &str| {
            HeaderValue::from_str(&format!("{protocol} {pseudonym}"))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 edgecache"))
        };
        Via {
            http10: value("1.0"),
            http11: value("1.1"),
            http2: value("2"),
        }
    }

    /// The entry for a message received with `version`.
    pub fn for_version(&self, version: http::Version) -> HeaderValue {
        match version {
            http::Version::HTTP_10 => self.http10.clone(),
            http::Version::HTTP_2 => self.http2.clone(),
            _ => self.http11.clone(),
        }
    }
}
