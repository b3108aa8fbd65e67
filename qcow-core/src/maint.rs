//! Image maintenance QEMU cannot do for qcow (needs `alloc`): [`repair`] after a
//! [`check`](crate::check::check), [`resize`], [`set_backing_file`] (`rebase -u`)
//! and [`rebase`].
//!
//! # Crash safety
//! Every change follows one rule: new bytes go only where nothing live points (free
//! space, or past the end of the file), are flushed, and only then does one pointer
//! switch to them (an 8-byte L1 or L2 entry, or the 48-byte header), flushed again.
//! Live bytes are never overwritten in place. An interruption at any write leaves an
//! image that opens and reads either the old or the new guest content; at worst some
//! space leaks, which [`repair`] reclaims.
//!
//! # Reclaiming space
//! Repairs, resizes and backing file changes end by reclaiming leaked clusters: the
//! extents at the end of the file (data clusters, L2 tables, compressed streams, the
//! L1 table, the backing name) are moved into the holes, then the file is truncated.
//! When that cannot fill every hole (the last extent is larger than any hole), the
//! extents after the first hole are packed down in order; an extent that would
//! overlap its own old place goes through a temporary copy past the end of the file.
//! The result checks without leaks.
//!
//! Every move is planned against one picture of the file (every extent, the header,
//! backing name and L1 table with its padding included) and checked there first: a
//! destination never shares a byte with a live extent or with the old place of a move
//! not switched yet, a move to where the extent is is no move, and the number of
//! moves is bounded by the number of extents. A move the picture refuses stops the
//! compaction, leaving a consistent image with leaks. The file is truncated last, to
//! where a fresh scan of it sees the last extent end.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::check::{
    align_up, push, scan, zeroed, Corruption, Ext, ExtKind, Reference, Report, Scan, BAD, WALKED,
};
use crate::cluster::inflate;
use crate::entry::L2Entry;
use crate::error::Error;
use crate::header::{Geometry, Header, HEADER_SIZE, MAX_BACKING_NAME};
use crate::image::{read_header, Backing, Image};
use crate::io::BlockIo;

mod compact;
use compact::{compact, truncate_tail};

/// What [`repair`] fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    /// Reclaim leaked clusters. On an image with corruptions, only a leaked tail is
    /// truncated (moving data around references that may be wrong is not safe).
    Leaks,
    /// Fix every corruption that can be fixed without losing healthy data, then
    /// reclaim leaked clusters.
    All,
}

/// Something that moved during a repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// The L1 table (the header was switched).
    L1Table,
    /// The backing file name (the header was switched).
    BackingName,
    /// An L2 table, data cluster or compressed stream (its L1 or L2 entry was switched).
    Reference(Reference),
}

/// One change made by [`repair`], [`resize`] or [`set_backing_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The reference was zeroed: its guest range now reads as unallocated (from the
    /// backing file, or zeros). Done for references past the end of the file, on
    /// metadata, past the virtual size, and compressed clusters that do not inflate.
    Dropped {
        /// The problem.
        corruption: Corruption,
    },
    /// The reference now points at a copy of its bytes at `to`: a misaligned extent,
    /// or the later of two overlapping ones. Its guest content is unchanged.
    Copied {
        /// The problem.
        corruption: Corruption,
        /// Where the copy is.
        to: u64,
    },
    /// An extent moved to fill leaked space.
    Moved {
        /// What moved.
        item: Item,
        /// Its old host offset.
        from: u64,
        /// Its new host offset.
        to: u64,
        /// Its length.
        len: u64,
    },
    /// The file was truncated.
    Truncated {
        /// The old length.
        from: u64,
        /// The new length.
        to: u64,
    },
}

impl core::fmt::Display for Item {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Item::L1Table => f.write_str("the L1 table"),
            Item::BackingName => f.write_str("the backing file name"),
            Item::Reference(r) => write!(f, "{r}"),
        }
    }
}

impl core::fmt::Display for Action {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Action::Dropped { corruption } => write!(f, "dropped: {corruption}"),
            Action::Copied { corruption, to } => {
                write!(f, "copied to host offset {to}: {corruption}")
            }
            Action::Moved { item, from, to, .. } => {
                write!(f, "moved {item} from host offset {from} to {to}")
            }
            Action::Truncated { from, to } => {
                write!(f, "truncated the file from {from} to {to} bytes")
            }
        }
    }
}

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The check before repairing.
    pub before: Report,
    /// The changes, in order.
    pub actions: Vec<Action>,
    /// The check after repairing.
    pub after: Report,
}

impl RepairReport {
    /// Leaked clusters reclaimed.
    pub fn leaks_fixed(&self) -> u64 {
        self.before
            .leaked_clusters
            .saturating_sub(self.after.leaked_clusters)
    }
    /// Corruptions fixed.
    pub fn corruptions_fixed(&self) -> u64 {
        self.before
            .corruption_count()
            .saturating_sub(self.after.corruption_count())
    }
}

/// Bytes copied per read/write.
const CHUNK: usize = 64 * 1024;

/// The device with the header and L1 table as they are on it, and the primitive
/// ordered steps.
struct Dev<'a, B: BlockIo> {
    io: &'a mut B,
    header: Header,
    geo: Geometry,
    l1: Vec<u64>,
    file_len: u64,
    buf: Vec<u8>,
    actions: Vec<Action>,
}

impl<'a, B: BlockIo> Dev<'a, B> {
    /// The device as a scan saw it.
    fn new(io: &'a mut B, s: &Scan) -> Result<Self, Error<B::Error>> {
        let mut l1 = Vec::new();
        l1.try_reserve_exact(s.l1.len())
            .map_err(|_| Error::OutOfMemory)?;
        l1.extend_from_slice(&s.l1);
        Ok(Dev {
            header: s.header,
            geo: s.geo,
            l1,
            file_len: s.report.file_len,
            buf: zeroed(CHUNK)?,
            actions: Vec::new(),
            io,
        })
    }

    fn flush(&mut self) -> Result<(), Error<B::Error>> {
        self.io.flush()?;
        Ok(())
    }

    fn write(&mut self, at: u64, data: &[u8]) -> Result<(), Error<B::Error>> {
        let end = at
            .checked_add(data.len() as u64)
            .ok_or(Error::FileTooLarge(at))?;
        self.io.write_at(at, data)?;
        self.file_len = self.file_len.max(end);
        Ok(())
    }

    fn write_zeros(&mut self, at: u64, len: u64) -> Result<(), Error<B::Error>> {
        self.buf.fill(0);
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len.saturating_sub(done))
                .unwrap_or(CHUNK)
                .min(CHUNK);
            let pos = at.saturating_add(done);
            let end = pos.checked_add(n as u64).ok_or(Error::FileTooLarge(pos))?;
            self.io
                .write_at(pos, self.buf.get(..n).unwrap_or_default())?;
            self.file_len = self.file_len.max(end);
            done = done.saturating_add(n as u64);
        }
        Ok(())
    }

    /// Copies `len` bytes from `from` to `to` (the ranges must not overlap).
    fn copy(&mut self, from: u64, to: u64, len: u64) -> Result<(), Error<B::Error>> {
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len.saturating_sub(done))
                .unwrap_or(CHUNK)
                .min(CHUNK);
            let src = from.saturating_add(done);
            let dst = to.saturating_add(done);
            let end = dst.checked_add(n as u64).ok_or(Error::FileTooLarge(dst))?;
            let b = self.buf.get_mut(..n).unwrap_or_default();
            self.io.read_at(src, b)?;
            self.io.write_at(dst, b)?;
            self.file_len = self.file_len.max(end);
            done = done.saturating_add(n as u64);
        }
        Ok(())
    }

    /// Writes the header and flushes: the switch of an L1 table or name move.
    fn write_header(&mut self) -> Result<(), Error<B::Error>> {
        let h = self.header.encode();
        self.write(0, &h)?;
        self.flush()
    }

    /// Where the pointer to a reference extent is stored.
    fn pointer(&self, x: &Ext) -> Option<u64> {
        let l1o = self.header.l1_table_offset;
        match x.kind {
            ExtKind::L2Table => Some(l1o.saturating_add(u64::from(x.l1).saturating_mul(8))),
            ExtKind::Data | ExtKind::Compressed => {
                let table = *self.l1.get(usize::try_from(x.l1).ok()?)?;
                (table != 0).then(|| table.saturating_add(u64::from(x.l2).saturating_mul(8)))
            }
            _ => None,
        }
    }

    /// Writes the pointer of `x` (an L1 or L2 entry, or the header) as `host`; 0
    /// drops a reference. One atomic write, not flushed.
    fn set_pointer(&mut self, x: &Ext, host: u64) -> Result<(), Error<B::Error>> {
        match x.kind {
            ExtKind::Header => return Err(Error::Unsupported("moving the header")),
            ExtKind::L1 | ExtKind::Name => {
                if x.kind == ExtKind::L1 {
                    self.header.l1_table_offset = host;
                } else {
                    self.header.backing_file_offset = host;
                }
                let h = self.header.encode();
                return self.write(0, &h);
            }
            _ => {}
        }
        let at = self
            .pointer(x)
            .ok_or(Error::Unsupported("reference in an unallocated table"))?;
        let value = match x.kind {
            ExtKind::Compressed if host != 0 => {
                L2Entry::compressed(&self.geo, host, u64::from(x.len))
                    .ok_or(Error::FileTooLarge(self.geo.compressed_offset_limit()))?
                    .0
            }
            _ => host,
        };
        self.write(at, &value.to_be_bytes())?;
        if x.kind == ExtKind::L2Table {
            if let Some(e) = self.l1.get_mut(usize::try_from(x.l1).unwrap_or(usize::MAX)) {
                *e = host;
            }
        }
        Ok(())
    }

    /// Where an extent of `align` goes at the end of the file.
    fn append_pos(&self, align: u64) -> u64 {
        align_up(self.file_len, align)
    }
}

/// The extent a reference names.
fn ext_of(r: &Reference) -> Option<Ext> {
    Some(Ext {
        host: r.host,
        len: u32::try_from(r.len).ok()?,
        l1: u32::try_from(r.l1_index).ok()?,
        l2: u16::try_from(r.l2_index.unwrap_or(0)).ok()?,
        kind: match r.kind {
            crate::RefKind::L2Table => ExtKind::L2Table,
            crate::RefKind::DataCluster => ExtKind::Data,
            crate::RefKind::CompressedCluster => ExtKind::Compressed,
        },
        flags: 0,
    })
}

/// Fails with [`Error::Corrupt`] unless the only corruptions are entries past the
/// virtual size (which resizing and reclaiming handle).
fn require_sound<E>(r: &Report) -> Result<(), Error<E>> {
    let n = r
        .corruptions
        .iter()
        .filter(|c| !matches!(c, Corruption::BeyondSize { .. }))
        .count();
    if n > 0 {
        return Err(Error::Corrupt(n as u64));
    }
    Ok(())
}

/// Checks the image on `io`, then repairs it; see [`RepairMode`] and the
/// [module docs](self). Guest content of healthy clusters is unchanged; a dropped
/// reference reads as unallocated afterwards. What cannot be repaired (a backing name
/// overlapping the L1 table) stays in [`RepairReport::after`].
pub fn repair<B: BlockIo>(io: &mut B, mode: RepairMode) -> Result<RepairReport, Error<B::Error>> {
    let mut s = scan(io, true)?;
    let before = s.report.clone();
    let mut actions = Vec::new();
    if mode == RepairMode::All {
        // Each round fixes what the last check found; copying a shared L2 table makes
        // its entries visible to the next round, so a few rounds may be needed.
        let mut deferred = Vec::new();
        let mut made = Made {
            start_len: s.report.file_len,
            pointers: Vec::new(),
        };
        for _ in 0..16 {
            if !fix_corruptions(io, &s, &mut deferred, &mut made, &mut actions)? {
                break;
            }
            s = scan(io, true)?;
        }
    }
    if s.report.corruptions.is_empty() {
        let mut dev = Dev::new(io, &s)?;
        compact(&mut dev, &s.exts)?;
        actions.append(&mut dev.actions);
    } else {
        // Moving data around references that may be wrong is not safe: only a leaked
        // tail is dropped.
        truncate_tail(io, &mut actions)?;
    }
    let after = scan(io, true)?.report;
    Ok(RepairReport {
        before,
        actions,
        after,
    })
}

/// What to do about one reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fix {
    Drop,
    Copy,
}

/// A planned repair of one reference.
type Step = (Ext, Fix, Corruption);

/// What the rounds of a repair wrote past the end of the file it started with.
struct Made {
    /// The file length before the repair: every copy lands at or past it.
    start_len: u64,
    /// The pointers switched to those copies (kind, L1 index, L2 index, host), sorted.
    pointers: Vec<(ExtKind, u32, u16, u64)>,
}

/// One round of corruption repairs from a scan; returns whether anything changed.
/// `deferred` carries the drops a round puts off to the next one; `made`, the copies
/// made so far.
fn fix_corruptions<B: BlockIo>(
    io: &mut B,
    s: &Scan,
    deferred: &mut Vec<Step>,
    made: &mut Made,
    actions: &mut Vec<Action>,
) -> Result<bool, Error<B::Error>> {
    let plan = plan_fixes(s, deferred, made)?;
    if plan.0.is_empty() {
        return Ok(false);
    }
    apply_fixes(io, s, plan, made, actions)?;
    Ok(true)
}

/// The planned repairs of a round: one decision per reference, tables first.
struct Plan(BTreeMap<(bool, u32, u16, ExtKind), Step>);

impl Plan {
    /// Plans a step; dropping wins over copying.
    fn add(&mut self, (x, fix, c): Step) {
        let key = (x.kind != ExtKind::L2Table, x.l1, x.l2, x.kind);
        match self.0.get_mut(&key) {
            Some(p) if fix < p.1 => *p = (x, fix, c),
            Some(_) => {}
            None => {
                self.0.insert(key, (x, fix, c));
            }
        }
    }
}

/// Plans the repairs of one round from a scan (see [`fix_corruptions`]).
fn plan_fixes<E>(s: &Scan, deferred: &mut Vec<Step>, made: &Made) -> Result<Plan, Error<E>> {
    let mut plan = Plan(BTreeMap::new());
    // A reference reaching past the end of the file the repair started with is past
    // the end, even where copies appended since put bytes under it (it was in a table
    // not walked then): every copy lands there, so only the pointers the repair
    // switched to its copies may point there.
    for x in s
        .exts
        .iter()
        .filter(|x| x.ref_kind().is_some() && x.end() > made.start_len)
    {
        if made
            .pointers
            .binary_search(&(x.kind, x.l1, x.l2, x.host))
            .is_err()
        {
            let c = Corruption::PastEof {
                reference: x.reference(&s.geo),
                file_len: made.start_len,
            };
            plan.add((*x, Fix::Drop, c));
        }
    }
    for c in &s.report.corruptions {
        let Some(x) = c.reference().and_then(ext_of) else {
            continue;
        };
        let fix = match c {
            Corruption::Misaligned { .. } | Corruption::Overlap { .. } => Fix::Copy,
            _ => Fix::Drop,
        };
        plan.add((x, fix, *c));
    }
    // The drops the last round put off, where the reference is still there: one past
    // the end of the file may point at the tables copied there since.
    for step in core::mem::take(deferred) {
        if s.exts.binary_search_by_key(&step.0.key(), Ext::key).is_ok() {
            plan.add(step);
        }
    }
    // While a sound table is not walked (it shares bytes with another table), its
    // entries are unknown and may point into the tables whose entries would be
    // written: this round only moves tables (the unwalked ones are reported), the
    // next one walks them and fixes the entries.
    let unwalked = s
        .exts
        .iter()
        .any(|x| x.kind == ExtKind::L2Table && x.flags & (BAD | WALKED) == 0);
    if unwalked && plan.0.values().any(|(x, ..)| x.kind == ExtKind::L2Table) {
        let entries = plan
            .0
            .values()
            .filter(|(x, f, _)| x.kind != ExtKind::L2Table && *f == Fix::Drop);
        deferred
            .try_reserve(entries.clone().count())
            .map_err(|_| Error::OutOfMemory)?;
        deferred.extend(entries.copied());
        plan.0.retain(|_, (x, ..)| x.kind == ExtKind::L2Table);
    }
    Ok(plan)
}

/// Carries out a non-empty plan (see [`fix_corruptions`]).
fn apply_fixes<B: BlockIo>(
    io: &mut B,
    s: &Scan,
    plan: Plan,
    made: &mut Made,
    actions: &mut Vec<Action>,
) -> Result<(), Error<B::Error>> {
    let mut dev = Dev::new(io, s)?;
    // Tables before entries: a misaligned or overlapping table is copied before any
    // entry is zeroed in it, so no write lands on bytes another reference shares.
    // Drops before copies: what is past the end of the file is no longer referenced
    // when copies are appended there.
    let mut steps: Vec<Step> = Vec::new();
    steps
        .try_reserve(plan.0.len())
        .map_err(|_| Error::OutOfMemory)?;
    steps.extend(plan.0.into_values());
    steps.sort_by_key(|(x, f, _)| (x.kind != ExtKind::L2Table, *f, x.l1, x.l2));
    // Four batches (table drops, table copies, entry drops, entry copies), each
    // written, then flushed once; a copy is flushed before its pointer switches.
    let mut dropped_tables: Vec<u32> = Vec::new();
    let mut rest = &steps[..];
    while let Some((x0, f0, _)) = rest.first() {
        let phase = (x0.kind == ExtKind::L2Table, *f0);
        let n = rest
            .iter()
            .position(|(x, f, _)| (x.kind == ExtKind::L2Table, *f) != phase)
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(n);
        rest = tail;
        apply_batch(&mut dev, group, &dropped_tables, made, actions)?;
        if phase == (true, Fix::Drop) {
            dropped_tables
                .try_reserve(group.len())
                .map_err(|_| Error::OutOfMemory)?;
            dropped_tables.extend(group.iter().map(|(x, ..)| x.l1));
        }
    }
    made.pointers.sort_unstable();
    Ok(())
}

/// Writes one batch of steps (all of one phase), skipping entries of the tables in
/// `dropped_tables` (sorted), and flushes; then switches the pointers of the copies
/// and flushes again.
fn apply_batch<B: BlockIo>(
    dev: &mut Dev<'_, B>,
    group: &[Step],
    dropped_tables: &[u32],
    made: &mut Made,
    actions: &mut Vec<Action>,
) -> Result<(), Error<B::Error>> {
    let cs = dev.geo.cluster_size();
    let live = |x: &Ext| x.kind == ExtKind::L2Table || dropped_tables.binary_search(&x.l1).is_err();
    let mut copies: Vec<(Ext, u64)> = Vec::new();
    for (x, fix, c) in group.iter().filter(|(x, ..)| live(x)) {
        if *fix == Fix::Drop {
            dev.set_pointer(x, 0)?;
            push(actions, Action::Dropped { corruption: *c })?;
        } else {
            let to = dev.append_pos(x.align(cs));
            dev.copy(x.host, to, u64::from(x.len))?;
            push(&mut copies, (*x, to))?;
            push(&mut made.pointers, (x.kind, x.l1, x.l2, to))?;
            push(actions, Action::Copied { corruption: *c, to })?;
        }
    }
    dev.flush()?;
    for (x, to) in &copies {
        dev.set_pointer(x, *to)?;
    }
    if !copies.is_empty() {
        dev.flush()?;
    }
    Ok(())
}

/// Reclaims leaked clusters when the image has no corruption (see the module docs).
fn reclaim<B: BlockIo>(io: &mut B) -> Result<Vec<Action>, Error<B::Error>> {
    let s = scan(io, false)?;
    if s.report
        .corruptions
        .iter()
        .any(|c| !matches!(c, Corruption::BeyondSize { .. }))
    {
        return Ok(Vec::new());
    }
    let mut dev = Dev::new(io, &s)?;
    compact(&mut dev, &s.exts)?;
    Ok(dev.actions)
}

/// What [`resize`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    /// The virtual size before, as stored in the header.
    pub old_size: u64,
    /// The virtual size now (the request rounded up to 512 bytes).
    pub new_size: u64,
    /// Where the L1 table is now.
    pub l1_table_offset: u64,
    /// Whether the L1 table was copied to the end of the file to grow.
    pub l1_moved: bool,
    /// L1 and L2 entries dropped: past the new size when shrinking, stale entries past
    /// the old size when growing.
    pub dropped: u64,
    /// The space reclaimed afterwards.
    pub actions: Vec<Action>,
}

/// Changes the virtual size of the image on `io` to `new_size` rounded up to 512
/// bytes, as QEMU rounds sizes.
///
/// Growing: the L1 table grows in place when the space after it is free (or it ends
/// the file): the new entries are zeroed first, then the header written. Otherwise
/// the L1 table is copied, zero-extended and padded to 512 bytes, to the end of the
/// file; the header (size and L1 offset) is written last, so an interruption leaves
/// the old image; the old table's space is then reclaimed. The new guest range reads
/// as unallocated: zeros, or the backing file's content where the backing file is
/// larger.
///
/// Shrinking is refused ([`Error::ShrinkRefused`]) unless `shrink`. The header goes
/// first (an interruption after it leaves the new, smaller image), then the entries
/// past the new end are zeroed (the last L2 table keeps those below it) and the space
/// they used is reclaimed. The part of the last cluster past an unaligned new size is
/// zeroed when the cluster is plain and unencrypted. A compressed one keeps its bytes
/// until the image grows again: then, when they are not zeros, the cluster is
/// rewritten as a plain one holding zeros past the old size. An encrypted one keeps
/// its bytes (zeroing them needs the key: see [`resize_with_key`]): they reappear
/// when the image grows again.
///
/// Refuses an image with corruptions ([`Error::Corrupt`]): repair it first.
pub fn resize<B: BlockIo>(
    io: &mut B,
    new_size: u64,
    shrink: bool,
) -> Result<Resized, Error<B::Error>> {
    resize_with_key(io, new_size, shrink, None)
}

/// [`resize`] for an encrypted image whose key is known: the part of the last cluster
/// past an unaligned new size is overwritten with encrypted zeros, so it cannot
/// reappear when the image grows again.
pub fn resize_with_key<B: BlockIo>(
    io: &mut B,
    new_size: u64,
    shrink: bool,
    cipher: Option<&crate::crypt::Cipher>,
) -> Result<Resized, Error<B::Error>> {
    let s = scan(io, false)?;
    require_sound(&s.report)?;
    let r = Resize::new(&s, new_size, shrink)?;
    let mut out = Resized {
        old_size: r.old.size,
        new_size: r.size,
        l1_table_offset: r.old.l1_table_offset,
        l1_moved: false,
        dropped: 0,
        actions: Vec::new(),
    };
    if r.size == r.old.size {
        return Ok(out);
    }
    let mut dev = Dev::new(io, &s)?;
    if r.shrinking {
        dev.header.size = r.size;
        dev.write_header()?;
    }
    out.dropped = r.drop_stale(&mut dev)?;
    let fresh = r.cut_last_cluster(&mut dev, cipher)?;
    dev.flush()?;
    if !r.shrinking {
        if r.new_geo.l1_size() > r.old_geo.l1_size() {
            if let Some(to) = r.grow_l1(&mut dev, fresh)? {
                out.l1_table_offset = to;
                out.l1_moved = true;
            }
        }
        dev.header.size = r.size;
        dev.write_header()?;
    }
    drop(dev);
    if r.shrinking || out.l1_moved || out.dropped > 0 || fresh.is_some() {
        out.actions = reclaim(io)?;
    }
    Ok(out)
}

/// A resize of a sound image, checked, and its steps.
struct Resize<'s> {
    /// The image's extents, in host order.
    exts: &'s [Ext],
    old: Header,
    old_geo: Geometry,
    new_geo: Geometry,
    /// The new size (rounded up to 512).
    size: u64,
    shrinking: bool,
    /// The smaller of the two sizes: entries at or past it are dropped.
    limit: u64,
    cs: u64,
}

impl<'s> Resize<'s> {
    /// Checks the request against the image `s` describes.
    fn new<E>(s: &'s Scan, new_size: u64, shrink: bool) -> Result<Self, Error<E>> {
        let size = new_size
            .checked_add(511)
            .ok_or(Error::ImageTooLarge(new_size))?
            & !511;
        let old = s.header;
        let mut new_header = old;
        new_header.size = size;
        new_header.validate()?;
        let old_geo = s.geo;
        let new_geo = new_header.geometry();
        if size < old_geo.size() && !shrink {
            return Err(Error::ShrinkRefused {
                size: old_geo.size(),
                new_size: size,
            });
        }
        Ok(Resize {
            exts: &s.exts,
            old,
            old_geo,
            new_geo,
            size,
            shrinking: size < old_geo.size(),
            limit: size.min(old_geo.size()),
            cs: old_geo.cluster_size(),
        })
    }

    /// Zeroes the entries at or past `limit` (past the new end, or stale past the old
    /// one), not flushed; returns how many.
    fn drop_stale<B: BlockIo>(&self, dev: &mut Dev<'_, B>) -> Result<u64, Error<B::Error>> {
        let mut dropped = 0u64;
        for x in self.exts {
            let stale = match x.kind {
                ExtKind::L2Table => self.shrinking && u64::from(x.l1) >= self.new_geo.l1_size(),
                ExtKind::Data | ExtKind::Compressed => {
                    u64::from(x.l1) < self.new_geo.l1_size()
                        && x.reference(&self.old_geo).guest >= self.limit
                }
                _ => false,
            };
            if stale {
                let at = dev
                    .pointer(x)
                    .ok_or(Error::Unsupported("reference in an unallocated table"))?;
                dev.write(at, &0u64.to_be_bytes())?;
                dropped = dropped.saturating_add(1);
            }
        }
        Ok(dropped)
    }

    /// Makes the part of the last cluster past `limit` read as zeros once the image
    /// grows (see [`resize`]); returns where a plain cluster was written at the end of
    /// the file (it holds a compressed one).
    fn cut_last_cluster<B: BlockIo>(
        &self,
        dev: &mut Dev<'_, B>,
        cipher: Option<&crate::crypt::Cipher>,
    ) -> Result<Option<u64>, Error<B::Error>> {
        let (cs, limit, old) = (self.cs, self.limit, &self.old);
        let tail = limit & cs.saturating_sub(1);
        if tail == 0 || (old.is_encrypted() && cipher.is_none()) {
            return Ok(None);
        }
        let first = limit.saturating_sub(tail);
        let last = self.exts.iter().find(|x| {
            matches!(x.kind, ExtKind::Data | ExtKind::Compressed)
                && x.reference(&self.old_geo).guest == first
        });
        match (last, cipher.filter(|_| old.is_encrypted())) {
            (Some(x), Some(c)) if x.kind == ExtKind::Data => {
                let mut zeros = zeroed(usize::try_from(cs.saturating_sub(tail)).unwrap_or(0))?;
                c.encrypt(limit / 512, &mut zeros);
                dev.write(x.host.saturating_add(tail), &zeros)?;
            }
            (_, Some(_)) => {}
            (Some(x), None) if x.kind == ExtKind::Data => {
                dev.write_zeros(x.host.saturating_add(tail), cs.saturating_sub(tail))?;
            }
            (Some(x), None) if !self.shrinking => return unpack_cut(dev, x, tail),
            _ => {}
        }
        Ok(None)
    }

    /// Grows the L1 table: in place when the space after it is free (not taken by an
    /// extent or by the plain cluster `fresh`), else as a copy at the end of the file
    /// that the header (written later) points at; returns where the copy is.
    fn grow_l1<B: BlockIo>(
        &self,
        dev: &mut Dev<'_, B>,
        fresh: Option<u64>,
    ) -> Result<Option<u64>, Error<B::Error>> {
        let l1o = self.old.l1_table_offset;
        let grown = l1o.saturating_add(self.old_geo.l1_bytes())
            ..l1o.saturating_add(self.new_geo.l1_bytes());
        let padded_end = l1o.saturating_add(align_up(self.new_geo.l1_bytes(), 512));
        let taken = |end: u64| {
            self.exts
                .iter()
                .any(|x| x.kind != ExtKind::L1 && x.host < end && grown.start < x.end())
                || fresh.is_some_and(|h| h < end && grown.start < h.saturating_add(self.cs))
        };
        if !taken(grown.end) {
            let end = if taken(padded_end) {
                grown.end
            } else {
                padded_end
            };
            dev.write_zeros(grown.start, end.saturating_sub(grown.start))?;
            dev.flush()?;
            return Ok(None);
        }
        let to = dev.append_pos(512);
        let mut at = to;
        let mut chunk: Vec<u8> = Vec::new();
        chunk
            .try_reserve_exact(CHUNK)
            .map_err(|_| Error::OutOfMemory)?;
        for entries in dev.l1.chunks(CHUNK / 8) {
            chunk.clear();
            for e in entries {
                chunk.extend_from_slice(&e.to_be_bytes());
            }
            dev.io.write_at(at, &chunk)?;
            at = at.saturating_add(chunk.len() as u64);
        }
        dev.file_len = dev.file_len.max(at);
        let end = to.saturating_add(align_up(self.new_geo.l1_bytes(), 512));
        dev.write_zeros(at, end.saturating_sub(at))?;
        dev.flush()?;
        dev.header.l1_table_offset = to;
        Ok(Some(to))
    }
}

/// Growing past a size that cuts the compressed cluster `x` at `tail` bytes: a stream
/// cannot be zeroed in place, so when its bytes past the cut are not zeros (left by a
/// shrink), its content up to the cut goes to a plain cluster at the end of the file,
/// flushed, and its L2 entry switches there (the stream is reclaimed afterwards).
/// Returns where the plain cluster is; `None` when nothing was to do or the stream
/// does not inflate (a corruption `check` reports).
fn unpack_cut<B: BlockIo>(
    dev: &mut Dev<'_, B>,
    x: &Ext,
    tail: u64,
) -> Result<Option<u64>, Error<B::Error>> {
    let mut stream = zeroed(usize::try_from(x.len).map_err(|_| Error::OutOfMemory)?)?;
    dev.io.read_at(x.host, &mut stream)?;
    let mut cluster = zeroed(dev.geo.cluster_len())?;
    if inflate(&stream, &mut cluster).is_err() {
        return Ok(None);
    }
    let cut = cluster
        .get_mut(usize::try_from(tail).unwrap_or(usize::MAX)..)
        .unwrap_or_default();
    if cut.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    cut.fill(0);
    let to = dev.append_pos(dev.geo.cluster_size());
    dev.write(to, &cluster)?;
    dev.flush()?;
    let plain = Ext {
        kind: ExtKind::Data,
        ..*x
    };
    dev.set_pointer(&plain, to)?;
    Ok(Some(to))
}

/// What [`set_backing_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingChanged {
    /// Where the name is now (0 without a backing file).
    pub offset: u64,
    /// Its length.
    pub len: u32,
    /// The space reclaimed afterwards.
    pub actions: Vec<Action>,
}

/// Rewrites the backing file name (`qemu-img rebase -u`); an empty name removes the
/// backing file. The content is not looked at: see [`rebase`] for the safe kind.
///
/// The new name is written where nothing live is (the first free gap, or the end of
/// the file) and flushed, then the header switches to it. When the name can then sit
/// right after the header, where QEMU puts it, it moves there the same way. Space left
/// free is reclaimed.
///
/// Refuses an image with corruptions ([`Error::Corrupt`]).
pub fn set_backing_file<B: BlockIo>(
    io: &mut B,
    name: &[u8],
) -> Result<BackingChanged, Error<B::Error>> {
    if name.len() > MAX_BACKING_NAME {
        return Err(Error::BackingNameTooLong(
            u32::try_from(name.len()).unwrap_or(u32::MAX),
        ));
    }
    let s = scan(io, false)?;
    require_sound(&s.report)?;
    let mut dev = Dev::new(io, &s)?;
    let exts = &s.exts;
    let len = name.len() as u64;
    let start = HEADER_SIZE as u64;
    if name.is_empty() {
        dev.header.backing_file_offset = 0;
        dev.header.backing_file_size = 0;
        dev.write_header()?;
    } else {
        let mut at = start;
        for x in exts.iter().filter(|x| x.kind != ExtKind::Header) {
            if x.host >= at.saturating_add(len) {
                break;
            }
            at = at.max(x.span_end());
        }
        dev.write(at, name)?;
        dev.flush()?;
        dev.header.backing_file_offset = at;
        dev.header.backing_file_size = u32::try_from(len).unwrap_or(0);
        dev.write_header()?;
        let home = start..start.saturating_add(len);
        let free = !exts
            .iter()
            .filter(|x| !matches!(x.kind, ExtKind::Header | ExtKind::Name))
            .any(|x| x.host < home.end && home.start < x.span_end());
        if at != start && free && home.end <= at {
            dev.write(start, name)?;
            dev.flush()?;
            dev.header.backing_file_offset = start;
            dev.write_header()?;
        }
    }
    let offset = dev.header.backing_file_offset;
    drop(dev);
    let actions = reclaim(io)?;
    Ok(BackingChanged {
        offset,
        len: u32::try_from(len).unwrap_or(0),
        actions,
    })
}

/// What [`rebase`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebased {
    /// Clusters whose old backing content was copied into the image.
    pub copied_clusters: u64,
    /// The name change.
    pub backing: BackingChanged,
}

/// Rebases `image` (opened on its current backing chain) onto `new_backing`, named
/// `new_name` (empty: no backing file), keeping its guest content: every cluster the
/// image does not allocate and whose old backing content differs from the new
/// backing's is first written into the image (through [`Image::write_at`], so an
/// encrypted image needs its password); the name switches last. An interruption
/// leaves the old backing file named and the guest content unchanged.
///
/// The image's own view (header, caches) is refreshed; its backing layer is still the
/// old one: reopen the image to read through the new one.
pub fn rebase<B, K, S, N>(
    image: &mut Image<B, K, S>,
    new_backing: &mut N,
    new_name: &[u8],
) -> Result<Rebased, Error<B::Error>>
where
    B: BlockIo,
    K: Backing<IoError = B::Error>,
    S: AsMut<[u8]>,
    N: Backing<IoError = B::Error>,
{
    if new_name.len() > MAX_BACKING_NAME {
        return Err(Error::BackingNameTooLong(
            u32::try_from(new_name.len()).unwrap_or(u32::MAX),
        ));
    }
    require_sound(&scan(&mut image.io, false)?.report)?;
    let size = image.geo.size();
    let cs = image.geo.cluster_size();
    let mut old = zeroed(image.geo.cluster_len())?;
    let mut new = zeroed(image.geo.cluster_len())?;
    let mut copied = 0u64;
    let mut guest = 0u64;
    while guest < size {
        let (c, run) = image.extent(guest, size.saturating_sub(guest))?;
        let run_end = guest.saturating_add(run.max(1));
        if c == crate::Cluster::Unallocated {
            let mut g = guest;
            while g < run_end {
                let n = usize::try_from(cs.min(run_end.saturating_sub(g))).unwrap_or(0);
                let (o, w) = (
                    old.get_mut(..n).unwrap_or_default(),
                    new.get_mut(..n).unwrap_or_default(),
                );
                image.backing.read_layer(g, o)?;
                new_backing.read_layer(g, w)?;
                if o != w {
                    image.write_at(g, o)?;
                    copied = copied.saturating_add(1);
                }
                g = g.saturating_add(n as u64);
            }
        }
        guest = run_end;
    }
    image.flush()?;
    let backing = set_backing_file(&mut image.io, new_name)?;
    image.header = read_header(&mut image.io)?;
    image.geo = image.header.geometry();
    image.file_len = image.io.len()?;
    image.cache.clear();
    image.inflated = None;
    Ok(Rebased {
        copied_clusters: copied,
        backing,
    })
}

#[cfg(test)]
mod tests;
