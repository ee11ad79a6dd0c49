//! strata-store: the content-addressed store under `<root>/`.
//!
//! ```text
//! <root>/
//!   oci/                 OCI image layout (image-spec v1.1): oci-layout, index.json, blobs/sha256/<hex>
//!   layers/<diffid-hex>/ one unpacked layer in overlay on-disk form, written once, never modified
//!   containers/<id>/     state.json, upper/, work/, rootfs/
//!   cache/               build cache index
//!   tmp/                 staging for atomic writes; swept by gc
//!   lock                 flock: shared for normal work, exclusive for gc
//! ```
#![forbid(unsafe_code)]

pub mod digest;
pub mod error;
pub mod layer;
pub mod registry;

pub use digest::Digest;
pub use error::{Error, Result};
