//! Issue 4, the write path, checked with QEMU: `convert` outputs (plain, compressed,
//! overlays) that `qemu-img compare` finds identical to their sources, with sizes
//! close to qemu-img's; compressed clusters QEMU reads, at every cluster size from
//! 8 to 64 KiB; hundreds of random `qcow write`s on our images and on overlays of
//! qcow, raw and 3-level chains, checked against a model every hundred writes, the
//! backing files untouched; `create` byte for byte as QEMU; `commit`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn assert_identical(a: &Path, b: &Path, what: &str) {
    assert_qemu_identical(&a, &b, &[], what);
}

fn is_compressed_somewhere(img: &Path) -> bool {
    parse_map(&qemu_img_ok(&[&"map", &"--output=json", &img]))
        .iter()
        .any(|e| e.compressed && e.depth == 0)
}

#[test]
fn convert_outputs_are_identical_to_their_sources() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(21);
    let src = d.join("src.raw");
    // An odd size: the last cluster is partial.
    let mut data = mixed(&mut rng, (5 << 20) + 1536);
    let n = data.len();
    data[n - 1] = 0xff;
    write(&src, &data);

    let plain = d.join("plain.qcow");
    qcow_ok(&[&"convert", &"-O", &"qcow", &src, &plain]);
    assert_identical(&src, &plain, "raw -> qcow");
    assert!(!is_compressed_somewhere(&plain));

    let comp = d.join("comp.qcow");
    qcow_ok(&[&"convert", &"-c", &"-O", &"qcow", &src, &comp]);
    assert_identical(&src, &comp, "raw -> qcow -c");
    assert!(
        is_compressed_somewhere(&comp),
        "convert -c wrote no compressed cluster"
    );

    // A compressed qcow overwritten by qemu-io, converted plain and compressed.
    let theirs = d.join("theirs.qcow");
    qemu_convert_compressed(&src, &theirs);
    qemu_io_qcow(
        &theirs,
        &[
            "write -P 0x11 4100 300".into(),
            "write -z 65536 70000".into(),
            "write -P 0x12 1048576 8192".into(),
        ],
    );
    for (flag, name) in [(None, "re.qcow"), (Some("-c"), "rec.qcow")] {
        let out = d.join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"convert", &"-O", &"qcow"];
        if let Some(f) = &flag {
            args.push(f);
        }
        args.extend_from_slice(&[&theirs, &out]);
        qcow_ok(&args);
        assert_identical(&theirs, &out, &format!("qcow -> qcow {flag:?}"));
    }

    // Overlays (-B): only what differs is stored, including zeros over non-zero
    // backing data, which must be written.
    let base = d.join("base.qcow");
    qcow_ok(&[&"convert", &"-O", &"qcow", &src, &base]);
    let mut changed = data.clone();
    changed[100_000..100_000 + 70_000].fill(0);
    changed[3_000_000..3_000_100].copy_from_slice(&[0x5a; 100]);
    let n = changed.len();
    changed[n - 1] = 0;
    let new = d.join("new.raw");
    write(&new, &changed);
    for (flag, name) in [(None, "ov.qcow"), (Some("-c"), "ovc.qcow")] {
        let ov = d.join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"convert", &"-O", &"qcow", &"-B", &"base.qcow"];
        if let Some(f) = &flag {
            args.push(f);
        }
        args.extend_from_slice(&[&new, &ov]);
        qcow_ok(&args);
        assert_identical(&new, &ov, &format!("-B overlay {flag:?}"));
        let info = qemu_img_ok(&[&"info", &"--output=json", &ov]);
        assert_eq!(
            Json::parse(&info).get("backing-filename"),
            Some(&Json::Str("base.qcow".into()))
        );
        assert!(file_len(&ov) < 1 << 20, "overlay holds too much");
        // Without its backing file the overlay's zeros are still zeros where the
        // backing file had data.
        let alone = qemu_raw(&ov, &[], d);
        assert!(alone[100_000..170_000].iter().all(|&b| b == 0));
        let m = parse_map(&qemu_img_ok(&[&"map", &"--output=json", &ov]));
        let at = |off: u64| {
            m.iter()
                .find(|e| e.start <= off && off < e.start + e.length)
                .expect("extent")
                .depth
        };
        assert_eq!(at(120_000), 0, "zeros over backing data not stored");
        assert_eq!(at(3_000_050), 0);
        assert_eq!(at(n as u64 - 1), 0, "zeroed last byte not stored");
        assert_eq!(at(2_000_000), 1);
    }
}

#[test]
fn output_sizes_close_to_qemu() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(22);
    let src = d.join("src.raw");
    write(&src, &mixed(&mut rng, 8 << 20));
    let (q, o) = (d.join("q.qcow"), d.join("o.qcow"));
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &src, &q]);
    qcow_ok(&[&"convert", &"-O", &"qcow", &src, &o]);
    let (qc, oc) = (d.join("qc.qcow"), d.join("oc.qcow"));
    qemu_convert_compressed(&src, &qc);
    qcow_ok(&[&"convert", &"-c", &"-O", &"qcow", &src, &oc]);
    assert_identical(&src, &o, "plain");
    assert_identical(&src, &oc, "compressed");
    for (ours, theirs, what) in [(&o, &q, "plain"), (&oc, &qc, "compressed")] {
        let (a, b) = (file_len(ours), file_len(theirs));
        eprintln!("{what}: ours {a} bytes, qemu-img's {b} bytes");
        assert!(
            a as f64 <= b as f64 * 1.02,
            "{what}: our output ({a} bytes) is more than 2% larger than qemu-img's ({b})"
        );
    }
}

#[test]
fn overlay_of_a_few_changes_is_small() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(23);
    let mut data = rng.bytes(16 << 20);
    let src = d.join("base.raw");
    write(&src, &data);
    // 40 KiB of changes in 10 places.
    for i in 0..10u64 {
        let at = (i * 1_600_000 + rng.below(100_000)) as usize;
        data[at..at + 4096].copy_from_slice(&rng.bytes(4096));
    }
    let new = d.join("new.raw");
    write(&new, &data);
    let ov = d.join("ov.qcow");
    qcow_ok(&[&"convert", &"-O", &"qcow", &"-B", &"base.raw", &new, &ov]);
    assert_identical(&new, &ov, "overlay");
    let len = file_len(&ov);
    assert!(
        len < 512 << 10,
        "overlay of 40 KiB of changes is {len} bytes"
    );
}

#[test]
fn large_clusters_written_compressed_read_by_qemu() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(24);
    for cb in 13u8..=16 {
        let cs = 1usize << cb;
        let size = 8 * cs + 512;
        let img = d.join(format!("c{cb}.qcow"));
        lib_create(&img, size as u64, Some(cb), None, None);
        // Text with repeats further apart than 4 KiB (a 5 KiB period): a deflater
        // with a 32 KiB window would reach back past what QEMU's inflate allows.
        let unit = rng.text(5 << 10);
        let mut data: Vec<u8> = unit.iter().copied().cycle().take(4 * cs).collect();
        data.extend(rng.text(2 * cs));
        let mut model = vec![0u8; size];
        let o = qcow_stdin(&[&"write", &"-c", &img, &cs.to_string()], &data);
        assert_eq!(o.code, 0, "{}", o.stderr);
        model[cs..cs + data.len()].copy_from_slice(&data);
        // The partial last cluster, compressed too.
        let tail = rng.text(512);
        let o = qcow_stdin(&[&"write", &"-c", &img, &(8 * cs).to_string()], &tail);
        assert_eq!(o.code, 0, "{}", o.stderr);
        model[8 * cs..].copy_from_slice(&tail);
        let m = d.join("model.raw");
        write(&m, &model);
        assert_identical(&m, &img, &format!("{cs}-byte clusters"));
        assert!(is_compressed_somewhere(&img), "{cs}: nothing compressed");
        // A converted copy too.
        let conv = d.join(format!("conv{cb}.qcow"));
        qcow_ok(&[&"convert", &"-c", &"-O", &"qcow", &img, &conv]);
        assert_identical(&m, &conv, &format!("{cs}: convert -c"));
    }
}

/// Applies `n` random writes with `qcow write` to `img` and to `model`, checking with
/// `qemu-img compare` after every hundred. `cs` is the image's cluster size, `span`
/// the bytes an L2 table covers.
fn random_writes(img: &Path, model: &mut [u8], n: usize, cs: u64, span: u64, rng: &mut Rng) {
    let dir = tmp();
    let mpath = dir.path().join("model.raw");
    let size = model.len() as u64;
    // Lengths fit in half the image, whatever its size.
    let fit = |len: u64| len.clamp(1, (size / 2).max(1));
    let clusters_in = size / cs;
    for i in 1..=n {
        let (at, data, compress) = match rng.below(9) {
            0 => {
                let len = fit(1 + rng.below(511));
                (rng.below(size - len), rng.bytes(len as usize), false)
            }
            1 => {
                let b = cs * (1 + rng.below(size / cs - 1));
                let at = b - 1 - rng.below(cs);
                let len = (1 + rng.below(2 * cs)).min(size - at);
                (at, rng.text(len as usize), false)
            }
            2 => {
                let spans = (size - 1) / span;
                let b = if spans > 0 {
                    span * (1 + rng.below(spans))
                } else {
                    cs * (1 + rng.below(clusters_in - 1))
                };
                let at = b.saturating_sub(1 + rng.below(3 * cs));
                let len = (1 + rng.below(6 * cs)).min(size - at);
                (at, rng.bytes(len as usize), false)
            }
            3 => {
                let len = fit(1 + rng.below(64 << 10));
                let at = rng.below(size - len);
                (at, vec![0u8; len as usize], false)
            }
            4 => {
                let len = fit((256 << 10) + rng.below(768 << 10));
                let at = rng.below(size - len);
                (at, mixed(rng, len as usize), false)
            }
            5 => {
                let len = fit(1 + rng.below(3000));
                (size - len, rng.bytes(len as usize), false)
            }
            6 | 7 => {
                let clusters = 1 + rng.below(8.min(clusters_in - 1));
                let at = cs * rng.below((clusters_in - clusters).max(1));
                (at, rng.text((clusters * cs) as usize), true)
            }
            _ => {
                let len = fit(1 + rng.below(20000));
                let at = rng.below(size - len);
                (at, rng.text(len as usize), rng.below(2) == 0)
            }
        };
        let off = at.to_string();
        let o = if compress {
            qcow_stdin(&[&"write", &"-c", &img, &off], &data)
        } else {
            qcow_stdin(&[&"write", &img, &off], &data)
        };
        assert_eq!(
            o.code,
            0,
            "write #{i} at {at} of {} bytes: {}",
            data.len(),
            o.stderr
        );
        model[at as usize..at as usize + data.len()].copy_from_slice(&data);
        if i % 100 == 0 || i == n {
            write(&mpath, model);
            let (code, text) = qemu_compare(&mpath, &img, &[&"-f", &"raw"]);
            assert_eq!(
                code,
                0,
                "after {i} writes, {} differs from the model: {text}",
                img.display()
            );
        }
    }
}

fn qcow_write_ok(img: &Path, at: u64, data: &[u8]) {
    let o = qcow_stdin(&[&"write", &img, &at.to_string()], data);
    assert_eq!(o.code, 0, "qcow write at {at}: {}", o.stderr);
}

fn snapshot(files: &[&Path]) -> Vec<(PathBuf, Vec<u8>)> {
    files.iter().map(|p| (p.to_path_buf(), read(p))).collect()
}

fn assert_unchanged(before: &[(PathBuf, Vec<u8>)]) {
    for (p, data) in before {
        assert!(
            read(p) == *data,
            "backing file {} was modified",
            p.display()
        );
    }
}

#[test]
fn random_writes_on_our_images() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(25);
    let size = 6u64 << 20;
    // Created empty by us.
    let img = d.join("new.qcow");
    qcow_ok(&[&"create", &img, &size.to_string()]);
    let mut model = vec![0u8; size as usize];
    random_writes(&img, &mut model, 300, 4096, 2 << 20, &mut rng);
    // Writes reaching past the end are refused and change nothing: piped (up to a
    // chunk of 4 MiB), or from a file of any length.
    let before = read(&img);
    let input = d.join("input.bin");
    for (at, len) in [
        (size - 1, 2),
        (size, 1),
        (size + 4096, 10),
        (size - (4 << 20) + 1, 4 << 20),
    ] {
        let o = qcow_stdin(&[&"write", &img, &at.to_string()], &vec![0xee; len]);
        assert_fails(&o, 1, &format!("write at {at} of {len} bytes"));
        assert!(read(&img) == before, "a refused write changed the image");
    }
    for (at, len) in [
        (size - 1, 2),
        (0, size as usize + 1),
        ((1 << 20) + 1, 5 << 20),
    ] {
        write(&input, &vec![0xee; len]);
        let o = qcow_stdin_file(&[&"write", &img, &at.to_string()], &input);
        assert_fails(&o, 1, &format!("write < file at {at} of {len} bytes"));
        assert!(read(&img) == before, "a refused write changed the image");
    }
    write(&input, &vec![0x5c; 1 << 20]);
    let o = qcow_stdin_file(&[&"write", &img, &(size - (1 << 20)).to_string()], &input);
    assert_eq!(o.code, 0, "{}", o.stderr);
    model[(size - (1 << 20)) as usize..].fill(0x5c);
    write(&input, &model);
    assert_identical(&input, &img, "write < file");

    // Converted compressed by us from mixed data: writes land on compressed clusters.
    let src = d.join("src.raw");
    let mut model = mixed(&mut rng, size as usize);
    write(&src, &model);
    let img = d.join("comp.qcow");
    qcow_ok(&[&"convert", &"-c", &"-O", &"qcow", &src, &img]);
    random_writes(&img, &mut model, 200, 4096, 2 << 20, &mut rng);
}

#[test]
fn random_writes_on_overlays() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(26);
    let size = 6u64 << 20;

    // Over a qcow made (compressed, then partly overwritten) by QEMU; the overlay
    // takes the backing file's size and QEMU's overlay layout (512-byte clusters).
    let src = d.join("src.raw");
    let data = mixed(&mut rng, size as usize);
    write(&src, &data);
    let base = d.join("base.qcow");
    qemu_convert_compressed(&src, &base);
    qemu_io_qcow(&base, &["write -P 0x33 1M 100000".into()]);
    let before = snapshot(&[&base]);
    let ov = d.join("ov.qcow");
    qcow_ok(&[&"create", &"-b", &"base.qcow", &"-F", &"qcow", &ov]);
    let mut model = qemu_raw(&ov, &[], d);
    assert_eq!(model.len() as u64, size);
    random_writes(&ov, &mut model, 300, 512, 2 << 20, &mut rng);
    assert_unchanged(&before);

    // Over a raw file, larger than it.
    let raw = d.join("base.raw");
    write(&raw, &data[..4 << 20]);
    let before = snapshot(&[&raw]);
    let ov = d.join("ovr.qcow");
    qcow_ok(&[
        &"create",
        &"-b",
        &"base.raw",
        &"-F",
        &"raw",
        &ov,
        &size.to_string(),
    ]);
    let mut model = qemu_raw(&ov, &[], d);
    random_writes(&ov, &mut model, 300, 512, 2 << 20, &mut rng);
    assert_unchanged(&before);

    // Over a 3-level chain: raw <- qcow (qemu) <- qcow (ours) <- the overlay.
    let l1 = d.join("l1.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"base.raw",
        &"-F",
        &"raw",
        &l1,
        &"5M",
    ]);
    qemu_io_qcow(&l1, &["write -P 0x44 3M 200000".into()]);
    let l2 = d.join("l2.qcow");
    qcow_ok(&[
        &"create",
        &"-b",
        &"l1.qcow",
        &"-F",
        &"qcow",
        &l2,
        &size.to_string(),
    ]);
    qcow_write_ok(&l2, 5000000, &rng.bytes(300000));
    let before = snapshot(&[&raw, &l1, &l2]);
    let top = d.join("top.qcow");
    qcow_ok(&[&"create", &"-b", &"l2.qcow", &"-F", &"qcow", &top]);
    let mut model = qemu_raw(&top, &[], d);
    random_writes(&top, &mut model, 300, 512, 2 << 20, &mut rng);
    assert_unchanged(&before);
    let chain = qemu_img_ok(&[&"info", &"--backing-chain", &top]);
    assert_eq!(chain.matches("image: ").count(), 4, "{chain}");
}

#[test]
fn create_matches_qemu_byte_for_byte() {
    let dir = tmp();
    let d = dir.path();
    let raw = d.join("base.raw");
    write(&raw, &vec![1u8; 3 << 20]);
    let cases: Vec<Vec<&str>> = vec![
        vec!["1M"],
        vec!["1000001"],
        vec!["1"],
        vec!["64M"],
        vec!["1T"],
        vec!["-b", "base.raw", "-F", "raw"],
        vec!["-b", "base.raw", "-F", "raw", "5M"],
        vec!["-b", "base.raw", "-F", "raw", "1000"],
    ];
    let abs = raw.display().to_string();
    let long = format!("{}/{}/../base.raw", d.display(), "x".repeat(200));
    std::fs::create_dir(d.join("x".repeat(200))).expect("mkdir");
    let mut cases = cases;
    cases.push(vec!["-b", &abs, "-F", "raw"]);
    cases.push(vec!["-b", &long, "-F", "raw", "2M"]);
    for (i, case) in cases.iter().enumerate() {
        let q = d.join(format!("q{i}.qcow"));
        let o = d.join(format!("o{i}.qcow"));
        let mut qa: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"create", &"-f", &"qcow"];
        let mut oa: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"create"];
        let (opts, size) = match case.last() {
            Some(s) if !s.starts_with('-') && case.len() % 2 == 1 => {
                (&case[..case.len() - 1], Some(s))
            }
            _ => (&case[..], None),
        };
        for a in opts {
            qa.push(a);
            oa.push(a);
        }
        qa.push(&q);
        oa.push(&o);
        if let Some(s) = size {
            qa.push(s);
            oa.push(s);
        }
        qemu_img_ok(&qa);
        qcow_ok(&oa);
        let (qb, ob) = (read(&q), read(&o));
        assert_eq!(qb.len(), ob.len(), "{case:?}: file length");
        let name_len = u32::from_be_bytes(qb[16..20].try_into().expect("4")) as usize;
        assert_bytes_eq(
            &ob[..48 + name_len],
            &qb[..48 + name_len],
            &format!("{case:?}"),
        );
        assert_bytes_eq(&ob, &qb, &format!("{case:?}: whole file"));
        let chain = qemu_img_ok(&[&"info", &"--backing-chain", &o]);
        assert!(chain.contains("file format: qcow"), "{chain}");
        if opts.contains(&"-b") {
            assert!(chain.contains("file format: raw"), "{chain}");
        }
    }
}

/// A backing file that does not open is refused, as by qemu-img, unless `-u`.
#[test]
fn create_with_a_missing_backing_file() {
    let dir = tmp();
    let d = dir.path();
    let (q, o) = (d.join("q.qcow"), d.join("o.qcow"));
    let base = ["-b", "gone.raw", "-F", "raw"];
    let qa: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"create", &"-f", &"qcow", &base[0], &base[1], &base[2], &base[3], &q, &"1M",
    ];
    assert_ne!(
        qemu_img(&qa).code,
        0,
        "qemu-img accepts a missing backing file"
    );
    let line = qcow_err(
        &[&"create", &base[0], &base[1], &base[2], &base[3], &o, &"1M"],
        1,
    );
    assert!(line.contains("gone.raw"), "{line}");
    assert!(!o.exists(), "an image was left behind");
    // -u: created anyway, byte for byte as qemu-img -u.
    qemu_img_ok(&[
        &"create", &"-f", &"qcow", &"-u", &base[0], &base[1], &base[2], &base[3], &q, &"1M",
    ]);
    qcow_ok(&[
        &"create", &"-u", &base[0], &base[1], &base[2], &base[3], &o, &"1M",
    ]);
    assert_bytes_eq(&read(&o), &read(&q), "create -u");
    // Without a size there is nothing to take it from.
    qcow_err(
        &[&"create", &"-u", &base[0], &base[1], &d.join("n.qcow")],
        1,
    );
}

#[test]
fn commit_into_qcow_and_raw() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(27);
    let data = mixed(&mut rng, 3 << 20);
    let src = d.join("src.raw");
    write(&src, &data);
    let bq = d.join("base.qcow");
    qemu_convert_compressed(&src, &bq);
    let br = d.join("base.raw");
    write(&br, &data);
    for (base, fmt) in [(&bq, "qcow"), (&br, "raw")] {
        let name = base
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let ov = d.join(format!("ov-{fmt}.qcow"));
        qcow_ok(&[&"create", &"-b", &name, &"-F", &fmt, &ov]);
        qcow_write_ok(&ov, 1000, &rng.bytes(50000));
        qcow_write_ok(&ov, 1048576, &vec![0u8; 70000]);
        qemu_io_qcow(
            &ov,
            &[
                "write -P 0x99 2M 4096".into(),
                "write -z 3145000 728".into(),
            ],
        );
        qcow_write_ok(&ov, 3145727, &[0x42]);
        let old = d.join(format!("old-{fmt}.raw"));
        write(&old, &qemu_raw(&ov, &[], d));
        let out = qcow_ok(&[&"commit", &ov]);
        assert!(String::from_utf8_lossy(&out).contains("committed"));
        assert_qemu_identical(
            &base,
            &old,
            &[&"-F", &"raw"],
            &format!("{fmt} base after commit"),
        );
        assert_qemu_identical(
            &ov,
            &old,
            &[&"-F", &"raw"],
            &format!("{fmt} overlay after commit"),
        );
        let m = parse_map(&qemu_img_ok(&[&"map", &"--output=json", &ov]));
        assert!(
            m.iter().all(|e| e.depth >= 1),
            "{fmt}: the overlay still holds data after commit: {m:?}"
        );
    }
}

/// The library's `Write + Seek` view (`DiskIo`): random writes at any offset, and
/// QEMU reads what was written.
#[test]
fn diskio_writes_read_by_qemu() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(28);
    let img = d.join("lib.qcow");
    let size = 3u64 << 20;
    lib_create(&img, size, Some(11), Some(7), None);
    let mut model = vec![0u8; size as usize];
    {
        let mut io = qcow_std::Disk::options()
            .writable(true)
            .open(&img)
            .expect("open");
        for _ in 0..200 {
            let len = 1 + rng.below(20000);
            let at = rng.below(size - len);
            let data = rng.bytes(len as usize);
            io.seek(SeekFrom::Start(at)).expect("seek");
            io.write_all(&data).expect("write");
            model[at as usize..(at + len) as usize].copy_from_slice(&data);
        }
        io.seek(SeekFrom::End(-1)).expect("seek");
        io.write_all(&[0x77]).expect("last byte");
        *model.last_mut().expect("byte") = 0x77;
        assert!(io.write(&[1]).is_err(), "a write past the end succeeded");
        io.flush().expect("flush");
    }
    let m = d.join("model.raw");
    write(&m, &model);
    assert_identical(&m, &img, "DiskIo writes");
}

/// `qcow write` (plain and -c) at every cluster size, with the smallest and largest
/// L2 tables, checked against a model by QEMU.
#[test]
fn random_writes_at_every_geometry() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(29);
    for (cb, l2) in [
        (9u8, 6u8),
        (9, 13),
        (10, 7),
        (11, 12),
        (12, 6),
        (13, 8),
        (14, 13),
        (15, 9),
        (16, 6),
        (16, 13),
    ] {
        let cs = 1u64 << cb;
        let span = 1u64 << (cb + l2);
        let size = (3 * span).min(5 << 20) + 3 * cs + 512;
        let img = d.join(format!("g{cb}-{l2}.qcow"));
        lib_create(&img, size, Some(cb), Some(l2), None);
        let mut model = vec![0u8; size as usize];
        // Compressed clusters first (on fresh clusters), then writes over them.
        let text = rng.text(2 * cs as usize);
        let o = qcow_stdin(&[&"write", &"-c", &img, &cs.to_string()], &text);
        assert_eq!(o.code, 0, "{}", o.stderr);
        model[cs as usize..3 * cs as usize].copy_from_slice(&text);
        assert!(
            is_compressed_somewhere(&img),
            "cluster_bits {cb} l2_bits {l2}: write -c stored nothing compressed"
        );
        random_writes(&img, &mut model, 40, cs, span, &mut rng);
    }
}
