//! The hand-off between the two threads of `write_layer` and of `unpack_layer`, in fixed
//! 1 MiB chunks that travel back for reuse.
//!
//! write: the tar producer (walk order, headers, file reads, sha256 of the tar) fills
//! chunks for the consumer (compression, sha256 of the blob, output).
//! unpack: the caller's thread decompresses and hashes (diff_id) and feeds chunks to the
//! extracting thread, which parses the tar from them.
//!
//! A small, fixed number of chunks is in flight, so memory does not depend on the layer's
//! size, and the CPU-heavy half (compression, hashing) overlaps with the file I/O half.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use sha2::{Digest as _, Sha256};

use crate::Digest;

pub(crate) const CHUNK: usize = 1 << 20;
/// Chunks queued between the threads (plus one being filled and one being compressed).
pub(crate) const IN_FLIGHT: usize = 4;

/// A full (or final) chunk: the buffer and how many of its bytes are data.
pub(crate) type Chunk = (Vec<u8>, usize);

/// The producer's end: a `Write` that hashes everything and ships it in chunks.
pub(crate) struct ChunkWriter {
    buffer: Vec<u8>,
    filled: usize,
    hasher: Sha256,
    to_consumer: SyncSender<Chunk>,
    recycled: Receiver<Vec<u8>>,
}

impl ChunkWriter {
    pub fn new(to_consumer: SyncSender<Chunk>, recycled: Receiver<Vec<u8>>) -> Self {
        ChunkWriter {
            buffer: vec![0u8; CHUNK],
            filled: 0,
            hasher: Sha256::new(),
            to_consumer,
            recycled,
        }
    }

    fn ship(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        self.hasher.update(&self.buffer[..self.filled]);
        // Buffers keep their full length, so reuse costs no zeroing.
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| vec![0u8; CHUNK]);
        let full = std::mem::replace(&mut self.buffer, next);
        let filled = std::mem::take(&mut self.filled);
        self.to_consumer
            .send((full, filled))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the layer output stopped"))
    }

    /// Reads up to `len` bytes of `file` straight into the chunks (no extra copy).
    /// Returns how many were read: fewer only at end of file.
    pub fn read_from(&mut self, file: &mut File, len: u64) -> io::Result<u64> {
        let mut done = 0u64;
        while done < len {
            if self.filled == CHUNK {
                self.ship()?;
            }
            let want = (CHUNK - self.filled).min((len - done).min(usize::MAX as u64) as usize);
            let n = match file.read(&mut self.buffer[self.filled..self.filled + want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.filled += n;
            done += n as u64;
        }
        Ok(done)
    }

    /// Ships the last chunk and returns the sha256 of everything written (the diff_id).
    pub fn finish(mut self) -> io::Result<Digest> {
        self.ship()?;
        Ok(Digest::from_bytes(self.hasher.finalize().into()))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.filled == CHUNK {
            self.ship()?;
        }
        let n = buf.len().min(CHUNK - self.filled);
        self.buffer[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The consumer's loop: writes every chunk to `out`, returning buffers for reuse, until
/// the producer hangs up.
pub(crate) fn drain(
    from_producer: Receiver<Chunk>,
    recycle: SyncSender<Vec<u8>>,
    out: &mut impl Write,
) -> io::Result<()> {
    for (buffer, filled) in from_producer {
        out.write_all(&buffer[..filled])?;
        // The producer may have finished already; then the buffer is simply dropped.
        let _ = recycle.try_send(buffer);
    }
    Ok(())
}

/// The extracting thread's end of `unpack_layer`: a `Read` over the chunks that the
/// decompressing thread sends.
pub(crate) struct ChunkReader {
    from_producer: Receiver<Chunk>,
    recycle: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    filled: usize,
    position: usize,
}

impl ChunkReader {
    pub fn new(from_producer: Receiver<Chunk>, recycle: SyncSender<Vec<u8>>) -> Self {
        ChunkReader {
            from_producer,
            recycle,
            current: Vec::new(),
            filled: 0,
            position: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.filled {
            let used = std::mem::take(&mut self.current);
            if !used.is_empty() {
                let _ = self.recycle.try_send(used);
            }
            match self.from_producer.recv() {
                Ok((buffer, filled)) => {
                    (self.current, self.filled, self.position) = (buffer, filled, 0)
                }
                Err(_) => return Ok(0), // the producer reached the end of its input
            }
        }
        let n = buf.len().min(self.filled - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// The decompressing thread's loop of `unpack_layer`: reads `input` to its end, hashes
/// all of it and sends it on for as long as the consumer listens (the tar parser stops at
/// the end-of-archive blocks; what follows still counts for the diff_id). Returns `None`
/// when `abort` was raised because the consumer failed.
pub(crate) fn feed(
    input: &mut impl Read,
    to_consumer: SyncSender<Chunk>,
    recycled: Receiver<Vec<u8>>,
    abort: &AtomicBool,
) -> io::Result<Option<Digest>> {
    let mut hasher = Sha256::new();
    let mut listening = true;
    let mut spare: Option<Vec<u8>> = None;
    loop {
        if abort.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mut buffer = spare
            .take()
            .or_else(|| recycled.try_recv().ok())
            .unwrap_or_else(|| vec![0u8; CHUNK]);
        let mut filled = 0;
        while filled < CHUNK {
            match input.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(Some(Digest::from_bytes(hasher.finalize().into())));
        }
        hasher.update(&buffer[..filled]);
        if listening {
            if let Err(returned) = to_consumer.send((buffer, filled)) {
                listening = false;
                spare = Some(returned.0.0);
            }
        } else {
            spare = Some(buffer);
        }
    }
}
