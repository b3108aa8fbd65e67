//! Test data, shared by qcow-core's unit and integration tests and the benches (each
//! includes this file): runs of text (compressible) and of noise (not).

/// `len` bytes of `seed` (into any collection, so no_std and std code share it): runs
/// of `run` bytes, text and xorshift noise in turn.
pub fn mixed<C: FromIterator<u8>>(seed: u32, len: usize, run: usize) -> C {
    const TEXT: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|i| {
            if (i / run.max(1)) & 1 == 0 {
                TEXT[i % TEXT.len()]
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}
