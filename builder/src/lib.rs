//! strata-builder: Buildfile text -> AST -> typed instructions -> stage graph -> steps.
#![forbid(unsafe_code)]
