//! A size limit on tar extension headers, enforced while the stream flows to the parser.
//!
//! The tar crate reads a PAX header (`x`, `g`) or a GNU long name (`L`, `K`) into memory
//! whole, whatever size the header claims, so a hostile layer could make the unpacker
//! allocate gigabytes. Go's archive/tar (and with it docker and containerd) refuses such
//! headers past 1 MiB; this reader does the same. It follows the archive's framing with
//! the tar crate's own header parsing: header blocks, PAX `size` overrides, GNU sparse
//! extension blocks, data rounded up to 512-byte blocks.

use std::io::{self, Read};

/// Largest extension header accepted (Go's `maxSpecialFileSize`).
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;
const BLOCK: usize = 512;

enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Collecting a GNU sparse extension block (more follow while byte 504 is 1).
    SparseExtension { then: u64 },
    /// Passing `left` bytes of entry data and padding.
    Data { left: u64, capture: bool },
}

pub(crate) struct Guard<R> {
    inner: R,
    state: State,
    block: [u8; BLOCK],
    filled: usize,
    /// Data of the current PAX header, kept to learn a `size` override.
    pax: Vec<u8>,
    pax_size: u64,
    next_size: Option<u64>,
}

impl<R: Read> Guard<R> {
    pub fn new(inner: R) -> Self {
        Guard {
            inner,
            state: State::Header,
            block: [0; BLOCK],
            filled: 0,
            pax: Vec::new(),
            pax_size: 0,
            next_size: None,
        }
    }

    /// Follows the framing through `bytes`, which have just been read.
    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Data { left, capture } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    if *capture {
                        self.pax.extend_from_slice(&bytes[..n]);
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if *capture {
                            self.pax.truncate(self.pax_size as usize);
                            self.next_size = pax_size_override(&self.pax);
                        }
                        self.state = State::Header;
                    }
                }
                State::Header | State::SparseExtension { .. } => {
                    let n = (BLOCK - self.filled).min(bytes.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.block_done()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn block_done(&mut self) -> io::Result<()> {
        if let State::SparseExtension { then } = self.state {
            self.state = if self.block[504] == 1 {
                State::SparseExtension { then }
            } else {
                State::Data {
                    left: padded(then),
                    capture: false,
                }
            };
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.block);
        // Zero blocks (end of archive) and headers the parser will reject need no framing.
        let Ok(size) = header.entry_size() else {
            return Ok(());
        };
        let entry_type = header.entry_type();
        let recognized = header.as_ustar().is_some() || header.as_gnu().is_some();
        let extension = matches!(entry_type.as_byte(), b'x' | b'g' | b'L' | b'K');
        if extension && size > MAX_EXTENSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "extension header of {size} bytes (typeflag '{}') exceeds the 1 MiB limit",
                    entry_type.as_byte() as char
                ),
            ));
        }
        let capture = recognized && entry_type.as_byte() == b'x';
        // As the tar crate does: a PAX `size` applies to the next entry that is not itself
        // an extension header, and an unrecognised (v7) extension-typed entry takes it away.
        let pending = self.next_size.take();
        let size = if extension {
            if recognized {
                self.next_size = pending;
            }
            size
        } else {
            pending.unwrap_or(size)
        };
        if capture {
            self.pax.clear();
            self.pax_size = size;
        }
        let sparse_extended =
            entry_type.is_gnu_sparse() && header.as_gnu().is_some_and(|gnu| gnu.is_extended());
        self.state = if sparse_extended {
            State::SparseExtension { then: size }
        } else if size == 0 {
            State::Header
        } else {
            State::Data {
                left: padded(size),
                capture,
            }
        };
        Ok(())
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn pax_size_override(records: &[u8]) -> Option<u64> {
    tar::PaxExtensions::new(records)
        .filter_map(Result::ok)
        .filter(|record| record.key_bytes() == b"size")
        .last()
        .and_then(|record| record.value().ok()?.parse().ok())
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}
