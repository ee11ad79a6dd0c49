//! strata-unionfs: a union of read-only branches under one writable upper, mounted by our
//! FUSE filesystem or by kernel overlayfs, behind one `mount(spec, driver) -> guard` API.
