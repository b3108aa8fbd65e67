//! The 48-byte big-endian header: decoding, validation, encoding, and the geometry
//! derived from it.

use crate::error::Error;

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// The only version this format has.
pub const VERSION: u32 = 1;
/// Bytes in the header.
pub const HEADER_SIZE: usize = 48;
/// The longest backing file name QEMU reads.
pub const MAX_BACKING_NAME: usize = 1023;
/// `crypt_method` of an unencrypted image.
pub const CRYPT_NONE: u32 = 0;
/// `crypt_method` of an AES-CBC encrypted image.
pub const CRYPT_AES: u32 = 1;
/// QEMU's bound on L1 entries (`INT_MAX / sizeof(uint64_t)`).
pub const MAX_L1_ENTRIES: u64 = (i32::MAX as u64) / 8;

/// The header fields as stored (magic and version are implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the backing file name, 0 when there is none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// Modification time; QEMU writes 0 and ignores it.
    pub mtime: u32,
    /// Virtual size in bytes, as stored (QEMU rounds it down to 512).
    pub size: u64,
    /// log2 of the cluster size, 9..=16.
    pub cluster_bits: u8,
    /// log2 of the entries per L2 table, 6..=13.
    pub l2_bits: u8,
    /// [`CRYPT_NONE`] or [`CRYPT_AES`].
    pub crypt_method: u32,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
}

fn be32(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at.saturating_add(4)) {
        v.copy_from_slice(s);
    }
    u32::from_be_bytes(v)
}

fn be64(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at.saturating_add(8)) {
        v.copy_from_slice(s);
    }
    u64::from_be_bytes(v)
}

impl Header {
    /// Decodes and validates the header as QEMU's `qcow_open` does: magic, version,
    /// size, cluster bits, L2 bits, crypt method, the L1 size bound, the backing name
    /// length. Checks against the file's length are [`Header::validate_layout`].
    pub fn decode<E>(b: &[u8; HEADER_SIZE]) -> Result<Self, Error<E>> {
        let magic = be32(b, 0);
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = be32(b, 4);
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let h = Header {
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            mtime: be32(b, 20),
            size: be64(b, 24),
            cluster_bits: b[32],
            l2_bits: b[33],
            crypt_method: be32(b, 36),
            l1_table_offset: be64(b, 40),
        };
        h.validate()?;
        Ok(h)
    }

    /// The checks of [`Header::decode`] that do not need the file.
    pub fn validate<E>(&self) -> Result<(), Error<E>> {
        if self.size <= 1 {
            return Err(Error::SizeTooSmall(self.size));
        }
        check_bits(self.cluster_bits, self.l2_bits)?;
        if self.crypt_method > CRYPT_AES {
            return Err(Error::CryptMethod(self.crypt_method));
        }
        Geometry::new(self.cluster_bits, self.l2_bits, self.size)?;
        if self.backing_file_offset != 0 && self.backing_file_size as usize > MAX_BACKING_NAME {
            return Err(Error::BackingNameTooLong(self.backing_file_size));
        }
        Ok(())
    }

    /// Checks that the L1 table and the backing file name lie inside a file of
    /// `file_len` bytes, past the header, and that the L1 table is 8-byte aligned.
    /// QEMU reads zeros where these lie past the end; we refuse.
    pub fn validate_layout<E>(&self, file_len: u64) -> Result<(), Error<E>> {
        let g = self.geometry();
        let l1_len = g.l1_bytes();
        if self.l1_table_offset < HEADER_SIZE as u64 && l1_len > 0 {
            return Err(Error::L1OverlapsHeader(self.l1_table_offset));
        }
        if !self.l1_table_offset.is_multiple_of(8) {
            return Err(Error::L1Misaligned(self.l1_table_offset));
        }
        match self.l1_table_offset.checked_add(l1_len) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(Error::L1OutOfFile {
                    offset: self.l1_table_offset,
                    len: l1_len,
                    file_len,
                })
            }
        }
        if let Some(r) = self.backing_name_range() {
            if r.start < HEADER_SIZE as u64 || r.end > file_len {
                return Err(Error::BackingNameOutOfFile {
                    offset: self.backing_file_offset,
                    len: self.backing_file_size,
                    file_len,
                });
            }
        } else if self.backing_file_offset != 0 {
            return Err(Error::BackingNameOutOfFile {
                offset: self.backing_file_offset,
                len: self.backing_file_size,
                file_len,
            });
        }
        Ok(())
    }

    /// Where the backing file name lies, when there is one (None also when its end
    /// overflows).
    pub fn backing_name_range(&self) -> Option<core::ops::Range<u64>> {
        if self.backing_file_offset == 0 {
            return None;
        }
        let end = self
            .backing_file_offset
            .checked_add(u64::from(self.backing_file_size))?;
        Some(self.backing_file_offset..end)
    }

    /// Whether the image has a backing file.
    pub fn has_backing(&self) -> bool {
        self.backing_file_offset != 0
    }

    /// Whether the image is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.crypt_method == CRYPT_AES
    }

    /// The geometry of the header. Meant for a validated one (every header
    /// [`Header::decode`] returns, or one [`Header::validate`] accepts): then it is
    /// [`Geometry::new`] of its fields. Any other header still gets a sound geometry,
    /// never a panic or an overflow: the bits clamped into range (9..=16, 6..=13) and,
    /// when the size is too large for them, an empty image (size 0, no L1 entry).
    pub fn geometry(&self) -> Geometry {
        let cluster_bits = self.cluster_bits.clamp(9, 16);
        let l2_bits = self.l2_bits.clamp(6, 13);
        Geometry::new::<()>(cluster_bits, l2_bits, self.size).unwrap_or(Geometry {
            cluster_bits,
            l2_bits,
            l1_size: 0,
            size: 0,
        })
    }

    /// The 48 bytes of this header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let fields: [(usize, &[u8]); 10] = [
            (0, &MAGIC.to_be_bytes()),
            (4, &VERSION.to_be_bytes()),
            (8, &self.backing_file_offset.to_be_bytes()),
            (16, &self.backing_file_size.to_be_bytes()),
            (20, &self.mtime.to_be_bytes()),
            (24, &self.size.to_be_bytes()),
            (32, &[self.cluster_bits]),
            (33, &[self.l2_bits]),
            (36, &self.crypt_method.to_be_bytes()),
            (40, &self.l1_table_offset.to_be_bytes()),
        ];
        for (at, v) in fields {
            if let Some(d) = b.get_mut(at..at.saturating_add(v.len())) {
                d.copy_from_slice(v);
            }
        }
        b
    }
}

/// Checks the cluster bits (9..=16) and the L2 bits (6..=13).
fn check_bits<E>(cluster_bits: u8, l2_bits: u8) -> Result<(), Error<E>> {
    if !(9..=16).contains(&cluster_bits) {
        return Err(Error::ClusterBits(cluster_bits));
    }
    if !(6..=13).contains(&l2_bits) {
        return Err(Error::L2Bits(l2_bits));
    }
    Ok(())
}

/// Number of L1 entries for `size` bytes, or `None` when QEMU says "image too large".
pub fn l1_entries(size: u64, cluster_bits: u8, l2_bits: u8) -> Option<u64> {
    let shift = u32::from(cluster_bits).checked_add(u32::from(l2_bits))?;
    let span = 1u64.checked_shl(shift)?;
    let n = size.checked_add(span.checked_sub(1)?)?.checked_shr(shift)?;
    // QEMU rejects size > UINT64_MAX - span, a hair stricter than the overflow above.
    if size > u64::MAX.checked_sub(span)? || n > MAX_L1_ENTRIES {
        return None;
    }
    Some(n)
}

/// The per-cluster pieces of a guest range ([`Geometry::pieces`]).
#[derive(Debug, Clone)]
pub struct Pieces {
    cluster: usize,
    offset: u64,
    len: usize,
    pos: usize,
}

impl Iterator for Pieces {
    type Item = (u64, usize, core::ops::Range<usize>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.len {
            return None;
        }
        let guest = self.offset.saturating_add(self.pos as u64);
        let mask = (self.cluster as u64).saturating_sub(1);
        let in_cl = usize::try_from(guest & mask).unwrap_or(0);
        let n = self
            .cluster
            .saturating_sub(in_cl)
            .min(self.len.saturating_sub(self.pos));
        let range = self.pos..self.pos.saturating_add(n);
        self.pos = range.end;
        Some((guest, in_cl, range))
    }
}

/// Sizes derived from a validated header: clusters of 512 bytes to 64 KiB, L2 tables
/// of 64 to 8192 entries, an L1 table of at most [`MAX_L1_ENTRIES`] covering the
/// size. Made only by [`Geometry::new`], which checks its values (or
/// [`Header::geometry`]), so the shifts below cannot overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    cluster_bits: u8,
    l2_bits: u8,
    l1_size: u64,
    size: u64,
}

#[allow(clippy::arithmetic_side_effects)] // bits ≤ 16 and ≤ 13: every shift fits in u64.
impl Geometry {
    /// The geometry of an image of `size` bytes as a header stores it, with clusters
    /// of `2^cluster_bits` bytes and L2 tables of `2^l2_bits` entries, checked as
    /// [`Header::validate`] checks these fields: [`Error::ClusterBits`] unless
    /// 9..=16, [`Error::L2Bits`] unless 6..=13, [`Error::ImageTooLarge`] when QEMU
    /// finds the image too large (more than [`MAX_L1_ENTRIES`] L1 entries). Its
    /// [`size`](Geometry::size) is `size` rounded down to 512, as QEMU reads it.
    pub fn new<E>(cluster_bits: u8, l2_bits: u8, size: u64) -> Result<Self, Error<E>> {
        check_bits(cluster_bits, l2_bits)?;
        let l1_size = l1_entries(size, cluster_bits, l2_bits).ok_or(Error::ImageTooLarge(size))?;
        Ok(Geometry {
            cluster_bits,
            l2_bits,
            l1_size,
            size: size & !511,
        })
    }
    /// log2 of the cluster size (9..=16).
    pub fn cluster_bits(&self) -> u8 {
        self.cluster_bits
    }
    /// log2 of the entries per L2 table (6..=13).
    pub fn l2_bits(&self) -> u8 {
        self.l2_bits
    }
    /// Entries in the L1 table.
    pub fn l1_size(&self) -> u64 {
        self.l1_size
    }
    /// Virtual size as QEMU sees it (the header's size rounded down to 512).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
    /// Bytes per cluster, as usize.
    pub fn cluster_len(&self) -> usize {
        1usize << self.cluster_bits
    }
    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        1u64 << self.l2_bits
    }
    /// Bytes per L2 table.
    pub fn l2_bytes(&self) -> u64 {
        8u64 << self.l2_bits
    }
    /// Guest bytes one L2 table covers.
    pub fn l2_span(&self) -> u64 {
        1u64 << (self.cluster_bits + self.l2_bits)
    }
    /// Bytes in the L1 table (≤ 2 GiB by [`MAX_L1_ENTRIES`]).
    pub fn l1_bytes(&self) -> u64 {
        self.l1_size.saturating_mul(8)
    }
    /// The L1 index of a guest offset.
    pub fn l1_index(&self, guest: u64) -> u64 {
        guest >> (self.cluster_bits + self.l2_bits)
    }
    /// The L2 index of a guest offset.
    pub fn l2_index(&self, guest: u64) -> u64 {
        (guest >> self.cluster_bits) & (self.l2_entries() - 1)
    }
    /// Offset of a guest byte inside its cluster.
    pub fn in_cluster(&self, guest: u64) -> u64 {
        guest & (self.cluster_size() - 1)
    }
    /// The pieces of a guest range `[offset, offset + len)` that fall in one cluster
    /// each, in order: `(guest offset, offset inside its cluster, range of the request)`.
    pub fn pieces(&self, offset: u64, len: usize) -> Pieces {
        Pieces {
            cluster: self.cluster_len(),
            offset,
            len,
            pos: 0,
        }
    }
    /// The largest host offset a compressed L2 entry can hold, plus one.
    pub fn compressed_offset_limit(&self) -> u64 {
        1u64 << (63 - self.cluster_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Header {
        Header {
            backing_file_offset: 0,
            backing_file_size: 0,
            mtime: 0,
            size: 1 << 20,
            cluster_bits: 12,
            l2_bits: 9,
            crypt_method: 0,
            l1_table_offset: 48,
        }
    }

    fn dec(h: &Header) -> Result<Header, Error<()>> {
        Header::decode::<()>(&h.encode())
    }

    #[test]
    fn roundtrip() {
        assert_eq!(dec(&base()), Ok(base()));
    }

    #[test]
    fn rejections() {
        let mut b = base().encode();
        b[3] = 0;
        assert_eq!(Header::decode::<()>(&b), Err(Error::BadMagic(0x5146_4900)));
        let mut b = base().encode();
        b[7] = 2;
        assert_eq!(Header::decode::<()>(&b), Err(Error::UnsupportedVersion(2)));
        for (f, e) in [
            (Header { size: 1, ..base() }, Error::SizeTooSmall(1)),
            (Header { size: 0, ..base() }, Error::SizeTooSmall(0)),
            (
                Header {
                    cluster_bits: 8,
                    ..base()
                },
                Error::ClusterBits(8),
            ),
            (
                Header {
                    cluster_bits: 17,
                    ..base()
                },
                Error::ClusterBits(17),
            ),
            (
                Header {
                    cluster_bits: 255,
                    ..base()
                },
                Error::ClusterBits(255),
            ),
            (
                Header {
                    l2_bits: 5,
                    ..base()
                },
                Error::L2Bits(5),
            ),
            (
                Header {
                    l2_bits: 14,
                    ..base()
                },
                Error::L2Bits(14),
            ),
            (
                Header {
                    crypt_method: 2,
                    ..base()
                },
                Error::CryptMethod(2),
            ),
            (
                Header {
                    size: u64::MAX,
                    ..base()
                },
                Error::ImageTooLarge(u64::MAX),
            ),
            (
                Header {
                    size: 1 << 52,
                    cluster_bits: 9,
                    l2_bits: 6,
                    ..base()
                },
                Error::ImageTooLarge(1 << 52),
            ),
            (
                Header {
                    backing_file_offset: 48,
                    backing_file_size: 1024,
                    ..base()
                },
                Error::BackingNameTooLong(1024),
            ),
        ] {
            assert_eq!(dec(&f), Err(e), "{f:?}");
        }
    }

    #[test]
    fn layout() {
        let h = Header {
            size: 1 << 30,
            ..base()
        };
        // 512 L1 entries = 4096 bytes at offset 48.
        assert_eq!(h.validate_layout::<()>(4144), Ok(()));
        assert_eq!(
            h.validate_layout::<()>(4143),
            Err(Error::L1OutOfFile {
                offset: 48,
                len: 4096,
                file_len: 4143
            })
        );
        let h2 = Header {
            l1_table_offset: 52,
            ..h
        };
        assert_eq!(
            h2.validate_layout::<()>(1 << 20),
            Err(Error::L1Misaligned(52))
        );
        let h3 = Header {
            l1_table_offset: 8,
            ..h
        };
        assert_eq!(
            h3.validate_layout::<()>(1 << 20),
            Err(Error::L1OverlapsHeader(8))
        );
        let h4 = Header {
            l1_table_offset: u64::MAX - 7,
            ..h
        };
        assert!(matches!(
            h4.validate_layout::<()>(1 << 20),
            Err(Error::L1OutOfFile { .. })
        ));
        let h5 = Header {
            backing_file_offset: 4100,
            backing_file_size: 100,
            l1_table_offset: 8192,
            ..h
        };
        assert!(matches!(h5.validate_layout::<()>(8192 + 4096), Ok(())));
        assert!(matches!(
            h5.validate_layout::<()>(4150),
            Err(Error::L1OutOfFile { .. })
        ));
        let h6 = Header {
            backing_file_offset: u64::MAX,
            backing_file_size: 10,
            ..h
        };
        assert!(matches!(
            h6.validate_layout::<()>(1 << 20),
            Err(Error::BackingNameOutOfFile { .. })
        ));
    }

    #[test]
    fn geometry() {
        let g = Header {
            size: 1000,
            ..base()
        }
        .geometry();
        assert_eq!(g.size(), 512);
        assert_eq!(g.l1_size(), 1);
        assert_eq!(g.l2_span(), 2 << 20);
    }

    #[test]
    fn geometry_is_checked() {
        let g = Geometry::new::<()>(12, 9, 1000).unwrap();
        assert_eq!(
            (g.cluster_bits(), g.l2_bits(), g.l1_size(), g.size()),
            (12, 9, 1, 512)
        );
        assert_eq!(Geometry::new::<()>(8, 9, 1000), Err(Error::ClusterBits(8)));
        assert_eq!(
            Geometry::new::<()>(17, 9, 1000),
            Err(Error::ClusterBits(17))
        );
        assert_eq!(Geometry::new::<()>(12, 5, 1000), Err(Error::L2Bits(5)));
        assert_eq!(Geometry::new::<()>(12, 14, 1000), Err(Error::L2Bits(14)));
        assert_eq!(
            Geometry::new::<()>(9, 6, 1 << 52),
            Err(Error::ImageTooLarge(1 << 52))
        );
        // A header validate refuses still has a geometry whose shifts cannot overflow.
        let g = Header {
            cluster_bits: 255,
            l2_bits: 255,
            ..base()
        }
        .geometry();
        assert_eq!((g.cluster_bits(), g.l2_bits(), g.l1_size()), (16, 13, 1));
        assert_eq!(g.compressed_offset_limit(), 1 << 47);
        let g = Header {
            size: u64::MAX,
            cluster_bits: 0,
            ..base()
        }
        .geometry();
        assert_eq!((g.cluster_bits(), g.l1_size(), g.size()), (9, 0, 0));
        assert_eq!(g.l1_index(u64::MAX), u64::MAX >> 18);
    }
}
