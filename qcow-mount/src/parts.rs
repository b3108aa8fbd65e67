//! Partition tables (MBR with its extended chain, GPT behind a protective MBR), read by a
//! strict parser of our own: a pure function over a [`Source`] of bytes.
//!
//! Lying tables never crash it and never make it allocate more than the table's real
//! size (bounded by [`MAX_GPT_ENTRIES_BYTES`] and [`MAX_LOGICAL`]): entries that reach
//! past the end of the disk, overlap an earlier entry, or sit outside their container
//! are dropped with a warning; a GPT whose header or entry array fails its CRC32 is
//! replaced by its backup, or ignored (the disk then shows no partitions).

use std::collections::{BTreeMap, BTreeSet};

/// Bytes per sector: the tables address 512-byte sectors.
pub const SECTOR: u64 = 512;
/// The most logical partitions followed along an EBR chain.
pub const MAX_LOGICAL: usize = 256;
/// The largest GPT entry array read (QEMU and Linux see 128 × 128 bytes in practice).
pub const MAX_GPT_ENTRIES_BYTES: u64 = 1 << 20;

/// Something the table is read from: the guest disk.
pub trait Source {
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; `false` when that cannot be read.
    fn read(&self, offset: u64, buf: &mut [u8]) -> bool;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        match start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Which kind of table was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No table (or none we trust).
    None,
    /// A DOS/MBR table.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

/// One partition: its number (`p1` is 1) and its bytes on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based: GPT entry index + 1; MBR slot 1–4, logical partitions from 5.
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes (at least one sector).
    pub len: u64,
}

/// What [`parse`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The kind of table.
    pub kind: Kind,
    /// The valid partitions, by number.
    pub parts: Vec<Partition>,
    /// One line per thing ignored.
    pub warnings: Vec<String>,
}

/// Reads the partition table of the disk `src`.
pub fn parse(src: &(impl Source + ?Sized)) -> Table {
    let mut t = Table {
        kind: Kind::None,
        parts: Vec::new(),
        warnings: Vec::new(),
    };
    let mut mbr = [0u8; 512];
    if src.size() < 2 * SECTOR || !src.read(0, &mut mbr) || mbr[510..512] != [0x55, 0xAA] {
        return t;
    }
    let slots = mbr_slots(&mbr);
    // A boot sector without a table (say, a FAT file system) has other bytes here.
    if slots.iter().any(|s| s.status & 0x7f != 0) {
        return t;
    }
    if slots.iter().any(|s| s.kind == 0xEE) {
        t.kind = Kind::Gpt;
        gpt(src, &mut t);
    } else {
        t.kind = Kind::Mbr;
        mbr_table(src, &slots, &mut t);
    }
    t.parts.sort_by_key(|p| p.number);
    t
}

/// An MBR or EBR slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    status: u8,
    kind: u8,
    lba: u64,
    sectors: u64,
}

fn le32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, |a| u64::from(u32::from_le_bytes(a)))
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_le_bytes)
}

fn mbr_slots(sector: &[u8; 512]) -> [Slot; 4] {
    core::array::from_fn(|i| {
        let at = 446 + 16 * i;
        Slot {
            status: sector[at],
            kind: sector[at + 4],
            lba: le32(sector, at + 8),
            sectors: le32(sector, at + 12),
        }
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

/// Accepted extents (start → end, bytes), disjoint: every insert is checked with
/// `overlaps` first, so the extent starting last before `end` is the only candidate.
#[derive(Default)]
struct Extents(BTreeMap<u64, u64>);

impl Extents {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        let before = self.0.range(..end).next_back();
        before.is_some_and(|(_, &e)| e > start)
    }
    fn insert(&mut self, start: u64, end: u64) {
        self.0.insert(start, end);
    }
}

/// Adds a partition of `sectors` sectors at sector `lba` when it is sane.
#[allow(clippy::too_many_arguments)]
fn accept(
    t: &mut Table,
    seen: &mut Extents,
    number: u32,
    lba: u64,
    sectors: u64,
    lo: u64,
    hi: u64,
    what: &str,
) {
    let (Some(start), Some(len)) = (lba.checked_mul(SECTOR), sectors.checked_mul(SECTOR)) else {
        t.warnings
            .push(format!("{what} {number}: out of range, ignored"));
        return;
    };
    let Some(end) = start.checked_add(len) else {
        t.warnings
            .push(format!("{what} {number}: out of range, ignored"));
        return;
    };
    if len == 0 || start < lo || end > hi {
        t.warnings.push(format!(
            "{what} {number}: sectors {lba}+{sectors} lie outside {}..{}, ignored",
            lo / SECTOR,
            hi / SECTOR
        ));
        return;
    }
    if seen.overlaps(start, end) {
        t.warnings.push(format!(
            "{what} {number}: sectors {lba}+{sectors} overlap an earlier partition, ignored"
        ));
        return;
    }
    seen.insert(start, end);
    t.parts.push(Partition { number, start, len });
}

fn mbr_table(src: &(impl Source + ?Sized), slots: &[Slot; 4], t: &mut Table) {
    let size = src.size() / SECTOR * SECTOR;
    let mut seen = Extents::default();
    // The MBR itself is sector 0.
    seen.insert(0, SECTOR);
    let mut extended = None;
    for (i, s) in slots.iter().enumerate() {
        if s.kind == 0 || s.sectors == 0 {
            continue;
        }
        let number = i as u32 + 1;
        if is_extended(s.kind) {
            if extended.is_some() {
                t.warnings.push(format!(
                    "partition {number}: a second extended partition, ignored"
                ));
                continue;
            }
            let (start, end) = (s.lba * SECTOR, (s.lba + s.sectors) * SECTOR);
            if s.lba == 0 || end > size || seen.overlaps(start, end) {
                t.warnings.push(format!(
                    "partition {number}: extended partition at sectors {}+{} is out of place, ignored",
                    s.lba, s.sectors
                ));
                continue;
            }
            seen.insert(start, end);
            extended = Some((s.lba, s.sectors));
            continue;
        }
        accept(
            t,
            &mut seen,
            number,
            s.lba,
            s.sectors,
            SECTOR,
            size,
            "partition",
        );
    }
    if let Some((lba, sectors)) = extended {
        logicals(src, lba, sectors, t);
    }
}

/// Walks the EBR chain of the extended partition at `ext` sectors long `len`.
fn logicals(src: &(impl Source + ?Sized), ext: u64, len: u64, t: &mut Table) {
    let (lo, hi) = (ext * SECTOR, (ext + len) * SECTOR);
    let mut seen = Extents::default();
    let mut visited = BTreeSet::new();
    let mut ebr = ext;
    let mut number = 5u32;
    for _ in 0..MAX_LOGICAL {
        if !visited.insert(ebr) {
            t.warnings.push(format!(
                "extended partition: the EBR chain loops at sector {ebr}, stopped"
            ));
            return;
        }
        let mut sector = [0u8; 512];
        let inside = ebr >= ext && ebr < ext + len;
        if !inside || !src.read(ebr * SECTOR, &mut sector) || sector[510..512] != [0x55, 0xAA] {
            t.warnings.push(format!(
                "extended partition: no valid EBR at sector {ebr}, stopped"
            ));
            return;
        }
        // An EBR inside a logical partition already taken would let the next one
        // overlap it unseen (`Extents` holds disjoint extents only).
        if seen.overlaps(ebr * SECTOR, (ebr + 1) * SECTOR) {
            t.warnings.push(format!(
                "extended partition: the EBR at sector {ebr} lies inside a logical partition, stopped"
            ));
            return;
        }
        let slots = mbr_slots(&sector);
        seen.insert(ebr * SECTOR, (ebr + 1) * SECTOR);
        let (logical, next) = (slots[0], slots[1]);
        if logical.kind != 0 && logical.sectors != 0 {
            match ebr.checked_add(logical.lba) {
                Some(at) => accept(
                    t,
                    &mut seen,
                    number,
                    at,
                    logical.sectors,
                    lo,
                    hi,
                    "logical partition",
                ),
                None => t
                    .warnings
                    .push(format!("logical partition {number}: out of range, ignored")),
            }
            number += 1;
        }
        if next.kind == 0 || !is_extended(next.kind) || next.lba == 0 {
            return;
        }
        ebr = ext + next.lba;
    }
    t.warnings.push(format!(
        "extended partition: more than {MAX_LOGICAL} logical partitions, the rest ignored"
    ));
}

/// A GPT header's fields that matter here.
struct GptHeader {
    my_lba: u64,
    alternate: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    count: u64,
    entry_size: u64,
    entries_crc: u32,
}

fn gpt(src: &(impl Source + ?Sized), t: &mut Table) {
    let sectors = src.size() / SECTOR;
    let last = sectors - 1;
    let primary = gpt_header(src, 1, sectors).and_then(|h| gpt_entries(src, h));
    let (h, entries) = match primary {
        Ok(found) => found,
        Err(why) => {
            t.warnings.push(format!("GPT: primary table: {why}"));
            match gpt_header(src, last, sectors).and_then(|h| gpt_entries(src, h)) {
                Ok(found) => {
                    t.warnings.push("GPT: using the backup table".into());
                    found
                }
                Err(why) => {
                    t.warnings
                        .push(format!("GPT: backup table: {why}; no partitions shown"));
                    return;
                }
            }
        }
    };
    let mut seen = Extents::default();
    let (lo, hi) = (h.first_usable * SECTOR, (h.last_usable + 1) * SECTOR);
    for (i, e) in entries.chunks_exact(h.entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let number = i as u32 + 1;
        let (first, end) = (le64(e, 32), le64(e, 40));
        if end < first {
            t.warnings.push(format!(
                "partition {number}: ends before it starts, ignored"
            ));
            continue;
        }
        let Some(count) = (end - first).checked_add(1) else {
            t.warnings
                .push(format!("partition {number}: out of range, ignored"));
            continue;
        };
        accept(t, &mut seen, number, first, count, lo, hi, "partition");
    }
}

fn gpt_header(src: &(impl Source + ?Sized), lba: u64, sectors: u64) -> Result<GptHeader, String> {
    let mut b = [0u8; 512];
    if !src.read(lba * SECTOR, &mut b) || &b[..8] != b"EFI PART" {
        return Err(format!("no header at sector {lba}"));
    }
    let hsize = le32(&b, 12);
    if !(92..=512).contains(&hsize) {
        return Err(format!("header size {hsize} out of range"));
    }
    let stored = le32(&b, 16) as u32;
    b[16..20].fill(0);
    if crc32(&b[..hsize as usize]) != stored {
        return Err("header CRC32 mismatch".into());
    }
    let h = GptHeader {
        my_lba: le64(&b, 24),
        alternate: le64(&b, 32),
        first_usable: le64(&b, 40),
        last_usable: le64(&b, 48),
        entries_lba: le64(&b, 72),
        count: le32(&b, 80),
        entry_size: le32(&b, 84),
        entries_crc: le32(&b, 88) as u32,
    };
    if h.my_lba != lba || h.alternate >= sectors {
        return Err("header locations disagree with the disk".into());
    }
    if h.first_usable > h.last_usable || h.last_usable >= sectors || h.first_usable < 2 {
        return Err("usable range out of the disk".into());
    }
    if h.entry_size < 128 || h.entry_size > 4096 || !h.entry_size.is_multiple_of(8) {
        return Err(format!("entry size {} out of range", h.entry_size));
    }
    let bytes = h.count * h.entry_size;
    if bytes > MAX_GPT_ENTRIES_BYTES {
        return Err(format!(
            "{} entries of {} bytes are too many",
            h.count, h.entry_size
        ));
    }
    let end = h
        .entries_lba
        .checked_mul(SECTOR)
        .and_then(|start| start.checked_add(bytes));
    if h.entries_lba < 2 || end.is_none_or(|end| end > sectors * SECTOR) {
        return Err("entry array out of the disk".into());
    }
    Ok(h)
}

fn gpt_entries(src: &(impl Source + ?Sized), h: GptHeader) -> Result<(GptHeader, Vec<u8>), String> {
    // Bounded by MAX_GPT_ENTRIES_BYTES and by the disk's size (checked in gpt_header).
    let mut entries = vec![0u8; (h.count * h.entry_size) as usize];
    if !src.read(h.entries_lba * SECTOR, &mut entries) {
        return Err("entry array unreadable".into());
    }
    if crc32(&entries) != h.entries_crc {
        return Err("entry array CRC32 mismatch".into());
    }
    Ok((h, entries))
}

/// CRC-32 (IEEE 802.3, reflected, as GPT uses).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}
