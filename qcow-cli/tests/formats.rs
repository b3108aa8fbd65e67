//! Images of other formats — made by `qemu-img create`, or crafted to the signatures
//! QEMU's drivers probe for — are refused by every verb with one line naming the
//! format (exit 1; compare's errors are exit 2); `-f raw` reads them as raw; a
//! refused `create` and a `convert` that fails mid-way leave the directory as it was.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// What the refusal says after `this is `.
const TAIL: &str =
    "; qcow reads only qcow version 1 \u{2014} qemu-img convert -O qcow can make one";

/// One foreign image: its file, the phrase naming it, QEMU's name for its format
/// (`None` where QEMU's probe does not see it: a fixed VHD has only a footer).
struct Foreign {
    file: PathBuf,
    phrase: &'static str,
    qemu: Option<&'static str>,
}

fn qemu_create(d: &Path, name: &str, fmt: &str, opts: &[&str]) -> PathBuf {
    let p = d.join(name);
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"create", &"-q", &"-f", &fmt];
    for o in opts {
        args.push(o);
    }
    args.extend_from_slice(&[&p, &"1M"]);
    qemu_img_ok(&args);
    p
}

/// A Bochs growing redolog of 4 KiB: header, one unallocated catalog entry.
fn bochs(p: &Path) {
    let mut h = vec![0u8; 512];
    h[..23].copy_from_slice(b"Bochs Virtual HD Image\0");
    h[32..40].copy_from_slice(b"Redolog\0");
    h[48..56].copy_from_slice(b"Growing\0");
    for (i, v) in [0x2_0000u32, 512, 1, 512, 4096].iter().enumerate() {
        h[64 + 4 * i..68 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[88..96].copy_from_slice(&4096u64.to_le_bytes());
    h.extend_from_slice(&[0xff; 4]);
    write(p, &h);
}

/// A cloop V2.0 image of one 512-byte block (its offsets table only).
fn cloop(p: &Path) {
    let magic =
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
    let mut c = vec![0u8; 128];
    c[..magic.len()].copy_from_slice(magic);
    c.extend_from_slice(&512u32.to_be_bytes());
    c.extend_from_slice(&1u32.to_be_bytes());
    c.extend_from_slice(&152u64.to_be_bytes());
    c.extend_from_slice(&152u64.to_be_bytes());
    write(p, &c);
}

/// A qcow image with data, made by us.
fn qcow_with_data(d: &Path, name: &str) -> PathBuf {
    let p = d.join(name);
    qcow_ok(&[&"create", &p, &"1M"]);
    let o = qcow_stdin(&[&"write", &p, &"4096"], &[0x5a; 10000]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    p
}

fn foreign_images(d: &Path) -> Vec<Foreign> {
    let f = |file, phrase, qemu| Foreign {
        file,
        phrase,
        qemu: Some(qemu),
    };
    let pw = d.join("pw");
    write(&pw, b"secret");
    let secret = secret_object(&pw);
    let qcow = qcow_with_data(d, "src.qcow");
    let converted = d.join("converted.qcow2");
    qemu_img_ok(&[&"convert", &"-O", &"qcow2", &qcow, &converted]);
    let (b, c) = (d.join("disk.bochs"), d.join("disk.cloop"));
    bochs(&b);
    cloop(&c);
    vec![
        f(
            qemu_create(d, "disk.qcow2", "qcow2", &[]),
            "a qcow2 image (version 3)",
            "qcow2",
        ),
        f(
            qemu_create(d, "v2.qcow2", "qcow2", &["-o", "compat=0.10"]),
            "a qcow2 image (version 2)",
            "qcow2",
        ),
        f(converted, "a qcow2 image (version 3)", "qcow2"),
        f(
            qemu_create(d, "disk.vmdk", "vmdk", &[]),
            "a VMDK image",
            "vmdk",
        ),
        f(
            qemu_create(d, "flat.vmdk", "vmdk", &["-o", "subformat=monolithicFlat"]),
            "a VMDK descriptor",
            "vmdk",
        ),
        f(qemu_create(d, "disk.vdi", "vdi", &[]), "a VDI image", "vdi"),
        f(
            qemu_create(d, "dynamic.vhd", "vpc", &["-o", "subformat=dynamic"]),
            "a VHD image",
            "vpc",
        ),
        Foreign {
            file: qemu_create(d, "fixed.vhd", "vpc", &["-o", "subformat=fixed"]),
            phrase: "a VHD image",
            qemu: None,
        },
        f(
            qemu_create(d, "disk.vhdx", "vhdx", &[]),
            "a VHDX image",
            "vhdx",
        ),
        f(qemu_create(d, "disk.qed", "qed", &[]), "a QED image", "qed"),
        f(
            qemu_create(
                d,
                "disk.luks",
                "luks",
                &["--object", &secret, "-o", "key-secret=s0,iter-time=10"],
            ),
            "a LUKS image (version 1)",
            "luks",
        ),
        f(b, "a Bochs image", "bochs"),
        f(c, "a cloop image", "cloop"),
        f(
            qemu_create(d, "disk.hds", "parallels", &[]),
            "a Parallels image",
            "parallels",
        ),
    ]
}

/// The names in a directory, sorted.
fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Asserts `o` is the refusal of `file` as `phrase` (the line may be about another
/// file first, as create's `cannot open backing file: `).
fn assert_refused(o: &Out, code: i32, file: &Path, phrase: &str, what: &str) {
    let line = assert_fails(o, code, what);
    let want = format!("{}: this is {phrase}{TAIL}", file.display());
    assert!(line.ends_with(&want), "{what}: {line:?}, want {want:?}");
}

/// Every verb refuses `img`, naming its format, and changes nothing.
fn every_verb_refuses(d: &Path, img: &Path, phrase: &str) {
    let name = img.display().to_string();
    let before = read(img);
    let files = listing(d);
    let raw = d.join("same.raw");
    write(&raw, &vec![0u8; 1 << 20]);
    let out = d.join("out.qcow");
    let cases: Vec<(Vec<&dyn AsRef<std::ffi::OsStr>>, i32)> = vec![
        (vec![&"info", &img], 1),
        (vec![&"info", &"--output=json", &img], 1),
        (vec![&"map", &img], 1),
        (vec![&"map", &"--output=json", &img], 1),
        (vec![&"read", &img, &"0", &"512"], 1),
        (vec![&"compare", &img, &raw], 2),
        (vec![&"compare", &raw, &img], 2),
        (vec![&"convert", &"-O", &"qcow", &img, &out], 1),
        (vec![&"convert", &img, &out], 1),
        (vec![&"check", &img], 1),
        (vec![&"resize", &img, &"2M"], 1),
        (vec![&"rebase", &"-u", &"-b", &"x.qcow", &img], 1),
        (vec![&"rebase", &"-b", &"", &img], 1),
        (vec![&"commit", &img], 1),
    ];
    for (args, code) in cases {
        let what = format!(
            "qcow {:?} on {name}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
        );
        assert_refused(&qcow(&args), code, img, phrase, &what);
    }
    let o = qcow_stdin(&[&"write", &img, &"0"], b"hello");
    assert_refused(&o, 1, img, phrase, &format!("write into {name}"));
    std::fs::remove_file(&raw).expect("remove");
    assert_eq!(listing(d), files, "{name}: no file made or removed");
    assert!(read(img) == before, "{name}: changed by a refused verb");
}

/// The same file as a backing file named without a format: refused, naming it.
fn refused_as_backing(d: &Path, img: &Path, phrase: &str) {
    let name = img.file_name().expect("name");
    let files = listing(d);
    let overlay = d.join("overlay.qcow");
    let o = qcow(&[&"create", &"-b", &name, &overlay]);
    assert_refused(&o, 1, img, phrase, "create -b");
    assert_eq!(listing(d), files, "a refused create -b makes no file");
    qcow_ok(&[&"create", &"-u", &"-b", &name, &overlay, &"1M"]);
    for args in [
        vec![
            &"read" as &dyn AsRef<std::ffi::OsStr>,
            &overlay,
            &"0",
            &"512",
        ],
        vec![&"map", &overlay],
        vec![&"convert", &overlay, &d.join("o.raw")],
    ] {
        assert_refused(&qcow(&args), 1, img, phrase, "through an overlay");
    }
    std::fs::remove_file(&overlay).expect("remove");
    assert_eq!(listing(d), files);
}

/// `-f raw` reads the file's bytes, as they are (to a whole sector, as QEMU).
fn raw_when_asked(d: &Path, img: &Path) {
    let mut bytes = read(img);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let size = bytes.len().to_string();
    let info = String::from_utf8(qcow_ok(&[&"info", &"-f", &"raw", &img])).expect("utf-8");
    assert!(info.contains("file format: raw"), "{info}");
    assert!(info.contains(&format!("({size} bytes)")), "{info}");
    let head = bytes.len().min(4096).to_string();
    let got = qcow_ok(&[&"read", &"-f", &"raw", &img, &"0", &head]);
    assert!(got[..] == bytes[..got.len()], "read -f raw");
    let out = d.join("as-raw.raw");
    qcow_ok(&[&"convert", &"-f", &"raw", &img, &out]);
    assert!(read(&out) == bytes, "convert -f raw");
    std::fs::remove_file(&out).expect("remove");
    let o = qcow(&[&"compare", &"-f", &"raw", &"-F", &"raw", &img, &img]);
    assert_eq!(o.code, 0, "compare -f raw: {}", o.stderr);
    qcow_ok(&[&"map", &"-f", &"raw", &img]);
    // write -f raw insists, on a copy.
    let copy = d.join("copy.bin");
    std::fs::copy(img, &copy).expect("copy");
    let o = qcow_stdin(&[&"write", &"-f", &"raw", &copy, &"0"], b"hello");
    assert_eq!(o.code, 0, "write -f raw: {}", o.stderr);
    assert_eq!(&read(&copy)[..5], b"hello");
    std::fs::remove_file(&copy).expect("remove");
}

#[test]
fn other_formats_are_refused_by_name() {
    let dir = tmp();
    let d = dir.path();
    for img in foreign_images(d) {
        if let Some(q) = img.qemu {
            // QEMU probes it as that format too (the crafted ones are real images).
            let info = qemu_img_ok(&[&"info", &"--output=json", &img.file]);
            assert!(
                info.contains(&format!("\"format\": \"{q}\"")),
                "{}: qemu-img says {info}",
                img.file.display()
            );
        } else {
            assert_ne!(read_at(&img.file, 0, 8), b"conectix", "a footer only");
        }
        every_verb_refuses(d, &img.file, img.phrase);
        refused_as_backing(d, &img.file, img.phrase);
        raw_when_asked(d, &img.file);
    }
}

#[test]
fn compare_with_a_raw_file_still_works() {
    let dir = tmp();
    let d = dir.path();
    let img = qcow_with_data(d, "disk.qcow");
    let raw = d.join("disk.raw");
    qemu_img_ok(&[&"convert", &"-f", &"qcow", &"-O", &"raw", &img, &raw]);
    let o = qcow(&[&"compare", &img, &raw]);
    assert_eq!(
        (o.code, o.text()),
        (0, "Images are identical.\n".into()),
        "{}",
        o.stderr
    );
    // The case: a qcow image and its qcow2 conversion is refused, not a
    // content mismatch.
    let q2 = d.join("disk.qcow2");
    qemu_img_ok(&[&"convert", &"-O", &"qcow2", &img, &q2]);
    let o = qcow(&[&"compare", &img, &q2]);
    assert_refused(
        &o,
        2,
        &q2,
        "a qcow2 image (version 3)",
        "compare with qcow2",
    );
}

#[test]
fn a_refused_create_leaves_the_directory_as_it_was() {
    let dir = tmp();
    let d = dir.path();
    let before = listing(d);
    let big = d.join("big.qcow");
    qcow_err(&[&"create", &big, &"1E"], 1);
    qcow_err(&[&"create", &"-b", &"missing.qcow", &big], 1);
    let long = "x".repeat(2000);
    qcow_err(&[&"create", &"-u", &"-b", &long, &big, &"1M"], 1);
    assert_eq!(listing(d), before, "no file left behind");
    // A file that was there is left as it was.
    write(&big, b"keep me");
    qcow_err(&[&"create", &big, &"1E"], 1);
    assert_eq!(read(&big), b"keep me");
}

/// A qcow image of 8 MiB with data at 0 and at 6 MiB, whose L2 entry for 6 MiB points
/// past the end of the file: reading fails there, after the first chunks are copied.
fn broken_at_6m(d: &Path) -> PathBuf {
    let p = qcow_with_data(d, "broken.qcow");
    qcow_ok(&[&"resize", &p, &"8M"]);
    let o = qcow_stdin(&[&"write", &p, &"6M"], &[0x77; 4096]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // 4 KiB clusters, 512 entries a table: L1[3] covers 6 MiB, its entry 0.
    let l1 = be64_at(&p, 40);
    let l2 = be64_at(&p, l1 + 3 * 8);
    assert_ne!(l2, 0);
    patch(&p, l2, &(1u64 << 40).to_be_bytes());
    p
}

#[test]
fn a_convert_failing_mid_way_leaves_the_directory_as_it_was() {
    let dir = tmp();
    let d = dir.path();
    let src = broken_at_6m(d);
    let before = listing(d);
    for args in [
        vec![
            &"convert" as &dyn AsRef<std::ffi::OsStr>,
            &"-O",
            &"qcow",
            &src,
            &d.join("o.qcow"),
        ],
        vec![&"convert", &"-O", &"qcow", &"-c", &src, &d.join("o.qcow")],
        vec![&"convert", &"-O", &"raw", &src, &d.join("o.raw")],
    ] {
        let line = qcow_err(&args, 1);
        assert!(line.contains("broken.qcow"), "{line}");
        assert_eq!(listing(d), before, "{line}: no output left behind");
    }
    // A destination that existed is not removed; refused before writing, it is
    // left as it was.
    let dst = d.join("existing.qcow");
    write(&dst, b"keep me");
    let q2 = qemu_create(d, "disk.qcow2", "qcow2", &[]);
    qcow_err(&[&"convert", &"-O", &"qcow", &q2, &dst], 1);
    assert_eq!(read(&dst), b"keep me");
    qcow_err(&[&"convert", &"-O", &"qcow", &src, &dst], 1);
    assert!(dst.exists(), "an existing destination is never removed");
}
