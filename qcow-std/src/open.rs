//! Opening images by path: format probing and backing chain resolution.

use std::collections::HashSet;
use std::fs::{File, OpenOptions as FsOpen};
use std::path::{Path, PathBuf};

use qcow_core::header::MAX_BACKING_NAME;
use qcow_core::image::{read_backing_name, read_header, scratch_len};
use qcow_core::{Backing, BlockIo, Header, Image, NoBacking, Raw, Status, StatusKind};
use zeroize::Zeroizing;

use crate::error::{CoreError, Error};
use crate::file::FileIo;
use crate::probe::Detected;

/// A backing layer of any kind.
pub type Layer = Box<dyn Backing<IoError = std::io::Error> + Send>;
/// A qcow image on a file, over any backing layer.
pub type QcowImage = Image<FileIo, Layer, Vec<u8>>;

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// QEMU's qcow version 1.
    Qcow,
    /// A plain disk image.
    Raw,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qcow" => Ok(Format::Qcow),
            "raw" => Ok(Format::Raw),
            _ => Err(format!("unknown format '{s}' (qcow or raw)")),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Qcow => "qcow",
            Format::Raw => "raw",
        })
    }
}

/// How to open an image.
#[derive(Clone)]
pub struct OpenOptions {
    /// Open the top image for writing (backing files are always read-only).
    pub writable: bool,
    /// The top image's format; `None` probes it.
    pub format: Option<Format>,
    /// The secret of encrypted images in the chain.
    pub secret: Option<Zeroizing<Vec<u8>>>,
    /// The deepest backing chain accepted.
    pub max_depth: usize,
    /// Open the top image without its backing chain (unallocated reads as zeros).
    pub no_backing: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            format: None,
            secret: None,
            max_depth: 64,
            no_backing: false,
        }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("writable", &self.writable)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .finish_non_exhaustive()
    }
}

/// An opened disk: a qcow image with its chain, or a raw file.
pub enum Disk {
    /// A qcow image.
    Qcow {
        /// Its file.
        path: PathBuf,
        /// The image.
        image: Box<QcowImage>,
    },
    /// A raw file.
    Raw {
        /// Its file.
        path: PathBuf,
        /// The file.
        raw: Raw<FileIo>,
    },
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disk({}, {})", self.format(), self.path().display())
    }
}

/// A file's format from its signature: qcow version 1, or raw; another image format's
/// signature is [`Error::ForeignFormat`] (see [`mod@crate::probe`]).
pub fn probe(path: &Path) -> Result<Format, Error> {
    let mut f = FileIo::new(File::open(path).map_err(|e| Error::io(path, e))?);
    probe_io(&mut f, path)
}

fn probe_io(io: &mut FileIo, path: &Path) -> Result<Format, Error> {
    match crate::probe::probe_io(io).map_err(|e| Error::io(path, e))? {
        Detected::Qcow => Ok(Format::Qcow),
        Detected::Raw => Ok(Format::Raw),
        Detected::Foreign(format) => Err(Error::ForeignFormat {
            path: path.to_path_buf(),
            format,
        }),
    }
}

/// Resolves a backing name as QEMU does: relative to the overlay's directory.
pub fn resolve_backing(overlay: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        overlay.parent().unwrap_or_else(|| Path::new("")).join(name)
    }
}

fn name_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// A backing file, named by bytes of an image, must be a regular file or a block
/// device: opening a FIFO would block forever, and a character device or a directory
/// is no disk. (The top image is whatever the caller names.)
fn backing_kind_ok(path: &Path, is_backing: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if !is_backing {
        return Ok(());
    }
    let t = std::fs::metadata(path)?.file_type();
    if t.is_file() || t.is_block_device() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}

struct Link {
    path: PathBuf,
    io: FileIo,
    header: Option<Header>,
}

/// Opens an image and, iteratively, its whole backing chain.
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Disk, Error> {
    let top = path.as_ref().to_path_buf();
    let mut chain: Vec<Link> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut cur = top.clone();
    let mut format = opts.format;
    loop {
        let writable = chain.is_empty() && opts.writable;
        let file = backing_kind_ok(&cur, !chain.is_empty())
            .and_then(|()| FsOpen::new().read(true).write(writable).open(&cur))
            .map_err(|e| match chain.last() {
                Some(prev) => Error::BackingMissing {
                    path: prev.path.clone(),
                    backing: cur.clone(),
                    source: e,
                },
                None => Error::io(&cur, e),
            })?;
        let canon = std::fs::canonicalize(&cur).unwrap_or_else(|_| cur.clone());
        if !seen.insert(canon) {
            return Err(Error::BackingLoop { path: cur });
        }
        let mut io = FileIo::new(file);
        let fmt = match format {
            Some(f) => f,
            None => probe_io(&mut io, &cur)?,
        };
        if fmt == Format::Raw {
            chain.push(Link {
                path: cur,
                io,
                header: None,
            });
            break;
        }
        let header = read_header(&mut io).map_err(|e| Error::image(&cur, e))?;
        let mut name = [0u8; MAX_BACKING_NAME];
        let name = read_backing_name(&mut io, &header, &mut name)
            .map_err(|e| Error::image(&cur, e))?
            .to_vec();
        chain.push(Link {
            path: cur.clone(),
            io,
            header: Some(header),
        });
        if name.is_empty() || opts.no_backing {
            break;
        }
        if chain.len() > opts.max_depth {
            return Err(Error::ChainTooDeep {
                path: cur,
                limit: opts.max_depth,
            });
        }
        cur = resolve_backing(&cur, &name_path(&name));
        format = None;
    }
    let mut below: Option<Disk> = None;
    while let Some(link) = chain.pop() {
        let layer: Layer = match below.take() {
            Some(d) => Box::new(d),
            None => Box::new(NoBacking::<std::io::Error>::new()),
        };
        let disk = match link.header {
            None => Disk::Raw {
                raw: Raw::new(link.io).map_err(|e| Error::image(&link.path, e))?,
                path: link.path,
            },
            Some(h) => {
                let scratch = vec![0u8; scratch_len(&h.geometry())];
                let mut image = Image::open(link.io, layer, scratch)
                    .map_err(|e| Error::image(&link.path, e))?;
                if h.is_encrypted() {
                    if let Some(s) = &opts.secret {
                        image
                            .set_secret(s)
                            .map_err(|e| Error::image(&link.path, e))?;
                    }
                }
                Disk::Qcow {
                    path: link.path,
                    image: Box::new(image),
                }
            }
        };
        below = Some(disk);
    }
    below.ok_or_else(|| Error::invalid(&top, "nothing to open"))
}

impl Disk {
    /// The file of the top image.
    pub fn path(&self) -> &Path {
        match self {
            Disk::Qcow { path, .. } | Disk::Raw { path, .. } => path,
        }
    }
    /// Its format.
    pub fn format(&self) -> Format {
        match self {
            Disk::Qcow { .. } => Format::Qcow,
            Disk::Raw { .. } => Format::Raw,
        }
    }
    /// The guest size.
    pub fn size(&self) -> u64 {
        match self {
            Disk::Qcow { image, .. } => image.size(),
            Disk::Raw { raw, .. } => raw.size(),
        }
    }
    /// The qcow image, when it is one.
    pub fn qcow(&mut self) -> Option<&mut QcowImage> {
        match self {
            Disk::Qcow { image, .. } => Some(image),
            Disk::Raw { .. } => None,
        }
    }
    fn err(&self, e: CoreError) -> Error {
        Error::image(self.path(), e)
    }
    /// Reads guest bytes (zeros past the end of a raw file's data are not special:
    /// the range must lie inside [`Disk::size`]).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let r = match self {
            Disk::Qcow { image, .. } => image.read_at(offset, buf),
            Disk::Raw { raw, .. } => {
                let size = raw.size();
                if offset
                    .checked_add(buf.len() as u64)
                    .is_none_or(|e| e > size)
                {
                    Err(qcow_core::Error::OutOfRange {
                        offset,
                        len: buf.len() as u64,
                        size,
                    })
                } else {
                    Backing::read_at(raw, offset, buf)
                }
            }
        };
        r.map_err(|e| self.err(e))
    }
    /// Writes guest bytes (the disk must be open for writing).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let r = match self {
            Disk::Qcow { image, .. } => image.write_at(offset, data),
            Disk::Raw { raw, .. } => {
                let size = raw.size();
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|e| e > size)
                {
                    Err(qcow_core::Error::OutOfRange {
                        offset,
                        len: data.len() as u64,
                        size,
                    })
                } else {
                    raw.write_at(offset, data)
                }
            }
        };
        r.map_err(|e| self.err(e))
    }
    /// How the range from `offset` is stored (at most `max` bytes).
    pub fn status(&mut self, offset: u64, max: u64) -> Result<Status, Error> {
        let r = Backing::status(self, offset, max);
        r.map_err(|e| self.err(e))
    }
    /// The length of the run from `offset` (at most `max` bytes) known to read as
    /// zeros without reading it: unallocated in a qcow chain, a hole in a raw file
    /// (`SEEK_DATA`). 0 when the data there must be read.
    pub fn zero_run(&mut self, offset: u64, max: u64) -> Result<u64, Error> {
        match self {
            Disk::Qcow { .. } => {
                let s = self.status(offset, max)?;
                Ok(match s.kind {
                    StatusKind::Unallocated | StatusKind::Hole { .. } => s.len.min(max),
                    _ => 0,
                })
            }
            Disk::Raw { raw, path } => {
                let end = raw.size().min(offset.saturating_add(max));
                if offset >= end {
                    return Ok(max);
                }
                let file = raw.io().file();
                match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset)) {
                    Ok(data) => Ok(data.min(end).saturating_sub(offset)),
                    Err(rustix::io::Errno::NXIO) => Ok(max),
                    Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOTSUP => {
                        Ok(0)
                    }
                    Err(e) => Err(Error::io(path.clone(), e.into())),
                }
            }
        }
    }

    /// Makes written data durable.
    pub fn flush(&mut self) -> Result<(), Error> {
        let r = match self {
            Disk::Qcow { image, .. } => image.flush(),
            Disk::Raw { raw, .. } => raw.io().flush().map_err(qcow_core::Error::Io),
        };
        r.map_err(|e| self.err(e))
    }
}

impl Backing for Disk {
    type IoError = std::io::Error;
    fn size(&self) -> u64 {
        Disk::size(self)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), CoreError> {
        match self {
            Disk::Qcow { image, .. } => Backing::read_at(image.as_mut(), offset, buf),
            Disk::Raw { raw, .. } => Backing::read_at(raw, offset, buf),
        }
    }
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, CoreError> {
        match self {
            Disk::Qcow { image, .. } => Backing::status(image.as_mut(), offset, max),
            Disk::Raw { raw, .. } => raw_status(raw, offset, max),
        }
    }
}

/// A raw file's status, with holes (`SEEK_DATA`/`SEEK_HOLE`) as [`StatusKind::Hole`].
fn raw_status(raw: &mut Raw<FileIo>, offset: u64, max: u64) -> Result<Status, CoreError> {
    use rustix::fs::{seek, SeekFrom};
    let st = raw.status(offset, max)?;
    let StatusKind::Data { host } = st.kind else {
        return Ok(st);
    };
    let end = offset.saturating_add(st.len);
    let file = raw.io().file();
    let hole = |len: u64| Status {
        len,
        depth: 0,
        kind: StatusKind::Hole { host },
    };
    Ok(match seek(file, SeekFrom::Data(offset)) {
        Ok(d) if d > offset => hole(d.min(end) - offset),
        Ok(_) => match seek(file, SeekFrom::Hole(offset)) {
            Ok(h) if h > offset => Status {
                len: h.min(end) - offset,
                ..st
            },
            _ => st,
        },
        Err(rustix::io::Errno::NXIO) => hole(st.len),
        Err(_) => st,
    })
}
