//! Not a library: the home of id6-tower's heavier tests (browser, Redis cluster, gRPC), the
//! tonic example and the benches, kept out of the root package so that the README's first
//! command builds only what the quickstart needs. `cargo test --all-features` at the
//! repository root runs this package too.

// The README's code is compiled here, where its gRPC block finds tonic's transport (so with
// the `tonic` feature, which `cargo test --all-features` turns on).
#[cfg(all(doctest, feature = "tonic"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
