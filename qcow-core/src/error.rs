//! The one error type of the core.

use core::fmt;

/// What kind of on-disk reference an [`Error::BadReference`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// An L1 entry pointing at an L2 table.
    L2Table,
    /// An L2 entry pointing at a plain data cluster.
    DataCluster,
    /// An L2 entry pointing at a compressed cluster.
    CompressedCluster,
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefKind::L2Table => "L2 table",
            RefKind::DataCluster => "data cluster",
            RefKind::CompressedCluster => "compressed cluster",
        })
    }
}

/// What is wrong with a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The extent ends past the end of the file (or its end overflows).
    PastEof {
        /// The file's length.
        file_len: u64,
    },
    /// The extent does not start on a 512-byte boundary.
    Misaligned,
    /// The extent overlaps the header, the backing file name or the L1 table.
    OverlapsMetadata,
    /// A compressed extent of length zero.
    Empty,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::PastEof { file_len } => {
                write!(f, "lies past the end of the {file_len}-byte file")
            }
            Problem::Misaligned => f.write_str("is not 512-byte aligned"),
            Problem::OverlapsMetadata => {
                f.write_str("overlaps the header, backing name or L1 table")
            }
            Problem::Empty => f.write_str("has length zero"),
        }
    }
}

/// Every way the core can fail.
///
/// `E` is the error type of the [`BlockIo`](crate::BlockIo) underneath.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The device failed.
    Io(E),
    /// The file is shorter than the 48-byte header.
    HeaderTruncated {
        /// The file's length.
        len: u64,
    },
    /// The magic number is not `QFI\xfb`.
    BadMagic(u32),
    /// The version is not 1.
    UnsupportedVersion(u32),
    /// The virtual size is below 2 bytes.
    SizeTooSmall(u64),
    /// `cluster_bits` is outside 9..=16.
    ClusterBits(u8),
    /// `l2_bits` is outside 6..=13.
    L2Bits(u8),
    /// The virtual size needs an L1 table larger than QEMU allows.
    ImageTooLarge(u64),
    /// `crypt_method` is neither 0 nor 1.
    CryptMethod(u32),
    /// The backing file name is longer than 1023 bytes.
    BackingNameTooLong(u32),
    /// The backing file name lies (partly) outside the file, or inside the header.
    BackingNameOutOfFile {
        /// Where the name starts.
        offset: u64,
        /// Its length.
        len: u32,
        /// The file's length.
        file_len: u64,
    },
    /// The L1 table lies (partly) past the end of the file.
    L1OutOfFile {
        /// Where the table starts.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The L1 table is not 8-byte aligned.
    L1Misaligned(u64),
    /// The L1 table overlaps the 48-byte header.
    L1OverlapsHeader(u64),
    /// An L1 or L2 entry points somewhere it must not.
    BadReference {
        /// What the entry points at.
        kind: RefKind,
        /// The guest offset whose lookup found it.
        guest: u64,
        /// The host offset the entry holds.
        host: u64,
        /// What is wrong.
        problem: Problem,
    },
    /// A compressed cluster is not a valid raw deflate stream.
    CompressedInvalid {
        /// The guest offset of the cluster.
        guest: u64,
        /// Where the stream starts in the file.
        host: u64,
    },
    /// A compressed cluster inflates to less than one cluster.
    CompressedShort {
        /// The guest offset of the cluster.
        guest: u64,
        /// Where the stream starts in the file.
        host: u64,
        /// How many bytes it inflated to.
        len: usize,
    },
    /// The image is encrypted and no password was given.
    PasswordRequired,
    /// The secret is not valid UTF-8 or holds a NUL byte (QEMU refuses it too).
    SecretNotUtf8,
    /// A request reaches past the virtual size.
    OutOfRange {
        /// Start of the request.
        offset: u64,
        /// Its length.
        len: u64,
        /// The virtual size.
        size: u64,
    },
    /// A caller-provided scratch buffer is smaller than needed.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// The file would grow past what an L2 entry can address.
    FileTooLarge(u64),
    /// A backing chain is deeper than the given limit.
    ChainTooDeep(usize),
    /// The operation needs a feature this image or build does not have.
    Unsupported(&'static str),
    /// A table or list could not be allocated (the image claims more than fits).
    OutOfMemory,
    /// The image has this many structural corruptions; repair it before changing it.
    Corrupt(u64),
    /// The new virtual size is below the current one and shrinking was not allowed.
    ShrinkRefused {
        /// The current virtual size.
        size: u64,
        /// The requested one.
        new_size: u64,
    },
}

impl<E> From<E> for Error<E> {
    fn from(e: E) -> Self {
        Error::Io(e)
    }
}

impl<E> Error<E> {
    /// Converts the device error with `f`, keeping every other variant.
    pub fn map_io<F, G: FnOnce(E) -> F>(self, g: G) -> Error<F> {
        match self {
            Error::Io(e) => Error::Io(g(e)),
            Error::HeaderTruncated { len } => Error::HeaderTruncated { len },
            Error::BadMagic(v) => Error::BadMagic(v),
            Error::UnsupportedVersion(v) => Error::UnsupportedVersion(v),
            Error::SizeTooSmall(v) => Error::SizeTooSmall(v),
            Error::ClusterBits(v) => Error::ClusterBits(v),
            Error::L2Bits(v) => Error::L2Bits(v),
            Error::ImageTooLarge(v) => Error::ImageTooLarge(v),
            Error::CryptMethod(v) => Error::CryptMethod(v),
            Error::BackingNameTooLong(v) => Error::BackingNameTooLong(v),
            Error::BackingNameOutOfFile {
                offset,
                len,
                file_len,
            } => Error::BackingNameOutOfFile {
                offset,
                len,
                file_len,
            },
            Error::L1OutOfFile {
                offset,
                len,
                file_len,
            } => Error::L1OutOfFile {
                offset,
                len,
                file_len,
            },
            Error::L1Misaligned(v) => Error::L1Misaligned(v),
            Error::L1OverlapsHeader(v) => Error::L1OverlapsHeader(v),
            Error::BadReference {
                kind,
                guest,
                host,
                problem,
            } => Error::BadReference {
                kind,
                guest,
                host,
                problem,
            },
            Error::CompressedInvalid { guest, host } => Error::CompressedInvalid { guest, host },
            Error::CompressedShort { guest, host, len } => {
                Error::CompressedShort { guest, host, len }
            }
            Error::PasswordRequired => Error::PasswordRequired,
            Error::SecretNotUtf8 => Error::SecretNotUtf8,
            Error::OutOfRange { offset, len, size } => Error::OutOfRange { offset, len, size },
            Error::BufferTooSmall { need, got } => Error::BufferTooSmall { need, got },
            Error::FileTooLarge(v) => Error::FileTooLarge(v),
            Error::ChainTooDeep(v) => Error::ChainTooDeep(v),
            Error::Unsupported(s) => Error::Unsupported(s),
            Error::OutOfMemory => Error::OutOfMemory,
            Error::Corrupt(n) => Error::Corrupt(n),
            Error::ShrinkRefused { size, new_size } => Error::ShrinkRefused { size, new_size },
        }
    }
}

impl<E> Error<E> {
    /// The message of a header or layout check, `None` for the other variants.
    fn fmt_header(&self, f: &mut fmt::Formatter<'_>) -> Option<fmt::Result> {
        Some(match self {
            Error::HeaderTruncated { len } => {
                write!(f, "file is {len} bytes, shorter than the 48-byte qcow header")
            }
            Error::BadMagic(m) => write!(f, "not a qcow image (magic {m:#010x})"),
            Error::UnsupportedVersion(v) => {
                write!(f, "unsupported qcow version {v} (only version 1 is qcow)")
            }
            Error::SizeTooSmall(s) => {
                write!(f, "image size {s} is too small (must be at least 2 bytes)")
            }
            Error::ClusterBits(b) => write!(
                f,
                "cluster size must be between 512 and 64k (cluster_bits {b} at offset 32)"
            ),
            Error::L2Bits(b) => write!(
                f,
                "L2 table size must be between 512 and 64k (l2_bits {b} at offset 33)"
            ),
            Error::ImageTooLarge(s) => write!(f, "image too large (size {s} at offset 24)"),
            Error::CryptMethod(m) => {
                write!(f, "invalid encryption method {m} in header (offset 36)")
            }
            Error::BackingNameTooLong(n) => {
                write!(f, "backing file name too long ({n} bytes at offset 16, max 1023)")
            }
            Error::BackingNameOutOfFile {
                offset,
                len,
                file_len,
            } => write!(
                f,
                "backing file name at offset {offset} ({len} bytes) lies outside the {file_len}-byte file or inside the header"
            ),
            Error::L1OutOfFile {
                offset,
                len,
                file_len,
            } => write!(
                f,
                "L1 table at offset {offset} ({len} bytes) lies past the end of the {file_len}-byte file"
            ),
            Error::L1Misaligned(o) => write!(f, "L1 table offset {o} is not 8-byte aligned"),
            Error::L1OverlapsHeader(o) => write!(f, "L1 table at offset {o} overlaps the header"),
            _ => return None,
        })
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::BadReference {
                kind,
                guest,
                host,
                problem,
            } => {
                write!(f, "{kind} at host offset {host} (guest offset {guest}) {problem}")
            }
            Error::CompressedInvalid { guest, host } => write!(
                f,
                "compressed cluster at host offset {host} (guest offset {guest}) is not a valid deflate stream"
            ),
            Error::CompressedShort { guest, host, len } => write!(
                f,
                "compressed cluster at host offset {host} (guest offset {guest}) inflates to {len} bytes, less than a cluster"
            ),
            Error::PasswordRequired => {
                f.write_str("image is encrypted: a password is required")
            }
            Error::SecretNotUtf8 => f.write_str("secret is not valid UTF-8 (or holds a NUL byte)"),
            Error::OutOfRange { offset, len, size } => write!(
                f,
                "request at offset {offset} of {len} bytes reaches past the virtual size {size}"
            ),
            Error::BufferTooSmall { need, got } => {
                write!(f, "scratch buffer of {got} bytes is too small (need {need})")
            }
            Error::FileTooLarge(n) => write!(f, "image file would grow past {n} bytes"),
            Error::ChainTooDeep(n) => write!(f, "backing chain deeper than {n} images"),
            Error::Unsupported(s) => write!(f, "unsupported: {s}"),
            Error::OutOfMemory => f.write_str("out of memory"),
            Error::Corrupt(n) => write!(
                f,
                "image has {n} structural corruption(s): repair it first"
            ),
            Error::ShrinkRefused { size, new_size } => write!(
                f,
                "new size {new_size} is below the current size {size}: shrinking drops data past it and must be asked for"
            ),
            // The header and layout checks (fmt_header knows each of them).
            other => other.fmt_header(f).unwrap_or(Ok(())),
        }
    }
}

impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Shorthand for the core's results.
pub type Result<T, E> = core::result::Result<T, Error<E>>;
