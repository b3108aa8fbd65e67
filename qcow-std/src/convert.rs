//! Copying a disk into a new raw or qcow image.
//!
//! The source is read in large chunks; unallocated ranges (at every depth of its
//! chain) are not read at all. A raw output is sparse: zero blocks become holes. A qcow
//! output is written sequentially by [`qcow_core::write::Writer`]; zero clusters stay
//! unallocated; with a backing file only clusters that differ from it are written;
//! with compression, clusters are deflated on worker threads, in order.

use std::fs::File;
use std::path::Path;

use qcow_core::cluster::Deflater;
use qcow_core::write::{CreateOptions, Writer};
use zeroize::Zeroizing;

use crate::create::NewFile;
use crate::error::Error;
use crate::file::FileIo;
use crate::open::Format;
use crate::Disk;

/// Bytes read from the source at a time.
const CHUNK: usize = 4 << 20;

/// What the output of [`convert`] is.
///
/// ```
/// use qcow_std::{convert::ConvertOptions, Format};
/// let mut shown = 0;
/// let mut progress = |done: u64, _total: u64| shown = done;
/// let opts = ConvertOptions::new(Format::Qcow).compress(true).progress(&mut progress);
/// # let _ = opts;
/// ```
#[must_use]
pub struct ConvertOptions<'a> {
    format: Format,
    compress: bool,
    backing: Option<(String, &'a Disk)>,
    encrypt: Option<Zeroizing<Vec<u8>>>,
    threads: usize,
    progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

impl<'a> ConvertOptions<'a> {
    /// A plain copy into `format`, on all cores, without progress.
    pub fn new(format: Format) -> Self {
        ConvertOptions {
            format,
            compress: false,
            backing: None,
            encrypt: None,
            threads: 0,
            progress: None,
        }
    }
    /// Write compressed clusters (qcow output).
    pub fn compress(mut self, on: bool) -> Self {
        self.compress = on;
        self
    }
    /// Make the output an overlay of `disk`, storing `name` as its backing file and
    /// only the clusters that differ from it.
    pub fn backing(mut self, name: String, disk: &'a Disk) -> Self {
        self.backing = Some((name, disk));
        self
    }
    /// Encrypt the output with this secret (qcow output).
    pub fn encrypt(mut self, secret: Option<Zeroizing<Vec<u8>>>) -> Self {
        self.encrypt = secret;
        self
    }
    /// Worker threads for reading and compressing (0: all cores).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }
    /// Called with (bytes done, total) as the copy advances.
    pub fn progress(mut self, f: &'a mut dyn FnMut(u64, u64)) -> Self {
        self.progress = Some(f);
        self
    }
}

/// Whether every byte is zero.
pub fn is_zero(b: &[u8]) -> bool {
    let (head, rest) = b.split_at(b.len() % 16);
    head.iter().all(|&x| x == 0)
        && rest
            .chunks_exact(16)
            .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
}

enum Sink {
    Raw {
        file: File,
        path: std::path::PathBuf,
        /// Whether writes go around the page cache ([`crate::file::set_direct`]).
        direct: bool,
        /// A device: it keeps its old contents, so zeros are written too.
        device: bool,
    },
    Qcow {
        writer: Box<Writer<FileIo>>,
        path: std::path::PathBuf,
        deflaters: Vec<Deflater>,
        threads: usize,
    },
}

/// Copies the guest content of `src` into a new image at `dst`. Refused options touch
/// nothing; a failure mid-way removes `dst` when this call created it
/// ([`NewFile`]).
pub fn convert(src: &Disk, dst: &Path, opts: ConvertOptions<'_>) -> Result<(), Error> {
    match opts.format {
        Format::Raw => {
            if opts.backing.is_some() || opts.encrypt.is_some() || opts.compress {
                return Err(Error::RawOutputOptions {
                    path: dst.to_path_buf(),
                });
            }
        }
        Format::Qcow => {
            crate::create::check(&create_options(&opts, src.size()))
                .map_err(|e| Error::image(dst, e))?;
            if let Some(s) = &opts.encrypt {
                qcow_core::crypt::Cipher::from_secret(s)
                    .map_err(|_| Error::image(dst, qcow_core::Error::SecretNotUtf8))?;
            }
        }
    }
    let (file, guard) = NewFile::create(dst).map_err(|e| Error::io(dst, e))?;
    copy(src, file, dst, opts)?;
    guard.keep();
    Ok(())
}

/// The layout of a qcow output of `size` bytes.
fn create_options<'a>(opts: &'a ConvertOptions<'_>, size: u64) -> CreateOptions<'a> {
    CreateOptions::new(size)
        .backing(opts.backing.as_ref().map(|(n, _)| n.as_bytes()))
        .encrypted(opts.encrypt.is_some())
}

/// [`convert`] into `file`, the new image at `dst`.
///
/// A pipeline: this thread reads chunk after chunk (each split between the threads,
/// which inflate and decrypt their parts) while a writer thread writes (and
/// compresses) the previous one; at most three chunks are in flight.
fn copy(src: &Disk, file: File, dst: &Path, mut opts: ConvertOptions<'_>) -> Result<(), Error> {
    let size = src.size();
    let threads = if opts.threads == 0 {
        crate::cores()
    } else {
        opts.threads
    };
    let sink = Sink::open(file, dst, &opts, size, threads)?;
    let cluster = sink.cluster();
    let fills_zeros = sink.fills_zeros();
    let compress = opts.compress && opts.encrypt.is_none();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(1);
    let (back, spare) = std::sync::mpsc::channel::<Filled>();
    let sink = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<Sink, Error> {
            let mut sink = sink;
            for f in rx {
                let f = match f {
                    Piece::Zeros { offset, len } => {
                        sink.zeros(offset, len)?;
                        continue;
                    }
                    Piece::Data(f) => f,
                };
                let base = f.base.as_ref().map(|b| &b[..f.len]);
                sink.push(f.offset, f.bytes(), base, compress)?;
                let _ = back.send(f);
            }
            Ok(sink)
        });
        let extent = (size, fills_zeros);
        let read = read_chunks(src, &mut opts, extent, cluster, threads, &tx, &spare);
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // A write error stops the reads (the channel closes): report it first.
        let sink = written?;
        read.map(|()| sink)
    })?;
    sink.finish()?;
    if let Some(p) = opts.progress.as_mut() {
        p(size, size);
    }
    Ok(())
}

/// A chunk read from the source (and its backing file's content, for an overlay).
struct Filled {
    offset: u64,
    len: usize,
    /// [`CHUNK`] bytes from `start`, which is aligned for `O_DIRECT` writes.
    data: Vec<u8>,
    start: usize,
    base: Option<Vec<u8>>,
}

/// What the reading side of [`copy`] hands the writer.
enum Piece {
    /// A chunk read.
    Data(Filled),
    /// `len` bytes from `offset` that read as zeros, not read (sent only when the
    /// output must have its zeros written: a device).
    Zeros { offset: u64, len: u64 },
}

impl Filled {
    fn new(backing: bool) -> Self {
        let data = vec![0u8; CHUNK + crate::file::DIRECT_ALIGN];
        let start = data.as_ptr().align_offset(crate::file::DIRECT_ALIGN);
        Filled {
            offset: 0,
            len: 0,
            start: if start < crate::file::DIRECT_ALIGN {
                start
            } else {
                0
            },
            data,
            base: backing.then(|| vec![0u8; CHUNK]),
        }
    }
    /// The chunk's bytes.
    fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.start + self.len]
    }
}

/// The reading side of [`copy`]: sends each chunk to the writer, reusing the buffers
/// it sends back; stops quietly when the writer has gone (its error is reported).
fn read_chunks(
    src: &Disk,
    opts: &mut ConvertOptions<'_>,
    (size, fill_zeros): (u64, bool),
    cluster: usize,
    threads: usize,
    tx: &std::sync::mpsc::SyncSender<Piece>,
    spare: &std::sync::mpsc::Receiver<Filled>,
) -> Result<(), Error> {
    let mut offset = 0u64;
    while offset < size {
        let skip = zeros_ahead(src, opts, offset, size, cluster.max(4096) as u64)?;
        let n = if skip > 0 {
            let zeros = Piece::Zeros { offset, len: skip };
            if fill_zeros && tx.send(zeros).is_err() {
                return Ok(());
            }
            skip
        } else {
            let n = usize::try_from((size - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut f = spare
                .try_recv()
                .unwrap_or_else(|_| Filled::new(opts.backing.is_some()));
            (f.offset, f.len) = (offset, n);
            read_parallel(src, offset, f.bytes_mut(), threads)?;
            if let (Some((_, disk)), Some(b)) = (&opts.backing, f.base.as_mut()) {
                read_base(disk, offset, &mut b[..n], threads)?;
            }
            if tx.send(Piece::Data(f)).is_err() {
                return Ok(());
            }
            n as u64
        };
        offset += n;
        if let Some(p) = opts.progress.as_mut() {
            p(offset, size);
        }
    }
    Ok(())
}

/// How much from `offset` reads as zeros in the source (and, for an overlay, in its
/// backing file too) without reading it, in whole `unit`s (or up to the end): a
/// sparse terabyte takes no time.
fn zeros_ahead(
    src: &Disk,
    opts: &ConvertOptions<'_>,
    offset: u64,
    size: u64,
    unit: u64,
) -> Result<u64, Error> {
    let mut skip = src.zero_run(offset, size - offset)?;
    if skip > 0 {
        if let Some((_, disk)) = &opts.backing {
            skip = disk.zero_run(offset, skip)?;
        }
    }
    Ok(if offset + skip >= size {
        size - offset
    } else {
        skip / unit * unit
    })
}

/// The backing file's content at `offset`, zeros past its end.
fn read_base<'b>(
    disk: &Disk,
    offset: u64,
    buf: &'b mut [u8],
    threads: usize,
) -> Result<&'b [u8], Error> {
    let inside = usize::try_from(disk.size().saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(buf.len());
    buf[inside..].fill(0);
    if inside > 0 {
        read_parallel(disk, offset, &mut buf[..inside], threads)?;
    }
    Ok(buf)
}

impl Sink {
    /// The output: a raw file of the source's size, or a qcow image's writer.
    fn open(
        file: File,
        dst: &Path,
        opts: &ConvertOptions<'_>,
        size: u64,
        threads: usize,
    ) -> Result<Sink, Error> {
        Ok(match opts.format {
            Format::Raw => {
                let device = crate::file::device_len(&file).map_err(|e| Error::io(dst, e))?;
                match device {
                    None => file.set_len(size).map_err(|e| Error::io(dst, e))?,
                    Some(len) if len < size => {
                        return Err(Error::DeviceTooSmall {
                            path: dst.to_path_buf(),
                            size: len,
                            needed: size,
                        })
                    }
                    Some(_) => {}
                }
                let direct = crate::file::set_direct(&file, true);
                Sink::Raw {
                    file,
                    path: dst.to_path_buf(),
                    direct,
                    device: device.is_some(),
                }
            }
            Format::Qcow => {
                let mut io = FileIo::new(file);
                io.set_sync(false);
                let create = create_options(opts, size);
                let writer = Writer::create(io, &create, opts.encrypt.as_deref().map(|v| &v[..]))
                    .map_err(|e| Error::image(dst, e))?;
                Sink::Qcow {
                    writer: Box::new(writer),
                    path: dst.to_path_buf(),
                    deflaters: Vec::new(),
                    threads,
                }
            }
        })
    }

    /// The unit of what is written: the qcow cluster, or 4 KiB blocks of a raw file.
    fn cluster(&self) -> usize {
        match self {
            Sink::Qcow { writer, .. } => writer.geometry().cluster_len(),
            Sink::Raw { .. } => 4096,
        }
    }

    /// Writes the chunk read at `offset`: a raw file gets its non-zero blocks; a qcow
    /// image its non-zero clusters, or with `base` those that differ from it.
    fn push(
        &mut self,
        offset: u64,
        chunk: &[u8],
        base: Option<&[u8]>,
        compress: bool,
    ) -> Result<(), Error> {
        let cluster = self.cluster();
        let (writer, path, deflaters, threads) = match self {
            Sink::Raw {
                file,
                path,
                direct,
                device,
            } => {
                let mut out = RawOut { file, direct };
                if *device {
                    return out.write(chunk, offset).map_err(|e| Error::io(&*path, e));
                }
                return write_sparse(&mut out, path, offset, chunk, cluster);
            }
            Sink::Qcow {
                writer,
                path,
                deflaters,
                threads,
            } => (writer, path, deflaters, *threads),
        };
        let first = offset / cluster as u64;
        let wanted: Vec<(u64, &[u8])> = chunk
            .chunks(cluster)
            .enumerate()
            .filter(|(i, c)| match base {
                Some(b) => *c != &b[i * cluster..i * cluster + c.len()],
                None => !is_zero(c),
            })
            .map(|(i, c)| (first + i as u64, c))
            .collect();
        let streams = if compress {
            compress_all(&wanted, deflaters, threads, cluster)
        } else {
            vec![None; wanted.len()]
        };
        for ((idx, data), stream) in wanted.iter().zip(streams) {
            match stream {
                Some(s) => writer.push_compressed(*idx, &s),
                None => writer.push_plain(*idx, data),
            }
            .map_err(|e| Error::image(&*path, e))?;
        }
        Ok(())
    }

    /// Whether runs of zeros must be written (a device keeps its old contents).
    fn fills_zeros(&self) -> bool {
        matches!(self, Sink::Raw { device: true, .. })
    }

    /// Makes `len` bytes at `offset` read as zeros, on a device (elsewhere they do).
    fn zeros(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        match self {
            Sink::Raw {
                file,
                path,
                direct,
                device: true,
            } => RawOut { file, direct }
                .zeros(offset, len)
                .map_err(|e| Error::io(&*path, e)),
            _ => Ok(()),
        }
    }

    /// Completes the output and syncs it.
    fn finish(self) -> Result<(), Error> {
        match self {
            Sink::Raw { file, path, .. } => file.sync_data().map_err(|e| Error::io(path, e)),
            Sink::Qcow { writer, path, .. } => {
                let io = writer.finish().map_err(|e| Error::image(&path, e))?;
                io.file().sync_data().map_err(|e| Error::io(&path, e))
            }
        }
    }
}

/// Reads `buf` from `src` at `offset`, split between `threads` threads (each inflates
/// and decrypts its own part: the handle's reads run in parallel).
fn read_parallel(src: &Disk, offset: u64, buf: &mut [u8], threads: usize) -> Result<(), Error> {
    src.read_at_parallel(offset, buf, threads.max(1))
}

/// A raw output file, written around the page cache while it can be.
struct RawOut<'f> {
    file: &'f File,
    direct: &'f mut bool,
}

impl RawOut<'_> {
    /// Writes `data` at `offset`: directly when everything is aligned, else (the tail
    /// of an odd-sized disk, or a file system that refuses) through the page cache
    /// from then on.
    fn write(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        use crate::file::{set_direct, DIRECT_ALIGN};
        use crate::storage::Storage;
        if *self.direct {
            let aligned = data.as_ptr().align_offset(DIRECT_ALIGN) == 0
                && data.len().is_multiple_of(DIRECT_ALIGN)
                && offset.is_multiple_of(DIRECT_ALIGN as u64);
            if aligned {
                match Storage::write_all_at(self.file, data, offset) {
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
                    r => return r,
                }
            }
            *self.direct = false;
            set_direct(self.file, false);
        }
        Storage::write_all_at(self.file, data, offset)
    }

    /// Makes `len` bytes at `offset` of a device zeros: its write-zeroes, or writes.
    fn zeros(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        if crate::file::zero_range(self.file, offset, len)? {
            return Ok(());
        }
        let zeros = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            self.write(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Writes the non-zero blocks of `data` at `offset`, coalescing runs.
fn write_sparse(
    out: &mut RawOut<'_>,
    path: &Path,
    offset: u64,
    data: &[u8],
    block: usize,
) -> Result<(), Error> {
    let mut run: Option<usize> = None;
    let blocks: Vec<&[u8]> = data.chunks(block).collect();
    for (i, b) in blocks.iter().enumerate() {
        let zero = is_zero(b);
        match (zero, run) {
            (false, None) => run = Some(i * block),
            (true, Some(start)) => {
                out.write(&data[start..i * block], offset + start as u64)
                    .map_err(|e| Error::io(path, e))?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        out.write(&data[start..], offset + start as u64)
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Deflates every cluster, on up to `threads` threads; `None` where it does not shrink.
fn compress_all(
    clusters: &[(u64, &[u8])],
    deflaters: &mut Vec<Deflater>,
    threads: usize,
    cluster: usize,
) -> Vec<Option<Vec<u8>>> {
    let threads = threads.clamp(1, clusters.len().max(1));
    while deflaters.len() < threads {
        deflaters.push(Deflater::default());
    }
    let per = clusters.len().div_ceil(threads).max(1);
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(clusters.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = clusters
            .chunks(per)
            .zip(deflaters.iter_mut())
            .map(|(part, d)| {
                s.spawn(move || {
                    let mut tmp = vec![0u8; cluster];
                    let mut padded = Vec::new();
                    part.iter()
                        .map(|(_, data)| {
                            let input = if data.len() < cluster {
                                padded.clear();
                                padded.extend_from_slice(data);
                                padded.resize(cluster, 0);
                                &padded[..]
                            } else {
                                data
                            };
                            d.compress(input, &mut tmp).map(|n| tmp[..n].to_vec())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(v) => out.extend(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    out
}
