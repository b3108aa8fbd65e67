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
use qcow_core::cluster::InflateError;
use qcow_core::write::{CreateOptions, Writer};
use qcow_core::{Cluster, StatusKind};
use zeroize::Zeroizing;

use crate::create::NewFile;
use crate::error::Error;
use crate::file::FileIo;
use crate::open::{Disk, Format};

/// Bytes read from the source at a time.
const CHUNK: usize = 4 << 20;

/// What the output of [`convert`] is.
pub struct ConvertOptions<'a> {
    /// Output format.
    pub format: Format,
    /// Write compressed clusters (qcow output).
    pub compress: bool,
    /// The output's backing file: the name stored, and the opened disk to compare with.
    pub backing: Option<(String, &'a mut Disk)>,
    /// Encrypt the output with this secret (qcow output).
    pub encrypt: Option<Zeroizing<Vec<u8>>>,
    /// Worker threads for compression (0: all cores).
    pub threads: usize,
    /// Called with (bytes done, total) as the copy advances.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

impl Default for ConvertOptions<'_> {
    fn default() -> Self {
        ConvertOptions {
            format: Format::Raw,
            compress: false,
            backing: None,
            encrypt: None,
            threads: 0,
            progress: None,
        }
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
pub fn convert(src: &mut Disk, dst: &Path, opts: ConvertOptions<'_>) -> Result<(), Error> {
    match opts.format {
        Format::Raw => {
            if opts.backing.is_some() || opts.encrypt.is_some() || opts.compress {
                return Err(Error::invalid(
                    dst,
                    "raw output takes no backing file, encryption or compression",
                ));
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
    CreateOptions {
        backing: opts.backing.as_ref().map(|(n, _)| n.as_bytes()),
        encrypted: opts.encrypt.is_some(),
        ..CreateOptions::new(size)
    }
}

/// [`convert`] into `file`, the new image at `dst`.
fn copy(src: &mut Disk, file: File, dst: &Path, mut opts: ConvertOptions<'_>) -> Result<(), Error> {
    let size = src.size();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    let mut sink = match opts.format {
        Format::Raw => {
            file.set_len(size).map_err(|e| Error::io(dst, e))?;
            Sink::Raw {
                file,
                path: dst.to_path_buf(),
            }
        }
        Format::Qcow => {
            let mut io = FileIo::new(file);
            io.set_sync(false);
            let create = create_options(&opts, size);
            let writer = Writer::create(io, &create, opts.encrypt.as_deref().map(|v| &v[..]))
                .map_err(|e| Error::image(dst, e))?;
            Sink::Qcow {
                writer: Box::new(writer),
                path: dst.to_path_buf(),
                deflaters: Vec::new(),
                threads,
            }
        }
    };
    let cluster = match &sink {
        Sink::Qcow { writer, .. } => writer.geometry().cluster_len(),
        Sink::Raw { .. } => 4096,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut base_buf = vec![0u8; if opts.backing.is_some() { CHUNK } else { 0 }];
    let mut offset = 0u64;
    let skip_unit = cluster.max(4096) as u64;
    while offset < size {
        // Skip what reads as zeros in the source (and, for an overlay, in its backing
        // file too) without reading it: a sparse terabyte takes no time.
        let mut skip = src.zero_run(offset, size - offset)?;
        if skip > 0 {
            if let Some((_, disk)) = &mut opts.backing {
                skip = disk.zero_run(offset, skip)?;
            }
        }
        let skip = if offset + skip >= size {
            size - offset
        } else {
            skip / skip_unit * skip_unit
        };
        if skip > 0 {
            offset += skip;
            if let Some(p) = opts.progress.as_mut() {
                p(offset, size);
            }
            continue;
        }
        let n = usize::try_from((size - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
        let chunk = &mut buf[..n];
        let allocated = read_allocated(src, offset, chunk, threads)?;
        let base = match &mut opts.backing {
            Some((_, disk)) => {
                let b = &mut base_buf[..n];
                qcow_core::Backing::read_at(*disk, offset, b)
                    .map_err(|e| Error::image(disk.path(), e))?;
                Some(&base_buf[..n])
            }
            None => None,
        };
        match &mut sink {
            Sink::Raw { file, path } => {
                if allocated {
                    write_sparse(file, path, offset, chunk, cluster)?
                }
            }
            Sink::Qcow {
                writer,
                path,
                deflaters,
                threads,
            } => {
                let first = offset / cluster as u64;
                let mut wanted: Vec<(u64, &[u8])> = Vec::new();
                for (i, c) in chunk.chunks(cluster).enumerate() {
                    let keep = match base {
                        Some(b) => {
                            let at = i * cluster;
                            c != &b[at..at + c.len()]
                        }
                        None => allocated && !is_zero(c),
                    };
                    if keep {
                        wanted.push((first + i as u64, c));
                    }
                }
                if opts.compress && opts.encrypt.is_none() {
                    let streams = compress_all(&wanted, deflaters, *threads, cluster);
                    for ((idx, data), stream) in wanted.iter().zip(streams) {
                        match stream {
                            Some(s) => writer.push_compressed(*idx, &s),
                            None => writer.push_plain(*idx, data),
                        }
                        .map_err(|e| Error::image(&*path, e))?;
                    }
                } else {
                    for (idx, data) in &wanted {
                        writer
                            .push_plain(*idx, data)
                            .map_err(|e| Error::image(&*path, e))?;
                    }
                }
            }
        }
        offset += n as u64;
        if let Some(p) = opts.progress.as_mut() {
            p(offset, size);
        }
    }
    match sink {
        Sink::Raw { file, path } => file.sync_data().map_err(|e| Error::io(path, e))?,
        Sink::Qcow { writer, path, .. } => {
            let io = writer.finish().map_err(|e| Error::image(&path, e))?;
            io.file().sync_data().map_err(|e| Error::io(&path, e))?;
        }
    }
    if let Some(p) = opts.progress.as_mut() {
        p(size, size);
    }
    Ok(())
}

/// A compressed cluster of the top image to inflate into `buf[pos..pos + len]`.
struct Job {
    pos: usize,
    len: usize,
    in_cluster: usize,
    guest: u64,
    host: u64,
    stream: usize,
}

/// Reads `buf` from `src` at `offset`, skipping (zero-filling) unallocated ranges and
/// inflating the top image's compressed clusters on `threads` threads. Returns whether
/// anything was allocated.
fn read_allocated(
    src: &mut Disk,
    offset: u64,
    buf: &mut [u8],
    threads: usize,
) -> Result<bool, Error> {
    let mut pos = 0usize;
    let mut any = false;
    let mut jobs: Vec<Job> = Vec::new();
    while pos < buf.len() {
        let at = offset + pos as u64;
        let st = src.status(at, (buf.len() - pos) as u64)?;
        let len = usize::try_from(st.len)
            .unwrap_or(usize::MAX)
            .clamp(1, buf.len() - pos);
        match st.kind {
            StatusKind::Unallocated | StatusKind::Hole { .. } => buf[pos..pos + len].fill(0),
            StatusKind::Compressed { .. } if st.depth == 0 && threads > 1 => {
                let path = src.path().to_path_buf();
                let image = src
                    .qcow()
                    .ok_or_else(|| Error::invalid(&path, "not qcow"))?;
                let Cluster::Compressed { host, len: stream } =
                    image.lookup(at).map_err(|e| Error::image(&path, e))?
                else {
                    return Err(Error::invalid(&path, "cluster changed while reading"));
                };
                jobs.push(Job {
                    pos,
                    len,
                    in_cluster: image.geometry().in_cluster(at) as usize,
                    guest: at,
                    host,
                    stream: stream as usize,
                });
                any = true;
            }
            _ => {
                src.read_at(at, &mut buf[pos..pos + len])?;
                any = true;
            }
        }
        pos += len;
    }
    if !jobs.is_empty() {
        inflate_jobs(src, &jobs, buf, threads)?;
    }
    Ok(any)
}

/// Reads the streams of `jobs` (adjacent ones in one read) and inflates them in
/// parallel straight into their places in `buf`.
fn inflate_jobs(src: &mut Disk, jobs: &[Job], buf: &mut [u8], threads: usize) -> Result<(), Error> {
    let path = src.path().to_path_buf();
    let image = src
        .qcow()
        .ok_or_else(|| Error::invalid(&path, "not qcow"))?;
    let cluster = image.geometry().cluster_len();
    let total: usize = jobs.iter().map(|j| j.stream).sum();
    let mut input = vec![0u8; total];
    let mut starts = Vec::with_capacity(jobs.len());
    let (mut at, mut i) = (0usize, 0usize);
    while i < jobs.len() {
        let (first, mut end, mut n) = (jobs[i].host, jobs[i].host, 0usize); // n ≥ 1 below
        let begin = at;
        while i + n < jobs.len() && jobs[i + n].host == end {
            starts.push(at);
            at += jobs[i + n].stream;
            end += jobs[i + n].stream as u64;
            n += 1;
        }
        qcow_core::BlockIo::read_at(image.io(), first, &mut input[begin..at])
            .map_err(|e| Error::io(&path, e))?;
        i += n;
    }
    // Split buf into the jobs' disjoint destinations.
    let mut dests: Vec<&mut [u8]> = Vec::with_capacity(jobs.len());
    let mut rest = buf;
    let mut consumed = 0usize;
    for j in jobs {
        let (_, tail) = rest.split_at_mut(j.pos - consumed);
        let (dst, tail) = tail.split_at_mut(j.len);
        dests.push(dst);
        rest = tail;
        consumed = j.pos + j.len;
    }
    let per = jobs.len().div_ceil(threads.max(1)).max(1);
    let input = &input;
    let starts = &starts;
    let result: Result<(), qcow_core::Error<std::io::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            jobs.chunks(per)
                .zip(dests.chunks_mut(per))
                .enumerate()
                .map(|(k, (js, ds))| {
                    s.spawn(move || {
                        let mut out = vec![0u8; cluster];
                        for (n, (j, d)) in js.iter().zip(ds.iter_mut()).enumerate() {
                            let at = starts[k * per + n];
                            qcow_core::cluster::inflate(&input[at..at + j.stream], &mut out)
                                .map_err(|e| match e {
                                    InflateError::Invalid => qcow_core::Error::CompressedInvalid {
                                        guest: j.guest,
                                        host: j.host,
                                    },
                                    InflateError::Short(len) => qcow_core::Error::CompressedShort {
                                        guest: j.guest,
                                        host: j.host,
                                        len,
                                    },
                                })?;
                            d.copy_from_slice(&out[j.in_cluster..j.in_cluster + j.len]);
                        }
                        Ok(())
                    })
                })
                .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    result.map_err(|e| Error::image(&path, e))
}

/// Writes the non-zero blocks of `data` at `offset`, coalescing runs.
fn write_sparse(
    file: &File,
    path: &Path,
    offset: u64,
    data: &[u8],
    block: usize,
) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let mut run: Option<usize> = None;
    let blocks: Vec<&[u8]> = data.chunks(block).collect();
    for (i, b) in blocks.iter().enumerate() {
        let zero = is_zero(b);
        match (zero, run) {
            (false, None) => run = Some(i * block),
            (true, Some(start)) => {
                file.write_all_at(&data[start..i * block], offset + start as u64)
                    .map_err(|e| Error::io(path, e))?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        file.write_all_at(&data[start..], offset + start as u64)
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
