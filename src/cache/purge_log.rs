//! What a purge covers ([`PurgeScope`]), and purges win over fills already in flight.
//!
//! A miss may take a while: the request goes to the origin, the body streams in, and only then
//! is the response stored. A purge that happens in between finds nothing to delete, and without
//! this log the old response would be stored afterwards and served for its whole lifetime. So
//! every purge is remembered with its time, and a fill (or a revalidation's new meta) that
//! started before a purge covering its URL is not stored.
//!
//! The log keeps the last [`MAX_RECORDS`] purges of the last [`RETENTION`]; older ones are
//! folded into a floor: every fill that started before it is refused (rare: a fill that old).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::cache::key::HashBinary;

/// Which stored URLs a purge applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeScope {
    /// One URL (every variant and coding of it). No scheme: both http and https.
    Url {
        /// `http`, `https`, or any.
        scheme: Option<String>,
        /// Lower-cased host.
        host: String,
        /// Path and query.
        path: String,
    },
    /// Every URL of a host whose path starts with a prefix.
    Prefix {
        /// `http`, `https`, or any.
        scheme: Option<String>,
        /// Lower-cased host.
        host: String,
        /// Path prefix.
        path: String,
    },
    /// Every URL of a host.
    Host(String),
    /// Every response tagged so by its origin.
    Tag(String),
}

impl PurgeScope {
    /// Whether a stored response with this primary key and these tags is in the scope.
    pub fn matches(&self, primary: &[u8], tags: &[Box<str>]) -> bool {
        if let PurgeScope::Tag(tag) = self {
            return tags.iter().any(|t| **t == **tag);
        }
        let Some((scheme, authority, path)) = super::key::components(primary) else {
            return false;
        };
        // A purge names hosts without ports and covers every port the host was requested on.
        let host = crate::authority::host_of_authority(authority);
        let scheme_ok = |wanted: &Option<String>| wanted.as_deref().is_none_or(|w| w.as_bytes() == scheme);
        match self {
            PurgeScope::Url {
                scheme: s,
                host: h,
                path: p,
            } => scheme_ok(s) && h.as_bytes() == host && p.as_bytes() == path,
            PurgeScope::Prefix {
                scheme: s,
                host: h,
                path: p,
            } => scheme_ok(s) && h.as_bytes() == host && path.starts_with(p.as_bytes()),
            PurgeScope::Host(h) => h.as_bytes() == host,
            PurgeScope::Tag(_) => false,
        }
    }
}

/// Purges remembered one by one.
pub const MAX_RECORDS: usize = 4096;

/// How long a purge is remembered one by one.
pub const RETENTION: Duration = Duration::from_secs(3600);

/// When a request started fetching from the origin: carried in the cache key's extensions from
/// the proxy (which sets it when it picks an origin) to the storage (which checks it when the
/// fill completes). A response relayed by a cluster peer dates from when that peer fetched it.
#[derive(Debug, Clone, Default)]
pub struct FillStart(Arc<Mutex<Option<Instant>>>);

impl FillStart {
    /// Records now as the start of the fill (the first call wins: retries keep the first).
    pub fn start(&self) {
        let mut started = self.0.lock().unwrap_or_else(|e| e.into_inner());
        started.get_or_insert_with(Instant::now);
    }

    /// Moves the start back to `earlier` (the body was fetched from the origin then, by a peer),
    /// so a purge made here since then keeps it out of the cache.
    pub fn back_to(&self, earlier: Instant) {
        let mut started = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *started = Some(started.map_or(earlier, |s| s.min(earlier)));
    }

    /// When the fill started, if it did.
    pub fn started(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a purge covered.
#[derive(Debug)]
enum Purged {
    /// One URL, by the hash of its primary key.
    Key(HashBinary),
    /// A URL, prefix, host or tag scope.
    Scope(PurgeScope),
}

/// What a fill is checked against: its URL's primary hash and bytes, and its purge tags.
pub struct FillTarget<'a> {
    /// Hash of the primary key.
    pub primary_hash: HashBinary,
    /// The primary key's bytes (scheme, authority, path).
    pub primary: &'a [u8],
    /// The response's purge tags.
    pub tags: &'a [Box<str>],
}

/// Recent purges, oldest first.
#[derive(Debug, Default)]
pub struct PurgeLog {
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    records: VecDeque<(Instant, Purged)>,
    /// Fills that started before this are refused (purges dropped from the log).
    floor: Option<Instant>,
}

impl PurgeLog {
    /// Remembers a purge of one URL (by its primary key hash).
    pub fn purged_key(&self, primary_hash: HashBinary) {
        self.push(Purged::Key(primary_hash));
    }

    /// Remembers a purge of a scope.
    pub fn purged_scope(&self, scope: &PurgeScope) {
        self.push(Purged::Scope(scope.clone()));
    }

    fn push(&self, purged: Purged) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.records.push_back((now, purged));
        while let Some((at, _)) = state.records.front() {
            let too_many = state.records.len() > MAX_RECORDS;
            if !too_many && now.duration_since(*at) <= RETENTION {
                break;
            }
            let at = *at;
            state.records.pop_front();
            state.floor = Some(state.floor.map_or(at, |floor| floor.max(at)));
        }
    }

    /// Whether a purge covering `target` happened after `started` (the fill must not be stored).
    pub fn purged_since(&self, started: Instant, target: &FillTarget) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.floor.is_some_and(|floor| floor >= started) {
            return true;
        }
        state
            .records
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= started)
            .any(|(_, purged)| match purged {
                Purged::Key(hash) => *hash == target.primary_hash,
                Purged::Scope(scope) => scope.matches(target.primary, target.tags),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(hash: u8) -> FillTarget<'static> {
        FillTarget {
            primary_hash: [hash; 16],
            primary: b"",
            tags: &[],
        }
    }

    #[test]
    fn only_purges_after_the_start_of_the_fill_count() {
        let log = PurgeLog::default();
        log.purged_key([1; 16]);
        let started = Instant::now();
        assert!(!log.purged_since(started, &target(1)), "purged before the fill");
        log.purged_key([2; 16]);
        assert!(log.purged_since(started, &target(2)));
        assert!(!log.purged_since(started, &target(3)));
    }

    #[test]
    fn tag_scopes_match_the_fill_tags() {
        let log = PurgeLog::default();
        let started = Instant::now();
        log.purged_scope(&PurgeScope::Tag("t".into()));
        let tags: [Box<str>; 1] = ["t".into()];
        let tagged = FillTarget {
            primary_hash: [9; 16],
            primary: b"",
            tags: &tags,
        };
        assert!(log.purged_since(started, &tagged));
        assert!(!log.purged_since(started, &target(9)));
    }

    #[test]
    fn a_full_log_refuses_older_fills_instead_of_forgetting() {
        let log = PurgeLog::default();
        let started = Instant::now();
        for _ in 0..=MAX_RECORDS {
            log.purged_key([7; 16]);
        }
        assert!(
            log.purged_since(started, &target(8)),
            "the floor covers fills before it"
        );
        assert!(!log.purged_since(Instant::now(), &target(8)));
    }
}
