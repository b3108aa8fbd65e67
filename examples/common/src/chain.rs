//! A qcow image and its backing chain, opened without an allocator and read whole.
//!
//! A backing file name is resolved against the directory of the image naming it
//! (absolute names are used as they are, see [`Path::backing`]) and probed: `QFI\xfb`
//! with version 1 is a qcow image, anything else is raw. The chain is at most
//! [`LAYERS`] images deep (the top image and four backing files), with no recursion
//! a file could drive:
//! 1. `discover` walks the chain top-down in a bounded loop, opening each backing
//!    file into a fixed array of `LayerFile`s (a cycle just runs into the bound);
//! 2. `read_chain` builds the layers bottom-up as types nested to a fixed depth: each
//!    layer is a [`Lower`] (absent, raw, or a qcow [`Image`]) whose own backing is a
//!    `&mut` borrow of the layer beneath, down to [`NoBacking`]:
//!    `Image<T, &mut Lower<F, &mut Lower<F, &mut Lower<F, &mut Lower<F, NoBacking>>>>, _>`.
//!    Reading then goes through qcow-core's own [`Backing`] chain. Deepening the
//!    chain is one more line in `read_chain` (and in `LAYERS`).
//!
//! Borrowing rather than owning the layer beneath keeps every image in a local of
//! its own: an owned nesting would be moved (copied) level by level, and the stack
//! frame held about three times the chain.
//!
//! # Memory
//! Nothing is allocated. The caller's pool (at least [`POOL_LEN`] bytes, a static
//! buffer in both examples) holds the [`READ_LEN`] read buffer and every image's
//! scratch buffer, carved to the exact [`scratch_len`] of each image's geometry. The
//! [`Image`]s themselves, with their table caches (about 9 KiB each), live on the
//! stack: five of them, whether the layers exist or not.

use core::fmt;

use embedded_io::ErrorType;
use qcow_core::header::{MAGIC, MAX_BACKING_NAME, VERSION};
use qcow_core::image::{read_backing_name, read_header, scratch_len};
use qcow_core::{Backing, BlockIo, Error, Image, NoBacking, Raw, Status};

use crate::crc32::Crc32;
use crate::path::{Name, Path};

/// Images in the longest chain accepted: the top image and four backing files.
pub const LAYERS: usize = 5;
/// Bytes read per call into the top image.
pub const READ_LEN: usize = 64 * 1024;
/// The largest scratch buffer an image needs (64 KiB clusters: two clusters).
pub const MAX_SCRATCH: usize = 2 * 64 * 1024;
/// A pool that serves every chain: the read buffer and a worst-case scratch buffer
/// per layer.
pub const POOL_LEN: usize = READ_LEN + LAYERS * MAX_SCRATCH;

/// Where an image's backing files are found: a file system.
pub trait Volume {
    /// An open, readable file.
    type File: BlockIo;
    /// Opens the file at `path` for reading.
    fn open(&mut self, path: &Path) -> Result<Self::File, <Self::File as ErrorType>::Error>;
}

/// The device error of a volume's files.
type VolError<V> = <<V as Volume>::File as ErrorType>::Error;

/// What [`digest`] found: the guest disk's size and the CRC-32 of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// The virtual size in bytes.
    pub size: u64,
    /// The CRC-32 (as zlib's `crc32`) of all `size` bytes the guest reads.
    pub crc32: u32,
}

/// Why an image could not be read: what went wrong, and the file it concerns.
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
    /// The pool is smaller than [`READ_LEN`] plus the scratch buffers.
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
    fn at(path: &Path, kind: FailureKind<E>) -> Self {
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

/// A backing file as `discover` found it.
enum LayerFile<F> {
    /// No layer at this depth.
    Absent,
    /// A raw file (no qcow magic).
    Raw(F),
    /// A qcow image.
    Qcow(F),
}

/// Reads the header of the qcow image on `io` (checking it) and its backing file
/// name into `name`; returns the name's length (0: none).
fn backing_name<B: BlockIo>(
    io: &mut B,
    path: &Path,
    name: &mut [u8; MAX_BACKING_NAME],
) -> Result<usize, Failure<B::Error>> {
    let at = |e| Failure::at(path, FailureKind::Qcow(e));
    let header = read_header(io).map_err(at)?;
    read_backing_name(io, &header, name)
        .map(<[u8]>::len)
        .map_err(at)
}

/// Walks the backing chain of the image `top` at `path` top-down and opens every
/// backing file in it, in a loop bounded by [`LAYERS`]. Every qcow header is read and
/// checked here, so errors name the file.
#[allow(clippy::type_complexity)] // one array of the backing files
#[inline(never)] // its paths (8 KiB) are off the stack before the images are opened
fn discover<V: Volume, T: BlockIo<Error = VolError<V>>>(
    volume: &mut V,
    top: &mut T,
    path: &Path,
) -> Result<[LayerFile<V::File>; LAYERS - 1], Failure<VolError<V>>> {
    let mut files: [LayerFile<V::File>; LAYERS - 1] = core::array::from_fn(|_| LayerFile::Absent);
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
            .ok_or_else(|| Failure::at(&current, FailureKind::BackingName))?;
        let mut file = volume
            .open(&next)
            .map_err(|e| Failure::at(&next, FailureKind::OpenBacking(e)))?;
        if !probe_qcow(&mut file, &next)? {
            *slot = LayerFile::Raw(file);
            return Ok(files);
        }
        name_len = backing_name(&mut file, &next, &mut name_buf)?;
        *slot = LayerFile::Qcow(file);
        current = next;
    }
    if name_len == 0 {
        Ok(files)
    } else {
        let e = Error::ChainTooDeep(LAYERS);
        Err(Failure::at(path, FailureKind::Qcow(e)))
    }
}

/// Whether the file starts with the qcow v1 magic and version; fails on other
/// versions of the magic.
fn probe_qcow<B: BlockIo>(file: &mut B, path: &Path) -> Result<bool, Failure<B::Error>> {
    let io = |e| Failure::at(path, FailureKind::Qcow(Error::Io(e)));
    if file.len().map_err(io)? < 8 {
        return Ok(false);
    }
    let mut head = [0u8; 8];
    file.read_at(0, &mut head).map_err(io)?;
    let [m0, m1, m2, m3, v0, v1, v2, v3] = head;
    if u32::from_be_bytes([m0, m1, m2, m3]) != MAGIC {
        return Ok(false);
    }
    match u32::from_be_bytes([v0, v1, v2, v3]) {
        VERSION => Ok(true),
        v => Err(Failure::at(path, FailureKind::OtherVersion(v))),
    }
}

/// A layer beneath an image: nothing, a raw file, or a qcow image on a file `F` with
/// its own layer `N` beneath. Nesting it gives a chain of fixed, type-level depth.
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

/// Takes `n` bytes off the front of the pool.
fn carve<'p>(pool: &mut &'p mut [u8], n: usize) -> Option<&'p mut [u8]> {
    if pool.len() < n {
        return None;
    }
    let (head, rest) = core::mem::take(pool).split_at_mut(n);
    *pool = rest;
    Some(head)
}

/// Opens the qcow image on `io` over the layer `below` it, with a scratch buffer
/// carved from the pool and, when it is encrypted, the secret.
#[allow(clippy::type_complexity)] // the image, as `Image::open` returns it
fn open_qcow<'p, B: BlockIo, N: Backing<IoError = B::Error>>(
    mut io: B,
    below: N,
    pool: &mut &'p mut [u8],
    secret: Option<&[u8]>,
) -> Result<Image<B, N, &'p mut [u8]>, Error<B::Error>> {
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
    file: LayerFile<F>,
    below: N,
    pool: &mut &'p mut [u8],
    secret: Option<&[u8]>,
    path: &Path,
) -> Result<(), Failure<F::Error>> {
    let at = |error| Failure::at(path, FailureKind::Layer { depth, error });
    *slot = match file {
        LayerFile::Absent => Lower::Absent,
        LayerFile::Raw(f) => Lower::Raw(Raw::new(f).map_err(at)?),
        LayerFile::Qcow(f) => Lower::Qcow(open_qcow(f, below, pool, secret).map_err(at)?),
    };
    Ok(())
}

/// Opens the qcow image at `path` on `volume`, and reads it with [`digest`].
pub fn digest_file<V: Volume>(
    volume: &mut V,
    path: &Path,
    secret: Option<&[u8]>,
    pool: &mut [u8],
) -> Result<Digest, Failure<VolError<V>>> {
    let top = volume
        .open(path)
        .map_err(|e| Failure::at(path, FailureKind::OpenImage(e)))?;
    digest(volume, top, path, secret, pool)
}

/// Opens the qcow image on `top` and its backing chain, reads the whole guest disk,
/// and returns its size and CRC-32.
///
/// `path` names the image in messages, and its backing files are resolved against
/// it and opened on `volume`. `secret` is used for every encrypted image of the
/// chain. `pool` holds the read buffer and the scratch buffers: [`POOL_LEN`] bytes
/// serve every chain (see "Memory" in the module's documentation).
pub fn digest<V: Volume, T: BlockIo<Error = VolError<V>>>(
    volume: &mut V,
    mut top: T,
    path: &Path,
    secret: Option<&[u8]>,
    pool: &mut [u8],
) -> Result<Digest, Failure<VolError<V>>> {
    // Two calls, two frames, one after the other: the walk's paths (8 KiB) are
    // off the stack before the images (45 KiB) are on it.
    let files = discover(volume, &mut top, path)?;
    read_chain(top, files, path, secret, pool)
}

/// Opens the layers `files` beneath the image `top`, and reads the guest disk.
// Not inlined: see `digest`.
#[inline(never)]
fn read_chain<F: BlockIo, T: BlockIo<Error = F::Error>>(
    top: T,
    [f1, f2, f3, f4]: [LayerFile<F>; LAYERS - 1],
    path: &Path,
    secret: Option<&[u8]>,
    pool: &mut [u8],
) -> Result<Digest, Failure<F::Error>> {
    if pool.len() < READ_LEN {
        return Err(Failure::at(path, FailureKind::PoolTooSmall));
    }
    let (buf, mut pool) = pool.split_at_mut(READ_LEN);
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
    let at = |e| Failure::at(path, FailureKind::Qcow(e));
    let mut image = open_qcow(top, &mut l1, &mut pool, secret);
    let image = match image {
        Ok(ref mut image) => image,
        Err(e) => return Err(at(e)),
    };

    let size = image.size();
    let mut crc = Crc32::new();
    let mut offset = 0u64;
    while offset < size {
        let n = usize::try_from(size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let chunk = buf.get_mut(..n).unwrap_or_default();
        image.read_at(offset, chunk).map_err(at)?;
        crc = crc.update(chunk);
        offset += n as u64;
    }
    Ok(Digest {
        size,
        crc32: crc.finish(),
    })
}
