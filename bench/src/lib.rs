//! Nothing here: the package is its benches, `cargo bench -p id6-tower-bench --bench
//! overhead` and `--bench loopback` (see `benches/`), and the `hit_latency` example.
