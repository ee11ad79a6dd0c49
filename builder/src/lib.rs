//! strata-builder: Buildfile text -> AST (`parser`) -> typed instructions
//! (`instructions`) -> stage graph (`stages`) -> steps run by the build driver, with
//! variable expansion (`expand`), the build context and its ignore file (`context`) and
//! content-addressed cache keys.
#![forbid(unsafe_code)]

pub mod build;
pub mod cache;
pub mod chmod;
pub mod context;
pub mod error;
pub mod executor;
pub mod expand;
pub mod instructions;
pub mod parser;
pub mod progress;
pub mod remote;
pub mod stages;
pub mod tree;

pub use build::{BuildOptions, ImageSource, Secret, build, check_cancelled};
pub use error::{Error, Result};
