//! Structural check of an image (needs `alloc`): the header, the L1 table, every L2
//! table, every data cluster and compressed stream, overlaps between all of them, and
//! leaked space. [`check`] needs neither the backing file nor the password: it reads
//! only metadata and compressed streams (which qcow never encrypts).
//!
//! # Corruptions
//! Each problem is a [`Corruption`] naming the [`Reference`] at fault (L1 index, L2
//! index, guest offset, host offset, length): an extent past the end of the file (or
//! whose end overflows), an L2 table or data cluster not aligned to the cluster size
//! (QEMU only needs 512 bytes to read, but never writes such a reference), an extent
//! overlapping the header, the backing file name or the L1 table, two references
//! sharing bytes (in host order the later one is reported, naming the one it
//! overlaps, except that an L2 table is reported rather than the data it overlaps: the
//! reported one is what a repair copies elsewhere; an L2 table sharing bytes only with
//! extents reported themselves is reported too, naming the one reaching furthest, as
//! a repair writes into the tables it keeps), a compressed stream that is
//! empty, invalid or inflates to less than one cluster (one that would inflate past a
//! cluster is accepted, as QEMU reads its first cluster), and an entry mapping guest
//! bytes past the virtual size.
//!
//! The entries of an L2 table are walked only when the table lies inside the file,
//! clear of the metadata and of every other L2 table; so the references found are at
//! most one per 8 bytes of the file, and memory stays proportional to the file size.
//!
//! # Leaks
//! A leak is a run of bytes of the file that nothing references (not the header, the
//! backing file name, the L1 table, an L2 table, a data cluster or a compressed
//! stream) and that is not padding. Padding is what QEMU's own layout leaves: the L1
//! table zero-filled to a multiple of 512 bytes, the gap (under 8 bytes) aligning the
//! L1 table after the backing name, and the gap up to the next boundary where QEMU
//! would have put the extent that follows: QEMU allocates at the end of the file
//! rounded up to whole 512-byte sectors, so a compressed stream may follow a gap up to
//! a multiple of 512, an L2 table or data cluster a gap up to a cluster boundary. The
//! file ends where the last extent ends. So images made by
//! `qemu-img` and written by QEMU check clean, while a compressed stream QEMU stops
//! using (a partial write over a compressed cluster) is a leak even when it shares its
//! host cluster with live streams. Each [`Leak`] also counts the whole host clusters
//! (cluster-sized, cluster-aligned; the last one of the file may be short) inside it.

use alloc::vec::Vec;

use crate::cluster::{inflate, InflateError};
use crate::entry::{Cluster, L2Entry};
use crate::error::{Error, RefKind};
use crate::header::{Geometry, Header, HEADER_SIZE};
use crate::image::read_header;
use crate::io::BlockIo;

/// One reference: where it is stored, what it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    /// An L2 table (from the L1 table), a data cluster or a compressed stream (from an
    /// L2 table).
    pub kind: RefKind,
    /// The L1 entry holding it, or holding the L2 table that holds it.
    pub l1_index: u64,
    /// The L2 entry holding it; `None` for an L2 table.
    pub l2_index: Option<u64>,
    /// The first guest byte it maps.
    pub guest: u64,
    /// Host offset of the extent.
    pub host: u64,
    /// Length of the extent in bytes.
    pub len: u64,
}

/// The fixed metadata of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The 48-byte header.
    Header,
    /// The backing file name.
    BackingName,
    /// The L1 table.
    L1Table,
}

/// Why a compressed cluster is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressedError {
    /// Its length field is zero.
    Empty,
    /// Not a valid raw deflate stream.
    Invalid,
    /// It inflates to this many bytes, less than a cluster.
    Short(usize),
}

/// A structural problem found by [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The extent ends past the end of the file, or its end overflows.
    PastEof {
        /// The reference.
        reference: Reference,
        /// The file's length.
        file_len: u64,
    },
    /// An L2 table or data cluster not aligned to `align` (the cluster size).
    Misaligned {
        /// The reference.
        reference: Reference,
        /// The alignment it lacks.
        align: u64,
    },
    /// The extent overlaps fixed metadata.
    OverlapsMetadata {
        /// The reference.
        reference: Reference,
        /// What it overlaps.
        region: Region,
    },
    /// The extent shares bytes with an extent earlier in host order.
    Overlap {
        /// The reference (the later one in host order).
        reference: Reference,
        /// The one it overlaps.
        other: Reference,
    },
    /// A compressed cluster that does not inflate to exactly one cluster.
    Compressed {
        /// The reference.
        reference: Reference,
        /// What is wrong with the stream.
        error: CompressedError,
    },
    /// An L2 entry mapping guest bytes at or past the virtual size (QEMU never reads
    /// it; it would reappear if the image grew).
    BeyondSize {
        /// The reference.
        reference: Reference,
        /// The virtual size.
        size: u64,
    },
    /// The backing file name overlaps the L1 table.
    MetadataOverlap {
        /// The first region.
        region: Region,
        /// The one it overlaps.
        other: Region,
    },
}

impl Corruption {
    /// The reference at fault, when the problem is about one.
    pub fn reference(&self) -> Option<&Reference> {
        match self {
            Corruption::PastEof { reference, .. }
            | Corruption::Misaligned { reference, .. }
            | Corruption::OverlapsMetadata { reference, .. }
            | Corruption::Overlap { reference, .. }
            | Corruption::Compressed { reference, .. }
            | Corruption::BeyondSize { reference, .. } => Some(reference),
            Corruption::MetadataOverlap { .. } => None,
        }
    }
}

/// A run of leaked bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leak {
    /// Host offset of the first leaked byte.
    pub offset: u64,
    /// Bytes in the run.
    pub len: u64,
    /// Whole host clusters inside the run (0 for a gap inside a cluster).
    pub clusters: u64,
}

impl core::fmt::Display for Reference {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} at host offset {} ({} bytes; L1 index {}",
            self.kind, self.host, self.len, self.l1_index
        )?;
        if let Some(j) = self.l2_index {
            write!(f, ", L2 index {j}")?;
        }
        write!(f, ", guest offset {})", self.guest)
    }
}

impl core::fmt::Display for Region {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Region::Header => "the header",
            Region::BackingName => "the backing file name",
            Region::L1Table => "the L1 table",
        })
    }
}

impl core::fmt::Display for Corruption {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Corruption::PastEof {
                reference,
                file_len,
            } => {
                write!(
                    f,
                    "{reference} reaches past the end of the {file_len}-byte file"
                )
            }
            Corruption::Misaligned { reference, align } => {
                write!(f, "{reference} is not aligned to {align} bytes")
            }
            Corruption::OverlapsMetadata { reference, region } => {
                write!(f, "{reference} overlaps {region}")
            }
            Corruption::Overlap { reference, other } => write!(f, "{reference} overlaps {other}"),
            Corruption::Compressed { reference, error } => match error {
                CompressedError::Empty => write!(f, "{reference} has length zero"),
                CompressedError::Invalid => write!(f, "{reference} is not a valid deflate stream"),
                CompressedError::Short(n) => {
                    write!(f, "{reference} inflates to {n} bytes, less than a cluster")
                }
            },
            Corruption::BeyondSize { reference, size } => {
                write!(
                    f,
                    "{reference} maps guest bytes past the virtual size {size}"
                )
            }
            Corruption::MetadataOverlap { region, other } => write!(f, "{region} overlaps {other}"),
        }
    }
}

impl core::fmt::Display for Leak {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} bytes leaked at host offset {}",
            self.len, self.offset
        )?;
        if self.clusters > 0 {
            write!(f, " ({} whole clusters)", self.clusters)?;
        }
        Ok(())
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The header.
    pub header: Header,
    /// The file's length.
    pub file_len: u64,
    /// Every structural problem, in table order, then the overlaps in host order.
    pub corruptions: Vec<Corruption>,
    /// The leaked cluster runs, in host order.
    pub leaks: Vec<Leak>,
    /// Whole host clusters leaked, in all.
    pub leaked_clusters: u64,
    /// Bytes leaked, in all.
    pub leaked_bytes: u64,
    /// The end of the last referenced byte (the L1 table counted with its padding to
    /// 512 bytes), at most the file's length: where the file could end. Equal to the
    /// file's length when its tail does not leak, or when an L2 table sharing bytes
    /// with another one was not walked (its references are unknown). At least the
    /// offset of an empty backing name (the header needs it inside the file).
    pub image_end_offset: u64,
    /// Guest clusters in the virtual size.
    pub total_clusters: u64,
    /// Guest clusters allocated (plain or compressed).
    pub allocated_clusters: u64,
    /// Guest clusters stored compressed.
    pub compressed_clusters: u64,
    /// Plain clusters not stored right after the previous plain cluster in guest order.
    pub fragmented_clusters: u64,
    /// L2 tables referenced by the L1 table.
    pub l2_tables: u64,
}

impl Report {
    /// No corruption and no leak.
    pub fn is_clean(&self) -> bool {
        self.corruptions.is_empty() && self.leaks.is_empty()
    }
    /// Number of corruptions.
    pub fn corruption_count(&self) -> u64 {
        self.corruptions.len() as u64
    }
}

/// Checks the structure of the image on `io`; see the [module docs](self).
///
/// Fails only when the image cannot be examined at all: a device error, a header
/// that does not decode or whose L1 table or backing name lie outside the file
/// (see [`read_header`]), or tables too large to hold in memory.
pub fn check<B: BlockIo>(io: &mut B) -> Result<Report, Error<B::Error>> {
    Ok(scan(io, true)?.report)
}

/// What an extent is, in the order extents at the same offset sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ExtKind {
    Header,
    Name,
    L1,
    L2Table,
    Data,
    Compressed,
}

/// The extent excludes itself from overlap checks: past EOF, on metadata, or empty.
pub(crate) const BAD: u8 = 1;
/// An L2 table whose entries were walked.
pub(crate) const WALKED: u8 = 2;

/// One extent of the file, packed (24 bytes): metadata or a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ext {
    pub(crate) host: u64,
    /// ≤ 64 KiB for references; the L1 table is at most 2 GiB.
    pub(crate) len: u32,
    /// L1 index (< 2^28).
    pub(crate) l1: u32,
    /// L2 index (< 2^13).
    pub(crate) l2: u16,
    pub(crate) kind: ExtKind,
    pub(crate) flags: u8,
}

impl Ext {
    pub(crate) fn end(&self) -> u64 {
        self.host.saturating_add(u64::from(self.len))
    }

    /// The end of the space the extent takes: the L1 table counts with its padding to
    /// 512 bytes (QEMU's create zero-fills it).
    pub(crate) fn span_end(&self) -> u64 {
        if self.kind == ExtKind::L1 {
            self.host.saturating_add(align_up(u64::from(self.len), 512))
        } else {
            self.end()
        }
    }

    /// The alignment QEMU places the extent at: a shorter gap up to it is padding.
    /// QEMU allocates at its file length counted in whole 512-byte sectors: compressed
    /// streams start at a multiple of 512, L2 tables and data clusters at a cluster
    /// boundary; the L1 table follows the backing name at a multiple of 8.
    fn qemu_align(&self, cs: u64) -> u64 {
        match self.kind {
            ExtKind::L2Table | ExtKind::Data => cs,
            ExtKind::Compressed => 512,
            ExtKind::L1 => 8,
            _ => 1,
        }
    }

    /// The alignment the repairs place the extent at (compressed streams and the
    /// backing name are packed byte to byte).
    pub(crate) fn align(&self, cs: u64) -> u64 {
        match self.kind {
            ExtKind::L2Table | ExtKind::Data => cs,
            ExtKind::L1 => 8,
            _ => 1,
        }
    }

    /// Whether the free bytes from `free` up to this extent are a leak: more than
    /// the padding QEMU leaves before such an extent.
    pub(crate) fn leaks_before(&self, free: u64, cs: u64) -> bool {
        free < self.host && align_up(free, self.qemu_align(cs)) < self.host
    }

    /// The sort key of host order.
    pub(crate) fn key(&self) -> (u64, ExtKind, u32, u16) {
        (self.host, self.kind, self.l1, self.l2)
    }

    pub(crate) fn ref_kind(&self) -> Option<RefKind> {
        match self.kind {
            ExtKind::L2Table => Some(RefKind::L2Table),
            ExtKind::Data => Some(RefKind::DataCluster),
            ExtKind::Compressed => Some(RefKind::CompressedCluster),
            _ => None,
        }
    }

    /// The public description of a reference extent.
    pub(crate) fn reference(&self, geo: &Geometry) -> Reference {
        let base = u64::from(self.l1).saturating_mul(geo.l2_span());
        let (l2_index, guest) = match self.kind {
            ExtKind::Data | ExtKind::Compressed => (
                Some(u64::from(self.l2)),
                base.saturating_add(u64::from(self.l2).saturating_mul(geo.cluster_size())),
            ),
            _ => (None, base),
        };
        Reference {
            kind: self.ref_kind().unwrap_or(RefKind::L2Table),
            l1_index: u64::from(self.l1),
            l2_index,
            guest,
            host: self.host,
            len: u64::from(self.len),
        }
    }
}

/// Everything a check learns, for [`check`] and for the repairs of [`crate::maint`].
pub(crate) struct Scan {
    pub(crate) header: Header,
    pub(crate) geo: Geometry,
    pub(crate) l1: Vec<u64>,
    /// Metadata and references, in host order ([`Ext::key`]).
    pub(crate) exts: Vec<Ext>,
    pub(crate) report: Report,
}

/// Appends to a vector, failing instead of aborting when memory runs out.
pub(crate) fn push<T, E>(v: &mut Vec<T>, x: T) -> Result<(), Error<E>> {
    v.try_reserve(1).map_err(|_| Error::OutOfMemory)?;
    v.push(x);
    Ok(())
}

/// A zeroed byte buffer, failing instead of aborting when memory runs out.
pub(crate) fn zeroed<E>(len: usize) -> Result<Vec<u8>, Error<E>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory)?;
    v.resize(len, 0);
    Ok(v)
}

/// Reads the table of `n` big-endian entries at `at`.
pub(crate) fn read_table<B: BlockIo>(
    io: &mut B,
    at: u64,
    n: u64,
) -> Result<Vec<u64>, Error<B::Error>> {
    let count = usize::try_from(n).map_err(|_| Error::OutOfMemory)?;
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| Error::OutOfMemory)?;
    let mut buf = [0u8; 4096];
    let mut pos = at;
    while out.len() < count {
        let k = count.saturating_sub(out.len()).min(512);
        let bytes = buf.get_mut(..k.saturating_mul(8)).unwrap_or_default();
        io.read_at(pos, bytes)?;
        for c in bytes.chunks_exact(8) {
            let mut v = [0u8; 8];
            v.copy_from_slice(c);
            out.push(u64::from_be_bytes(v));
        }
        pos = pos.saturating_add(bytes.len() as u64);
    }
    Ok(out)
}

/// Rounds `v` up to a multiple of the power of two `align` (saturating).
pub(crate) fn align_up(v: u64, align: u64) -> u64 {
    let mask = align.saturating_sub(1);
    v.saturating_add(mask) & !mask
}

/// The fixed extents and their checks.
struct Meta {
    file_len: u64,
    cs: u64,
    regions: [(Region, u64, u64); 3],
}

impl Meta {
    /// Checks one reference; pushes its problems, returns whether it is BAD.
    fn judge<E>(&self, r: &Reference, out: &mut Vec<Corruption>) -> Result<bool, Error<E>> {
        let end = r.host.checked_add(r.len);
        if end.is_none_or(|e| e > self.file_len) {
            push(
                out,
                Corruption::PastEof {
                    reference: *r,
                    file_len: self.file_len,
                },
            )?;
        }
        if r.kind != RefKind::CompressedCluster && !r.host.is_multiple_of(self.cs) {
            push(
                out,
                Corruption::Misaligned {
                    reference: *r,
                    align: self.cs,
                },
            )?;
        }
        let end = end.unwrap_or(u64::MAX);
        let mut bad = end > self.file_len;
        if let Some(&(region, ..)) = self
            .regions
            .iter()
            .find(|(_, s, e)| s < e && r.host < *e && *s < end)
        {
            push(
                out,
                Corruption::OverlapsMetadata {
                    reference: *r,
                    region,
                },
            )?;
            bad = true;
        }
        Ok(bad)
    }
}

/// Walks the whole structure; `inflate_all` also inflates every compressed stream.
pub(crate) fn scan<B: BlockIo>(io: &mut B, inflate_all: bool) -> Result<Scan, Error<B::Error>> {
    let header = read_header(io)?;
    let file_len = io.len()?;
    let geo = header.geometry();
    let l1o = header.l1_table_offset;
    let l1_bytes = geo.l1_bytes();
    let name = header.backing_name_range().unwrap_or(0..0);
    let meta = Meta {
        file_len,
        cs: geo.cluster_size(),
        regions: [
            (Region::Header, 0, HEADER_SIZE as u64),
            (Region::BackingName, name.start, name.end),
            (Region::L1Table, l1o, l1o.saturating_add(l1_bytes)),
        ],
    };
    let mut corruptions = Vec::new();
    // An empty name (offset set, length 0) takes no space.
    if !name.is_empty() && name.start < l1o.saturating_add(l1_bytes) && l1o < name.end {
        push(
            &mut corruptions,
            Corruption::MetadataOverlap {
                region: Region::BackingName,
                other: Region::L1Table,
            },
        )?;
    }
    let l1 = read_table(io, l1o, geo.l1_size())?;
    let mut exts = fixed_extents(&name, l1o, l1_bytes)?;
    let tables = l2_tables(&l1, &geo, &meta, &mut corruptions)?;
    let mut report = Report {
        header,
        file_len,
        corruptions: Vec::new(),
        leaks: Vec::new(),
        leaked_clusters: 0,
        leaked_bytes: 0,
        image_end_offset: 0,
        total_clusters: geo.size().div_ceil(meta.cs),
        allocated_clusters: 0,
        compressed_clusters: 0,
        fragmented_clusters: 0,
        l2_tables: tables.len() as u64,
    };
    let mut table = zeroed(usize::try_from(geo.l2_bytes()).unwrap_or(0))?;
    let mut walk = Walk {
        io,
        geo,
        meta: &meta,
        inflate_all,
        report: &mut report,
        corruptions: &mut corruptions,
        stream: zeroed(geo.cluster_len())?,
        cluster: zeroed(geo.cluster_len())?,
        next_contiguous: 0,
    };
    for t in &tables {
        push(&mut exts, *t)?;
        if t.flags & WALKED != 0 {
            walk.table(t, &mut table, &mut exts)?;
        }
    }
    exts.sort_unstable_by_key(Ext::key);
    overlaps(&exts, &geo, &mut corruptions)?;
    leaks(&exts, &name, meta.cs, &mut report)?;
    report.corruptions = corruptions;
    Ok(Scan {
        header,
        geo,
        l1,
        exts,
        report,
    })
}

/// The extents of the fixed metadata: the header, the backing name (when there is
/// one) and the L1 table.
fn fixed_extents<E>(
    name: &core::ops::Range<u64>,
    l1o: u64,
    l1_bytes: u64,
) -> Result<Vec<Ext>, Error<E>> {
    let mk = |host: u64, len: u64, kind: ExtKind| Ext {
        host,
        len: u32::try_from(len).unwrap_or(u32::MAX),
        l1: 0,
        l2: 0,
        kind,
        flags: 0,
    };
    let mut exts: Vec<Ext> = Vec::new();
    push(&mut exts, mk(0, HEADER_SIZE as u64, ExtKind::Header))?;
    if !name.is_empty() {
        push(
            &mut exts,
            mk(
                name.start,
                name.end.saturating_sub(name.start),
                ExtKind::Name,
            ),
        )?;
    }
    push(&mut exts, mk(l1o, l1_bytes, ExtKind::L1))?;
    Ok(exts)
}

/// The L2 tables the L1 table references, in L1 order, each judged against the fixed
/// metadata ([`BAD`] when it fails); of the sound ones, those clear of every earlier
/// (in host order) table are marked [`WALKED`].
fn l2_tables<E>(
    l1: &[u64],
    geo: &Geometry,
    meta: &Meta,
    corruptions: &mut Vec<Corruption>,
) -> Result<Vec<Ext>, Error<E>> {
    let mut tables: Vec<Ext> = Vec::new();
    for (i, &e) in l1.iter().enumerate() {
        if e == 0 {
            continue;
        }
        let mut t = Ext {
            host: e,
            len: u32::try_from(geo.l2_bytes()).unwrap_or(u32::MAX),
            l1: u32::try_from(i).unwrap_or(u32::MAX),
            l2: 0,
            kind: ExtKind::L2Table,
            flags: 0,
        };
        if meta.judge(&t.reference(geo), corruptions)? {
            t.flags |= BAD;
        }
        push(&mut tables, t)?;
    }
    // Walk only tables clear of every earlier (in host order) table.
    tables.sort_unstable_by_key(|t| (t.host, t.l1));
    let mut walked_end = 0u64;
    for t in tables.iter_mut().filter(|t| t.flags & BAD == 0) {
        if t.host >= walked_end {
            t.flags |= WALKED;
            walked_end = t.end();
        }
    }
    tables.sort_unstable_by_key(|t| t.l1);
    Ok(tables)
}

/// The walk of the L2 tables' entries: what it counts and the buffers it reads into.
struct Walk<'a, B: BlockIo> {
    io: &'a mut B,
    geo: Geometry,
    meta: &'a Meta,
    inflate_all: bool,
    report: &'a mut Report,
    corruptions: &'a mut Vec<Corruption>,
    /// A compressed stream as read.
    stream: Vec<u8>,
    /// A compressed stream inflated.
    cluster: Vec<u8>,
    /// Where the next plain cluster is when it follows the last one.
    next_contiguous: u64,
}

impl<B: BlockIo> Walk<'_, B> {
    /// Reads the table `t` into `table` and appends the references in it to `exts`.
    fn table(
        &mut self,
        t: &Ext,
        table: &mut [u8],
        exts: &mut Vec<Ext>,
    ) -> Result<(), Error<B::Error>> {
        self.io.read_at(t.host, table)?;
        let entries = table.chunks_exact(8).map(|c| {
            let mut v = [0u8; 8];
            v.copy_from_slice(c);
            u64::from_be_bytes(v)
        });
        let used = entries.clone().filter(|&e| e != 0).count();
        exts.try_reserve(used).map_err(|_| Error::OutOfMemory)?;
        for (j, e) in entries.enumerate() {
            if let Some(x) = self.entry(t, j, e)? {
                exts.push(x);
            }
        }
        Ok(())
    }

    /// Judges entry `j` (holding `e`) of the table `t`: counts it, records its
    /// problems; returns its extent, `None` when it is unallocated.
    fn entry(&mut self, t: &Ext, j: usize, e: u64) -> Result<Option<Ext>, Error<B::Error>> {
        let cs = self.geo.cluster_size();
        let (kind, host, len) = match L2Entry(e).decode(&self.geo) {
            Cluster::Unallocated => return Ok(None),
            Cluster::Plain { host } => (ExtKind::Data, host, cs),
            Cluster::Compressed { host, len } => (ExtKind::Compressed, host, len),
        };
        let mut x = Ext {
            host,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            l1: t.l1,
            l2: u16::try_from(j).unwrap_or(u16::MAX),
            kind,
            flags: 0,
        };
        let r = x.reference(&self.geo);
        self.report.allocated_clusters = self.report.allocated_clusters.saturating_add(1);
        if r.guest >= self.geo.size() {
            push(
                self.corruptions,
                Corruption::BeyondSize {
                    reference: r,
                    size: self.geo.size(),
                },
            )?;
        }
        let mut bad = self.meta.judge(&r, self.corruptions)?;
        if kind == ExtKind::Compressed {
            self.report.compressed_clusters = self.report.compressed_clusters.saturating_add(1);
            let error = if len == 0 {
                bad = true;
                Some(CompressedError::Empty)
            } else if !bad && self.inflate_all {
                self.inflate(host, len)?
            } else {
                None
            };
            if let Some(error) = error {
                push(
                    self.corruptions,
                    Corruption::Compressed {
                        reference: r,
                        error,
                    },
                )?;
            }
        } else {
            if self.next_contiguous != 0 && host != self.next_contiguous {
                self.report.fragmented_clusters = self.report.fragmented_clusters.saturating_add(1);
            }
            self.next_contiguous = host.saturating_add(cs);
        }
        if bad {
            x.flags |= BAD;
        }
        Ok(Some(x))
    }

    /// Reads and inflates the compressed stream of `len` bytes at `host`; returns what
    /// is wrong with it.
    fn inflate(&mut self, host: u64, len: u64) -> Result<Option<CompressedError>, Error<B::Error>> {
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        let input = self
            .stream
            .get_mut(..n)
            .ok_or(Error::BufferTooSmall { need: n, got: 0 })?;
        self.io.read_at(host, input)?;
        Ok(match inflate(input, &mut self.cluster) {
            Ok(()) => None,
            Err(InflateError::Invalid) => Some(CompressedError::Invalid),
            Err(InflateError::Short(n)) => Some(CompressedError::Short(n)),
        })
    }
}

/// Records the overlaps between sound references of `exts` (in host order).
///
/// Swept in host order: of two overlapping extents the later one is reported, except
/// that an L2 table is reported rather than the data it overlaps (repairing moves the
/// reported one). A table that shares bytes only with reported extents is reported
/// too: a repair writes into tables before it copies data away, so every table it
/// keeps must share no byte.
fn overlaps<E>(
    exts: &[Ext],
    geo: &Geometry,
    corruptions: &mut Vec<Corruption>,
) -> Result<(), Error<E>> {
    let mut kept: Option<Ext> = None;
    // The reported extent reaching furthest.
    let mut reported: Option<Ext> = None;
    for x in exts
        .iter()
        .filter(|x| x.ref_kind().is_some() && x.flags & BAD == 0)
    {
        let (moved, stays) = match (kept, reported) {
            (Some(k), _) if x.host < k.end() => {
                if k.kind == ExtKind::L2Table && x.kind != ExtKind::L2Table {
                    kept = Some(*x);
                    (k, *x)
                } else {
                    (*x, k)
                }
            }
            (_, Some(r)) if x.kind == ExtKind::L2Table && x.host < r.end() => (*x, r),
            _ => {
                kept = Some(*x);
                continue;
            }
        };
        if reported.is_none_or(|r| moved.end() > r.end()) {
            reported = Some(moved);
        }
        push(
            corruptions,
            Corruption::Overlap {
                reference: moved.reference(geo),
                other: stays.reference(geo),
            },
        )?
    }
    Ok(())
}

/// Records the leaks (free bytes that are not padding) between the extents of `exts`
/// (in host order), and where the image could end.
fn leaks<E>(
    exts: &[Ext],
    name: &core::ops::Range<u64>,
    cs: u64,
    report: &mut Report,
) -> Result<(), Error<E>> {
    let file_len = report.file_len;
    let mut covered = 0u64;
    for x in exts {
        if x.host >= file_len {
            continue;
        }
        if x.leaks_before(covered, cs) {
            leak(report, covered, x.host, cs, file_len)?;
        }
        covered = covered.max(x.span_end().min(file_len));
    }
    if covered < file_len {
        leak(report, covered, file_len, cs, file_len)?;
    }
    // A sound table not walked (it shares bytes with another table) holds references
    // unknown here, that may reach anywhere in the file: it could not end earlier.
    let unwalked = exts
        .iter()
        .any(|x| x.kind == ExtKind::L2Table && x.flags & (BAD | WALKED) == 0);
    // An empty backing name takes no space, but the header needs its offset inside
    // the file.
    let pinned = if name.is_empty() {
        covered.max(name.end).min(file_len)
    } else {
        covered
    };
    report.image_end_offset = if unwalked { file_len } else { pinned };
    Ok(())
}

/// Records the leaked range `[a, b)` and the whole clusters in it.
fn leak<E>(report: &mut Report, a: u64, b: u64, cs: u64, file_len: u64) -> Result<(), Error<E>> {
    let first = align_up(a, cs);
    let end = if b >= file_len {
        file_len
    } else {
        b & !cs.saturating_sub(1)
    };
    let clusters = if first < end {
        end.saturating_sub(first).div_ceil(cs)
    } else {
        0
    };
    let len = b.saturating_sub(a);
    report.leaked_bytes = report.leaked_bytes.saturating_add(len);
    report.leaked_clusters = report.leaked_clusters.saturating_add(clusters);
    push(
        &mut report.leaks,
        Leak {
            offset: a,
            len,
            clusters,
        },
    )
}

#[cfg(test)]
mod tests;
