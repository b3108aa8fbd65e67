//! Hostile images: every case of `hostile/cases.rs` must give its exact error (or its
//! exact data, where QEMU accepts it), and a walk over the whole image, as `map` and
//! `convert` do, must neither panic nor touch the device outside the file.
//!
//! `QCOW_HOSTILE_OUT=DIR cargo test -p qcow-core --test hostile` also writes every
//! case to `DIR/NAME.qcow`, to try other tools (qemu-img) on them.

// A test panics to fail; its arithmetic is on small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

#[path = "hostile/cases.rs"]
mod cases;

use cases::{Case, CoreError, Expect};
use qcow_core::image::{read_header, scratch_len};
use qcow_core::io::SliceIo;
use qcow_core::{Backing, Error, Image, NoBacking};

type Img<'a> = Image<SliceIo<'a>, NoBacking<cases::IoError>, Vec<u8>>;

fn open(bytes: &[u8]) -> Result<Img<'_>, CoreError> {
    let mut io = SliceIo(bytes);
    let h = read_header(&mut io)?;
    Image::open(io, NoBacking::new(), vec![0u8; scratch_len(&h.geometry())])
}

fn cluster_at(img: &mut Img<'_>, guest: u64) -> Result<Vec<u8>, CoreError> {
    let cs = img.geometry().cluster_size();
    let n = cs.min(img.size() - guest) as usize;
    let mut buf = vec![0u8; n];
    img.read_at(guest, &mut buf)?;
    Ok(buf)
}

/// Reads every cluster and walks the status of the whole image (bounded), with and
/// without a secret: errors are fine, device errors are not (the core must check
/// every extent against the file before reading it).
fn walk(bytes: &[u8]) {
    for secret in [None, Some(cases::SECRET)] {
        let Ok(mut img) = open(bytes) else { return };
        if let Some(s) = secret {
            img.set_secret(s).unwrap();
        }
        let size = img.size();
        let cs = img.geometry().cluster_size();
        let mut at = 0u64;
        let mut steps = 0;
        while at < size && steps < 2048 {
            let r = cluster_at(&mut img, at);
            assert!(!matches!(r, Err(Error::Io(_))), "{r:?}");
            let s = Backing::status(&mut img, at, size - at);
            assert!(!matches!(s, Err(Error::Io(_))), "{s:?}");
            at = match s {
                Ok(s) if s.len > cs => at + s.len,
                _ => at + cs,
            };
            steps += 1;
        }
    }
}

fn check(case: &Case) {
    let name = &case.name;
    match &case.expect {
        Expect::Open(want) => {
            let got = open(&case.image).err();
            assert_eq!(got.as_ref(), Some(want), "{name}");
        }
        Expect::Read { guest, err } => {
            let mut img = open(&case.image).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(
                cluster_at(&mut img, *guest).err().as_ref(),
                Some(err),
                "{name}"
            );
            // References are checked before anything is decrypted: the same with a
            // password.
            let mut keyed = open(&case.image).unwrap();
            keyed.set_secret(cases::SECRET).unwrap();
            assert_eq!(
                cluster_at(&mut keyed, *guest).err().as_ref(),
                Some(err),
                "{name}"
            );
            // Reading a range that starts before the bad cluster fails the same way
            // (with the password: the cluster before may be encrypted data).
            if *guest > 0 {
                let mut two = vec![0u8; 2 * img.geometry().cluster_len()];
                let at = *guest - img.geometry().cluster_size();
                assert_eq!(
                    keyed.read_at(at, &mut two).err().as_ref(),
                    Some(err),
                    "{name}"
                );
            }
        }
        Expect::Reads { guest, data } => {
            let mut img = open(&case.image).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            img.set_secret(cases::SECRET).unwrap();
            let got = cluster_at(&mut img, *guest).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(got == *data, "{name}: cluster at {guest} differs");
        }
    }
    walk(&case.image);
}

#[test]
fn every_hostile_case_gives_its_exact_error() {
    let all = cases::all();
    let out = std::env::var_os("QCOW_HOSTILE_OUT").map(std::path::PathBuf::from);
    for case in &all {
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{}.qcow", case.name)), &case.image).unwrap();
        }
        check(case);
    }
    assert!(all.len() > 60, "{} cases", all.len());
}

#[test]
fn every_case_is_small() {
    for case in cases::all() {
        assert!(
            case.image.len() <= 64 << 10,
            "{}: {} bytes",
            case.name,
            case.image.len()
        );
    }
}

/// Truncating a valid image at every field boundary of the header, and at every 8
/// bytes of its L1 table, gives the exact error.
#[test]
fn truncation_at_every_boundary() {
    let b = cases::base(9, 6, 64 << 10, false);
    for len in [0usize, 4, 8, 16, 20, 24, 32, 33, 34, 36, 40, 47] {
        assert_eq!(
            open(&b.bytes[..len]).err(),
            Some(Error::HeaderTruncated { len: len as u64 })
        );
    }
    let l1_end = (b.l1 + b.geo.l1_bytes()) as usize;
    for len in (48..l1_end).step_by(8) {
        assert_eq!(
            open(&b.bytes[..len]).err(),
            Some(Error::L1OutOfFile {
                offset: b.l1,
                len: b.geo.l1_bytes(),
                file_len: len as u64
            }),
            "{len}"
        );
    }
    // Cut inside the L2 table, inside the data cluster, inside the compressed stream.
    for (cut, guest) in [(b.l2 + 100, 0), (b.data0 + 100, 0), (b.comp.0 + 3, 512)] {
        let cut = cut as usize;
        let Ok(mut img) = open(&b.bytes[..cut]) else {
            panic!("cut at {cut}")
        };
        let e = cluster_at(&mut img, guest).unwrap_err();
        assert!(
            matches!(
                e,
                Error::BadReference {
                    problem: qcow_core::Problem::PastEof { file_len },
                    ..
                } if file_len == cut as u64
            ),
            "cut at {cut}: {e:?}"
        );
    }
}

/// Fuzz crash `write/crash-d920c49c…`: `write_compressed` of a whole cluster that
/// reaches past the virtual size (the last cluster is partial) stored it and said
/// Ok; one past the L1 table's span wrote an L1 entry past the table, over whatever
/// followed it. Both are refused now, and the file is left as it was.
#[test]
fn write_compressed_past_the_virtual_size_is_refused() {
    use qcow_core::io::MemIo;
    use qcow_core::write::{create, CreateOptions};
    let mut io = MemIo::default();
    create(&mut io, &CreateOptions::new(1000)).unwrap();
    let before = io.clone();
    let mut img = Image::open(io, NoBacking::new(), vec![0u8; 8192]).unwrap();
    let cluster = vec![0x41u8; 4096];
    for (offset, len) in [(0u64, 4096u64), (1 << 21, 4096), (1 << 40, 4096)] {
        assert_eq!(
            img.write_compressed(offset, &cluster[..len as usize]),
            Err(Error::OutOfRange {
                offset,
                len,
                size: 1024
            })
        );
    }
    let (io, _) = img.into_parts();
    assert_eq!(io, before);
}

/// `make_empty` zeroes an L1 table larger than its 64 KiB buffer completely.
#[test]
fn make_empty_zeroes_a_large_l1_in_pieces() {
    use qcow_core::io::MemIo;
    use qcow_core::write::{create, CreateOptions};
    // 10000 L1 entries of 2 MiB each: an 80000-byte table.
    let size = 10_000u64 << 21;
    let mut io = MemIo::default();
    let h = create(&mut io, &CreateOptions::new(size)).unwrap();
    assert_eq!(h.geometry().l1_bytes(), 80_000);
    let mut img = Image::open(io, NoBacking::new(), vec![0u8; 8192]).unwrap();
    for at in [0, 40_000 << 21 >> 4, size - 4096] {
        img.write_at(at, &[0x77; 4096]).unwrap();
    }
    img.make_empty().unwrap();
    let (mut io, _) = img.into_parts();
    let l1 = &io.0[h.l1_table_offset as usize..][..80_000];
    assert!(l1.iter().all(|&b| b == 0));
    assert_eq!(
        qcow_core::BlockIo::len(&mut io).unwrap(),
        h.l1_table_offset + 80_384
    );
}
