//! [`Disk`]: the one owned handle to an opened image and its backing chain.
//!
//! Every consumer (the CLI's verbs, convert, commit, servers, mounts, bindings) reads
//! and writes through it. Reads take `&self` and hold a layer's lock only while they
//! look a cluster up in its tables: the data is read, inflated and decrypted outside
//! it, so many threads read one handle at once. Writes to the top layer are serialized
//! by that same lock and keep the core's ordering (data, then L2, then L1), so a
//! concurrent read finds a cluster either unlinked or linked to complete data.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use qcow_core::cluster::{InflateError, Inflater};
use qcow_core::crypt::Cipher;
use qcow_core::maint::Rebased;
use qcow_core::{Backing, Cluster, Geometry, Header, Image, Status, StatusKind};

use crate::error::{CoreError, Error};
use crate::open::Format;
use crate::storage::{Storage, StorageIo};

/// The core image of one qcow layer, its unallocated clusters read from the layer below.
pub(crate) type QcowImage = Image<StorageIo, Below, Vec<u8>>;

/// Bytes of zeros written at a time when zeroing.
const ZERO_CHUNK: usize = 1 << 20;

/// Bytes of a read below which [`Disk::read_at_parallel`] reads on one thread.
const PARALLEL_MIN: usize = 256 << 10;

/// Most bytes of adjacent compressed streams fetched with one read (small: each
/// thread zeroes its buffer once, and short-lived reader threads are common).
const RUN_MAX: u64 = 128 << 10;
/// Largest gap between two compressed streams fetched with one read.
const RUN_GAP: u64 = 4096;

/// An opened disk: a qcow image with its backing chain, or a raw file.
///
/// `Send + Sync`; clones share the opened chain (each clone has its own cursor for
/// `Read`/`Write`/`Seek`). Positional [`Disk::read_at`]/[`Disk::write_at`] take `&self`.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("qcow-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # std::env::set_current_dir(&dir)?;  // a fresh image where the example looks
/// # let opts = qcow_std::qcow_core::write::CreateOptions::new(4 << 20);
/// # qcow_std::create::create("disk.qcow".as_ref(), &opts)?;
/// let disk = qcow_std::Disk::open("disk.qcow")?;
/// let mut mbr = [0u8; 512];
/// disk.read_at(0, &mut mbr)?;
/// println!("{} bytes, boot signature {:02x?}", disk.size(), &mbr[510..]);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Disk {
    top: Arc<Layer>,
    writable: bool,
    pos: u64,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disk({}, {})", self.format(), self.path().display())
    }
}

/// One layer of a chain: a qcow image or a raw file, over its storage.
pub(crate) struct Layer {
    pub(crate) path: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) kind: Kind,
    /// A number no other layer of this process has (keys the per-thread inflate cache).
    uid: u64,
}

pub(crate) enum Kind {
    /// A raw file: guest offset = host offset; `size` is its length rounded up to 512
    /// (QEMU counts whole sectors), bytes past `len` read as zeros.
    Raw {
        size: u64,
        len: AtomicU64,
    },
    Qcow(Box<QcowLayer>),
}

pub(crate) struct QcowLayer {
    pub(crate) meta: Mutex<QcowImage>,
    pub(crate) header: Header,
    pub(crate) geo: Geometry,
    pub(crate) backing_name: Vec<u8>,
    pub(crate) cipher: Option<Cipher>,
    pub(crate) below: Option<Arc<Layer>>,
    /// Bumped when space may be reused (the image emptied): cached inflations die.
    epoch: AtomicU64,
}

/// The layer under a qcow image, as the core's [`Backing`].
pub(crate) struct Below(pub(crate) Option<Arc<Layer>>);

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl Layer {
    pub(crate) fn raw(path: PathBuf, storage: Arc<dyn Storage>) -> io::Result<Self> {
        let len = storage.len()?;
        let size = len.checked_add(511).map_or(len, |v| v & !511);
        Ok(Self::new(
            path,
            storage,
            Kind::Raw {
                size,
                len: AtomicU64::new(len),
            },
        ))
    }

    pub(crate) fn qcow(
        path: PathBuf,
        storage: Arc<dyn Storage>,
        image: QcowImage,
        backing_name: Vec<u8>,
        cipher: Option<Cipher>,
        below: Option<Arc<Layer>>,
    ) -> Self {
        let header = *image.header();
        let geo = *image.geometry();
        let q = QcowLayer {
            meta: Mutex::new(image),
            header,
            geo,
            backing_name,
            cipher,
            below,
            epoch: AtomicU64::new(0),
        };
        Self::new(path, storage, Kind::Qcow(Box::new(q)))
    }

    fn new(path: PathBuf, storage: Arc<dyn Storage>, kind: Kind) -> Self {
        Layer {
            path,
            storage,
            kind,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        match &self.kind {
            Kind::Raw { size, .. } => *size,
            Kind::Qcow(q) => q.geo.size(),
        }
    }

    pub(crate) fn below(&self) -> Option<&Arc<Layer>> {
        match &self.kind {
            Kind::Raw { .. } => None,
            Kind::Qcow(q) => q.below.as_ref(),
        }
    }

    fn err(&self, e: CoreError) -> Error {
        Error::image(&self.path, e)
    }

    fn io_err(&self, e: io::Error) -> Error {
        Error::io(&self.path, e)
    }

    /// Reads guest bytes; the part past the layer's size reads as zeros.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let inside = usize::try_from(self.size().saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (inside, past) = buf.split_at_mut(inside);
        past.fill(0);
        if inside.is_empty() {
            return Ok(());
        }
        match &self.kind {
            Kind::Raw { len, .. } => {
                let len = len.load(Ordering::Acquire);
                let n = usize::try_from(len.saturating_sub(offset))
                    .unwrap_or(usize::MAX)
                    .min(inside.len());
                let (data, tail) = inside.split_at_mut(n);
                tail.fill(0);
                if !data.is_empty() {
                    self.storage
                        .read_exact_at(data, offset)
                        .map_err(|e| self.io_err(e))?;
                }
                Ok(())
            }
            Kind::Qcow(q) => self.read_qcow(q, offset, inside),
        }
    }

    fn read_qcow(&self, q: &QcowLayer, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = offset.saturating_add(pos as u64);
            let left = buf.len().saturating_sub(pos);
            let (c, run) = q
                .lock()
                .extent(guest, left as u64)
                .map_err(|e| self.err(e))?;
            let n = usize::try_from(run).unwrap_or(usize::MAX).clamp(1, left);
            let piece = buf.get_mut(pos..pos.saturating_add(n)).unwrap_or_default();
            match c {
                Cluster::Unallocated => match &q.below {
                    Some(b) => b.read(guest, piece)?,
                    None => piece.fill(0),
                },
                Cluster::Plain { host } => self.read_plain(q, guest, host, piece)?,
                Cluster::Compressed { host, len } if piece.len() == q.geo.cluster_len() => {
                    let rest = buf.get_mut(pos..).unwrap_or_default();
                    let done = self.read_compressed_run(q, guest, (host, len), rest)?;
                    pos = pos.saturating_add(done);
                    continue;
                }
                Cluster::Compressed { host, len } => {
                    self.read_compressed(q, guest, host, len, piece)?
                }
            }
            pos = pos.saturating_add(n);
        }
        Ok(())
    }

    /// Plain (possibly encrypted) data of guest `guest..` stored from `host`.
    fn read_plain(
        &self,
        q: &QcowLayer,
        guest: u64,
        host: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        if !q.header.is_encrypted() {
            return self
                .storage
                .read_exact_at(buf, host)
                .map_err(|e| self.io_err(e));
        }
        let cipher = q
            .cipher
            .as_ref()
            .ok_or_else(|| self.err(qcow_core::Error::PasswordRequired))?;
        // host ≡ guest (mod 512): clusters are 512-aligned. Decrypt whole sectors.
        let skew = guest % 512;
        let end = skew.saturating_add(buf.len() as u64);
        if skew == 0 && end.is_multiple_of(512) {
            self.storage
                .read_exact_at(buf, host)
                .map_err(|e| self.io_err(e))?;
            cipher.decrypt(guest / 512, buf);
            return Ok(());
        }
        let total = end.div_ceil(512).saturating_mul(512);
        let mut tmp = vec![0u8; usize::try_from(total).unwrap_or(0)];
        self.storage
            .read_exact_at(&mut tmp, host.saturating_sub(skew))
            .map_err(|e| self.io_err(e))?;
        cipher.decrypt(guest / 512, &mut tmp);
        let s = usize::try_from(skew).unwrap_or(0);
        let src = tmp.get(s..s.saturating_add(buf.len())).unwrap_or_default();
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Whole compressed clusters from `guest` (the first stored as `first`) into `buf`:
    /// the streams of the following clusters, while they lie close together in the
    /// file, are fetched with one read, then each inflated straight into `buf`.
    /// Returns the bytes filled (whole clusters, at least one).
    fn read_compressed_run(
        &self,
        q: &QcowLayer,
        guest: u64,
        first: (u64, u64),
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let cl = q.geo.cluster_len();
        let start = first.0;
        let mut streams = vec![first];
        let mut end = first.0.saturating_add(first.1);
        {
            let mut img = q.lock();
            while buf.len().saturating_sub(streams.len().saturating_mul(cl)) >= cl {
                let g = guest.saturating_add(streams.len().saturating_mul(cl) as u64);
                let Ok((Cluster::Compressed { host, len }, _)) = img.extent(g, cl as u64) else {
                    break;
                };
                let close = host >= end && host - end <= RUN_GAP;
                if !close || host.saturating_add(len).saturating_sub(start) > RUN_MAX {
                    break;
                }
                streams.push((host, len));
                end = host.saturating_add(len);
            }
        }
        INFLATED.with(|cell| {
            let mut c = cell.borrow_mut();
            let Inflated { run, inflater, .. } = &mut *c;
            // check_ref bounded each stream inside the file; the run is at most RUN_MAX.
            run.resize(usize::try_from(end.saturating_sub(start)).unwrap_or(0), 0);
            self.storage
                .read_exact_at(run, start)
                .map_err(|e| self.io_err(e))?;
            for ((host, len), (i, out)) in streams.iter().zip(buf.chunks_mut(cl).enumerate()) {
                let at = usize::try_from(host - start).unwrap_or(usize::MAX);
                let n = usize::try_from(*len).unwrap_or(usize::MAX);
                let stream = run.get(at..at.saturating_add(n)).unwrap_or_default();
                let g = guest.saturating_add(i.saturating_mul(cl) as u64);
                inflater
                    .inflate(stream, out)
                    .map_err(|e| self.err(inflate_error(e, g, *host)))?;
            }
            Ok(streams.len().saturating_mul(cl))
        })
    }

    /// Part of the compressed cluster whose stream is `(host, len)`, inflated (and kept
    /// in this thread's one-cluster cache).
    fn read_compressed(
        &self,
        q: &QcowLayer,
        guest: u64,
        host: u64,
        len: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        let key = (self.uid, q.epoch.load(Ordering::Acquire), host);
        let at = usize::try_from(q.geo.in_cluster(guest)).unwrap_or(0);
        INFLATED.with(|cell| {
            let mut c = cell.borrow_mut();
            if c.key != Some(key) {
                c.key = None;
                let n = usize::try_from(len).unwrap_or(usize::MAX);
                // check_ref bounded the stream inside the file.
                c.stream.resize(n, 0);
                c.cluster.resize(q.geo.cluster_len(), 0);
                self.storage
                    .read_exact_at(&mut c.stream, host)
                    .map_err(|e| self.io_err(e))?;
                let Inflated {
                    stream,
                    cluster,
                    inflater,
                    ..
                } = &mut *c;
                inflater
                    .inflate(stream, cluster)
                    .map_err(|e| self.err(inflate_error(e, guest, host)))?;
                c.key = Some(key);
            }
            let src = c.cluster.get(at..at.saturating_add(buf.len()));
            buf.copy_from_slice(src.unwrap_or_default());
            Ok(())
        })
    }

    /// How the range from `offset` (at most `max` bytes) is stored.
    pub(crate) fn status(&self, offset: u64, max: u64) -> Result<Status, Error> {
        match &self.kind {
            Kind::Raw { size, len } => {
                self.raw_status(*size, len.load(Ordering::Acquire), offset, max)
            }
            Kind::Qcow(q) => Backing::status(&mut *q.lock(), offset, max).map_err(|e| self.err(e)),
        }
    }

    /// A raw file's status, with holes (`SEEK_DATA`/`SEEK_HOLE`) as [`StatusKind::Hole`].
    fn raw_status(&self, size: u64, len: u64, offset: u64, max: u64) -> Result<Status, Error> {
        if offset >= size {
            return Ok(Status {
                len: max,
                depth: 0,
                kind: StatusKind::Unallocated,
            });
        }
        let end = offset.saturating_add(max).min(size);
        let host = offset;
        let span = end.saturating_sub(offset);
        let status = |len: u64, kind| Status {
            len: len.max(1),
            depth: 0,
            kind,
        };
        let data = if offset >= len {
            Some(size)
        } else {
            self.storage.next_data(offset).map_err(|e| self.io_err(e))?
        };
        Ok(match data {
            Some(d) if d > offset => status(d.min(end) - offset, StatusKind::Hole { host }),
            Some(_) => match self.storage.next_hole(offset).map_err(|e| self.io_err(e))? {
                Some(h) if h > offset => status(h.min(end) - offset, StatusKind::Data { host }),
                _ => status(span, StatusKind::Data { host }),
            },
            None => status(span, StatusKind::Data { host }),
        })
    }
}

impl QcowLayer {
    pub(crate) fn lock(&self) -> MutexGuard<'_, QcowImage> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn inflate_error(e: InflateError, guest: u64, host: u64) -> CoreError {
    match e {
        InflateError::Invalid => qcow_core::Error::CompressedInvalid { guest, host },
        InflateError::Short(len) => qcow_core::Error::CompressedShort { guest, host, len },
    }
}

/// This thread's last inflated cluster, its inflater, and its buffer of streams.
#[derive(Default)]
struct Inflated {
    key: Option<(u64, u64, u64)>,
    stream: Vec<u8>,
    cluster: Vec<u8>,
    inflater: Inflater,
    run: Vec<u8>,
}

thread_local! {
    static INFLATED: RefCell<Inflated> = RefCell::new(Inflated::default());
}

/// A std error carried through the core's `Io` variant (unwrapped by [`Error::image`]).
pub(crate) fn through_core(e: Error) -> CoreError {
    qcow_core::Error::Io(io::Error::new(e.io_kind(), e))
}

impl Backing for Below {
    type IoError = io::Error;
    fn is_present(&self) -> bool {
        self.0.is_some()
    }
    fn size(&self) -> u64 {
        self.0.as_ref().map_or(0, |l| l.size())
    }
    fn read_layer(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), CoreError> {
        match &self.0 {
            Some(l) => l.read(offset, buf).map_err(through_core),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, CoreError> {
        match &self.0 {
            Some(l) => l.status(offset, max).map_err(through_core),
            None => Ok(Status {
                len: max,
                depth: 0,
                kind: StatusKind::Unallocated,
            }),
        }
    }
}

/// One layer of an opened chain, as [`Disk::layers`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerInfo {
    /// Its file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// 0 for the top image, 1 for its backing file, and so on.
    pub depth: u32,
    /// The backing file name stored in it (qcow with a backing file).
    pub backing_name: Option<Vec<u8>>,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// Its guest size.
    pub size: u64,
    /// Its cluster size (qcow).
    pub cluster_size: Option<u64>,
}

impl LayerInfo {
    /// The backing file name as a path, resolved against this layer's directory.
    pub fn backing_path(&self) -> Option<PathBuf> {
        let name = self.backing_name.as_ref()?;
        Some(crate::open::resolve_backing(
            &self.path,
            &crate::file::name_path(name),
        ))
    }
}

impl Layer {
    fn info(&self, depth: u32) -> LayerInfo {
        let (format, backing_name, encrypted, cluster_size) = match &self.kind {
            Kind::Raw { .. } => (Format::Raw, None, false, None),
            Kind::Qcow(q) => (
                Format::Qcow,
                (!q.backing_name.is_empty()).then(|| q.backing_name.clone()),
                q.header.is_encrypted(),
                Some(q.geo.cluster_size()),
            ),
        };
        LayerInfo {
            path: self.path.clone(),
            format,
            depth,
            backing_name,
            encrypted,
            size: self.size(),
            cluster_size,
        }
    }
}

impl Disk {
    pub(crate) fn from_top(top: Layer, writable: bool) -> Self {
        Disk {
            top: Arc::new(top),
            writable,
            pos: 0,
        }
    }

    /// Opens an image read-only with its whole backing chain (format probed).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        crate::open::DiskOptions::new().open(path)
    }

    /// The options to open a disk with (a builder, as [`std::fs::OpenOptions`]).
    pub fn options() -> crate::open::DiskOptions {
        crate::open::DiskOptions::new()
    }

    /// The file of the top image.
    pub fn path(&self) -> &Path {
        &self.top.path
    }
    /// The top image's format.
    pub fn format(&self) -> Format {
        match self.top.kind {
            Kind::Raw { .. } => Format::Raw,
            Kind::Qcow(_) => Format::Qcow,
        }
    }
    /// The guest size in bytes.
    pub fn size(&self) -> u64 {
        self.top.size()
    }
    /// Whether it was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
    /// What [`Disk::layers`] says of the top image.
    pub fn info(&self) -> LayerInfo {
        self.top.info(0)
    }
    /// Every layer of the chain, the top image first.
    pub fn layers(&self) -> Vec<LayerInfo> {
        let mut v = vec![self.top.info(0)];
        let mut cur = self.top.below();
        while let Some(l) = cur {
            let depth = u32::try_from(v.len()).unwrap_or(u32::MAX);
            v.push(l.info(depth));
            cur = l.below();
        }
        v
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<(), Error> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(self
                .top
                .err(qcow_core::Error::OutOfRange { offset, len, size }));
        }
        Ok(())
    }

    /// Reads guest bytes `[offset, offset + buf.len())`, which must lie inside
    /// [`Disk::size`]. Many threads may read at once.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_range(offset, buf.len() as u64)?;
        self.top.read(offset, buf)
    }

    /// [`Disk::read_at`] split between up to `threads` threads (0: all cores), in parts
    /// of whole 64 KiB so no compressed cluster is inflated twice: large reads of
    /// compressed or encrypted data keep every core busy. Small reads stay on this
    /// thread.
    pub fn read_at_parallel(
        &self,
        offset: u64,
        buf: &mut [u8],
        threads: usize,
    ) -> Result<(), Error> {
        let threads = match threads {
            0 => crate::cores(),
            n => n,
        };
        if threads <= 1 || buf.len() < PARALLEL_MIN {
            return self.read_at(offset, buf);
        }
        self.check_range(offset, buf.len() as u64)?;
        let unit = 64 << 10;
        let per = buf
            .len()
            .div_ceil(threads)
            .div_ceil(unit)
            .saturating_mul(unit);
        std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks_mut(per)
                .enumerate()
                .map(|(i, part)| {
                    let at = offset.saturating_add(i.saturating_mul(per) as u64);
                    s.spawn(move || self.top.read(at, part))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    fn writable_top(&self) -> Result<(), Error> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                path: self.top.path.clone(),
            })
        }
    }

    /// Writes guest bytes at `offset` (inside [`Disk::size`]; the disk must be open
    /// for writing). Writes are serialized; each keeps the crash-safe order.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.writable_top()?;
        self.check_range(offset, data.len() as u64)?;
        match &self.top.kind {
            Kind::Raw { len, .. } => {
                self.top
                    .storage
                    .write_all_at(data, offset)
                    .map_err(|e| self.top.io_err(e))?;
                len.fetch_max(offset.saturating_add(data.len() as u64), Ordering::AcqRel);
                Ok(())
            }
            Kind::Qcow(q) => q.lock().write_at(offset, data).map_err(|e| self.top.err(e)),
        }
    }

    /// Writes one cluster compressed (see [`qcow_core::Image::write_compressed`]); a
    /// raw disk takes a plain write.
    pub fn write_compressed(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.writable_top()?;
        match &self.top.kind {
            Kind::Raw { .. } => self.write_at(offset, data),
            Kind::Qcow(q) => q
                .lock()
                .write_compressed(offset, data)
                .map_err(|e| self.top.err(e)),
        }
    }

    /// Discards `[offset, offset + len)`: afterwards it reads as zeros. Whole qcow
    /// clusters become unallocated where nothing below shows through (else they are
    /// written with zeros); a raw file gets a hole where the file system can.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.writable_top()?;
        self.check_range(offset, len)?;
        match &self.top.kind {
            Kind::Raw { .. } => {
                if self
                    .top
                    .storage
                    .punch_hole(offset, len)
                    .map_err(|e| self.top.io_err(e))?
                {
                    return Ok(());
                }
                self.write_zeroes(offset, len)
            }
            Kind::Qcow(q) => q.lock().discard(offset, len).map_err(|e| self.top.err(e)),
        }
    }

    /// Writes zeros over `[offset, offset + len)` (allocating them).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.check_range(offset, len)?;
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK)];
        let mut at = 0u64;
        while at < len {
            let n = usize::try_from(len - at)
                .unwrap_or(ZERO_CHUNK)
                .min(ZERO_CHUNK);
            self.write_at(offset + at, zeros.get(..n).unwrap_or_default())?;
            at += n as u64;
        }
        Ok(())
    }

    /// Makes what was written durable.
    pub fn flush(&self) -> Result<(), Error> {
        match &self.top.kind {
            Kind::Raw { .. } => self.top.storage.sync().map_err(|e| self.top.io_err(e)),
            Kind::Qcow(q) => q.lock().flush().map_err(|e| self.top.err(e)),
        }
    }

    /// How the guest range from `offset` (at most `len` bytes) is stored: the status
    /// of its first run (at least one byte), with the depth of the layer holding it.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Status, Error> {
        self.top.status(offset, len)
    }

    /// The length of the run from `offset` (at most `max` bytes) known to read as
    /// zeros without reading it: unallocated at every depth, or a hole in a raw file.
    /// 0 when the data there must be read.
    pub fn zero_run(&self, offset: u64, max: u64) -> Result<u64, Error> {
        if offset >= self.size() {
            return Ok(max);
        }
        let s = self.block_status(offset, max)?;
        Ok(match s.kind {
            StatusKind::Unallocated | StatusKind::Hole { .. } => s.len.min(max),
            _ => 0,
        })
    }

    /// Empties the top qcow image (QEMU's `make_empty`): every cluster then reads from
    /// the backing file.
    pub fn make_empty(&self) -> Result<(), Error> {
        self.writable_top()?;
        match &self.top.kind {
            Kind::Raw { .. } => Err(Error::NotQcow {
                path: self.top.path.clone(),
            }),
            Kind::Qcow(q) => {
                let mut img = q.lock();
                q.epoch.fetch_add(1, Ordering::AcqRel);
                img.make_empty().map_err(|e| self.top.err(e))
            }
        }
    }

    /// The top image's header, when it is qcow.
    pub fn header(&self) -> Option<&Header> {
        match &self.top.kind {
            Kind::Raw { .. } => None,
            Kind::Qcow(q) => Some(&q.header),
        }
    }

    /// The top layer's storage (for probing its holes or its length).
    pub(crate) fn top_layer(&self) -> &Arc<Layer> {
        &self.top
    }
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.read_at(self.pos, buf.get_mut(..n).unwrap_or_default())?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.size().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the virtual size",
            ));
        }
        self.write_at(self.pos, buf.get(..n).unwrap_or_default())?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(Disk::flush(self)?)
    }
}

impl Seek for Disk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing offset",
            )),
        }
    }
}

impl Disk {
    /// Changes the backing file to `new` (opened, its chain included; `None` removes
    /// it), storing `name`, while keeping the guest content: each cluster whose content
    /// differs between the old and new chains is first copied into the image (see
    /// [`qcow_core::maint::rebase`]). Refuses a new chain that comes back to this image.
    /// The handle keeps reading the chain it was opened with; reopen to see the new one.
    pub fn rebase(&self, name: &[u8], new: Option<&Disk>) -> Result<Rebased, Error> {
        self.writable_top()?;
        let Kind::Qcow(q) = &self.top.kind else {
            return Err(Error::NotQcow {
                path: self.top.path.clone(),
            });
        };
        if let Some(d) = new {
            let me = std::fs::canonicalize(&self.top.path).map_err(|e| self.top.io_err(e))?;
            let back = d
                .layers()
                .iter()
                .any(|l| std::fs::canonicalize(&l.path).is_ok_and(|p| p == me));
            if back {
                return Err(Error::RebaseLoop {
                    path: self.top.path.clone(),
                    through: d.path().to_path_buf(),
                });
            }
        }
        let mut img = q.lock();
        let r = match new {
            Some(d) => qcow_core::maint::rebase(&mut img, &mut Below(Some(d.top.clone())), name),
            None => qcow_core::maint::rebase(&mut img, &mut Below(None), name),
        };
        r.map_err(|e| self.top.err(e))
    }
}
