//! Issue 3, backing chains: 2 and 3 levels over raw and qcow backing files, relative
//! names with `../` and absolute names, overlays larger and smaller than their backing
//! files, zeros in an overlay hiding backing data — all read as QEMU reads them, with
//! `qcow` running in a directory that is not the images'. Loops and missing backing
//! files are refused with one `qcow: ` line naming the file.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// dirs a/, b/, c/ for images and work/ to run in.
fn layout() -> (tempfile::TempDir, PathBuf) {
    let dir = tmp();
    for sub in ["a", "b", "c", "work"] {
        std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
    }
    let work = dir.path().join("work");
    (dir, work)
}

fn create_overlay(img: &Path, backing: &str, fmt: &str, size: &str) {
    qemu_img_ok(&[
        &"create", &"-f", &"qcow", &"-b", &backing, &"-F", &fmt, &img, &size,
    ]);
}

#[test]
fn raw_backing_overlay_larger() {
    let (dir, work) = layout();
    let d = dir.path();
    let mut rng = Rng::new(11);
    let base = d.join("a/base.raw");
    write(&base, &mixed(&mut rng, 3 << 20));
    let ov = d.join("a/ov.qcow");
    create_overlay(&ov, "base.raw", "raw", "5M");
    qemu_io_qcow(
        &ov,
        &[
            "write -P 0x41 4096 10000".into(),
            "write -z 1048576 65536".into(),
            "write -z 2000001 999".into(),
            "write -P 0x42 3145000 2000".into(),
            "write -P 0x43 5242879 1".into(),
        ],
    );
    let want = qemu_raw(&ov, &[], d);
    assert_eq!(want.len(), 5 << 20);
    assert!(want[1048576..1048576 + 65536].iter().all(|&b| b == 0));
    assert!(read(&base)[1048576..1048576 + 65536]
        .iter()
        .any(|&b| b != 0));
    check_reads(
        Path::new("../a/ov.qcow"),
        Some(&work),
        &want,
        None,
        &mut rng,
        "raw backing",
    );
}

#[test]
fn qcow_backing_dotdot_overlay_smaller() {
    let (dir, work) = layout();
    let d = dir.path();
    let mut rng = Rng::new(12);
    let src = d.join("src.raw");
    write(&src, &mixed(&mut rng, 4 << 20));
    let base = d.join("a/base.qcow");
    qemu_convert_compressed(&src, &base);
    qemu_io_qcow(&base, &["write -P 0x51 100000 5000".into()]);
    let ov = d.join("b/ov.qcow");
    create_overlay(&ov, "../a/base.qcow", "qcow", "2621440");
    qemu_io_qcow(
        &ov,
        &[
            "write -P 0x52 0 512".into(),
            "write -z 65536 131072".into(),
            "write -P 0x53 2621439 1".into(),
        ],
    );
    let want = qemu_raw(&ov, &[], d);
    assert_eq!(want.len(), 2621440);
    check_reads(
        Path::new("../b/ov.qcow"),
        Some(&work),
        &want,
        None,
        &mut rng,
        "qcow backing by ../ name",
    );
    // The same from the images' own directory and by absolute path.
    check_reads(&ov, None, &want, None, &mut rng, "absolute path");
}

#[test]
fn three_levels() {
    let (dir, work) = layout();
    let d = dir.path();
    let mut rng = Rng::new(13);
    // raw (2M) <- qcow (3M, relative "../a/base.raw") <- qcow (4M, absolute name),
    // and a 3-level all-qcow chain where the middle is smaller than both neighbours.
    let base = d.join("a/base.raw");
    write(&base, &mixed(&mut rng, 2 << 20));
    let mid = d.join("b/mid.qcow");
    create_overlay(&mid, "../a/base.raw", "raw", "3M");
    qemu_io_qcow(
        &mid,
        &[
            "write -P 0x61 500000 100000".into(),
            "write -z 1500000 4096".into(),
            "write -P 0x62 2500000 1000".into(),
        ],
    );
    let top = d.join("c/top.qcow");
    create_overlay(&top, &mid.display().to_string(), "qcow", "4M");
    qemu_io_qcow(
        &top,
        &[
            "write -P 0x63 550000 512".into(),
            "write -z 0 4096".into(),
            "write -P 0x64 3500000 4096".into(),
        ],
    );
    let want = qemu_raw(&top, &[], d);
    check_reads(
        Path::new("../c/top.qcow"),
        Some(&work),
        &want,
        None,
        &mut rng,
        "raw <- qcow <- qcow",
    );

    let q0 = d.join("a/q0.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &q0, &"4M"]);
    qemu_io_qcow(&q0, &["write -P 0x71 0 4M".into()]);
    let q1 = d.join("b/q1.qcow");
    create_overlay(&q1, "../a/q0.qcow", "qcow", "1M");
    qemu_io_qcow(&q1, &["write -P 0x72 4096 4096".into()]);
    let q2 = d.join("c/q2.qcow");
    create_overlay(&q2, "../b/q1.qcow", "qcow", "3M");
    qemu_io_qcow(&q2, &["write -P 0x73 8192 512".into()]);
    let want = qemu_raw(&q2, &[], d);
    // Past the middle's end the bottom's data is hidden: zeros.
    assert!(want[1 << 20..].iter().all(|&b| b == 0));
    assert!(want[..4096].iter().all(|&b| b == 0x71));
    check_reads(
        Path::new("../c/q2.qcow"),
        Some(&work),
        &want,
        None,
        &mut rng,
        "qcow <- smaller qcow <- qcow",
    );
}

#[test]
fn loops_and_missing_backing_files() {
    let (dir, work) = layout();
    let d = dir.path();
    let a = d.join("a/self.qcow");
    lib_create(&a, 1 << 20, None, None, Some("self.qcow"));
    let line = run_err(&work, &a, "backing onto itself");
    assert!(line.contains("self.qcow"), "{line}");

    let x = d.join("a/x.qcow");
    let y = d.join("b/y.qcow");
    lib_create(&x, 1 << 20, None, None, Some("../b/y.qcow"));
    lib_create(&y, 1 << 20, None, None, Some(&x.display().to_string()));
    let line = run_err(&work, &x, "A -> B -> A");
    assert!(line.contains("x.qcow") || line.contains("y.qcow"), "{line}");

    let m = d.join("c/m.qcow");
    lib_create(&m, 1 << 20, None, None, Some("../a/gone.raw"));
    let line = run_err(&work, &m, "missing backing file");
    assert!(
        line.contains("gone.raw"),
        "does not name the missing file: {line}"
    );
    // One level down.
    let top = d.join("c/top.qcow");
    lib_create(&top, 1 << 20, None, None, Some("m.qcow"));
    let line = run_err(&work, &top, "missing backing file two levels down");
    assert!(
        line.contains("gone.raw"),
        "does not name the missing file: {line}"
    );
    // QEMU refuses them all too.
    for img in [&a, &x, &m, &top] {
        assert_ne!(qemu_img(&[&"info", &"--backing-chain", img]).code, 0);
    }
}

/// `read`, `convert`, `map` and `compare` of `img` fail with exit 1 (2 for compare)
/// and one `qcow: ` line; returns read's line.
fn run_err(cwd: &Path, img: &Path, what: &str) -> String {
    let line = assert_fails(&qcow_in(cwd, &[&"read", &img, &"0", &"512"]), 1, what);
    let out = cwd.join("out.raw");
    assert_fails(
        &qcow_in(cwd, &[&"convert", &"-O", &"raw", &img, &out]),
        1,
        what,
    );
    assert_fails(&qcow_in(cwd, &[&"map", &"--output=json", &img]), 1, what);
    assert_fails(&qcow_in(cwd, &[&"compare", &img, &img]), 2, what);
    line
}

/// Random chains of 1 to 4 layers — raw or qcow at the bottom, qcow overlays of
/// random geometry and size (larger and smaller than what they cover) — written by
/// qemu-io at every level: our reads and map equal QEMU's.
#[test]
fn random_chains_read_and_map_as_qemu() {
    let (dir, work) = layout();
    let d = dir.path();
    let mut rng = Rng::new(14);
    for round in 0..12 {
        let layers = 1 + rng.below(4) as usize;
        let mut names: Vec<String> = Vec::new();
        for level in 0..layers {
            let sub = ["a", "b", "c"][rng.below(3) as usize];
            let name = format!("{sub}/r{round}-{level}");
            let size = (1 + rng.below(4)) << 20 | (rng.below(8) * 512);
            let path = d.join(&name);
            let cb = 9 + rng.below(8) as u8;
            let l2 = 6 + rng.below(8) as u8;
            let cs = 1u64 << cb;
            let backing = names.last().map(|b: &String| {
                // ../x/name, or absolute.
                if rng.below(2) == 0 {
                    format!("../{b}")
                } else {
                    d.join(b).display().to_string()
                }
            });
            let is_raw = level == 0 && rng.below(3) == 0;
            if is_raw {
                // Any length: QEMU rounds it up to whole sectors.
                let mut data = vec![0u8; (size - rng.below(512)) as usize];
                for _ in 0..4 {
                    let at = rng.below(size - 70512) as usize;
                    data[at..at + 70000].copy_from_slice(&rng.bytes(70000));
                }
                write(&path, &data);
            } else {
                lib_create(&path, size, Some(cb), Some(l2), backing.as_deref());
                let mut cmds = Vec::new();
                for _ in 0..6 {
                    let len = 1 + rng.below(100000);
                    let at = rng.below(size - len);
                    cmds.push(match rng.below(4) {
                        0 => format!("write -z {at} {len}"),
                        1 => format!("write -c -P {} {} {cs}", rng.below(256), at / cs * cs),
                        _ => format!("write -P {} {at} {len}", rng.below(256)),
                    });
                }
                // A compressed write needs a whole cluster inside the image.
                cmds.retain(|c| {
                    !c.starts_with("write -c")
                        || c.split(' ')
                            .nth(4)
                            .and_then(|a| a.parse::<u64>().ok())
                            .is_some_and(|a| a + cs <= size)
                });
                qemu_io_qcow(&path, &cmds);
            }
            names.push(name);
        }
        let top = d.join(names.last().expect("a layer"));
        let want = qemu_raw(&top, &[], d);
        let rel = Path::new("..").join(names.last().expect("a layer"));
        let what = format!("round {round}: {names:?}");
        check_reads(&rel, Some(&work), &want, None, &mut rng, &what);
        let ours = parse_map(&String::from_utf8_lossy(&qcow_ok(&[
            &"map",
            &"--output=json",
            &top,
        ])));
        let theirs = parse_map(&qemu_img_ok(&[&"map", &"--output=json", &top]));
        assert_eq!(ours, theirs, "{what}: map");
    }
}
