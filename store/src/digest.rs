//! `sha256:<hex>` content addresses (image-spec `descriptor.md#digests`), and a hashing
//! writer that computes one while bytes stream through it.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A sha256 digest. Only sha256 is accepted: it is what every registry and tool speaks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest of everything `reader` yields (for blobs too large to read at once).
    pub fn of_reader(reader: &mut impl Read) -> io::Result<Digest> {
        let mut writer = HashingWriter::new(io::sink());
        io::copy(reader, &mut writer)?;
        Ok(writer.finish().1)
    }

    /// Checks that `bytes` hash to this digest: `Error::DigestMismatch` when they do not.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        let actual = Digest::of(bytes);
        if actual != *self {
            return Err(Error::DigestMismatch {
                expected: *self,
                actual,
            });
        }
        Ok(())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters, as used for file names under `blobs/sha256/`.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, as docker shows ids.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// Parses bare hex (64 characters) as a sha256 digest.
    pub fn from_hex(hex_str: &str) -> Result<Digest> {
        if hex_str.len() != 64
            || !hex_str
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::InvalidDigest(hex_str.to_string()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out)
            .map_err(|_| Error::InvalidDigest(hex_str.to_string()))?;
        Ok(Digest(out))
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        match s.strip_prefix("sha256:") {
            Some(hex_str) => {
                Digest::from_hex(hex_str).map_err(|_| Error::InvalidDigest(s.to_string()))
            }
            None => Err(Error::InvalidDigest(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts everything written through it to an inner writer.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Returns the inner writer, the digest of all bytes written and their count.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest(self.hasher.finalize().into()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_other_algorithms_and_bad_hex() {
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!("sha256:ABCDEF".parse::<Digest>().is_err());
        assert!(
            format!("sha256:{}", "G".repeat(64))
                .parse::<Digest>()
                .is_err()
        );
    }

    #[test]
    fn hashing_writer_matches_one_shot() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (buf, d, n) = w.finish();
        assert_eq!(buf, b"hello world");
        assert_eq!(n, 11);
        assert_eq!(d, Digest::of(b"hello world"));
    }
}
