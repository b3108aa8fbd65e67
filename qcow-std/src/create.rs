//! Making image files so that a failure leaves nothing behind.
//!
//! [`NewFile`] is the destination of `create` and `convert`: a file it creates is
//! removed again unless the image is finished ([`NewFile::keep`]). The options are
//! checked first ([`check`]), so a refused request (a size too large, a backing name
//! too long) touches nothing, not even a destination that already exists.

use std::fs::{File, OpenOptions as FsOpen};
use std::io;
use std::path::{Path, PathBuf};

use qcow_core::write::CreateOptions;
use qcow_core::BlockIo;

use crate::error::{CoreError, Error};
use crate::file::FileIo;

/// The destination of a new image. A path that did not exist is created (exclusively,
/// so it is ours) and removed when the guard is dropped before [`NewFile::keep`]: a
/// failed `create` or `convert` leaves no file behind. A file that existed is
/// truncated and, should the copy fail, left as it is then (never removed: it may be
/// a device, or a file someone else holds).
#[derive(Debug)]
#[must_use = "dropping the guard removes the file it created"]
pub struct NewFile {
    /// The path to remove on drop; `None` when kept or not ours.
    remove: Option<PathBuf>,
}

impl NewFile {
    /// Opens `path` for writing a new image (read and write, empty).
    pub fn create(path: &Path) -> io::Result<(File, NewFile)> {
        let new = FsOpen::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path);
        match new {
            Ok(f) => Ok((
                f,
                NewFile {
                    remove: Some(path.to_path_buf()),
                },
            )),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let f = FsOpen::new()
                    .read(true)
                    .write(true)
                    .truncate(true)
                    .open(path)?;
                Ok((f, NewFile { remove: None }))
            }
            Err(e) => Err(e),
        }
    }
    /// Whether this guard created the file (and would remove it).
    pub fn created(&self) -> bool {
        self.remove.is_some()
    }
    /// The image is complete: keep the file.
    pub fn keep(mut self) {
        self.remove = None;
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if let Some(path) = self.remove.take() {
            // Best effort: the error being reported is the one that matters.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A device that keeps nothing: [`check`] lays an image out on it.
struct Discard {
    len: u64,
}

impl embedded_io::ErrorType for Discard {
    type Error = io::Error;
}

impl BlockIo for Discard {
    fn read_at(&mut self, _: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.len = self.len.max(offset.saturating_add(buf.len() as u64));
        Ok(())
    }
    fn len(&mut self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.len = len;
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks `opts` without touching a file: the very layout code of
/// [`qcow_core::write::create`], run on a device that discards what it is given.
pub fn check(opts: &CreateOptions<'_>) -> Result<(), CoreError> {
    qcow_core::write::create(&mut Discard { len: 0 }, opts).map(|_| ())
}

/// Creates a new, empty qcow image at `path` ([`qcow_core::write::create`], synced).
/// Refused options touch nothing; a failure after the file was created removes it.
pub fn create(path: &Path, opts: &CreateOptions<'_>) -> Result<(), Error> {
    check(opts).map_err(|e| Error::image(path, e))?;
    let (file, guard) = NewFile::create(path).map_err(|e| Error::io(path, e))?;
    let mut io = FileIo::new(file);
    qcow_core::write::create(&mut io, opts).map_err(|e| Error::image(path, e))?;
    guard.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_create_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.qcow");
        assert!(create(&p, &CreateOptions::new(1 << 60)).is_err());
        assert!(!p.exists());
        // An existing file is left as it was.
        std::fs::write(&p, b"keep me").unwrap();
        assert!(create(&p, &CreateOptions::new(1 << 60)).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
        create(&p, &CreateOptions::new(1 << 20)).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[..4], b"QFI\xfb");
    }

    #[test]
    fn the_guard_removes_only_what_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        let (_, g) = NewFile::create(&p).unwrap();
        assert!(g.created() && p.exists());
        drop(g);
        assert!(!p.exists(), "dropped before keep: removed");
        let (_, g) = NewFile::create(&p).unwrap();
        g.keep();
        assert!(p.exists(), "kept");
        let (_, g) = NewFile::create(&p).unwrap();
        assert!(!g.created());
        drop(g);
        assert!(p.exists(), "an existing file is never removed");
    }
}
