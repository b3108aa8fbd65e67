//! Maintenance of one image file: check, repair, resize, and the backing file name.
//!
//! These work on the top file alone, through one exclusive handle ([`Maintenance`]:
//! `&mut self` everywhere, nothing else of this process has the file open through
//! it). Rebasing with content, which needs the chains, is [`crate::Disk::rebase`].
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("qcow-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # std::env::set_current_dir(&dir)?;  // a fresh image where the example looks
//! # let opts = qcow_std::qcow_core::write::CreateOptions::new(4 << 20);
//! # qcow_std::create::create("disk.qcow".as_ref(), &opts)?;
//! use qcow_std::maint::{Maintenance, RepairMode};
//! let mut m = Maintenance::open("disk.qcow", true)?;
//! if !m.check()?.is_clean() {
//!     let r = m.repair(RepairMode::All)?;
//!     println!("{} corruptions fixed", r.corruptions_fixed());
//! }
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

pub use qcow_core::check::Report;
use qcow_core::crypt::Cipher;
pub use qcow_core::maint::{Action, BackingChanged, Rebased, RepairMode, RepairReport, Resized};
use qcow_core::{BlockIo, Header};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::file::FileIo;
use crate::open::Format;

/// One image file opened for maintenance.
#[derive(Debug)]
pub struct Maintenance {
    path: PathBuf,
    io: FileIo,
    /// The header of a qcow image (`None`: raw).
    header: Option<Header>,
}

/// What [`Maintenance::resize`] is asked to do.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ResizeOptions {
    /// The new virtual size in bytes.
    pub size: u64,
    /// Whether shrinking is allowed.
    pub shrink: bool,
    /// The secret of an encrypted image.
    pub secret: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for ResizeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResizeOptions")
            .field("size", &self.size)
            .field("shrink", &self.shrink)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl ResizeOptions {
    /// Grow (or keep) to `size` bytes; shrinking is refused.
    pub fn new(size: u64) -> Self {
        ResizeOptions {
            size,
            ..Self::default()
        }
    }
    /// Allow shrinking.
    pub fn shrink(mut self, on: bool) -> Self {
        self.shrink = on;
        self
    }
    /// The secret of an encrypted image.
    pub fn secret(mut self, secret: Option<Zeroizing<Vec<u8>>>) -> Self {
        self.secret = secret;
        self
    }
}

impl Maintenance {
    /// Opens `path` (probed: qcow version 1, or raw), for writing when `writable`.
    pub fn open(path: impl AsRef<Path>, writable: bool) -> Result<Self, Error> {
        Self::open_as(path, None, writable)
    }

    /// Opens `path` as `format` (`None`: probed).
    pub fn open_as(
        path: impl AsRef<Path>,
        format: Option<Format>,
        writable: bool,
    ) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let format = match format {
            Some(f) => f,
            None => crate::probe(&path)?,
        };
        let file = crate::file::open_image(&path, writable).map_err(|e| Error::io(&path, e))?;
        let mut io = FileIo::new(file);
        let header = match format {
            Format::Qcow => {
                Some(qcow_core::image::read_header(&mut io).map_err(|e| Error::image(&path, e))?)
            }
            Format::Raw => None,
        };
        Ok(Maintenance { path, io, header })
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        match self.header {
            Some(_) => Format::Qcow,
            None => Format::Raw,
        }
    }

    /// The virtual size (a raw file's length).
    pub fn size(&mut self) -> Result<u64, Error> {
        match &self.header {
            Some(h) => Ok(h.geometry().size()),
            None => self.io.len().map_err(|e| Error::io(&self.path, e)),
        }
    }

    fn qcow(&self) -> Result<&Header, Error> {
        self.header.as_ref().ok_or_else(|| Error::NotQcow {
            path: self.path.clone(),
        })
    }

    fn core<T>(&self, r: Result<T, crate::error::CoreError>) -> Result<T, Error> {
        r.map_err(|e| Error::image(&self.path, e))
    }

    /// Checks every reference of the image (see [`qcow_core::check::check`]).
    pub fn check(&mut self) -> Result<Report, Error> {
        self.qcow()?;
        let r = qcow_core::check::check(&mut self.io);
        self.core(r)
    }

    /// Repairs the image (see [`qcow_core::maint::repair`]) and syncs it.
    pub fn repair(&mut self, mode: RepairMode) -> Result<RepairReport, Error> {
        self.qcow()?;
        let r = qcow_core::maint::repair(&mut self.io, mode);
        let r = self.core(r)?;
        self.sync()?;
        Ok(r)
    }

    /// Changes the virtual size (a raw file's length) and syncs. Shrinking needs
    /// [`ResizeOptions::shrink`]; shrinking an encrypted image inside a cluster needs
    /// the secret (the cut part is overwritten with encrypted zeros, so growing again
    /// never shows old data). `None` for a raw file.
    pub fn resize(&mut self, opts: &ResizeOptions) -> Result<Option<Resized>, Error> {
        let current = self.size()?;
        let new = opts.size;
        // As qemu-img: any request below the current size is a shrink, before the
        // size is rounded to whole sectors.
        if new < current && !opts.shrink {
            let e = qcow_core::Error::ShrinkRefused {
                size: current,
                new_size: new,
            };
            return Err(Error::image(&self.path, e));
        }
        let Some(h) = self.header else {
            self.io.set_len(new).map_err(|e| Error::io(&self.path, e))?;
            self.sync()?;
            return Ok(None);
        };
        let cipher = match &opts.secret {
            Some(s) if h.is_encrypted() => Some(
                self.core(Cipher::from_secret(s).map_err(|_| qcow_core::Error::SecretNotUtf8))?,
            ),
            _ => None,
        };
        let cut = !(new.div_ceil(512) * 512).is_multiple_of(h.geometry().cluster_size());
        if h.is_encrypted() && new < current && cut && cipher.is_none() {
            return Err(Error::EncryptedShrinkNeedsKey {
                path: self.path.clone(),
            });
        }
        let r = qcow_core::maint::resize_with_key(&mut self.io, new, opts.shrink, cipher.as_ref());
        let r = self.core(r)?;
        self.sync()?;
        Ok(Some(r))
    }

    /// Rewrites the backing file name only (`rebase -u`; empty removes it) and syncs.
    pub fn set_backing_file(&mut self, name: &[u8]) -> Result<BackingChanged, Error> {
        self.qcow()?;
        let r = qcow_core::maint::set_backing_file(&mut self.io, name);
        let r = self.core(r)?;
        self.sync()?;
        Ok(r)
    }

    fn sync(&mut self) -> Result<(), Error> {
        self.io
            .file()
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))
    }
}
