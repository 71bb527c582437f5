//! [`MokaStorage`]: pingora's cache `Storage` on a `moka::sync::Cache`, bounded in bytes.
//!
//! Each entry holds the serialized `CacheMeta` and the whole body as one `Bytes`, so a hit is a
//! reference-count bump and Range requests are zero-copy slices. moka's weigher counts body,
//! headers and a fixed overhead, which makes `max_memory` a true bound; its per-entry expiry
//! drops an entry once it can no longer be served or revalidated. pingora's eviction manager is
//! not used: moka already evicts (TinyLFU admission, LRU eviction).

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use moka::sync::Cache;
use moka::Expiry;
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, OrErr, Result};

/// Bookkeeping bytes charged per entry on top of its body and headers (key, Arc, moka node).
const ENTRY_OVERHEAD: usize = 160;

/// One stored response.
///
/// The header is kept parsed: pingora's serialized form compresses it with zstd, and
/// decompressing and re-parsing it on every hit would cost more than the rest of the hit path.
struct Entry {
    meta: StoredMeta,
    header: ResponseHeader,
    body: Bytes,
    /// How long past insertion the entry is worth keeping.
    keep_for: Duration,
}

/// The non-header part of a `CacheMeta`.
enum StoredMeta {
    /// The common case, rebuilt with `CacheMeta::new` without any decoding: the entry's
    /// provenance and last update are its creation time.
    Fields {
        fresh_until: SystemTime,
        created: SystemTime,
        stale_while_revalidate_sec: u32,
        stale_if_error_sec: u32,
        variance: Option<HashBinary>,
        epoch_override: Option<SystemTime>,
    },
    /// Revalidated entries (whose update time or provenance differ from creation), kept in
    /// pingora's serialized form so every field survives.
    Serialized(Vec<u8>),
}

impl StoredMeta {
    fn of(meta: &CacheMeta) -> Result<StoredMeta> {
        if meta.updated() != meta.created() || meta.provenance() != meta.created() {
            return Ok(StoredMeta::Serialized(meta.serialize()?.0));
        }
        Ok(StoredMeta::Fields {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        })
    }

    fn with_header(&self, header: ResponseHeader) -> Result<CacheMeta> {
        match self {
            StoredMeta::Fields {
                fresh_until,
                created,
                stale_while_revalidate_sec,
                stale_if_error_sec,
                variance,
                epoch_override,
            } => {
                let mut meta = CacheMeta::new(
                    *fresh_until,
                    *created,
                    *stale_while_revalidate_sec,
                    *stale_if_error_sec,
                    header,
                );
                if let Some(variance) = variance {
                    meta.set_variance(*variance);
                }
                if let Some(epoch) = epoch_override {
                    meta.set_epoch_override(*epoch);
                }
                Ok(meta)
            }
            StoredMeta::Serialized(internal) => {
                let mut meta = CacheMeta::deserialize(internal, blank_header()?)?;
                *meta.response_header_mut() = header;
                Ok(meta)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            StoredMeta::Fields { .. } => std::mem::size_of::<StoredMeta>(),
            StoredMeta::Serialized(internal) => internal.len(),
        }
    }
}

impl Entry {
    fn new(meta: &CacheMeta, body: Bytes, keep_stale: Duration) -> Result<Entry> {
        Ok(Entry {
            meta: StoredMeta::of(meta)?,
            header: without_name_case(meta.response_header())?,
            body,
            keep_for: retention(meta, keep_stale),
        })
    }

    fn meta(&self) -> Result<CacheMeta> {
        self.meta.with_header(self.header.clone())
    }

    fn weight(&self) -> u32 {
        let header_bytes: usize = self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + HEADER_FIELD_OVERHEAD)
            .sum();
        let bytes = ENTRY_OVERHEAD + self.meta.len() + header_bytes + self.body.len();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// A compact copy of `header` for storage. Values are copied: pingora parses them as slices of
/// the whole upstream read buffer, which a stored entry would otherwise keep alive (kilobytes
/// per entry). The origin's header-name case is not kept: half the maps to clone on every hit,
/// and HTTP/2 clients get lower-case names anyway.
fn without_name_case(header: &ResponseHeader) -> Result<ResponseHeader> {
    let mut copy = ResponseHeader::build_no_case(header.status, Some(header.headers.len()))?;
    copy.set_version(header.version);
    if let Some(reason) = header.get_reason_phrase() {
        copy.set_reason_phrase(Some(reason))?;
    }
    for (name, value) in header.headers.iter() {
        let mut owned = http::HeaderValue::from_bytes(value.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "stored header value")?;
        owned.set_sensitive(value.is_sensitive());
        copy.append_header(name.clone(), owned)?;
    }
    Ok(copy)
}

/// Bookkeeping bytes charged per header field (map slot, name and value handles).
const HEADER_FIELD_OVERHEAD: usize = 48;

/// pingora's serialized form of an empty response header, which revalidated entries
/// deserialize instead of their stored header before the parsed one is put in its place.
fn blank_header() -> Result<&'static [u8]> {
    static BLANK: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(blank) = BLANK.get() {
        return Ok(blank);
    }
    let now = SystemTime::now();
    let blank = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, Some(0))?)
        .serialize()?
        .1;
    Ok(BLANK.get_or_init(|| blank))
}

/// How long an entry stays: until it is past freshness and both stale windows, plus
/// `keep_stale`, during which it can still be revalidated (304) or served to `max-stale`.
fn retention(meta: &CacheMeta, keep_stale: Duration) -> Duration {
    let now = SystemTime::now();
    let fresh_for = meta.fresh_until().duration_since(now).unwrap_or_default();
    let stale_window = meta.stale_while_revalidate_sec().max(meta.stale_if_error_sec());
    fresh_for + Duration::from_secs(stale_window.into()) + keep_stale
}

struct EntryExpiry;

impl Expiry<HashBinary, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &HashBinary, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.keep_for)
    }

    fn expire_after_update(
        &self,
        _: &HashBinary,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep_for)
    }
}

/// The in-memory cache storage. Create one per process and leak it (`&'static` is required by
/// pingora-cache).
pub struct MokaStorage {
    entries: Cache<HashBinary, Arc<Entry>>,
    keep_stale: Duration,
}

impl MokaStorage {
    /// A storage holding at most `max_bytes`; entries with validators are kept `keep_stale` past
    /// their stale windows for revalidation.
    pub fn new(max_bytes: u64, keep_stale: Duration) -> MokaStorage {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, entry: &Arc<Entry>| entry.weight())
            .expire_after(EntryExpiry)
            .build();
        MokaStorage { entries, keep_stale }
    }

    /// Leaks a new storage so it can be handed to pingora.
    pub fn leak(max_bytes: u64, keep_stale: Duration) -> &'static MokaStorage {
        Box::leak(Box::new(MokaStorage::new(max_bytes, keep_stale)))
    }

    /// Removes the primary entry of a key, which also invalidates all its Vary variants
    /// (pingora treats variants older than the primary as misses). Returns whether it existed.
    pub fn invalidate(&self, key: &CacheKey) -> bool {
        self.entries.remove(&key.primary_bin()).is_some()
    }

    /// Number of stored entries (eventually consistent).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Bytes charged against `max_memory` (eventually consistent).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    fn replace_meta(&self, hash: HashBinary, meta: &CacheMeta) -> Result<bool> {
        let Some(old) = self.entries.get(&hash) else {
            return Ok(false);
        };
        let entry = Entry::new(meta, old.body.clone(), self.keep_stale)?;
        self.entries.insert(hash, Arc::new(entry));
        Ok(true)
    }
}

#[async_trait]
impl Storage for MokaStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.entries.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = entry.meta()?;
        let hit = BodyHit {
            end: entry.body.len(),
            body: entry.body.clone(),
            start: 0,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(BodyFill {
            storage: self,
            hash: key.combined_bin(),
            entry: Entry::new(meta, Bytes::new(), self.keep_stale)?,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _: PurgeType,
        _: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let removed = self.entries.remove(&target.key().combined_bin());
        Ok(if removed.is_some() {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn expire(&'static self, target: PurgeTarget<'_>, _: &SpanHandle) -> Result<PurgeOutcome> {
        let hash = target.key().combined_bin();
        let Some(entry) = self.entries.get(&hash) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut meta = entry.meta()?;
        meta.expire_at(SystemTime::now());
        self.replace_meta(hash, &meta)?;
        Ok(PurgeOutcome::Expired)
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _: &SpanHandle) -> Result<bool> {
        self.replace_meta(key.combined_bin(), meta)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Serves a stored body, whole or as seeked ranges.
struct BodyHit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for BodyHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _: &'static (dyn Storage + Sync),
        _: &CacheKey,
        _: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    /// Positions the handler on `start..end` (end exclusive, clamped); each seek allows one
    /// more read, so one handler serves every part of a multipart range.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body of {} bytes", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |end| end.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a body from the origin and publishes the entry when it completes.
struct BodyFill {
    storage: &'static MokaStorage,
    hash: HashBinary,
    /// The entry to publish, without its body yet.
    entry: Entry,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for BodyFill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        let entry = Entry {
            body: self.body.freeze(),
            ..self.entry
        };
        self.storage.entries.insert(self.hash, Arc::new(entry));
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use pingora::http::ResponseHeader;

    fn meta(fresh_for: u64) -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("etag", "\"v1\"").unwrap();
        CacheMeta::new(now + Duration::from_secs(fresh_for), now, 0, 0, header)
    }

    async fn store(storage: &'static MokaStorage, key: &CacheKey, body: &'static [u8]) {
        let span = Span::inactive().handle();
        let mut fill = storage.get_miss_handler(key, &meta(60), &span).await.unwrap();
        fill.write_body(Bytes::from_static(body), true).await.unwrap();
        fill.finish().await.unwrap();
    }

    #[tokio::test]
    async fn stored_body_is_found_and_seekable() {
        let storage = MokaStorage::leak(1 << 20, Duration::ZERO);
        let key = CacheKey::new("k", "");
        store(storage, &key, b"hello world").await;
        let (_, mut hit) = storage
            .lookup(&key, &Span::inactive().handle())
            .await
            .unwrap()
            .unwrap();
        hit.seek(6, Some(11)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "world");
        assert!(hit.read_body().await.unwrap().is_none());
        assert!(hit.seek(11, None).is_err());
    }

    #[tokio::test]
    async fn memory_bound_is_respected() {
        let storage = MokaStorage::leak(64 * 1024, Duration::ZERO);
        for i in 0..64 {
            let key = CacheKey::new(format!("k{i}"), "");
            store(storage, &key, &[b'x'; 4096]).await;
        }
        assert!(
            storage.weighted_size() <= 64 * 1024,
            "{}",
            storage.weighted_size()
        );
    }

    #[tokio::test]
    async fn update_meta_and_expire_rewrite_the_entry() {
        let storage = MokaStorage::leak(1 << 20, Duration::from_secs(60));
        let key = CacheKey::new("k", "");
        store(storage, &key, b"body").await;
        let span = Span::inactive().handle();
        assert!(storage.update_meta(&key, &meta(600), &span).await.unwrap());
        let compact = key.to_compact();
        let outcome = storage
            .expire(PurgeTarget::Active(&compact), &span)
            .await
            .unwrap();
        assert!(matches!(outcome, PurgeOutcome::Expired));
        let (found, _) = storage.lookup(&key, &span).await.unwrap().unwrap();
        assert!(!found.is_fresh(SystemTime::now()));
        assert!(storage.invalidate(&key));
        assert!(storage.lookup(&key, &span).await.unwrap().is_none());
    }
}
