//! Copy-up origins, in kernel overlayfs's on-disk form: `trusted.overlay.origin` on an
//! upper non-directory holds the file handle of the lower file it was copied up from
//! (`struct ovl_fb`, fs/overlayfs/overlayfs.h), and `trusted.overlay.impure` marks an upper
//! directory holding such entries, whose listing must look their numbers up. A copied-up
//! file then shows its lower file's inode number after a remount too, and strata and
//! overlayfs read each other's origins: a container's copied-up files show the same
//! numbers under either driver.
//!
//! The handle carries the lower file system's uuid (null where the kernel gives none), as
//! overlayfs writes it; one is decoded only on a branch whose file system has that uuid.
//! Decoding takes CAP_DAC_READ_SEARCH, as overlayfs's does.

use std::path::Path;

use rustix::io::Errno;

use crate::copyup::get_xattr;
use crate::layer::{Kind, Layers, Meta, Res, UPPER};

pub(crate) const ORIGIN_XATTR: &str = "trusted.overlay.origin";
pub(crate) const IMPURE_XATTR: &str = "trusted.overlay.impure";

const VERSION: u8 = 0;
const MAGIC: u8 = 0xfb;
/// version, magic, length, flags, handle type, uuid
const HEADER: usize = 5 + 16;
const FLAG_BIG_ENDIAN: u8 = 1 << 0;
const FLAG_ANY_ENDIAN: u8 = 1 << 1;
/// A handle of an upper file (overlayfs's index), not a lower one.
const FLAG_PATH_UPPER: u8 = 1 << 2;
const CPU_ENDIAN: u8 = if cfg!(target_endian = "big") {
    FLAG_BIG_ENDIAN
} else {
    0
};

/// The origin xattr's value for a handle of a lower file on a file system with `uuid`.
pub(crate) fn encode(kind: i32, handle: &[u8], uuid: [u8; 16]) -> Option<Vec<u8>> {
    let len = HEADER + handle.len();
    let kind = u8::try_from(kind).ok()?;
    let mut value = vec![VERSION, MAGIC, u8::try_from(len).ok()?, CPU_ENDIAN, kind];
    value.extend_from_slice(&uuid);
    value.extend_from_slice(handle);
    Some(value)
}

/// A lower file's handle in an origin xattr, as overlayfs would decode it on this machine.
pub(crate) struct Handle<'a> {
    pub kind: i32,
    pub bytes: &'a [u8],
    pub uuid: [u8; 16],
}

/// The handle in an origin xattr, if it is a lower file's that overlayfs would decode.
pub(crate) fn decode(value: &[u8]) -> Option<Handle<'_>> {
    if value.len() < HEADER || value[0] != VERSION || value[1] != MAGIC {
        return None;
    }
    let (len, flags) = (value[2] as usize, value[3]);
    let known = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;
    if len <= HEADER || len > value.len() || flags & !known != 0 || flags & FLAG_PATH_UPPER != 0 {
        return None;
    }
    if flags & FLAG_ANY_ENDIAN == 0 && flags & FLAG_BIG_ENDIAN != CPU_ENDIAN {
        return None;
    }
    Some(Handle {
        kind: i32::from(value[4]),
        bytes: &value[HEADER..len],
        uuid: value[5..HEADER].try_into().ok()?,
    })
}

/// Records on `copy` (a copy-up being built) that it comes from `rel` in branch `layer`;
/// whether it did. Best effort: a file system without file handles gives no origin, as
/// with overlayfs.
pub(crate) fn record(layers: &Layers, layer: usize, rel: &Path, copy: &Path) -> bool {
    let recorded = crate::sys::file_handle(layers.fd(layer), rel).and_then(|(kind, handle)| {
        let uuid = layers.fs(layer).1.unwrap_or_default();
        let value = encode(kind, &handle, uuid).ok_or(Errno::OVERFLOW)?;
        rustix::fs::lsetxattr(copy, ORIGIN_XATTR, &value, rustix::fs::XattrFlags::empty())
    });
    if let Err(err) = &recorded {
        tracing::debug!("{}: no copy-up origin recorded: {err}", rel.display());
    }
    recorded.is_ok()
}

/// Marks upper directory `dir` as holding entries with an origin (once).
pub(crate) fn mark_impure(layers: &Layers, dir: &Path) {
    let path = layers.abs(UPPER, dir);
    if !is_impure(layers, dir)
        && let Err(err) =
            rustix::fs::lsetxattr(&path, IMPURE_XATTR, b"y", rustix::fs::XattrFlags::empty())
    {
        tracing::debug!("{}: not marked impure: {err}", path.display());
    }
}

/// Before upper non-directory `rel` gets a name in upper directory `to` (a rename or a
/// link): `to` is marked impure if `rel` has an origin, so that a later mount reads it
/// there too (as overlayfs's rename does).
pub(crate) fn carry(layers: &Layers, rel: &Path, to: &Path) {
    if get_xattr(&layers.abs(UPPER, rel), ORIGIN_XATTR.as_ref()).is_ok() {
        mark_impure(layers, to);
    }
}

/// Whether upper directory `dir` may hold entries with an origin.
pub(crate) fn is_impure(layers: &Layers, dir: &Path) -> bool {
    get_xattr(&layers.abs(UPPER, dir), IMPURE_XATTR.as_ref()).is_ok()
}

/// The lower file upper entry `rel` (of kind `kind`) was copied up from, and a branch on
/// its file system, if its origin names a file of that kind with no other name that a
/// branch's file system (of the origin's uuid) still has. A lower file with several names
/// may have been copied up to several files: overlayfs then keeps the upper numbers too.
/// EPERM: this process may not decode handles.
pub(crate) fn lower_of(layers: &Layers, rel: &Path, kind: Kind) -> Res<Option<(Meta, usize)>> {
    let Ok(value) = get_xattr(&layers.abs(UPPER, rel), ORIGIN_XATTR.as_ref()) else {
        return Ok(None);
    };
    let Some(handle) = decode(&value) else {
        return Ok(None);
    };
    let mut tried = Vec::new();
    for layer in 1..layers.count() {
        let (dev, uuid) = layers.fs(layer);
        if tried.contains(&dev) || uuid.unwrap_or_default() != handle.uuid {
            continue;
        }
        tried.push(dev);
        match crate::sys::open_by_handle(layers.fd(layer), handle.kind, handle.bytes) {
            Ok(fd) => {
                let Ok(st) = rustix::fs::fstat(&fd) else {
                    return Ok(None);
                };
                let meta = Meta::from_stat(&st);
                let usable = meta.nlink == 1 && meta.kind() == kind && meta.dev == dev;
                return Ok(usable.then_some((meta, layer)));
            }
            Err(Errno::PERM) => return Err(Errno::PERM),
            Err(_) => continue,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlayfs_origins_decode() {
        // as overlayfs wrote one here: ext4's FILEID_INO32_GEN (inode 0x2a69eb), null uuid
        let written = [
            0x00, 0xfb, 0x1d, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xeb,
            0x69, 0x2a, 0x00, 0xd5, 0xdc, 0xc1, 0x92,
        ];
        let handle = decode(&written).unwrap();
        assert_eq!(handle.kind, 1);
        assert_eq!(handle.bytes, &written[21..]);
        assert_eq!(handle.uuid, [0; 16]);
        assert_eq!(encode(1, handle.bytes, handle.uuid).unwrap(), written);
        let mut uuid = [0; 16];
        uuid[0] = 0x42;
        assert_eq!(
            decode(&encode(1, &[1, 2], uuid).unwrap()).unwrap().uuid,
            uuid
        );
        // an index's upper handle, another endianness, a bad magic, a short value
        let mut upper = written;
        upper[3] = FLAG_PATH_UPPER;
        assert!(decode(&upper).is_none());
        let mut other = written;
        other[3] = FLAG_BIG_ENDIAN ^ CPU_ENDIAN;
        assert!(decode(&other).is_none());
        let mut bad = written;
        bad[1] = 0xfa;
        assert!(decode(&bad).is_none());
        assert!(decode(&written[..20]).is_none());
        // no handle at all
        let mut empty = written;
        empty[2] = 21;
        assert!(decode(&empty).is_none());
        let mut long = written;
        long[2] = 0x1e;
        assert!(decode(&long).is_none());
    }
}
