//! Issue 3, the read path: images that QEMU made and wrote read byte for byte as
//! `qemu-img convert -O raw` reads them, through `qcow read`, `qcow convert -O raw`
//! and the library's `Read + Seek` view; `info`, `map` and `compare` agree with
//! qemu-img; every malformed header or reference is refused with one `qcow: ` line.

mod common;

use std::io::{Read, Seek, SeekFrom};

use std::path::Path;

use common::*;

#[test]
fn images_qemu_made_and_wrote() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(1);
    let rnd = d.join("random.bin");
    write(&rnd, &rng.bytes(1 << 20));
    let txt = d.join("text.bin");
    write(&txt, &rng.text(1 << 20));

    // A plain image of an odd size (QEMU rounds it up to 512), written by qemu-io:
    // patterns, random data, text, zeros, sub-sector pieces, the last bytes.
    let plain = d.join("plain.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &plain, &"5000001"]);
    let size = 5000001u64.div_ceil(512) * 512;
    qemu_io_qcow(
        &plain,
        &[
            "write -P 0x11 0 4096".into(),
            "write -P 0x22 5000 7001".into(),
            format!("write -s {} 1048000 300001", rnd.display()),
            format!("write -s {} 2097000 200003", txt.display()),
            "write -z 1100000 5000".into(),
            "write -z 3000000 8192".into(),
            "write -P 0x33 2097151 3".into(),
            format!("write -P 0x77 {} 700", size - 700),
        ],
    );
    let want = qemu_raw(&plain, &[], d);
    assert_eq!(want.len() as u64, size);
    check_reads(&plain, None, &want, None, &mut rng, "plain");

    // qemu-img convert and convert -c of mixed data, then clusters of the compressed
    // one overwritten by qemu-io (partly, wholly, with zeros, compressed again).
    let src = d.join("mixed.raw");
    write(&src, &mixed(&mut rng, 3 << 20));
    let conv = d.join("conv.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &src, &conv]);
    let want = qemu_raw(&conv, &[], d);
    assert_bytes_eq(&want, &read(&src), "qemu's own conversion");
    check_reads(&conv, None, &want, None, &mut rng, "converted");

    let comp = d.join("comp.qcow");
    qemu_convert_compressed(&src, &comp);
    let map = parse_map(&qemu_img_ok(&[&"map", &"--output=json", &comp]));
    assert!(map.iter().any(|e| e.compressed), "no compressed clusters");
    let want = qemu_raw(&comp, &[], d);
    check_reads(&comp, None, &want, None, &mut rng, "compressed");
    qemu_io_qcow(
        &comp,
        &[
            "write -P 0x5a 4196 300".into(),
            "write -P 0x5b 65536 4096".into(),
            "write -z 131072 10000".into(),
            format!("write -s {} 200000 70000", rnd.display()),
            "write -c -P 0x5c 1048576 4096".into(),
            "write -P 0x5d 1048577 1".into(),
            format!("write -P 0x5e {} 1", (3 << 20) - 1),
        ],
    );
    let want = qemu_raw(&comp, &[], d);
    check_reads(
        &comp,
        None,
        &want,
        None,
        &mut rng,
        "compressed, overwritten",
    );
}

/// Every cluster size with every L2 table size, images made by the library and
/// written by qemu-io: the whole guest view equals QEMU's (qemu-img compare of the
/// raw conversions, which may be large but are sparse), and reads straddling cluster
/// and L2 boundaries and the last byte equal QEMU's bytes.
fn geometry(cb: u8) {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(u64::from(cb));
    let pat = d.join("pat.bin");
    write(&pat, &rng.bytes(300 << 10));
    let txt = d.join("txt.bin");
    write(&txt, &rng.text(64 << 10));
    for l2 in 6u8..=13 {
        let cs = 1u64 << cb;
        let span = 1u64 << (cb + l2);
        let size = span + 3 * cs + 1536;
        let img = d.join(format!("g{cb}-{l2}.qcow"));
        lib_create(&img, size, Some(cb), Some(l2), None);
        assert_eq!(read_at(&img, 32, 2), vec![cb, l2]);
        let across_len = (2 * cs + 600).min(300 << 10);
        qemu_io_qcow(
            &img,
            &[
                format!("write -P 0xa1 0 {}", cs + 100),
                format!("write -s {} {} {}", pat.display(), 2 * cs - 7, cs + 14),
                format!(
                    "write -s {} {} {}",
                    pat.display(),
                    span - across_len / 2,
                    across_len
                ),
                format!("write -P 0x7e {} 700", size - 700),
                // QEMU's compressed clusters at this cluster size: a pattern, text
                // (then partly overwritten), random bytes (stored plain).
                format!("write -c -P 0x5c {} {}", 4 * cs, cs),
                format!("write -c -s {} {} {}", txt.display(), 5 * cs, cs),
                format!("write -P 0x5d {} 100", 5 * cs + 77),
                format!("write -c -s {} {} {}", pat.display(), 6 * cs, cs),
            ],
        );
        let what = format!("cluster_bits {cb} l2_bits {l2}");
        let m = assert_map_matches(&img, &what);
        assert!(m.iter().any(|e| e.compressed), "{what}: nothing compressed");
        let theirs = d.join("theirs.raw");
        let ours = d.join("ours.raw");
        qemu_img_ok(&[&"convert", &"-O", &"raw", &img, &theirs]);
        qcow_ok(&[&"convert", &"-O", &"raw", &img, &ours]);
        assert_eq!(file_len(&ours), size, "{what}");
        assert_qemu_identical(&theirs, &ours, &[&"-f", &"raw", &"-F", &"raw"], &what);

        let mut io = qcow_std::Disk::open(&img).expect("open");
        let windows = [
            (0, 2 * cs + 1),
            (cs - 1, 2),
            (2 * cs - 10, cs + 20),
            (span - 1, 2),
            (span - across_len / 2 - 3, across_len + 6),
            (size - 701, 701),
            (rng.below(size - 9), 9),
            (4 * cs - 1, 3 * cs + 2),
        ];
        for (at, len) in windows {
            let want = read_at(&theirs, at, len as usize);
            let mut got = vec![0u8; len as usize];
            io.seek(SeekFrom::Start(at)).expect("seek");
            io.read_exact(&mut got).expect("read");
            assert_bytes_eq(&got, &want, &format!("{what}: DiskIo {at}+{len}"));
        }
        for (at, len) in [(span - across_len / 2 - 3, across_len + 6), (size - 1, 1)] {
            let want = read_at(&theirs, at, len as usize);
            let got = qcow_ok(&[&"read", &img, &at.to_string(), &len.to_string()]);
            assert_bytes_eq(&got, &want, &format!("{what}: qcow read {at} {len}"));
        }
    }
}

#[test]
fn geometry_cluster_bits_9() {
    geometry(9)
}
#[test]
fn geometry_cluster_bits_10() {
    geometry(10)
}
#[test]
fn geometry_cluster_bits_11() {
    geometry(11)
}
#[test]
fn geometry_cluster_bits_12() {
    geometry(12)
}
#[test]
fn geometry_cluster_bits_13() {
    geometry(13)
}
#[test]
fn geometry_cluster_bits_14() {
    geometry(14)
}
#[test]
fn geometry_cluster_bits_15() {
    geometry(15)
}
#[test]
fn geometry_cluster_bits_16() {
    geometry(16)
}

/// A header size that is not a multiple of 512: QEMU and we both see it rounded down.
#[test]
fn odd_size_in_header() {
    let dir = tmp();
    let d = dir.path();
    let img = d.join("odd.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &img, &"1M"]);
    qemu_io_qcow(&img, &["write -P 0x42 1047552 1024".into()]);
    patch(&img, 24, &(1048576u64 - 512 + 300).to_be_bytes());
    let want = qemu_raw(&img, &[], d);
    assert_eq!(want.len(), 1048576 - 512);
    let mut rng = Rng::new(7);
    check_reads(&img, None, &want, None, &mut rng, "odd header size");
    let info = Json::parse(&String::from_utf8_lossy(&qcow_ok(&[
        &"info",
        &"--output=json",
        &img,
    ])));
    assert_eq!(info.get("virtual-size").map(Json::u64), Some(1048576 - 512));
}

/// 1 TiB, almost all unallocated: reads near the end work, and `convert -O raw`
/// finishes in seconds with a sparse output.
#[test]
fn one_tib_sparse() {
    let dir = tmp();
    let d = dir.path();
    let img = d.join("big.qcow");
    let tib = 1u64 << 40;
    qemu_img_ok(&[&"create", &"-f", &"qcow", &img, &"1T"]);
    qemu_io_qcow(
        &img,
        &[
            format!("write -P 0x61 {} 8192", tib - 20480),
            format!("write -P 0x62 {} 1", tib - 1),
            "write -P 0x63 1000000000 4096".into(),
        ],
    );
    let got = qcow_ok(&[&"read", &img, &(tib - 24576).to_string(), &"24576"]);
    let mut want = vec![0u8; 24576];
    want[4096..12288].fill(0x61);
    want[24575] = 0x62;
    assert_bytes_eq(&got, &want, "read near the end of 1 TiB");

    let out = d.join("big.raw");
    // No timing here (speed is measured by `cargo xtask bench`): a convert that walked
    // the terabyte would not finish within CI's budget.
    qcow_ok(&[&"convert", &"-O", &"raw", &img, &out]);
    assert_eq!(file_len(&out), tib);
    assert!(
        allocated(&out) < 4 << 20,
        "raw output is not sparse: {} bytes allocated",
        allocated(&out)
    );
    // Every byte outside the file's holes is what was written (qemu-img compare
    // would take minutes here: it reads the whole terabyte).
    let expect = |at: u64| match at {
        _ if (tib - 20480..tib - 12288).contains(&at) => 0x61,
        _ if at == tib - 1 => 0x62,
        1000000000..=1000004095 => 0x63,
        _ => 0,
    };
    let extents = parse_map(&qemu_img_ok(&[
        &"map",
        &"-f",
        &"raw",
        &"--output=json",
        &out,
    ]));
    let mut seen = 0;
    for e in extents.iter().filter(|e| e.data) {
        assert!(e.length <= 1 << 20, "data extent {e:?} too long");
        let got = read_at(&out, e.start, e.length as usize);
        for (i, b) in got.iter().enumerate() {
            let at = e.start + i as u64;
            assert_eq!(*b, expect(at), "raw output byte {at}");
            seen += u64::from(*b != 0);
        }
    }
    assert_eq!(
        seen,
        8192 + 1 + 4096,
        "written bytes found in the raw output"
    );

    // map (qemu-img map takes a minute here): the three data runs, nothing else.
    let m = parse_map(&String::from_utf8_lossy(&qcow_ok(&[
        &"map",
        &"--output=json",
        &img,
    ])));
    let data: Vec<(u64, u64)> = m
        .iter()
        .filter(|e| e.data)
        .map(|e| (e.start, e.length))
        .collect();
    assert_eq!(
        data,
        vec![
            (1000000000 / 4096 * 4096, 8192),
            (tib - 20480, 8192),
            (tib - 4096, 4096)
        ]
    );
    assert_eq!(m.iter().map(|e| e.length).sum::<u64>(), tib);
    assert!(m.iter().all(|e| e.depth == 0 && e.present == e.data));
}

fn info_json(args: &Args, qemu: bool) -> Json {
    let text = if qemu {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"info", &"--output=json"];
        a.extend_from_slice(args);
        qemu_img_ok(&a)
    } else {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"info", &"--output=json"];
        a.extend_from_slice(args);
        String::from_utf8_lossy(&qcow_ok(&a)).into_owned()
    };
    Json::parse(&text)
}

/// Asserts the keys the contract names agree between `qcow info` and `qemu-img info`.
pub fn assert_info_matches(img: &Path, what: &str) -> Json {
    let ours = info_json(&[&img], false);
    let theirs = info_json(&[&img], true);
    for key in [
        "filename",
        "format",
        "virtual-size",
        "actual-size",
        "cluster-size",
        "backing-filename",
    ] {
        assert_eq!(ours.get(key), theirs.get(key), "{what}: info key {key}");
    }
    // qemu-img omits "encrypted" when it is false; we always print it for qcow.
    let enc = |j: &Json| j.get("encrypted").cloned().unwrap_or(Json::Bool(false));
    assert_eq!(enc(&ours), enc(&theirs), "{what}: encrypted");
    if ours.get("format") == Some(&Json::Str("qcow".into())) {
        assert!(ours.get("encrypted").is_some(), "{what}: no encrypted key");
    }
    ours
}

#[test]
fn info_matches_qemu() {
    let dir = tmp();
    let d = dir.path();
    let plain = d.join("plain.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &plain, &"3M"]);
    qemu_io_qcow(&plain, &["write -P 1 0 100000".into()]);
    assert_info_matches(&plain, "plain");
    let comp = d.join("comp.qcow");
    qemu_convert_compressed(&plain, &comp);
    assert_info_matches(&comp, "compressed");
    let ov = d.join("ov.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"comp.qcow",
        &"-F",
        &"qcow",
        &ov,
        &"5M",
    ]);
    let j = assert_info_matches(&ov, "overlay");
    assert_eq!(
        j.get("backing-filename"),
        Some(&Json::Str("comp.qcow".into()))
    );
    // A raw file, and a backing name with a quote, a backslash and non-ASCII.
    let odd = d.join("b \"q\" \u{e9}\\.raw");
    write(&odd, &[1u8; 4096]);
    assert_info_matches(&odd, "raw file");
    let ov2 = d.join("ov2.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &odd.file_name().expect("name"),
        &"-F",
        &"raw",
        &ov2,
    ]);
    let j = assert_info_matches(&ov2, "odd backing name");
    assert_eq!(
        j.get("backing-filename"),
        Some(&Json::Str("b \"q\" \u{e9}\\.raw".into()))
    );
    let ours = lib_dir_image(d);
    let j = assert_info_matches(&ours, "ours, with cluster_bits 16");
    assert_eq!(j.get("cluster-size").map(Json::u64), Some(65536));
}

fn lib_dir_image(d: &Path) -> std::path::PathBuf {
    let p = d.join("lib.qcow");
    lib_create(
        &p,
        10 << 20,
        Some(16),
        Some(7),
        Some("/nonexistent/base.raw"),
    );
    p
}

fn assert_map_matches(img: &Path, what: &str) -> Vec<MapExtent> {
    let ours = parse_map(&String::from_utf8_lossy(&qcow_ok(&[
        &"map",
        &"--output=json",
        &img,
    ])));
    let theirs = parse_map(&qemu_img_ok(&[&"map", &"--output=json", &img]));
    if let Some(i) = (0..ours.len().max(theirs.len())).find(|&i| ours.get(i) != theirs.get(i)) {
        panic!(
            "{what}: map differs from qemu-img's at extent {i}: ours {:?}, qemu's {:?}",
            ours.get(i),
            theirs.get(i)
        );
    }
    ours
}

#[test]
fn map_matches_qemu() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(3);
    let plain = d.join("plain.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &plain, &"6M"]);
    qemu_io_qcow(
        &plain,
        &[
            "write -P 1 8192 100000".into(),
            "write -P 2 3M 4096".into(),
            "write -P 3 0 512".into(),
            "write -P 4 4M 2M".into(),
            "write -P 5 12288 1".into(),
        ],
    );
    let m = assert_map_matches(&plain, "plain");
    assert!(m.iter().filter(|e| e.data).count() >= 3);

    let src = d.join("mixed.raw");
    write(&src, &mixed(&mut rng, 2 << 20));
    let comp = d.join("comp.qcow");
    qemu_convert_compressed(&src, &comp);
    qemu_io_qcow(&comp, &["write -P 9 40960 10000".into()]);
    let m = assert_map_matches(&comp, "compressed");
    assert!(m.iter().any(|e| e.compressed) && m.iter().any(|e| e.data && !e.compressed));

    // Overlays: over a qcow chain, larger than their backing files (the part past a
    // backing file's end), and smaller.
    let mid = d.join("mid.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"comp.qcow",
        &"-F",
        &"qcow",
        &mid,
        &"3M",
    ]);
    qemu_io_qcow(
        &mid,
        &["write -P 6 1M 4096".into(), "write -P 7 2500000 10".into()],
    );
    assert_map_matches(&mid, "overlay larger than its backing file");
    let top = d.join("top.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"mid.qcow",
        &"-F",
        &"qcow",
        &top,
        &"8M",
    ]);
    qemu_io_qcow(
        &top,
        &["write -P 8 5M 512".into(), "write -P 8 4096 512".into()],
    );
    let m = assert_map_matches(&top, "3 levels, top larger");
    assert!(m.iter().any(|e| e.depth == 2) && m.iter().any(|e| e.depth == 1));
    let small = d.join("small.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"top.qcow",
        &"-F",
        &"qcow",
        &small,
        &"1M",
    ]);
    assert_map_matches(&small, "overlay smaller than its backing file");

    // Over a raw file with no holes.
    let raw = d.join("full.raw");
    write(&raw, &rng.bytes(1 << 20));
    let ov = d.join("ov-raw.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"full.raw",
        &"-F",
        &"raw",
        &ov,
        &"2M",
    ]);
    qemu_io_qcow(&ov, &["write -P 8 5000 512".into()]);
    assert_map_matches(&ov, "overlay of a raw file");

    // Over a sparse raw file: its holes are present zeros.
    let sparse = d.join("sparse.raw");
    qemu_img_ok(&[&"create", &"-f", &"raw", &sparse, &"3M"]);
    qemu_io_ok(&[&"-f", &"raw", &"-c", &"write -P 3 1M 64k", &sparse]);
    let ov = d.join("ov-sparse.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"sparse.raw",
        &"-F",
        &"raw",
        &ov,
        &"4M",
    ]);
    qemu_io_qcow(&ov, &["write -P 8 2M 512".into()]);
    let m = assert_map_matches(&ov, "overlay of a sparse raw file");
    assert!(m.iter().any(|e| e.depth == 1 && e.zero && e.present));
}

#[test]
fn compare_matches_qemu() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(4);
    let data = mixed(&mut rng, 2 << 20);
    let raw = d.join("a.raw");
    write(&raw, &data);
    let img = d.join("a.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &img]);

    let ours = |a: &Path, b: &Path| {
        let o = qcow(&[&"compare", &a, &b]);
        (o.code, o.text())
    };
    let theirs = |a: &Path, b: &Path| {
        let o = qemu_img(&[&"compare", &a, &b]);
        (o.code, o.text())
    };

    assert_eq!(ours(&img, &raw), (0, "Images are identical.\n".into()));
    assert_eq!(ours(&img, &raw), theirs(&img, &raw));

    // One byte differs in the middle of a sector: both print that sector's offset.
    let b = d.join("b.qcow");
    std::fs::copy(&img, &b).expect("copy");
    qemu_io_qcow(&b, &["write -P 0xee 1234567 1".into()]);
    let (code, text) = ours(&img, &b);
    assert_eq!(code, 1);
    assert_eq!(
        text,
        format!("Content mismatch at offset {}!\n", 1234567 / 512 * 512)
    );
    assert_eq!((code, text), theirs(&img, &b));

    // A longer image equal where both have data and zero past the shorter one's end.
    let long = d.join("long.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &long, &"5M"]);
    let rawlong = d.join("long.raw");
    let mut l = data.clone();
    l.resize(5 << 20, 0);
    write(&rawlong, &l);
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &rawlong, &long]);
    assert_eq!(
        ours(&raw, &long),
        (
            0,
            "Warning: Image size mismatch!\nImages are identical.\n".into()
        )
    );
    assert_eq!(ours(&long, &img), theirs(&long, &img));
    // ... and not equal when its tail is not zero.
    qemu_io_qcow(&long, &["write -P 1 4000000 1".into()]);
    let (code, text) = ours(&img, &long);
    assert_eq!(code, 1);
    assert_eq!(
        text,
        format!(
            "Warning: Image size mismatch!\nContent mismatch at offset {}!\n",
            4000000 / 512 * 512
        )
    );
    assert_eq!((code, text), theirs(&img, &long));
    assert_eq!(ours(&long, &img), theirs(&long, &img));

    // Errors are exit 2.
    let o = qcow(&[&"compare", &img, &d.join("missing.qcow")]);
    let line = assert_fails(&o, 2, "compare with a missing file");
    assert!(line.contains("missing.qcow"), "{line}");
    let bad = d.join("bad.qcow");
    std::fs::copy(&img, &bad).expect("copy");
    patch(&bad, 32, &[17]);
    let o = qcow(&[&"compare", &img, &bad]);
    assert_fails(&o, 2, "compare with a bad image");
    assert_eq!(qemu_img(&[&"compare", &img, &bad]).code, 2);
}

/// A 1 GiB image (L1 table of 4096 bytes at 48) with data at guest 0.
fn victim(d: &Path, name: &str) -> std::path::PathBuf {
    let p = d.join(name);
    qemu_img_ok(&[&"create", &"-f", &"qcow", &p, &"1G"]);
    qemu_io_qcow(&p, &["write -P 0x31 0 8192".into()]);
    p
}

#[test]
fn malformed_headers_are_refused() {
    let dir = tmp();
    let d = dir.path();
    let base = victim(d, "base.qcow");
    let len = file_len(&base);
    let cases: Vec<(&str, u64, Vec<u8>)> = vec![
        ("bad magic", 0, b"QFI\xfc".to_vec()),
        ("version 2", 4, 2u32.to_be_bytes().to_vec()),
        ("size 0", 24, 0u64.to_be_bytes().to_vec()),
        ("size 1", 24, 1u64.to_be_bytes().to_vec()),
        ("cluster_bits 8", 32, vec![8]),
        ("cluster_bits 17", 32, vec![17]),
        ("l2_bits 5", 33, vec![5]),
        ("l2_bits 14", 33, vec![14]),
        ("crypt_method 2", 36, 2u32.to_be_bytes().to_vec()),
        ("huge size", 24, (1u64 << 63).to_be_bytes().to_vec()),
        ("size u64::MAX", 24, u64::MAX.to_be_bytes().to_vec()),
        (
            "backing name of 1024 bytes",
            8,
            [48u64.to_be_bytes().to_vec(), 1024u32.to_be_bytes().to_vec()].concat(),
        ),
        ("L1 past EOF", 40, len.to_be_bytes().to_vec()),
        ("L1 misaligned", 40, 52u64.to_be_bytes().to_vec()),
        (
            "backing name past EOF",
            8,
            [
                (len - 10).to_be_bytes().to_vec(),
                20u32.to_be_bytes().to_vec(),
            ]
            .concat(),
        ),
    ];
    for (what, at, bytes) in cases {
        let img = d.join("case.qcow");
        std::fs::copy(&base, &img).expect("copy");
        patch(&img, at, &bytes);
        for args in [
            vec![&"info" as &dyn AsRef<std::ffi::OsStr>, &"-f", &"qcow", &img],
            vec![&"read", &"-f", &"qcow", &img, &"0", &"512"],
        ] {
            let o = qcow(&args);
            let line = assert_fails(&o, 1, what);
            assert!(line.contains("case.qcow"), "{what}: names no file: {line}");
        }
        // QEMU refuses these too (except where we are stricter: L1 past EOF).
        let q = qemu_img(&[&"info", &"-f", &"qcow", &img]);
        if !what.contains("EOF") && !what.starts_with("L1") {
            assert_ne!(q.code, 0, "{what}: qemu-img accepts it");
        }
    }
    // A file shorter than the header.
    let short = d.join("short.qcow");
    write(&short, &read(&base)[..40]);
    qcow_err(&[&"info", &"-f", &"qcow", &short], 1);
    qcow_err(&[&"read", &"-f", &"qcow", &short, &"0", &"1"], 1);
}

#[test]
fn bad_references_are_refused() {
    let dir = tmp();
    let d = dir.path();
    let base = victim(d, "base.qcow");
    let len = file_len(&base);
    let l2 = be64_at(&base, 48);
    let data = be64_at(&base, l2);
    assert!(l2 > 0 && data > 0);

    let comp = d.join("comp.qcow");
    qemu_convert_compressed(&base, &comp);
    let comp_len = file_len(&comp);
    let cl2 = be64_at(&comp, 48);
    let centry = be64_at(&comp, cl2);
    assert!(centry >> 63 == 1, "not compressed: {centry:#x}");
    let shift = 63 - 12;
    let chost = centry & ((1 << shift) - 1);
    let clen = (centry >> shift) & 4095;

    let cases: Vec<(&str, &Path, u64, u64)> = vec![
        ("L2 table past EOF", &base, 48, (len + 4096) / 512 * 512),
        (
            "L2 table straddling EOF",
            &base,
            48,
            (len - 512) / 512 * 512,
        ),
        ("L2 table misaligned", &base, 48, l2 + 8),
        ("L2 table over the L1 table", &base, 48, 512),
        ("data cluster past EOF", &base, l2, (len + 4096) / 512 * 512),
        ("data cluster straddling EOF", &base, l2, len - 512),
        ("data cluster misaligned", &base, l2, data + 1),
        ("data cluster over the L1 table", &base, l2, 1024),
        (
            "compressed cluster past EOF",
            &comp,
            cl2,
            (1 << 63) | (clen << shift) | (comp_len + 100),
        ),
        (
            "compressed cluster straddling EOF",
            &comp,
            cl2,
            (1 << 63) | (clen << shift) | (comp_len - clen / 2),
        ),
        (
            "compressed cluster over the header",
            &comp,
            cl2,
            (1 << 63) | (clen << shift) | 8,
        ),
        (
            "compressed cluster of length 0",
            &comp,
            cl2,
            (1 << 63) | chost,
        ),
        (
            "compressed cluster of garbage",
            &comp,
            cl2,
            (1 << 63) | (100 << shift) | (cl2 + 64),
        ),
    ];
    for (what, src, at, entry) in cases {
        let img = d.join("case.qcow");
        std::fs::copy(src, &img).expect("copy");
        patch(&img, at, &entry.to_be_bytes());
        let line = qcow_err(&[&"read", &img, &"0", &"4096"], 1);
        assert!(line.contains("case.qcow"), "{what}: names no file: {line}");
        let out = d.join("out.raw");
        qcow_err(&[&"convert", &"-O", &"raw", &img, &out], 1);
        // The rest of the image still reads.
        let o = qcow(&[&"read", &img, &"4194304", &"4096"]);
        assert_eq!(o.code, 0, "{what}: {}", o.stderr);
    }
}

/// A raw file whose length is not a multiple of 512: QEMU counts whole sectors (the
/// tail reads as zeros); so do info, read, convert, map and compare.
#[test]
fn raw_file_of_odd_length() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(8);
    let raw = d.join("odd.raw");
    write(&raw, &rng.bytes(1000001));
    let ours = Json::parse(&String::from_utf8_lossy(&qcow_ok(&[
        &"info",
        &"--output=json",
        &raw,
    ])));
    let theirs = Json::parse(&qemu_img_ok(&[&"info", &"--output=json", &raw]));
    assert_eq!(ours.get("virtual-size"), theirs.get("virtual-size"));
    assert_eq!(ours.get("virtual-size").map(Json::u64), Some(1000448));
    let want = qemu_raw(&raw, &[&"-f", &"raw"], d);
    assert_eq!(want.len(), 1000448);
    check_reads(&raw, None, &want, None, &mut rng, "odd-length raw");
    assert_map_matches(&raw, "odd-length raw");
    let ov = d.join("ov.qcow");
    qcow_ok(&[&"create", &"-b", &"odd.raw", &"-F", &"raw", &ov]);
    assert_map_matches(&ov, "overlay of an odd-length raw");
    let q = d.join("q.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &q]);
    for (a, b) in [(&raw, &q), (&q, &raw)] {
        let o = qcow(&[&"compare", a, b]);
        let t = qemu_img(&[&"compare", a, b]);
        assert_eq!((o.code, o.text()), (t.code, t.text()));
    }
    // Writing the tail grows the file; it then reads back.
    let o = qcow_stdin(&[&"write", &raw, &"1000440"], &[7u8; 8]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(file_len(&raw), 1000448);
    assert_eq!(qcow_ok(&[&"read", &raw, &"1000440", &"8"]), vec![7u8; 8]);
}

/// Compressed streams that inflate to more than a cluster (QEMU keeps the first
/// cluster) or to less (QEMU fails the read): we do the same.
#[test]
fn compressed_streams_longer_or_shorter_than_a_cluster() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(9);
    let src = d.join("src.raw");
    write(&src, &rng.text(1 << 20));
    let base = d.join("base.qcow");
    qemu_convert_compressed(&src, &base);
    let l2 = be64_at(&base, 48);
    let entry = be64_at(&base, l2);
    assert!(entry >> 63 == 1, "cluster 0 is not compressed");
    let shift = 63 - 12;
    let mut deflater = qcow_core::cluster::Deflater::default();
    for (what, input_len, qemu_reads) in [("long", 8192usize, true), ("short", 2048, false)] {
        let input = rng.text(input_len);
        let mut out = vec![0u8; input_len];
        let n = deflater.compress(&input, &mut out).expect("compresses");
        assert!(n < 4096, "{what}: stream of {n} bytes");
        let img = d.join(format!("{what}.qcow"));
        std::fs::copy(&base, &img).expect("copy");
        let at = file_len(&img);
        patch(&img, at, &out[..n]);
        patch(
            &img,
            l2,
            &((1u64 << 63) | ((n as u64) << shift) | at).to_be_bytes(),
        );
        let q = qemu_img(&[&"convert", &"-O", &"raw", &img, &d.join("q.raw")]);
        assert_eq!(
            q.code == 0,
            qemu_reads,
            "{what}: qemu-img convert: {}",
            q.stderr
        );
        if qemu_reads {
            let want = read(&d.join("q.raw"));
            assert_bytes_eq(&want[..4096], &input[..4096], "QEMU's first cluster");
            check_reads(&img, None, &want, None, &mut rng, what);
        } else {
            let line = qcow_err(&[&"read", &img, &"0", &"512"], 1);
            assert!(line.contains("compressed"), "{line}");
            qcow_err(&[&"convert", &"-O", &"raw", &img, &d.join("o.raw")], 1);
            // The other clusters still read.
            let got = qcow_ok(&[&"read", &img, &"4096", &"4096"]);
            assert_bytes_eq(&got, &read(&src)[4096..8192], "cluster 1");
        }
    }
}

/// `convert -O raw` writes its output around the page cache (`O_DIRECT`) where the
/// file system allows (through it elsewhere), switching to buffered writes for a tail
/// that ends inside a 4 KiB block: the output equals qemu-img's and stays sparse, on
/// the temporary directory's file system and on tmpfs, for sizes that end inside a
/// block and span several 4 MiB chunks.
#[test]
fn convert_to_raw_direct_and_buffered_equal_qemu() {
    let dir = tmp();
    let d = dir.path();
    let shm = Path::new("/dev/shm");
    let mut rng = Rng::new(41);
    for (i, size) in [(3 << 20) + 512, (9 << 20) + 3584, 8 << 20]
        .into_iter()
        .enumerate()
    {
        let mut data = mixed(&mut rng, size);
        data[size - 100..].fill(0xa5); // the unaligned tail holds data
        let raw = d.join(format!("src{i}.raw"));
        write(&raw, &data);
        for kind in ["plain", "compressed"] {
            let img = d.join(format!("src{i}-{kind}.qcow"));
            if kind == "plain" {
                qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &img]);
            } else {
                qemu_convert_compressed(&raw, &img);
            }
            let want = qemu_raw(&img, &[], d);
            let outs = [
                d.join("out.raw"),
                shm.join(format!("qcow-test-{}.raw", unique())),
            ];
            for out in &outs {
                qcow_ok(&[&"convert", &"-O", &"raw", &img, out]);
                let what = format!("{kind} {size} into {}", out.display());
                assert_bytes_eq(&read(out), &want, &what);
                let zeros = want
                    .chunks(4096)
                    .filter(|c| c.iter().all(|&b| b == 0))
                    .count();
                assert!(
                    // (ext4 may add an extent-tree block or two)
                    allocated(out) <= size as u64 - zeros as u64 * 4096 + (64 << 10),
                    "{what}: zero blocks were written"
                );
                let _ = std::fs::remove_file(out);
            }
        }
    }
}

/// A loop device over `file`, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let o = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("losetup (util-linux) is needed for this test: {e}"));
        assert!(
            o.status.success(),
            "losetup -f --show {} failed (this test needs root): {}",
            file.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// `convert -O raw` onto a block device (a loop device over a file of 0xff bytes): the
/// device then reads as qemu-img's raw output, its unallocated runs and zero blocks
/// written as zeros rather than left as the old bytes. A device smaller than the disk,
/// or `/dev/null`, is refused in one line as qemu-img refuses it ("cannot grow device
/// files").
#[test]
fn convert_to_raw_onto_a_block_device() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(43);
    let size = (6 << 20) + 512;
    let mut data = mixed(&mut rng, size);
    data[..1 << 20].fill(0); // an unallocated run at the start
    let raw = d.join("src.raw");
    write(&raw, &data);
    let img = d.join("src.qcow");
    qemu_convert_compressed(&raw, &img);
    let want = qemu_raw(&img, &[], d);
    let backing = d.join("device.img");
    write(&backing, &vec![0xff; size + (1 << 20)]);
    let dev = Loop::attach(&backing);
    qcow_ok(&[&"convert", &"-O", &"raw", &img, &dev.0]);
    let got = read_at(Path::new(&dev.0), 0, size);
    assert_bytes_eq(&got, &want, "the device after convert");
    assert_eq!(
        read_at(Path::new(&dev.0), size as u64, 512),
        vec![0xff; 512]
    );
    drop(dev);
    let small = d.join("small.img");
    write(&small, &vec![0xff; 1 << 20]);
    let dev = Loop::attach(&small);
    let e = qcow_err(&[&"convert", &"-O", &"raw", &img, &dev.0], 1);
    assert!(e.contains("cannot grow device files"), "{e}");
    assert_eq!(read_at(Path::new(&dev.0), 0, 4096), vec![0xff; 4096]);
    let e = qcow_err(&[&"convert", &"-O", &"raw", &img, &"/dev/null"], 1);
    assert!(e.contains("cannot grow device files"), "{e}");
}
