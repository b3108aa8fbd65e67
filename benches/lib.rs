//! Benchmarks of qcow-core (see `benches/core.rs`) and the side-by-side comparison with
//! qemu-img (`cargo xtask bench`, results in `RESULTS.md`).
