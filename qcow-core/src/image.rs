//! `Image`: an opened qcow image over a [`BlockIo`], with an optional backing layer.

use core::marker::PhantomData;
use core::ops::Range;

use crate::cache::TableCache;
use crate::cluster::{inflate, InflateError};
use crate::crypt::{Cipher, SECTOR};
use crate::entry::{Cluster, L1Entry, L2Entry};
use crate::error::{Error, Problem, RefKind};
use crate::header::{Geometry, Header, HEADER_SIZE, MAX_BACKING_NAME};
use crate::io::BlockIo;

/// How a guest range is stored, as [`Backing::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// Nothing stored at any depth: reads as zeros.
    Unallocated,
    /// Plain data at this host offset of the layer at `depth`.
    Data {
        /// Host offset of the first byte.
        host: u64,
    },
    /// A hole in a raw layer: present, reads as zeros.
    Hole {
        /// Host offset of the first byte.
        host: u64,
    },
    /// Encrypted data at this host offset (QEMU's map reports it as data with no
    /// offset).
    Encrypted {
        /// Host offset of the first byte.
        host: u64,
    },
    /// Part of a compressed cluster whose stream starts at `host`.
    Compressed {
        /// Host offset of the stream.
        host: u64,
    },
}

/// The status of a guest range: `len` bytes from the queried offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Bytes the status covers (at least 1 when the query asked for at least 1).
    pub len: u64,
    /// 0 for the top image, 1 for its backing file, and so on.
    pub depth: u32,
    /// How they are stored.
    pub kind: StatusKind,
}

/// A readable layer beneath an image: another image, a raw device, or nothing.
///
/// Its device error type is the overlay's, so a chain reports one error type.
pub trait Backing {
    /// The device error type.
    type IoError;
    /// Whether there is a layer at all (`false` for [`NoBacking`]).
    fn is_present(&self) -> bool {
        true
    }
    /// Guest size of the layer; reads past it give zeros.
    fn size(&self) -> u64;
    /// Reads guest bytes; the part of `buf` past [`Backing::size`] is zero-filled.
    fn read_layer(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error<Self::IoError>>;
    /// How the range from `offset`, at most `max` bytes, is stored.
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, Error<Self::IoError>>;
}

impl<T: Backing + ?Sized> Backing for &mut T {
    type IoError = T::IoError;
    fn is_present(&self) -> bool {
        (**self).is_present()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_layer(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error<Self::IoError>> {
        (**self).read_layer(offset, buf)
    }
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, Error<Self::IoError>> {
        (**self).status(offset, max)
    }
}

/// No backing layer: unallocated clusters read as zeros.
#[derive(Debug)]
pub struct NoBacking<E>(PhantomData<fn() -> E>);

impl<E> Default for NoBacking<E> {
    fn default() -> Self {
        NoBacking(PhantomData)
    }
}

impl<E> NoBacking<E> {
    /// The empty layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<E> Backing for NoBacking<E> {
    type IoError = E;
    fn is_present(&self) -> bool {
        false
    }
    fn size(&self) -> u64 {
        0
    }
    fn read_layer(&mut self, _: u64, buf: &mut [u8]) -> Result<(), Error<E>> {
        buf.fill(0);
        Ok(())
    }
    fn status(&mut self, _: u64, max: u64) -> Result<Status, Error<E>> {
        Ok(Status {
            len: max,
            depth: 0,
            kind: StatusKind::Unallocated,
        })
    }
}

/// A raw device used as a backing layer (or read directly): guest offset = host offset.
#[derive(Debug)]
pub struct Raw<B> {
    io: B,
    /// The device's length: bytes past it read as zeros.
    len: u64,
    /// The guest size: the length rounded up to 512, as QEMU counts whole sectors.
    size: u64,
}

impl<B: BlockIo> Raw<B> {
    /// Wraps a device; its current length, rounded up to 512 bytes as QEMU does, is
    /// the layer's size (the bytes past the device's end read as zeros).
    pub fn new(mut io: B) -> Result<Self, Error<B::Error>> {
        let len = io.len()?;
        let size = len.checked_add(511).map_or(len, |v| v & !511);
        Ok(Raw { io, len, size })
    }
    /// Writes `data` at `offset` on the device (which grows when the write reaches
    /// past its end; the guest size does not change).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error<B::Error>> {
        self.io.write_at(offset, data)?;
        let end = offset.saturating_add(data.len() as u64);
        self.len = self.len.max(end);
        Ok(())
    }
    /// The device.
    pub fn io(&mut self) -> &mut B {
        &mut self.io
    }
    /// Gives the device back.
    pub fn into_inner(self) -> B {
        self.io
    }
}

/// Splits `buf` at the part that lies below `size` when it starts at `offset`.
fn split_at_size(offset: u64, buf: &mut [u8], size: u64) -> (&mut [u8], &mut [u8]) {
    let inside = size.saturating_sub(offset);
    let n = usize::try_from(inside).unwrap_or(usize::MAX).min(buf.len());
    buf.split_at_mut(n)
}

impl<B: BlockIo> Backing for Raw<B> {
    type IoError = B::Error;
    fn size(&self) -> u64 {
        self.size
    }
    fn read_layer(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error<B::Error>> {
        let (inside, past) = split_at_size(offset, buf, self.len);
        if !inside.is_empty() {
            self.io.read_at(offset, inside)?;
        }
        past.fill(0);
        Ok(())
    }
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, Error<B::Error>> {
        if offset >= self.size {
            return Ok(Status {
                len: max,
                depth: 0,
                kind: StatusKind::Unallocated,
            });
        }
        Ok(Status {
            len: max.min(self.size.saturating_sub(offset)),
            depth: 0,
            kind: StatusKind::Data { host: offset },
        })
    }
}

/// Scratch bytes an [`Image`] of geometry `g` needs: one cluster for inflated data and
/// one for the compressed stream (2 × cluster size; 128 KiB at most).
pub fn scratch_len(g: &Geometry) -> usize {
    g.cluster_len().saturating_mul(2)
}

/// Reads and decodes the header of the image on `io` (also checks it against the
/// file's length).
pub fn read_header<B: BlockIo>(io: &mut B) -> Result<Header, Error<B::Error>> {
    let len = io.len()?;
    if len < HEADER_SIZE as u64 {
        return Err(Error::HeaderTruncated { len });
    }
    let mut raw = [0u8; HEADER_SIZE];
    io.read_at(0, &mut raw)?;
    let h = Header::decode(&raw)?;
    h.validate_layout(len)?;
    Ok(h)
}

/// Reads the backing file name into `buf`; returns its bytes (empty when none).
pub fn read_backing_name<'a, B: BlockIo>(
    io: &mut B,
    header: &Header,
    buf: &'a mut [u8; MAX_BACKING_NAME],
) -> Result<&'a [u8], Error<B::Error>> {
    let Some(range) = header.backing_name_range() else {
        return Ok(&[]);
    };
    // validate() bounded the length by MAX_BACKING_NAME.
    let n = usize::try_from(header.backing_file_size).unwrap_or(usize::MAX);
    let dst = buf
        .get_mut(..n)
        .ok_or(Error::BackingNameTooLong(header.backing_file_size))?;
    io.read_at(range.start, dst)?;
    Ok(dst)
}

/// An opened qcow image.
///
/// `B` is the device, `K` the backing layer, `S` the scratch buffer (at least
/// [`scratch_len`] bytes: an array, a `&mut [u8]`, or with `alloc` a `Vec<u8>`).
pub struct Image<B: BlockIo, K, S> {
    pub(crate) io: B,
    pub(crate) header: Header,
    pub(crate) geo: Geometry,
    pub(crate) backing: K,
    pub(crate) cache: TableCache,
    pub(crate) file_len: u64,
    pub(crate) scratch: S,
    /// Host offset of the compressed cluster whose data is in `scratch[..cluster]`.
    pub(crate) inflated: Option<u64>,
    pub(crate) cipher: Option<Cipher>,
    /// Flush between ordered write steps (data, L2, L1).
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))] // only the write path reads it
    pub(crate) barriers: bool,
    #[cfg(feature = "alloc")]
    pub(crate) deflater: Option<crate::cluster::Deflater>,
}

impl<B: BlockIo, K, S> core::fmt::Debug for Image<B, K, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Image")
            .field("header", &self.header)
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

impl<B, K, S> Image<B, K, S>
where
    B: BlockIo,
    K: Backing<IoError = B::Error>,
    S: AsMut<[u8]>,
{
    /// Opens the image on `io`, reading unallocated clusters from `backing`.
    pub fn open(mut io: B, backing: K, mut scratch: S) -> Result<Self, Error<B::Error>> {
        let header = read_header(&mut io)?;
        let geo = header.geometry();
        let need = scratch_len(&geo);
        let got = scratch.as_mut().len();
        if got < need {
            return Err(Error::BufferTooSmall { need, got });
        }
        let file_len = io.len()?;
        Ok(Image {
            io,
            header,
            geo,
            backing,
            cache: TableCache::new(),
            file_len,
            scratch,
            inflated: None,
            cipher: None,
            barriers: true,
            #[cfg(feature = "alloc")]
            deflater: None,
        })
    }

    /// Sets the secret of an encrypted image (see [`crate::crypt`]).
    pub fn set_secret(&mut self, secret: &[u8]) -> Result<(), Error<B::Error>> {
        let c = Cipher::from_secret(secret).map_err(|_| Error::SecretNotUtf8)?;
        self.cipher = Some(c);
        Ok(())
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }
    /// The virtual size as QEMU sees it (the header's size rounded down to 512).
    pub fn size(&self) -> u64 {
        self.geo.size()
    }
    /// The device's length when last seen.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
    /// The backing layer.
    pub fn backing(&mut self) -> &mut K {
        &mut self.backing
    }
    /// The device.
    pub fn io(&mut self) -> &mut B {
        &mut self.io
    }
    /// Gives back the device and the backing layer.
    pub fn into_parts(self) -> (B, K) {
        (self.io, self.backing)
    }

    fn overlaps_metadata(&self, start: u64, end: u64) -> bool {
        // An empty backing name (offset set, length 0) takes no space, as in QEMU.
        let hit = |r: Range<u64>| r.start < r.end && start < r.end && r.start < end;
        let l1 = self.header.l1_table_offset;
        hit(0..HEADER_SIZE as u64)
            || hit(l1..l1.saturating_add(self.geo.l1_bytes()))
            || self.header.backing_name_range().is_some_and(hit)
    }

    /// Checks that a referenced extent lies inside the file, aligned, clear of metadata.
    pub(crate) fn check_ref(
        &self,
        kind: RefKind,
        guest: u64,
        host: u64,
        len: u64,
    ) -> Result<(), Error<B::Error>> {
        let bad = |problem| Error::BadReference {
            kind,
            guest,
            host,
            problem,
        };
        if kind != RefKind::CompressedCluster && !host.is_multiple_of(512) {
            return Err(bad(Problem::Misaligned));
        }
        if len == 0 {
            return Err(bad(Problem::Empty));
        }
        let end = host.checked_add(len).ok_or(bad(Problem::PastEof {
            file_len: self.file_len,
        }))?;
        if end > self.file_len {
            return Err(bad(Problem::PastEof {
                file_len: self.file_len,
            }));
        }
        if self.overlaps_metadata(host, end) {
            return Err(bad(Problem::OverlapsMetadata));
        }
        Ok(())
    }

    /// The L1 entry for `guest`, with its L2 table checked (0 when unallocated).
    pub(crate) fn l1_entry(&mut self, guest: u64) -> Result<L1Entry, Error<B::Error>> {
        let i = self.geo.l1_index(guest);
        if i >= self.geo.l1_size() {
            return Ok(L1Entry(0));
        }
        let e = L1Entry(self.cache.get(
            &mut self.io,
            self.header.l1_table_offset,
            self.geo.l1_size(),
            i,
        )?);
        if let Some(l2) = e.l2_offset() {
            self.check_ref(RefKind::L2Table, guest, l2, self.geo.l2_bytes())?;
        }
        Ok(e)
    }

    /// The raw L2 entry for `guest` in the table at `l2`.
    pub(crate) fn l2_entry(&mut self, l2: u64, guest: u64) -> Result<L2Entry, Error<B::Error>> {
        let i = self.geo.l2_index(guest);
        Ok(L2Entry(self.cache.get(
            &mut self.io,
            l2,
            self.geo.l2_entries(),
            i,
        )?))
    }

    /// Where the cluster holding guest offset `guest` is stored, every reference checked.
    pub fn lookup(&mut self, guest: u64) -> Result<Cluster, Error<B::Error>> {
        let Some(l2) = self.l1_entry(guest)?.l2_offset() else {
            return Ok(Cluster::Unallocated);
        };
        let c = self.l2_entry(l2, guest)?.decode(&self.geo);
        match c {
            Cluster::Unallocated => {}
            Cluster::Plain { host } => {
                self.check_ref(RefKind::DataCluster, guest, host, self.geo.cluster_size())?
            }
            Cluster::Compressed { host, len } => {
                self.check_ref(RefKind::CompressedCluster, guest, host, len)?
            }
        }
        Ok(c)
    }

    /// The run of guest bytes from `guest` (at most `max`) stored alike: all
    /// unallocated, plain with contiguous host offsets, or one compressed cluster.
    /// Returns the cluster kind of the run's start and the run's length; a plain run's
    /// host is the host offset of `guest` itself. A bad reference after the first
    /// cluster ends the run rather than failing it: it is reported when asked about
    /// itself, so a map or a read gets everything before it.
    pub fn extent(&mut self, guest: u64, max: u64) -> Result<(Cluster, u64), Error<B::Error>> {
        let cs = self.geo.cluster_size();
        let first_len = cs.saturating_sub(self.geo.in_cluster(guest)).min(max);
        let first = if self.l1_entry(guest)?.l2_offset().is_none() {
            // A whole L2 span is unallocated: skip it at once.
            let span = self.geo.l2_span();
            let to_span_end = span.saturating_sub(guest & span.saturating_sub(1));
            let mut len = to_span_end.min(max);
            let mut next = guest.saturating_add(len);
            while len < max && next < self.geo.size() {
                if !matches!(self.l1_entry(next), Ok(e) if e.l2_offset().is_none()) {
                    break;
                }
                len = len.saturating_add(span).min(max);
                next = next.saturating_add(span);
            }
            return Ok((Cluster::Unallocated, len));
        } else {
            self.lookup(guest)?
        };
        let mut len = first_len;
        let first = match first {
            Cluster::Plain { host } => Cluster::Plain {
                host: host.saturating_add(self.geo.in_cluster(guest)),
            },
            c => c,
        };
        if let Cluster::Compressed { .. } = first {
            return Ok((first, len));
        }
        let span = self.geo.l2_span();
        while len < max {
            let next = guest.saturating_add(len);
            if next >= self.geo.size() {
                break;
            }
            // An unallocated run reaching an L2 span without a table skips it at once.
            if first == Cluster::Unallocated
                && next & span.saturating_sub(1) == 0
                && matches!(self.l1_entry(next), Ok(e) if e.l2_offset().is_none())
            {
                len = len.saturating_add(span).min(max);
                continue;
            }
            let Ok(c) = self.lookup(next) else {
                break;
            };
            let same = match (first, c) {
                (Cluster::Unallocated, Cluster::Unallocated) => true,
                (Cluster::Plain { host: h0 }, Cluster::Plain { host }) => {
                    h0.checked_add(len) == Some(host)
                }
                _ => false,
            };
            if !same {
                break;
            }
            len = len.saturating_add(cs).min(max);
        }
        Ok((first, len))
    }

    /// Fails unless `[offset, offset + len)` lies inside the virtual size.
    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<(), Error<B::Error>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.size() => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.geo.size(),
            }),
        }
    }

    /// Inflates the compressed cluster `(host, len)` into `scratch[..cluster]`.
    pub(crate) fn inflate_into_scratch(
        &mut self,
        guest: u64,
        host: u64,
        len: u64,
    ) -> Result<(), Error<B::Error>> {
        if self.inflated == Some(host) {
            return Ok(());
        }
        self.inflated = None;
        let cl = self.geo.cluster_len();
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        let scratch = self.scratch.as_mut();
        let got = scratch.len();
        let (out, rest) = scratch.split_at_mut(cl.min(got));
        let input = rest.get_mut(..n).ok_or(Error::BufferTooSmall {
            need: cl.saturating_add(n),
            got,
        })?;
        self.io.read_at(host, input)?;
        inflate(input, out).map_err(|e| match e {
            InflateError::Invalid => Error::CompressedInvalid { guest, host },
            InflateError::Short(len) => Error::CompressedShort { guest, host, len },
        })?;
        self.inflated = Some(host);
        Ok(())
    }

    /// Reads plain, possibly encrypted, data of guest range `guest..` from `host`.
    fn read_plain(&mut self, guest: u64, host: u64, buf: &mut [u8]) -> Result<(), Error<B::Error>> {
        if !self.header.is_encrypted() {
            self.io.read_at(host, buf)?;
            return Ok(());
        }
        let Some(cipher) = self.cipher.clone() else {
            return Err(Error::PasswordRequired);
        };
        // host ≡ guest (mod 512): clusters are 512-aligned (check_ref).
        let mut pos = 0usize;
        while pos < buf.len() {
            let g = guest.saturating_add(pos as u64);
            let h = host.saturating_add(pos as u64);
            let skew = usize::try_from(g % 512).unwrap_or(0);
            let rest = buf.get_mut(pos..).unwrap_or_default();
            if skew == 0 && rest.len() >= SECTOR {
                let whole = rest.len().saturating_sub(rest.len() % SECTOR);
                let dst = rest.get_mut(..whole).unwrap_or_default();
                self.io.read_at(h, dst)?;
                cipher.decrypt(g / 512, dst);
                pos = pos.saturating_add(whole);
            } else {
                let mut sector = [0u8; SECTOR];
                let sector_start = h.saturating_sub(skew as u64);
                self.io.read_at(sector_start, &mut sector)?;
                cipher.decrypt(g / 512, &mut sector);
                let n = SECTOR.saturating_sub(skew).min(rest.len());
                if let (Some(d), Some(s)) =
                    (rest.get_mut(..n), sector.get(skew..skew.saturating_add(n)))
                {
                    d.copy_from_slice(s);
                }
                pos = pos.saturating_add(n);
            }
        }
        Ok(())
    }

    /// Reads guest bytes `[offset, offset + buf.len())`, which must lie inside the
    /// virtual size.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error<B::Error>> {
        self.check_range(offset, buf.len() as u64)?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = offset.saturating_add(pos as u64);
            let remaining = (buf.len().saturating_sub(pos)) as u64;
            let (c, run) = self.extent(guest, remaining)?;
            let n = usize::try_from(run)
                .unwrap_or(usize::MAX)
                .min(buf.len().saturating_sub(pos))
                .max(1);
            let piece = buf.get_mut(pos..pos.saturating_add(n)).unwrap_or_default();
            match c {
                Cluster::Unallocated => self.backing.read_layer(guest, piece)?,
                Cluster::Plain { host } => self.read_plain(guest, host, piece)?,
                Cluster::Compressed { host, len } => {
                    self.inflate_into_scratch(guest, host, len)?;
                    let at = usize::try_from(self.geo.in_cluster(guest)).unwrap_or(0);
                    let src = self
                        .scratch
                        .as_mut()
                        .get(at..at.saturating_add(piece.len()))
                        .ok_or(Error::BufferTooSmall {
                            need: at.saturating_add(piece.len()),
                            got: 0,
                        })?;
                    piece.copy_from_slice(src);
                }
            }
            pos = pos.saturating_add(n);
        }
        Ok(())
    }
}

impl<B, K, S> Backing for Image<B, K, S>
where
    B: BlockIo,
    K: Backing<IoError = B::Error>,
    S: AsMut<[u8]>,
{
    type IoError = B::Error;
    fn size(&self) -> u64 {
        self.geo.size()
    }
    fn read_layer(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error<B::Error>> {
        let (inside, past) = split_at_size(offset, buf, self.geo.size());
        if !inside.is_empty() {
            Image::read_at(self, offset, inside)?;
        }
        past.fill(0);
        Ok(())
    }
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, Error<B::Error>> {
        if offset >= self.geo.size() {
            return Ok(Status {
                len: max,
                depth: 0,
                kind: StatusKind::Unallocated,
            });
        }
        let max = max.min(self.geo.size().saturating_sub(offset));
        let (c, len) = self.extent(offset, max)?;
        Ok(match c {
            // Past the end of the backing layer the zeros are this layer's (QEMU
            // reports depth 0 there, whatever lies further down).
            Cluster::Unallocated if self.backing.is_present() && offset < self.backing.size() => {
                let s = self.backing.status(offset, len)?;
                Status {
                    depth: s.depth.saturating_add(1),
                    ..s
                }
            }
            Cluster::Unallocated => Status {
                len,
                depth: 0,
                kind: StatusKind::Unallocated,
            },
            Cluster::Plain { host } if self.header.is_encrypted() => Status {
                len,
                depth: 0,
                kind: StatusKind::Encrypted { host },
            },
            Cluster::Plain { host } => Status {
                len,
                depth: 0,
                kind: StatusKind::Data { host },
            },
            Cluster::Compressed { host, .. } => Status {
                len,
                depth: 0,
                kind: StatusKind::Compressed { host },
            },
        })
    }
}
