//! The whole guest disk of a qcow image and its backing chain, read into a CRC-32.
//!
//! The chain is opened by `qcow_core::chain` (a [`Volume`] where backing files open,
//! up to [`chain::LAYERS`] images, no allocator, no recursion); this module only
//! reads what the top image shows and sums it.
//!
//! # Memory
//! Nothing is allocated. The caller's pool (at least [`POOL_LEN`] bytes, a static
//! buffer in both examples) holds the [`READ_LEN`] read buffer and then the chain's
//! scratch buffers (see "Memory" in `qcow_core::chain`).

use embedded_io::ErrorType;
use qcow_core::chain::{self, Failure, FailureKind, Path, Volume};
use qcow_core::{Backing, BlockIo, Error, Image};

use crate::crc32::Crc32;

/// Bytes read per call into the top image.
pub const READ_LEN: usize = 64 * 1024;
/// A pool that serves every chain: the read buffer and a worst-case scratch buffer
/// per layer.
pub const POOL_LEN: usize = READ_LEN + chain::SCRATCH_LEN;

/// The device error of a volume's files.
type VolError<V> = <<V as Volume>::File as ErrorType>::Error;

/// What [`digest`] found: the guest disk's size and the CRC-32 of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// The virtual size in bytes.
    pub size: u64,
    /// The CRC-32 (as zlib's `crc32`) of all `size` bytes the guest reads.
    pub crc32: u32,
}

/// Opens the qcow image at `path` on `volume`, and reads it as [`digest`] does.
pub fn digest_file<V: Volume>(
    volume: &mut V,
    path: &Path,
    secret: Option<&[u8]>,
    pool: &mut [u8],
) -> Result<Digest, Failure<VolError<V>>> {
    let (buf, scratch) = split(pool, path)?;
    chain::open_file(volume, path, secret, scratch, |image| {
        read_whole(image, buf)
    })
}

/// Opens the qcow image on `top` and its backing chain, reads the whole guest disk,
/// and returns its size and CRC-32.
///
/// `path` names the image in messages, and its backing files are resolved against
/// it and opened on `volume`. `secret` is used for every encrypted image of the
/// chain. `pool` holds the read buffer and the scratch buffers: [`POOL_LEN`] bytes
/// serve every chain.
pub fn digest<V: Volume, T: BlockIo<Error = VolError<V>>>(
    volume: &mut V,
    top: T,
    path: &Path,
    secret: Option<&[u8]>,
    pool: &mut [u8],
) -> Result<Digest, Failure<VolError<V>>> {
    let (buf, scratch) = split(pool, path)?;
    chain::open(volume, top, path, secret, scratch, |image| {
        read_whole(image, buf)
    })
}

/// The pool as the read buffer and the chain's scratch pool.
fn split<'p, E>(
    pool: &'p mut [u8],
    path: &Path,
) -> Result<(&'p mut [u8], &'p mut [u8]), Failure<E>> {
    if pool.len() < READ_LEN {
        return Err(Failure::new(path, FailureKind::PoolTooSmall));
    }
    Ok(pool.split_at_mut(READ_LEN))
}

/// Reads the whole guest disk of `image` through `buf`, and sums it.
fn read_whole<B, K, S>(
    image: &mut Image<B, K, S>,
    buf: &mut [u8],
) -> Result<Digest, Error<B::Error>>
where
    B: BlockIo,
    K: Backing<IoError = B::Error>,
    S: AsMut<[u8]>,
{
    let size = image.size();
    let mut crc = Crc32::new();
    let mut offset = 0u64;
    while offset < size {
        let n = usize::try_from(size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let chunk = buf.get_mut(..n).unwrap_or_default();
        image.read_at(offset, chunk)?;
        crc = crc.update(chunk);
        offset += n as u64;
    }
    Ok(Digest {
        size,
        crc32: crc.finish(),
    })
}
