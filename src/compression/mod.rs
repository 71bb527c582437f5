//! Compression: which responses are compressed, how, and what that does to their headers.
//!
//! Cached responses are compressed once per coding, when stored or when a client first accepts
//! that coding (see [`crate::cache::codings`]), and every hit is served as stored bytes.
//! Responses that are not served from the cache (misses as they stream through, uncacheable
//! pass-through) are compressed on the fly at a fast level with
//! [`stream::StreamEncoder`]. Origins are asked for identity whenever the proxy compresses, so a
//! URL is fetched once whatever its clients accept.
//!
//! Each coding of a response is its own representation: it carries `Vary: Accept-Encoding`, its
//! own `Content-Length`, and an `ETag` with a coding suffix (`"abc"` becomes `"abc~gzip"`), so
//! validators, `304`s and `Range` stay exact per coding. The suffix is removed from validators
//! before they reach the origin.

pub mod accept;
mod brotli_tables;
pub mod stream;

use std::io::{self, Read, Write};

use pingora::http::ResponseHeader;

pub use accept::Accepted;

use crate::config::CompressionSettings;
use crate::field_list;

/// A content coding the proxy stores and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No content coding.
    Identity,
    /// gzip (RFC 1952), produced with flate2.
    Gzip,
    /// Brotli (RFC 7932).
    Brotli,
}

impl Coding {
    /// The coding of a response's body: `None` for a coding the proxy cannot decode (deflate,
    /// zstd, several codings stacked).
    pub fn of_response(header: &ResponseHeader) -> Option<Coding> {
        let Some(value) = header.headers.get(http::header::CONTENT_ENCODING) else {
            return Some(Coding::Identity);
        };
        let value = value.to_str().ok()?.trim();
        if value.eq_ignore_ascii_case("identity") || value.is_empty() {
            Some(Coding::Identity)
        } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if value.eq_ignore_ascii_case("br") {
            Some(Coding::Brotli)
        } else {
            None
        }
    }

    /// The `Content-Encoding` token (`None` for identity, which is sent without the header).
    pub fn token(self) -> Option<&'static str> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some("gzip"),
            Coding::Brotli => Some("br"),
        }
    }

    /// What is appended inside the quotes of an ETag given to this coding.
    fn etag_suffix(self) -> &'static str {
        match self {
            Coding::Identity => "~identity",
            Coding::Gzip => "~gzip",
            Coding::Brotli => "~br",
        }
    }

    /// Compresses `data` at `level` (gzip 1-9, brotli 0-11); identity returns a copy.
    pub fn encode(self, data: &[u8], level: u32) -> Vec<u8> {
        match self {
            Coding::Identity => data.to_vec(),
            Coding::Gzip => {
                let out = Vec::with_capacity(data.len() / 3 + 64);
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
                // Writing to a Vec cannot fail.
                let _ = encoder.write_all(data);
                encoder.finish().unwrap_or_default()
            }
            Coding::Brotli => {
                let mut out = Vec::with_capacity(data.len() / 4 + 64);
                let params = brotli::enc::BrotliEncoderParams {
                    quality: level as i32,
                    lgwin: brotli_window_bits(data.len()) as i32,
                    size_hint: data.len(),
                    ..Default::default()
                };
                brotli_tables::compress(data, &mut out, &params);
                out
            }
        }
    }

    /// Decodes `data`, failing if it is corrupt or decodes to more than `limit` bytes.
    pub fn decode(self, data: &[u8], limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
        let reader: Box<dyn Read + '_> = match self {
            Coding::Identity => return Ok(data.to_vec()),
            Coding::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
            Coding::Brotli => Box::new(brotli::Decompressor::new(data, 4096)),
        };
        reader.take(limit as u64 + 1).read_to_end(&mut out)?;
        if out.len() > limit {
            return Err(io::Error::other("decoded body exceeds the object size limit"));
        }
        Ok(out)
    }
}

/// Brotli window (log2 bytes): 4 MiB, what browsers and the brotli tool use by default.
const BROTLI_WINDOW_BITS: u32 = 22;

/// Smallest brotli window used (128 KiB). The `brotli` crate has no hasher of its own for
/// windows of 64 KiB and less at qualities 5-9 (the reference encoder's H40-H42) and falls back to
/// one with 32 MiB of tables, zeroed for every body: a 1 KiB body then took 1.8 ms to compress
/// instead of 77 µs.
const BROTLI_MIN_WINDOW_BITS: u32 = 17;

/// The brotli window for a body of `len` bytes: just large enough to hold it, at most 4 MiB. The
/// encoder's memory grows with the window (at quality 11 by several times its size), so a
/// window fitted to the body keeps compressing small bodies cheap, and loses nothing: no
/// match can reach further back than the body's start.
fn brotli_window_bits(len: usize) -> u32 {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    bits.clamp(BROTLI_MIN_WINDOW_BITS, BROTLI_WINDOW_BITS)
}

/// Statuses whose bodies are compressed: full representations only (never 206 or 304).
const COMPRESSIBLE_STATUSES: [u16; 4] = [200, 203, 404, 410];

/// Content types that are never compressed even if a configured pattern matches them: they
/// stream indefinitely or are compressed already.
const NEVER_COMPRESSED: [&str; 3] = ["text/event-stream", "font/woff", "font/woff2"];

/// What the proxy may do with a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// Leave it as it is.
    Untouched,
    /// An identity body of a compressible type: derive gzip and brotli from it.
    Compress,
    /// Already gzip or brotli from the origin: keep those bytes, derive the rest by decoding.
    Encoded(Coding),
}

/// The compression policy in force: `[compression]` with its type patterns parsed.
#[derive(Debug, Clone)]
pub struct CompressionPolicy {
    types: Vec<TypePattern>,
    /// Sizes and levels as configured.
    pub settings: CompressionSettings,
}

impl CompressionPolicy {
    /// The policy of validated settings.
    pub fn new(settings: &CompressionSettings) -> CompressionPolicy {
        CompressionPolicy {
            types: settings.types.iter().map(|t| TypePattern::new(t)).collect(),
            settings: settings.clone(),
        }
    }

    /// Whether and how a response may be compressed, judged from its header alone.
    pub fn eligibility(&self, header: &ResponseHeader) -> Eligibility {
        if !COMPRESSIBLE_STATUSES.contains(&header.status.as_u16()) || forbids_transform(header) {
            return Eligibility::Untouched;
        }
        match Coding::of_response(header) {
            Some(Coding::Identity) => {}
            Some(coding) => return Eligibility::Encoded(coding),
            None => return Eligibility::Untouched,
        }
        let too_small = content_length(header).is_some_and(|len| len < self.settings.min_size);
        if too_small || !self.compressible_type(header) {
            return Eligibility::Untouched;
        }
        Eligibility::Compress
    }

    /// Whether the 200 that a 206 or 304 `header` is part of (or stands for) is compressed: its
    /// length is the one `Content-Range` gives, or unknown.
    pub fn compresses_whole_response(&self, header: &ResponseHeader) -> bool {
        let mut whole = header.clone();
        let total = header
            .headers
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, total)| total.parse::<u64>().ok());
        whole.remove_header(&http::header::CONTENT_LENGTH);
        if let (Some(total), 206) = (total, header.status.as_u16()) {
            let _ = whole.insert_header(http::header::CONTENT_LENGTH, total);
        }
        whole.set_status(200).is_ok() && self.eligibility(&whole) == Eligibility::Compress
    }

    /// The level used for `coding` when a response is stored.
    pub fn stored_level(&self, coding: Coding) -> u32 {
        match coding {
            Coding::Gzip => self.settings.gzip_level,
            Coding::Brotli => self.settings.brotli_level,
            Coding::Identity => 0,
        }
    }

    fn compressible_type(&self, header: &ResponseHeader) -> bool {
        let Some(value) = header.headers.get(http::header::CONTENT_TYPE) else {
            return false;
        };
        let Ok(value) = value.to_str() else { return false };
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.compressible_essence(&essence.to_ascii_lowercase());
        }
        self.compressible_essence(essence)
    }

    /// Whether a lower-case media type (no parameters) is one this site compresses.
    fn compressible_essence(&self, essence: &str) -> bool {
        !NEVER_COMPRESSED.contains(&essence) && self.types.iter().any(|t| t.matches(essence))
    }
}

/// A media type pattern: exact (`application/json`) or with one `*` (`text/*`, `application/*+xml`).
#[derive(Debug, Clone)]
struct TypePattern {
    prefix: String,
    suffix: Option<String>,
}

impl TypePattern {
    fn new(pattern: &str) -> TypePattern {
        let pattern = pattern.trim().to_ascii_lowercase();
        match pattern.split_once('*') {
            Some((prefix, suffix)) => TypePattern {
                prefix: prefix.to_string(),
                suffix: Some(suffix.to_string()),
            },
            None => TypePattern {
                prefix: pattern,
                suffix: None,
            },
        }
    }

    fn matches(&self, essence: &str) -> bool {
        match &self.suffix {
            None => essence == self.prefix,
            Some(suffix) => {
                essence.len() >= self.prefix.len() + suffix.len()
                    && essence.starts_with(&self.prefix)
                    && essence.ends_with(suffix.as_str())
            }
        }
    }
}

/// `Cache-Control: no-transform` forbids changing the content coding (RFC 9111 §5.2.2.6).
fn forbids_transform(header: &ResponseHeader) -> bool {
    field_list::items(&header.headers, http::header::CACHE_CONTROL)
        .any(|directive| directive.eq_ignore_ascii_case("no-transform"))
}

fn content_length(header: &ResponseHeader) -> Option<usize> {
    header
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Adds `Accept-Encoding` to the header's `Vary` unless it is listed already (or `Vary: *`).
pub fn add_vary_accept_encoding(header: &mut ResponseHeader) -> pingora::Result<()> {
    let listed = field_list::items(&header.headers, http::header::VARY)
        .any(|name| name == "*" || name.eq_ignore_ascii_case("accept-encoding"));
    if !listed {
        header.append_header(
            http::header::VARY,
            http::HeaderValue::from_static("Accept-Encoding"),
        )?;
    }
    Ok(())
}

/// Turns the header of a `from` body into the header of its `to` coding: `Content-Encoding`,
/// and an ETag suffixed for `to` (weakened when `weak`, for bodies that are not byte-stable).
/// `Content-Length` is the caller's business.
pub fn recode_header(
    header: &mut ResponseHeader,
    from: Coding,
    to: Coding,
    weak: bool,
) -> pingora::Result<()> {
    if from == to {
        return Ok(());
    }
    set_content_encoding(header, to)?;
    let etag = header
        .headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| suffixed_etag(v, to, weak));
    if let Some(etag) = etag {
        header.insert_header(http::header::ETAG, etag)?;
    }
    Ok(())
}

/// Sets `Content-Encoding` to `coding` (removes it for identity).
pub fn set_content_encoding(header: &mut ResponseHeader, coding: Coding) -> pingora::Result<()> {
    match coding.token() {
        Some(token) => header.insert_header(http::header::CONTENT_ENCODING, token)?,
        None => {
            header.remove_header(&http::header::CONTENT_ENCODING);
        }
    }
    Ok(())
}

/// `"abc"` → `"abc~gzip"` (and `W/"abc~gzip"` when `weak`); `None` for a malformed tag.
pub fn suffixed_etag(etag: &str, coding: Coding, weak: bool) -> Option<String> {
    let etag = etag.trim();
    let (was_weak, opaque) = match etag.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, etag),
    };
    let inner = opaque.strip_prefix('"')?.strip_suffix('"')?;
    let prefix = if was_weak || weak { "W/" } else { "" };
    Some(format!("{prefix}\"{inner}{}\"", coding.etag_suffix()))
}

/// A validator list (`If-None-Match`, `If-Match`, `If-Range`) with the proxy's coding suffixes
/// removed, so the origin sees its own ETags; `None` when there was nothing to remove.
pub fn origin_validators(value: &http::HeaderValue) -> Option<http::HeaderValue> {
    origin_validators_of(value, &[Coding::Identity, Coding::Gzip, Coding::Brotli])
}

/// Like [`origin_validators`], removing only the suffixes of `codings`: the tags of other
/// codings' representations stay as they are, so the origin does not match them.
pub fn origin_validators_of(value: &http::HeaderValue, codings: &[Coding]) -> Option<http::HeaderValue> {
    let text = value.to_str().ok()?;
    if !text.contains('~') {
        return None;
    }
    let mut stripped = text.to_string();
    for coding in codings {
        stripped = stripped.replace(&format!("{}\"", coding.etag_suffix()), "\"");
    }
    if stripped == text {
        return None;
    }
    http::HeaderValue::from_str(&stripped).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brotli_windows_fit_the_body() {
        // Never below 128 KiB: smaller windows get the crate's 32 MiB fallback hasher.
        assert_eq!(brotli_window_bits(0), 17);
        assert_eq!(brotli_window_bits(8 * 1024), 17);
        assert_eq!(brotli_window_bits(128 * 1024), 17);
        assert_eq!(brotli_window_bits(128 * 1024 + 1), 18);
        assert_eq!(brotli_window_bits(1 << 20), 20);
        assert_eq!(brotli_window_bits(16 << 20), 22);
        let body = b"fitted windows still round-trip ".repeat(5000);
        let encoded = Coding::Brotli.encode(&body, 11);
        assert_eq!(Coding::Brotli.decode(&encoded, body.len()).unwrap(), body);
    }

    fn policy() -> CompressionPolicy {
        CompressionPolicy::new(&CompressionSettings::default())
    }

    fn response(headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut header = ResponseHeader::build(200, None).unwrap();
        for (name, value) in headers {
            header.append_header(*name, *value).unwrap();
        }
        header
    }

    #[test]
    fn text_types_are_compressed_and_media_is_not() {
        let policy = policy();
        for ty in [
            "text/html; charset=utf-8",
            "application/json",
            "image/svg+xml",
            "application/rss+xml",
        ] {
            assert_eq!(
                policy.eligibility(&response(&[("content-type", ty)])),
                Eligibility::Compress,
                "{ty}"
            );
        }
        for ty in [
            "image/png",
            "video/mp4",
            "application/zip",
            "font/woff2",
            "text/event-stream",
        ] {
            assert_eq!(
                policy.eligibility(&response(&[("content-type", ty)])),
                Eligibility::Untouched,
                "{ty}"
            );
        }
        assert_eq!(policy.eligibility(&response(&[])), Eligibility::Untouched);
    }

    #[test]
    fn no_transform_small_and_partial_responses_are_untouched() {
        let policy = policy();
        let no_transform = response(&[
            ("content-type", "text/html"),
            ("cache-control", "max-age=60, no-transform"),
        ]);
        assert_eq!(policy.eligibility(&no_transform), Eligibility::Untouched);
        let tiny = response(&[("content-type", "text/html"), ("content-length", "10")]);
        assert_eq!(policy.eligibility(&tiny), Eligibility::Untouched);
        let mut partial = response(&[("content-type", "text/html")]);
        partial.set_status(206).unwrap();
        assert_eq!(policy.eligibility(&partial), Eligibility::Untouched);
    }

    #[test]
    fn encoded_bodies_are_recognised() {
        let policy = policy();
        let gzip = response(&[("content-type", "image/png"), ("content-encoding", "gzip")]);
        assert_eq!(policy.eligibility(&gzip), Eligibility::Encoded(Coding::Gzip));
        let deflate = response(&[("content-type", "text/html"), ("content-encoding", "deflate")]);
        assert_eq!(policy.eligibility(&deflate), Eligibility::Untouched);
    }

    #[test]
    fn codings_round_trip() {
        let text = "edge cache ".repeat(1000).into_bytes();
        for coding in [Coding::Gzip, Coding::Brotli] {
            let encoded = coding.encode(&text, 5);
            assert!(encoded.len() < text.len() / 10);
            assert_eq!(coding.decode(&encoded, 1 << 20).unwrap(), text);
            assert!(coding.decode(&encoded, 100).is_err());
            assert!(coding.decode(b"not compressed", 1 << 20).is_err());
        }
    }

    #[test]
    fn etags_get_a_suffix_per_coding_and_lose_it_towards_the_origin() {
        let mut header = response(&[("etag", "\"v1\"")]);
        recode_header(&mut header, Coding::Identity, Coding::Gzip, false).unwrap();
        assert_eq!(header.headers["etag"], "\"v1~gzip\"");
        assert_eq!(header.headers["content-encoding"], "gzip");
        let mut weak = response(&[("etag", "\"v1\"")]);
        recode_header(&mut weak, Coding::Identity, Coding::Brotli, true).unwrap();
        assert_eq!(weak.headers["etag"], "W/\"v1~br\"");
        let list = http::HeaderValue::from_static("\"v1~gzip\", W/\"v2~br\", \"v3\"");
        assert_eq!(origin_validators(&list).unwrap(), "\"v1\", W/\"v2\", \"v3\"");
        assert!(origin_validators(&http::HeaderValue::from_static("\"v3\"")).is_none());
    }

    #[test]
    fn vary_is_merged_once() {
        let mut header = response(&[("vary", "Accept-Language")]);
        add_vary_accept_encoding(&mut header).unwrap();
        add_vary_accept_encoding(&mut header).unwrap();
        let vary: Vec<_> = header.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Language", "Accept-Encoding"]);
    }
}
