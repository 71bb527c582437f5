//! [`MokaStorage`]: pingora's cache `Storage` on a `moka::sync::Cache`, bounded in bytes.
//!
//! Each entry holds the `CacheMeta` fields and the response's stored codings
//! ([`StoredCodings`]), each body one `Bytes`, so a hit is a reference-count bump and Range requests
//! are zero-copy slices. A compressed coding is derived when the entry is stored (the one its
//! filling client was served) or when a client first accepts it, off the event loop for large
//! bodies, and a fast first-pass brotli body is recompressed at maximum quality by a background
//! thread once it is served. moka's weigher counts body,
//! headers, key, the entry and a fixed estimate of moka's own per-entry structures, which makes
//! `max_memory` a bound (for 1 KiB objects the process grows about 12 % more than is charged:
//! moka's part is larger than the estimate, and allocations round up); its per-entry expiry
//! drops an entry once it can no longer be served or revalidated. pingora's eviction manager is
//! not used: moka already evicts (TinyLFU admission, LRU eviction), and a full cache admits only
//! keys that missed recently ([`super::admission`]).

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use moka::sync::Cache;
use moka::Expiry;
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, HitHandler, MissHandler, PurgeType, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::admission::{expected_entries, Admission};
use super::codings::{self, Representation, StoredCodings};
use super::fill_budget::{FillBudget, Reservation};
use super::purge_log::PurgeScope;
use super::purge_log::{FillStart, FillTarget, PurgeLog};
use super::sketch::{self, PlaceholderWeight};
use crate::compression::{Accepted, Coding, CompressionPolicy, Eligibility};
use crate::config::CompressionSettings;
use crate::lazy_thread::LazyThread;

/// Bookkeeping bytes charged per entry on top of its bodies, headers and key: the entry itself,
/// its `Arc` counts, and an estimate of moka's structures for it (hash-table slot, key, entry
/// information, LRU and expiry nodes), which measure nearer 300 bytes than 144: charging all of
/// it would hold about 2 % fewer 8 KiB objects.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + 144;

/// Entry weights are rounded up to this many bytes. moka admits a new entry to a full cache
/// only if it is asked for more often than the victims that make room for it; with exact byte
/// weights, an entry a byte heavier than the least recently used one (its key one digit longer)
/// needs a second victim, whose count adds up against it. Equal units make one victim of about
/// the same size enough, for at most 31 bytes per entry.
const WEIGHT_UNIT: usize = 32;

/// One stored response.
///
/// Headers are kept parsed: pingora's serialized form compresses them with zstd, and
/// decompressing and re-parsing on every hit would cost more than the rest of the hit path.
struct Entry {
    meta: StoredMeta,
    codings: StoredCodings,
    /// The cache key's primary bytes (scheme, host, path), for purges by URL, prefix and host.
    primary: Box<[u8]>,
    /// Purge tags from the origin's `Surrogate-Key` / `Cache-Tag`.
    tags: Box<[Box<str>]>,
    /// When the entry stops being worth keeping.
    expires_at: Instant,
    /// The brotli body was queued for background recompression.
    upgrade_queued: AtomicBool,
    /// A request is deriving a pending coding of this entry: others serve what is stored.
    deriving: AtomicBool,
}

/// The non-header part of a `CacheMeta`.
#[derive(Clone)]
enum StoredMeta {
    /// The common case, rebuilt with `CacheMeta::new` without any decoding: the entry's
    /// provenance and last update are its creation time.
    Fields {
        fresh_until: SystemTime,
        created: SystemTime,
        stale_while_revalidate_sec: u32,
        stale_if_error_sec: u32,
        /// Set for responses that vary on request headers other than `Accept-Encoding` (rare:
        /// boxed, so other entries do not carry its room).
        variance: Option<Box<HashBinary>>,
        /// Set whenever the response arrived with an age (its `Date` is in the past).
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
            variance: meta.variance().map(Box::new),
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
                    meta.set_variance(**variance);
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

    /// Heap bytes held beyond the entry itself.
    fn len(&self) -> usize {
        match self {
            StoredMeta::Fields { variance: None, .. } => 0,
            StoredMeta::Fields {
                variance: Some(_), ..
            } => std::mem::size_of::<HashBinary>(),
            StoredMeta::Serialized(internal) => internal.len(),
        }
    }
}

impl Entry {
    /// A revalidated or soft-purged `old` entry with a new meta and codings.
    fn replacing(
        old: &Entry,
        meta: &CacheMeta,
        codings: StoredCodings,
        keep_stale: Duration,
    ) -> Result<Entry> {
        Ok(Entry {
            meta: StoredMeta::of(meta)?,
            codings,
            primary: old.primary.clone(),
            tags: old.tags.clone(),
            expires_at: Instant::now() + retention(meta, keep_stale),
            upgrade_queued: AtomicBool::new(old.upgrade_queued.load(Ordering::Relaxed)),
            deriving: AtomicBool::new(false),
        })
    }

    /// The same entry with other codings (same freshness and lifetime).
    fn with_codings(&self, codings: StoredCodings) -> Entry {
        Entry {
            meta: self.meta.clone(),
            codings,
            primary: self.primary.clone(),
            tags: self.tags.clone(),
            expires_at: self.expires_at,
            upgrade_queued: AtomicBool::new(false),
            deriving: AtomicBool::new(false),
        }
    }

    /// An empty entry, for [`sketch::size_for`].
    fn placeholder() -> Entry {
        let header = ResponseHeader::from(http::Response::new(()).into_parts().0);
        Entry {
            meta: StoredMeta::Serialized(Vec::new()),
            codings: StoredCodings::single(header, Bytes::new()),
            primary: Box::default(),
            tags: Box::default(),
            expires_at: Instant::now() + Duration::from_secs(3600),
            upgrade_queued: AtomicBool::new(false),
            deriving: AtomicBool::new(false),
        }
    }

    /// The entry's meta, served with `representation`'s header.
    fn meta(&self, representation: &Representation) -> Result<CacheMeta> {
        self.meta.with_header(representation.header()?)
    }

    /// Bytes charged against `max_memory`, in whole [`WEIGHT_UNIT`]s.
    fn weight(&self) -> u32 {
        let tag_bytes: usize = self.tags.iter().map(|t| t.len() + 16).sum();
        let bytes = ENTRY_OVERHEAD + self.meta.len() + self.codings.weight() + self.primary.len() + tag_bytes;
        u32::try_from(bytes.next_multiple_of(WEIGHT_UNIT)).unwrap_or(u32::MAX)
    }
}

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
    fn expire_after_create(&self, _: &HashBinary, entry: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &HashBinary,
        entry: &Arc<Entry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(now))
    }
}

/// The in-memory cache storage. Create one per process and leak it (`&'static` is required by
/// pingora-cache).
pub struct MokaStorage {
    entries: Cache<HashBinary, Arc<Entry>>,
    keep_stale: Duration,
    /// How stored responses are compressed; replaced on reload.
    compression: ArcSwap<CompressionPolicy>,
    /// Bound on a decoded body (origin gzip or brotli decoded for identity clients).
    max_decoded: usize,
    /// Queue of entries whose brotli body the background thread recompresses.
    upgrades: Option<SyncSender<HashBinary>>,
    /// The thread that does the recompression, started when the first entry is queued.
    upgrader: std::sync::OnceLock<crate::lazy_thread::LazyThread>,
    /// Entries evicted to stay within the memory bound.
    evictions: Arc<AtomicU64>,
    /// Recent purges, so fills that started before them are not stored.
    purges: PurgeLog,
    /// Bound on the bodies being collected by fills in flight.
    fills: &'static FillBudget,
    /// Which responses a full cache stores.
    admission: Admission,
}

/// The purge tags a response carries: `Surrogate-Key` (space separated) and `Cache-Tag`
/// (comma separated) values.
pub fn response_tags(header: &ResponseHeader) -> Vec<Box<str>> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for name in TAG_HEADERS {
        for value in header.headers.get_all(&name) {
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split([' ', ',']).map(str::trim).filter(|t| !t.is_empty()) {
                if !tags.iter().any(|t| **t == *tag) {
                    tags.push(tag.into());
                }
            }
        }
    }
    tags
}

/// Response headers carrying purge tags; they are stripped before responses reach clients.
pub const TAG_HEADERS: [http::HeaderName; 2] = [
    http::HeaderName::from_static("surrogate-key"),
    http::HeaderName::from_static("cache-tag"),
];

/// Entries waiting for background brotli recompression; more are skipped, not queued.
const UPGRADE_QUEUE: usize = 256;

/// Bodies up to this size are compressed on the event loop: handing them to a blocking thread
/// would cost more than the compression.
const INLINE_COMPRESSION_MAX: usize = 4 * 1024;

impl MokaStorage {
    /// A storage holding at most `max_bytes`; entries with validators are kept `keep_stale` past
    /// their stale windows for revalidation. Compression uses the default policy until
    /// [`MokaStorage::with_compression`].
    pub fn new(max_bytes: u64, keep_stale: Duration) -> MokaStorage {
        let evictions = Arc::new(AtomicU64::new(0));
        let evicted = evictions.clone();
        let weights = Arc::new(PlaceholderWeight::default());
        let weigher_weights = weights.clone();
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_, entry: &Arc<Entry>| weigher_weights.or_else(|| entry.weight()))
            .expire_after(EntryExpiry)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        sketch::size_for(
            &entries,
            &weights,
            &Arc::new(Entry::placeholder()),
            expected_entries(max_bytes),
        );
        evictions.store(0, Ordering::Relaxed);
        MokaStorage {
            evictions,
            entries,
            keep_stale,
            compression: ArcSwap::from_pointee(CompressionPolicy::new(&CompressionSettings::default())),
            max_decoded: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            upgrades: None,
            upgrader: std::sync::OnceLock::new(),
            purges: PurgeLog::default(),
            fills: Box::leak(Box::new(FillBudget::new(
                usize::try_from(max_bytes).unwrap_or(usize::MAX),
            ))),
            admission: Admission::new(max_bytes),
        }
    }

    /// Sets how stored responses are compressed; decoded origin bodies are bounded by
    /// `max_decoded` bytes.
    pub fn with_compression(mut self, policy: CompressionPolicy, max_decoded: usize) -> MokaStorage {
        self.compression = ArcSwap::from_pointee(policy);
        self.max_decoded = max_decoded;
        self
    }

    /// Replaces the compression policy for responses stored from now on.
    pub fn set_compression(&self, policy: CompressionPolicy) {
        self.compression.store(Arc::new(policy));
    }

    /// Leaks the storage so it can be handed to pingora, with a background brotli
    /// recompression thread (started on first use) when the policy asks for one.
    pub fn leak(mut self) -> &'static MokaStorage {
        let (sender, receiver) = sync_channel(UPGRADE_QUEUE);
        let policy = self.compression.load();
        let upgrading = policy.settings.brotli_background_level > policy.settings.brotli_level;
        drop(policy);
        if upgrading {
            self.upgrades = Some(sender);
        }
        let storage: &'static MokaStorage = Box::leak(Box::new(self));
        if upgrading {
            let thread = LazyThread::new("edgecache-brotli", move || storage.run_upgrades(receiver));
            let _ = storage.upgrader.set(thread);
        }
        storage
    }

    /// Removes the primary entry of a key, which also invalidates all its Vary codings
    /// (pingora treats codings older than the primary as misses). Returns whether it existed.
    pub fn invalidate(&self, key: &CacheKey) -> bool {
        self.purges.purged_key(key.primary_bin());
        self.entries.remove(&key.primary_bin()).is_some()
    }

    /// Number of stored entries (eventually consistent).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// `max_memory`: the most bytes the entries may weigh.
    pub fn max_bytes(&self) -> u64 {
        self.entries.policy().max_capacity().unwrap_or(u64::MAX)
    }

    /// Whether an entry of `weight` is stored: always while it fits, else only if its key had
    /// `missed_before` recently (see [`Admission`]).
    fn admits(&self, missed_before: bool, weight: u32) -> bool {
        missed_before || self.entries.weighted_size() + u64::from(weight) <= self.max_bytes()
    }

    /// Bytes charged against `max_memory` (eventually consistent).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// Stores a new meta for an entry. `served` is the coding whose header `meta` carries
    /// (after a revalidation); `None` keeps every coding's header and changes freshness only.
    fn replace_meta(&self, hash: HashBinary, meta: &CacheMeta, served: Option<Coding>) -> Result<bool> {
        let Some(old) = self.entries.get(&hash) else {
            return Ok(false);
        };
        let codings = match served {
            Some(coding) => old.codings.with_header(meta.response_header(), coding)?,
            None => old.codings.clone(),
        };
        let entry = Entry::replacing(&old, meta, codings, self.keep_stale)?;
        self.entries.insert(hash, Arc::new(entry));
        Ok(true)
    }

    /// Purges every entry in `scope` (all Vary codings and codings of each URL): deletes them
    /// (`soft = false`) or marks them stale (`soft = true`), so the next request revalidates
    /// while stale-if-error still covers an origin failure. Returns how many entries it touched.
    pub fn purge_scope(&self, scope: &PurgeScope, soft: bool) -> usize {
        self.purges.purged_scope(scope);
        let matching: Vec<HashBinary> = self
            .entries
            .iter()
            .filter(|(_, entry)| scope.matches(&entry.primary, &entry.tags))
            .map(|(hash, _)| *hash)
            .collect();
        let mut touched = 0;
        for hash in matching {
            let done = if soft {
                self.expire_now(hash).unwrap_or(false)
            } else {
                self.entries.remove(&hash).is_some()
            };
            touched += usize::from(done);
        }
        touched
    }

    /// Marks an entry stale now, keeping it for revalidation and stale-if-error.
    fn expire_now(&self, hash: HashBinary) -> Result<bool> {
        let Some(entry) = self.entries.get(&hash) else {
            return Ok(false);
        };
        let mut meta = entry.meta(&entry.codings.primary)?;
        meta.expire_at(SystemTime::now());
        self.replace_meta(hash, &meta, None)
    }

    /// Bytes held by fills in flight now, and the most held at once since start.
    pub fn fill_bytes(&self) -> (usize, usize) {
        (self.fills.used(), self.fills.peak())
    }

    /// Entries removed to stay within `max_memory`, since start (after moka's pending
    /// maintenance, which is where evictions happen).
    pub fn evictions(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.evictions.load(Ordering::Relaxed)
    }

    /// Queues an entry for background brotli recompression, once.
    fn queue_upgrade(&self, hash: HashBinary, entry: &Entry) {
        let Some(upgrades) = &self.upgrades else { return };
        if entry.codings.brotli_upgradable && !entry.upgrade_queued.swap(true, Ordering::Relaxed) {
            if let Some(thread) = self.upgrader.get() {
                thread.ensure_started();
            }
            // A full queue skips the upgrade: the fast brotli body stays, which is fine.
            let _ = upgrades.try_send(hash);
        }
    }

    /// The background thread: recompresses queued brotli bodies at maximum quality and swaps
    /// them in, unless the entry changed meanwhile.
    fn run_upgrades(&'static self, queue: Receiver<HashBinary>) {
        while let Ok(hash) = queue.recv() {
            let level = self.compression.load().settings.brotli_background_level;
            let Some(entry) = self.entries.get(&hash) else {
                continue;
            };
            let body = Coding::Brotli.encode(&entry.codings.primary.body, level);
            let Ok(codings) = entry.codings.with_final_brotli(Bytes::from(body)) else {
                continue;
            };
            self.swap(hash, &entry, Arc::new(entry.with_codings(codings)));
        }
    }

    /// Replaces the entry of `hash` by `new` if it is still `old` (not revalidated, purged or
    /// refetched meanwhile).
    fn swap(&self, hash: HashBinary, old: &Arc<Entry>, new: Arc<Entry>) {
        self.entries
            .entry(hash)
            .and_compute_with(|current| match current {
                Some(current) if Arc::ptr_eq(current.value(), old) => moka::ops::compute::Op::Put(new),
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// `entry` with the pending `coding` encoded, stored in its place; `None` when another
    /// request is already deriving one of its codings (this one is served what is stored).
    async fn derive(
        &'static self,
        hash: HashBinary,
        entry: &Arc<Entry>,
        coding: Coding,
    ) -> Option<Arc<Entry>> {
        if entry.deriving.swap(true, Ordering::Relaxed) {
            return None;
        }
        let policy = self.compression.load_full();
        let codings = if entry.codings.primary.body.len() <= INLINE_COMPRESSION_MAX {
            entry.codings.derived(coding, &policy)
        } else {
            let _turn = compression_turns().acquire().await;
            let from = entry.clone();
            tokio::task::spawn_blocking(move || from.codings.derived(coding, &policy))
                .await
                .unwrap_or_else(|e| Error::e_explain(ErrorType::InternalError, e.to_string()))
        };
        let Ok(codings) = codings else {
            entry.deriving.store(false, Ordering::Relaxed);
            return None;
        };
        let derived = Arc::new(entry.with_codings(codings));
        self.swap(hash, entry, derived.clone());
        Some(derived)
    }

    /// The stored codings of a complete response filled for a client accepting `filled_for`,
    /// compressed off the event loop when large.
    async fn codings_of(
        &'static self,
        header: ResponseHeader,
        body: Bytes,
        eligibility: Eligibility,
        filled_for: Accepted,
    ) -> StoredCodings {
        if eligibility == Eligibility::Untouched {
            return StoredCodings::single(header, body);
        }
        let policy = self.compression.load_full();
        if body.len() <= INLINE_COMPRESSION_MAX {
            return StoredCodings::build(header, body, eligibility, &policy, self.max_decoded, filled_for);
        }
        let fallback = (header.clone(), body.clone());
        let max_decoded = self.max_decoded;
        // One compression per core at a time: each holds encoder state, and every extra
        // blocking thread keeps its own allocator pages.
        let _turn = compression_turns().acquire().await;
        tokio::task::spawn_blocking(move || {
            StoredCodings::build(header, body, eligibility, &policy, max_decoded, filled_for)
        })
        .await
        .unwrap_or_else(|_| StoredCodings::single(fallback.0, fallback.1))
    }
}

#[async_trait]
impl Storage for MokaStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        let Some(mut entry) = self.entries.get(&hash) else {
            return Ok(None);
        };
        let (_, accepted) = codings::parse_user_tag(key.user_tag());
        if let Some(coding) = entry.codings.to_derive(accepted) {
            if let Some(derived) = self.derive(hash, &entry, coding).await {
                entry = derived;
            }
        }
        let representation = entry.codings.select(accepted);
        if representation.coding == Coding::Brotli {
            self.queue_upgrade(hash, &entry);
        }
        let meta = entry.meta(representation)?;
        let hit = BodyHit {
            end: representation.body.len(),
            body: representation.body.clone(),
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
        let (compress, filled_for) = codings::parse_user_tag(key.user_tag());
        let eligibility = if compress {
            self.compression.load().eligibility(meta.response_header())
        } else {
            Eligibility::Untouched
        };
        Ok(Box::new(BodyFill {
            storage: self,
            started: fill_start(key),
            primary_hash: key.primary_bin(),
            hash: key.combined_bin(),
            missed_before: self.admission.missed_before(&key.combined_bin()),
            meta: StoredMeta::of(meta)?,
            // Packed (copied out of the upstream read buffer, names lower-cased) when stored.
            header: meta.response_header().clone(),
            expires_at: Instant::now() + retention(meta, self.keep_stale),
            eligibility,
            filled_for,
            primary: key.primary_key().into(),
            tags: response_tags(meta.response_header()).into(),
            body: BytesMut::new(),
            reservation: Reservation::default(),
            abandoned: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _: PurgeType,
        _: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        self.purges.purged_key(target.key().primary);
        let removed = self.entries.remove(&target.key().combined_bin());
        Ok(if removed.is_some() {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn expire(&'static self, target: PurgeTarget<'_>, _: &SpanHandle) -> Result<PurgeOutcome> {
        self.purges.purged_key(target.key().primary);
        if self.expire_now(target.key().combined_bin())? {
            Ok(PurgeOutcome::Expired)
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    /// After a revalidation: `meta` carries the header of the coding the request was served,
    /// which is the one it selects again.
    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _: &SpanHandle) -> Result<bool> {
        let hash = key.combined_bin();
        let (_, accepted) = codings::parse_user_tag(key.user_tag());
        let Some(entry) = self.entries.get(&hash) else {
            return Ok(false);
        };
        let target = FillTarget {
            primary_hash: key.primary_bin(),
            primary: &entry.primary,
            tags: &entry.tags,
        };
        if self.purges.purged_since(fill_start(key), &target) {
            // Purged while being revalidated: the purge stands.
            return Ok(false);
        }
        let served = entry.codings.select(accepted).coding;
        self.replace_meta(hash, meta, Some(served))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Stored responses compressed at once on the blocking pool: one per core.
fn compression_turns() -> &'static tokio::sync::Semaphore {
    static TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    TURNS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// When the fill for `key` started fetching from the origin; now when the proxy did not say.
fn fill_start(key: &CacheKey) -> Instant {
    key.extensions
        .get::<FillStart>()
        .and_then(FillStart::started)
        .unwrap_or_else(Instant::now)
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

/// Collects a body from the origin and publishes the entry, with its codings, when it completes.
struct BodyFill {
    storage: &'static MokaStorage,
    /// When the request started fetching from the origin.
    started: Instant,
    primary_hash: HashBinary,
    hash: HashBinary,
    /// The key had missed recently before this fill: stored even when the cache is full.
    missed_before: bool,
    meta: StoredMeta,
    header: ResponseHeader,
    expires_at: Instant,
    eligibility: Eligibility,
    /// What the client whose request fills the entry accepts: its coding is stored at once.
    filled_for: Accepted,
    primary: Box<[u8]>,
    tags: Box<[Box<str>]>,
    body: BytesMut,
    /// The body's share of the fill budget.
    reservation: Reservation,
    /// The body did not fit in the fill budget: it streams through and is not stored.
    abandoned: bool,
}

#[async_trait]
impl HandleMiss for BodyFill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.abandoned {
            return Ok(());
        }
        if !self.storage.fills.take(&mut self.reservation, data.len()) {
            tracing::debug!("fills in flight hold the whole budget: this response is not stored");
            self.abandoned = true;
            self.body = BytesMut::new();
            self.reservation.release();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        if self.abandoned {
            return Ok(MissFinishType::Created(0));
        }
        let target = FillTarget {
            primary_hash: self.primary_hash,
            primary: &self.primary,
            tags: &self.tags,
        };
        if self.storage.purges.purged_since(self.started, &target) {
            tracing::debug!("a purge came while this response was fetched: not stored");
            return Ok(MissFinishType::Created(size));
        }
        let codings = self
            .storage
            .codings_of(
                self.header,
                stored_body(self.body),
                self.eligibility,
                self.filled_for,
            )
            .await;
        let entry = Entry {
            meta: self.meta,
            codings,
            primary: self.primary,
            tags: self.tags,
            expires_at: self.expires_at,
            upgrade_queued: AtomicBool::new(false),
            deriving: AtomicBool::new(false),
        };
        if !self.storage.admits(self.missed_before, entry.weight()) {
            tracing::debug!("cache full and the key missed only once recently: not stored");
            return Ok(MissFinishType::Created(size));
        }
        self.storage.entries.insert(self.hash, Arc::new(entry));
        Ok(MissFinishType::Created(size))
    }
}

/// A filled body as it is stored. Its buffer grew by doubling as the chunks came in and the
/// weigher counts only its length, so a buffer with much spare room is copied into one of its
/// exact size: otherwise `max_memory` could be exceeded by up to half of each body.
fn stored_body(body: BytesMut) -> Bytes {
    if body.capacity() - body.len() > body.len() / 8 {
        Bytes::copy_from_slice(&body)
    } else {
        body.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use pingora::http::ResponseHeader;

    #[test]
    fn an_entry_and_its_reference_counts_fit_one_256_byte_allocation() {
        // jemalloc's size classes step from 256 to 320 bytes: every stored object pays the
        // class its entry lands in.
        let counts = 2 * std::mem::size_of::<usize>();
        assert!(
            std::mem::size_of::<Entry>() + counts <= 256,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn a_filled_body_keeps_no_spare_room() {
        let mut grown = BytesMut::new();
        for chunk in [&[1u8; 3000][..], &[2u8; 3000], &[3u8; 3000]] {
            grown.extend_from_slice(chunk);
        }
        assert!(
            grown.capacity() > 9000 + 9000 / 8,
            "the buffer grew past the body"
        );
        let stored = stored_body(grown.clone()).try_into_mut().unwrap();
        assert_eq!((stored.len(), stored.capacity()), (9000, 9000));
        assert_eq!(&stored[..], &grown[..]);
        let mut exact = BytesMut::with_capacity(1000);
        exact.extend_from_slice(&[7u8; 990]);
        let pointer = exact.as_ptr();
        assert_eq!(
            stored_body(exact).as_ptr(),
            pointer,
            "a snug buffer is kept as it is"
        );
    }

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
        let storage = MokaStorage::new(1 << 20, Duration::ZERO).leak();
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
        let storage = MokaStorage::new(64 * 1024, Duration::ZERO).leak();
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
    async fn a_full_cache_stores_a_key_on_its_second_miss_only() {
        let storage = MokaStorage::new(64 * 1024, Duration::ZERO).leak();
        for i in 0..32 {
            store(storage, &CacheKey::new(format!("k{i}"), ""), &[b'x'; 4096]).await;
        }
        storage.entries.run_pending_tasks();
        assert!(storage.weighted_size() > 48 * 1024, "the cache is full");
        let newcomer = CacheKey::new("newcomer", "");
        // Looked up often (so moka's own frequency-based admission would take it), but never
        // filled: the first fill still counts as the key's first miss.
        for _ in 0..8 {
            assert!(!is_stored(storage, &newcomer).await);
        }
        store(storage, &newcomer, &[b'y'; 4096]).await;
        storage.entries.run_pending_tasks();
        assert!(
            !is_stored(storage, &newcomer).await,
            "first miss on a full cache: not stored"
        );
        store(storage, &newcomer, &[b'y'; 4096]).await;
        storage.entries.run_pending_tasks();
        assert!(is_stored(storage, &newcomer).await, "second miss: stored");
    }

    async fn is_stored(storage: &'static MokaStorage, key: &CacheKey) -> bool {
        let span = Span::inactive().handle();
        storage.lookup(key, &span).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn update_meta_and_expire_rewrite_the_entry() {
        let storage = MokaStorage::new(1 << 20, Duration::from_secs(60)).leak();
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
