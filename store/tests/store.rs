//! Integration tests of `strata_store::Store` on real directories: images, names,
//! verification, gc, fsck, concurrency, containers, cache and diff.

mod store {
    mod diff;
    pub mod fixtures;
    mod images;
    mod maintenance;
}
