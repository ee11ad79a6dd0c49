//! Compression around the layer tar: a writer for zstd (multithreaded), gzip or nothing,
//! and a reader that picks the decompressor from the stream's magic bytes.

use std::io::{self, Read, Write};

use super::Compression;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_OUT_BUFFER: usize = 1 << 20;

impl Compression {
    /// How a stream that starts with `head` (its first four bytes, or fewer) is compressed,
    /// by its magic bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }
}

/// Compresses into `W`.
pub(crate) enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    pub fn new(compression: Compression, level: Option<i32>, out: W) -> io::Result<Self> {
        Self::with_workers(compression, level, out, zstd_workers())
    }

    /// zstd with `workers` >= 1 threads. zstd's multithreaded format cuts jobs by window
    /// size, not by thread count, so the bytes are the same for any `workers` >= 1 (but
    /// differ from single-threaded mode, which is never used).
    pub fn with_workers(
        compression: Compression,
        level: Option<i32>,
        out: W,
        workers: u32,
    ) -> io::Result<Self> {
        Ok(match compression {
            Compression::Zstd => {
                // An output buffer as large as the input chunks (the default is 32 KiB): the
                // multithreaded compressor hands out finished jobs only as fast as the caller
                // drains them, and a small buffer leaves workers waiting for free job slots.
                let raw = zstd::stream::raw::Encoder::new(level.unwrap_or(3))?;
                let writer =
                    zstd::stream::zio::Writer::new_with_capacity(out, raw, ZSTD_OUT_BUFFER);
                let mut encoder = zstd::stream::write::Encoder::with_writer(writer);
                encoder.multithread(workers.max(1))?;
                // As the zstd CLI does: a flipped byte fails decompression, not just the digest.
                encoder.include_checksum(true)?;
                Encoder::Zstd(encoder)
            }
            Compression::Gzip => {
                let level = level.map_or(6, |l| l.clamp(0, 9) as u32);
                // GzBuilder writes mtime 0 and no file name: the same bytes on every machine.
                Encoder::Gzip(flate2::GzBuilder::new().write(out, flate2::Compression::new(level)))
            }
            Compression::None => Encoder::None(out),
        })
    }

    /// Ends the stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(encoder) => encoder.finish(),
            Encoder::Gzip(encoder) => encoder.finish(),
            Encoder::None(out) => Ok(out),
        }
    }
}

fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u32)
        .clamp(1, 16)
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(encoder) => encoder.write(buf),
            Encoder::Gzip(encoder) => encoder.write(buf),
            Encoder::None(out) => out.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Zstd(encoder) => encoder.write_all(buf),
            Encoder::Gzip(encoder) => encoder.write_all(buf),
            Encoder::None(out) => out.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(encoder) => encoder.flush(),
            Encoder::Gzip(encoder) => encoder.flush(),
            Encoder::None(out) => out.flush(),
        }
    }
}

/// Returns a reader of the uncompressed tar, choosing zstd, gzip or plain by the first
/// bytes of `input` (the layer's media type may be missing or wrong, as with `docker save`).
pub(crate) fn decoder<'a, R: Read + 'a>(mut input: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        match input.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = io::Cursor::new(magic[..filled].to_vec());
    let stream = head.chain(input);
    Ok(match Compression::sniff(&magic[..filled]) {
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(stream)?),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::None => Box::new(stream),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(compression: Compression, data: &[u8], workers: u32) -> Vec<u8> {
        let mut encoder = Encoder::with_workers(compression, None, Vec::new(), workers).unwrap();
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_thread_count() {
        let data = sample();
        let one = compress(Compression::Zstd, &data, 1);
        assert_eq!(one, compress(Compression::Zstd, &data, 2));
        assert_eq!(one, compress(Compression::Zstd, &data, 5));
    }

    #[test]
    fn decoder_detects_each_compression_by_magic() {
        let data = sample();
        for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let blob = compress(compression, &data, 2);
            let mut out = Vec::new();
            decoder(&blob[..]).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{compression:?}");
        }
        let mut out = Vec::new();
        decoder(&b"ab"[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }
}
