//! How the guest content is stored, extent by extent: what `qemu-img map` shows.

use qcow_core::StatusKind;

use crate::{Disk, Error};

/// One extent of `qemu-img map --output=json`: a run of guest bytes stored alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extent {
    /// Guest offset.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// Layer holding it (0 = the image itself).
    pub depth: u32,
    /// Whether some layer holds it.
    pub present: bool,
    /// Whether it reads as zeros.
    pub zero: bool,
    /// Whether it holds data.
    pub data: bool,
    /// Whether it is compressed.
    pub compressed: bool,
    /// Host offset, for plain data (absent for compressed and encrypted data).
    pub offset: Option<u64>,
}

impl Extent {
    /// What is stored, wherever it is.
    fn kind(&self) -> (u32, bool, bool, bool, bool) {
        let e = self;
        (e.depth, e.present, e.zero, e.data, e.compressed)
    }

    /// Whether `next` extends this extent: adjacent, stored alike, and (for plain
    /// data) contiguous in the file.
    fn continues(&self, next: &Extent) -> bool {
        self.start.checked_add(self.length) == Some(next.start)
            && self.kind() == next.kind()
            && match (self.offset, next.offset) {
                (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// Calls `f` on each merged extent of `disk`, in order, as soon as it is complete:
/// memory stays constant however many extents a (hostile) image has. The first error,
/// of the disk or of `f`, ends the walk.
pub fn for_each_extent<E: From<Error>>(
    disk: &Disk,
    mut f: impl FnMut(&Extent) -> Result<(), E>,
) -> Result<(), E> {
    let size = disk.size();
    let mut cur: Option<Extent> = None;
    let mut at = 0u64;
    while at < size {
        let s = disk.block_status(at, size - at)?;
        let len = s.len.clamp(1, size - at);
        let (present, zero, data, compressed, offset) = match s.kind {
            StatusKind::Unallocated => (false, true, false, false, None),
            StatusKind::Data { host } => (true, false, true, false, Some(host)),
            StatusKind::Hole { host } => (true, true, false, false, Some(host)),
            // QEMU 10 reports encrypted clusters as data without an offset, not
            // as compressed.
            StatusKind::Encrypted { .. } => (true, false, true, false, None),
            StatusKind::Compressed { .. } => (true, false, true, true, None),
        };
        let e = Extent {
            start: at,
            length: len,
            depth: s.depth,
            present,
            zero,
            data,
            compressed,
            offset,
        };
        match &mut cur {
            Some(last) if last.continues(&e) => last.length = last.length.saturating_add(len),
            _ => {
                if let Some(done) = cur.replace(e) {
                    f(&done)?;
                }
            }
        }
        at = at.saturating_add(len);
    }
    match cur {
        Some(done) => f(&done),
        None => Ok(()),
    }
}
