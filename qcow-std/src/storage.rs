//! What a layer of a [`Disk`](crate::Disk) is stored on: a file, or any positional
//! source shared between threads.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, PoisonError};

use qcow_core::BlockIo;

/// Positional storage that many threads may use at once (`&self` everywhere).
///
/// [`std::fs::File`] implements it with `pread`/`pwrite`; [`ReadSeek`] adapts any
/// `Read + Seek` source (one lock around its cursor). Other front ends (a Python file
/// object, say) implement it themselves.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Fills `buf` from `offset`; fewer bytes than asked is an error (`UnexpectedEof`).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the storage when it ends past its end.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether [`Storage::len`] is 0.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes what was written durable.
    fn sync(&self) -> io::Result<()>;
    /// Where the data at or after `offset` starts, when the storage knows its holes
    /// (`SEEK_DATA`): `Ok(None)` when it does not know, `Ok(Some(len))` when only a
    /// hole follows.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let _ = offset;
        Ok(None)
    }
    /// Where the hole at or after `offset` starts (`SEEK_HOLE`), when known.
    fn next_hole(&self, offset: u64) -> io::Result<Option<u64>> {
        let _ = offset;
        Ok(None)
    }
    /// Deallocates `[offset, offset + len)` so it reads as zeros; `Ok(false)` when the
    /// storage cannot (the caller then writes zeros).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }
}

/// Any `Read + Seek` source (optionally `Write`) as [`Storage`]: each access seeks then
/// reads under one lock.
pub struct ReadSeek<R> {
    inner: Mutex<R>,
}

impl<R> fmt::Debug for ReadSeek<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadSeek(..)")
    }
}

impl<R: Read + Seek + Send> ReadSeek<R> {
    /// Wraps a source.
    pub fn new(inner: R) -> Self {
        ReadSeek {
            inner: Mutex::new(inner),
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, R> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<R: Read + Seek + Send> Storage for ReadSeek<R> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut r = self.lock();
        r.seek(SeekFrom::Start(offset))?;
        r.read_exact(buf)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the source is read-only",
        ))
    }
    fn len(&self) -> io::Result<u64> {
        self.lock().seek(SeekFrom::End(0))
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the source is read-only",
        ))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Read + Write + Seek` source as writable [`Storage`] (growing by writing past its
/// end; it cannot shrink).
pub struct ReadWriteSeek<R> {
    inner: Mutex<R>,
}

impl<R> fmt::Debug for ReadWriteSeek<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadWriteSeek(..)")
    }
}

impl<R: Read + Write + Seek + Send> ReadWriteSeek<R> {
    /// Wraps a source.
    pub fn new(inner: R) -> Self {
        ReadWriteSeek {
            inner: Mutex::new(inner),
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, R> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<R: Read + Write + Seek + Send> Storage for ReadWriteSeek<R> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut r = self.lock();
        r.seek(SeekFrom::Start(offset))?;
        r.read_exact(buf)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut r = self.lock();
        r.seek(SeekFrom::Start(offset))?;
        r.write_all(buf)
    }
    fn len(&self) -> io::Result<u64> {
        self.lock().seek(SeekFrom::End(0))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut r = self.lock();
        let cur = r.seek(SeekFrom::End(0))?;
        if len < cur {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a Read + Write + Seek source cannot shrink",
            ));
        }
        if len > cur {
            // Extend by writing the last byte.
            r.seek(SeekFrom::Start(len.saturating_sub(1)))?;
            r.write_all(&[0])?;
        }
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.lock().flush()
    }
}

/// Storage as the core's [`BlockIo`]: any [`Storage`] behind an `Arc` (a layer's,
/// shared with readers), or a file of its own ([`crate::file::FileIo`]).
#[derive(Debug)]
pub struct StorageIo<S: Storage + ?Sized = dyn Storage> {
    pub(crate) storage: Arc<S>,
    /// Whether `flush` syncs (off for fresh outputs, synced once at the end).
    pub(crate) sync: bool,
}

impl<S: Storage + ?Sized> Clone for StorageIo<S> {
    fn clone(&self) -> Self {
        StorageIo {
            storage: self.storage.clone(),
            sync: self.sync,
        }
    }
}

impl<S: Storage + ?Sized> StorageIo<S> {
    /// Sets whether `flush` syncs to disk (on by default).
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }
}

impl<S: Storage + ?Sized> embedded_io::ErrorType for StorageIo<S> {
    type Error = io::Error;
}

impl<S: Storage + ?Sized> BlockIo for StorageIo<S> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.storage.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.storage.write_all_at(buf, offset)
    }
    fn len(&mut self) -> io::Result<u64> {
        self.storage.len()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.storage.set_len(len)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.sync {
            self.storage.sync()?;
        }
        Ok(())
    }
}
