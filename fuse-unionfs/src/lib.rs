//! strata-unionfs: a union of read-only branches under one writable upper, mounted by our
//! FUSE filesystem or by kernel overlayfs, behind one `mount(spec, driver) -> guard` API.
//! Both drivers read and write the kernel overlayfs on-disk form (whiteouts are char
//! devices 0/0, opaque directories carry `trusted.overlay.opaque=y`), so a container made
//! under one driver mounts with the other.
//!
//! Layout: `layer` (branches, on-disk form), `inode` (inode table), `union`, `modify` and
//! `rename` (the filesystem logic, no FUSE types), `copyup`, `origin` (copy-up origins),
//! `pending` (copy-ups finished in the background), `prefetch` (directory read-ahead),
//! `fuse` (fuser callbacks), `plus` (which listings carry attributes), `idshift` (owners
//! seen from a user namespace), `mount` (drivers, guard, daemon, sweeping), `sys` (the only
//! unsafe code).

mod copyup;
mod error;
mod fuse;
mod idshift;
mod inode;
mod layer;
mod modify;
mod mount;
mod origin;
mod pending;
mod plus;
mod prefetch;
mod rename;
mod sys;
mod union;

pub use error::{Error, Result};
pub use idshift::IdShift;
pub use layer::{Kind, Meta};
pub use modify::{SetAttr, SetTime};
pub use mount::{
    Driver, Flags, MountGuard, MountSpec, abort_connection, detach_all_below, fuse_available,
    mount, mount_detached, mount_served, mount_type, serve_daemon, serve_foreground, sweep_stale,
    union_upper, unmount,
};
pub use pending::finish_copy_ups;
pub use union::{Caller, DirEntry, Entry, Listing, Union, Unprivileged};
