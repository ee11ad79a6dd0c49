//! The registry client: distribution-spec v1.1 over `ureq` (synchronous, rustls).
//!
//! ```text
//! reference.rs  host[:port]/repo[:tag][@sha256:..] parsing, Docker Hub normalisation
//! auth.rs       credentials file ($REGISTRY_AUTH_FILE / $DOCKER_CONFIG / ~/.docker), challenges
//! helper.rs     docker-credential-<name> helpers (credHelpers, credsStore): get, store, erase
//! client.rs     Client: scheme choice, auth (basic, bearer token), retries with backoff
//! blob.rs       HEAD / GET (verified, resumable) / upload (monolithic, chunked) / mount
//! manifest.rs   HEAD / GET (raw bytes, digest checked) / PUT
//! media.rs      OCI and Docker media types
//! ```
//!
//! Push and pull between a registry and the store are built on this in `transfer`.

pub mod auth;
mod blob;
mod client;
mod helper;
mod manifest;
pub mod media;
pub mod reference;

pub use auth::Credentials;
pub use blob::BlobSource;
pub(crate) use blob::wrong_blob;
pub use client::{Client, ClientOptions, is_local};
pub use manifest::RawManifest;
pub use reference::Reference;
