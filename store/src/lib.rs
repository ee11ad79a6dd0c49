//! strata-store: the content-addressed store under `<root>/`.
//!
//! ```text
//! <root>/
//!   oci/                 OCI image layout (image-spec v1.1): oci-layout, index.json, blobs/sha256/<hex>
//!   layers/<diffid-hex>/ one unpacked layer in overlay on-disk form, written once, never modified
//!   containers/<id>/     state.json, upper/, work/, rootfs/
//!   cache/               build cache index
//!   tmp/                 staging for atomic writes; swept by gc, and of dead processes' files at open
//!   lock                 flock: shared for normal work, exclusive for gc
//!   refs.lock            flock held while index.json or container names change
//!   sources.json         registry repositories known to hold each blob (hints for cross-repo mounts)
//! ```
#![forbid(unsafe_code)]

pub mod archive;
pub mod blob;
pub mod cache;
pub mod container;
pub mod diff;
pub mod digest;
pub mod error;
pub mod fsck;
pub mod gc;
pub mod image;
pub mod json;
pub mod layer;
pub mod layout;
pub mod lock;
pub mod refs;
pub mod registry;
pub mod time;
pub mod tmp;
pub mod transfer;
pub mod unpacked;

pub use blob::{BlobReader, BlobWriter};
pub use cache::CacheEntry;
pub use container::{Container, ContainerState, Status};
pub use digest::Digest;
pub use error::{Error, Result};
pub use fsck::{Problem, Repair};
pub use gc::GcReport;
pub use image::{Image, LayerBlob, Removal};
pub use layout::Store;
pub use oci_spec::image as oci;
