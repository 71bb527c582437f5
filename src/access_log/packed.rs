//! Records packed into bytes: what a request leaves for the writer thread.
//!
//! A request copies its record's fields into the log's pending buffer: each number in its
//! in-memory form, then the lengths of its strings, then the strings one after the other. The
//! request path does no formatting, no escaping and no allocation. The writer reads the records
//! back, borrowing each string's bytes from the buffer (they were copied from strings, so are
//! not checked again), and formats the lines. The bytes never leave the process.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::format::Fields;
use super::Record;

/// The length written for an absent optional string.
const ABSENT: u32 = u32::MAX;

/// Appends `record` to `out`.
pub fn pack(out: &mut Vec<u8>, record: &Record) {
    let texts = [
        Some(record.method),
        Some(record.host),
        Some(record.path),
        Some(record.referer),
        Some(record.user_agent),
        Some(record.cache),
        Some(record.origin),
        record.error,
        record.route,
    ]
    .map(|text| text.map(shortened));
    let since_epoch = record
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    out.extend_from_slice(&since_epoch.as_secs().to_ne_bytes());
    out.extend_from_slice(&since_epoch.subsec_nanos().to_ne_bytes());
    match record.client {
        None => out.push(0),
        Some(IpAddr::V4(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Some(IpAddr::V6(ip)) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.push(version_code(record.protocol));
    out.extend_from_slice(&record.status.to_ne_bytes());
    out.extend_from_slice(&(record.bytes as u64).to_ne_bytes());
    out.push(u8::from(record.upstream.is_some()));
    out.extend_from_slice(&nanos(record.upstream.unwrap_or_default()).to_ne_bytes());
    out.extend_from_slice(&nanos(record.total).to_ne_bytes());
    for text in texts {
        let len = text.map_or(ABSENT, |text| text.len() as u32);
        out.extend_from_slice(&len.to_ne_bytes());
    }
    for text in texts.into_iter().flatten() {
        out.extend_from_slice(text.as_bytes());
    }
}

/// A duration in whole nanoseconds (saturating: 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// How many strings a record has.
const TEXTS: usize = 9;

/// The records packed in `bytes`, in order; stops at the first that is cut short.
pub(super) fn records(bytes: &[u8]) -> Records<'_> {
    Records { rest: bytes }
}

/// Iterator over packed records, see [`records`].
pub(super) struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Fields<'a>;

    fn next(&mut self) -> Option<Fields<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let record = self.read_record();
        if record.is_none() {
            self.rest = &[];
        }
        record
    }
}

impl<'a> Records<'a> {
    fn read_record(&mut self) -> Option<Fields<'a>> {
        let secs = u64::from_ne_bytes(self.take()?);
        let nanos = u32::from_ne_bytes(self.take()?);
        let time = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        let client = match self.take::<1>()?[0] {
            4 => Some(IpAddr::from(self.take::<4>()?)),
            6 => Some(IpAddr::from(self.take::<16>()?)),
            _ => None,
        };
        let protocol = version_of(self.take::<1>()?[0]);
        let status = u16::from_ne_bytes(self.take()?);
        let bytes = u64::from_ne_bytes(self.take()?);
        let has_upstream = self.take::<1>()?[0] == 1;
        let upstream = Duration::from_nanos(u64::from_ne_bytes(self.take()?));
        let total = Duration::from_nanos(u64::from_ne_bytes(self.take()?));
        let [method, host, path, referer, user_agent, cache, origin, error, route] = self.read_texts()?;
        Some(Fields {
            time,
            client,
            protocol,
            status,
            bytes,
            upstream: has_upstream.then_some(upstream),
            total,
            method: method?,
            host: host?,
            path: path?,
            referer: referer?,
            user_agent: user_agent?,
            cache: cache?,
            origin: origin?,
            error,
            route,
        })
    }

    /// The next `N` bytes.
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*head)
    }

    /// The record's strings (`None` for an absent one), or `None` when cut short.
    fn read_texts(&mut self) -> Option<[Option<&'a [u8]>; TEXTS]> {
        let mut lens = [ABSENT; TEXTS];
        for len in &mut lens {
            *len = u32::from_ne_bytes(self.take()?);
        }
        let mut texts = [None; TEXTS];
        for (text, len) in texts.iter_mut().zip(lens) {
            if len != ABSENT {
                let (head, rest) = self.rest.split_at_checked(len as usize)?;
                *text = Some(head);
                self.rest = rest;
            }
        }
        Some(texts)
    }
}

/// `text`, cut to less than [`ABSENT`] bytes: no header or URL the proxy accepts comes near
/// 4 GiB.
fn shortened(text: &str) -> &str {
    let mut len = text.len().min(ABSENT as usize - 1);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    &text[..len]
}

fn version_code(version: http::Version) -> u8 {
    match version {
        http::Version::HTTP_09 => 0,
        http::Version::HTTP_10 => 1,
        http::Version::HTTP_2 => 3,
        http::Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_of(code: u8) -> http::Version {
    match code {
        0 => http::Version::HTTP_09,
        1 => http::Version::HTTP_10,
        3 => http::Version::HTTP_2,
        4 => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::format::{write_combined, write_json};
    use crate::access_log::rejected;

    fn sample(path: &str, error: Option<&'static str>) -> Record<'static> {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_796_075_999, 7_654_321),
            client: Some(IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1])),
            method: "GET",
            host: "example.com",
            path: Box::leak(path.to_string().into_boxed_str()),
            protocol: http::Version::HTTP_2,
            status: 206,
            bytes: 1 << 40,
            referer: "",
            user_agent: "agent \"q\" é",
            cache: "hit",
            origin: "127.0.0.1:8080",
            upstream: Some(Duration::from_nanos(3_000_000_007)),
            total: Duration::from_micros(125),
            error,
            route: Some("static"),
        }
    }

    fn lines<'a>(records: impl IntoIterator<Item = Fields<'a>>) -> Vec<u8> {
        let mut text = Vec::new();
        for record in records {
            write_json(&mut text, &record);
            text.push(b'\n');
            write_combined(&mut text, &record).unwrap();
            text.push(b'\n');
        }
        text
    }

    #[test]
    fn unpacked_records_give_the_same_lines() {
        let originals = vec![
            sample("/a?b=1", None),
            sample("/\u{1}\n\"é😀", Some("upstream \"failed\"")),
            rejected(None, http::Version::HTTP_10),
            Record {
                client: Some(IpAddr::from([10, 0, 0, 1])),
                upstream: None,
                route: None,
                ..sample("", None)
            },
        ];
        let mut packed = Vec::new();
        for record in &originals {
            pack(&mut packed, record);
        }
        let unpacked: Vec<Fields> = records(&packed).collect();
        assert_eq!(unpacked.len(), originals.len());
        assert_eq!(unpacked[0].time, originals[0].time);
        assert_eq!(lines(unpacked), lines(originals.iter().map(Fields::from)));
    }

    #[test]
    fn a_record_cut_short_ends_the_batch() {
        let mut packed = Vec::new();
        pack(&mut packed, &sample("/first", None));
        let whole = packed.len();
        pack(&mut packed, &sample("/second", None));
        for cut in [whole + 1, whole + 30, packed.len() - 1] {
            let paths: Vec<&[u8]> = records(&packed[..cut]).map(|r| r.path).collect();
            assert_eq!(paths, [b"/first"]);
        }
    }
}
