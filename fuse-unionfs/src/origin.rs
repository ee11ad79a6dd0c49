//! Copy-up origins, in kernel overlayfs's on-disk form: `trusted.overlay.origin` on an
//! upper non-directory holds the file handle of the lower file it was copied up from
//! (`struct ovl_fb`, fs/overlayfs/overlayfs.h), and `trusted.overlay.impure` marks an upper
//! directory holding such entries, whose listing must look their numbers up. A copied-up
//! file then shows its lower file's inode number after a remount too, and strata and
//! overlayfs read each other's origins: a container's copied-up files show the same
//! numbers under either driver.
//!
//! The handle is written with a null uuid, as overlayfs writes it here; an overlayfs
//! mounted with `uuid=on` ignores such a handle (its file keeps the upper number), which
//! harms nothing. Decoding a handle takes CAP_DAC_READ_SEARCH, as overlayfs's does.

use std::path::Path;

use rustix::io::Errno;

use crate::copyup::get_xattr;
use crate::layer::{Layers, Meta, Res, UPPER};

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

/// The origin xattr's value for a lower file's handle.
pub(crate) fn encode(kind: i32, handle: &[u8]) -> Option<Vec<u8>> {
    let len = HEADER + handle.len();
    let kind = u8::try_from(kind).ok()?;
    let mut value = vec![VERSION, MAGIC, u8::try_from(len).ok()?, CPU_ENDIAN, kind];
    value.extend_from_slice(&[0; 16]);
    value.extend_from_slice(handle);
    Some(value)
}

/// The handle (type, bytes) in an origin xattr, if it is a lower file's that overlayfs
/// would decode on this machine.
pub(crate) fn decode(value: &[u8]) -> Option<(i32, &[u8])> {
    if value.len() < HEADER || value[0] != VERSION || value[1] != MAGIC {
        return None;
    }
    let (len, flags) = (value[2] as usize, value[3]);
    let known = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;
    if len < HEADER || len > value.len() || flags & !known != 0 || flags & FLAG_PATH_UPPER != 0 {
        return None;
    }
    if flags & FLAG_ANY_ENDIAN == 0 && flags & FLAG_BIG_ENDIAN != CPU_ENDIAN {
        return None;
    }
    Some((i32::from(value[4]), &value[HEADER..len]))
}

/// Records on `copy` (a copy-up being built) that it comes from `rel` in branch `layer`.
/// Best effort: a file system without file handles gets no origin, as with overlayfs.
pub(crate) fn record(layers: &Layers, layer: usize, rel: &Path, copy: &Path) {
    let Ok((kind, handle)) = crate::sys::file_handle(layers.fd(layer), rel) else {
        return;
    };
    if let Some(value) = encode(kind, &handle) {
        let _ = rustix::fs::lsetxattr(copy, ORIGIN_XATTR, &value, rustix::fs::XattrFlags::empty());
    }
}

/// Marks upper directory `dir` as holding entries with an origin (once).
pub(crate) fn mark_impure(layers: &Layers, dir: &Path) {
    let path = layers.abs(UPPER, dir);
    if get_xattr(&path, IMPURE_XATTR.as_ref()).is_err() {
        let _ = rustix::fs::lsetxattr(&path, IMPURE_XATTR, b"y", rustix::fs::XattrFlags::empty());
    }
}

/// Whether upper directory `dir` may hold entries with an origin.
pub(crate) fn is_impure(layers: &Layers, dir: &Path) -> bool {
    get_xattr(&layers.abs(UPPER, dir), IMPURE_XATTR.as_ref()).is_ok()
}

/// The lower file upper non-directory `rel` was copied up from, if its origin names one
/// that a lower branch's file system still has and that has no other name (a lower file
/// with several names may have been copied up to several files: overlayfs then keeps the
/// upper numbers too). EPERM: this process may not decode handles.
pub(crate) fn lower_of(layers: &Layers, rel: &Path) -> Res<Option<(Meta, usize)>> {
    let value = match get_xattr(&layers.abs(UPPER, rel), ORIGIN_XATTR.as_ref()) {
        Ok(value) => value,
        Err(_) => return Ok(None),
    };
    let Some((kind, handle)) = decode(&value) else {
        return Ok(None);
    };
    for layer in 1..layers.count() {
        match crate::sys::open_by_handle(layers.fd(layer), kind, handle) {
            Ok(fd) => {
                let meta = Meta::from_stat(&rustix::fs::fstat(&fd)?);
                if meta.nlink != 1 || meta.is_dir() {
                    return Ok(None);
                }
                // Its branch: the one with it at the same path (a copy-up in place), else
                // the first on its file system.
                let home = (layer..layers.count())
                    .find(|&l| layers.stat(l, rel).is_ok_and(|m| m.key() == meta.key()))
                    .unwrap_or(layer);
                return Ok(Some((meta, home)));
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
        let (kind, handle) = decode(&written).unwrap();
        assert_eq!(kind, 1);
        assert_eq!(handle, &written[21..]);
        assert_eq!(encode(kind, handle).unwrap(), written);
        // an index's upper handle, another endianness, a bad magic, a short value
        let mut upper = written;
        upper[3] = FLAG_PATH_UPPER;
        assert_eq!(decode(&upper), None);
        let mut other = written;
        other[3] = FLAG_BIG_ENDIAN ^ CPU_ENDIAN;
        assert_eq!(decode(&other), None);
        let mut bad = written;
        bad[1] = 0xfa;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&written[..20]), None);
        let mut long = written;
        long[2] = 0x1e;
        assert_eq!(decode(&long), None);
    }
}
