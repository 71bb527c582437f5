//! The brotli encoder's large tables, kept per thread from one body to the next.
//!
//! At quality 5 the encoder's match finder allocates 1 MiB of `u32` buckets for every body,
//! zeroed. A zeroed allocation of that size comes back from the allocator as pages the kernel
//! must map again, so compressing a 1 KiB body took about 200 page faults (most of the time of
//! a miss of a small text response). Each thread here keeps its last freed table and hands it
//! to the next body as it is: zeroing it again was still a tenth of the CPU time of such a miss.
//!
//! Stale contents are harmless, as in the C encoder, which never clears these tables: the tables
//! this size are the match finders' (hash buckets, the binary tree of quality 10-11), and a
//! match finder reads a slot only after writing it for the same body (a bucket's fill count is
//! reset per body, the tree's roots too) and checks every candidate against the data before
//! using it. A test compares the output with brotli's own zeroing allocator, byte for byte.
//!
//! The streaming encoder of responses compressed on the fly (quality 2-4) has the same problem
//! with its 256-512 KiB hash table: a 1 KiB HTML miss for a browser spent most of its time in
//! page faults and in the allocator returning the table to the kernel. It gets the same tables,
//! zeroed again: its hashers, unlike the ones of qualities 5-11, read buckets they did not write
//! for the current stream (with stale contents, an index out of bounds).
//!
//! Memory: at most two tables per thread that compressed a body (the stored coding's and the
//! streaming encoder's, 1.5 MiB at most), which is what the encoders held while compressing
//! anyway; only the tables' lifetime grows, and threads of the blocking pool drop theirs when
//! they end after being idle.

use std::cell::RefCell;

use brotli::enc::StandardAlloc;
use brotli::{Allocator, SliceWrapper, SliceWrapperMut};

/// Tables of at least this many `u32` (256 KiB) are kept; smaller ones are cheap to allocate.
const KEPT_MIN_LEN: usize = 64 * 1024;

/// Tables above this many `u32` (1 MiB: the quality-5 buckets for bodies up to 1 MiB) are not
/// kept: bodies that need more take long enough that the page faults matter less.
const KEPT_MAX_LEN: usize = 1 << 18;

/// Tables kept per thread: one for stored codings, one for streams.
const KEPT_PER_THREAD: usize = 2;

thread_local! {
    /// Freed tables of this thread, ready for the next body.
    static SPARE: RefCell<Vec<Box<[u32]>>> = const { RefCell::new(Vec::new()) };
}

/// One `u32` table of the encoder.
#[derive(Default)]
pub struct Table(Box<[u32]>);

impl SliceWrapper<u32> for Table {
    fn slice(&self) -> &[u32] {
        &self.0
    }
}

impl SliceWrapperMut<u32> for Table {
    fn slice_mut(&mut self) -> &mut [u32] {
        &mut self.0
    }
}

/// The encoder's allocator for `u32` tables: large ones reused within a thread, as they were left
/// or zeroed again.
#[derive(Default)]
pub struct ReusedTables {
    /// Zero a reused table: needed by the hashers of qualities 2-4, which trust their buckets.
    zeroed: bool,
}

impl Allocator<u32> for ReusedTables {
    type AllocatedMemory = Table;

    fn alloc_cell(&mut self, len: usize) -> Table {
        if (KEPT_MIN_LEN..=KEPT_MAX_LEN).contains(&len) {
            let spare = SPARE.with(|spare| {
                let mut spare = spare.borrow_mut();
                let at = spare.iter().position(|table| table.len() == len)?;
                Some(spare.swap_remove(at))
            });
            if let Some(mut table) = spare {
                if self.zeroed {
                    table.fill(0);
                }
                return Table(table);
            }
        }
        Table(vec![0; len].into_boxed_slice())
    }

    fn free_cell(&mut self, table: Table) {
        if !(KEPT_MIN_LEN..=KEPT_MAX_LEN).contains(&table.0.len()) {
            return;
        }
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() == KEPT_PER_THREAD {
                spare.remove(0);
            }
            spare.push(table.0);
        });
    }
}

/// The encoder's allocator: the standard one, but for the `u32` tables (the fourth slot).
pub type TableAlloc = brotli::CombiningAllocator<
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    ReusedTables,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
    StandardAlloc,
>;

/// An allocator for one encoder, its `u32` tables reused within the thread (`zeroed`: cleared
/// first).
fn table_alloc(zeroed: bool) -> TableAlloc {
    let std = StandardAlloc::default;
    brotli::CombiningAllocator::new(
        std(),
        std(),
        std(),
        ReusedTables { zeroed },
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
        std(),
    )
}

/// Compresses `data` with `params` into `out`, its `u32` tables reused within the thread.
pub fn compress(data: &[u8], out: &mut Vec<u8>, params: &brotli::enc::BrotliEncoderParams) {
    let mut input_buffer = [0u8; 4096];
    let mut output_buffer = [0u8; 4096];
    // Writing to a Vec cannot fail.
    let _ = brotli::BrotliCompressCustomAlloc(
        &mut &data[..],
        out,
        &mut input_buffer,
        &mut output_buffer,
        params,
        table_alloc(false),
    );
}

/// A streaming brotli encoder writing into a `Vec`, its `u32` tables reused within the thread.
pub type StreamWriter = brotli::enc::writer::CompressorWriterCustomAlloc<
    Vec<u8>,
    <StandardAlloc as Allocator<u8>>::AllocatedMemory,
    TableAlloc,
>;

/// A [`StreamWriter`] with a `buffer_size` byte buffer, at `quality` with a `lgwin` window. Its
/// tables are zeroed when reused: the fast qualities' hashers read buckets they did not write
/// for this stream (a stale index panics), so only the page faults are saved, not the zeroing.
pub fn stream_writer(buffer_size: usize, quality: u32, lgwin: u32) -> StreamWriter {
    let mut alloc = table_alloc(true);
    let buffer = <TableAlloc as Allocator<u8>>::alloc_cell(&mut alloc, buffer_size);
    StreamWriter::new(Vec::new(), buffer, alloc, quality, lgwin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_tables_are_reused() {
        let mut tables = ReusedTables::default();
        let first = tables.alloc_cell(KEPT_MIN_LEN);
        let address = first.slice().as_ptr();
        tables.free_cell(first);
        let second = tables.alloc_cell(KEPT_MIN_LEN);
        assert_eq!(second.slice().as_ptr(), address, "the freed table is reused");
        let small = tables.alloc_cell(16);
        assert!(small.slice().iter().all(|&v| v == 0), "small tables are fresh");
    }

    /// Fills this thread's kept tables with garbage, as a previous body could have left them;
    /// returns how many there were.
    fn soil_kept_tables() -> usize {
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            for (i, table) in spare.iter_mut().enumerate() {
                for (j, slot) in table.iter_mut().enumerate() {
                    *slot = (i as u32 ^ j as u32).wrapping_mul(0x9e37_79b9);
                }
            }
            spare.len()
        })
    }

    #[test]
    fn stale_tables_give_the_same_bytes_as_fresh_ones() {
        let bodies: Vec<Vec<u8>> = (0..6)
            .map(|round| {
                let words = ["edge ", "cache ", "origin ", "proxy ", "vary ", "etag "];
                (0..200 + round * 700)
                    .map(|i| words[(i * 7 + round) % words.len()])
                    .collect::<String>()
                    .into_bytes()
            })
            .collect();
        let mut soiled = 0;
        for quality in [5, 6, 9, 11] {
            let params = brotli::enc::BrotliEncoderParams {
                quality,
                lgwin: 17,
                ..Default::default()
            };
            for body in &bodies {
                soiled += soil_kept_tables();
                let mut ours = Vec::new();
                compress(body, &mut ours, &params);
                let mut fresh = Vec::new();
                brotli::BrotliCompress(&mut &body[..], &mut fresh, &params).unwrap();
                assert_eq!(ours, fresh, "quality {quality}, {} bytes", body.len());
            }
        }
        assert!(soiled > 10, "kept tables were reused: {soiled}");
    }

    /// One body through a streaming encoder, in `chunks` pieces each flushed, the last closing.
    fn stream<W: std::io::Write>(
        mut writer: W,
        body: &[u8],
        chunks: usize,
        take: impl Fn(&mut W) -> Vec<u8>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in body.chunks(body.len().div_ceil(chunks)) {
            writer.write_all(piece).unwrap();
            writer.flush().unwrap();
            out.extend(take(&mut writer));
        }
        drop(writer);
        out
    }

    #[test]
    fn streams_with_stale_tables_give_the_same_bytes_as_fresh_ones() {
        let body = "<li>edge cache origin proxy vary etag</li>\n".repeat(300);
        let mut soiled = 0;
        for quality in [2, 3, 4] {
            for chunks in [1, 3] {
                soiled += soil_kept_tables();
                let ours = stream(stream_writer(4096, quality, 22), body.as_bytes(), chunks, |w| {
                    std::mem::take(w.get_mut())
                });
                let fresh = stream(
                    brotli::CompressorWriter::new(Vec::new(), 4096, quality, 22),
                    body.as_bytes(),
                    chunks,
                    |w| std::mem::take(w.get_mut()),
                );
                assert_eq!(ours, fresh, "quality {quality}, {chunks} chunks");
            }
        }
        assert!(soiled > 2, "kept tables were reused: {soiled}");
    }

    #[test]
    fn bodies_compressed_one_after_another_decode() {
        let params = brotli::enc::BrotliEncoderParams {
            quality: 5,
            lgwin: 17,
            ..Default::default()
        };
        for round in 0..3 {
            let body = format!("round {round}: edge cache origin proxy ").repeat(40 + round * 100);
            let mut out = Vec::new();
            compress(body.as_bytes(), &mut out, &params);
            let mut decoded = Vec::new();
            brotli::BrotliDecompress(&mut &out[..], &mut decoded).unwrap();
            assert_eq!(decoded, body.as_bytes());
        }
    }
}
