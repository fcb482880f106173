//! Integration tests (`tests/`), benchmarks (`benches/`) and examples (`examples/`) of the
//! shadowbucket workspace. The library itself is the `shadowbucket` crate in `core/`.
//!
//! The README's Rust example is compiled and run as a doc test of this crate:
#![doc = include_str!("../README.md")]
