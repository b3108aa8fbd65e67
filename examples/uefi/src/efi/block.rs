//! `EFI_BLOCK_IO_PROTOCOL`: whole blocks of a disk or partition.

use core::ptr::NonNull;

use r_efi::protocols::block_io;

use super::EfiError;

/// A disk's block I/O interface (not owned: the firmware's).
pub struct BlockDevice(NonNull<block_io::Protocol>);

/// What the device says of its medium.
#[derive(Debug, Clone, Copy)]
pub struct Media {
    /// Changes when the medium is replaced; every read names it.
    pub media_id: u32,
    /// Whether a medium is there.
    pub present: bool,
    /// Bytes per block.
    pub block_size: u32,
    /// The alignment buffers must have (0 or 1: none).
    pub io_align: u32,
    /// The last block's number.
    pub last_block: u64,
}

impl BlockDevice {
    /// Wraps a block I/O interface (`None` for NULL).
    ///
    /// # Safety
    /// `raw` must be NULL or a block I/O interface the firmware handed out.
    pub(super) unsafe fn from_raw(raw: *mut block_io::Protocol) -> Option<BlockDevice> {
        NonNull::new(raw).map(BlockDevice)
    }

    /// The device's medium, as it is now.
    pub fn media(&self) -> Option<Media> {
        // SAFETY: the interface is valid; its media pointer is the firmware's.
        let m = unsafe { self.0.as_ref().media };
        if m.is_null() {
            return None;
        }
        // SAFETY: non-null, the firmware's EFI_BLOCK_IO_MEDIA (booleans are 0 or 1
        // as the specification defines BOOLEAN).
        let m = unsafe { *m };
        Some(Media {
            media_id: m.media_id,
            present: m.media_present,
            block_size: m.block_size,
            io_align: m.io_align,
            last_block: m.last_block,
        })
    }

    /// Reads blocks from `lba` on into `buf`, whose length must be a multiple of the
    /// block size and whose address must be aligned to the device's `io_align`
    /// (`DiskIo` in disk.rs makes sure of both; the firmware checks them too).
    pub fn read_blocks(&mut self, media_id: u32, lba: u64, buf: &mut [u8]) -> Result<(), EfiError> {
        let this = self.0.as_ptr();
        // SAFETY: the firmware writes exactly `buf.len()` bytes into `buf`, or fails.
        let status = unsafe {
            ((*this).read_blocks)(this, media_id, lba, buf.len(), buf.as_mut_ptr().cast())
        };
        EfiError::check(status)
    }
}
