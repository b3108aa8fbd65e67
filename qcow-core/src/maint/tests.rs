//! Resize, backing file changes, rebase and reclaiming; and fault injection: every
//! write of those workloads is made to fail in turn (or the disk fills up), and the
//! image left behind must open, check without corruption, read the old or the new
//! guest content, and repair to a clean image with the same content.

extern crate std;

use crate::testutil::{get, put};
use std::format;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::check::check;
use crate::image::{read_backing_name, NoBacking, Raw};
use crate::io::MemIo;
use crate::write::{create, CreateOptions};
use embedded_io::{ErrorKind, ErrorType};

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    crate::testutil::mixed(seed, len, 300)
}

fn new_image(size: u64, cluster_bits: u8, l2_bits: u8, backing: Option<&[u8]>) -> MemIo {
    let mut io = MemIo::default();
    let opts = CreateOptions {
        cluster_bits: Some(cluster_bits),
        l2_bits: Some(l2_bits),
        backing,
        ..CreateOptions::new(size)
    };
    create(&mut io, &opts).unwrap();
    io
}

type Img<B> = Image<B, NoBacking<ErrorKind>, Vec<u8>>;

fn open<B: BlockIo<Error = ErrorKind>>(io: B) -> Img<B> {
    Image::open(io, NoBacking::new(), vec![0u8; 1 << 17]).unwrap()
}

/// Writes `(offset, data, compressed)` ops; returns the image and its content.
fn written(mut io: MemIo, ops: &[(u64, Vec<u8>, bool)]) -> (MemIo, Vec<u8>) {
    let size = read_header(&mut io).unwrap().geometry().size();
    let mut img = open(io);
    let mut model = vec![0u8; size as usize];
    for (at, data, compressed) in ops {
        if *compressed {
            img.write_compressed(*at, data).unwrap();
        } else {
            img.write_at(*at, data).unwrap();
        }
        model[*at as usize..*at as usize + data.len()].copy_from_slice(data);
    }
    (img.into_parts().0, model)
}

/// The guest content, read with no backing file.
fn content(io: &MemIo) -> Vec<u8> {
    let mut img = open(io.clone());
    let mut out = vec![0u8; img.size() as usize];
    img.read_at(0, &mut out).unwrap();
    out
}

fn with_zeros(model: &[u8], size: u64) -> Vec<u8> {
    let mut m = model.to_vec();
    m.resize(size as usize, 0);
    m
}

fn assert_clean(io: &mut MemIo) {
    let r = check(io).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.image_end_offset, r.file_len, "{r:?}");
}

/// 512-byte clusters, 64-entry tables (32 KiB per table): `mib` MiB need an L1 table
/// of `mib` × 256 bytes at 48, and the first allocation lands right after it.
fn small_clusters_of(mib: u64) -> (MemIo, Vec<u8>) {
    let size = mib << 20;
    let io = new_image(size, 9, 6, None);
    let mut ops = Vec::new();
    for i in 0..40u64 {
        let at = i * 97 * 4096 * mib / 16 + (i % 3) * 512;
        ops.push((
            at % size,
            pattern(i as u32, 700 + (i as usize % 5) * 300),
            i % 4 == 1,
        ));
    }
    ops.retain(|(at, d, _)| at + d.len() as u64 <= size);
    // Compressed writes need whole, aligned clusters.
    for op in &mut ops {
        if op.2 {
            op.0 &= !511;
            op.1.truncate(512);
        }
    }
    written(io, &ops)
}

/// [`small_clusters_of`] 16 MiB: a 4 KiB L1 table.
fn small_clusters() -> (MemIo, Vec<u8>) {
    small_clusters_of(16)
}

#[test]
fn resize_grows_in_place_at_the_end() {
    let mut io = new_image(1 << 20, 12, 9, None);
    let r = resize(&mut io, 100 << 20, false).unwrap();
    assert!(!r.l1_moved);
    assert_eq!((r.old_size, r.new_size), (1 << 20, 100 << 20));
    // 50 entries, padded to 512 bytes, right after the header: QEMU's own layout.
    assert_eq!(io.0.len(), 48 + 512);
    assert_clean(&mut io);
    assert_eq!(open(io).size(), 100 << 20);
}

#[test]
fn resize_grows_in_place_into_free_space() {
    // 4 KiB clusters: the L1 table (48..56) is followed by free space up to 4096.
    let (mut io, model) = written(
        new_image(1 << 20, 12, 9, None),
        &[(5000, pattern(1, 9000), false)],
    );
    let len = io.0.len();
    // 128 entries: 48..1072, clear of the first cluster at 4096.
    let r = resize(&mut io, 256 << 20, false).unwrap();
    assert!(!r.l1_moved);
    assert_eq!(io.0.len(), len);
    assert_clean(&mut io);
    assert_eq!(content(&io)[..1 << 20], model[..]);
}

#[test]
fn resize_moves_the_l1_table_and_reclaims_its_space() {
    let (mut io, model) = small_clusters();
    let len = io.0.len() as u64;
    let r = resize(&mut io, 64 << 20, false).unwrap();
    assert!(r.l1_moved);
    assert!(!r.actions.is_empty());
    assert_clean(&mut io);
    // The old 4 KiB table's space was reused: the file grew by about the new table.
    assert!(
        io.0.len() as u64 <= len + 16384,
        "{} -> {}",
        len,
        io.0.len()
    );
    assert_eq!(content(&io), with_zeros(&model, 64 << 20));
    // Grow again (the table is somewhere else now), then shrink back.
    resize(&mut io, 1 << 30, false).unwrap();
    assert_clean(&mut io);
    resize(&mut io, 16 << 20, true).unwrap();
    assert_clean(&mut io);
    assert_eq!(content(&io), model);
}

#[test]
fn resize_rounds_and_refuses_to_shrink() {
    let (mut io, model) = written(
        new_image(1 << 20, 12, 6, None),
        &[(0, pattern(1, 1 << 20), false)],
    );
    let r = resize(&mut io, (1 << 20) + 1, false).unwrap();
    assert_eq!(r.new_size, (1 << 20) + 512);
    assert!(matches!(
        resize(&mut io, 1000, false),
        Err(Error::ShrinkRefused { size, new_size: 1024 }) if size == (1 << 20) + 512
    ));
    assert_eq!(
        resize(&mut io, 0, true).unwrap_err(),
        Error::SizeTooSmall(0)
    );
    assert!(matches!(
        resize(&mut io, u64::MAX - 10, false),
        Err(Error::ImageTooLarge(_))
    ));
    assert_eq!(content(&io), with_zeros(&model, (1 << 20) + 512));
}

#[test]
fn shrink_drops_entries_and_zeroes_the_partial_cluster() {
    let (mut io, model) = written(
        new_image(1 << 20, 12, 6, None),
        &[
            (0, pattern(1, 1 << 20), false),
            (300 << 10, vec![b'c'; 4096], true),
        ],
    );
    let len = io.0.len();
    // 300 KiB + 1000: the second table keeps entries 0..11, the third and fourth go.
    let new_size = (300 << 10) + 1000;
    let r = resize(&mut io, new_size, true).unwrap();
    assert_eq!(r.new_size, (300 << 10) + 1024);
    assert!(r.dropped > 0);
    assert_clean(&mut io);
    assert!(io.0.len() < len / 3, "{} -> {}", len, io.0.len());
    assert_eq!(content(&io), model[..(300 << 10) + 1024]);
    // Growing back shows zeros past the old end, also in the partial last cluster
    // (compressed: rewritten as a plain cluster).
    resize(&mut io, 1 << 20, false).unwrap();
    assert_clean(&mut io);
    let c = content(&io);
    assert_eq!(c[..(300 << 10) + 1024], model[..(300 << 10) + 1024]);
    assert!(c[(300 << 10) + 1024..].iter().all(|&b| b == 0));
    let (mut io, model) = written(
        new_image(1 << 20, 12, 6, None),
        &[(0, pattern(2, 1 << 20), false)],
    );
    resize(&mut io, 5000, true).unwrap();
    resize(&mut io, 1 << 20, false).unwrap();
    let mut expect = model[..5120].to_vec();
    expect.resize(1 << 20, 0);
    assert_eq!(content(&io), expect);
}

#[test]
fn grow_rewrites_a_cut_compressed_cluster_clear_of_the_growing_l1_table() {
    let (mut io, _) = written(
        new_image(1 << 20, 12, 6, None),
        &[(0, vec![b'c'; 4096], true)],
    );
    // The L1 table (4 entries) moved to the end of the file, and the size cut to 1 KiB
    // inside the compressed cluster, as a shrink leaves it.
    let mut h = read_header(&mut io).unwrap();
    let mut l1 = [0u8; 32];
    io.read_at(h.l1_table_offset, &mut l1).unwrap();
    let at = (io.0.len() as u64).next_multiple_of(512);
    io.write_at(at, &l1[..8]).unwrap();
    h.l1_table_offset = at;
    h.size = 1024;
    io.write_at(0, &h.encode()).unwrap();
    assert!(check(&mut io).unwrap().corruptions.is_empty());
    assert_eq!(io.0.len() as u64, at + 8, "the L1 table ends the file");
    assert_eq!(content(&io), vec![b'c'; 1024]);
    // 1 GiB: 4096 entries reach the cluster boundary where the plain copy goes.
    let r = resize(&mut io, 1 << 30, false).unwrap();
    assert!(r.l1_moved);
    assert_clean(&mut io);
    let mut img = open(io.clone());
    let mut c = vec![0u8; 8192];
    img.read_at(0, &mut c).unwrap();
    assert_eq!(c[..1024], [b'c'; 1024]);
    assert!(c[1024..].iter().all(|&b| b == 0));
}

#[test]
fn grow_drops_stale_entries_past_the_old_size() {
    let (mut io, model) = written(
        new_image(1 << 20, 12, 9, None),
        &[(0, pattern(3, 8192), false)],
    );
    // An entry past the 1 MiB size in the only table (which spans 2 MiB).
    let l1o = read_header(&mut io).unwrap().l1_table_offset;
    let mut b = [0u8; 8];
    io.read_at(l1o, &mut b).unwrap();
    let table = u64::from_be_bytes(b);
    io.write_at(table + 8 * 300, &4096u64.to_be_bytes())
        .unwrap();
    let r = check(&mut io).unwrap();
    assert!(matches!(
        r.corruptions[..],
        [Corruption::BeyondSize { .. }, Corruption::Overlap { .. }]
    ));
    assert_eq!(
        resize(&mut io, 2 << 20, false).unwrap_err(),
        Error::Corrupt(1)
    );
    // Without the overlap, resize accepts it and drops the stale entry.
    io.write_at(table + 8 * 300, &(io.0.len() as u64).to_be_bytes())
        .unwrap();
    io.write_at(io.0.len() as u64, &[7u8; 4096]).unwrap();
    let r = resize(&mut io, 2 << 20, false).unwrap();
    assert_eq!(r.dropped, 1);
    assert_clean(&mut io);
    assert_eq!(content(&io), with_zeros(&model, 2 << 20));
}

fn name(io: &mut MemIo) -> Vec<u8> {
    let h = read_header(io).unwrap();
    let mut buf = [0u8; MAX_BACKING_NAME];
    read_backing_name(io, &h, &mut buf).unwrap().to_vec()
}

#[test]
fn backing_file_names() {
    // QEMU's overlay layout: name at 48, L1 table right after it.
    let (mut io, model) = written(
        new_image(1 << 20, 9, 12, Some(b"base.img")),
        &[(0, pattern(4, 3000), false)],
    );
    // Shorter: written elsewhere first, then moved home to 48.
    let r = set_backing_file(&mut io, b"b.img").unwrap();
    assert_eq!((r.offset, r.len), (48, 5));
    assert_eq!(name(&mut io), b"b.img");
    assert_clean(&mut io);
    // Longer than the room before the L1 table: lives somewhere free.
    let long = [b'x'; 700];
    let r = set_backing_file(&mut io, &long).unwrap();
    assert_ne!(r.offset, 48);
    assert_eq!(name(&mut io), long);
    assert_clean(&mut io);
    // Removed.
    let r = set_backing_file(&mut io, b"").unwrap();
    assert_eq!((r.offset, r.len), (0, 0));
    assert!(!read_header(&mut io).unwrap().has_backing());
    assert_clean(&mut io);
    // Added to an image that had none (L1 table at 48).
    set_backing_file(&mut io, b"again.qcow").unwrap();
    assert_eq!(name(&mut io), b"again.qcow");
    assert_clean(&mut io);
    assert_eq!(content(&io), model);
    assert_eq!(
        set_backing_file(&mut io, &[b'y'; 1024]).unwrap_err(),
        Error::BackingNameTooLong(1024)
    );
}

#[test]
fn rebase_keeps_the_guest_content() {
    let size = 1u64 << 20;
    let old_base = pattern(10, size as usize);
    let mut new_base = old_base.clone();
    new_base[100_000..200_000].fill(0);
    new_base[500_000..500_010].copy_from_slice(b"different!");
    new_base.truncate(900_000);
    let (io, _) = written(
        new_image(size, 9, 12, Some(b"old")),
        &[(150_000, pattern(11, 20_000), false)],
    );
    let read = |io: &MemIo, base: &[u8]| {
        let raw = Raw::new(MemIo(base.to_vec())).unwrap();
        let mut img = Image::open(io.clone(), raw, vec![0u8; 1024]).unwrap();
        let mut out = vec![0u8; size as usize];
        img.read_at(0, &mut out).unwrap();
        out
    };
    let before = read(&io, &old_base);
    let mut img = Image::open(
        io,
        Raw::new(MemIo(old_base.clone())).unwrap(),
        vec![0u8; 1024],
    )
    .unwrap();
    let mut nb = Raw::new(MemIo(new_base.clone())).unwrap();
    let r = rebase(&mut img, &mut nb, b"new").unwrap();
    // 100000..200000 minus the overlay's own 150000..170000, 500000, and 900000..
    assert!(r.copied_clusters > 100, "{}", r.copied_clusters);
    assert_eq!(img.header().backing_file_size, 3);
    let mut io = img.into_parts().0;
    assert_eq!(name(&mut io), b"new");
    assert_clean(&mut io);
    assert_eq!(read(&io, &new_base), before);
    // Onto nothing: everything the backing file provided is copied.
    let mut img = Image::open(
        io,
        Raw::new(MemIo(new_base.clone())).unwrap(),
        vec![0u8; 1024],
    )
    .unwrap();
    rebase(&mut img, &mut NoBacking::new(), b"").unwrap();
    let mut io = img.into_parts().0;
    assert!(!read_header(&mut io).unwrap().has_backing());
    assert_clean(&mut io);
    assert_eq!(content(&io), before);
}

/// Drops random data clusters (holes), then reclaims: the result checks clean, reads
/// the same, and is no longer than a fresh copy of the remaining data would need.
#[test]
fn reclaiming_random_holes() {
    for seed in 0..40u32 {
        let (cb, l2b) = [(9, 6), (9, 12), (12, 6), (12, 9), (16, 6)][seed as usize % 5];
        let size = 4u64 << 20;
        let cs = 1u64 << cb;
        let mut ops = Vec::new();
        let mut x = seed.wrapping_mul(7919) + 1;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            u64::from(x) % n
        };
        for i in 0..60 {
            let cl = rnd(size / cs);
            let compressed = rnd(3) == 0;
            let len = if compressed {
                cs.min(size - cl * cs) as usize
            } else {
                1 + rnd(2 * cs) as usize
            };
            let at = cl * cs;
            if at + len as u64 <= size {
                ops.push((at, pattern(seed * 100 + i, len), compressed));
            }
        }
        let (mut io, mut model) = written(new_image(size, cb, l2b, None), &ops);
        // Overwrite some compressed clusters in part: QEMU leaks their streams too.
        let mut img = open(io);
        for (at, _, c) in ops.iter().filter(|o| o.2).take(3) {
            let _ = c;
            img.write_at(at + 10, b"partial").unwrap();
            model[*at as usize + 10..*at as usize + 17].copy_from_slice(b"partial");
        }
        io = img.into_parts().0;
        // Drop a few clusters by zeroing their L2 entries.
        let h = read_header(&mut io).unwrap();
        let g = h.geometry();
        for _ in 0..8 {
            let guest = rnd(size / cs) * cs;
            let mut b = [0u8; 8];
            io.read_at(h.l1_table_offset + 8 * g.l1_index(guest), &mut b)
                .unwrap();
            let t = u64::from_be_bytes(b);
            if t != 0 {
                io.write_at(t + 8 * g.l2_index(guest), &[0u8; 8]).unwrap();
                model[guest as usize..(guest + cs) as usize].fill(0);
            }
        }
        let before = check(&mut io).unwrap();
        assert!(before.corruptions.is_empty(), "seed {seed}: {before:?}");
        let r = repair(&mut io, RepairMode::Leaks).unwrap();
        assert!(r.after.is_clean(), "seed {seed}: {:?}", r.after);
        assert_eq!(r.leaks_fixed(), before.leaked_clusters);
        assert_eq!(content(&io), model, "seed {seed}");
        assert!(r.after.file_len <= before.file_len, "seed {seed}");
    }
}

/// A device whose `fail_at`-th write (or set_len) fails, torn at a sector boundary,
/// or that fills up after `bytes_left` bytes; `flushed` is its content at the last
/// flush (what survives when unflushed writes are lost).
struct Faulty {
    inner: MemIo,
    flushed: MemIo,
    writes: usize,
    spent: u64,
    fail_at: Option<usize>,
    bytes_left: Option<u64>,
    failed: bool,
}

impl Faulty {
    fn new(io: MemIo, fail_at: Option<usize>, bytes_left: Option<u64>) -> Self {
        Faulty {
            flushed: io.clone(),
            inner: io,
            writes: 0,
            spent: 0,
            fail_at,
            bytes_left,
            failed: false,
        }
    }

    fn spend(&mut self, n: u64) -> Result<(), ErrorKind> {
        if self.failed {
            return Err(ErrorKind::Other);
        }
        self.writes += 1;
        self.spent += n;
        if self.fail_at == Some(self.writes - 1) {
            self.failed = true;
            return Err(ErrorKind::Other);
        }
        if let Some(b) = &mut self.bytes_left {
            if *b < n {
                self.failed = true;
                return Err(ErrorKind::OutOfMemory);
            }
            *b -= n;
        }
        Ok(())
    }
}

impl ErrorType for Faulty {
    type Error = ErrorKind;
}

impl BlockIo for Faulty {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ErrorKind> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), ErrorKind> {
        let r = self.spend(buf.len() as u64);
        if r.is_err() && self.fail_at == Some(self.writes - 1) {
            // Torn: the sectors before the middle made it.
            let keep = ((offset + buf.len() as u64 / 2) & !511).saturating_sub(offset) as usize;
            if keep > 0 && keep < buf.len() {
                self.inner.write_at(offset, &buf[..keep])?;
            }
        }
        r?;
        self.inner.write_at(offset, buf)
    }
    fn len(&mut self) -> Result<u64, ErrorKind> {
        self.inner.len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), ErrorKind> {
        self.spend(len.saturating_sub(self.inner.0.len() as u64))?;
        self.inner.set_len(len)
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        if self.failed {
            return Err(ErrorKind::Other);
        }
        self.flushed = self.inner.clone();
        Ok(())
    }
}

/// Runs `work` with every write failing in turn, and with the disk filling up at
/// many points; `verify` judges each image left behind (`true` once it succeeded).
fn inject<W, V>(what: &str, start: &MemIo, work: W, verify: V) -> usize
where
    W: Fn(&mut Faulty) -> Result<(), Error<ErrorKind>>,
    V: Fn(&mut MemIo, bool, &str),
{
    let mut k = 0;
    let total = loop {
        let mut dev = Faulty::new(start.clone(), Some(k), None);
        let res = work(&mut dev);
        if res.is_ok() {
            assert_eq!(dev.writes, k, "{what}: all writes done");
            verify(&mut dev.inner, true, &format!("{what}: no fault"));
            break dev.spent;
        }
        verify(
            &mut dev.inner.clone(),
            false,
            &format!("{what}: write #{k} failed"),
        );
        verify(
            &mut dev.flushed.clone(),
            false,
            &format!("{what}: write #{k} failed, unflushed lost"),
        );
        k += 1;
    };
    for budget in (0..total).step_by((total as usize / 40).max(1)) {
        let mut dev = Faulty::new(start.clone(), None, Some(budget));
        let ok = work(&mut dev).is_ok();
        verify(
            &mut dev.inner.clone(),
            ok,
            &format!("{what}: disk full after {budget} bytes"),
        );
        verify(
            &mut dev.flushed.clone(),
            ok,
            &format!("{what}: disk full after {budget} bytes, unflushed lost"),
        );
    }
    k
}

/// An interrupted image checks without corruption (`allowed` excepted), reads one of
/// `contents`, and repairs to a clean image reading the same.
fn judge(
    io: &mut MemIo,
    contents: &[&[u8]],
    allowed: fn(&Corruption) -> bool,
    what: &str,
) -> usize {
    let r = check(io).unwrap_or_else(|e| panic!("{what}: check failed: {e:?}"));
    assert!(
        r.corruptions.iter().all(allowed),
        "{what}: {:?}",
        r.corruptions
    );
    let got = content(io);
    let which = contents
        .iter()
        .position(|c| *c == &got[..])
        .unwrap_or_else(|| panic!("{what}: neither old nor new content"));
    let r = repair(io, RepairMode::All).unwrap();
    assert!(r.after.is_clean(), "{what}: after repair {:?}", r.after);
    assert_eq!(content(io), got, "{what}: repair changed the content");
    which
}

fn none(_: &Corruption) -> bool {
    false
}

#[test]
fn faults_resize_grow_moving_l1() {
    // A 1 KiB L1 table at 48..1072 becomes 2 KiB: it moves, and the cluster at
    // 512..1024 it leaves is reclaimed.
    let (start, model) = small_clusters_of(4);
    let grown = with_zeros(&model, 8 << 20);
    let writes = inject(
        "grow",
        &start,
        |d| resize(d, 8 << 20, false).map(|_| ()),
        |io, done, what| {
            let i = judge(io, &[&model, &grown], none, what);
            assert!(!done || i == 1, "{what}");
        },
    );
    assert!(writes > 10, "{writes}");
    // The moved table is reclaimed in place of what preceded it.
    let mut io = start.clone();
    let r = resize(&mut io, 8 << 20, false).unwrap();
    assert!(r.l1_moved && !r.actions.is_empty(), "{r:?}");
}

#[test]
fn faults_resize_grow_over_a_cut_compressed_cluster() {
    let (mut start, model) = written(
        new_image(1 << 20, 12, 6, None),
        &[
            (0, pattern(8, 300 << 10), false),
            (300 << 10, vec![b'c'; 4096], true),
        ],
    );
    let cut = (300 << 10) + 1024;
    resize(&mut start, cut as u64, true).unwrap();
    let old = &model[..cut];
    let grown = with_zeros(old, 1 << 20);
    inject(
        "grow over a cut compressed cluster",
        &start,
        |d| resize(d, 1 << 20, false).map(|_| ()),
        |io, done, what| {
            let i = judge(io, &[old, &grown], none, what);
            assert!(!done || i == 1, "{what}");
        },
    );
}

#[test]
fn faults_resize_shrink() {
    let (start, model) = small_clusters_of(4);
    let small = &model[..(1 << 20) + 512];
    inject(
        "shrink",
        &start,
        |d| resize(d, (1 << 20) + 300, true).map(|_| ()),
        |io, done, what| {
            let beyond = |c: &Corruption| matches!(c, Corruption::BeyondSize { .. });
            let i = judge(io, &[&model, small], beyond, what);
            assert!(!done || i == 1, "{what}");
        },
    );
}

#[test]
fn faults_backing_file_change() {
    let (start, model) = written(
        new_image(1 << 20, 9, 12, Some(b"base")),
        &[(0, pattern(5, 5000), false)],
    );
    for new in [&b"other-base-name"[..], b"", &[b'n'; 900][..], b"b"] {
        inject(
            "rebase -u",
            &start,
            |d| set_backing_file(d, new).map(|_| ()),
            |io, done, what| {
                judge(io, &[&model], none, what);
                let n = name(io);
                assert!(n == b"base" || n == new, "{what}: name {n:?}");
                assert!(!done || n == new, "{what}");
            },
        );
    }
}

#[test]
fn faults_repair_leaks() {
    let (mut start, mut model) = small_clusters_of(4);
    // Holes: drop the entries of a few clusters near the start of the file.
    let h = read_header(&mut start).unwrap();
    let g = h.geometry();
    for guest in [0u64, 97 * 1024, 2 * 97 * 1024 + 1024] {
        let guest = guest & !511;
        let mut b = [0u8; 8];
        start
            .read_at(h.l1_table_offset + 8 * g.l1_index(guest), &mut b)
            .unwrap();
        let t = u64::from_be_bytes(b);
        start
            .write_at(t + 8 * g.l2_index(guest), &[0u8; 8])
            .unwrap();
        model[guest as usize..guest as usize + 512].fill(0);
    }
    let len = start.0.len();
    start.write_at(len as u64, &[1u8; 5000]).unwrap();
    assert!(check(&mut start).unwrap().leaked_clusters > 3);
    inject(
        "repair leaks",
        &start,
        |d| repair(d, RepairMode::Leaks).map(|_| ()),
        |io, _, what| {
            judge(io, &[&model], none, what);
        },
    );
}

#[test]
fn faults_repair_all() {
    let (mut start, model) = written(
        new_image(1 << 20, 12, 6, None),
        &[
            (0, pattern(6, 3 * 4096), false),
            (300 << 10, pattern(7, 4096), false),
        ],
    );
    let h = read_header(&mut start).unwrap();
    let g = h.geometry();
    let mut b = [0u8; 8];
    start.read_at(h.l1_table_offset, &mut b).unwrap();
    let t0 = u64::from_be_bytes(b);
    // Cluster 5 shares cluster 1's data; L1[3] shares table 0; garbage at the end.
    let mut e = [0u8; 8];
    start.read_at(t0 + 8, &mut e).unwrap();
    start.write_at(t0 + 8 * 5, &e).unwrap();
    start
        .write_at(h.l1_table_offset + 8 * 3, &t0.to_be_bytes())
        .unwrap();
    let len = start.0.len() as u64;
    start.write_at(len, &[3u8; 9000]).unwrap();
    let mut expect = model.clone();
    expect.copy_within(4096..8192, 5 * 4096);
    let span = g.l2_span() as usize;
    expect.copy_within(0..span, 3 * span);
    assert_eq!(content(&start), expect);
    let overlap = |c: &Corruption| matches!(c, Corruption::Overlap { .. });
    inject(
        "repair all",
        &start,
        |d| repair(d, RepairMode::All).map(|_| ()),
        |io, done, what| {
            judge(io, &[&expect], overlap, what);
            if done {
                assert_clean(io);
            }
        },
    );
}

#[test]
fn faults_rebase() {
    let size = 1u64 << 20;
    let old_base = pattern(20, size as usize);
    let mut new_base = old_base.clone();
    new_base[10_000..60_000].fill(9);
    let (start, _) = written(
        new_image(size, 9, 12, Some(b"old")),
        &[(20_000, pattern(21, 5000), false)],
    );
    let read = |io: &MemIo, base: &[u8]| {
        let mut img = Image::open(
            io.clone(),
            Raw::new(MemIo(base.to_vec())).unwrap(),
            vec![0u8; 1024],
        )
        .unwrap();
        let mut out = vec![0u8; size as usize];
        img.read_at(0, &mut out).unwrap();
        out
    };
    let expect = read(&start, &old_base);
    inject(
        "rebase",
        &start,
        |d| {
            let mut img = Image::open(
                d,
                Raw::new(MemIo(old_base.clone())).unwrap(),
                vec![0u8; 1024],
            )?;
            let mut nb = Raw::new(MemIo(new_base.clone()))?;
            rebase(&mut img, &mut nb, b"new").map(|_| ())
        },
        |io, done, what| {
            let r = check(io).unwrap();
            assert!(r.corruptions.is_empty(), "{what}: {r:?}");
            let n = name(io);
            let base = if n == b"new" { &new_base } else { &old_base };
            assert!(!done || n == b"new", "{what}");
            assert_eq!(read(io, base), expect, "{what}");
            let r = repair(io, RepairMode::All).unwrap();
            assert!(r.after.is_clean(), "{what}");
            assert_eq!(read(io, base), expect, "{what}");
        },
    );
}

#[test]
fn faults_repair_packing_dead_streams() {
    // Compressed clusters in two tables' ranges, then partial writes over three early
    // ones: their streams die, plain clusters land at the end. No extent at the end
    // fits the small holes, so everything after the first one is packed down (through
    // copies past the end, tables moving with their entries).
    let mut ops = Vec::new();
    for i in 0..30u64 {
        let at = (i % 15) * 4096 + (i / 15) * (256 << 10);
        ops.push((at, pattern(i as u32 + 50, 4096), true));
    }
    let (start, mut model) = written(new_image(1 << 20, 12, 6, None), &ops);
    let mut img = open(start);
    for at in [4096u64, 8192, 256 << 10] {
        img.write_at(at + 100, b"partial").unwrap();
        model[at as usize + 100..at as usize + 107].copy_from_slice(b"partial");
    }
    let start = img.into_parts().0;
    let before = check(&mut start.clone()).unwrap();
    // The dead streams of clusters 1 and 2 are adjacent; cluster 64's lies before
    // table 1's cluster boundary, where it counts as padding. No whole cluster frees.
    assert_eq!(before.leaks.len(), 1, "{before:?}");
    assert_eq!(before.leaked_clusters, 0);
    let mut io = start.clone();
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    assert!(r.actions.len() > 30, "{:?}", r.actions);
    assert!(r.after.file_len < before.file_len);
    assert_eq!(content(&io), model);
    inject(
        "repair packing",
        &start,
        |d| repair(d, RepairMode::Leaks).map(|_| ()),
        |io, _, what| {
            judge(io, &[&model], none, what);
        },
    );
}

/// Guest cluster `cl` (4 KiB) as the image reads it.
fn cluster(io: &MemIo, cl: u64) -> Vec<u8> {
    let mut img = open(io.clone());
    let mut out = vec![0u8; 4096];
    img.read_at(cl * 4096, &mut out).unwrap();
    out
}

/// A misaligned data cluster B overlaps data cluster A and, with its last KiB, the
/// start of the next L2 table C; C is clear of A, and C holds an entry past the end of
/// the file. The repair copies B elsewhere and zeroes C's bad entry: the zero must not
/// land in B's bytes (it did: entry drops were written into C before B was copied,
/// because only B, not C, was reported for the overlap).
#[test]
fn repair_keeps_a_misaligned_cluster_that_reaches_into_a_table() {
    // 4 KiB clusters, 4 KiB tables (2 MiB each): guest cluster 0 at 4096, table 0 at
    // 8192, guest 2 MiB (A) at 12288, table 1 (C) at 16384.
    let (mut io, mut model) = written(
        new_image(4 << 20, 12, 9, None),
        &[
            (0, pattern(1, 4096), false),
            (2 << 20, pattern(2, 4096), false),
        ],
    );
    let l1o = read_header(&mut io).unwrap().l1_table_offset;
    let (t0, t1) = (get(&mut io, l1o), get(&mut io, l1o + 8));
    let a = get(&mut io, t1);
    assert_eq!((t0, a, t1), (8192, 12288, 16384));
    // Guest cluster 1 (B) at 13312: A's last 3 KiB, then C's entries 0..128.
    let b = a + 1024;
    put(&mut io, t0 + 8, b);
    // C's entry 5 past the end of the file.
    put(&mut io, t1 + 8 * 5, 1 << 30);
    let b_before = cluster(&io, 1);
    assert_eq!(b_before[3072 + 40..3072 + 48], (1u64 << 30).to_be_bytes());
    model[4096..8192].copy_from_slice(&b_before);
    let r = check(&mut io).unwrap();
    let reference = |kind, l1_index, l2_index: Option<u64>, host| Reference {
        kind,
        l1_index,
        l2_index,
        guest: l1_index * (2 << 20) + l2_index.unwrap_or(0) * 4096,
        host,
        len: 4096,
    };
    let b_ref = reference(crate::RefKind::DataCluster, 0, Some(1), b);
    // C shares bytes with B (which is reported for overlapping A): C is reported too.
    assert!(
        r.corruptions.contains(&Corruption::Overlap {
            reference: reference(crate::RefKind::L2Table, 1, None, t1),
            other: b_ref,
        }),
        "{:?}",
        r.corruptions
    );
    let rep = repair(&mut io, RepairMode::All).unwrap();
    assert!(rep.after.is_clean(), "{:?}", rep.after);
    // Guest cluster 1 reads as before; C's bad entry now reads zeros.
    assert_eq!(cluster(&io, 1), b_before);
    assert_eq!(content(&io), model);
}

/// L2 table U (L1[2]) is misaligned over the second half of table 0 and the first
/// half of data cluster A, where one of U's entries (D) points at table 1, whose
/// entry 5 is past the end of the file. U overlaps table 0, so the first check does
/// not walk it: D is unknown until U is copied. Table 1 must not be written (its bad
/// entry zeroed) before that, or D's bytes change. The bad entry points just past the
/// end, where U's copy goes: it is still dropped, not left reading the copy.
#[test]
fn repair_writes_no_table_before_every_table_is_walked() {
    // Guest cluster 0 at 4096, table 0 at 8192, guest 2 MiB (A) at 12288, table 1 at
    // 16384.
    let t1 = 16384u64;
    let mut a_data = vec![0u8; 4096];
    a_data[24..32].copy_from_slice(&t1.to_be_bytes());
    let (mut io, mut model) = written(
        new_image(8 << 20, 12, 9, None),
        &[(0, pattern(1, 4096), false), (2 << 20, a_data, false)],
    );
    let l1o = read_header(&mut io).unwrap().l1_table_offset;
    let t0 = get(&mut io, l1o);
    assert_eq!((t0, get(&mut io, l1o + 8)), (8192, t1));
    assert_eq!(get(&mut io, t1), 12288);
    let u = t0 + 2048;
    put(&mut io, l1o + 16, u);
    let end = io.0.len() as u64;
    assert_eq!(end, 20480);
    put(&mut io, t1 + 8 * 5, end);
    // D: U's entry 256 + 3, the fourth entry of A.
    let d = (4 << 20) / 4096 + 259;
    let d_before = cluster(&io, d);
    assert_eq!(d_before[40..48], end.to_be_bytes());
    model[d as usize * 4096..(d as usize + 1) * 4096].copy_from_slice(&d_before);
    // U maps what table 0's second half maps (nothing), and D.
    let rep = repair(&mut io, RepairMode::All).unwrap();
    assert!(rep.after.is_clean(), "{:?}", rep.after);
    assert_eq!(cluster(&io, d), d_before);
    // Table 1's entry 5 reads zeros, as the model has it.
    assert_eq!(content(&io), model);
    assert!(rep.actions.iter().any(|a| matches!(
        a,
        Action::Dropped {
            corruption: Corruption::PastEof { reference, file_len: 20480 }
        } if reference.l1_index == 1 && reference.l2_index == Some(5)
    )));
}

/// L2 table U (L1[2]) is misaligned over the second half of table 0 and the first
/// half of data cluster A, so the first round does not walk it; one of its entries
/// (D) points just past the end of the file, where the round copies U. From the
/// next round on, D points at real bytes (U's copy, then leaked space): it must still
/// be dropped as past the end of the file it was found in, not kept reading bytes it
/// never had.
#[test]
fn repair_drops_an_entry_past_the_end_in_a_table_walked_late() {
    // Guest cluster 0 at 4096, table 0 at 8192, guest 2 MiB (A) at 12288, table 1 at
    // 16384; the file ends at 20480.
    let end = 20480u64;
    let mut a_data = vec![0u8; 4096];
    a_data[24..32].copy_from_slice(&end.to_be_bytes());
    let (mut io, model) = written(
        new_image(8 << 20, 12, 9, None),
        &[(0, pattern(1, 4096), false), (2 << 20, a_data, false)],
    );
    let l1o = read_header(&mut io).unwrap().l1_table_offset;
    let t0 = get(&mut io, l1o);
    assert_eq!((t0, get(&mut io, l1o + 8)), (8192, 16384));
    assert_eq!(io.0.len() as u64, end);
    let u = t0 + 2048;
    put(&mut io, l1o + 16, u);
    // D: U's entry 256 + 3, the fourth entry of A.
    let d = (4 << 20) / 4096 + 259;
    assert_eq!(get(&mut io, u + 8 * 259), end);
    let r = check(&mut io).unwrap();
    assert!(
        !r.corruptions
            .iter()
            .any(|c| matches!(c, Corruption::PastEof { .. })),
        "D is not seen before U is walked: {:?}",
        r.corruptions
    );
    let rep = repair(&mut io, RepairMode::All).unwrap();
    assert!(rep.after.is_clean(), "{:?}", rep.after);
    assert_clean(&mut io);
    // D reads as unallocated; every other cluster as before.
    assert!(cluster(&io, d).iter().all(|&b| b == 0));
    assert!(content(&io) == model);
    assert!(
        rep.actions.iter().any(|a| matches!(
            a,
            Action::Dropped {
                corruption: Corruption::PastEof { reference, file_len: 20480 }
            } if reference.l1_index == 2 && reference.l2_index == Some(259)
                && reference.host == end
        )),
        "{:#?}",
        rep.actions
    );
}

/// Issue 18: a backing name inside the L1 table's padding (QEMU zero-fills the L1
/// table to 512 bytes; the name at 304 lies in 48..560). Compaction used to take the
/// name's end for the end of what lies below the next extent: a hole overlapping live
/// extents stayed in its picture, moves landed on each other, and the truncation cut
/// the file below the tables. Every move is now planned against one picture of the
/// file; the repair keeps every healthy cluster.
#[test]
fn compaction_plans_around_a_name_in_the_l1_padding() {
    let ops: Vec<_> = (0..8u64)
        .map(|i| (i * 512, pattern(i as u32 + 90, 512), false))
        .collect();
    let (mut start, mut model) = written(new_image(1 << 20, 9, 12, None), &ops);
    let mut h = read_header(&mut start).unwrap();
    assert_eq!(h.l1_table_offset, 48);
    h.backing_file_offset = 304;
    h.backing_file_size = 9;
    start.write_at(304, b"base.qcow").unwrap();
    start.write_at(0, &h.encode()).unwrap();
    let t = get(&mut start, 48);
    // Holes where clusters 0 and 1 were; garbage at the end of the file.
    for j in 0..2u64 {
        put(&mut start, t + 8 * j, 0);
        model[j as usize * 512..(j as usize + 1) * 512].fill(0);
    }
    let len = start.0.len() as u64;
    start.write_at(len, &[7u8; 3000]).unwrap();
    for mode in [RepairMode::Leaks, RepairMode::All] {
        let mut io = start.clone();
        let extents = 3 + 1 + 6;
        let r = repair(&mut io, mode).unwrap();
        assert!(
            r.after.is_clean(),
            "{mode:?}: {:?}\n{:?}",
            r.after,
            r.actions
        );
        assert_eq!(content(&io), model, "{mode:?}");
        assert_eq!(name(&mut io), b"base.qcow");
        let moves: Vec<_> = r
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Moved { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        assert!(moves.iter().all(|(f, t)| f != t), "{:?}", r.actions);
        assert!(moves.len() <= 2 * extents + 1, "{:?}", r.actions);
        for (i, a) in r.actions.iter().enumerate() {
            assert!(!r.actions[..i].contains(a), "{a:?} twice: {:?}", r.actions);
        }
    }
    // A bad entry in the header area (it overlaps the name), and a table moved to
    // the end (its old place leaks): the repair drops the one, compacts the rest.
    let mut io = start.clone();
    put(&mut io, t + 8 * 600, 105);
    let len = io.0.len() as u64;
    let table = io.0[t as usize..t as usize + 32768].to_vec();
    io.write_at(len + 512 - len % 512, &table).unwrap();
    put(&mut io, 48, len + 512 - len % 512);
    let r = repair(&mut io, RepairMode::All).unwrap();
    assert!(r.after.is_clean(), "{:?}\n{:?}", r.after, r.actions);
    assert_eq!(content(&io), model);
    assert!(r.after.file_len < len, "{:?}", r.actions);
}

/// A table sharing bytes with another is not walked: its references are unknown, so
/// the file must not be cut below them (`-r leaks` on a corrupt image truncates only
/// a leaked tail). Found by the repair property of `fuzz/tests`.
#[test]
fn repair_keeps_what_a_table_not_walked_references() {
    // 4 KiB clusters, 1 KiB tables: data at 4096, table 0 at 8192, data at 12288,
    // table 1 at 16384; the file ends with it at 17408.
    let (mut io, mut model) = written(
        new_image(2 << 20, 12, 7, None),
        &[
            (0, pattern(1, 4096), false),
            (512 << 10, pattern(2, 4096), false),
        ],
    );
    assert_eq!((get(&mut io, 56), io.0.len()), (16384, 17408));
    // L1[2] -> 16896, half inside table 1; its entry 64 (past table 1) -> a cluster
    // appended at 20480, which no walked table references.
    let d = pattern(3, 4096);
    io.write_at(20480, &d).unwrap();
    put(&mut io, 16896 + 8 * 64, 20480);
    put(&mut io, 48 + 16, 16896);
    let guest = (1 << 20) + 64 * 4096;
    model.resize(2 << 20, 0);
    model[guest..guest + 4096].copy_from_slice(&d);
    assert_eq!(content(&io), model);
    let before = check(&mut io).unwrap();
    assert_eq!(before.image_end_offset, 24576, "{before:?}");
    let mut leaks = io.clone();
    let r = repair(&mut leaks, RepairMode::Leaks).unwrap();
    assert!(r.actions.is_empty(), "{:?}", r.actions);
    assert_eq!(content(&leaks), model);
    let r = repair(&mut io, RepairMode::All).unwrap();
    assert!(r.after.is_clean(), "{:?}\n{:?}", r.after, r.actions);
    assert_eq!(content(&io), model);
}

/// A backing name of length 0 (its offset set) takes no space: nothing overlaps it,
/// and a repair may put a cluster where it points (found by the `check` fuzz target:
/// compaction filled a hole there, and check then reported the cluster as overlapping
/// the name).
#[test]
fn an_empty_backing_name_takes_no_space() {
    let ops: Vec<_> = (0..6u64)
        .map(|i| (i * 4096, pattern(i as u32 + 200, 4096), false))
        .collect();
    let (mut io, mut model) = written(new_image(1 << 20, 12, 9, None), &ops);
    let t = get(&mut io, 48);
    let c1 = get(&mut io, t + 8);
    let mut h = read_header(&mut io).unwrap();
    h.backing_file_offset = c1 + 1282;
    h.backing_file_size = 0;
    io.write_at(0, &h.encode()).unwrap();
    assert!(check(&mut io).unwrap().is_clean());
    assert_eq!(content(&io), model);
    // Cluster 1 dropped: the hole where the name points is filled.
    put(&mut io, t + 8, 0);
    model[4096..8192].fill(0);
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean(), "{:?}\n{:?}", r.after, r.actions);
    assert!(
        r.actions
            .iter()
            .any(|a| matches!(a, Action::Moved { to, .. } if *to == c1)),
        "{:?}",
        r.actions
    );
    assert_eq!(content(&io), model);
    // An empty name at the end of the file would keep the file from being cut: it
    // moves to right after the header.
    let len = io.0.len() as u64;
    let mut h = read_header(&mut io).unwrap();
    h.backing_file_offset = len;
    io.write_at(0, &h.encode()).unwrap();
    put(&mut io, t + 8 * 5, 0);
    model[5 * 4096..6 * 4096].fill(0);
    assert_eq!(check(&mut io).unwrap().image_end_offset, len);
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean(), "{:?}\n{:?}", r.after, r.actions);
    assert_eq!(read_header(&mut io).unwrap().backing_file_offset, 48);
    assert!(r.actions.contains(&Action::Moved {
        item: Item::BackingName,
        from: len,
        to: 48,
        len: 0
    }));
    assert_eq!(io.0.len() as u64, len - 4096, "{:?}", r.actions);
    assert_eq!(content(&io), model);
}
