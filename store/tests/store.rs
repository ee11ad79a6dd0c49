//! Integration tests of `strata_store::Store` on real directories: images, names,
//! verification, gc, fsck, concurrency, containers, cache and diff.

mod store {
    pub mod fixtures;
    mod diff;
    mod images;
    mod maintenance;
}
