//! Opening images: format probing and backing chain resolution.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qcow_core::crypt::Cipher;
use qcow_core::header::MAX_BACKING_NAME;
use qcow_core::image::{read_backing_name, read_header, scratch_len};
use qcow_core::{Header, Image};
use zeroize::Zeroizing;

use crate::disk::{Below, Disk, Layer};
use crate::error::Error;
use crate::probe::Detected;
use crate::storage::{Storage, StorageIo};

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// QEMU's qcow version 1.
    Qcow,
    /// A plain disk image.
    Raw,
}

/// A format name other than `qcow` or `raw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFormat(pub String);

impl std::fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown format '{}' (qcow or raw)", self.0)
    }
}

impl std::error::Error for UnknownFormat {}

impl std::str::FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        match s {
            "qcow" => Ok(Format::Qcow),
            "raw" => Ok(Format::Raw),
            _ => Err(UnknownFormat(s.to_string())),
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

/// How to open a [`Disk`]: a builder, as [`std::fs::OpenOptions`].
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("qcow-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # std::env::set_current_dir(&dir)?;  // a fresh image where the example looks
/// # let opts = qcow_std::qcow_core::write::CreateOptions::new(4 << 20);
/// # qcow_std::create::create("disk.qcow".as_ref(), &opts)?;
/// let disk = qcow_std::Disk::options().writable(true).open("disk.qcow")?;
/// disk.write_at(0, b"hello")?;
/// disk.flush()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct DiskOptions {
    writable: bool,
    format: Option<Format>,
    secret: Option<Zeroizing<Vec<u8>>>,
    max_depth: usize,
    no_backing: bool,
    backing: Option<Disk>,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            writable: false,
            format: None,
            secret: None,
            max_depth: 64,
            no_backing: false,
            backing: None,
        }
    }
}

impl std::fmt::Debug for DiskOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskOptions")
            .field("writable", &self.writable)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("max_depth", &self.max_depth)
            .field("no_backing", &self.no_backing)
            .field("backing", &self.backing)
            .finish()
    }
}

impl DiskOptions {
    /// Read-only, format probed, the whole chain (at most 64 deep), no secret.
    pub fn new() -> Self {
        Self::default()
    }
    /// Open the top image for writing (backing files are always read-only).
    pub fn writable(&mut self, on: bool) -> &mut Self {
        self.writable = on;
        self
    }
    /// The top image's format; `None` probes it.
    pub fn format(&mut self, format: Option<Format>) -> &mut Self {
        self.format = format;
        self
    }
    /// The secret of the encrypted images in the chain.
    pub fn secret(&mut self, secret: Option<Zeroizing<Vec<u8>>>) -> &mut Self {
        self.secret = secret;
        self
    }
    /// The deepest backing chain accepted.
    pub fn max_depth(&mut self, depth: usize) -> &mut Self {
        self.max_depth = depth;
        self
    }
    /// Open the top image without its backing chain (unallocated reads as zeros).
    pub fn no_backing(&mut self, on: bool) -> &mut Self {
        self.no_backing = on;
        self
    }
    /// Use this opened disk as the top image's backing layer instead of the file its
    /// header names (as pyqcow's `set_parent`).
    pub fn backing(&mut self, disk: Disk) -> &mut Self {
        self.backing = Some(disk);
        self
    }
    /// Opens the image at `path` and, iteratively, its backing chain.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Disk, Error> {
        let path = path.as_ref();
        let file = crate::file::open_image(path, self.writable).map_err(|e| Error::io(path, e))?;
        self.open_storage(Arc::new(file), path)
    }
    /// Opens an image on any [`Storage`] (a file, a [`crate::ReadSeek`] source, ...);
    /// `path` names it in errors, and relative backing names resolve against its
    /// directory.
    pub fn open_storage(
        &self,
        storage: Arc<dyn Storage>,
        path: impl Into<PathBuf>,
    ) -> Result<Disk, Error> {
        let (top, rest) = self.walk(storage, path.into())?;
        let below = self.backing.as_ref().map(|d| d.top_layer().clone());
        let top = self.build(top, rest, below)?;
        Ok(Disk::from_top(top, self.writable))
    }

    /// The top file and its backing files, each probed and (qcow) its header read.
    fn walk(&self, storage: Arc<dyn Storage>, top: PathBuf) -> Result<(Link, Vec<Link>), Error> {
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let first = self.link(storage, top, self.format, &mut seen)?;
        let mut rest: Vec<Link> = Vec::new();
        while let Some(prev) = rest.last().unwrap_or(&first).next() {
            if rest.len() >= self.max_depth {
                return Err(Error::ChainTooDeep {
                    path: rest.last().unwrap_or(&first).path.clone(),
                    limit: self.max_depth,
                });
            }
            let overlay = &rest.last().unwrap_or(&first).path;
            let storage = open_backing(overlay, &prev)?;
            let link = self.link(storage, prev, None, &mut seen)?;
            rest.push(link);
        }
        Ok((first, rest))
    }

    /// One file of the chain: probed unless `format` is given, its header read.
    fn link(
        &self,
        storage: Arc<dyn Storage>,
        path: PathBuf,
        format: Option<Format>,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<Link, Error> {
        let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !seen.insert(canon) {
            return Err(Error::BackingLoop { path });
        }
        let mut io = StorageIo {
            storage: storage.clone(),
            sync: true,
        };
        let fmt = match format {
            Some(f) => f,
            None => probe_io(&mut io, &path)?,
        };
        if fmt == Format::Raw {
            return Ok(Link {
                path,
                storage,
                qcow: None,
                follow: false,
            });
        }
        let header = read_header(&mut io).map_err(|e| Error::image(&path, e))?;
        let mut name = [0u8; MAX_BACKING_NAME];
        let name = read_backing_name(&mut io, &header, &mut name)
            .map_err(|e| Error::image(&path, e))?
            .to_vec();
        Ok(Link {
            path,
            storage,
            follow: !name.is_empty() && !self.no_backing && self.backing.is_none(),
            qcow: Some((header, name)),
        })
    }

    /// Builds the layers bottom up on `below`; returns the top one.
    fn build(
        &self,
        top: Link,
        rest: Vec<Link>,
        mut below: Option<Arc<Layer>>,
    ) -> Result<Layer, Error> {
        for link in rest.into_iter().rev() {
            below = Some(Arc::new(self.layer(link, below)?));
        }
        self.layer(top, below)
    }

    fn layer(&self, link: Link, below: Option<Arc<Layer>>) -> Result<Layer, Error> {
        let Some((h, name)) = link.qcow else {
            return Layer::raw(link.path.clone(), link.storage)
                .map_err(|e| Error::io(&link.path, e));
        };
        let io = StorageIo {
            storage: link.storage.clone(),
            sync: true,
        };
        let scratch = vec![0u8; scratch_len(&h.geometry())];
        let mut image = Image::open(io, Below(below.clone()), scratch)
            .map_err(|e| Error::image(&link.path, e))?;
        let mut cipher = None;
        if let (true, Some(s)) = (h.is_encrypted(), &self.secret) {
            image
                .set_secret(s)
                .map_err(|e| Error::image(&link.path, e))?;
            cipher = Cipher::from_secret(s).ok();
        }
        Ok(Layer::qcow(
            link.path,
            link.storage,
            image,
            name,
            cipher,
            below,
        ))
    }
}

/// Opens the backing file `path` named by the image `overlay`.
fn open_backing(overlay: &Path, path: &Path) -> Result<Arc<dyn Storage>, Error> {
    crate::file::backing_kind_ok(path)
        .and_then(|()| File::open(path))
        .map(|f| Arc::new(f) as Arc<dyn Storage>)
        .map_err(|e| Error::BackingMissing {
            path: overlay.to_path_buf(),
            backing: path.to_path_buf(),
            source: e,
        })
}

/// A file's format from its signature: qcow version 1, or raw; another image format's
/// signature is [`Error::ForeignFormat`] (see [`mod@crate::probe`]).
pub fn probe(path: &Path) -> Result<Format, Error> {
    let f = crate::file::open_image(path, false).map_err(|e| Error::io(path, e))?;
    probe_io(&mut crate::file::FileIo::new(f), path)
}

fn probe_io<S: Storage + ?Sized>(io: &mut StorageIo<S>, path: &Path) -> Result<Format, Error> {
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

/// A file of the chain, probed.
struct Link {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    /// The header and backing name of a qcow image.
    qcow: Option<(Header, Vec<u8>)>,
    /// Whether its backing file is to be opened.
    follow: bool,
}

impl Link {
    /// The backing file to open next.
    fn next(&self) -> Option<PathBuf> {
        let (_, name) = self.qcow.as_ref().filter(|_| self.follow)?;
        Some(resolve_backing(&self.path, &crate::file::name_path(name)))
    }
}
