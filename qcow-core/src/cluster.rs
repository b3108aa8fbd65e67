//! Compressed clusters: raw deflate with QEMU's 4 KiB window.

use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

/// Why a compressed cluster could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The stream is not valid raw deflate.
    Invalid,
    /// The stream ended after this many bytes, less than a cluster.
    Short(usize),
}

/// Inflates a raw deflate stream into `out`, which must come out exactly full.
///
/// As QEMU (zlib with `Z_FINISH`), a stream that would produce more than `out` holds
/// is accepted and its first `out.len()` bytes kept; inflation stops there, so the work
/// is bounded by the cluster size. For many clusters, [`Inflater`] reuses its state.
pub fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), InflateError> {
    let mut state = DecompressorOxide::new();
    inflate_with(&mut state, input, out)
}

/// [`inflate`] with a reused decompressor (reset here, without clearing its tables).
fn inflate_with(
    state: &mut DecompressorOxide,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), InflateError> {
    state.init();
    let (status, _, written) = decompress(
        state,
        input,
        out,
        0,
        inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    );
    if written == out.len() {
        return match status {
            TINFLStatus::Failed | TINFLStatus::BadParam | TINFLStatus::Adler32Mismatch => {
                Err(InflateError::Invalid)
            }
            _ => Ok(()),
        };
    }
    match status {
        TINFLStatus::Done => Err(InflateError::Short(written)),
        _ => Err(InflateError::Invalid),
    }
}

/// A reusable inflater: [`inflate`] without setting up its state for every cluster.
///
/// With the `libdeflate` feature (std builds), a stream that libdeflate inflates to
/// exactly `out.len()` bytes takes that path (about four times fewer instructions);
/// anything else (short, long, or invalid streams) is decided by miniz_oxide, so the
/// result is the same with and without the feature.
#[cfg(feature = "alloc")]
pub struct Inflater {
    state: alloc::boxed::Box<DecompressorOxide>,
    #[cfg(feature = "libdeflate")]
    fast: libdeflater::Decompressor,
}

#[cfg(feature = "alloc")]
impl core::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Inflater")
    }
}

#[cfg(feature = "alloc")]
// Derivable only without the libdeflate feature.
#[allow(clippy::derivable_impls)]
impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            state: alloc::boxed::Box::default(),
            #[cfg(feature = "libdeflate")]
            fast: libdeflater::Decompressor::new(),
        }
    }
}

#[cfg(feature = "alloc")]
impl Inflater {
    /// A new inflater.
    pub fn new() -> Self {
        Self::default()
    }

    /// As [`inflate`].
    pub fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), InflateError> {
        #[cfg(feature = "libdeflate")]
        if matches!(self.fast.deflate_decompress(input, out), Ok(n) if n == out.len()) {
            return Ok(());
        }
        inflate_with(&mut self.state, input, out)
    }
}

#[cfg(feature = "alloc")]
pub use deflate::Deflater;

#[cfg(feature = "alloc")]
mod deflate {
    use miniz_oxide::deflate::core::{
        compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
    };

    /// QEMU inflates with window bits 12: no back-reference may reach further.
    pub const WINDOW: usize = 4096;

    /// A reusable raw-deflate compressor whose streams QEMU can read.
    pub struct Deflater {
        state: alloc::boxed::Box<CompressorOxide>,
        #[cfg(feature = "libdeflate")]
        fast: Option<(libdeflater::Compressor, libdeflater::Compressor)>,
    }

    impl core::fmt::Debug for Deflater {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("Deflater")
        }
    }

    impl Default for Deflater {
        fn default() -> Self {
            Self::new(6)
        }
    }

    impl Deflater {
        /// A compressor at zlib `level` (QEMU uses the default, 6).
        pub fn new(level: u8) -> Self {
            let flags = create_comp_flags_from_zip_params(i32::from(level), -12, 0);
            Deflater {
                state: alloc::boxed::Box::new(CompressorOxide::new(flags)),
                #[cfg(feature = "libdeflate")]
                fast: libdeflater::CompressionLvl::new(i32::from(level))
                    .ok()
                    .zip(libdeflater::CompressionLvl::new(1).ok())
                    .map(|(full, probe)| {
                        (
                            libdeflater::Compressor::new(probe),
                            libdeflater::Compressor::new(full),
                        )
                    }),
            }
        }

        /// Compresses one cluster into `out`; returns the stream's length when it is
        /// shorter than the cluster (QEMU's rule), `None` when the cluster should be
        /// stored plain. A full flush every 4 KiB empties the dictionary, so no match
        /// reaches back more than 4096 bytes, whatever the cluster size.
        ///
        /// With the `libdeflate` feature, clusters of at most 4 KiB (where no match can
        /// reach further back anyway) are deflated by libdeflate: fewer instructions and
        /// a smaller stream than miniz_oxide's (a level-1 pass first, so incompressible
        /// and very compressible clusters cost little; otherwise the smaller of the two
        /// streams is kept).
        pub fn compress(&mut self, input: &[u8], out: &mut [u8]) -> Option<usize> {
            let limit = input.len().checked_sub(1)?;
            let out = out.get_mut(..limit.min(out.len()))?;
            #[cfg(feature = "libdeflate")]
            if input.len() <= WINDOW {
                if let Some((probe, full)) = self.fast.as_mut() {
                    // The cheap level-1 probe rejects incompressible clusters (most of
                    // the cost at full level) and keeps those it shrinks below an eighth
                    // (a few bytes at stake); the others get the full level too.
                    let quick = probe.deflate_compress(input, out).ok()?;
                    if quick <= input.len() / 8 {
                        return Some(quick);
                    }
                    let mut tmp = [0u8; WINDOW];
                    let tmp = tmp.get_mut(..quick.saturating_sub(1))?;
                    return match full.deflate_compress(input, tmp) {
                        Ok(n) => {
                            out.get_mut(..n)?.copy_from_slice(tmp.get(..n)?);
                            Some(n)
                        }
                        Err(_) => probe.deflate_compress(input, out).ok(),
                    };
                }
            }
            self.state.reset();
            let mut written = 0usize;
            let mut pieces = input.chunks(WINDOW).peekable();
            while let Some(piece) = pieces.next() {
                let last = pieces.peek().is_none();
                let flush = if last {
                    TDEFLFlush::Finish
                } else {
                    TDEFLFlush::Full
                };
                let dst = out.get_mut(written..)?;
                let (status, consumed, n) = compress(&mut self.state, piece, dst, flush);
                written = written.checked_add(n)?;
                match status {
                    TDEFLStatus::Done if last && consumed == piece.len() => return Some(written),
                    TDEFLStatus::Okay if !last && consumed == piece.len() => {}
                    _ => return None,
                }
            }
            None
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_large_cluster() {
        let mut input = alloc::vec![0u8; 65536];
        for (i, b) in input.iter_mut().enumerate() {
            *b = ((i * 7 / 3) % 251) as u8;
        }
        let mut out = alloc::vec![0u8; 65536];
        let n = Deflater::default().compress(&input, &mut out).unwrap();
        let mut back = alloc::vec![0u8; 65536];
        inflate(&out[..n], &mut back).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn incompressible_is_none() {
        let mut x = 0x1234_5678u32;
        let input: alloc::vec::Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut out = alloc::vec![0u8; 4096];
        assert_eq!(Deflater::default().compress(&input, &mut out), None);
    }

    #[test]
    fn inflater_decides_as_inflate() {
        let mut inf = Inflater::new();
        let mut input = alloc::vec![0u8; 8192];
        for (i, b) in input.iter_mut().enumerate() {
            *b = (i % 13) as u8;
        }
        let mut stream = alloc::vec![0u8; 8192];
        let n = Deflater::default().compress(&input, &mut stream).unwrap();
        // A stream longer than the cluster: its first bytes are kept (as QEMU).
        let mut half = alloc::vec![0u8; 4096];
        assert_eq!(inf.inflate(&stream[..n], &mut half), Ok(()));
        assert_eq!(half, input[..4096]);
        let mut whole = alloc::vec![0u8; 8192];
        assert_eq!(inf.inflate(&stream[..n], &mut whole), Ok(()));
        assert_eq!(whole, input);
        let mut more = alloc::vec![0u8; 9000];
        assert_eq!(
            inf.inflate(&stream[..n], &mut more),
            inflate(&stream[..n], &mut more)
        );
        assert_eq!(
            inf.inflate(&stream[..n], &mut more),
            Err(InflateError::Short(8192))
        );
        assert_eq!(
            inf.inflate(&[0xff; 16], &mut half),
            Err(InflateError::Invalid)
        );
    }

    #[test]
    fn short_and_garbage() {
        let mut out = alloc::vec![0u8; 512];
        let mut small = alloc::vec![0u8; 100];
        let n = Deflater::default()
            .compress(&[7u8; 100], &mut small)
            .unwrap();
        assert_eq!(
            inflate(&small[..n], &mut out),
            Err(InflateError::Short(100))
        );
        assert_eq!(inflate(&[0xff; 16], &mut out), Err(InflateError::Invalid));
        assert_eq!(inflate(&[], &mut out), Err(InflateError::Invalid));
    }
}
