//! A property of `maint::repair`, beside the `check` fuzz target (issue 18): random
//! valid images (made by `write::create` and written through `Image`), damaged in the
//! ways the maintenance suite damages images by hand (leaks, references past the end,
//! misaligned, on the header, name or L1 table, shared clusters and tables, tables on
//! data, streams that do not inflate, entries past the virtual size, flipped table
//! bytes, a backing name moved into the L1 table's padding, emptied, or overlapping
//! the L1 table),
//! then repaired. Each case goes through the `check` harness: check agrees with the
//! reader, and after `repair` in either mode every cluster that read before reads the
//! same, the image checks as the repair reports, no action is listed twice, no move
//! goes where the extent already is, and after `All` nothing is left but what cannot
//! be repaired. Besides, `repair` succeeds in both modes and moves each extent at
//! most twice.
//!
//! Thousands of cases from fixed seeds, on stable, in `cargo test` here (`cargo
//! xtask fuzz-replay`); `PROPERTY_CASES` sets another count, `PROPERTY_SEED` another
//! first seed.

use embedded_io::ErrorKind;
use qcow_core::check::{check, Report};
use qcow_core::header::Header;
use qcow_core::image::scratch_len;
use qcow_core::io::MemIo;
use qcow_core::maint::{repair, Action, RepairMode, RepairReport};
use qcow_core::write::{create, CreateOptions};
use qcow_core::{Image, NoBacking};

type E = ErrorKind;

/// SplitMix64: small, deterministic, good enough to pick damage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.below(v.len() as u64) as usize])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The image under construction, and where its tables are.
struct Img {
    bytes: Vec<u8>,
    h: Header,
}

impl Img {
    fn get(&self, at: u64) -> u64 {
        let at = at as usize;
        u64::from_be_bytes(self.bytes[at..at + 8].try_into().unwrap())
    }
    fn put(&mut self, at: u64, v: u64) {
        let at = at as usize;
        self.bytes[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
    fn cs(&self) -> u64 {
        1 << self.h.cluster_bits
    }
    fn l1_at(&self, i: u64) -> u64 {
        self.h.l1_table_offset + 8 * i
    }
    /// (L1 index, table host) of every table inside the file.
    fn tables(&self) -> Vec<(u64, u64)> {
        let g = self.h.geometry();
        let len = self.bytes.len() as u64;
        (0..g.l1_size())
            .map(|i| (i, self.get(self.l1_at(i))))
            .filter(|&(_, t)| t != 0 && t.saturating_add(g.l2_bytes()) <= len)
            .collect()
    }
    /// Where every nonzero L2 entry is stored, with its value.
    fn entries(&self) -> Vec<(u64, u64)> {
        let g = self.h.geometry();
        let mut v = Vec::new();
        for (_, t) in self.tables() {
            for j in 0..g.l2_entries() {
                let e = self.get(t + 8 * j);
                if e != 0 {
                    v.push((t + 8 * j, e));
                }
            }
        }
        v
    }
    fn write_header(&mut self) {
        self.bytes[..48].copy_from_slice(&self.h.encode());
    }
}

const COMPRESSED: u64 = 1 << 63;

/// A valid image: random geometry, an optional backing name, plain and compressed
/// writes, partial writes over compressed clusters (their streams leak).
fn valid(r: &mut Rng) -> Img {
    let cluster_bits = 9 + r.below(4) as u8;
    let l2_bits = 6 + r.below(3) as u8;
    let span = 1u64 << (cluster_bits + l2_bits);
    let cs = 1u64 << cluster_bits;
    let size = (2 + r.below(3 * span)).min(400 * cs);
    let name_len = r.below(3) * (1 + r.below(40));
    let name = r.bytes(name_len as usize);
    let mut io = MemIo::default();
    let opts = CreateOptions::new(size)
        .backing((!name.is_empty()).then_some(&name[..]))
        .cluster_bits(Some(cluster_bits))
        .l2_bits(Some(l2_bits));
    let h = create(&mut io, &opts).expect("create");
    let g = h.geometry();
    let mut img = Image::open(io, NoBacking::<E>::new(), vec![0u8; scratch_len(&g)])
        .expect("open what we made");
    let clusters = g.size().div_ceil(cs);
    for _ in 0..r.below(14) {
        let at = r.below(clusters) * cs;
        let room = g.size() - at;
        let data = r.bytes(cs.min(room) as usize);
        match r.below(4) {
            0 | 1 => {
                let off = at + r.below(cs);
                let len = (1 + r.below(2 * cs)).min(g.size() - off.min(g.size()));
                if off < g.size() {
                    img.write_at(off, &data[..len.min(data.len() as u64) as usize])
                        .expect("write");
                }
            }
            2 => img.write_compressed(at, &data).expect("compressed write"),
            _ => {
                img.write_compressed(at, &data).expect("compressed write");
                img.write_at(at + r.below(room.min(cs)), b"x")
                    .expect("partial write");
            }
        }
    }
    let (MemIo(bytes), _) = img.into_parts();
    Img { bytes, h }
}

/// One damage of the kinds the maintenance tests make by hand.
fn damage(r: &mut Rng, m: &mut Img) {
    let cs = m.cs();
    let len = m.bytes.len() as u64;
    let tables = m.tables();
    let entries = m.entries();
    let l1_size = m.h.geometry().l1_size();
    let l2_entries = m.h.geometry().l2_entries();
    let any_l2_slot = |r: &mut Rng| r.pick(&tables).map(|(_, t)| t + 8 * r.below(l2_entries));
    let metadata_end = m.h.l1_table_offset + 8 * l1_size;
    match r.below(16) {
        // Leaks: a dropped cluster, an unlinked table, garbage at the end.
        0 => {
            if let Some((at, _)) = r.pick(&entries) {
                m.put(at, 0);
            }
        }
        1 => {
            if let Some((i, _)) = r.pick(&tables) {
                let at = m.l1_at(i);
                m.put(at, 0);
            }
        }
        2 => {
            let n = 1 + r.below(3 * cs);
            let junk = r.bytes(n as usize);
            m.bytes.extend_from_slice(&junk);
        }
        // Past the end of the file (aligned, or with an overflowing end).
        3 => {
            let far = [
                len.div_ceil(cs) * cs + cs * r.below(4),
                (u64::MAX >> 2) & !(cs - 1),
            ];
            let v = far[r.below(2) as usize];
            if r.below(2) == 0 {
                if let Some(at) = any_l2_slot(r) {
                    m.put(at, v);
                }
            } else {
                let at = m.l1_at(r.below(l1_size));
                m.put(at, v);
            }
        }
        // Misaligned: inside the file, not on a cluster boundary.
        4 => {
            let v = (r.below(len) | 1).max(cs + 1);
            if r.below(3) > 0 {
                if let Some(at) = any_l2_slot(r) {
                    m.put(at, v & !(if r.below(2) == 0 { 0 } else { 511 }));
                }
            } else {
                let at = m.l1_at(r.below(l1_size));
                m.put(at, v);
            }
        }
        // On the header, the backing name or the L1 table.
        5 => {
            if let Some(at) = any_l2_slot(r) {
                m.put(at, r.below(metadata_end.max(1)));
            }
        }
        // Two references to the same cluster.
        6 => {
            if let (Some((_, v)), Some(at)) = (r.pick(&entries), any_l2_slot(r)) {
                m.put(at, v);
            }
        }
        // Two L1 entries sharing a table.
        7 => {
            if let Some((_, t)) = r.pick(&tables) {
                let at = m.l1_at(r.below(l1_size));
                m.put(at, t);
            }
        }
        // A table on a data cluster, a data cluster on a table.
        8 => {
            let data: Vec<u64> = entries
                .iter()
                .filter(|(_, v)| v & COMPRESSED == 0)
                .map(|&(_, v)| v)
                .collect();
            if let Some(host) = r.pick(&data) {
                let at = m.l1_at(r.below(l1_size));
                m.put(at, host);
            }
        }
        9 => {
            if let (Some((_, t)), Some(at)) = (r.pick(&tables), any_l2_slot(r)) {
                m.put(at, t);
            }
        }
        // A compressed entry over random bytes, or of length zero.
        10 => {
            if let Some(at) = any_l2_slot(r) {
                let shift = 63 - m.h.cluster_bits;
                let host = r.below(len);
                let clen = if r.below(4) == 0 {
                    0
                } else {
                    1 + r.below(cs - 1)
                };
                m.put(at, COMPRESSED | clen << shift | host);
            }
        }
        // An entry past the virtual size, in the last table.
        11 => {
            let g = m.h.geometry();
            let last = l1_size - 1;
            let first_beyond = g.size().div_ceil(cs) - last * l2_entries;
            if let Some(&(_, t)) = tables.iter().find(|(i, _)| *i == last) {
                if first_beyond < l2_entries {
                    let j = first_beyond + r.below(l2_entries - first_beyond);
                    let v = r.pick(&entries).map_or(cs * r.below(len / cs), |e| e.1);
                    m.put(t + 8 * j, v);
                }
            }
        }
        // Flipped bits in a table.
        12 => {
            if let Some((_, t)) = r.pick(&tables) {
                let at = (t + r.below(8 * l2_entries)) as usize;
                m.bytes[at] ^= 1 << r.below(8);
            }
        }
        // The backing name moved into the L1 table's padding (issue 18), or to the end;
        // or emptied (its offset kept), pointing anywhere in the file.
        13 => {
            let n = r.below(13);
            if n == 0 && r.below(2) == 0 {
                m.h.backing_file_offset = 48 + r.below(len - 48);
                m.h.backing_file_size = 0;
                m.write_header();
                return;
            }
            let pad_end = m.h.l1_table_offset + (8 * l1_size).div_ceil(512) * 512;
            let at = if r.below(2) == 0 && metadata_end + n <= pad_end.min(len) {
                metadata_end + r.below(pad_end.min(len) - metadata_end - n + 1)
            } else {
                m.bytes.resize(len as usize, 0);
                len
            };
            let name = r.bytes(n as usize);
            let end = (at + n) as usize;
            if m.bytes.len() < end {
                m.bytes.resize(end, 0);
            }
            m.bytes[at as usize..end].copy_from_slice(&name);
            m.h.backing_file_offset = at;
            m.h.backing_file_size = n as u32;
            m.write_header();
        }
        // The backing name overlapping the L1 table (not repairable).
        14 => {
            m.h.backing_file_offset = m.h.l1_table_offset + r.below(8 * l1_size);
            m.h.backing_file_size = 1 + r.below(16) as u32;
            m.write_header();
        }
        // An entry pointing into the backing name.
        _ => {
            if let (Some(name), Some(at)) = (m.h.backing_name_range(), any_l2_slot(r)) {
                m.put(at, name.start + r.below(name.end - name.start));
            }
        }
    }
}

fn moves(a: &[Action]) -> usize {
    a.iter()
        .filter(|a| matches!(a, Action::Moved { .. }))
        .count()
}

/// What repair must hold to besides the harness's checks: it succeeds, and moves
/// each extent at most twice.
fn judge_repair(bytes: &[u8], mode: RepairMode, before: &Report, what: &str) -> RepairReport {
    let mut io = MemIo(bytes.to_vec());
    let rep = repair(&mut io, mode).unwrap_or_else(|e| panic!("{what}: repair {mode:?}: {e:?}"));
    let extents = before.allocated_clusters + before.l2_tables + 3;
    assert!(
        moves(&rep.actions) as u64 <= 2 * extents + 1,
        "{what}: {} moves for {extents} extents",
        moves(&rep.actions)
    );
    rep
}

#[test]
fn repair_keeps_every_healthy_cluster() {
    let cases: u64 = std::env::var("PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let first: u64 = std::env::var("PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut repaired, mut moved, mut left, mut skipped) = (0, 0, 0, 0);
    for seed in first..first + cases {
        let mut r = Rng(seed);
        let mut m = valid(&mut r);
        for _ in 0..1 + r.below(4) {
            damage(&mut r, &mut m);
        }
        let what = format!("seed {seed}");
        let before = match check(&mut MemIo(m.bytes.clone())) {
            Ok(b) => b,
            // The damage reached the header (a table placed on it): nothing to repair.
            Err(_) => {
                skipped += 1;
                continue;
            }
        };
        // The harness: check agrees with the reader, repair(All) keeps every cluster
        // that reads and leaves nothing it can repair.
        qcow_fuzz::check(&m.bytes);
        let all = judge_repair(&m.bytes, RepairMode::All, &before, &what);
        judge_repair(&m.bytes, RepairMode::Leaks, &before, &what);
        repaired += u64::from(!before.is_clean());
        moved += u64::from(moves(&all.actions) > 0);
        left += u64::from(!all.after.corruptions.is_empty());
    }
    eprintln!(
        "{cases} cases: {repaired} damaged, {moved} compacted, {left} left unrepairable, \
         {skipped} with a header check refuses"
    );
    assert!(skipped < cases / 20, "too many cases damage the header");
    assert!(
        repaired > cases / 2 && moved > cases / 4,
        "the damage is too mild"
    );
}
