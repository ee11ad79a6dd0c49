//! End-to-end tests of the `strata` binary: real stores, mounts, namespaces and registries.
//! One test binary; each area is a module under tests/e2e/.

mod common;
