//! Content codings on the request path: what the origin is asked for, which validators it
//! sees, and on-the-fly compression of responses not served from the cache (stored responses
//! are compressed once per coding: [`crate::cache::codings`]).

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
/// proxy's coding suffixes, so the origin sees its own ETags; a request that passes by the
/// cache (`cached` false) loses only the suffix of the coding it would be served, so a tag of
/// another coding's representation does not match, and its 304 is given that coding's tag.
pub fn origin_codings(
    upstream_request: &mut RequestHeader,
    cached: bool,
    ctx: &mut RequestCtx,
) -> Result<()> {
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
        let Some(value) = upstream_request.headers.get(&name) else {
            continue;
        };
        let stripped = if cached {
            compression::origin_validators(value)
        } else {
            let served = served_coding(ctx);
            let stripped = compression::origin_validators_of(value, &[served, Coding::Identity]);
            if stripped.is_some() && name == http::header::IF_NONE_MATCH {
                ctx.encoding.validator_coding = Some(served);
            }
            stripped
        };
        if let Some(value) = stripped {
            upstream_request.insert_header(name, value)?;
        }
    }
    Ok(())
}

/// The coding a compressible response streamed to this client gets: br, then gzip, then
/// identity.
fn served_coding(ctx: &RequestCtx) -> Coding {
    let accepted = ctx.encoding.accepted;
    match (ctx.encoding.compress, accepted.brotli, accepted.gzip) {
        (true, true, _) => Coding::Brotli,
        (true, false, true) => Coding::Gzip,
        _ => Coding::Identity,
    }
}

/// A 304 the origin sent for a tag whose coding suffix was removed names that tag again.
fn restore_validator_coding(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(coding) = ctx.encoding.validator_coding.filter(|c| *c != Coding::Identity) else {
        return Ok(());
    };
    let etag = resp
        .headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| compression::suffixed_etag(v, coding, true));
    if let Some(etag) = etag {
        resp.insert_header(http::header::ETAG, etag)?;
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

/// Notes whether the origin's response is one the proxy compresses, for the 206 or 304 the
/// client may get made from it.
pub fn note_origin_response(req: &RequestHeader, resp: &ResponseHeader, ctx: &mut RequestCtx) {
    // Only a `Range` or conditional request can get a 206 or 304 made from the origin's 200.
    let partial_or_conditional = [
        http::header::RANGE,
        http::header::IF_NONE_MATCH,
        http::header::IF_MODIFIED_SINCE,
    ]
    .iter()
    .any(|name| req.headers.contains_key(name));
    ctx.encoding.origin_compressible = ctx.encoding.compress
        && partial_or_conditional
        && ctx.runtime.compression.eligibility(resp) == Eligibility::Compress;
}

/// Sets up on-the-fly compression of a compressible response from the origin (misses and
/// uncacheable responses; stored responses already carry their coding), or decoding of one the
/// origin encoded in a coding the client does not accept.
pub fn start_compression(session: &Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let from_cache = matches!(
        session.cache.phase(),
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    );
    if from_cache {
        return Ok(());
    }
    let runtime = ctx.runtime.clone();
    let policy = &runtime.compression;
    if resp.status == http::StatusCode::NOT_MODIFIED {
        restore_validator_coding(resp, ctx)?;
    }
    if matches!(resp.status.as_u16(), 206 | 304) {
        // Made from a 200 (or standing for one): they say what it would vary on.
        if ctx.encoding.origin_compressible || policy.compresses_whole_response(resp) {
            compression::add_vary_accept_encoding(resp)?;
        }
        return Ok(());
    }
    let eligibility = policy.eligibility(resp);
    if let Eligibility::Encoded(coding) = eligibility {
        return start_decoding(session, resp, ctx, coding);
    }
    if !ctx.encoding.compress || eligibility != Eligibility::Compress {
        return Ok(());
    }
    compression::add_vary_accept_encoding(resp)?;
    let coding = served_coding(ctx);
    let level = match coding {
        Coding::Brotli => policy.settings.stream_brotli_level,
        Coding::Gzip => policy.settings.stream_gzip_level,
        Coding::Identity => return Ok(()),
    };
    // A range of the identity body cannot be re-encoded, and an HTTP/1.0 client cannot
    // receive a chunked stream: both get identity.
    let req = session.req_header();
    if req.headers.contains_key(http::header::RANGE) || req.version < http::Version::HTTP_11 {
        return Ok(());
    }
    recode_streamed(session, resp, Coding::Identity, coding)?;
    if session.req_header().method != http::Method::HEAD {
        ctx.encoding.encoder = compression::stream::StreamEncoder::new(coding, level);
    }
    Ok(())
}

/// Sets up decoding of a body the origin sent in `coding` for a client that does not accept
/// it (RFC 9110 §12.5.3): it gets the identity representation, as it would from the cache.
fn start_decoding(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    coding: Coding,
) -> Result<()> {
    let accepted = ctx.encoding.accepted;
    let acceptable = match coding {
        Coding::Gzip => accepted.gzip,
        Coding::Brotli => accepted.brotli,
        Coding::Identity => true,
    };
    // A range cuts the encoded bytes, which cannot be decoded on their own.
    if acceptable || session.req_header().headers.contains_key(http::header::RANGE) {
        return Ok(());
    }
    compression::add_vary_accept_encoding(resp)?;
    recode_streamed(session, resp, coding, Coding::Identity)?;
    if session.req_header().method != http::Method::HEAD {
        ctx.encoding.decoder = compression::stream::StreamDecoder::new(coding);
    }
    Ok(())
}

/// The header of a body recoded from `from` to `to` as it streams: its length is unknown.
fn recode_streamed(session: &Session, resp: &mut ResponseHeader, from: Coding, to: Coding) -> Result<()> {
    compression::recode_header(resp, from, to, true)?;
    resp.remove_header(&http::header::CONTENT_LENGTH);
    resp.remove_header(&http::header::ACCEPT_RANGES);
    if session.req_header().version >= http::Version::HTTP_11 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Compresses (or decodes) the next piece of a response as it streams through, when that was
/// started for it. A large body from a fast origin would otherwise keep the worker thread
/// compressing without a break (tokio preempts by I/O operations, not time), so the answer is
/// how long the stream pauses to let other requests run, after every few milliseconds spent.
pub fn compress_chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) -> Result<Option<Duration>> {
    let encoding = &mut ctx.encoding;
    if encoding.encoder.is_none() && encoding.decoder.is_none() {
        return Ok(None);
    }
    if body.is_none() && !end_of_stream {
        return Ok(None);
    }
    let chunk = body.as_deref().unwrap_or_default();
    let started = Instant::now();
    let recoded = match (&mut encoding.encoder, &mut encoding.decoder) {
        (Some(encoder), _) => encoder
            .encode(chunk, end_of_stream)
            .or_err(ErrorType::InternalError, "compressing the response")?,
        (None, Some(decoder)) => decoder.decode(chunk, end_of_stream).or_err(
            ErrorType::Custom("undecodable origin body"),
            "decoding the origin's response",
        )?,
        (None, None) => return Ok(None),
    };
    *body = (!recoded.is_empty()).then_some(recoded);
    if end_of_stream {
        encoding.encoder = None;
        encoding.decoder = None;
    }
    Ok(ctx.encoding.pause_after(started.elapsed()))
}
