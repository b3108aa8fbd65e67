//! Many threads on one `Disk`: readers at random offsets agree with a sequential read
//! while a writer fills other clusters, and never see a half-linked cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use qcow_core::write::{create, CreateOptions};
use qcow_std::file::FileIo;
use qcow_std::Disk;

const CS: u64 = 4096;
const SIZE: u64 = 8 << 20;
/// Clusters below this hold fixed data; the writer fills those above it.
const SPLIT: u64 = 4 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The byte every position of cluster `i` holds once the writer has written it.
fn tag(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251 + 1) as u8
}

/// Fixed content below `SPLIT`: compressed text, plain random data, and holes.
fn fixed_content() -> Vec<u8> {
    let mut rng = Rng(7);
    let mut v = vec![0u8; SPLIT as usize];
    for (i, c) in v.chunks_mut(CS as usize).enumerate() {
        match i % 4 {
            0 => c
                .iter_mut()
                .enumerate()
                .for_each(|(k, b)| *b = b"qcow text "[k % 10]),
            1 => c.iter_mut().for_each(|b| *b = rng.next() as u8),
            2 => {}
            _ => c[..100].fill(i as u8),
        }
    }
    v
}

fn make_image(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("c.qcow");
    let f = std::fs::File::create_new(&path).unwrap();
    let mut io = FileIo::new(f);
    create(&mut io, &CreateOptions::new(SIZE)).unwrap();
    drop(io);
    let fixed = fixed_content();
    let disk = Disk::options().writable(true).open(&path).unwrap();
    for (i, c) in fixed.chunks(CS as usize).enumerate() {
        let at = i as u64 * CS;
        match i % 4 {
            0 | 3 => disk.write_compressed(at, c).unwrap(),
            1 => disk.write_at(at, c).unwrap(),
            _ => {}
        }
    }
    disk.flush().unwrap();
    (path, fixed)
}

#[test]
fn readers_agree_while_a_writer_fills_other_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (path, fixed) = make_image(dir.path());
    let disk = Disk::options().writable(true).open(&path).unwrap();
    let fixed = Arc::new(fixed);
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..4u64 {
        let (disk, fixed, done) = (disk.clone(), fixed.clone(), done.clone());
        readers.push(std::thread::spawn(move || {
            let mut rng = Rng(100 + t);
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) || reads < 200 {
                let len = 1 + rng.below(3 * CS);
                let at = rng.below(SIZE - len);
                let mut buf = vec![0u8; len as usize];
                disk.read_at(at, &mut buf).unwrap();
                check_read(&fixed, at, &buf);
                reads += 1;
            }
            reads
        }));
    }
    // The writer: every cluster above SPLIT, in a scattered order, plain or compressed.
    let mut order: Vec<u64> = (SPLIT / CS..SIZE / CS).collect();
    let mut rng = Rng(99);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (n, i) in order.iter().enumerate() {
        let data = vec![tag(*i); CS as usize];
        if n % 2 == 0 {
            disk.write_at(i * CS, &data).unwrap();
        } else {
            disk.write_compressed(i * CS, &data).unwrap();
        }
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() >= 200);
    }
    // Afterwards a sequential read sees everything, through this handle and a new one.
    let mut want = fixed.to_vec();
    for i in SPLIT / CS..SIZE / CS {
        want.extend(std::iter::repeat_n(tag(i), CS as usize));
    }
    for d in [disk, Disk::open(&path).unwrap()] {
        let mut all = vec![0u8; SIZE as usize];
        d.read_at(0, &mut all).unwrap();
        assert!(all == want, "sequential read differs");
    }
}

/// Below `SPLIT` a read equals the fixed content; above it each cluster is all zeros
/// (not yet linked) or all its tag (linked with complete data), never a mix.
fn check_read(fixed: &[u8], at: u64, buf: &[u8]) {
    for (k, b) in buf.iter().enumerate() {
        let g = at + k as u64;
        if g < SPLIT {
            assert_eq!(*b, fixed[g as usize], "fixed byte at {g}");
        }
    }
    let mut g = at.max(SPLIT);
    let end = at + buf.len() as u64;
    while g < end {
        let i = g / CS;
        let stop = ((i + 1) * CS).min(end);
        let part = &buf[(g - at) as usize..(stop - at) as usize];
        let first = part[0];
        assert!(first == 0 || first == tag(i), "cluster {i}: byte {first}");
        assert!(part.iter().all(|&b| b == first), "cluster {i} half written");
        g = stop;
    }
}

#[test]
fn handle_is_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + std::io::Read + std::io::Write + std::io::Seek>() {}
    check::<Disk>();
}

#[test]
fn read_in_order_equals_read_at_and_stops_at_the_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make_image(dir.path());
    let disk = Disk::open(&path).unwrap();
    let size = disk.size();
    let mut whole = vec![0u8; size as usize];
    disk.read_at(0, &mut whole).unwrap();
    for threads in [0, 1, 2, 3, 7] {
        for (off, len) in [
            (0, size),
            (12345, size - 12345 - 999),
            (size - 5, 5),
            (77, 0),
        ] {
            let mut got = Vec::new();
            disk.read_in_order(off, len, threads, |p| {
                got.extend_from_slice(p);
                Ok::<(), qcow_std::Error>(())
            })
            .unwrap();
            assert!(
                got == whole[off as usize..(off + len) as usize],
                "{threads} {off} {len}"
            );
        }
    }
    // Past the end: refused before anything is read.
    assert!(disk
        .read_in_order(size - 1, 2, 2, |_| Ok::<(), qcow_std::Error>(()))
        .is_err());
    // The sink's error ends it, after the parts before.
    let mut calls = 0;
    let r = disk.read_in_order(0, size, 2, |_| {
        calls += 1;
        if calls == 2 {
            Err(qcow_std::Error::io(
                &path,
                std::io::Error::other("sink full"),
            ))
        } else {
            Ok(())
        }
    });
    assert!(r.unwrap_err().to_string().contains("sink full"));
    assert_eq!(calls, 2);
    // A damaged image: the reads before the damage are handed over, then its error.
    let damaged = dir.path().join("cut.qcow");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let disk = Disk::open(&damaged).unwrap();
    let mut handed = 0u64;
    let r = disk.read_in_order(0, size, 2, |p| {
        handed += p.len() as u64;
        Ok::<(), qcow_std::Error>(())
    });
    assert!(r.is_err(), "a read past the cut must fail");
    assert!(handed < size);
}
