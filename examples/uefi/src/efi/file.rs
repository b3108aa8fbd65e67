//! `EFI_FILE_PROTOCOL`: files and directories of a FAT volume, opened for reading.

use core::ptr::{self, NonNull};

use r_efi::protocols::file;

use super::EfiError;

/// An open file or directory, closed on drop.
pub struct File(NonNull<file::Protocol>);

/// `EFI_FILE_INFO` with room for a 255-character name, aligned for its `u64`s.
#[repr(C, align(8))]
struct InfoBuf([u8; 96 + 2 * 256]);

impl File {
    /// Takes ownership of an open file handle (`None` for NULL).
    ///
    /// # Safety
    /// `raw` must be NULL or an open file that nothing else will use or close.
    pub(super) unsafe fn from_raw(raw: *mut file::Protocol) -> Option<File> {
        NonNull::new(raw).map(File)
    }

    /// Opens `name` (NUL-terminated UCS-2, `\`-separated, relative to this
    /// directory) for reading.
    pub fn open(&self, name: &[u16]) -> Result<File, EfiError> {
        if name.last() != Some(&0) {
            return Err(EfiError::BadPath);
        }
        let this = self.0.as_ptr();
        let mut new = ptr::null_mut();
        // SAFETY: `this` is open (we own it); the name is NUL-terminated and only
        // read (`*mut` in the prototype alone); the firmware writes the new handle.
        let status =
            unsafe { ((*this).open)(this, &mut new, name.as_ptr().cast_mut(), file::MODE_READ, 0) };
        EfiError::check(status)?;
        // SAFETY: a successful Open returned an open file that only we hold.
        unsafe { File::from_raw(new) }.ok_or(EfiError::BadPath)
    }

    /// Moves the read position to `offset`.
    pub fn seek(&mut self, offset: u64) -> Result<(), EfiError> {
        let this = self.0.as_ptr();
        // SAFETY: `this` is open; no pointers are passed.
        EfiError::check(unsafe { ((*this).set_position)(this, offset) })
    }

    /// Reads at the read position into `buf`; returns the bytes read (0 at the end).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, EfiError> {
        let this = self.0.as_ptr();
        let mut size = buf.len();
        // SAFETY: the firmware writes at most `size` bytes into `buf` and the count
        // it wrote into `size`.
        let status = unsafe { ((*this).read)(this, &mut size, buf.as_mut_ptr().cast()) };
        EfiError::check(status)?;
        Ok(size.min(buf.len()))
    }

    /// The file's size and whether it is a directory.
    pub fn info(&mut self) -> Result<(u64, bool), EfiError> {
        let this = self.0.as_ptr();
        let mut guid = file::INFO_ID;
        let mut buf = InfoBuf([0; 96 + 2 * 256]);
        let mut size = buf.0.len();
        // SAFETY: the firmware writes at most `size` bytes of EFI_FILE_INFO into the
        // 8-aligned buffer.
        let status =
            unsafe { ((*this).get_info)(this, &mut guid, &mut size, buf.0.as_mut_ptr().cast()) };
        EfiError::check(status)?;
        if size < core::mem::size_of::<file::Info>() {
            return Err(EfiError::Status(r_efi::efi::Status::BAD_BUFFER_SIZE));
        }
        // SAFETY: the buffer holds an EFI_FILE_INFO (size checked), aligned.
        let info = unsafe { &*buf.0.as_ptr().cast::<file::Info>() };
        Ok((info.file_size, info.attribute & file::DIRECTORY != 0))
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let this = self.0.as_ptr();
        // SAFETY: `this` is open and ours; it is not used after this.
        let _ = unsafe { ((*this).close)(this) };
    }
}
