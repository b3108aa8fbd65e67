//! Positional I/O on files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use qcow_core::BlockIo;

/// A file as a [`BlockIo`] device: `pread`/`pwrite`, no cursor.
#[derive(Debug)]
pub struct FileIo {
    file: File,
    /// Whether `flush` syncs to disk (off for fresh outputs, which are synced once).
    sync: bool,
}

impl FileIo {
    /// Wraps a file; `flush` calls `fdatasync`.
    pub fn new(file: File) -> Self {
        FileIo { file, sync: true }
    }
    /// Sets whether `flush` syncs to disk.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }
    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl embedded_io::ErrorType for FileIo {
    type Error = io::Error;
}

impl BlockIo for FileIo {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn len(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}
