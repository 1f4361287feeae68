//! Nothing here: the package is its bench, `cargo bench -p id6-tower-peers` (see
//! `benches/peers.rs`), and `chart.py` beside it draws the bench's output.
