//! Content codings on the request path: what the origin is asked for, which validators it
//! sees, and on-the-fly compression of responses not served from the cache (stored responses
//! are compressed once, when stored: [`crate::cache::codings`]).

use pingora::cache::{CacheMeta, CachePhase};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::{ErrorType, OrErr, Result};

use super::ctx::RequestCtx;
use crate::compression::{self, Coding, Eligibility};

/// What the origin is asked for: identity when the proxy compresses (so one fetch serves every
/// client), else the client's acceptable codings in normalised form. Validators lose the
/// proxy's coding suffixes, so the origin sees its own ETags.
pub fn origin_codings(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let accept_encoding = http::header::ACCEPT_ENCODING;
    let normalized = ctx.encoding.accepted.header_value();
    if ctx.encoding.compress || normalized.is_empty() {
        upstream_request.remove_header(&accept_encoding);
    } else {
        upstream_request.insert_header(accept_encoding, normalized)?;
    }
    for name in [
        http::header::IF_NONE_MATCH,
        http::header::IF_MATCH,
        http::header::IF_RANGE,
    ] {
        let stripped = upstream_request
            .headers
            .get(&name)
            .and_then(compression::origin_validators);
        if let Some(value) = stripped {
            upstream_request.insert_header(name, value)?;
        }
    }
    Ok(())
}

/// A 304 revalidating a stored coding carries the origin's ETag; the stored coding keeps its
/// own (suffixed) one, so the merged header still names the coding served.
pub fn keep_stored_etag(not_modified: &mut ResponseHeader, stored: Option<&CacheMeta>) {
    let Some(stored_etag) = stored.and_then(|m| m.headers().get(http::header::ETAG)) else {
        return;
    };
    let Some(origin_form) = compression::origin_validators(stored_etag) else {
        return;
    };
    let opaque = |v: &http::HeaderValue| v.as_bytes().strip_prefix(b"W/").unwrap_or(v.as_bytes()).to_vec();
    let same_tag = not_modified
        .headers
        .get(http::header::ETAG)
        .is_some_and(|etag| opaque(etag) == opaque(&origin_form));
    if same_tag {
        not_modified.remove_header(&http::header::ETAG);
    }
}

/// Sets up on-the-fly compression of a compressible response from the origin (misses and
/// uncacheable responses; stored responses already carry their coding).
pub fn start_compression(session: &Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let from_cache = matches!(
        session.cache.phase(),
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    );
    if !ctx.encoding.compress || from_cache {
        return Ok(());
    }
    let runtime = ctx.runtime.clone();
    let policy = &runtime.compression;
    if policy.eligibility(resp) != Eligibility::Compress {
        return Ok(());
    }
    compression::add_vary_accept_encoding(resp)?;
    let accepted = ctx.encoding.accepted;
    let (coding, level) = if accepted.brotli {
        (Coding::Brotli, policy.settings.stream_brotli_level)
    } else if accepted.gzip {
        (Coding::Gzip, policy.settings.stream_gzip_level)
    } else {
        return Ok(());
    };
    // A range of the identity body cannot be re-encoded, and an HTTP/1.0 client cannot
    // receive a chunked stream: both get identity.
    let req = session.req_header();
    if req.headers.contains_key(http::header::RANGE) || req.version < http::Version::HTTP_11 {
        return Ok(());
    }
    compression::recode_header(resp, Coding::Identity, coding, true)?;
    resp.remove_header(&http::header::CONTENT_LENGTH);
    resp.remove_header(&http::header::ACCEPT_RANGES);
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    if session.req_header().method != http::Method::HEAD {
        ctx.encoding.encoder = compression::stream::StreamEncoder::new(coding, level);
    }
    Ok(())
}

/// Compresses the next piece of a response as it streams through (when compression was
/// started for it). A large body from a fast origin would otherwise keep the worker thread
/// compressing without a break (tokio preempts by I/O operations, not time), so the answer is
/// how long the stream pauses to let other requests run, after every few milliseconds spent.
pub fn compress_chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) -> Result<Option<Duration>> {
    let Some(encoder) = ctx.encoding.encoder.as_mut() else {
        return Ok(None);
    };
    if body.is_none() && !end_of_stream {
        return Ok(None);
    }
    let chunk = body.as_deref().unwrap_or_default();
    let started = Instant::now();
    let encoded = encoder
        .encode(chunk, end_of_stream)
        .or_err(ErrorType::InternalError, "compressing the response")?;
    *body = (!encoded.is_empty()).then_some(encoded);
    if end_of_stream {
        ctx.encoding.encoder = None;
    }
    Ok(ctx.encoding.pause_after(started.elapsed()))
}
