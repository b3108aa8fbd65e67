//! Errors that name the file they are about.

use std::fmt;
use std::path::PathBuf;

/// The core's error over files.
pub type CoreError = qcow_core::Error<std::io::Error>;

/// An error, with the file it concerns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The image (or its data) is bad, or reading it failed.
    Image {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: CoreError,
    },
    /// Opening, creating or accessing the file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The backing file named in `path` cannot be opened.
    BackingMissing {
        /// The overlay.
        path: PathBuf,
        /// The backing file it names, resolved.
        backing: PathBuf,
        /// Why it cannot be opened.
        source: std::io::Error,
    },
    /// The backing chain comes back to an image already in it.
    BackingLoop {
        /// The image that closes the loop.
        path: PathBuf,
    },
    /// The backing chain is deeper than the limit.
    ChainTooDeep {
        /// The image at the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The file carries another image format's signature: reading it as raw would
    /// show its container bytes as the guest disk (`-f raw` insists).
    ForeignFormat {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: crate::probe::Foreign,
    },
    /// A write to a disk opened read-only.
    ReadOnly {
        /// The top image.
        path: PathBuf,
    },
    /// The operation needs a qcow image and this is raw.
    NotQcow {
        /// The file.
        path: PathBuf,
    },
    /// The image has no backing file (to commit into).
    NoBackingFile {
        /// The image.
        path: PathBuf,
    },
    /// The backing file is smaller than the overlay's data.
    BackingTooSmall {
        /// The backing file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The first overlay byte with data past it.
        offset: u64,
    },
    /// The new backing chain of a rebase comes back to the image.
    RebaseLoop {
        /// The image.
        path: PathBuf,
        /// The new backing file.
        through: PathBuf,
    },
    /// Shrinking an encrypted image inside a cluster needs the key (the cut part is
    /// overwritten with encrypted zeros).
    EncryptedShrinkNeedsKey {
        /// The image.
        path: PathBuf,
    },
    /// A raw output was asked for with a backing file, encryption or compression.
    RawOutputOptions {
        /// The output.
        path: PathBuf,
    },
    /// The output is a device (or other file that cannot grow) smaller than the disk.
    DeviceTooSmall {
        /// The output.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bytes the disk needs.
        needed: u64,
    },
}

impl Error {
    /// Wraps a core error for `path`.
    pub fn image(path: impl Into<PathBuf>, source: CoreError) -> Self {
        match source {
            qcow_core::Error::Io(source) => Self::io(path, source),
            source => Error::Image {
                path: path.into(),
                source,
            },
        }
    }
    /// Wraps an I/O error for `path`.
    /// A qcow-std error that travelled through the core (from a backing layer) comes
    /// out as itself, naming its own file.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if !source.get_ref().is_some_and(|e| e.is::<Error>()) {
            return Error::Io { path, source };
        }
        let kind = source.kind();
        match source.into_inner().map(|b| b.downcast::<Error>()) {
            Some(Ok(e)) => *e,
            Some(Err(other)) => Error::Io {
                path,
                source: std::io::Error::new(kind, other),
            },
            None => Error::Io {
                path,
                source: kind.into(),
            },
        }
    }
    /// The [`std::io::ErrorKind`] that fits: the device's own, `InvalidData` for a
    /// damaged image, `InvalidInput` for a request that cannot be met,
    /// `PermissionDenied` for a write to a read-only disk or a missing password.
    pub fn io_kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self {
            Error::Io { source, .. } | Error::BackingMissing { source, .. } => source.kind(),
            Error::Image { source, .. } => core_kind(source),
            Error::ReadOnly { .. } => K::PermissionDenied,
            Error::NotQcow { .. }
            | Error::NoBackingFile { .. }
            | Error::BackingTooSmall { .. }
            | Error::RawOutputOptions { .. }
            | Error::DeviceTooSmall { .. }
            | Error::RebaseLoop { .. }
            | Error::EncryptedShrinkNeedsKey { .. } => K::InvalidInput,
            Error::BackingLoop { .. }
            | Error::ChainTooDeep { .. }
            | Error::ForeignFormat { .. } => K::InvalidData,
        }
    }
    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Error::Image { path, .. }
            | Error::Io { path, .. }
            | Error::BackingMissing { path, .. }
            | Error::BackingLoop { path }
            | Error::ChainTooDeep { path, .. }
            | Error::ForeignFormat { path, .. }
            | Error::ReadOnly { path }
            | Error::NotQcow { path }
            | Error::NoBackingFile { path }
            | Error::BackingTooSmall { path, .. }
            | Error::RawOutputOptions { path }
            | Error::DeviceTooSmall { path, .. }
            | Error::RebaseLoop { path, .. }
            | Error::EncryptedShrinkNeedsKey { path } => path,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Image { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::BackingMissing {
                path,
                backing,
                source,
            } => write!(
                f,
                "{}: cannot open backing file {}: {source}",
                path.display(),
                backing.display()
            ),
            Error::BackingLoop { path } => {
                write!(
                    f,
                    "{}: backing chain loops back to this image",
                    path.display()
                )
            }
            Error::ChainTooDeep { path, limit } => write!(
                f,
                "{}: backing chain deeper than {limit} images",
                path.display()
            ),
            Error::ForeignFormat { path, format } => write!(
                f,
                "{}: this is {format}; qcow reads only qcow version 1 \u{2014} \
                 qemu-img convert -O qcow can make one",
                path.display()
            ),
            Error::ReadOnly { path } => write!(f, "{}: opened read-only", path.display()),
            Error::NotQcow { path } => write!(f, "{}: not a qcow image", path.display()),
            Error::NoBackingFile { path } => {
                write!(f, "{}: image has no backing file", path.display())
            }
            Error::BackingTooSmall { path, size, offset } => write!(
                f,
                "{}: backing file ({size} bytes) is smaller than the overlay's data at offset {offset}",
                path.display()
            ),
            Error::RebaseLoop { path, through } => write!(
                f,
                "{}: the new backing chain through {} comes back to this image",
                path.display(),
                through.display()
            ),
            Error::EncryptedShrinkNeedsKey { path } => write!(
                f,
                "{}: shrinking an encrypted image inside a cluster needs the password \
                 (the cut part of the cluster is overwritten with encrypted zeros)",
                path.display()
            ),
            Error::RawOutputOptions { path } => write!(
                f,
                "{}: raw output takes no backing file, encryption or compression",
                path.display()
            ),
            Error::DeviceTooSmall { path, size, needed } => write!(
                f,
                "{}: cannot grow device files: it holds {size} bytes, the disk needs {needed}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Image { source, .. } => Some(source),
            Error::Io { source, .. } | Error::BackingMissing { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The kind of a core error: its device's own, or what the failure means.
fn core_kind(e: &CoreError) -> std::io::ErrorKind {
    use std::io::ErrorKind as K;
    match e {
        qcow_core::Error::Io(e) => e.kind(),
        qcow_core::Error::PasswordRequired => K::PermissionDenied,
        qcow_core::Error::SecretNotUtf8
        | qcow_core::Error::OutOfRange { .. }
        | qcow_core::Error::ShrinkRefused { .. } => K::InvalidInput,
        qcow_core::Error::FileTooLarge(_) => K::FileTooLarge,
        qcow_core::Error::OutOfMemory => K::OutOfMemory,
        _ => K::InvalidData,
    }
}

/// The error inside an [`std::io::Error`] of the fitting kind
/// ([`Error::io_kind`]), so the file it names is kept.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(e.io_kind(), e)
    }
}
