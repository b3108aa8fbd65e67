//! Everything that depends on the operating system (Unix): positional I/O on files
//! (`pread`/`pwrite`), holes (`SEEK_DATA`/`SEEK_HOLE`, `fallocate`), writes around the
//! page cache (`O_DIRECT`), file types, and file names as bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::storage::StorageIo;

/// A file as a [`qcow_core::BlockIo`] device: `pread`/`pwrite`, no cursor; `flush` is
/// `fdatasync` (unless turned off with `set_sync` for fresh outputs).
pub type FileIo = StorageIo<File>;

impl FileIo {
    /// Wraps a file; `flush` calls `fdatasync`.
    pub fn new(file: File) -> Self {
        StorageIo {
            storage: std::sync::Arc::new(file),
            sync: true,
        }
    }
    /// The file.
    pub fn file(&self) -> &File {
        &self.storage
    }
}

/// What `O_DIRECT` writes need aligned: the buffer's address, the file offset and the
/// length (4 KiB covers 512-byte and 4 KiB logical blocks).
pub const DIRECT_ALIGN: usize = 4096;

/// Turns writing around the page cache (`O_DIRECT`) on or off for `file`; false where
/// the file system refuses (tmpfs, some FUSE file systems). Large aligned writes then
/// go straight to the device: no copy into the page cache, nothing left for the
/// closing sync.
pub fn set_direct(file: &File, on: bool) -> bool {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let Ok(flags) = fcntl_getfl(file) else {
        return false;
    };
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    fcntl_setfl(file, flags).is_ok()
}

/// The size of `file` when it is not a regular file (a block device: its length; a
/// character device: what it seeks to, 0 for `/dev/null`). Such a file cannot grow,
/// and keeps its old contents wherever an output does not write.
pub fn device_len(file: &File) -> io::Result<Option<u64>> {
    if file.metadata()?.file_type().is_file() {
        return Ok(None);
    }
    Ok(Some(rustix::fs::seek(file, rustix::fs::SeekFrom::End(0))?))
}

/// Makes `len` bytes at `offset` of a device read as zeros with the device's own
/// write-zeroes (`fallocate(ZERO_RANGE)`); false where it has none (the caller then
/// writes zeros).
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    use rustix::fs::{fallocate, FallocateFlags};
    let flags = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
    match fallocate(file, flags, offset, len) {
        Ok(()) => Ok(true),
        Err(e)
            if e == rustix::io::Errno::OPNOTSUPP
                || e == rustix::io::Errno::NOSYS
                || e == rustix::io::Errno::INVAL =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// A file: `pread`/`pwrite`, `SEEK_DATA`/`SEEK_HOLE`, `fallocate(PUNCH_HOLE)`.
impl crate::storage::Storage for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        seek_to(self, rustix::fs::SeekFrom::Data(offset))
    }
    fn next_hole(&self, offset: u64) -> io::Result<Option<u64>> {
        seek_to(self, rustix::fs::SeekFrom::Hole(offset))
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        use rustix::fs::{fallocate, FallocateFlags};
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match fallocate(self, flags, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`: `None` where the file system cannot tell,
/// the file's length where nothing follows (`ENXIO`).
fn seek_to(file: &File, to: rustix::fs::SeekFrom) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, to) {
        Ok(at) => Ok(Some(at)),
        Err(rustix::io::Errno::NXIO) => Ok(Some(file.metadata()?.len())),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOTSUP => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A file name stored as bytes in an image, as a path (Unix paths are bytes).
pub(crate) fn name_path(bytes: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Opens an image file (read-only or read-write) without blocking on a FIFO: a FIFO or
/// a socket cannot be read at offsets, and opening a FIFO waits for a writer forever
/// (`qemu-img info FIFO` hangs), so both are refused at once. Anything else (a regular
/// file, a block device, even a directory, which then fails its first read) opens as
/// `open(2)` would.
pub fn open_image(path: &std::path::Path, writable: bool) -> io::Result<File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let t = file.metadata()?.file_type();
    if t.is_fifo() || t.is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a FIFO or socket is not a disk image (it cannot be read at offsets)",
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags.difference(OFlags::NONBLOCK))?;
    Ok(file)
}

/// A backing file, named by bytes of an image, must be a regular file or a block
/// device: opening a FIFO would block forever, and a character device or a directory
/// is no disk. (The top image is whatever the caller names.)
pub(crate) fn backing_kind_ok(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path)?.file_type();
    if t.is_file() || t.is_block_device() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}
