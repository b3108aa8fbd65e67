//! The `BlockIo` over a 512-byte-sector device that qcow-core/README.md shows
//! firmware authors, compiled and tested here. The part between the README markers
//! is copied into the README verbatim; `readme_shows_this_code` keeps the two equal.
// The crate's no-panic lints are for the library; this is example and test code.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

// README:begin
use embedded_io::{ErrorKind, ErrorType};
use qcow_core::BlockIo;

/// Bytes per sector.
pub const SECTOR: usize = 512;

/// What a block driver offers (an SD card, a virtio-blk queue, a BIOS or UEFI
/// call): whole sectors only.
pub trait SectorDevice {
    /// The driver's error.
    type Error: embedded_io::Error;
    /// Sectors on the device (or partition).
    fn sectors(&self) -> u64;
    /// Reads the sectors from `lba` on into `buf`, a whole number of sectors long.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Writes `buf`, a whole number of sectors long, from sector `lba` on.
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), Self::Error>;
    /// Makes what was written durable.
    fn flush(&mut self) -> Result<(), Self::Error>;
}

/// Errors of [`SectorIo`]: the driver's, or a request past the device's end.
#[derive(Debug)]
pub enum SectorError<E> {
    /// The driver failed.
    Device(E),
    /// The request reaches past the last sector.
    OutOfRange,
}

impl<E: embedded_io::Error> embedded_io::Error for SectorError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            SectorError::Device(e) => e.kind(),
            SectorError::OutOfRange => ErrorKind::InvalidInput,
        }
    }
}

/// A byte-addressed [`BlockIo`] over a [`SectorDevice`]. Whole sectors go straight
/// to and from the caller's buffer; a request's unaligned head or tail goes through
/// one sector on the stack (read, and for a write, modify and write back).
///
/// `len` is the length of the image stored on the device: the whole device when an
/// image fills a partition (qcow never reads past its own metadata and clusters), or
/// the image's file length when known. Writes past it grow it, up to the device.
pub struct SectorIo<D> {
    dev: D,
    len: u64,
}

impl<D: SectorDevice> SectorIo<D> {
    /// The device holding an image of `len` bytes (0 to create one).
    pub fn new(dev: D, len: u64) -> Result<Self, SectorError<D::Error>> {
        let io = SectorIo { dev, len };
        if len > io.capacity() {
            return Err(SectorError::OutOfRange);
        }
        Ok(io)
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.dev
    }

    fn capacity(&self) -> u64 {
        self.dev.sectors().saturating_mul(SECTOR as u64)
    }

    /// The end of `[offset, offset + n)`, when it lies on the device.
    fn end(&self, offset: u64, n: usize) -> Result<u64, SectorError<D::Error>> {
        offset
            .checked_add(n as u64)
            .filter(|&end| end <= self.capacity())
            .ok_or(SectorError::OutOfRange)
    }
}

impl<D: SectorDevice> ErrorType for SectorIo<D> {
    type Error = SectorError<D::Error>;
}

/// The pieces of `[offset, offset + len)` as `(lba, skew, done, n)`: `n` bytes at
/// `skew` in sector `lba`, `done` bytes into the range; a piece with `skew == 0` and
/// `n` a multiple of [`SECTOR`] is whole sectors, any other lies inside one sector.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0;
    core::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset + done as u64;
        let (lba, skew) = (at / SECTOR as u64, (at % SECTOR as u64) as usize);
        let rest = len - done;
        let n = if skew == 0 && rest >= SECTOR {
            rest - rest % SECTOR
        } else {
            (SECTOR - skew).min(rest)
        };
        let piece = (lba, skew, done, n);
        done += n;
        Some(piece)
    })
}

impl<D: SectorDevice> BlockIo for SectorIo<D> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.end(offset, buf.len())?;
        for (lba, skew, done, n) in pieces(offset, buf.len()) {
            let part = &mut buf[done..done + n];
            if skew == 0 && n % SECTOR == 0 {
                // Aligned: whole sectors straight into the caller's buffer.
                self.dev.read(lba, part).map_err(SectorError::Device)?;
            } else {
                // Unaligned head or short tail: read the sector, copy our part.
                let mut sector = [0u8; SECTOR];
                self.dev
                    .read(lba, &mut sector)
                    .map_err(SectorError::Device)?;
                part.copy_from_slice(&sector[skew..skew + n]);
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Self::Error> {
        let end = self.end(offset, buf.len())?;
        for (lba, skew, done, n) in pieces(offset, buf.len()) {
            let part = &buf[done..done + n];
            if skew == 0 && n % SECTOR == 0 {
                self.dev.write(lba, part).map_err(SectorError::Device)?;
            } else {
                // Read-modify-write of one sector.
                let mut sector = [0u8; SECTOR];
                self.dev
                    .read(lba, &mut sector)
                    .map_err(SectorError::Device)?;
                sector[skew..skew + n].copy_from_slice(part);
                self.dev.write(lba, &sector).map_err(SectorError::Device)?;
            }
        }
        self.len = self.len.max(end);
        Ok(())
    }

    fn len(&mut self) -> Result<u64, Self::Error> {
        Ok(self.len)
    }

    fn set_len(&mut self, len: u64) -> Result<(), Self::Error> {
        if len > self.capacity() {
            return Err(SectorError::OutOfRange);
        }
        // Growing exposes old sector contents: zero them, as a file would read.
        let zeros = [0u8; SECTOR];
        while self.len < len {
            let n = (len - self.len).min(SECTOR as u64 - self.len % SECTOR as u64);
            self.write_at(self.len, &zeros[..n as usize])?;
        }
        self.len = len;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.dev.flush().map_err(SectorError::Device)
    }
}
// README:end

// README:begin
use qcow_core::{Error, Image, NoBacking};

/// The first sector of the guest disk inside the qcow image that fills a partition:
/// no allocator, 8 KiB of scratch on the stack.
pub fn guest_mbr<D: SectorDevice>(
    dev: D,
    partition_bytes: u64,
) -> Result<[u8; SECTOR], Error<SectorError<D::Error>>> {
    let io = SectorIo::new(dev, partition_bytes)?;
    // 2 × 4 KiB, for qemu-img's default clusters; 128 KiB serves every geometry
    // (Image::open says BufferTooSmall otherwise).
    let mut scratch = [0u8; 8 * 1024];
    let mut image = Image::open(io, NoBacking::new(), &mut scratch[..])?;
    let mut mbr = [0u8; SECTOR];
    image.read_at(0, &mut mbr)?;
    Ok(mbr)
}
// README:end

/// A RAM disk that only takes whole, in-range sectors, and counts requests.
#[derive(Clone)]
struct RamDisk {
    data: Vec<u8>,
    reads: usize,
    writes: usize,
}

impl RamDisk {
    fn new(sectors: usize) -> Self {
        // Old garbage, not zeros: set_len must zero what it exposes.
        RamDisk {
            data: (0..sectors * SECTOR).map(|i| (i * 7 + 3) as u8).collect(),
            reads: 0,
            writes: 0,
        }
    }
    fn range(&self, lba: u64, len: usize) -> std::ops::Range<usize> {
        assert!(
            len > 0 && len.is_multiple_of(SECTOR),
            "partial sector request: {len} bytes"
        );
        let start = lba as usize * SECTOR;
        assert!(start + len <= self.data.len(), "request past the device");
        start..start + len
    }
}

impl SectorDevice for RamDisk {
    type Error = ErrorKind;
    fn sectors(&self) -> u64 {
        (self.data.len() / SECTOR) as u64
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), ErrorKind> {
        self.reads += 1;
        let r = self.range(lba, buf.len());
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), ErrorKind> {
        self.writes += 1;
        let r = self.range(lba, buf.len());
        self.data[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

/// xorshift64: reproducible offsets and data.
fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn unaligned_requests_match_a_byte_array() {
    let sectors = 64;
    let mut io = SectorIo::new(RamDisk::new(sectors), (sectors * SECTOR) as u64).unwrap();
    let mut model = io.dev.data.clone();
    let mut s = 0x1234_5678_9abc_def1;
    for round in 0..2000 {
        let len = (rng(&mut s) % 1500) as usize;
        let offset = rng(&mut s) % (model.len() - len) as u64;
        let range = offset as usize..offset as usize + len;
        if round % 2 == 0 {
            let data: Vec<u8> = (0..len).map(|_| rng(&mut s) as u8).collect();
            io.write_at(offset, &data).unwrap();
            model[range].copy_from_slice(&data);
        } else {
            let mut got = vec![0u8; len];
            io.read_at(offset, &mut got).unwrap();
            assert_eq!(got, model[range], "read of {len} bytes at {offset}");
        }
    }
    assert_eq!(io.into_inner().data, model);
}

#[test]
fn aligned_requests_are_one_device_call() {
    let mut io = SectorIo::new(RamDisk::new(16), 0).unwrap();
    io.write_at(1024, &[1u8; 4096]).unwrap();
    let mut buf = [0u8; 4096];
    io.read_at(1024, &mut buf).unwrap();
    let dev = io.into_inner();
    assert_eq!((dev.reads, dev.writes), (1, 1));
}

#[test]
fn past_the_device_is_an_error() {
    let mut io = SectorIo::new(RamDisk::new(2), 0).unwrap();
    let mut buf = [0u8; 2];
    assert!(matches!(
        io.read_at(1023, &mut buf),
        Err(SectorError::OutOfRange)
    ));
    assert!(matches!(
        io.write_at(u64::MAX, &buf),
        Err(SectorError::OutOfRange)
    ));
    assert!(matches!(io.set_len(1025), Err(SectorError::OutOfRange)));
    assert!(SectorIo::new(RamDisk::new(2), 1025).is_err());
}

#[test]
fn growing_reads_zeros_and_writes_grow() {
    let mut io = SectorIo::new(RamDisk::new(8), 0).unwrap();
    io.set_len(1000).unwrap();
    let mut buf = vec![1u8; 1000];
    io.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    io.write_at(1500, b"abc").unwrap();
    assert_eq!(io.len().unwrap(), 1503);
    io.set_len(10).unwrap();
    assert_eq!(io.len().unwrap(), 10);
}

/// A qcow image written through the sector device by qcow-core's write path, then
/// read back through a fresh `SectorIo` that spans the whole partition.
#[test]
fn qcow_image_on_a_sector_device() {
    use qcow_core::image::scratch_len;
    use qcow_core::write::{create, CreateOptions};

    let size = 3 * 1024 * 1024 + 512;
    let mut io = SectorIo::new(RamDisk::new(16 * 1024), 0).unwrap();
    let header = create(&mut io, &CreateOptions::new(size)).unwrap();
    let scratch = vec![0u8; scratch_len(&header.geometry())];
    let mut image = Image::open(io, NoBacking::new(), scratch).unwrap();
    let mut model = vec![0u8; size as usize];
    let mut s = 0x0bad_cafe_f00d_d00d;
    for _ in 0..200 {
        let len = 1 + (rng(&mut s) % 20_000) as usize;
        let offset = rng(&mut s) % (size - len as u64);
        let data: Vec<u8> = (0..len).map(|_| rng(&mut s) as u8).collect();
        image.write_at(offset, &data).unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
    }
    let (io, _) = image.into_parts();
    let dev = io.into_inner();
    let partition = 16 * 1024 * SECTOR as u64;
    assert_eq!(
        guest_mbr(dev.clone(), partition).unwrap()[..],
        model[..SECTOR]
    );

    // As a bootloader would: the whole partition, no file length, scratch on the stack.
    let partition = SectorIo::new(dev, partition).unwrap();
    let mut scratch = [0u8; 8192];
    let mut image = Image::open(partition, NoBacking::new(), &mut scratch[..]).unwrap();
    let mut got = vec![0u8; size as usize];
    for (i, chunk) in got.chunks_mut(7777).enumerate() {
        image.read_at(i as u64 * 7777, chunk).unwrap();
    }
    assert!(got == model, "guest content differs");
}

#[test]
fn readme_shows_this_code() {
    let this = include_str!("sector_io.rs");
    let readme = include_str!("../README.md");
    let regions: Vec<&str> = this
        .split("// README:begin\n")
        .skip(1)
        .map(|rest| rest.split("// README:end").next().unwrap())
        .collect();
    assert_eq!(regions.len(), 2);
    for code in regions {
        assert!(
            readme.contains(code),
            "qcow-core/README.md must show this code from tests/sector_io.rs verbatim:\n{code}"
        );
    }
}
