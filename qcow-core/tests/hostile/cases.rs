//! The hostile images: each one built from a valid image with one field or entry
//! changed, with the exact error the core must give. Shared by `qcow-core`'s
//! `tests/hostile.rs` and `qcow-cli`'s `tests/hostile.rs` (through `#[path]`).
//!
//! They cover QEMU's iotest 092 (cluster bits 8/17/31/255, L2 bits 5/14/27/255, sizes
//! near 2^63 and 2^64, backing names of 1024 and 2^32-1 bytes), CVE-2014-0222 (L2
//! table size) and CVE-2014-0223 (image size overflow), an L1 table over 2 GiB, and
//! every reference (backing name, L1 table, L2 table, data cluster, compressed stream)
//! past the end of the file, cut short by it, overflowing, unaligned, or overlapping
//! the metadata, and compressed streams that are garbage, cut short, too short,
//! empty, or inflate to more than a cluster (accepted, as QEMU: the first cluster is
//! kept).

use qcow_core::cluster::Deflater;
use qcow_core::entry::L2Entry;
use qcow_core::header::Geometry;
use qcow_core::io::MemIo;
use qcow_core::write::{create, CreateOptions};
use qcow_core::{Error, Image, NoBacking, Problem, RefKind};

/// The error of the in-memory devices.
pub type IoError = <qcow_core::Raw<MemIo> as qcow_core::Backing>::IoError;
/// The core's error over in-memory devices.
pub type CoreError = Error<IoError>;

/// What opening and reading a case must give.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Opening fails with this error.
    Open(CoreError),
    /// It opens; reading the cluster at `guest` fails with this error.
    Read { guest: u64, err: CoreError },
    /// It opens; the cluster at `guest` reads as `data` (QEMU accepts it too).
    Reads { guest: u64, data: Vec<u8> },
}

/// One hostile image.
#[derive(Debug, Clone)]
pub struct Case {
    /// A file-name-safe name.
    pub name: String,
    /// The whole file.
    pub image: Vec<u8>,
    /// What must happen.
    pub expect: Expect,
    /// Whether its header asks for a huge allocation (size, L1, name): the CLI test
    /// runs these under an address-space limit.
    pub worst: bool,
}

/// A valid image and where its parts are.
#[derive(Debug, Clone)]
pub struct Base {
    pub bytes: Vec<u8>,
    pub geo: Geometry,
    pub l1: u64,
    /// The L2 table of the first L1 entry.
    pub l2: u64,
    /// Cluster 0: plain, [`data0`].
    pub data0: u64,
    /// Cluster 1: compressed, [`data1`]; its stream's host offset and length.
    pub comp: (u64, u64),
}

/// The content of guest cluster 0 of every base.
pub fn data0(cs: usize) -> Vec<u8> {
    (0..cs).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// The content of guest cluster 1 (compressible).
pub fn data1(cs: usize) -> Vec<u8> {
    (0..cs).map(|i| b"qcow hostile "[i % 13]).collect()
}

pub const BACKING_NAME: &[u8] = b"base.img";

/// The secret of the encrypted bases (and of the CLI test's password file).
pub const SECRET: &[u8] = b"hostile";

/// A fresh image (`create` on memory) with cluster 0 plain, cluster 1 compressed and
/// cluster 2 plain.
pub fn base(cluster_bits: u8, l2_bits: u8, size: u64, backing: bool) -> Base {
    base_with(cluster_bits, l2_bits, size, backing, false)
}

/// [`base`], encrypted with [`SECRET`] when `encrypted` (cluster 1 is then plain too:
/// QEMU does not compress encrypted images, and `comp` is `(0, 0)`).
pub fn base_with(cluster_bits: u8, l2_bits: u8, size: u64, backing: bool, encrypted: bool) -> Base {
    let mut io = MemIo::default();
    let opts = CreateOptions::new(size)
        .cluster_bits(Some(cluster_bits))
        .l2_bits(Some(l2_bits))
        .backing(backing.then_some(BACKING_NAME))
        .encrypted(encrypted);
    let h = create(&mut io, &opts).unwrap();
    let geo = h.geometry();
    let cs = geo.cluster_len();
    let mut img = Image::open(io, NoBacking::new(), vec![0u8; 2 * cs]).unwrap();
    if encrypted {
        img.set_secret(SECRET).unwrap();
    }
    img.write_at(0, &data0(cs)).unwrap();
    img.write_compressed(cs as u64, &data1(cs)).unwrap();
    img.write_at(2 * cs as u64, &data0(cs)[..cs / 2]).unwrap();
    let data0_host = match img.lookup(0).unwrap() {
        qcow_core::Cluster::Plain { host } => host,
        c => panic!("{c:?}"),
    };
    let comp = match img.lookup(cs as u64).unwrap() {
        qcow_core::Cluster::Compressed { host, len } => (host, len),
        qcow_core::Cluster::Plain { .. } if encrypted => (0, 0),
        c => panic!("{c:?}"),
    };
    let (io, _) = img.into_parts();
    let bytes = io.0;
    let l1 = h.l1_table_offset;
    let l2 = get_u64(&bytes, l1);
    Base {
        bytes,
        geo,
        l1,
        l2,
        data0: data0_host,
        comp,
    }
}

pub fn get_u64(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

pub fn put(b: &mut Vec<u8>, at: u64, v: &[u8]) {
    let at = at as usize;
    if b.len() < at + v.len() {
        b.resize(at + v.len(), 0);
    }
    b[at..at + v.len()].copy_from_slice(v);
}

// Header field offsets.
const BACKING_OFFSET: u64 = 8;
const BACKING_SIZE: u64 = 16;
const SIZE: u64 = 24;
const CLUSTER_BITS: u64 = 32;
const L2_BITS: u64 = 33;
const CRYPT: u64 = 36;
const L1_OFFSET: u64 = 40;

struct Builder {
    cases: Vec<Case>,
}

impl Builder {
    fn add(&mut self, name: &str, image: Vec<u8>, expect: Expect) {
        assert!(
            self.cases.iter().all(|c| c.name != name),
            "duplicate case {name}"
        );
        self.cases.push(Case {
            name: name.to_string(),
            image,
            expect,
            worst: false,
        });
    }
    fn worst(&mut self) {
        self.cases.last_mut().unwrap().worst = true;
    }
    /// `base` with `(offset, bytes)` poked into it.
    fn poke(&mut self, name: &str, b: &Base, pokes: &[(u64, &[u8])], expect: Expect) {
        let mut img = b.bytes.clone();
        for (at, v) in pokes {
            put(&mut img, *at, v);
        }
        self.add(name, img, expect);
    }
    /// `base` with L1 entry 0 set to `v`; reading guest 0 fails with an L2 table
    /// `problem`.
    fn l1_entry(&mut self, name: &str, b: &Base, v: u64, problem: Problem) {
        let err = Error::BadReference {
            kind: RefKind::L2Table,
            guest: 0,
            host: v,
            problem,
        };
        self.poke(
            name,
            b,
            &[(b.l1, &v.to_be_bytes())],
            Expect::Read { guest: 0, err },
        );
    }
    /// `base` with L2 entry `index` set to `v`; reading its cluster fails so.
    fn l2_entry(&mut self, name: &str, b: &Base, index: u64, v: u64, err: CoreError) {
        let guest = index * b.geo.cluster_size();
        self.poke(
            name,
            b,
            &[(b.l2 + 8 * index, &v.to_be_bytes())],
            Expect::Read { guest, err },
        );
    }
}

fn bad(kind: RefKind, guest: u64, host: u64, problem: Problem) -> CoreError {
    Error::BadReference {
        kind,
        guest,
        host,
        problem,
    }
}

/// Every hostile image, built afresh.
pub fn all() -> Vec<Case> {
    let mut c = Builder { cases: Vec::new() };
    // 512-byte clusters, 64-entry L2 tables, 64 KiB: a 2.5 KiB file.
    let s = base(9, 6, 64 << 10, false);
    // QEMU's default layout: 4 KiB clusters and L2 tables, 1 MiB.
    let q = base(12, 9, 1 << 20, false);
    // 64 MiB with 512-byte clusters: a 16 KiB L1 table at 48 that clusters can overlap.
    let big = base(9, 6, 64 << 20, false);
    // An overlay: the backing name at 48, the L1 table after it.
    let ov = base(9, 12, 1 << 20, true);
    let sl = s.bytes.len() as u64;
    let ql = q.bytes.len() as u64;

    // The file is shorter than the header.
    c.add(
        "header-empty-file",
        Vec::new(),
        Expect::Open(Error::HeaderTruncated { len: 0 }),
    );
    c.add(
        "header-47-bytes",
        s.bytes[..47].to_vec(),
        Expect::Open(Error::HeaderTruncated { len: 47 }),
    );
    c.poke(
        "bad-magic",
        &s,
        &[(0, b"QFI\xfa")],
        Expect::Open(Error::BadMagic(0x5146_49fa)),
    );
    c.poke(
        "version-2",
        &s,
        &[(4, &2u32.to_be_bytes())],
        Expect::Open(Error::UnsupportedVersion(2)),
    );
    for v in [0u64, 1] {
        c.poke(
            &format!("size-{v}"),
            &s,
            &[(SIZE, &v.to_be_bytes())],
            Expect::Open(Error::SizeTooSmall(v)),
        );
    }
    // iotest 092: invalid cluster size.
    for bits in [0u8, 8, 17, 31, 255] {
        c.poke(
            &format!("cluster-bits-{bits}"),
            &s,
            &[(CLUSTER_BITS, &[bits])],
            Expect::Open(Error::ClusterBits(bits)),
        );
    }
    // iotest 092 and CVE-2014-0222: invalid L2 table size.
    for bits in [0u8, 5, 14, 27, 255] {
        c.poke(
            &format!("l2-bits-{bits}"),
            &s,
            &[(L2_BITS, &[bits])],
            Expect::Open(Error::L2Bits(bits)),
        );
    }
    for m in [2u32, u32::MAX] {
        c.poke(
            &format!("crypt-method-{m}"),
            &s,
            &[(CRYPT, &m.to_be_bytes())],
            Expect::Open(Error::CryptMethod(m)),
        );
    }
    // iotest 092 and CVE-2014-0223: sizes whose L1 table would overflow or pass 2 GiB.
    for (name, size, cb, l2b) in [
        ("size-2^64-1", u64::MAX, 9u8, 6u8),
        ("size-2^63-1", (1u64 << 63) - 1, 9, 6),
        ("size-2^64-512-cluster-9", u64::MAX - 511, 9, 6),
        ("size-2^64-1-cluster-16", u64::MAX, 16, 13),
        (
            "size-2^64-l2-span-cluster-16",
            0u64.wrapping_sub(1 << 29),
            16,
            13,
        ),
        ("size-2^63-cluster-16", 1 << 63, 16, 13),
        // 2^28 L1 entries: 2 GiB of L1 table, one entry more than QEMU allows.
        ("l1-over-2gib", 1 << 43, 9, 6),
        ("l1-over-2gib-cluster-16", 1 << 57, 16, 13),
    ] {
        c.poke(
            name,
            &s,
            &[
                (SIZE, &size.to_be_bytes()),
                (CLUSTER_BITS, &[cb]),
                (L2_BITS, &[l2b]),
            ],
            Expect::Open(Error::ImageTooLarge(size)),
        );
        c.worst();
    }
    // The largest L1 table QEMU allows (2 GiB - 8): its header is fine, its table is
    // not in the file.
    let max_l1 = (1u64 << 28) - 1;
    c.poke(
        "l1-max-entries-past-eof",
        &s,
        &[(SIZE, &(max_l1 << 15).to_be_bytes())],
        Expect::Open(Error::L1OutOfFile {
            offset: s.l1,
            len: max_l1 * 8,
            file_len: sl,
        }),
    );
    c.worst();
    c.poke(
        "l1-max-entries-cluster-16-past-eof",
        &s,
        &[
            (SIZE, &(max_l1 << 29).to_be_bytes()),
            (CLUSTER_BITS, &[16]),
            (L2_BITS, &[13]),
        ],
        Expect::Open(Error::L1OutOfFile {
            offset: s.l1,
            len: max_l1 * 8,
            file_len: sl,
        }),
    );
    c.worst();
    // iotest 092: backing file name length.
    for len in [1024u32, 4096, u32::MAX] {
        c.poke(
            &format!("backing-name-{len}-bytes"),
            &ov,
            &[(BACKING_SIZE, &len.to_be_bytes())],
            Expect::Open(Error::BackingNameTooLong(len)),
        );
        c.worst();
    }
    let ovl = ov.bytes.len() as u64;
    for (name, off, len) in [
        ("backing-name-past-eof", ovl + 100, 8u32),
        ("backing-name-cut-by-eof", ovl - 4, 8),
        ("backing-name-offset-overflow", u64::MAX - 3, 8),
        ("backing-name-offset-max", u64::MAX, 1023),
        ("backing-name-in-header", 8, 8),
        ("backing-name-1023-bytes-past-eof", ovl - 1000, 1023),
    ] {
        c.poke(
            name,
            &ov,
            &[
                (BACKING_OFFSET, &off.to_be_bytes()),
                (BACKING_SIZE, &len.to_be_bytes()),
            ],
            Expect::Open(Error::BackingNameOutOfFile {
                offset: off,
                len,
                file_len: ovl,
            }),
        );
    }
    // The L1 table.
    let l1_len = s.geo.l1_bytes();
    for (name, off) in [
        ("l1-past-eof", sl + 512),
        ("l1-cut-by-eof", sl - 8),
        ("l1-offset-overflow", u64::MAX - 7),
        ("l1-offset-2^63", 1 << 63),
    ] {
        c.poke(
            name,
            &s,
            &[(L1_OFFSET, &off.to_be_bytes())],
            Expect::Open(Error::L1OutOfFile {
                offset: off,
                len: l1_len,
                file_len: sl,
            }),
        );
    }
    c.poke(
        "l1-unaligned",
        &s,
        &[(L1_OFFSET, &52u64.to_be_bytes())],
        Expect::Open(Error::L1Misaligned(52)),
    );
    for off in [0u64, 40] {
        c.poke(
            &format!("l1-in-header-{off}"),
            &s,
            &[(L1_OFFSET, &off.to_be_bytes())],
            Expect::Open(Error::L1OverlapsHeader(off)),
        );
    }
    // L1 entries: the L2 table.
    c.l1_entry(
        "l2-past-eof",
        &s,
        sl + 4096,
        Problem::PastEof { file_len: sl },
    );
    c.l1_entry(
        "l2-cut-by-eof",
        &q,
        ql - 512,
        Problem::PastEof { file_len: ql },
    );
    c.l1_entry(
        "l2-offset-overflow",
        &s,
        !511,
        Problem::PastEof { file_len: sl },
    );
    c.l1_entry("l2-unaligned", &s, s.l2 + 8, Problem::Misaligned);
    c.l1_entry("l2-overlaps-l1", &big, 512, Problem::OverlapsMetadata);
    // L2 entries: plain data clusters.
    let dc = RefKind::DataCluster;
    c.l2_entry(
        "data-past-eof",
        &s,
        0,
        sl + 4096,
        bad(dc, 0, sl + 4096, Problem::PastEof { file_len: sl }),
    );
    c.l2_entry(
        "data-cut-by-eof",
        &q,
        0,
        ql - 512,
        bad(dc, 0, ql - 512, Problem::PastEof { file_len: ql }),
    );
    let huge = (1u64 << 63) - 512;
    c.l2_entry(
        "data-offset-2^63",
        &s,
        0,
        huge,
        bad(dc, 0, huge, Problem::PastEof { file_len: sl }),
    );
    c.l2_entry(
        "data-unaligned",
        &s,
        0,
        s.data0 + 1,
        bad(dc, 0, s.data0 + 1, Problem::Misaligned),
    );
    c.l2_entry(
        "data-overlaps-l1",
        &big,
        0,
        1024,
        bad(dc, 0, 1024, Problem::OverlapsMetadata),
    );
    // L2 entries: compressed clusters (cluster 1).
    let cc = RefKind::CompressedCluster;
    let comp = |g: &Geometry, host: u64, len: u64| {
        let shift = 63 - u32::from(g.cluster_bits());
        (1u64 << 63) | (len << shift) | host
    };
    let (ch, cl) = s.comp;
    let cs = s.geo.cluster_size();
    for (name, host, len, problem) in [
        (
            "compressed-past-eof",
            sl + 10,
            100,
            Problem::PastEof { file_len: sl },
        ),
        (
            "compressed-cut-by-eof",
            sl - 10,
            100,
            Problem::PastEof { file_len: sl },
        ),
        (
            "compressed-offset-max",
            s.geo.compressed_offset_limit() - 1,
            511,
            Problem::PastEof { file_len: sl },
        ),
        ("compressed-length-0", ch, 0, Problem::Empty),
        (
            "compressed-overlaps-header",
            10,
            20,
            Problem::OverlapsMetadata,
        ),
        ("compressed-overlaps-l1", 50, 5, Problem::OverlapsMetadata),
    ] {
        c.l2_entry(
            name,
            &s,
            1,
            comp(&s.geo, host, len),
            bad(cc, cs, host, problem),
        );
    }
    let ocs = ov.geo.cluster_size();
    c.l2_entry(
        "compressed-overlaps-backing-name",
        &ov,
        1,
        comp(&ov.geo, 50, 4),
        bad(cc, ocs, 50, Problem::OverlapsMetadata),
    );
    // Compressed streams: garbage, cut short, too short, empty, too long.
    let invalid = Error::CompressedInvalid {
        guest: cs,
        host: ch,
    };
    c.poke(
        "compressed-garbage",
        &s,
        &[(ch, &vec![0xff; cl as usize])],
        Expect::Read {
            guest: cs,
            err: invalid.clone(),
        },
    );
    c.l2_entry(
        "compressed-cut-short",
        &s,
        1,
        comp(&s.geo, ch, cl / 2),
        invalid.clone(),
    );
    c.l2_entry(
        "compressed-one-byte",
        &s,
        1,
        comp(&s.geo, ch, 1),
        invalid.clone(),
    );
    // Streams appended at the end of the file, pointed at by L2 entry 1.
    let mut append = |name: &str, b: &Base, stream: &[u8], expect: &dyn Fn(u64) -> Expect| {
        let mut img = b.bytes.clone();
        let host = img.len() as u64;
        img.extend_from_slice(stream);
        let e = L2Entry::compressed(&b.geo, host, stream.len() as u64).unwrap();
        put(&mut img, b.l2 + 8, &e.0.to_be_bytes());
        c.add(name, img, expect(host));
    };
    let short = |n: usize| {
        move |host| Expect::Read {
            guest: cs,
            err: Error::CompressedShort {
                guest: cs,
                host,
                len: n,
            },
        }
    };
    let mut st = vec![0u8; 512];
    let n = Deflater::default().compress(&[7u8; 100], &mut st).unwrap();
    append("compressed-inflates-short", &s, &st[..n], &short(100));
    append("compressed-empty-fixed-block", &s, &[0x03, 0x00], &short(0));
    append(
        "compressed-empty-stored-block",
        &s,
        &[0x01, 0x00, 0x00, 0xff, 0xff],
        &short(0),
    );
    // A stream of a cluster and a half: more than a cluster. QEMU keeps the first.
    let long: Vec<u8> = (0..cs as usize * 3 / 2)
        .map(|i| b"past the cluster "[i % 17])
        .collect();
    let mut st = vec![0u8; long.len()];
    let n = Deflater::default().compress(&long, &mut st).unwrap();
    assert!(n < cs as usize);
    let first = long[..cs as usize].to_vec();
    append(
        "compressed-inflates-past-cluster",
        &s,
        &st[..n],
        &move |_| Expect::Reads {
            guest: cs,
            data: first.clone(),
        },
    );
    // The same with QEMU's 4 KiB clusters and a real deflate stream of two clusters.
    let qcs = q.geo.cluster_len();
    let two: Vec<u8> = data1(2 * qcs);
    let mut big_st = vec![0u8; 2 * qcs];
    let n = Deflater::default().compress(&two, &mut big_st).unwrap();
    assert!(n < qcs);
    let mut img = q.bytes.clone();
    let host = img.len() as u64;
    img.extend_from_slice(&big_st[..n]);
    let e = L2Entry::compressed(&q.geo, host, n as u64).unwrap();
    put(&mut img, q.l2 + 8, &e.0.to_be_bytes());
    c.add(
        "compressed-deflate-two-clusters",
        img,
        Expect::Reads {
            guest: qcs as u64,
            data: two[..qcs].to_vec(),
        },
    );
    // Encrypted images: references are checked before anything is decrypted, so the
    // errors are the same with a password or without.
    let e = base_with(12, 9, 1 << 20, false, true);
    let el = e.bytes.len() as u64;
    c.l1_entry(
        "encrypted-l2-past-eof",
        &e,
        el + 4096,
        Problem::PastEof { file_len: el },
    );
    c.l2_entry(
        "encrypted-data-past-eof",
        &e,
        0,
        el + 4096,
        bad(dc, 0, el + 4096, Problem::PastEof { file_len: el }),
    );
    c.l2_entry(
        "encrypted-data-unaligned",
        &e,
        1,
        e.data0 + 8,
        bad(dc, 4096, e.data0 + 8, Problem::Misaligned),
    );
    let mut img = e.bytes.clone();
    let host = img.len() as u64;
    img.extend_from_slice(&[0xff; 40]);
    let entry = L2Entry::compressed(&e.geo, host, 40).unwrap();
    put(&mut img, e.l2 + 8, &entry.0.to_be_bytes());
    c.add(
        "encrypted-compressed-garbage",
        img,
        Expect::Read {
            guest: 4096,
            err: Error::CompressedInvalid { guest: 4096, host },
        },
    );
    c.poke(
        "encrypted-crypt-method-2",
        &e,
        &[(CRYPT, &2u32.to_be_bytes())],
        Expect::Open(Error::CryptMethod(2)),
    );
    // And the valid bases themselves, read back.
    for (name, b) in [
        ("valid-512", &s),
        ("valid-4k", &q),
        ("valid-overlay", &ov),
        ("valid-encrypted", &e),
    ] {
        let g = b.geo.cluster_len();
        c.add(
            &format!("{name}-cluster-0"),
            b.bytes.clone(),
            Expect::Reads {
                guest: 0,
                data: data0(g),
            },
        );
        c.add(
            &format!("{name}-cluster-1"),
            b.bytes.clone(),
            Expect::Reads {
                guest: g as u64,
                data: data1(g),
            },
        );
    }
    c.cases
}
