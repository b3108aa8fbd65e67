//! `std::io::{Read, Write, Seek}` over an opened [`Disk`].

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::open::Disk;

/// A cursor over a disk's guest bytes. Reads stop at the virtual size; writes past it
/// fail (the virtual size does not grow).
#[derive(Debug)]
pub struct DiskIo<'a> {
    disk: &'a mut Disk,
    pos: u64,
}

impl<'a> DiskIo<'a> {
    /// A cursor at offset 0.
    pub fn new(disk: &'a mut Disk) -> Self {
        DiskIo { disk, pos: 0 }
    }
}

impl Read for DiskIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.disk.size().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.disk.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for DiskIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.disk.size().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the virtual size",
            ));
        }
        self.disk.write_at(self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(self.disk.flush()?)
    }
}

impl Seek for DiskIo<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.disk.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing offset",
            )),
        }
    }
}
