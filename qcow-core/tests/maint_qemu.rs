//! Check, repair, resize and rebase against real QEMU: images made by `qemu-img
//! create`, `convert` and `convert -c`, and written by `qemu-io` (plain, compressed,
//! overlays, encrypted), check clean; after our repairs, resizes and rebases,
//! `qemu-img compare` still sees the same guest content and QEMU keeps writing to
//! them. Skipped (with a message) when qemu-img or qemu-io is missing.
// Test code: a failed unwrap or index is a failed test; the values are small and known.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::Command;

use qcow_core::check::{check, Corruption, Report};
use qcow_core::image::read_header;
use qcow_core::io::MemIo;
use qcow_core::maint::{rebase, repair, resize, set_backing_file, RepairMode};
use qcow_core::{BlockIo, Image, NoBacking};

const SECRET: &str = "sesame";

/// Fails the test (never skips it) when the reference tools are missing.
fn require_qemu() {
    for c in ["qemu-img", "qemu-io"] {
        let ok = Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{c} not found: install qemu-utils (these tests compare with QEMU)"
        );
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("qcow-maint-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, f: &str) -> String {
        self.0.join(f).to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// qemu-io commands on an image (`-f qcow`; encrypted ones through --image-opts).
fn qio(img: &str, encrypted: bool, cmds: &[&str]) -> String {
    let opts = format!("driver=qcow,encrypt.key-secret=s0,file.filename={img}");
    let secret = format!("secret,id=s0,data={SECRET}");
    let mut args: Vec<&str> = if encrypted {
        vec!["--object", &secret, "--image-opts"]
    } else {
        vec!["-f", "qcow"]
    };
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(if encrypted { &opts } else { img });
    let out = run("qemu-io", &args);
    assert!(!out.contains("Pattern verification failed"), "{img}: {out}");
    out
}

/// Exports the guest content as seen by QEMU.
fn export(img: &str, encrypted: bool, raw: &str) {
    if encrypted {
        let secret = format!("secret,id=s0,data={SECRET}");
        let opts = format!("driver=qcow,encrypt.key-secret=s0,file.filename={img}");
        run(
            "qemu-img",
            &[
                "convert",
                "--object",
                &secret,
                "--image-opts",
                &opts,
                "-O",
                "raw",
                raw,
            ],
        );
    } else {
        run(
            "qemu-img",
            &["convert", "-f", "qcow", "-O", "raw", img, raw],
        );
    }
}

/// QEMU's verdict: the image reads exactly like the raw file (a larger image's extra
/// area must read as zeros).
fn same(img: &str, encrypted: bool, raw: &str) {
    let secret = format!("secret,id=s0,data={SECRET}");
    let opts = format!("driver=qcow,encrypt.key-secret=s0,file.filename={img}");
    let ropts = format!("driver=raw,file.filename={raw}");
    let args: Vec<&str> = if encrypted {
        vec![
            "compare",
            "--object",
            &secret,
            "--image-opts",
            &opts,
            &ropts,
        ]
    } else {
        vec!["compare", "-f", "qcow", "-F", "raw", img, raw]
    };
    let out = run("qemu-img", &args);
    assert!(out.contains("identical"), "{img}: {out}");
}

/// "virtual size: 40 GiB (42949672960 bytes)", the image's own (first) line.
fn virtual_size(img: &str) -> u64 {
    let out = run("qemu-img", &["info", "-f", "qcow", img]);
    let line = out
        .lines()
        .find(|l| l.starts_with("virtual size:"))
        .unwrap();
    let n = line.rsplit('(').next().unwrap();
    n.split(' ').next().unwrap().parse().unwrap()
}

fn load(p: &str) -> MemIo {
    MemIo(std::fs::read(p).unwrap())
}

fn store(p: &str, io: &MemIo) {
    std::fs::write(p, &io.0).unwrap();
}

fn checked(p: &str) -> Report {
    check(&mut load(p)).unwrap()
}

fn assert_clean(p: &str) {
    let r = checked(p);
    assert!(r.is_clean(), "{p}: {r:?}");
    assert_eq!(r.image_end_offset, r.file_len, "{p}");
}

/// A raw file with text, zeros, random data and a partial last cluster.
fn raw_source(p: &str, len: usize) {
    let mut x = 0x9e37_79b9u32;
    let data: Vec<u8> = (0..len)
        .map(|i| match (i / 40_000) % 4 {
            0 => b"qcow maintenance "[i % 17],
            1 => 0,
            _ => {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect();
    std::fs::write(p, data).unwrap();
}

/// Images QEMU makes, and whether each is encrypted.
fn qemu_images(d: &Dir) -> Vec<(String, bool)> {
    let mut v = Vec::new();
    let empty = d.path("empty.qcow");
    run("qemu-img", &["create", "-f", "qcow", &empty, "10M"]);
    v.push((empty, false));

    let plain = d.path("plain.qcow");
    run("qemu-img", &["create", "-f", "qcow", &plain, "64M"]);
    qio(
        &plain,
        false,
        &[
            "write -P 0x11 0 8k",
            "write -P 0x22 1000 3000",
            "write -P 0x23 3M 1M",
            "write -P 0x24 2095104 8192",
            "write -P 0x33 67108352 512",
        ],
    );
    v.push((plain.clone(), false));

    let comp = d.path("compressed.qcow");
    run("qemu-img", &["create", "-f", "qcow", &comp, "16M"]);
    qio(
        &comp,
        false,
        &[
            "write -c -P 0x44 64k 4k",
            "write -P 0x45 100k 10k",
            "write -c -P 0x46 2M 4k",
            "write -c -P 0 3M 4k",
        ],
    );
    v.push((comp, false));

    let overlay = d.path("overlay.qcow");
    run(
        "qemu-img",
        &["create", "-f", "qcow", "-b", &plain, "-F", "qcow", &overlay],
    );
    qio(
        &overlay,
        false,
        &[
            "write -P 0x55 4k 1k",
            "write -P 0x56 5000 700",
            "write -P 0x57 40M 64k",
        ],
    );
    v.push((overlay, false));

    let raw = d.path("source.raw");
    raw_source(&raw, 3 * 1024 * 1024 + 1536);
    let conv = d.path("convert.qcow");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow", &raw, &conv],
    );
    v.push((conv, false));
    // QEMU 10 writes the whole image but exits 1: its closing zero-length compressed
    // write is refused by the qcow driver. The content is checked instead.
    let convc = d.path("convert-c.qcow");
    Command::new("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow", &raw, &convc])
        .output()
        .unwrap();
    same(&convc, false, &raw);
    v.push((convc, false));

    let secret = format!("secret,id=s0,data={SECRET}");
    let enc = d.path("encrypted.qcow");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow",
            "--object",
            &secret,
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s0",
            &enc,
            "8M",
        ],
    );
    qio(
        &enc,
        true,
        &[
            "write -P 0x77 1000 3000",
            "write -P 0x78 300k 100",
            "write -P 0x79 7M 8k",
        ],
    );
    v.push((enc, true));
    let encc = d.path("encrypted-convert.qcow");
    run(
        "qemu-img",
        &[
            "convert",
            "--object",
            &secret,
            "-f",
            "raw",
            "-O",
            "qcow",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s0",
            &raw,
            &encc,
        ],
    );
    v.push((encc, true));
    v
}

#[test]
fn qemu_images_check_clean() {
    require_qemu();
    let d = Dir::new("clean");
    for (img, encrypted) in qemu_images(&d) {
        assert_clean(&img);
        // Nothing to repair: repairing changes nothing.
        let before = std::fs::read(&img).unwrap();
        let mut io = MemIo(before.clone());
        let r = repair(&mut io, RepairMode::All).unwrap();
        assert!(r.actions.is_empty(), "{img}: {:?}", r.actions);
        assert_eq!(io.0, before, "{img}");
        // Our reader agrees with QEMU's.
        let raw = format!("{img}.raw");
        export(&img, encrypted, &raw);
        if !encrypted && !img.contains("overlay") {
            let mut image = Image::open(load(&img), NoBacking::new(), vec![0u8; 1 << 17]).unwrap();
            let mut got = vec![0u8; image.size() as usize];
            image.read_at(0, &mut got).unwrap();
            assert!(got == std::fs::read(&raw).unwrap(), "{img}");
        }
    }
}

#[test]
fn qemu_leaks_are_repaired() {
    require_qemu();
    let d = Dir::new("leaks");
    let img = d.path("leaky.qcow");
    run("qemu-img", &["create", "-f", "qcow", &img, "16M"]);
    // Partial writes over compressed clusters: QEMU inflates them into new plain
    // clusters and leaks the streams (and the first one's whole cluster).
    let mut cmds = Vec::new();
    for i in 0..12 {
        cmds.push(format!("write -c -P {} {}k 4k", 0x30 + i, i * 4));
    }
    cmds.push("write -P 0x99 100 10".into());
    cmds.push("write -P 0x98 20k 100".into());
    cmds.push("write -P 0x97 8M 64k".into());
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qio(&img, false, &cmds);
    let raw = d.path("leaky.raw");
    export(&img, false, &raw);
    let r = checked(&img);
    assert!(r.corruptions.is_empty(), "{r:?}");
    // The two dead streams among live ones.
    assert_eq!(r.leaks.len(), 2, "{r:?}");
    assert_eq!(r.leaked_clusters, 0, "{r:?}");

    let mut io = load(&img);
    let r = repair(&mut io, RepairMode::Leaks).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    store(&img, &io);
    same(&img, false, &raw);
    // QEMU keeps allocating after our compaction.
    qio(
        &img,
        false,
        &[
            "write -P 0x5a 12M 12k",
            "read -P 0x5a 12M 12k",
            "read -P 0x97 8M 64k",
        ],
    );
    assert_clean(&img);
}

#[test]
fn qemu_reads_what_repair_all_fixed() {
    require_qemu();
    let d = Dir::new("repair-all");
    let img = d.path("img.qcow");
    run("qemu-img", &["create", "-f", "qcow", &img, "8M"]);
    qio(&img, false, &["write -P 0x11 0 16k", "write -P 0x22 3M 8k"]);
    // Guest cluster 9 shares guest cluster 1's data; L1[3] shares L1[0]'s table.
    let mut io = load(&img);
    let h = read_header(&mut io).unwrap();
    let mut b = [0u8; 8];
    io.read_at(h.l1_table_offset, &mut b).unwrap();
    let t0 = u64::from_be_bytes(b);
    let mut e = [0u8; 8];
    io.read_at(t0 + 8, &mut e).unwrap();
    io.write_at(t0 + 8 * 9, &e).unwrap();
    io.write_at(h.l1_table_offset + 8 * 3, &t0.to_be_bytes())
        .unwrap();
    store(&img, &io);
    let raw = d.path("img.raw");
    export(&img, false, &raw);
    let r = repair(&mut io, RepairMode::All).unwrap();
    assert!(r.after.is_clean(), "{:?}", r.after);
    assert_eq!(r.before.corruptions.len(), 2, "{:?}", r.before);
    assert!(r
        .before
        .corruptions
        .iter()
        .all(|c| matches!(c, Corruption::Overlap { .. })));
    store(&img, &io);
    same(&img, false, &raw);
    // The copies are independent now.
    qio(
        &img,
        false,
        &[
            "write -P 0x33 36k 4k",
            "read -P 0x11 4k 4k",
            "read -P 0x11 6M 16k",
        ],
    );
    assert_clean(&img);
}

#[test]
fn qemu_reads_resized_images() {
    require_qemu();
    let d = Dir::new("resize");
    for (img, encrypted) in qemu_images(&d) {
        let raw = format!("{img}.raw");
        export(&img, encrypted, &raw);
        let old = virtual_size(&img);
        let mut io = load(&img);
        // 3 GiB: a 12 KiB L1 table (1536 entries), moved unless it ends the file.
        let r = resize(&mut io, 3 << 30, false).unwrap();
        assert_eq!(r.new_size, 3 << 30);
        assert!(r.l1_moved || img.contains("empty"), "{img}: {r:?}");
        store(&img, &io);
        assert_clean(&img);
        assert_eq!(virtual_size(&img), 3 << 30, "{img}");
        same(&img, encrypted, &raw);
        // QEMU writes past the old end and reads it back; the image stays clean.
        qio(
            &img,
            encrypted,
            &[
                "write -P 0x6a 2560M 8k",
                "read -P 0x6a 2560M 8k",
                "read -P 0 2G 4k",
            ],
        );
        assert_clean(&img);
        // Shrink back: the write past the end goes; the rest reads as before.
        let mut io = load(&img);
        resize(&mut io, old, true).unwrap();
        store(&img, &io);
        assert_clean(&img);
        assert_eq!(virtual_size(&img), old);
        same(&img, encrypted, &raw);
        assert!(std::fs::metadata(&img).unwrap().len() < 1 << 20 || !img.contains("empty"));
    }
}

#[test]
fn qemu_follows_rebased_images() {
    require_qemu();
    let d = Dir::new("rebase");
    let base1 = d.path("base1.qcow");
    let base2 = d.path("base2.qcow");
    for (b, p) in [(&base1, "0x21"), (&base2, "0x31")] {
        run("qemu-img", &["create", "-f", "qcow", b, "4M"]);
        qio(
            b,
            false,
            &[&format!("write -P {p} 0 1M"), "write -P 0x41 2M 64k"],
        );
    }
    let overlay = d.path("overlay.qcow");
    run(
        "qemu-img",
        &["create", "-f", "qcow", "-b", &base1, "-F", "qcow", &overlay],
    );
    qio(
        &overlay,
        false,
        &["write -P 0x55 512k 4k", "write -P 0x56 3M 1000"],
    );
    let raw = d.path("overlay.raw");
    export(&overlay, false, &raw);

    // rebase -u onto an identical copy: only the name changes.
    let copy = d.path("base1-copy-with-a-much-longer-name-than-before.qcow");
    std::fs::copy(&base1, &copy).unwrap();
    let mut io = load(&overlay);
    set_backing_file(&mut io, copy.as_bytes()).unwrap();
    store(&overlay, &io);
    assert_clean(&overlay);
    let info = run("qemu-img", &["info", "-f", "qcow", &overlay]);
    assert!(info.contains(&copy), "{info}");
    same(&overlay, false, &raw);

    // Safe rebase onto base2: the differing clusters are copied first.
    let open = |p: &str| Image::open(load(p), NoBacking::new(), vec![0u8; 1 << 17]).unwrap();
    let mut img = Image::open(load(&overlay), open(&copy), vec![0u8; 1 << 17]).unwrap();
    let mut new = open(&base2);
    let r = rebase(&mut img, &mut new, base2.as_bytes()).unwrap();
    assert!(r.copied_clusters >= 2048 - 8, "{}", r.copied_clusters);
    let (io, _) = img.into_parts();
    store(&overlay, &io);
    assert_clean(&overlay);
    assert!(run("qemu-img", &["info", "-f", "qcow", &overlay]).contains(&base2));
    same(&overlay, false, &raw);

    // Onto nothing (-b ""): standalone.
    let mut img = Image::open(load(&overlay), open(&base2), vec![0u8; 1 << 17]).unwrap();
    rebase(&mut img, &mut NoBacking::new(), b"").unwrap();
    let (io, _) = img.into_parts();
    store(&overlay, &io);
    assert_clean(&overlay);
    assert!(!run("qemu-img", &["info", "-f", "qcow", &overlay]).contains("backing file"));
    std::fs::remove_file(&base1).unwrap();
    std::fs::remove_file(&base2).unwrap();
    same(&overlay, false, &raw);
    qio(
        &overlay,
        false,
        &["write -P 0x66 1M 4k", "read -P 0x55 512k 4k"],
    );
    assert_clean(&overlay);
}
