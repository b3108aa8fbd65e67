//! The positional device trait the core works on, and in-memory devices.

use embedded_io::{ErrorKind, ErrorType};

/// A device addressed by byte offset: a file, a partition, a block device.
///
/// Every method takes the offset explicitly; there is no hidden cursor. The core never
/// reads past [`BlockIo::len`]: it checks every extent against the length first, so an
/// implementation may treat a read past its end as an error.
#[allow(clippy::len_without_is_empty)] // a device length, not a collection
pub trait BlockIo: ErrorType {
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Writes all of `buf` at `offset`, growing the device if needed.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Self::Error>;
    /// The device's length in bytes.
    fn len(&mut self) -> Result<u64, Self::Error>;
    /// Truncates or extends (with zeros) the device to `len` bytes.
    fn set_len(&mut self, len: u64) -> Result<(), Self::Error>;
    /// Makes what was written durable; the core calls it between ordered steps.
    fn flush(&mut self) -> Result<(), Self::Error>;
}

impl<T: BlockIo + ?Sized> BlockIo for &mut T {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Self::Error> {
        (**self).write_at(offset, buf)
    }
    fn len(&mut self) -> Result<u64, Self::Error> {
        (**self).len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), Self::Error> {
        (**self).set_len(len)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        (**self).flush()
    }
}

/// Returns `data[offset..offset + len]` or `None`, without panicking.
fn window(data_len: usize, offset: u64, len: usize) -> Option<core::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= data_len).then_some(start..end)
}

/// A read-only device over a byte slice (no allocation needed).
#[derive(Debug, Clone, Copy)]
pub struct SliceIo<'a>(pub &'a [u8]);

impl ErrorType for SliceIo<'_> {
    type Error = ErrorKind;
}

impl BlockIo for SliceIo<'_> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ErrorKind> {
        let r = window(self.0.len(), offset, buf.len()).ok_or(ErrorKind::InvalidInput)?;
        buf.copy_from_slice(self.0.get(r).ok_or(ErrorKind::InvalidInput)?);
        Ok(())
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> Result<(), ErrorKind> {
        Err(ErrorKind::Unsupported)
    }
    fn len(&mut self) -> Result<u64, ErrorKind> {
        u64::try_from(self.0.len()).map_err(|_| ErrorKind::Other)
    }
    fn set_len(&mut self, _: u64) -> Result<(), ErrorKind> {
        Err(ErrorKind::Unsupported)
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

/// A growable in-memory device, for tests and in-memory images.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemIo(pub alloc::vec::Vec<u8>);

#[cfg(feature = "alloc")]
impl ErrorType for MemIo {
    type Error = ErrorKind;
}

#[cfg(feature = "alloc")]
impl BlockIo for MemIo {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ErrorKind> {
        SliceIo(&self.0).read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), ErrorKind> {
        let start = usize::try_from(offset).map_err(|_| ErrorKind::OutOfMemory)?;
        let end = start.checked_add(buf.len()).ok_or(ErrorKind::OutOfMemory)?;
        if end > self.0.len() {
            self.0.resize(end, 0);
        }
        self.0
            .get_mut(start..end)
            .ok_or(ErrorKind::Other)?
            .copy_from_slice(buf);
        Ok(())
    }
    fn len(&mut self) -> Result<u64, ErrorKind> {
        u64::try_from(self.0.len()).map_err(|_| ErrorKind::Other)
    }
    fn set_len(&mut self, len: u64) -> Result<(), ErrorKind> {
        self.0
            .resize(usize::try_from(len).map_err(|_| ErrorKind::OutOfMemory)?, 0);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}
