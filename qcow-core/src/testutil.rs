//! Helpers shared by the unit tests of `check` and `maint`.

use crate::io::{BlockIo, MemIo};

mod mixed;
pub(crate) use mixed::mixed;

/// The big-endian u64 at `at`.
pub(crate) fn get(io: &mut MemIo, at: u64) -> u64 {
    let mut b = [0u8; 8];
    io.read_at(at, &mut b).unwrap();
    u64::from_be_bytes(b)
}

/// Stores `v` big-endian at `at`.
pub(crate) fn put(io: &mut MemIo, at: u64, v: u64) {
    io.write_at(at, &v.to_be_bytes()).unwrap();
}
