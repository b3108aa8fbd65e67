//! The boot volume: files through `EFI_FILE_PROTOCOL` as a [`BlockIo`], and the
//! [`Volume`] where backing files are opened.

use embedded_io::ErrorType;
use qcow_core::chain::{Path, Volume};
use qcow_core::BlockIo;
use r_efi::efi::Status;

use crate::efi::{EfiError, File};

/// UCS-2 units in a path on the volume, the NUL included.
const NAME_MAX: usize = 1024;

/// A file opened for reading, as a positional [`BlockIo`].
pub struct FileIo {
    file: File,
    len: u64,
    /// Where the firmware's read position is (`None`: unknown, after an error).
    pos: Option<u64>,
}

impl ErrorType for FileIo {
    type Error = EfiError;
}

impl BlockIo for FileIo {
    fn read_at(&mut self, offset: u64, mut buf: &mut [u8]) -> Result<(), EfiError> {
        if self.pos != Some(offset) {
            self.pos = None;
            self.file.seek(offset)?;
            self.pos = Some(offset);
        }
        while !buf.is_empty() {
            let n = match self.file.read(buf) {
                Ok(0) => Err(EfiError::UnexpectedEof),
                Ok(n) => Ok(n),
                Err(e) => Err(e),
            }
            .inspect_err(|_| self.pos = None)?;
            buf = buf.get_mut(n..).unwrap_or_default();
            self.pos = self.pos.map(|p| p.saturating_add(n as u64));
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

/// The volume the application was loaded from.
pub struct BootVolume {
    root: File,
}

impl BootVolume {
    /// The volume whose root directory is `root`.
    pub fn new(root: File) -> Self {
        BootVolume { root }
    }

    /// Reads the whole file at `path` into `buf`; fails when it does not fit.
    pub fn read_file<'b>(&mut self, path: &Path, buf: &'b mut [u8]) -> Result<&'b [u8], EfiError> {
        let mut file = self.open(path)?;
        let len = usize::try_from(file.len)
            .ok()
            .filter(|&n| n <= buf.len())
            .ok_or(EfiError::Status(Status::BUFFER_TOO_SMALL))?;
        let data = buf.get_mut(..len).unwrap_or_default();
        file.read_at(0, data)?;
        Ok(data)
    }
}

impl Volume for BootVolume {
    type File = FileIo;
    fn open(&mut self, path: &Path) -> Result<FileIo, EfiError> {
        let mut name = [0u16; NAME_MAX];
        ucs2_path(path.bytes(), &mut name)?;
        let mut file = self.root.open(&name)?;
        let (len, directory) = file.info()?;
        if directory {
            return Err(EfiError::Status(Status::NOT_FOUND));
        }
        Ok(FileIo {
            file,
            len,
            pos: None,
        })
    }
}

/// Writes `path` (UTF-8, `/` or `\` separated) as the NUL-terminated UCS-2 name
/// `EFI_FILE_PROTOCOL.Open` takes, relative to the root: `\`-separated, with `.` and
/// `..` resolved here (FAT has no links, so lexically is exactly), and `..` above
/// the root refused.
fn ucs2_path(path: &[u8], out: &mut [u16; NAME_MAX]) -> Result<(), EfiError> {
    let text = core::str::from_utf8(path).map_err(|_| EfiError::BadPath)?;
    let mut len = 0usize;
    for part in text.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                // Back to the last separator (there is one before every component).
                let sep = out
                    .get(..len)
                    .and_then(|o| o.iter().rposition(|&u| u == u16::from(b'\\')))
                    .ok_or(EfiError::BadPath)?;
                len = sep;
            }
            _ => {
                for unit in core::iter::once('\\').chain(part.chars()).map(|c| {
                    let mut units = [0u16; 2];
                    match c.encode_utf16(&mut units) {
                        [u] => Ok(*u),
                        _ => Err(EfiError::BadPath),
                    }
                }) {
                    let slot = out.get_mut(len).ok_or(EfiError::BadPath)?;
                    *slot = unit?;
                    len += 1;
                }
            }
        }
    }
    // The NUL, after at least the root's separator.
    if len == 0 {
        return Err(EfiError::BadPath);
    }
    *out.get_mut(len).ok_or(EfiError::BadPath)? = 0;
    Ok(())
}
