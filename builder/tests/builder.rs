//! strata-builder's integration tests: golden parser cases (`tests/parse/<case>/` and
//! `tests/parse-negative/<case>/`), then the build driver against a real store.

mod driver;
mod golden;
