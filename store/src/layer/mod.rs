//! OCI layers: a directory in overlay on-disk form <-> a layer blob (image-spec `layer.md`).
//!
//! ```text
//! write_layer:  dir --walk (parallel stat)--> sorted entries --tar--> sha256 (diff_id)
//!                   ==1 MiB chunks==> zstd/gzip/none --> sha256 (digest) --> out
//!               (one pass, streamed; tar + reads on one thread, compression on the caller's)
//! unpack_layer: in --magic bytes--> zstd/gzip/plain --> sha256 (diff_id)   (caller's thread)
//!                   ==1 MiB chunks==> tar parse --> extract under a dirfd with
//!                   openat2(RESOLVE_BENEATH)               (extracting thread; hostile-safe)
//! ```
//!
//! Unpacking refuses (rather than re-roots, as `RESOLVE_IN_ROOT` would) any entry whose
//! path leads out of the target: a `..` that climbs above it, a symlink on the way that
//! points out, a hard link to outside or to nothing. Absolute names lose their leading `/`
//! as docker does. Symlink targets themselves are stored verbatim: they are only ever
//! resolved inside a root.
//!
//! On disk (uppers and unpacked layers) a deletion is a char device 0/0 and an opaque
//! directory carries the xattr `trusted.overlay.opaque="y"` (kernel overlayfs form); in the
//! tar they are `.wh.NAME` and `DIR/.wh..wh..opq` (image-spec `layer.md#whiteouts`).

pub(crate) mod compress;
mod guard;
mod pax;
mod pipe;
mod root;
mod unpack;
mod walk;
mod write;

pub use unpack::unpack_layer;
pub use write::write_layer;

use crate::Digest;
use crate::registry::media;

/// Prefix of a whiteout entry in a layer tar (image-spec `layer.md#whiteouts`).
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the entry that marks its directory opaque in a layer tar.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The overlayfs xattr that marks a directory opaque on disk (value `y`).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Xattrs under this prefix are overlayfs bookkeeping and never go into a layer.
pub const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// Whether an xattr belongs in a layer (both ways): not overlayfs' own, and not the
/// SELinux label, which is the host's policy rather than the image's content (as
/// containers/storage ignores it), and would make the same tree differ between machines.
pub(crate) fn is_layer_xattr(name: &[u8]) -> bool {
    !name.starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) && name != b"security.selinux"
}

/// An overlay whiteout on disk: a character device with device number 0/0.
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// An overlay opaque directory on disk: `trusted.overlay.opaque = "y"` (read errors count
/// as not opaque).
pub fn is_opaque(path: &std::path::Path) -> bool {
    let mut value = [0u8; 4];
    matches!(rustix::fs::lgetxattr(path, OPAQUE_XATTR, &mut value), Ok(1) if value[0] == b'y')
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// zstd, multithreaded (the default; `tar+zstd`).
    #[default]
    Zstd,
    /// gzip, for registries and tools that do not speak zstd (`tar+gzip`).
    Gzip,
    /// An uncompressed tar.
    None,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Zstd => media::OCI_LAYER_ZSTD,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::None => media::OCI_LAYER_TAR,
        }
    }
}

/// How `write_layer` builds a blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    pub compression: Compression,
    /// When set, mtimes later than this (seconds since the epoch) are clamped to it
    /// (reproducible-builds.org `SOURCE_DATE_EPOCH`). The caller reads the environment.
    pub source_date_epoch: Option<i64>,
    /// Compression level; `None` = zstd 3 / gzip 6.
    pub level: Option<i32>,
}

/// What `write_layer` produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the blob as written (compressed).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    pub media_type: &'static str,
}
