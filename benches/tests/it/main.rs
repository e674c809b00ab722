//! benches' integration tests: the bench binaries, run for real.

mod abuse;
