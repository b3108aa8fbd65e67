//! A qcow image and its backing chain, opened without an allocator or recursion.
//!
//! For programs without std: the file system is a [`Volume`] where backing files
//! open, paths are fixed-size [`Path`]s, and every image of the chain lives in the
//! caller's stack frame, its scratch buffer carved from a caller's pool.
//! (`qcow-std` opens chains with an allocator, files and canonical paths.)
//!
//! A backing file name is resolved against the directory of the image naming it
//! (absolute names are used as they are, see [`Path::backing`]) and probed
//! ([`probe`]): `QFI\xfb` with version 1 is a qcow image, the magic with another
//! version is refused ([`FailureKind::OtherVersion`]), anything else is raw. The
//! chain is at most [`LAYERS`] images deep (the top image and four backing files),
//! with no recursion a file could drive:
//! 1. [`discover`] walks the chain top-down in a bounded loop, opening each backing
//!    file into a fixed array of [`Found`] files (a cycle just runs into the bound);
//! 2. [`open_discovered`] builds the layers bottom-up as types nested to a fixed
//!    depth: each layer is a [`Lower`] (absent, raw, or a qcow [`Image`]) whose own
//!    backing is a `&mut` borrow of the layer beneath, down to [`NoBacking`]:
//!    `Image<T, &mut Lower<F, &mut Lower<F, &mut Lower<F, &mut Lower<F, NoBacking>>>>, _>`
//!    ([`Top`]), and hands the top image to the caller's closure. Reading then goes
//!    through the [`Backing`] chain. Deepening the chain is one more line in
//!    `open_discovered` (and in [`LAYERS`] and [`Beneath`]).
//!
//! [`open`] does both, [`open_file`] opens the top image on the volume first.
//!
//! Borrowing rather than owning the layer beneath keeps every image in a local of
//! its own: an owned nesting would be moved (copied) level by level, and the stack
//! frame held about three times the chain. This is also why the top image is lent
//! to a closure rather than returned.
//!
//! # Memory
//! Nothing is allocated. The caller's pool (at least [`SCRATCH_LEN`] bytes serve
//! every chain) holds every image's scratch buffer, carved to the exact
//! [`scratch_len`] of each image's geometry. The [`Image`]s themselves, with their
//! table caches (about 9 KiB each), live on the stack in [`open_discovered`]'s frame:
//! five of them, whether the layers exist or not. [`discover`]'s frame (its paths,
//! about 8 KiB) is gone before that one is made.
//!
//! ```
//! use embedded_io::ErrorKind;
//! use qcow_core::chain::{self, Path, Volume, SCRATCH_LEN};
//! use qcow_core::io::SliceIo;
//! # use qcow_core::{io::MemIo, write::{create, CreateOptions}};
//! # let mut io = MemIo::default();
//! # create(&mut io, &CreateOptions::new(1 << 20).backing(Some(b"base.raw"))).unwrap();
//! # let (top, base) = (io.0, [7u8; 4096]);
//!
//! /// Two files: `dir/top.qcow` (a qcow image, its backing file `base.raw`) and
//! /// `dir/base.raw` (4 KiB of sevens).
//! struct Files<'a> {
//!     top: &'a [u8],
//!     base: &'a [u8],
//! }
//!
//! impl<'a> Volume for Files<'a> {
//!     type File = SliceIo<'a>;
//!     fn open(&mut self, path: &Path) -> Result<SliceIo<'a>, ErrorKind> {
//!         match path.bytes() {
//!             b"dir/top.qcow" => Ok(SliceIo(self.top)),
//!             b"dir/base.raw" => Ok(SliceIo(self.base)),
//!             _ => Err(ErrorKind::NotFound),
//!         }
//!     }
//! }
//!
//! let mut files = Files { top: &top, base: &base };
//! let mut pool = [0u8; SCRATCH_LEN];
//! let path = Path::new(b"dir/top.qcow").unwrap();
//! let mut buf = [0u8; 8];
//! let size = chain::open_file(&mut files, &path, None, &mut pool, |image| {
//!     image.read_at(4090, &mut buf)?; // the raw file's last 6 bytes, then zeros
//!     Ok(image.size())
//! });
//! assert!(matches!(size, Ok(0x10_0000)));
//! assert_eq!(buf, [7, 7, 7, 7, 7, 7, 0, 0]);
//! ```

// A `Failure` carries the file's name (up to 240 bytes) so that a message can name
// it; without an allocator there is no box to put it in.
#![allow(clippy::result_large_err)]

mod path;

use core::fmt;

use embedded_io::ErrorType;

use crate::header::{MAGIC, MAX_BACKING_NAME, VERSION};
use crate::image::{read_backing_name, read_header, scratch_len};
use crate::{Backing, BlockIo, Error, Image, NoBacking, Raw, Status};

pub use path::{Name, Path, Show, PATH_MAX};

/// Backing files in the longest chain accepted.
const BACKING_FILES: usize = 4;
/// Images in the longest chain accepted: the top image and four backing files.
pub const LAYERS: usize = BACKING_FILES + 1;
/// The largest scratch buffer an image needs (64 KiB clusters: two clusters).
pub const MAX_SCRATCH: usize = 2 * 64 * 1024;
/// A pool that serves every chain: a worst-case scratch buffer per layer.
pub const SCRATCH_LEN: usize = LAYERS * MAX_SCRATCH;

/// Where an image's backing files are found: a file system.
pub trait Volume {
    /// An open, readable file.
    type File: BlockIo;
    /// Opens the file at `path` for reading.
    fn open(&mut self, path: &Path) -> Result<Self::File, <Self::File as ErrorType>::Error>;
}

/// The device error of a volume's files.
type VolError<V> = <<V as Volume>::File as ErrorType>::Error;

/// Why a chain could not be opened or read: what went wrong, and the file it
/// concerns.
pub struct Failure<E> {
    /// The file: the image, or the backing file at fault.
    pub path: Name,
    /// What went wrong.
    pub kind: FailureKind<E>,
}

/// What went wrong, in a [`Failure`].
#[derive(Debug)]
#[non_exhaustive]
pub enum FailureKind<E> {
    /// The image itself could not be opened.
    OpenImage(E),
    /// A backing file could not be opened.
    OpenBacking(E),
    /// The file is not a valid qcow image, or reading it failed.
    Qcow(Error<E>),
    /// A backing file carries the qcow magic with another version (qcow2 is not
    /// readable here, and must not be read as raw).
    OtherVersion(u32),
    /// The resolved backing file name is too long or holds a NUL byte.
    BackingName,
    /// The caller's pool is too small for what the caller takes from it besides the
    /// chain's scratch buffers (a too small scratch buffer is
    /// [`Error::BufferTooSmall`]).
    PoolTooSmall,
    /// Opening layer `depth` of the chain failed.
    Layer {
        /// 1 for the top image's backing file, and so on.
        depth: usize,
        /// The error.
        error: Error<E>,
    },
}

impl<E> Failure<E> {
    /// A failure of the file at `path`.
    pub fn new(path: &Path, kind: FailureKind<E>) -> Self {
        Failure {
            path: Name::from(path),
            kind,
        }
    }
}

impl<E: fmt::Debug + fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.kind {
            FailureKind::OpenImage(e) => write!(f, "cannot open image '{path}': {e:?}"),
            FailureKind::OpenBacking(e) => write!(f, "cannot open backing file '{path}': {e:?}"),
            FailureKind::Qcow(e) => write!(f, "{path}: {e}"),
            FailureKind::OtherVersion(v) => write!(
                f,
                "{path}: backing file is qcow version {v}, only version 1 is supported"
            ),
            FailureKind::BackingName => write!(
                f,
                "{path}: its backing file name is too long or holds a NUL byte"
            ),
            FailureKind::PoolTooSmall => write!(f, "{path}: the buffer pool is too small"),
            FailureKind::Layer { depth, error } => {
                write!(f, "{path}: layer {depth} of the chain: {error}")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> fmt::Debug for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A backing file as [`discover`] found it.
#[derive(Debug)]
pub enum Found<F> {
    /// No layer at this depth.
    Absent,
    /// A raw file (no qcow magic).
    Raw(F),
    /// A qcow image (version 1; its header checked).
    Qcow(F),
}

/// The backing files of a chain, top-down: layer 1 (the top image's backing file)
/// first; after the first absent or raw one, all are absent.
pub type Discovered<F> = [Found<F>; BACKING_FILES];

/// Reads the header of the qcow image on `io` (checking it) and its backing file
/// name into `name`; returns the name's length (0: none).
fn backing_name<B: BlockIo>(
    io: &mut B,
    path: &Path,
    name: &mut [u8; MAX_BACKING_NAME],
) -> Result<usize, Failure<B::Error>> {
    let at = |e| Failure::new(path, FailureKind::Qcow(e));
    let header = read_header(io).map_err(at)?;
    read_backing_name(io, &header, name)
        .map(<[u8]>::len)
        .map_err(at)
}

/// Walks the backing chain of the image `top` at `path` top-down and opens every
/// backing file in it on `volume`, in a loop bounded by [`LAYERS`].
///
/// Every qcow header is read and checked here, so errors name the file. A chain
/// deeper than [`LAYERS`] (a cycle among them) fails as
/// [`Error::ChainTooDeep`] of the top image.
#[inline(never)] // its paths (8 KiB) are off the stack before the images are opened
pub fn discover<V: Volume, T: BlockIo<Error = VolError<V>>>(
    volume: &mut V,
    top: &mut T,
    path: &Path,
) -> Result<Discovered<V::File>, Failure<VolError<V>>> {
    let mut files: Discovered<V::File> = core::array::from_fn(|_| Found::Absent);
    let mut name_buf = [0u8; MAX_BACKING_NAME];
    let mut name_len = backing_name(top, path, &mut name_buf)?;
    let mut current = path.clone();
    for slot in files.iter_mut() {
        // QEMU treats an empty name as no backing file.
        if name_len == 0 {
            return Ok(files);
        }
        let name = name_buf.get(..name_len).unwrap_or_default();
        let next = current
            .backing(name)
            .ok_or_else(|| Failure::new(&current, FailureKind::BackingName))?;
        let mut file = volume
            .open(&next)
            .map_err(|e| Failure::new(&next, FailureKind::OpenBacking(e)))?;
        if !probe_qcow(&mut file, &next)? {
            *slot = Found::Raw(file);
            return Ok(files);
        }
        name_len = backing_name(&mut file, &next, &mut name_buf)?;
        *slot = Found::Qcow(file);
        current = next;
    }
    if name_len == 0 {
        Ok(files)
    } else {
        let e = Error::ChainTooDeep(LAYERS);
        Err(Failure::new(path, FailureKind::Qcow(e)))
    }
}

/// What a file holds, as [`probe`] tells from its first 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// The qcow magic and [`VERSION`]: a qcow image this crate reads.
    Qcow,
    /// The qcow magic with another version (2 and 3 are qcow2).
    OtherVersion(u32),
    /// Anything else, shorter files too: raw data.
    Raw,
}

/// Tells a qcow (version 1) image from another qcow version and from raw data, by
/// the magic and version at the start of `io`, as the chain probes backing files.
pub fn probe<B: BlockIo>(io: &mut B) -> Result<Probed, B::Error> {
    if io.len()? < 8 {
        return Ok(Probed::Raw);
    }
    let mut head = [0u8; 8];
    io.read_at(0, &mut head)?;
    let [m0, m1, m2, m3, v0, v1, v2, v3] = head;
    if u32::from_be_bytes([m0, m1, m2, m3]) != MAGIC {
        return Ok(Probed::Raw);
    }
    Ok(match u32::from_be_bytes([v0, v1, v2, v3]) {
        VERSION => Probed::Qcow,
        v => Probed::OtherVersion(v),
    })
}

/// Whether the backing file at `path` is a qcow image; fails on other versions of
/// the magic.
fn probe_qcow<B: BlockIo>(file: &mut B, path: &Path) -> Result<bool, Failure<B::Error>> {
    match probe(file) {
        Ok(Probed::Qcow) => Ok(true),
        Ok(Probed::Raw) => Ok(false),
        Ok(Probed::OtherVersion(v)) => Err(Failure::new(path, FailureKind::OtherVersion(v))),
        Err(e) => Err(Failure::new(path, FailureKind::Qcow(Error::Io(e)))),
    }
}

/// A layer beneath an image: nothing, a raw file, or a qcow image on a file `F` with
/// its own layer `N` beneath, its scratch buffer borrowed from a pool for `'p`.
/// Nesting it gives a chain of fixed, type-level depth.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // no allocator to box with: see "Memory" above
pub enum Lower<'p, F: BlockIo, N> {
    /// No layer.
    Absent,
    /// A raw file.
    Raw(Raw<F>),
    /// A qcow image.
    Qcow(Image<F, N, &'p mut [u8]>),
}

impl<F: BlockIo, N: Backing<IoError = F::Error>> Backing for Lower<'_, F, N> {
    type IoError = F::Error;
    fn is_present(&self) -> bool {
        !matches!(self, Lower::Absent)
    }
    fn size(&self) -> u64 {
        match self {
            Lower::Absent => 0,
            Lower::Raw(r) => r.size(),
            Lower::Qcow(i) => i.size(),
        }
    }
    fn read_layer(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error<F::Error>> {
        match self {
            Lower::Absent => {
                buf.fill(0);
                Ok(())
            }
            Lower::Raw(r) => r.read_layer(offset, buf),
            Lower::Qcow(i) => i.read_layer(offset, buf),
        }
    }
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, Error<F::Error>> {
        match self {
            Lower::Absent => NoBacking::<F::Error>::new().status(offset, max),
            Lower::Raw(r) => r.status(offset, max),
            Lower::Qcow(i) => i.status(offset, max),
        }
    }
}

/// The layers beneath the top image as [`open_discovered`] nests them: [`LAYERS`]
/// − 1 [`Lower`]s on files `F`, each borrowing the next for `'l`, scratch buffers
/// borrowed from the pool for `'p`.
pub type Beneath<'l, 'p, F> = &'l mut Lower<
    'p,
    F,
    &'l mut Lower<
        'p,
        F,
        &'l mut Lower<'p, F, &'l mut Lower<'p, F, NoBacking<<F as ErrorType>::Error>>>,
    >,
>;

/// The top image of a chain, on the device `T`, as [`open_discovered`] lends it.
pub type Top<'l, 'p, T, F> = Image<T, Beneath<'l, 'p, F>, &'p mut [u8]>;

/// Takes `n` bytes off the front of the pool.
fn carve<'p>(pool: &mut &'p mut [u8], n: usize) -> Option<&'p mut [u8]> {
    if pool.len() < n {
        return None;
    }
    let (head, rest) = core::mem::take(pool).split_at_mut(n);
    *pool = rest;
    Some(head)
}

/// A qcow image on `B` over the layer `N`, its scratch buffer borrowed for `'p`.
type Pooled<'p, B, N> = Image<B, N, &'p mut [u8]>;

/// Opens the qcow image on `io` over the layer `below` it, with a scratch buffer
/// carved from the pool and, when it is encrypted, the secret.
fn open_qcow<'p, B: BlockIo, N: Backing<IoError = B::Error>>(
    mut io: B,
    below: N,
    pool: &mut &'p mut [u8],
    secret: Option<&[u8]>,
) -> Result<Pooled<'p, B, N>, Error<B::Error>> {
    let header = read_header(&mut io)?;
    let need = scratch_len(&header.geometry());
    let got = pool.len();
    let scratch = carve(pool, need).ok_or(Error::BufferTooSmall { need, got })?;
    let mut image = Image::open(io, below, scratch)?;
    if let (true, Some(secret)) = (header.is_encrypted(), secret) {
        image.set_secret(secret)?;
    }
    Ok(image)
}

/// Opens layer `depth` of the chain over the layer `below` it, into `slot`.
///
/// Not inlined, and writing into the caller's slot rather than returning the layer:
/// the copies of the `Image` (9 KiB each) made on the way live in this frame, gone
/// once the layer is open, and the caller's frame holds each layer once.
#[inline(never)]
fn open_layer<'p, F: BlockIo, N: Backing<IoError = F::Error>>(
    slot: &mut Lower<'p, F, N>,
    depth: usize,
    file: Found<F>,
    below: N,
    pool: &mut &'p mut [u8],
    secret: Option<&[u8]>,
    path: &Path,
) -> Result<(), Failure<F::Error>> {
    let at = |error| Failure::new(path, FailureKind::Layer { depth, error });
    *slot = match file {
        Found::Absent => Lower::Absent,
        Found::Raw(f) => Lower::Raw(Raw::new(f).map_err(at)?),
        Found::Qcow(f) => Lower::Qcow(open_qcow(f, below, pool, secret).map_err(at)?),
    };
    Ok(())
}

/// Opens the qcow image at `path` on `volume` and its backing chain, as [`open`].
pub fn open_file<'p, V, R, C>(
    volume: &mut V,
    path: &Path,
    secret: Option<&[u8]>,
    pool: &'p mut [u8],
    read: C,
) -> Result<R, Failure<VolError<V>>>
where
    V: Volume,
    C: for<'l> FnOnce(&mut Top<'l, 'p, V::File, V::File>) -> Result<R, Error<VolError<V>>>,
{
    let top = volume
        .open(path)
        .map_err(|e| Failure::new(path, FailureKind::OpenImage(e)))?;
    open(volume, top, path, secret, pool, read)
}

/// Opens the qcow image on `top` and its backing chain ([`discover`], then
/// [`open_discovered`]) and calls `read` with the top image.
///
/// `path` names the image in failures, and its backing files are resolved against
/// it and opened on `volume`. `secret` is used for every encrypted image of the
/// chain. `pool` holds the scratch buffers: [`SCRATCH_LEN`] bytes serve every chain.
/// An error `read` returns fails as [`FailureKind::Qcow`] of the top image; what it
/// returns otherwise is returned.
pub fn open<'p, V, T, R, C>(
    volume: &mut V,
    mut top: T,
    path: &Path,
    secret: Option<&[u8]>,
    pool: &'p mut [u8],
    read: C,
) -> Result<R, Failure<VolError<V>>>
where
    V: Volume,
    T: BlockIo<Error = VolError<V>>,
    C: for<'l> FnOnce(&mut Top<'l, 'p, T, V::File>) -> Result<R, Error<VolError<V>>>,
{
    // Two calls, two frames, one after the other: the walk's paths (8 KiB) are
    // off the stack before the images (45 KiB) are on it.
    let files = discover(volume, &mut top, path)?;
    open_discovered(top, files, path, secret, pool, read)
}

/// Opens the layers `files` ([`discover`]'s) beneath the qcow image `top`, bottom-up,
/// and calls `read` with the top image; as [`open`] says.
#[inline(never)] // see `open`
pub fn open_discovered<'p, F, T, R, C>(
    top: T,
    [f1, f2, f3, f4]: Discovered<F>,
    path: &Path,
    secret: Option<&[u8]>,
    mut pool: &'p mut [u8],
    read: C,
) -> Result<R, Failure<F::Error>>
where
    F: BlockIo,
    T: BlockIo<Error = F::Error>,
    C: for<'l> FnOnce(&mut Top<'l, 'p, T, F>) -> Result<R, Error<F::Error>>,
{
    // Bottom-up, one line per level of LAYERS. Each layer is a local of its own and
    // the one above borrows it (`Backing` is implemented for `&mut T`), so no layer
    // is ever moved into another: the stack holds each Image once.
    let mut l4 = Lower::Absent;
    open_layer(&mut l4, 4, f4, NoBacking::new(), &mut pool, secret, path)?;
    let mut l3 = Lower::Absent;
    open_layer(&mut l3, 3, f3, &mut l4, &mut pool, secret, path)?;
    let mut l2 = Lower::Absent;
    open_layer(&mut l2, 2, f2, &mut l3, &mut pool, secret, path)?;
    let mut l1 = Lower::Absent;
    open_layer(&mut l1, 1, f1, &mut l2, &mut pool, secret, path)?;
    let at = |e| Failure::new(path, FailureKind::Qcow(e));
    let mut image = open_qcow(top, &mut l1, &mut pool, secret);
    match image {
        Ok(ref mut image) => read(image).map_err(at),
        Err(e) => Err(at(e)),
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests;
