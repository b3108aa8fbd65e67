//! A disk (or partition) holding a qcow image written raw onto it, as a positional
//! [`BlockIo`] over `EFI_BLOCK_IO_PROTOCOL`, which reads whole blocks only, into
//! buffers aligned as the device says (`IoAlign`).
//!
//! Runs of whole blocks go straight into the caller's buffer when it is aligned;
//! a request's unaligned head or tail, and any block for a misaligned buffer, go
//! through one block-sized bounce buffer aligned to 4 KiB.

use embedded_io::ErrorType;
use qcow_core::BlockIo;

use crate::efi::{BlockDevice, EfiError};

/// The largest block size and buffer alignment served.
pub const MAX_BLOCK: usize = 4096;

/// One block, aligned for any device this serves.
#[repr(C, align(4096))]
pub struct Bounce(pub [u8; MAX_BLOCK]);

/// A disk as a byte-addressed, read-only device.
pub struct DiskIo<'b> {
    dev: BlockDevice,
    media_id: u32,
    block: usize,
    align: usize,
    len: u64,
    /// Borrowed, not held: a `DiskIo` is moved into the image, and every byte of
    /// it is copied on the way.
    bounce: &'b mut Bounce,
}

impl<'b> DiskIo<'b> {
    /// The disk `dev`, as its medium is now; `None` without a medium, or for a
    /// block size (a power of two from 512 to 4096 bytes is read) or an alignment
    /// (up to 4096 bytes) this does not serve.
    pub fn new(dev: BlockDevice, bounce: &'b mut Bounce) -> Option<DiskIo<'b>> {
        let m = dev.media().filter(|m| m.present)?;
        let block = usize::try_from(m.block_size).ok()?;
        if !block.is_power_of_two() || !(512..=MAX_BLOCK).contains(&block) {
            return None;
        }
        let align = usize::try_from(m.io_align.max(1)).ok()?;
        if !align.is_power_of_two() || align > MAX_BLOCK {
            return None;
        }
        let len = m
            .last_block
            .checked_add(1)
            .and_then(|n| n.checked_mul(u64::from(m.block_size)))
            .unwrap_or(u64::MAX);
        Some(DiskIo {
            dev,
            media_id: m.media_id,
            block,
            align,
            len,
            bounce,
        })
    }
}

impl ErrorType for DiskIo<'_> {
    type Error = EfiError;
}

impl BlockIo for DiskIo<'_> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), EfiError> {
        offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.len)
            .ok_or(EfiError::OutOfRange)?;
        let block = self.block as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (lba, skew) = (at / block, (at % block) as usize);
            let rest = buf.get_mut(done..).unwrap_or_default();
            let aligned = (rest.as_ptr() as usize).is_multiple_of(self.align);
            if skew == 0 && rest.len() >= self.block && aligned {
                let n = rest.len() - rest.len() % self.block;
                let run = rest.get_mut(..n).unwrap_or_default();
                self.dev.read_blocks(self.media_id, lba, run)?;
                done += n;
            } else {
                let one = self.bounce.0.get_mut(..self.block).unwrap_or_default();
                self.dev.read_blocks(self.media_id, lba, one)?;
                let n = (self.block - skew).min(rest.len());
                let (dst, src) = (rest.get_mut(..n), one.get(skew..skew + n));
                if let (Some(dst), Some(src)) = (dst, src) {
                    dst.copy_from_slice(src);
                }
                done += n;
            }
        }
        Ok(())
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> Result<(), EfiError> {
        Err(EfiError::ReadOnly)
    }
    fn len(&mut self) -> Result<u64, EfiError> {
        Ok(self.len)
    }
    fn set_len(&mut self, _: u64) -> Result<(), EfiError> {
        Err(EfiError::ReadOnly)
    }
    fn flush(&mut self) -> Result<(), EfiError> {
        Ok(())
    }
}
