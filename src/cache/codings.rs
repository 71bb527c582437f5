//! The stored codings of one response: identity, gzip and brotli side by side in one entry.
//!
//! A URL is fetched from the origin once. A compressible body is stored as identity (when the
//! origin sent gzip or brotli, its bytes are kept and decoded for everyone else) plus the coding
//! the client that filled it was served; every other coding is encoded once, the first time a
//! client accepts it ([`StoredCodings::to_derive`], [`StoredCodings::derived`]). Each lookup
//! picks the representation the client accepts. A coding nobody asks for is never encoded nor
//! held in memory: most stored objects are asked for once or in one coding, and the bytes a
//! second and third coding would take hold more objects instead. All codings share one cache
//! entry, so they are stored, expired, revalidated and purged together and count together
//! towards `max_memory`.
//!
//! pingora's storage interface only sees the cache key, so the request's side of the choice
//! travels in the key's `user_tag` (see [`user_tag`]).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::Result;

use super::packed_header::PackedHeader;
use crate::compression::{self, Accepted, Coding, CompressionPolicy, Eligibility};

/// Objects up to this size are worth recompressing at maximum brotli quality in the background
/// (brotli 11 runs at roughly 1 MB/s per core).
pub const BACKGROUND_MAX_BYTES: usize = 4 << 20;

/// One stored coding of a response: the header it is served with and its bytes. The compressed
/// codings are boxed, so a response stored once (most non-text objects) pays one pointer each.
#[derive(Debug, Clone)]
pub struct Representation {
    /// Its content coding.
    pub coding: Coding,
    /// The response header for this coding (`Content-Encoding`, `Content-Length`, `ETag`),
    /// packed: [`Representation::header`] unpacks it.
    pub packed: PackedHeader,
    /// The body as sent.
    pub body: Bytes,
}

impl Representation {
    /// A representation served with `header`.
    pub fn new(coding: Coding, header: &ResponseHeader, body: Bytes) -> Representation {
        Representation {
            coding,
            packed: PackedHeader::pack(header),
            body,
        }
    }

    /// The header it is served with.
    pub fn header(&self) -> Result<ResponseHeader> {
        self.packed.unpack()
    }
}

/// All stored codings of one response.
#[derive(Debug, Clone)]
pub struct StoredCodings {
    /// Served to clients that accept none of the others: the identity body when compressed
    /// codings exist, else the response exactly as the origin sent it.
    pub primary: Representation,
    /// The gzip coding, when stored.
    pub gzip: Option<Box<Representation>>,
    /// The brotli coding, when stored.
    pub brotli: Option<Box<Representation>>,
    /// Coding of the origin's own bytes (its ETag belongs to that representation).
    origin_coding: Coding,
    /// The brotli body is a fast first pass worth recompressing at maximum quality.
    pub brotli_upgradable: bool,
    /// Codings not encoded yet: encoded when a client first accepts them.
    pending: Pending,
}

/// The compressed codings of a compressible response that were not tried yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pending {
    gzip: bool,
    brotli: bool,
}

impl Pending {
    fn has(self, coding: Coding) -> bool {
        match coding {
            Coding::Gzip => self.gzip,
            Coding::Brotli => self.brotli,
            Coding::Identity => false,
        }
    }

    /// The coding a client accepting `accepted` prefers among those pending or `stored`, if it
    /// is a pending one: what to encode before serving that client.
    fn preferred_by(self, accepted: Accepted, stored: impl Fn(Coding) -> bool) -> Option<Coding> {
        PREFERRED
            .into_iter()
            .find(|&coding| accepts(accepted, coding) && (self.has(coding) || stored(coding)))
            .filter(|&coding| self.has(coding))
    }

    fn without(mut self, coding: Coding) -> Pending {
        match coding {
            Coding::Gzip => self.gzip = false,
            Coding::Brotli => self.brotli = false,
            Coding::Identity => {}
        }
        self
    }
}

/// Compressed codings in the order they are preferred.
const PREFERRED: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

/// Whether a client accepting `accepted` takes `coding`.
fn accepts(accepted: Accepted, coding: Coding) -> bool {
    match coding {
        Coding::Brotli => accepted.brotli,
        Coding::Gzip => accepted.gzip,
        Coding::Identity => true,
    }
}

impl StoredCodings {
    /// The response as the origin sent it, served to everyone.
    pub fn single(header: ResponseHeader, body: Bytes) -> StoredCodings {
        let coding = Coding::of_response(&header).unwrap_or(Coding::Identity);
        StoredCodings {
            primary: Representation::new(coding, &header, body),
            gzip: None,
            brotli: None,
            origin_coding: coding,
            brotli_upgradable: false,
            pending: Pending::default(),
        }
    }

    /// The codings of a complete response as first stored: the single response when it is not
    /// compressible, too small, or cannot be decoded within `max_decoded` bytes; else identity,
    /// the origin's own coding, and the coding a client accepting `filled_for` is served (the
    /// others stay pending). CPU-heavy for large bodies: run it off the event loop.
    pub fn build(
        header: ResponseHeader,
        body: Bytes,
        eligibility: Eligibility,
        policy: &CompressionPolicy,
        max_decoded: usize,
        filled_for: Accepted,
    ) -> StoredCodings {
        let origin_coding = match eligibility {
            Eligibility::Untouched => return StoredCodings::single(header, body),
            Eligibility::Compress => Coding::Identity,
            Eligibility::Encoded(coding) => coding,
        };
        let identity = match origin_coding.decode(&body, max_decoded) {
            Ok(_) if origin_coding == Coding::Identity => body.clone(),
            Ok(decoded) => Bytes::from(decoded),
            Err(_) => return StoredCodings::single(header, body),
        };
        if origin_coding == Coding::Identity && identity.len() < policy.settings.min_size {
            return StoredCodings::single(header, body);
        }
        let mut bodies = Bodies {
            identity,
            gzip: None,
            brotli: None,
        };
        bodies.set(origin_coding, Some(body.clone()));
        let mut pending = Pending {
            gzip: true,
            brotli: true,
        }
        .without(origin_coding);
        if let Some(coding) = pending.preferred_by(filled_for, |coding| coding == origin_coding) {
            bodies.set(coding, encode_smaller(&bodies.identity, coding, policy));
            pending = pending.without(coding);
        }
        let brotli_upgradable = upgradable(&bodies, origin_coding, policy);
        StoredCodings::assemble(&header, origin_coding, bodies, brotli_upgradable, pending)
            .unwrap_or_else(|_| StoredCodings::single(header, body))
    }

    /// The coding to encode before serving a client accepting `accepted`: the one it prefers
    /// among those it accepts, when that one is still pending.
    pub fn to_derive(&self, accepted: Accepted) -> Option<Coding> {
        if self.pending == Pending::default() {
            return None; // every hit asks: the common answer costs one comparison
        }
        self.pending
            .preferred_by(accepted, |coding| self.body(coding).is_some())
    }

    /// The same codings with the pending `coding` encoded (kept only if it is smaller than
    /// identity). CPU-heavy for large bodies: run it off the event loop.
    pub fn derived(&self, coding: Coding, policy: &CompressionPolicy) -> Result<StoredCodings> {
        let mut bodies = self.bodies();
        bodies.set(coding, encode_smaller(&bodies.identity, coding, policy));
        let brotli_upgradable = match coding {
            Coding::Brotli => upgradable(&bodies, self.origin_coding, policy),
            _ => self.brotli_upgradable,
        };
        let pending = self.pending.without(coding);
        self.reassemble(
            &self.primary.header()?,
            Coding::Identity,
            bodies,
            brotli_upgradable,
            pending,
        )
    }

    /// The representation for a client accepting `accepted`: br, then gzip, then identity.
    pub fn select(&self, accepted: Accepted) -> &Representation {
        let brotli = self.brotli.as_deref().filter(|_| accepted.brotli);
        let gzip = self.gzip.as_deref().filter(|_| accepted.gzip);
        brotli.or(gzip).unwrap_or(&self.primary)
    }

    /// The stored body of a compressed `coding`.
    fn body(&self, coding: Coding) -> Option<&Bytes> {
        let representation = match coding {
            Coding::Gzip => self.gzip.as_deref(),
            Coding::Brotli => self.brotli.as_deref(),
            Coding::Identity => Some(&self.primary),
        };
        representation.map(|r| &r.body)
    }

    /// Every stored body.
    fn bodies(&self) -> Bodies {
        Bodies {
            identity: self.primary.body.clone(),
            gzip: self.body(Coding::Gzip).cloned(),
            brotli: self.body(Coding::Brotli).cloned(),
        }
    }

    /// Bytes of bodies and headers (a header buffer the codings share counts once).
    pub fn weight(&self) -> usize {
        let primary = &self.primary.packed;
        [Some(&self.primary), self.gzip.as_deref(), self.brotli.as_deref()]
            .into_iter()
            .flatten()
            .map(|r| {
                let boxed = !std::ptr::eq(r, &self.primary);
                let header = match boxed && r.packed.shares_buffer_with(primary) {
                    true => r.packed.offsets_weight(),
                    false => r.packed.weight(),
                };
                // A compressed coding's own box; the primary is part of the entry.
                let own_box = if boxed {
                    std::mem::size_of::<Representation>()
                } else {
                    0
                };
                r.body.len() + header + PACKED_HEADER_OVERHEAD + own_box
            })
            .sum()
    }

    /// The codings after a revalidation merged new fields into `served`, the header of the
    /// `served_coding` representation: every representation gets the new fields.
    pub fn with_header(&self, served: &ResponseHeader, served_coding: Coding) -> Result<StoredCodings> {
        if !self.is_managed() {
            return Ok(StoredCodings::single(served.clone(), self.primary.body.clone()));
        }
        self.reassemble(
            served,
            served_coding,
            self.bodies(),
            self.brotli_upgradable,
            self.pending,
        )
    }

    /// The same codings with a final, maximum-quality brotli body.
    pub fn with_final_brotli(&self, body: Bytes) -> Result<StoredCodings> {
        let mut bodies = self.bodies();
        bodies.brotli = Some(body);
        self.reassemble(
            &self.primary.header()?,
            Coding::Identity,
            bodies,
            false,
            self.pending,
        )
    }

    /// The codings rebuilt from `served` (the header of the `served_coding` representation) and
    /// `bodies`.
    fn reassemble(
        &self,
        served: &ResponseHeader,
        served_coding: Coding,
        bodies: Bodies,
        brotli_upgradable: bool,
        pending: Pending,
    ) -> Result<StoredCodings> {
        let mut origin_header = served.clone();
        origin_form(
            &mut origin_header,
            served_coding,
            self.origin_coding,
            self.origin_etag_weak(),
        )?;
        StoredCodings::assemble(
            &origin_header,
            self.origin_coding,
            bodies,
            brotli_upgradable,
            pending,
        )
    }

    /// Whether the origin's ETag is weak (the identity representation keeps its weakness).
    fn origin_etag_weak(&self) -> bool {
        self.primary
            .packed
            .get("etag")
            .is_some_and(|v| v.starts_with(b"W/"))
    }

    /// Whether the proxy derived codings for this response (and added `Vary: Accept-Encoding`).
    fn is_managed(&self) -> bool {
        self.gzip.is_some()
            || self.brotli.is_some()
            || self.pending != Pending::default()
            || self.origin_coding != self.primary.coding
    }

    /// Builds every representation's header from the origin's header.
    fn assemble(
        origin_header: &ResponseHeader,
        origin_coding: Coding,
        bodies: Bodies,
        brotli_upgradable: bool,
        pending: Pending,
    ) -> Result<StoredCodings> {
        let header_for = |coding: Coding, body: &Bytes, weak: bool| -> Result<ResponseHeader> {
            let mut header = origin_header.clone();
            compression::recode_header(&mut header, origin_coding, coding, weak)?;
            header.remove_header(&http::header::TRANSFER_ENCODING);
            header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            compression::add_vary_accept_encoding(&mut header)?;
            Ok(header)
        };
        // A first-pass brotli body is replaced later, so its ETag must not claim byte equality
        // with the final one.
        let codings = [
            (Coding::Identity, Some(bodies.identity), false),
            (Coding::Gzip, bodies.gzip, false),
            (Coding::Brotli, bodies.brotli, brotli_upgradable),
        ];
        let mut stored = Vec::with_capacity(codings.len());
        for (coding, body, weak) in codings {
            if let Some(body) = body {
                stored.push((coding, header_for(coding, &body, weak)?, body));
            }
        }
        // The codings' headers differ in a few fields: packed together, the rest is kept once.
        let headers: Vec<&ResponseHeader> = stored.iter().map(|(_, header, _)| header).collect();
        let packed = PackedHeader::pack_all(&headers);
        let mut representations = stored
            .into_iter()
            .zip(packed)
            .map(|((coding, _, body), packed)| Representation { coding, packed, body });
        let primary = representations.next().ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "no identity coding")
        })?;
        let (mut gzip, mut brotli) = (None, None);
        for representation in representations {
            match representation.coding {
                Coding::Gzip => gzip = Some(Box::new(representation)),
                Coding::Brotli => brotli = Some(Box::new(representation)),
                Coding::Identity => {}
            }
        }
        Ok(StoredCodings {
            primary,
            gzip,
            brotli,
            origin_coding,
            brotli_upgradable,
            pending,
        })
    }
}

/// The bodies of a managed response.
struct Bodies {
    identity: Bytes,
    gzip: Option<Bytes>,
    brotli: Option<Bytes>,
}

impl Bodies {
    /// Sets the body of a compressed `coding`.
    fn set(&mut self, coding: Coding, body: Option<Bytes>) {
        match coding {
            Coding::Gzip => self.gzip = body,
            Coding::Brotli => self.brotli = body,
            Coding::Identity => {}
        }
    }
}

/// `identity` encoded in `coding` at the stored level, if that makes it smaller.
fn encode_smaller(identity: &Bytes, coding: Coding, policy: &CompressionPolicy) -> Option<Bytes> {
    let encoded = coding.encode(identity, policy.stored_level(coding));
    (encoded.len() < identity.len()).then(|| Bytes::from(encoded))
}

/// Whether a brotli body the proxy encoded is worth recompressing at the background level.
fn upgradable(bodies: &Bodies, origin_coding: Coding, policy: &CompressionPolicy) -> bool {
    bodies.brotli.is_some()
        && origin_coding != Coding::Brotli
        && policy.settings.brotli_background_level > policy.settings.brotli_level
        && bodies.identity.len() <= BACKGROUND_MAX_BYTES
}

/// Undoes what [`compression::recode_header`] did for `served`: the origin's
/// `Content-Encoding` and ETag (`origin_weak`: whether the origin's ETag was weak).
fn origin_form(header: &mut ResponseHeader, served: Coding, origin: Coding, origin_weak: bool) -> Result<()> {
    if served == origin {
        return Ok(());
    }
    compression::set_content_encoding(header, origin)?;
    let etag = header
        .headers
        .get(http::header::ETAG)
        .and_then(compression::origin_validators);
    // The proxy may have weakened the tag (a first-pass brotli body): restore the origin's.
    if let Some(Ok(etag)) = etag.as_ref().map(|e| e.to_str()) {
        let opaque = etag.trim_start_matches("W/");
        let etag = if origin_weak {
            format!("W/{opaque}")
        } else {
            opaque.to_string()
        };
        header.insert_header(http::header::ETAG, etag)?;
    }
    Ok(())
}

/// Bookkeeping bytes charged per representation beyond its struct: the shared counts its body
/// and header buffer allocate once cloned, and the allocator's rounding of its buffers.
const PACKED_HEADER_OVERHEAD: usize = 64;

/// The `user_tag` of a request's cache key: whether its site compresses and which codings it
/// accepts. The storage reads it back with [`parse_user_tag`] to pick a representation.
pub fn user_tag(compress: bool, accepted: Accepted) -> &'static str {
    match (compress, accepted.brotli, accepted.gzip) {
        (false, _, _) => "",
        (true, false, false) => "c",
        (true, false, true) => "cg",
        (true, true, false) => "cb",
        (true, true, true) => "cbg",
    }
}

/// The site's compression switch and the accepted codings carried by a cache key's `user_tag`.
pub fn parse_user_tag(tag: &str) -> (bool, Accepted) {
    let Some(codings) = tag.strip_prefix('c') else {
        return (false, Accepted::default());
    };
    let accepted = Accepted {
        brotli: codings.contains('b'),
        gzip: codings.contains('g'),
    };
    (true, accepted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompressionSettings;

    fn policy() -> CompressionPolicy {
        CompressionPolicy::new(&CompressionSettings::default())
    }

    fn html(etag: &str) -> ResponseHeader {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("content-type", "text/html").unwrap();
        header.insert_header("etag", etag).unwrap();
        header
    }

    fn text() -> Bytes {
        Bytes::from("<p>compress me once</p>\n".repeat(400))
    }

    fn build_for(header: ResponseHeader, body: Bytes, filled_for: Accepted) -> StoredCodings {
        let eligibility = policy().eligibility(&header);
        StoredCodings::build(header, body, eligibility, &policy(), 1 << 20, filled_for)
    }

    /// Stored with every coding derived, as after clients asked for each.
    fn build(header: ResponseHeader, body: Bytes) -> StoredCodings {
        let mut codings = build_for(header, body, Accepted::default());
        for accepted in [BOTH, GZIP] {
            if let Some(coding) = codings.to_derive(accepted) {
                codings = codings.derived(coding, &policy()).unwrap();
            }
        }
        codings
    }

    const BOTH: Accepted = Accepted {
        gzip: true,
        brotli: true,
    };
    const GZIP: Accepted = Accepted {
        gzip: true,
        brotli: false,
    };

    #[test]
    fn each_coding_has_its_own_length_etag_and_vary() {
        let variants = build(html("\"v1\""), text());
        let identity = variants.select(Accepted::default());
        assert_eq!(identity.coding, Coding::Identity);
        assert_eq!(identity.header().unwrap().headers["etag"], "\"v1\"");
        let gzip = variants.select(GZIP);
        assert_eq!(gzip.header().unwrap().headers["content-encoding"], "gzip");
        assert_eq!(gzip.header().unwrap().headers["etag"], "\"v1~gzip\"");
        assert_eq!(
            gzip.header().unwrap().headers["content-length"],
            gzip.body.len().to_string().as_str()
        );
        let brotli = variants.select(BOTH);
        assert_eq!(brotli.coding, Coding::Brotli);
        assert_eq!(brotli.header().unwrap().headers["etag"], "W/\"v1~br\"");
        for r in [identity, gzip, brotli] {
            assert_eq!(r.header().unwrap().headers["vary"], "Accept-Encoding");
            assert_eq!(r.coding.decode(&r.body, 1 << 20).unwrap(), text());
        }
        let upgraded = variants.with_final_brotli(Bytes::from_static(b"x")).unwrap();
        assert_eq!(
            upgraded.select(BOTH).header().unwrap().headers["etag"],
            "\"v1~br\""
        );
        assert!(!upgraded.brotli_upgradable);
    }

    #[test]
    fn a_coding_is_encoded_when_first_accepted_and_then_kept() {
        let identity_only = build_for(html("\"v1\""), text(), Accepted::default());
        assert!(identity_only.gzip.is_none() && identity_only.brotli.is_none());
        let primary = identity_only.primary.header().unwrap();
        assert_eq!(primary.headers["vary"], "Accept-Encoding", "other codings follow");
        assert_eq!(identity_only.to_derive(Accepted::default()), None);
        assert_eq!(identity_only.to_derive(GZIP), Some(Coding::Gzip));
        assert_eq!(identity_only.to_derive(BOTH), Some(Coding::Brotli));

        let filled_by_browser = build_for(html("\"v1\""), text(), BOTH);
        assert!(filled_by_browser.brotli.is_some() && filled_by_browser.gzip.is_none());
        assert!(filled_by_browser.weight() > identity_only.weight());
        assert_eq!(filled_by_browser.to_derive(BOTH), None);
        let with_gzip = filled_by_browser.derived(Coding::Gzip, &policy()).unwrap();
        assert_eq!(with_gzip.to_derive(GZIP), None);
        assert_eq!(
            with_gzip.select(GZIP).header().unwrap().headers["etag"],
            "\"v1~gzip\""
        );
        assert_eq!(with_gzip.select(BOTH).body, filled_by_browser.select(BOTH).body);
        assert!(
            with_gzip.brotli_upgradable,
            "the fast brotli body is still upgraded"
        );
    }

    #[test]
    fn a_coding_that_does_not_shrink_is_tried_once() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        let stored = build_for(html("\"n\""), Bytes::from(noise), BOTH);
        assert!(stored.brotli.is_none());
        assert_eq!(
            stored.to_derive(BOTH),
            Some(Coding::Gzip),
            "br was tried: gzip is next"
        );
        let tried = stored.derived(Coding::Gzip, &policy()).unwrap();
        assert!(tried.gzip.is_none());
        assert_eq!(tried.to_derive(BOTH), None);
        assert_eq!(tried.select(BOTH).coding, Coding::Identity);
    }

    #[test]
    fn origin_gzip_is_kept_and_decoded_for_identity_clients() {
        let mut header = html("\"z\"");
        header.insert_header("content-encoding", "gzip").unwrap();
        let gzipped = Bytes::from(Coding::Gzip.encode(&text(), 9));
        let variants = build(header, gzipped.clone());
        assert_eq!(variants.select(GZIP).body, gzipped);
        assert_eq!(variants.select(GZIP).header().unwrap().headers["etag"], "\"z\"");
        let identity = variants.select(Accepted::default());
        assert_eq!(identity.body, text());
        assert!(identity
            .header()
            .unwrap()
            .headers
            .get("content-encoding")
            .is_none());
        assert_eq!(identity.header().unwrap().headers["etag"], "\"z~identity\"");
    }

    #[test]
    fn incompressible_or_small_bodies_are_stored_once() {
        let small = build(html("\"s\""), Bytes::from_static(b"tiny"));
        assert!(small.gzip.is_none() && small.brotli.is_none());
        assert!(small.primary.header().unwrap().headers.get("vary").is_none());
        let mut image = ResponseHeader::build(200, None).unwrap();
        image.insert_header("content-type", "image/png").unwrap();
        assert!(build(image, text()).gzip.is_none());
    }

    #[test]
    fn revalidated_fields_reach_every_coding() {
        let variants = build(html("\"v1\""), text());
        let mut served = variants.select(GZIP).header().unwrap();
        served.insert_header("etag", "\"v1\"").unwrap();
        served.insert_header("x-updated", "yes").unwrap();
        let updated = variants.with_header(&served, Coding::Gzip).unwrap();
        assert_eq!(
            updated.select(GZIP).header().unwrap().headers["etag"],
            "\"v1~gzip\""
        );
        assert_eq!(updated.primary.header().unwrap().headers["etag"], "\"v1\"");
        assert_eq!(updated.select(BOTH).header().unwrap().headers["x-updated"], "yes");
        assert_eq!(
            updated
                .primary
                .header()
                .unwrap()
                .headers
                .get_all("vary")
                .iter()
                .count(),
            1
        );
    }

    #[test]
    fn user_tags_round_trip() {
        for accepted in [Accepted::default(), GZIP, BOTH] {
            assert_eq!(parse_user_tag(user_tag(true, accepted)), (true, accepted));
        }
        assert_eq!(
            parse_user_tag(user_tag(false, BOTH)),
            (false, Accepted::default())
        );
    }
}
