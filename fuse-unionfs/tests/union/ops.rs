//! One test per operation of the FUSE driver (placeholder, filled below).
