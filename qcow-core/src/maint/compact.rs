//! Reclaiming leaked space on a sound image (see the [module docs](super)): every move
//! is planned against one picture of what the file holds ([`Packing`]), checked
//! there before anything is written, then written as a batch (copy, flush, switch,
//! flush).
//!
//! The picture holds every extent: the header, the backing name, the L1 table (with
//! its padding to 512 bytes, which may hold other extents) and every reference. A
//! destination never shares a byte with a live extent, nor with the old place of a
//! move whose pointer has not switched yet; a move to where an extent already is is
//! no move. The hole filling moves each extent at most once, the final packing at
//! most once more: a budget of physical moves (temporary copies included) proportional
//! to the number of extents stops any runaway. Whatever a refused plan leaves is a
//! consistent image with leaks, which the report shows. The file is truncated last,
//! from a fresh scan of the file itself: never below the end of a live reference.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{Action, Dev, Item};
use crate::check::{align_up, push, scan, Ext, ExtKind};
use crate::error::Error;
use crate::header::{Geometry, HEADER_SIZE};
use crate::io::BlockIo;

/// Bytes of extents one batch moves at most.
const BATCH_BYTES: u64 = 8 << 20;
/// Extents one batch moves at most.
const BATCH_EXTENTS: usize = 4096;
/// Physical moves (temporary copies included) allowed per extent of the picture.
const MOVES_PER_EXTENT: usize = 4;

/// The bytes an extent takes (the L1 table with its padding).
fn span(x: &Ext) -> u64 {
    x.span_end().saturating_sub(x.host)
}

/// What moved, for the action list.
fn item_of(x: &Ext, geo: &Geometry) -> Item {
    match x.kind {
        ExtKind::L1 => Item::L1Table,
        ExtKind::Name => Item::BackingName,
        _ => Item::Reference(x.reference(geo)),
    }
}

/// The one picture of the file a compaction plans against: every extent, the holes
/// between them, and the old places of the moves not switched yet.
struct Packing {
    /// Every extent by host offset; their bytes never overlap.
    map: BTreeMap<u64, Ext>,
    /// The extents whose span reaches past their bytes (the L1 table's padding, which
    /// may hold other extents): host → end of the span.
    wide: BTreeMap<u64, u64>,
    /// The free runs that leak (not padding, see [`crate::check`]), by their end (the
    /// host of the extent after them) → their start.
    holes: BTreeMap<u64, u64>,
    /// The old places of the planned moves whose pointers have not switched yet,
    /// start → end: still live, no destination may touch them.
    pending: BTreeMap<u64, u64>,
    /// Physical moves left.
    moves_left: usize,
    cs: u64,
}

impl Packing {
    /// The picture of `exts` (in host order); `None` when two of them share a byte or
    /// an offset: no move is planned on an image the picture cannot describe exactly.
    fn new(exts: &[Ext], cs: u64) -> Option<Self> {
        let mut p = Packing {
            map: BTreeMap::new(),
            wide: BTreeMap::new(),
            holes: BTreeMap::new(),
            pending: BTreeMap::new(),
            moves_left: exts
                .len()
                .saturating_mul(MOVES_PER_EXTENT)
                .saturating_add(MOVES_PER_EXTENT),
            cs,
        };
        let mut bytes_end = 0u64;
        let mut covered = 0u64;
        for &x in exts {
            if x.host < bytes_end || p.map.contains_key(&x.host) {
                return None;
            }
            if x.leaks_before(covered, cs) {
                p.holes.insert(x.host, covered);
            }
            bytes_end = x.end();
            covered = covered.max(x.span_end());
            p.add(x);
        }
        Some(p)
    }

    fn add(&mut self, x: Ext) {
        if x.span_end() > x.end() {
            self.wide.insert(x.host, x.span_end());
        }
        self.map.insert(x.host, x);
    }

    fn pred(&self, at: u64) -> Option<Ext> {
        self.map.range(..at).next_back().map(|(_, x)| *x)
    }

    fn last(&self) -> Option<Ext> {
        self.map.last_key_value().map(|(_, x)| *x)
    }

    /// The end of the space the extents below `at` take (spans, padding included):
    /// where the free run before an extent at `at` starts.
    fn covered_end(&self, at: u64) -> u64 {
        let near = self.pred(at).map_or(0, |x| x.span_end());
        self.wide.range(..at).map(|(_, &e)| e).fold(near, u64::max)
    }

    /// The start of the lowest hole.
    fn first_hole(&self) -> Option<u64> {
        self.holes.first_key_value().map(|(_, &s)| s)
    }

    /// Recomputes the hole before the extent at `host` (if any).
    fn refresh(&mut self, host: u64) {
        self.holes.remove(&host);
        if let Some(x) = self.map.get(&host).copied() {
            let free = self.covered_end(host);
            if x.leaks_before(free, self.cs) {
                self.holes.insert(host, free);
            }
        }
    }

    /// Recomputes the holes an extent spanning `[host, span_end)` bounds: before the
    /// extents inside its span (its padding) and the first one past it.
    fn refresh_after(&mut self, host: u64, span_end: u64) {
        let mut at = host.saturating_add(1);
        while let Some(h) = self.map.range(at..).next().map(|(&h, _)| h) {
            self.refresh(h);
            if h >= span_end {
                break;
            }
            at = h.saturating_add(1);
        }
    }

    fn remove(&mut self, host: u64) {
        if let Some(x) = self.map.remove(&host) {
            self.wide.remove(&host);
            self.holes.remove(&host);
            self.refresh_after(host, x.span_end());
        }
    }

    fn insert(&mut self, x: Ext) {
        self.add(x);
        self.refresh(x.host);
        self.refresh_after(x.host, x.span_end());
    }

    /// Whether `len` bytes at `at` share no byte with a live extent (nor with the old
    /// place of a move not switched yet).
    fn bytes_free(&self, at: u64, len: u64) -> bool {
        let Some(end) = at.checked_add(len) else {
            return false;
        };
        // The extents' bytes do not overlap, so the last one starting below `end`
        // ends the furthest; the same holds for the pending old places.
        let clear = |r: Option<u64>| r.is_none_or(|e| e <= at);
        clear(self.map.range(..end).next_back().map(|(_, x)| x.end()))
            && clear(self.pending.range(..end).next_back().map(|(_, &e)| e))
    }

    /// The lowest place in a hole below `x` where `x` fits; each hole looked at spends
    /// one of `budget`.
    fn first_fit(&self, x: &Ext, budget: &mut u64) -> Option<u64> {
        let align = x.align(self.cs);
        for (&end, &start) in self.holes.range(..=x.host) {
            *budget = budget.checked_sub(1)?;
            let slot = align_up(start, align);
            if slot.saturating_add(span(x)) <= end && self.bytes_free(slot, u64::from(x.len)) {
                return Some(slot);
            }
        }
        None
    }

    /// Where free space past every extent starts, aligned for `x`.
    fn past_end(&self, x: &Ext) -> u64 {
        align_up(self.covered_end(u64::MAX), x.align(self.cs))
    }

    /// Plans moving `x` to `to` in the picture; refuses (changing nothing) a move of
    /// the header, of an extent not in the picture, to where it is, onto bytes not
    /// free, or past the budget.
    fn plan(&mut self, x: &Ext, to: u64) -> bool {
        let ok = x.kind != ExtKind::Header
            && to != x.host
            && self.moves_left > 0
            && self.map.get(&x.host) == Some(x)
            && !self.map.contains_key(&to)
            && self.bytes_free(to, u64::from(x.len));
        if ok {
            self.moves_left = self.moves_left.saturating_sub(1);
            self.remove(x.host);
            self.pending.insert(x.host, x.end());
            self.insert(Ext { host: to, ..*x });
        }
        ok
    }

    /// Test builds: the holes are exactly the leaking gaps, and no bytes overlap.
    #[cfg(test)]
    #[allow(clippy::expect_used)]
    fn validate(&self) {
        let v: Vec<Ext> = self.map.values().copied().collect();
        let fresh = Packing::new(&v, self.cs).expect("extents overlap");
        assert_eq!(fresh.holes, self.holes, "holes");
        assert_eq!(fresh.wide, self.wide, "wide");
    }
}

/// Writes moves: copies every extent to its place, flushes, switches every pointer,
/// flushes.
fn write_batch<B: BlockIo>(
    dev: &mut Dev<'_, B>,
    moves: &[(Ext, u64)],
) -> Result<(), Error<B::Error>> {
    for (x, to) in moves {
        dev.copy(x.host, *to, u64::from(x.len))?;
    }
    dev.flush()?;
    // The L1 table before L2 tables before entries: a pointer moving with its table
    // is then written into the table's copy.
    for kind in [
        ExtKind::Name,
        ExtKind::L1,
        ExtKind::L2Table,
        ExtKind::Data,
        ExtKind::Compressed,
    ] {
        for (x, to) in moves.iter().filter(|(x, _)| x.kind == kind) {
            dev.set_pointer(x, *to)?;
        }
    }
    dev.flush()
}

/// Records one move in the action list.
fn record<B: BlockIo>(dev: &mut Dev<'_, B>, x: &Ext, to: u64) -> Result<(), Error<B::Error>> {
    let item = item_of(x, &dev.geo);
    push(
        &mut dev.actions,
        Action::Moved {
            item,
            from: x.host,
            to,
            len: u64::from(x.len),
        },
    )
}

/// Plans the moves in order, then writes those the picture accepted (all, or the
/// ones before the first refused); `recorded`: also list them. Returns how many were
/// made.
fn mv<B: BlockIo>(
    dev: &mut Dev<'_, B>,
    p: &mut Packing,
    moves: &[(Ext, u64)],
    recorded: bool,
) -> Result<usize, Error<B::Error>> {
    let n = moves
        .iter()
        .position(|(x, to)| !p.plan(x, *to))
        .unwrap_or(moves.len());
    let made = moves.get(..n).unwrap_or_default();
    if !made.is_empty() {
        write_batch(dev, made)?;
    }
    p.pending.clear();
    if recorded {
        for (x, to) in made {
            record(dev, x, *to)?;
        }
    }
    #[cfg(test)]
    p.validate();
    Ok(n)
}

/// Moves the extents (consecutive in host order) down to their places, through copies
/// past the last extent when a place overlaps one of them. Returns whether all moved.
fn mv_down<B: BlockIo>(
    dev: &mut Dev<'_, B>,
    p: &mut Packing,
    moves: &[(Ext, u64)],
) -> Result<bool, Error<B::Error>> {
    let (Some((first, _)), Some((last, to))) = (moves.first(), moves.last()) else {
        return Ok(true);
    };
    if to.saturating_add(u64::from(last.len)) <= first.host {
        return Ok(mv(dev, p, moves, true)? == moves.len());
    }
    let mut temp: Vec<(Ext, u64)> = Vec::new();
    temp.try_reserve(moves.len())
        .map_err(|_| Error::OutOfMemory)?;
    let mut at = p.past_end(first);
    for (x, _) in moves {
        at = align_up(at, x.align(p.cs));
        temp.push((*x, at));
        at = at.saturating_add(span(x));
    }
    let out = mv(dev, p, &temp, false)?;
    let mut back: Vec<(Ext, u64)> = Vec::new();
    back.try_reserve(out).map_err(|_| Error::OutOfMemory)?;
    for ((x, t), (_, to)) in temp.iter().zip(moves).take(out) {
        back.push((Ext { host: *t, ..*x }, *to));
    }
    let home = if out == moves.len() {
        mv(dev, p, &back, false)?
    } else {
        0
    };
    // Each extent moved once as far as the user sees: to its place, or (when the
    // picture refused the way back) to its temporary copy.
    for (i, ((x, t), (_, to))) in temp.iter().zip(moves).take(out).enumerate() {
        record(dev, x, if i < home { *to } else { *t })?;
    }
    Ok(out == moves.len() && home == moves.len())
}

/// Fills the holes with the extents at the end of the file, in batches: the last
/// extent goes to the lowest hole it fits, again and again. The space it leaves is
/// the tail, never a hole. When the last extent fits no hole, the extents below it
/// go into holes and it moves down over the space they left. Returns `false` when
/// the picture refused a move (compaction stops there).
fn fill<B: BlockIo>(dev: &mut Dev<'_, B>, p: &mut Packing) -> Result<bool, Error<B::Error>> {
    // Searching holes has a budget; past it, the packing takes over.
    let mut budget: u64 = 1 << 22;
    loop {
        let mut moves: Vec<(Ext, u64)> = Vec::new();
        let mut bytes = 0u64;
        let mut refused = false;
        while let Some(e) = p.last() {
            if moves.len() >= BATCH_EXTENTS || bytes >= BATCH_BYTES {
                break;
            }
            let Some(slot) = p.first_fit(&e, &mut budget) else {
                break;
            };
            // Planned one by one: the next fit sees this one's place taken.
            if !p.plan(&e, slot) {
                refused = true;
                break;
            }
            push(&mut moves, (e, slot))?;
            bytes = bytes.saturating_add(u64::from(e.len));
        }
        if !moves.is_empty() {
            write_batch(dev, &moves)?;
            p.pending.clear();
            for (x, to) in &moves {
                record(dev, x, *to)?;
            }
            #[cfg(test)]
            p.validate();
        }
        if refused {
            return Ok(false);
        }
        if !moves.is_empty() {
            continue;
        }
        let Some(e) = p.last() else { return Ok(true) };
        if e.kind == ExtKind::Header || p.holes.is_empty() || budget == 0 {
            return Ok(true);
        }
        if !make_room(dev, p, &e, &mut budget)? {
            return Ok(false);
        }
        let below = p.covered_end(e.host);
        if !e.leaks_before(below, p.cs) {
            return Ok(true);
        }
        if !mv_down(dev, p, &[(e, align_up(below, e.align(p.cs)))])? {
            return Ok(false);
        }
    }
}

/// Moves the extents right below `e` into holes, one at a time, while they fit one.
fn make_room<B: BlockIo>(
    dev: &mut Dev<'_, B>,
    p: &mut Packing,
    e: &Ext,
    budget: &mut u64,
) -> Result<bool, Error<B::Error>> {
    while let Some(q) = p.pred(e.host) {
        let fit = (q.kind != ExtKind::Header).then(|| p.first_fit(&q, budget));
        let Some(slot) = fit.flatten() else {
            return Ok(true);
        };
        if mv(dev, p, &[(q, slot)], true)? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Packs every extent after the first hole down in order, in batches.
fn pack<B: BlockIo>(dev: &mut Dev<'_, B>, p: &mut Packing) -> Result<(), Error<B::Error>> {
    let Some(mut cursor) = p.first_hole() else {
        return Ok(());
    };
    loop {
        let mut moves: Vec<(Ext, u64)> = Vec::new();
        let mut bytes = 0u64;
        for (_, x) in p.map.range(cursor..) {
            let slot = align_up(cursor, x.align(p.cs));
            if slot >= x.host {
                if !moves.is_empty() {
                    break;
                }
                cursor = cursor.max(x.span_end());
                continue;
            }
            push(&mut moves, (*x, slot))?;
            cursor = slot.saturating_add(span(x));
            bytes = bytes.saturating_add(u64::from(x.len));
            if bytes >= BATCH_BYTES || moves.len() >= BATCH_EXTENTS {
                break;
            }
        }
        if moves.is_empty() || !mv_down(dev, p, &moves)? {
            return Ok(());
        }
    }
}

/// An empty backing name (offset set, length 0) takes no space, but the header needs
/// its offset inside the file: one past every extent moves to right after the header
/// (QEMU reads no byte of it either way), so the file can end with the last extent.
fn unpin_empty_name<B: BlockIo>(dev: &mut Dev<'_, B>, p: &Packing) -> Result<(), Error<B::Error>> {
    let Some(r) = dev.header.backing_name_range().filter(|r| r.is_empty()) else {
        return Ok(());
    };
    let home = HEADER_SIZE as u64;
    if r.start <= home.max(p.covered_end(u64::MAX)) {
        return Ok(());
    }
    let x = Ext {
        host: r.start,
        len: 0,
        l1: 0,
        l2: 0,
        kind: ExtKind::Name,
        flags: 0,
    };
    dev.set_pointer(&x, home)?;
    dev.flush()?;
    record(dev, &x, home)
}

/// Drops the leaked tail of the file, as a fresh scan of it sees the file: the file
/// keeps every byte up to the end of the last extent that starts inside it (the L1
/// table's padding included).
pub(super) fn truncate_tail<B: BlockIo>(
    io: &mut B,
    actions: &mut Vec<Action>,
) -> Result<(), Error<B::Error>> {
    let r = scan(io, false)?.report;
    if r.file_len > r.image_end_offset {
        io.set_len(r.image_end_offset)?;
        io.flush()?;
        push(
            actions,
            Action::Truncated {
                from: r.file_len,
                to: r.image_end_offset,
            },
        )?;
    }
    Ok(())
}

/// Reclaims leaked space (see the module docs). `exts` are all extents in host order
/// (a scan's), none sharing a byte with another.
pub(super) fn compact<B: BlockIo>(
    dev: &mut Dev<'_, B>,
    exts: &[Ext],
) -> Result<(), Error<B::Error>> {
    if let Some(mut p) = Packing::new(exts, dev.geo.cluster_size()) {
        if fill(dev, &mut p)? {
            pack(dev, &mut p)?;
            unpin_empty_name(dev, &p)?;
        }
    }
    let mut actions = core::mem::take(&mut dev.actions);
    let r = truncate_tail(&mut *dev.io, &mut actions);
    dev.actions = actions;
    r
}
