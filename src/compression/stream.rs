//! On-the-fly compression (and decompression) of a response body as it streams through the
//! proxy.
//!
//! Used for responses not served from the cache. Each chunk is flushed through the encoder, so a
//! slowly produced body reaches the client as it arrives rather than when the encoder's buffer
//! fills; the final chunk closes the stream. The decoder serves a body the origin encoded to a
//! client that does not accept its coding.

use std::io::{self, Write};

use bytes::Bytes;

use super::{brotli_tables, Coding};

/// A streaming gzip or brotli encoder.
pub struct StreamEncoder {
    inner: Inner,
}

enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli_tables::StreamWriter>),
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
            Coding::Brotli => Inner::Brotli(Box::new(brotli_tables::stream_writer(
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

/// Most bytes one chunk may decode to: a body that expands further (a decompression bomb) is
/// cut off with an error rather than filling memory.
pub const MAX_DECODED_CHUNK: usize = 16 << 20;

/// A streaming gzip or brotli decoder.
pub struct StreamDecoder {
    inner: DecoderInner,
}

enum DecoderInner {
    Gzip(Box<flate2::write::MultiGzDecoder<LimitedBuffer>>),
    Brotli(Box<brotli::DecompressorWriter<LimitedBuffer>>),
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let coding = match self.inner {
            DecoderInner::Gzip(_) => "gzip",
            DecoderInner::Brotli(_) => "br",
        };
        f.debug_struct("StreamDecoder").field("coding", &coding).finish()
    }
}

/// The decoder's output of one chunk, refusing to grow past [`MAX_DECODED_CHUNK`].
#[derive(Default)]
struct LimitedBuffer(Vec<u8>);

impl Write for LimitedBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.0.len() + data.len() > MAX_DECODED_CHUNK {
            return Err(io::Error::other("a chunk decodes to too many bytes"));
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StreamDecoder {
    /// A decoder for `coding`; `None` for identity.
    pub fn new(coding: Coding) -> Option<StreamDecoder> {
        let inner = match coding {
            Coding::Identity => return None,
            Coding::Gzip => DecoderInner::Gzip(Box::new(flate2::write::MultiGzDecoder::new(
                LimitedBuffer::default(),
            ))),
            Coding::Brotli => DecoderInner::Brotli(Box::new(brotli::DecompressorWriter::new(
                LimitedBuffer::default(),
                BROTLI_BUFFER,
            ))),
        };
        Some(StreamDecoder { inner })
    }

    /// Decodes one chunk and returns what it decoded to; `end` checks that the stream is whole.
    pub fn decode(&mut self, chunk: &[u8], end: bool) -> io::Result<Bytes> {
        let out = match &mut self.inner {
            DecoderInner::Gzip(decoder) => {
                decoder.write_all(chunk)?;
                if end {
                    decoder.try_finish()?;
                } else {
                    decoder.flush()?;
                }
                std::mem::take(&mut decoder.get_mut().0)
            }
            DecoderInner::Brotli(decoder) => {
                decoder.write_all(chunk)?;
                if end {
                    decoder.close()?;
                } else {
                    decoder.flush()?;
                }
                std::mem::take(&mut decoder.get_mut().0)
            }
        };
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_decoding_restores_the_input() {
        let text = "decoded body ".repeat(5000).into_bytes();
        for coding in [Coding::Gzip, Coding::Brotli] {
            let encoded = coding.encode(&text, 5);
            let mut decoder = StreamDecoder::new(coding).unwrap();
            let mut decoded = Vec::new();
            let chunks: Vec<&[u8]> = encoded.chunks(100).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                decoded.extend_from_slice(&decoder.decode(chunk, i + 1 == chunks.len()).unwrap());
            }
            assert_eq!(decoded, text, "{coding:?}");
        }
    }

    #[test]
    fn decoding_refuses_bombs_and_truncated_streams() {
        let zeros = vec![0u8; MAX_DECODED_CHUNK + 1];
        for coding in [Coding::Gzip, Coding::Brotli] {
            let bomb = coding.encode(&zeros, 5);
            let mut decoder = StreamDecoder::new(coding).unwrap();
            assert!(decoder.decode(&bomb, true).is_err(), "{coding:?} bomb");
            let whole = coding.encode(b"some text to cut short, some text to cut short", 5);
            let mut decoder = StreamDecoder::new(coding).unwrap();
            let cut = &whole[..whole.len() / 2];
            assert!(decoder.decode(cut, true).is_err(), "{coding:?} truncated");
        }
    }

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
