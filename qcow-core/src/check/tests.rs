//! Hand-corrupted images: each problem kind is found exactly, and `repair` fixes it
//! without changing the guest content of healthy clusters.

extern crate std;

use crate::testutil::{get, put};
use std::vec;
use std::vec::Vec;

use super::*;
use crate::image::{Image, NoBacking};
use crate::io::MemIo;
use crate::maint::{repair, Action, RepairMode};
use crate::write::{create, CreateOptions};
use embedded_io::ErrorKind;

/// 4 KiB clusters, 64-entry (512-byte) L2 tables: 256 KiB per table, 4 tables.
const SIZE: u64 = 1 << 20;
const CS: u64 = 4096;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn fresh(cluster_bits: u8, l2_bits: u8) -> MemIo {
    let mut io = MemIo::default();
    let opts = CreateOptions {
        cluster_bits: Some(cluster_bits),
        l2_bits: Some(l2_bits),
        ..CreateOptions::new(SIZE)
    };
    create(&mut io, &opts).unwrap();
    io
}

fn open(io: MemIo) -> Image<MemIo, NoBacking<ErrorKind>, Vec<u8>> {
    Image::open(io, NoBacking::new(), vec![0u8; 1 << 17]).unwrap()
}

/// Cluster 0 plain, 1 compressed, 2 plain, 64 (second table) plain:
/// data 0 at 4096, table 0 at 8192, stream at 8704, data 2 at 12288, data 64 at
/// 16384, table 1 at 20480 (file 20992).
fn base() -> (MemIo, Vec<u8>) {
    let mut img = open(fresh(12, 6));
    let mut model = vec![0u8; SIZE as usize];
    let ops: [(u64, Vec<u8>, bool); 4] = [
        (0, pattern(1, 4096), false),
        (CS, vec![b'z'; 4096], true),
        (2 * CS, pattern(2, 4096), false),
        (64 * CS, pattern(3, 4096), false),
    ];
    for (at, data, compressed) in &ops {
        if *compressed {
            img.write_compressed(*at, data).unwrap();
        } else {
            img.write_at(*at, data).unwrap();
        }
        model[*at as usize..*at as usize + data.len()].copy_from_slice(data);
    }
    let (io, _) = img.into_parts();
    (io, model)
}

fn header(io: &mut MemIo) -> Header {
    read_header(io).unwrap()
}

fn l1_at(io: &mut MemIo, i: u64) -> u64 {
    header(io).l1_table_offset + 8 * i
}

fn l2_at(io: &mut MemIo, i: u64, j: u64) -> u64 {
    let at = l1_at(io, i);
    get(io, at) + 8 * j
}

fn l1_get(io: &mut MemIo, i: u64) -> u64 {
    let at = l1_at(io, i);
    get(io, at)
}

fn l2_get(io: &mut MemIo, i: u64, j: u64) -> u64 {
    let at = l2_at(io, i, j);
    get(io, at)
}

fn set_l1(io: &mut MemIo, i: u64, v: u64) {
    let at = l1_at(io, i);
    put(io, at, v);
}

fn set_l2(io: &mut MemIo, i: u64, j: u64, v: u64) {
    let at = l2_at(io, i, j);
    put(io, at, v);
}

fn reference(kind: RefKind, l1: u64, l2: Option<u64>, host: u64, len: u64) -> Reference {
    let guest = l1 * 64 * CS + l2.unwrap_or(0) * CS;
    Reference {
        kind,
        l1_index: l1,
        l2_index: l2,
        guest,
        host,
        len,
    }
}

fn data(l1: u64, l2: u64, host: u64) -> Reference {
    reference(RefKind::DataCluster, l1, Some(l2), host, CS)
}

fn table(l1: u64, host: u64) -> Reference {
    reference(RefKind::L2Table, l1, None, host, 512)
}

fn read_all(io: &MemIo) -> Vec<u8> {
    let mut img = open(io.clone());
    let mut out = vec![0u8; SIZE as usize];
    img.read_at(0, &mut out).unwrap();
    out
}

/// Repairs everything; the image is clean afterwards and reads `model`.
fn repaired(mut io: MemIo, model: &[u8]) -> (MemIo, Vec<Action>) {
    let r = repair(&mut io, RepairMode::All).unwrap();
    assert!(
        r.after.is_clean(),
        "after repair: {:?}\nactions {:?}",
        r.after,
        r.actions
    );
    assert_eq!(read_all(&io), model, "guest content after repair");
    (io, r.actions)
}

fn zero_cluster(model: &mut [u8], guest: u64) {
    model[guest as usize..(guest + CS) as usize].fill(0);
}

#[test]
fn clean_images() {
    let (mut io, model) = base();
    let r = check(&mut io).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.image_end_offset, r.file_len);
    assert_eq!(
        (r.allocated_clusters, r.compressed_clusters, r.l2_tables),
        (4, 1, 2)
    );
    assert_eq!(r.total_clusters, 256);
    // Data 0 at 4096, then data 2 at 12288 (not 8192): one fragment; data 64 follows.
    assert_eq!(r.fragmented_clusters, 1);
    assert_eq!(read_all(&io), model);
    // A fresh image, and tables larger than a cluster.
    assert!(check(&mut fresh(12, 6)).unwrap().is_clean());
    let mut img = open(fresh(9, 12));
    img.write_at(1000, &pattern(4, 5000)).unwrap();
    img.write_compressed(1 << 19, &[7u8; 512]).unwrap();
    let (mut io, _) = img.into_parts();
    assert!(check(&mut io).unwrap().is_clean());
}

#[test]
fn l2_table_past_eof() {
    let (mut io, mut model) = base();
    let len = io.0.len() as u64;
    set_l1(&mut io, 1, 1 << 40);
    let r = check(&mut io).unwrap();
    assert_eq!(
        r.corruptions,
        [Corruption::PastEof {
            reference: table(1, 1 << 40),
            file_len: len
        }]
    );
    // Its data cluster and table leak once the table is no longer referenced.
    zero_cluster(&mut model, 64 * CS);
    let (mut io, actions) = repaired(io, &model);
    assert!(matches!(
        actions[0],
        Action::Dropped {
            corruption: Corruption::PastEof { .. }
        }
    ));
    assert_eq!(l1_get(&mut io, 1), 0);
}

#[test]
fn reference_end_overflows() {
    let (mut io, mut model) = base();
    let len = io.0.len() as u64;
    let host = u64::MAX - 4095; // cluster-aligned; host + 512 overflows
    set_l1(&mut io, 1, host);
    let r = check(&mut io).unwrap();
    assert_eq!(
        r.corruptions,
        [Corruption::PastEof {
            reference: table(1, host),
            file_len: len
        }]
    );
    zero_cluster(&mut model, 64 * CS);
    repaired(io, &model);
}

#[test]
fn misaligned_table_and_cluster() {
    let (mut io, model) = base();
    // Move table 1 (20480) to the end of the file, 512 past a cluster boundary.
    let mut t = vec![0u8; 512];
    io.read_at(20480, &mut t).unwrap();
    let len = io.0.len() as u64;
    let at = len.next_multiple_of(CS) + 512;
    io.write_at(at, &t).unwrap();
    set_l1(&mut io, 1, at);
    // Copy data 2 (12288) to a misaligned place after it.
    let mut d = vec![0u8; 4096];
    io.read_at(12288, &mut d).unwrap();
    let dat = at + 1024;
    io.write_at(dat, &d).unwrap();
    set_l2(&mut io, 0, 2, dat);
    let r = check(&mut io).unwrap();
    assert_eq!(
        r.corruptions,
        [
            Corruption::Misaligned {
                reference: table(1, at),
                align: CS
            },
            Corruption::Misaligned {
                reference: data(0, 2, dat),
                align: CS
            },
        ]
    );
    // The old table and data cluster leaked: one hole of 12288..16384 and 20480..
    assert_eq!(r.leaked_clusters, 2);
    let (_, actions) = repaired(io, &model);
    let copies = actions
        .iter()
        .filter(|a| matches!(a, Action::Copied { .. }))
        .count();
    assert_eq!(copies, 2);
}

#[test]
fn overlaps_metadata() {
    let (mut io, mut model) = base();
    // Data cluster 2 pointing at the L1 table's offset 0 would be "unallocated": use a
    // large L1 instead: header 48, L1 covers 48..80; a cluster at 512 doesn't overlap
    // it, so point into the header region via a compressed stream at 10.
    let e = crate::entry::L2Entry::compressed(&header(&mut io).geometry(), 10, 100).unwrap();
    set_l2(&mut io, 0, 2, e.0);
    let l1o = header(&mut io).l1_table_offset;
    let e2 = crate::entry::L2Entry::compressed(&header(&mut io).geometry(), l1o, 8).unwrap();
    set_l2(&mut io, 1, 3, e2.0);
    let r = check(&mut io).unwrap();
    let c = reference(RefKind::CompressedCluster, 0, Some(2), 10, 100);
    let c2 = reference(RefKind::CompressedCluster, 1, Some(3), l1o, 8);
    assert_eq!(
        r.corruptions,
        [
            Corruption::OverlapsMetadata {
                reference: c,
                region: Region::Header
            },
            Corruption::OverlapsMetadata {
                reference: c2,
                region: Region::L1Table
            },
        ]
    );
    zero_cluster(&mut model, 2 * CS);
    let (_, actions) = repaired(io, &model);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Dropped { .. }))
            .count(),
        2
    );
}

#[test]
fn shared_cluster_is_copied() {
    let (mut io, mut model) = base();
    set_l2(&mut io, 0, 5, 4096);
    let r = check(&mut io).unwrap();
    assert_eq!(
        r.corruptions,
        [Corruption::Overlap {
            reference: data(0, 5, 4096),
            other: data(0, 0, 4096)
        }]
    );
    // Both read cluster 0's data, before and after.
    model.copy_within(0..4096, 5 * 4096);
    let (mut io, actions) = repaired(io, &model);
    assert!(matches!(actions[0], Action::Copied { to, .. } if to % CS == 0));
    // Writing one no longer changes the other.
    let mut img = open(io.clone());
    img.write_at(5 * CS, &[1u8; 10]).unwrap();
    let mut b = [0u8; 10];
    img.read_at(0, &mut b).unwrap();
    assert_eq!(b[..], model[..10]);
    io = img.into_parts().0;
    assert!(check(&mut io).unwrap().is_clean());
}

#[test]
fn table_overlapping_data_and_shared_table() {
    let (mut io, mut model) = base();
    // L1[2] -> table 0 (shared); L1[3] -> data cluster 2's bytes as a table.
    set_l1(&mut io, 2, 8192);
    set_l1(&mut io, 3, 12288);
    let r = check(&mut io).unwrap();
    // The table at 12288 is walked: its random entries are reported too.
    let overlaps: Vec<_> = r
        .corruptions
        .iter()
        .filter(|c| matches!(c, Corruption::Overlap { .. }))
        .collect();
    assert_eq!(
        overlaps,
        [
            &Corruption::Overlap {
                reference: table(2, 8192),
                other: table(0, 8192)
            },
            &Corruption::Overlap {
                reference: table(3, 12288),
                other: data(0, 2, 12288)
            },
        ]
    );
    // The shared table's entries were walked once (4), table 3's 64 random ones too.
    assert_eq!(r.allocated_clusters, 4 + 64);
    // Table 3 holds random bytes (cluster 2's pattern): after copying it, its entries
    // are garbage, dropped by the next rounds. Table 2 maps what table 0 maps.
    let span = 64 * CS as usize;
    let (a, b) = model.split_at_mut(2 * span);
    b[..span].copy_from_slice(&a[..span]);
    let mut io2 = io.clone();
    let r = repair(&mut io2, RepairMode::All).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    let got = read_all(&io2);
    assert_eq!(got[..3 * span], model[..3 * span]);
    assert!(r.actions.iter().any(|a| matches!(
        a,
        Action::Copied {
            corruption: Corruption::Overlap { .. },
            ..
        }
    )));
}

#[test]
fn bad_compressed_streams() {
    let (mut io, mut model) = base();
    let g = header(&mut io).geometry();
    // Garbage, a valid stream of 100 bytes only, and a zero length.
    let len = io.0.len() as u64;
    io.write_at(len, &[0xffu8; 64]).unwrap();
    let mut short = vec![0u8; 100];
    let n = crate::cluster::Deflater::default()
        .compress(&[5u8; 100], &mut short)
        .unwrap();
    io.write_at(len + 64, &short[..n]).unwrap();
    set_l2(&mut io, 0, 3, L2Entry::compressed(&g, len, 64).unwrap().0);
    set_l2(
        &mut io,
        0,
        4,
        L2Entry::compressed(&g, len + 64, n as u64).unwrap().0,
    );
    set_l2(&mut io, 0, 6, crate::entry::COMPRESSED_FLAG | 8704);
    let r = check(&mut io).unwrap();
    let c = |l2, host, len| reference(RefKind::CompressedCluster, 0, Some(l2), host, len);
    assert_eq!(
        r.corruptions,
        [
            Corruption::Compressed {
                reference: c(3, len, 64),
                error: CompressedError::Invalid
            },
            Corruption::Compressed {
                reference: c(4, len + 64, n as u64),
                error: CompressedError::Short(100)
            },
            Corruption::Compressed {
                reference: c(6, 8704, 0),
                error: CompressedError::Empty
            },
        ]
    );
    for i in [3, 4, 6] {
        zero_cluster(&mut model, i * CS);
    }
    let (io, actions) = repaired(io, &model);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Dropped { .. }))
            .count(),
        3
    );
    // The garbage streams were at the end: truncated away.
    assert_eq!(io.0.len(), 20992);
}

#[test]
fn entry_beyond_size() {
    let mut io = MemIo::default();
    // 1 MiB + 4 KiB: the last table maps one cluster inside, 63 past the size.
    create(
        &mut io,
        &CreateOptions {
            cluster_bits: Some(12),
            l2_bits: Some(6),
            ..CreateOptions::new(SIZE + CS)
        },
    )
    .unwrap();
    let mut img = open(io);
    img.write_at(SIZE, &[9u8; 4096]).unwrap();
    let (mut io, _) = img.into_parts();
    let host = l2_get(&mut io, 4, 0);
    set_l2(&mut io, 4, 1, host);
    let r = check(&mut io).unwrap();
    let beyond = Reference {
        kind: RefKind::DataCluster,
        l1_index: 4,
        l2_index: Some(1),
        guest: SIZE + CS,
        host,
        len: CS,
    };
    assert_eq!(
        r.corruptions,
        [
            Corruption::BeyondSize {
                reference: beyond,
                size: SIZE + CS
            },
            Corruption::Overlap {
                reference: beyond,
                other: Reference {
                    l2_index: Some(0),
                    guest: SIZE,
                    ..beyond
                }
            },
        ]
    );
    let mut io2 = io.clone();
    let r = repair(&mut io2, RepairMode::All).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    assert_eq!(l2_get(&mut io2, 4, 1), 0);
}

#[test]
fn name_overlapping_l1() {
    let (mut io, model) = base();
    let mut h = header(&mut io);
    h.backing_file_offset = 40 + 8;
    h.backing_file_size = 16;
    io.write_at(0, &h.encode()).unwrap();
    let r = check(&mut io).unwrap();
    assert_eq!(
        r.corruptions,
        [Corruption::MetadataOverlap {
            region: Region::BackingName,
            other: Region::L1Table
        }]
    );
    // Not repairable; nothing else changes.
    let r = repair(&mut io, RepairMode::All).unwrap();
    assert_eq!(r.after.corruptions, r.before.corruptions);
    assert!(r.actions.is_empty());
    let _ = model;
}

#[test]
fn leaks_tail_and_holes() {
    let (mut io, model) = base();
    // Two garbage clusters and a partial one at the end.
    let len = io.0.len() as u64;
    io.write_at(len, &vec![0xaau8; 2 * 4096 + 100]).unwrap();
    let r = check(&mut io).unwrap();
    // Everything past the last extent leaks; 24576.. holds 2 whole clusters (the
    // second one short).
    assert!(r.corruptions.is_empty());
    assert_eq!(
        r.leaks,
        [Leak {
            offset: len,
            len: 8292,
            clusters: 2
        }]
    );
    assert_eq!((r.leaked_bytes, r.leaked_clusters), (8292, 2));
    assert_eq!(r.image_end_offset, len);
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean());
    assert_eq!(
        r.actions,
        [Action::Truncated {
            from: len + 8292,
            to: len
        }]
    );
    assert_eq!(read_all(&io), model);

    // A hole: drop data cluster 2 (at 12288) -> leaked; the last extent moves in.
    let (mut io, mut model) = base();
    set_l2(&mut io, 0, 2, 0);
    zero_cluster(&mut model, 2 * CS);
    let r = check(&mut io).unwrap();
    // From the end of the compressed stream (8704 + 20) up to data 64: the padding
    // before data 2 is part of the hole now.
    assert_eq!(
        r.leaks,
        [Leak {
            offset: 8724,
            len: 16384 - 8724,
            clusters: 1
        }]
    );
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    // Table 1 moved into the hole: data 64 is now the last extent.
    assert_eq!(io.0.len(), 20480);
    assert_eq!(read_all(&io), model);
}

#[test]
fn leaks_only_mode_keeps_corrupt_images() {
    let (mut io, _) = base();
    set_l2(&mut io, 0, 5, 4096); // shared cluster
    set_l2(&mut io, 0, 2, 0); // a hole
    let len = io.0.len() as u64;
    io.write_at(len, &[1u8; 10000]).unwrap();
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert_eq!(
        r.actions,
        [Action::Truncated {
            from: len + 10000,
            to: len
        }]
    );
    assert_eq!(r.after.corruptions.len(), 1);
    assert_eq!(r.after.leaked_clusters, 1);
}

#[test]
fn huge_l1_is_refused_without_allocating() {
    // An L1 table claiming 2^28 entries in a small file fails at open, not in alloc.
    let (mut io, _) = base();
    let mut h = header(&mut io);
    h.size = 1 << 45; // 2^27 L1 entries: 1 GiB
    io.write_at(0, &h.encode()).unwrap();
    assert!(matches!(check(&mut io), Err(Error::L1OutOfFile { .. })));
}

#[test]
fn dead_compressed_stream_leaks_inside_a_cluster() {
    // Three compressed clusters back to back; a partial write over the middle one
    // stores it plain elsewhere: its stream is dead between two live ones.
    let mut img = open(fresh(12, 6));
    for i in 0..3u8 {
        img.write_compressed(u64::from(i) * CS, &[i + 1; 4096])
            .unwrap();
    }
    let mut io = img.io().clone();
    assert!(check(&mut io).unwrap().is_clean());
    let g = header(&mut io).geometry();
    let stream = match L2Entry(l2_get(&mut io, 0, 1)).decode(&g) {
        Cluster::Compressed { host, len } => (host, len),
        c => panic!("{c:?}"),
    };
    img.write_at(CS + 5, b"x").unwrap();
    let (mut io, _) = img.into_parts();
    let r = check(&mut io).unwrap();
    assert!(r.corruptions.is_empty());
    assert_eq!(
        r.leaks,
        [Leak {
            offset: stream.0,
            len: stream.1,
            clusters: 0
        }]
    );
    assert_eq!((r.leaked_bytes, r.leaked_clusters), (stream.1, 0));
    let mut model = vec![0u8; SIZE as usize];
    for i in 0..3u8 {
        model[usize::from(i) * 4096..usize::from(i + 1) * 4096].fill(i + 1);
    }
    model[4096 + 5] = b'x';
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    assert!(r.after.file_len <= r.before.file_len);
    assert_eq!(read_all(&io), model);
}

#[test]
fn padding_is_not_a_leak() {
    // A backing name of 5 bytes: the L1 table at the next multiple of 8 (56), padded
    // to 512 bytes; a plain cluster at the next cluster boundary.
    let mut io = MemIo::default();
    let opts = CreateOptions {
        backing: Some(b"abcde"),
        cluster_bits: Some(12),
        ..CreateOptions::new(SIZE)
    };
    create(&mut io, &opts).unwrap();
    assert_eq!(header(&mut io).l1_table_offset, 56);
    let mut img = open(io);
    img.write_at(0, &[1u8; 100]).unwrap();
    let (mut io, _) = img.into_parts();
    assert!(check(&mut io).unwrap().is_clean());
    // Shift the L1 table by 8: the 11-byte gap after the name is a leak now.
    let mut h = header(&mut io);
    let mut l1 = vec![0u8; 8];
    io.read_at(56, &mut l1).unwrap();
    io.write_at(64, &l1).unwrap();
    h.l1_table_offset = 64;
    io.write_at(0, &h.encode()).unwrap();
    let r = check(&mut io).unwrap();
    assert_eq!(
        r.leaks,
        [Leak {
            offset: 53,
            len: 11,
            clusters: 0
        }]
    );
    let model = read_all(&io);
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    assert_eq!(header(&mut io).l1_table_offset, 56);
    assert_eq!(read_all(&io), model);
}

#[test]
fn messages() {
    let (mut io, _) = base();
    set_l2(&mut io, 0, 5, 4096);
    let r = check(&mut io).unwrap();
    assert_eq!(
        std::format!("{}", r.corruptions[0]),
        "data cluster at host offset 4096 (4096 bytes; L1 index 0, L2 index 5, guest offset 20480) \
         overlaps data cluster at host offset 4096 (4096 bytes; L1 index 0, L2 index 0, guest offset 0)"
    );
    let r = repair(&mut io, RepairMode::All).unwrap();
    assert!(
        std::format!("{}", r.actions[0]).starts_with("copied to host offset 24576: data cluster")
    );
    let l = Leak {
        offset: 100,
        len: 9000,
        clusters: 2,
    };
    assert_eq!(
        std::format!("{l}"),
        "9000 bytes leaked at host offset 100 (2 whole clusters)"
    );
}
