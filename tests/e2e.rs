//! End-to-end tests of the `strata` binary: real stores, mounts, namespaces and registries.
//! One test binary; each area is a module under tests/e2e/.

#[path = "e2e/build.rs"]
mod build;
#[path = "e2e/common.rs"]
mod common;
#[path = "e2e/cp.rs"]
mod cp;
#[path = "e2e/distribution.rs"]
mod distribution;
#[path = "e2e/mount.rs"]
mod mount;
#[path = "e2e/run.rs"]
mod run;
#[path = "e2e/store.rs"]
mod store;
