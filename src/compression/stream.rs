//! On-the-fly compression of a response body as it streams through the proxy.
//!
//! Used for responses not served from the cache. Each chunk is flushed through the encoder, so a
//! slowly produced body reaches the client as it arrives rather than when the encoder's buffer
//! fills; the final chunk closes the stream.

use std::io::{self, Write};

use bytes::Bytes;

use super::Coding;

/// A streaming gzip or brotli encoder.
pub struct StreamEncoder {
    inner: Inner,
}

enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Finished,
}

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.inner {
            Inner::Gzip(_) => "gzip",
            Inner::Brotli(_) => "br",
            Inner::Finished => "finished",
        };
        f.debug_struct("StreamEncoder").field("coding", &state).finish()
    }
}

/// Internal buffer of the brotli writer.
const BROTLI_BUFFER: usize = 16 * 1024;

impl StreamEncoder {
    /// An encoder for `coding` at `level`; `None` for identity.
    pub fn new(coding: Coding, level: u32) -> Option<StreamEncoder> {
        let inner = match coding {
            Coding::Identity => return None,
            Coding::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Coding::Brotli => Inner::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                level,
                super::BROTLI_WINDOW_BITS,
            ))),
        };
        Some(StreamEncoder { inner })
    }

    /// Compresses one chunk and returns what the encoder produced; `end` finishes the stream.
    pub fn encode(&mut self, chunk: &[u8], end: bool) -> io::Result<Bytes> {
        let out = match &mut self.inner {
            Inner::Gzip(encoder) => {
                encoder.write_all(chunk)?;
                if end {
                    encoder.try_finish()?;
                } else {
                    encoder.flush()?;
                }
                std::mem::take(encoder.get_mut())
            }
            Inner::Brotli(encoder) => {
                encoder.write_all(chunk)?;
                if !end {
                    encoder.flush()?;
                    std::mem::take(encoder.get_mut())
                } else {
                    let Inner::Brotli(encoder) = std::mem::replace(&mut self.inner, Inner::Finished) else {
                        unreachable!("matched above")
                    };
                    encoder.into_inner()
                }
            }
            Inner::Finished => Vec::new(),
        };
        if end {
            self.inner = Inner::Finished;
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_chunks_decode_to_the_input() {
        let text = "streamed body ".repeat(5000).into_bytes();
        for coding in [Coding::Gzip, Coding::Brotli] {
            let mut encoder = StreamEncoder::new(coding, 1).unwrap();
            let mut encoded = Vec::new();
            let chunks: Vec<&[u8]> = text.chunks(7000).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let out = encoder.encode(chunk, i + 1 == chunks.len()).unwrap();
                if i == 0 {
                    assert!(!out.is_empty(), "{coding:?}: the first chunk is flushed");
                }
                encoded.extend_from_slice(&out);
            }
            assert_eq!(coding.decode(&encoded, 1 << 20).unwrap(), text, "{coding:?}");
        }
    }

    #[test]
    fn an_empty_final_chunk_closes_the_stream() {
        let mut encoder = StreamEncoder::new(Coding::Gzip, 1).unwrap();
        let mut encoded = encoder.encode(b"abc", false).unwrap().to_vec();
        encoded.extend_from_slice(&encoder.encode(b"", true).unwrap());
        assert_eq!(Coding::Gzip.decode(&encoded, 100).unwrap(), b"abc");
        assert!(StreamEncoder::new(Coding::Identity, 1).is_none());
    }
}
