//! Compressible pages served by the test origin, and responses fetched without decoding, for the
//! compression tests.

use std::io::Read;

use bytes::Bytes;

use super::{client, Origin, Proxy, Reply};

/// Deterministic HTML-like text of about `len` bytes (a fixed vocabulary and a fixed LCG), so
/// compression levels make a visible difference.
pub fn page(len: usize) -> Bytes {
    const WORDS: [&str; 16] = [
        "edge",
        "cache",
        "origin",
        "request",
        "<p>",
        "</p>",
        "stale",
        "fresh",
        "vary",
        "gzip",
        "brotli",
        "header",
        "<div class=\"row\">",
        "</div>",
        "status",
        "proxy",
    ];
    let mut text = String::with_capacity(len + 32);
    let mut state: u32 = 12345;
    while text.len() < len {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        text.push_str(WORDS[(state >> 16) as usize % WORDS.len()]);
        text.push(if state.is_multiple_of(7) { '\n' } else { ' ' });
    }
    text.truncate(len);
    Bytes::from(text)
}

/// One response as received (nothing decoded by the client).
pub struct Fetched {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn coding(&self) -> &str {
        self.header("content-encoding").unwrap_or("identity")
    }

    /// The body with its content coding removed.
    pub fn decoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.coding() {
            "gzip" => {
                flate2::read::GzDecoder::new(&self.body[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            "br" => {
                brotli::Decompressor::new(&self.body[..], 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            _ => out = self.body.to_vec(),
        }
        out
    }

    pub fn varies_on_accept_encoding(&self) -> bool {
        self.headers.get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("accept-encoding")
        })
    }
}

pub async fn fetch(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.unwrap();
    Fetched {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap(),
    }
}

pub async fn get_with(proxy: &Proxy, path: &str, accept_encoding: &str) -> Fetched {
    fetch(proxy, "GET", path, &[("accept-encoding", accept_encoding)]).await
}

pub fn serve_page(origin: &Origin, path: &str, body: Bytes, cache_control: &'static str) {
    origin.route(path, move |_, _| {
        Reply::ok(body.clone())
            .header("content-type", "text/html; charset=utf-8")
            .header("cache-control", cache_control)
            .header("etag", "\"v1\"")
    });
}
