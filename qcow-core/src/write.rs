//! The write path (needs `alloc`): in-place writes through [`Image`], image creation,
//! and [`Writer`], the sequential writer of fresh images used by `convert`.
//!
//! Ordering invariant: a cluster's data is written (and, with barriers on, flushed)
//! before the L2 entry that points at it; an L2 table before the L1 entry that points
//! at it. An interrupted write leaves at worst a leaked cluster at the end of the file,
//! never an entry pointing at unwritten data.

use alloc::vec;
use alloc::vec::Vec;

use crate::cluster::Deflater;
use crate::crypt::{Cipher, SECTOR};
use crate::entry::{Cluster, L2Entry};
use crate::error::Error;
use crate::header::{
    l1_entries, Geometry, Header, CRYPT_AES, CRYPT_NONE, HEADER_SIZE, MAX_BACKING_NAME,
};
use crate::image::{Backing, Image, StatusKind};
use crate::io::BlockIo;

/// The most bytes of zeros [`Image::make_empty`] holds at once.
const ZERO_CHUNK: u64 = 64 << 10;

/// Rounds `v` up to a multiple of the power of two `align`.
fn round_up(v: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(v.checked_add(mask)? & !mask)
}

/// What [`create`] makes: `CreateOptions::new(size)` with QEMU's defaults, then the
/// setters (fields can be read; new ones may come, so they are not built literally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateOptions<'a> {
    /// Virtual size in bytes (rounded up to 512, as QEMU does).
    pub size: u64,
    /// The backing file name, stored as given.
    pub backing: Option<&'a [u8]>,
    /// Whether the image is AES encrypted.
    pub encrypted: bool,
    /// log2 cluster size; `None` for QEMU's default (12, or 9 with a backing file).
    pub cluster_bits: Option<u8>,
    /// log2 entries per L2 table; `None` for QEMU's default (9, or 12 with a backing file).
    pub l2_bits: Option<u8>,
}

impl<'a> CreateOptions<'a> {
    /// An image of `size` bytes with QEMU's defaults.
    pub fn new(size: u64) -> Self {
        CreateOptions {
            size,
            backing: None,
            encrypted: false,
            cluster_bits: None,
            l2_bits: None,
        }
    }
    /// The backing file name to store (`None`: none).
    pub fn backing(mut self, name: Option<&'a [u8]>) -> Self {
        self.backing = name;
        self
    }
    /// Whether the image is AES encrypted.
    pub fn encrypted(mut self, on: bool) -> Self {
        self.encrypted = on;
        self
    }
    /// log2 of the cluster size (`None`: QEMU's default).
    pub fn cluster_bits(mut self, bits: Option<u8>) -> Self {
        self.cluster_bits = bits;
        self
    }
    /// log2 of the entries per L2 table (`None`: QEMU's default).
    pub fn l2_bits(mut self, bits: Option<u8>) -> Self {
        self.l2_bits = bits;
        self
    }
}

/// Writes a new, empty image onto `io` (truncated first), laid out byte for byte as
/// QEMU's `qcow_co_create`: header, backing name, L1 table at the next 8-byte
/// boundary, zero-filled to a whole number of 512-byte sectors.
pub fn create<B: BlockIo>(io: &mut B, opts: &CreateOptions<'_>) -> Result<Header, Error<B::Error>> {
    let name = opts.backing.unwrap_or_default();
    if name.len() > MAX_BACKING_NAME {
        return Err(Error::BackingNameTooLong(
            u32::try_from(name.len()).unwrap_or(u32::MAX),
        ));
    }
    let with_backing = opts.backing.is_some();
    let size = round_up(opts.size, 512).ok_or(Error::ImageTooLarge(opts.size))?;
    let cluster_bits = opts
        .cluster_bits
        .unwrap_or(if with_backing { 9 } else { 12 });
    let l2_bits = opts.l2_bits.unwrap_or(if with_backing { 12 } else { 9 });
    let name_len = name.len() as u64;
    let header_size =
        round_up((HEADER_SIZE as u64).saturating_add(name_len), 8).unwrap_or(u64::MAX);
    let h = Header {
        backing_file_offset: if with_backing { HEADER_SIZE as u64 } else { 0 },
        backing_file_size: u32::try_from(name.len()).unwrap_or(0),
        mtime: 0,
        size,
        cluster_bits,
        l2_bits,
        crypt_method: if opts.encrypted {
            CRYPT_AES
        } else {
            CRYPT_NONE
        },
        l1_table_offset: header_size,
    };
    h.validate()?;
    let l1 = l1_entries(size, cluster_bits, l2_bits).ok_or(Error::ImageTooLarge(size))?;
    let l1_bytes = round_up(l1.saturating_mul(8), 512).ok_or(Error::ImageTooLarge(size))?;
    io.set_len(0)?;
    io.write_at(0, &h.encode())?;
    if with_backing {
        io.write_at(HEADER_SIZE as u64, name)?;
    }
    io.set_len(header_size.saturating_add(l1_bytes))?;
    io.flush()?;
    Ok(h)
}

impl<B, K, S> Image<B, K, S>
where
    B: BlockIo,
    K: Backing<IoError = B::Error>,
    S: AsMut<[u8]>,
{
    /// Whether to flush between ordered steps (on by default). Off is for writing a
    /// fresh file nobody reads until it is complete.
    pub fn set_barriers(&mut self, on: bool) {
        self.barriers = on;
    }

    fn barrier(&mut self) -> Result<(), Error<B::Error>> {
        if self.barriers {
            self.io.flush()?;
        }
        Ok(())
    }

    /// Makes everything written durable.
    pub fn flush(&mut self) -> Result<(), Error<B::Error>> {
        self.io.flush()?;
        Ok(())
    }

    /// Writes `data` at host `at`, the new end of the file, and grows `file_len`.
    fn append(&mut self, at: u64, data: &[u8]) -> Result<(), Error<B::Error>> {
        let end = at
            .checked_add(data.len() as u64)
            .filter(|&e| e < self.geo.compressed_offset_limit())
            .ok_or(Error::FileTooLarge(self.geo.compressed_offset_limit()))?;
        self.io.write_at(at, data)?;
        self.file_len = self.file_len.max(end);
        Ok(())
    }

    fn cluster_aligned_end(&self) -> Result<u64, Error<B::Error>> {
        round_up(self.file_len, self.geo.cluster_size()).ok_or(Error::FileTooLarge(self.file_len))
    }

    /// Points the L2 entry of `guest` at `entry`, allocating (and writing) the L2 table
    /// first when there is none, then the L1 entry.
    pub(crate) fn link(&mut self, guest: u64, entry: L2Entry) -> Result<(), Error<B::Error>> {
        self.link_many(&[(guest, entry)])
    }

    /// Points the L2 entries of many guest clusters (in increasing order) at their new
    /// homes: entries in existing tables are written in place (adjacent ones in one
    /// write); missing tables are written whole, holding their entries, then (after a
    /// barrier) the L1 entries that point at them.
    pub(crate) fn link_many(&mut self, links: &[(u64, L2Entry)]) -> Result<(), Error<B::Error>> {
        // An L1 entry past the table would land on whatever follows it.
        if let Some(&(guest, _)) = links
            .iter()
            .find(|(g, _)| self.geo.l1_index(*g) >= self.geo.l1_size())
        {
            return Err(Error::OutOfRange {
                offset: guest,
                len: 0,
                size: self.geo.size(),
            });
        }
        // (table offset, first index, entry bytes) of a run of adjacent entries.
        let mut run: Option<(u64, u64, Vec<u8>)> = None;
        // (L1 index, table bytes) of tables to create.
        let mut fresh: Vec<(u64, Vec<u8>)> = Vec::new();
        for &(guest, entry) in links {
            let l2i = self.geo.l2_index(guest);
            let Some(l2) = self.l1_entry(guest)?.l2_offset() else {
                let l1i = self.geo.l1_index(guest);
                if fresh.last().is_none_or(|(i, _)| *i != l1i) {
                    let n = usize::try_from(self.geo.l2_bytes()).unwrap_or(0);
                    fresh.push((l1i, vec![0u8; n]));
                }
                let slot = usize::try_from(l2i.saturating_mul(8)).unwrap_or(usize::MAX);
                if let Some(d) = fresh
                    .last_mut()
                    .and_then(|(_, t)| t.get_mut(slot..slot.saturating_add(8)))
                {
                    d.copy_from_slice(&entry.0.to_be_bytes());
                }
                continue;
            };
            self.cache.update(l2, l2i, entry.0);
            match &mut run {
                Some((t, first, bytes))
                    if *t == l2 && first.checked_add(bytes.len() as u64 / 8) == Some(l2i) =>
                {
                    bytes.extend_from_slice(&entry.0.to_be_bytes());
                }
                _ => {
                    if let Some((t, first, bytes)) = run.take() {
                        self.io
                            .write_at(t.saturating_add(first.saturating_mul(8)), &bytes)?;
                    }
                    run = Some((l2, l2i, entry.0.to_be_bytes().to_vec()));
                }
            }
        }
        if let Some((t, first, bytes)) = run.take() {
            self.io
                .write_at(t.saturating_add(first.saturating_mul(8)), &bytes)?;
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let mut placed = Vec::with_capacity(fresh.len());
        for (l1i, table) in &fresh {
            let l2 = self.cluster_aligned_end()?;
            self.append(l2, table)?;
            placed.push((*l1i, l2));
        }
        self.barrier()?;
        for (l1i, l2) in placed {
            let at = self
                .header
                .l1_table_offset
                .saturating_add(l1i.saturating_mul(8));
            self.io.write_at(at, &l2.to_be_bytes())?;
            self.cache.update(self.header.l1_table_offset, l1i, l2);
        }
        Ok(())
    }

    /// The guest content of the cluster starting at `start`, as currently read.
    fn current_cluster(&mut self, start: u64, buf: &mut [u8]) -> Result<(), Error<B::Error>> {
        let visible = usize::try_from(self.geo.size().saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (inside, past) = buf.split_at_mut(visible);
        past.fill(0);
        match self.lookup(start)? {
            Cluster::Unallocated => self.backing.read_layer(start, inside),
            _ => self.read_at(start, inside),
        }
    }

    /// Writes `data` at guest `offset`; the range must lie inside the virtual size.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error<B::Error>> {
        self.check_range(offset, data.len() as u64)?;
        if self.header.is_encrypted() && self.cipher.is_none() {
            return Err(Error::PasswordRequired);
        }
        let cs = self.geo.cluster_len();
        // New clusters are gathered into one contiguous run at the end of the file,
        // written, then linked all at once: one barrier per step, not per cluster.
        let mut batch: Vec<u8> = Vec::new();
        let mut links: Vec<(u64, L2Entry)> = Vec::new();
        let mut batch_host = self.cluster_aligned_end()?;
        let geo = self.geo;
        for (guest, in_cl, range) in geo.pieces(offset, data.len()) {
            let last = range.end >= data.len();
            let piece = data.get(range).unwrap_or_default();
            match self.lookup(guest)? {
                Cluster::Plain { host } => {
                    self.overwrite_plain(guest, host.saturating_add(in_cl as u64), piece)?
                }
                _ => {
                    let start = guest.saturating_sub(in_cl as u64);
                    let at = batch.len();
                    batch.resize(at.saturating_add(cs), 0);
                    let buf = batch.get_mut(at..).unwrap_or_default();
                    if piece.len() < cs {
                        self.current_cluster(start, buf)?;
                    }
                    if let Some(d) = buf.get_mut(in_cl..in_cl.saturating_add(piece.len())) {
                        d.copy_from_slice(piece);
                    }
                    if let Some(c) = &self.cipher {
                        c.encrypt(start / 512, buf);
                    }
                    let host = batch_host.saturating_add(at as u64);
                    links.push((guest, L2Entry::plain(host)));
                }
            }
            if batch.len() >= WRITE_BUFFER || last {
                if !links.is_empty() {
                    self.append(batch_host, &batch)?;
                    self.barrier()?;
                    self.link_many(&links)?;
                }
                batch.clear();
                links.clear();
                batch_host = self.cluster_aligned_end()?;
            }
        }
        Ok(())
    }

    /// Overwrites part of an allocated plain cluster in place.
    fn overwrite_plain(
        &mut self,
        guest: u64,
        host: u64,
        piece: &[u8],
    ) -> Result<(), Error<B::Error>> {
        let Some(cipher) = self.cipher.clone() else {
            self.io.write_at(host, piece)?;
            return Ok(());
        };
        // Whole sectors covering the piece: read, decrypt, merge, encrypt, write.
        let skew = guest % 512;
        let g0 = guest.saturating_sub(skew);
        let h0 = host.saturating_sub(skew);
        let total = round_up(skew.saturating_add(piece.len() as u64), SECTOR as u64).unwrap_or(0);
        let mut buf = vec![0u8; usize::try_from(total).unwrap_or(0)];
        self.io.read_at(h0, &mut buf)?;
        cipher.decrypt(g0 / 512, &mut buf);
        let s = usize::try_from(skew).unwrap_or(0);
        if let Some(d) = buf.get_mut(s..s.saturating_add(piece.len())) {
            d.copy_from_slice(piece);
        }
        cipher.encrypt(g0 / 512, &mut buf);
        self.io.write_at(h0, &buf)?;
        Ok(())
    }

    /// Discards guest `[offset, offset + len)` so that it reads as zeros: each whole
    /// cluster whose backing content reads as zeros becomes unallocated (its L2 entry
    /// cleared; the space it held is leaked, as `check` reports); every other byte is
    /// overwritten with zeros.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), Error<B::Error>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.geo.size())
            .ok_or(Error::OutOfRange {
                offset,
                len,
                size: self.geo.size(),
            })?;
        let cs = self.geo.cluster_size();
        let mut unlink: Vec<(u64, L2Entry)> = Vec::new();
        let mut at = offset;
        while at < end {
            let in_cl = self.geo.in_cluster(at);
            let n = cs.saturating_sub(in_cl).min(end.saturating_sub(at));
            let whole = in_cl == 0 && (n == cs || at.saturating_add(n) == self.geo.size());
            let below_zero = self.backing_reads_zero(at, n)?;
            if whole && below_zero {
                if let Some(l2) = self.l1_entry(at)?.l2_offset() {
                    if self.l2_entry(l2, at)?.0 != 0 {
                        unlink.push((at, L2Entry(0)));
                    }
                }
            } else if !(below_zero && self.lookup(at)? == Cluster::Unallocated) {
                let zeros = vec![0u8; usize::try_from(n).unwrap_or(0)];
                self.write_at(at, &zeros)?;
            }
            at = at.saturating_add(n);
        }
        self.inflated = None;
        self.link_many(&unlink)
    }

    /// Whether the backing layer reads `[at, at + n)` as zeros without data.
    fn backing_reads_zero(&mut self, at: u64, n: u64) -> Result<bool, Error<B::Error>> {
        let end = at.saturating_add(n);
        let mut p = at;
        while p < end && self.backing.is_present() && p < self.backing.size() {
            let s = self.backing.status(p, end.saturating_sub(p))?;
            match s.kind {
                StatusKind::Unallocated | StatusKind::Hole { .. } => {
                    p = p.saturating_add(s.len.max(1))
                }
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Empties the image, as QEMU's `make_empty` after a commit: zeroes the L1 table
    /// (flushed), then truncates the file after it. Afterwards every cluster reads
    /// from the backing layer.
    pub fn make_empty(&mut self) -> Result<(), Error<B::Error>> {
        let l1 = self.header.l1_table_offset;
        let l1_len = round_up(self.geo.l1_bytes(), 512).unwrap_or(u64::MAX);
        // The L1 table may be up to 2 GiB: zero it a piece at a time.
        let total = self.geo.l1_bytes();
        let zeros = vec![0u8; usize::try_from(total.min(ZERO_CHUNK)).unwrap_or(0)];
        let mut done = 0u64;
        while done < total {
            let n = usize::try_from(total.saturating_sub(done).min(ZERO_CHUNK)).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.io
                .write_at(l1.saturating_add(done), zeros.get(..n).unwrap_or_default())?;
            done = done.saturating_add(n as u64);
        }
        self.io.flush()?;
        self.cache.clear();
        self.inflated = None;
        let meta_end = self
            .header
            .backing_name_range()
            .map_or(0, |r| r.end)
            .max(l1.saturating_add(l1_len));
        if meta_end < self.file_len {
            self.io.set_len(meta_end)?;
            self.file_len = meta_end;
        }
        Ok(())
    }

    /// Writes `data` at guest `offset` with each whole cluster it covers compressed
    /// (the last cluster counts as whole when `data` reaches the virtual size); the
    /// partial clusters at either end take plain writes. A cluster falls back to a
    /// plain write when its data does not shrink, it is already plain (overwritten in
    /// place), or the image is encrypted (QEMU would store compressed data
    /// unencrypted).
    pub fn write_compressed(&mut self, offset: u64, data: &[u8]) -> Result<(), Error<B::Error>> {
        self.check_range(offset, data.len() as u64)?;
        let geo = self.geo;
        for (guest, _, range) in geo.pieces(offset, data.len()) {
            self.write_compressed_cluster(guest, data.get(range).unwrap_or_default())?;
        }
        Ok(())
    }

    /// [`Image::write_compressed`] of a piece inside one cluster.
    fn write_compressed_cluster(
        &mut self,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error<B::Error>> {
        let cs = self.geo.cluster_len();
        let len = data.len() as u64;
        let whole = data.len() == cs
            || (data.len() < cs && offset.checked_add(len) == Some(self.geo.size()));
        if self.geo.in_cluster(offset) != 0 || !whole || self.header.is_encrypted() {
            return self.write_at(offset, data);
        }
        if let Cluster::Plain { .. } = self.lookup(offset)? {
            return self.write_at(offset, data);
        }
        let mut input = vec![0u8; cs];
        if let Some(d) = input.get_mut(..data.len()) {
            d.copy_from_slice(data);
        }
        let mut out = vec![0u8; cs];
        let n = self
            .deflater
            .get_or_insert_with(Deflater::default)
            .compress(&input, &mut out);
        let Some(n) = n else {
            return self.write_at(offset, data);
        };
        let host = self.file_len;
        let stream = out.get(..n).unwrap_or_default();
        let entry = L2Entry::compressed(&self.geo, host, n as u64)
            .ok_or(Error::FileTooLarge(self.geo.compressed_offset_limit()))?;
        self.append(host, stream)?;
        self.barrier()?;
        self.link(offset, entry)
    }
}

/// Sequentially writes a fresh image made by [`create`]: clusters are pushed in
/// increasing guest order; data is buffered and written in large runs; each L2 table
/// is written after its data, and the L1 entry after its L2 table.
pub struct Writer<B: BlockIo> {
    io: B,
    header: Header,
    geo: Geometry,
    cipher: Option<Cipher>,
    file_len: u64,
    /// L1 index of the table being filled, and its entries.
    l2: Option<(u64, Vec<u64>)>,
    pending: Vec<u8>,
    pending_at: u64,
}

/// Bytes buffered before a write is issued.
const WRITE_BUFFER: usize = 4 << 20;

impl<B: BlockIo> core::fmt::Debug for Writer<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Writer")
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

impl<B: BlockIo> Writer<B> {
    /// Creates the image on `io` with `opts` and returns a writer for its clusters.
    pub fn create(
        mut io: B,
        opts: &CreateOptions<'_>,
        secret: Option<&[u8]>,
    ) -> Result<Self, Error<B::Error>> {
        let header = create(&mut io, opts)?;
        let cipher = match (opts.encrypted, secret) {
            (false, _) => None,
            (true, Some(s)) => Some(Cipher::from_secret(s).map_err(|_| Error::SecretNotUtf8)?),
            (true, None) => return Err(Error::PasswordRequired),
        };
        let file_len = io.len()?;
        Ok(Writer {
            io,
            geo: header.geometry(),
            header,
            cipher,
            file_len,
            l2: None,
            pending: Vec::new(),
            pending_at: file_len,
        })
    }

    /// The image's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The header written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn flush_pending(&mut self) -> Result<(), Error<B::Error>> {
        if !self.pending.is_empty() {
            self.io.write_at(self.pending_at, &self.pending)?;
            self.pending.clear();
        }
        self.pending_at = self.file_len;
        Ok(())
    }

    fn put(&mut self, at: u64, data: &[u8]) -> Result<(), Error<B::Error>> {
        if at != self.pending_at.saturating_add(self.pending.len() as u64) {
            self.flush_pending()?;
            self.pending_at = at;
        }
        self.pending.extend_from_slice(data);
        self.file_len = self.file_len.max(at.saturating_add(data.len() as u64));
        if self.pending.len() >= WRITE_BUFFER {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// Writes the L2 table being filled, then its L1 entry.
    fn close_table(&mut self) -> Result<(), Error<B::Error>> {
        let Some((l1i, entries)) = self.l2.take() else {
            return Ok(());
        };
        let at = round_up(self.file_len, self.geo.cluster_size())
            .ok_or(Error::FileTooLarge(self.file_len))?;
        let mut table = Vec::with_capacity(entries.len().saturating_mul(8));
        for e in &entries {
            table.extend_from_slice(&e.to_be_bytes());
        }
        self.put(at, &table)?;
        self.flush_pending()?;
        let l1_at = self
            .header
            .l1_table_offset
            .saturating_add(l1i.saturating_mul(8));
        self.io.write_at(l1_at, &at.to_be_bytes())?;
        Ok(())
    }

    /// Makes the L2 table of guest cluster `cluster` the one being filled, writing the
    /// previous one out first; returns the index of the cluster's entry in it.
    fn table_for(&mut self, cluster: u64) -> Result<usize, Error<B::Error>> {
        let guest = cluster
            .checked_shl(u32::from(self.geo.cluster_bits()))
            .filter(|g| g >> self.geo.cluster_bits() == cluster)
            .unwrap_or(u64::MAX);
        if guest >= self.geo.size() {
            return Err(Error::OutOfRange {
                offset: guest,
                len: 0,
                size: self.geo.size(),
            });
        }
        let l1i = self.geo.l1_index(guest);
        if self.l2.as_ref().is_some_and(|(i, _)| *i != l1i) {
            self.close_table()?;
        }
        if self.l2.is_none() {
            let n = usize::try_from(self.geo.l2_entries()).unwrap_or(0);
            self.l2 = Some((l1i, vec![0u64; n]));
        }
        Ok(usize::try_from(self.geo.l2_index(guest)).unwrap_or(usize::MAX))
    }

    fn set_entry(&mut self, slot: usize, entry: u64) {
        if let Some(e) = self.l2.as_mut().and_then(|(_, t)| t.get_mut(slot)) {
            *e = entry;
        }
    }

    /// Stores guest cluster number `cluster` (pushed in increasing order) as a plain
    /// cluster; `data` is at most one cluster (the last may be short: zero-padded).
    pub fn push_plain(&mut self, cluster: u64, data: &[u8]) -> Result<(), Error<B::Error>> {
        let cs = self.geo.cluster_len();
        let slot = self.table_for(cluster)?;
        let at = round_up(self.file_len, self.geo.cluster_size())
            .ok_or(Error::FileTooLarge(self.file_len))?;
        self.set_entry(slot, at);
        let mut buf;
        let mut data = data.get(..cs.min(data.len())).unwrap_or_default();
        if let Some(c) = &self.cipher {
            buf = vec![0u8; cs];
            if let Some(d) = buf.get_mut(..data.len()) {
                d.copy_from_slice(data);
            }
            let sector = cluster
                .checked_shl(u32::from(self.geo.cluster_bits()).saturating_sub(9))
                .unwrap_or(0);
            c.encrypt(sector, &mut buf);
            data = &buf;
        }
        self.put(at, data)?;
        let pad = cs.saturating_sub(data.len());
        if pad > 0 {
            let zeros = vec![0u8; pad];
            self.put(at.saturating_add(data.len() as u64), &zeros)?;
        }
        Ok(())
    }

    /// Stores guest cluster `cluster` as the raw-deflate `stream` (from
    /// [`Deflater::compress`]: shorter than a cluster).
    pub fn push_compressed(&mut self, cluster: u64, stream: &[u8]) -> Result<(), Error<B::Error>> {
        let slot = self.table_for(cluster)?;
        let at = self.file_len;
        let entry = L2Entry::compressed(&self.geo, at, stream.len() as u64)
            .ok_or(Error::FileTooLarge(self.geo.compressed_offset_limit()))?;
        self.set_entry(slot, entry.0);
        self.put(at, stream)
    }

    /// Writes what is buffered, the last L2 table and its L1 entry; flushes.
    pub fn finish(mut self) -> Result<B, Error<B::Error>> {
        self.close_table()?;
        self.flush_pending()?;
        self.io.flush()?;
        Ok(self.io)
    }
}
