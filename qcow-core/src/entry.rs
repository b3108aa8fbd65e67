//! L1 and L2 entries: named accessors instead of shifts scattered through the code.

use crate::header::Geometry;

/// Bit 63 of an L2 entry: the cluster is compressed.
pub const COMPRESSED_FLAG: u64 = 1 << 63;

/// An L1 entry: the offset of an L2 table, 0 when unallocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L1Entry(pub u64);

impl L1Entry {
    /// The L2 table's host offset, `None` when unallocated.
    pub fn l2_offset(self) -> Option<u64> {
        (self.0 != 0).then_some(self.0)
    }
}

/// An L2 entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L2Entry(pub u64);

/// What an L2 entry says about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Not allocated: reads come from the backing layer, or are zeros.
    Unallocated,
    /// A plain (possibly encrypted) cluster at `host`.
    Plain {
        /// Host offset of the cluster.
        host: u64,
    },
    /// A raw-deflate stream of `len` bytes at `host`.
    Compressed {
        /// Host offset of the stream (any byte).
        host: u64,
        /// Length of the stream (less than a cluster).
        len: u64,
    },
}

impl L2Entry {
    /// Whether bit 63 is set.
    pub fn is_compressed(self) -> bool {
        self.0 & COMPRESSED_FLAG != 0
    }

    /// Decodes the entry for an image of geometry `g`, as QEMU does: the compressed
    /// length is the `cluster_bits` bits below bit 63, the offset the bits below those.
    #[allow(clippy::arithmetic_side_effects)] // cluster_bits is 9..=16: shifts < 64.
    pub fn decode(self, g: &Geometry) -> Cluster {
        if self.0 == 0 {
            Cluster::Unallocated
        } else if self.is_compressed() {
            let shift = 63 - u32::from(g.cluster_bits());
            Cluster::Compressed {
                host: self.0 & ((1u64 << shift) - 1),
                len: (self.0 >> shift) & (g.cluster_size() - 1),
            }
        } else {
            Cluster::Plain { host: self.0 }
        }
    }

    /// The entry of a compressed cluster; `None` when `host` or `len` do not fit.
    #[allow(clippy::arithmetic_side_effects)] // cluster_bits is 9..=16: shifts < 64.
    pub fn compressed(g: &Geometry, host: u64, len: u64) -> Option<Self> {
        let shift = 63 - u32::from(g.cluster_bits());
        if host >= (1u64 << shift) || len == 0 || len >= g.cluster_size() {
            return None;
        }
        Some(L2Entry(COMPRESSED_FLAG | (len << shift) | host))
    }

    /// The entry of a plain cluster at `host`.
    pub fn plain(host: u64) -> Self {
        L2Entry(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_roundtrip() {
        let g = Geometry::new::<()>(16, 13, 1 << 20).unwrap();
        let e = L2Entry::compressed(&g, 123_456_789, 65535).unwrap_or_default();
        assert_eq!(
            e.decode(&g),
            Cluster::Compressed {
                host: 123_456_789,
                len: 65535
            }
        );
        assert_eq!(L2Entry::compressed(&g, 1, 65536), None);
        assert_eq!(L2Entry(0).decode(&g), Cluster::Unallocated);
        assert_eq!(L2Entry(4096).decode(&g), Cluster::Plain { host: 4096 });
    }
}
