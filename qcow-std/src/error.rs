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
    /// Something the caller asked for is not possible.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl Error {
    /// Wraps a core error for `path`.
    pub fn image(path: impl Into<PathBuf>, source: CoreError) -> Self {
        match source {
            qcow_core::Error::Io(source) => Error::Io {
                path: path.into(),
                source,
            },
            source => Error::Image {
                path: path.into(),
                source,
            },
        }
    }
    /// Wraps an I/O error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An invalid request about `path`.
    pub fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.into(),
            what: what.into(),
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
            | Error::Invalid { path, .. } => path,
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
            Error::Invalid { path, what } => write!(f, "{}: {what}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { source, .. } => source,
            e => std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        }
    }
}
