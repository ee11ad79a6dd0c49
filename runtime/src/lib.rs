//! strata-runtime: runs a command in fresh namespaces on a prepared root, under cgroup limits.
