//! Issue 6, maintenance, end to end through the `qcow` binary and checked with QEMU:
//! `check` passes every image qemu-img/qemu-io and `qcow` make (plain, compressed,
//! overlays, encrypted) in both output forms; hand-corrupted qemu-img images (leaks,
//! an unlinked L2 table, shared clusters, an L2 table on the L1 table, a cluster past
//! the end of the file, a misaligned cluster, a compressed cluster that does not
//! inflate; encrypted too) get the right exit status and message, and `check -r`
//! leaves images that check clean and that QEMU reads as before in every healthy
//! cluster; `resize` grows (in place, moving the L1 table, to 2 TiB) and shrinks as
//! QEMU sees it, also compressed, encrypted and overlay images; `rebase` (safe, `-u`,
//! removing the backing file, relative and absolute names, shorter and longer backing
//! files, encrypted overlays) keeps what QEMU reads, and refuses loops; errors are one
//! `qcow: ` line and leave the file as it was.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::*;

/// The qcow v1 header fields the tests need (big-endian, 48 bytes).
#[derive(Debug, Clone, Copy)]
struct Hdr {
    size: u64,
    cluster_bits: u32,
    l2_bits: u32,
    l1_offset: u64,
}

impl Hdr {
    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }
    fn l2_entries(&self) -> u64 {
        1 << self.l2_bits
    }
    fn l2_span(&self) -> u64 {
        self.cs() * self.l2_entries()
    }
    fn l1_size(&self) -> u64 {
        self.size.div_ceil(self.l2_span())
    }
}

fn hdr(p: &Path) -> Hdr {
    let b = read_at(p, 0, 48);
    assert_eq!(
        &b[..8],
        b"QFI\xfb\0\0\0\x01",
        "{}: not qcow v1",
        p.display()
    );
    let be64 = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    Hdr {
        size: be64(24),
        cluster_bits: u32::from(b[32]),
        l2_bits: u32::from(b[33]),
        l1_offset: be64(40),
    }
}

/// One nonzero L2 entry: the guest cluster it maps, where it is stored, its value.
#[derive(Debug, Clone, Copy)]
struct Entry {
    guest: u64,
    at: u64,
    value: u64,
}

impl Entry {
    fn compressed(&self) -> bool {
        self.value >> 63 == 1
    }
    /// Host offset (of the cluster or of the compressed stream).
    fn host(&self, h: &Hdr) -> u64 {
        if self.compressed() {
            self.value & ((1 << (63 - h.cluster_bits)) - 1)
        } else {
            self.value
        }
    }
    /// Length of the compressed stream.
    fn clen(&self, h: &Hdr) -> u64 {
        (self.value >> (63 - h.cluster_bits)) & (h.cs() - 1)
    }
}

/// Every nonzero L2 entry of an image, in guest order, read straight from the file.
fn entries(p: &Path) -> (Hdr, Vec<Entry>) {
    let h = hdr(p);
    let data = read(p);
    let be = |at: u64| {
        let at = at as usize;
        u64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"))
    };
    let mut out = Vec::new();
    for i in 0..h.l1_size() {
        let t = be(h.l1_offset + 8 * i);
        if t == 0 {
            continue;
        }
        for j in 0..h.l2_entries() {
            let at = t + 8 * j;
            let value = be(at);
            if value != 0 {
                out.push(Entry {
                    guest: i * h.l2_span() + j * h.cs(),
                    at,
                    value,
                });
            }
        }
    }
    (h, out)
}

/// Runs `qcow check` (human) and `qcow check --output=json`: both must exit `code`
/// with nothing on stderr; the JSON has qemu-img's keys and agrees with the status.
/// Returns (human output, JSON).
#[track_caller]
fn check(p: &Path, code: i32, what: &str) -> (String, Json) {
    let o = qcow(&[&"check", &p]);
    assert_eq!(o.code, code, "{what}: qcow check: {}{}", o.text(), o.stderr);
    assert!(o.stderr.is_empty(), "{what}: check stderr {:?}", o.stderr);
    let text = o.text();
    let j = qcow(&[&"check", &"--output=json", &p]);
    assert_eq!(
        j.code, code,
        "{what}: qcow check --output=json: {}",
        j.stderr
    );
    let json = Json::parse(&j.text());
    for k in [
        "corruptions",
        "leaks",
        "check-errors",
        "image-end-offset",
        "problems",
    ] {
        assert!(json.get(k).is_some(), "{what}: no {k:?} in {}", j.text());
    }
    let num = |k: &str| json.get(k).expect(k).u64();
    assert_eq!(num("check-errors"), 0, "{what}");
    let problems = json.get("problems").expect("problems").arr();
    let of_type = |t: &str| {
        problems
            .iter()
            .filter(|p| p.get("type") == Some(&Json::Str(t.into())))
            .count() as u64
    };
    assert_eq!(
        of_type("corruption"),
        num("corruptions"),
        "{what}: {}",
        j.text()
    );
    let errors = text.lines().filter(|l| l.starts_with("ERROR ")).count() as u64;
    assert_eq!(
        errors,
        num("corruptions"),
        "{what}: human ERROR lines: {text}"
    );
    let leaked = num("leaked-bytes");
    assert_eq!(of_type("leak") > 0, leaked > 0, "{what}: {}", j.text());
    match code {
        0 => {
            assert_eq!(num("corruptions"), 0, "{what}");
            assert_eq!(num("leaks") + leaked, 0, "{what}");
            assert!(problems.is_empty(), "{what}: {}", j.text());
            assert_eq!(num("image-end-offset"), file_len(p), "{what}");
            assert!(
                text.contains("No errors were found on the image."),
                "{what}: {text}"
            );
        }
        2 => assert!(num("corruptions") > 0, "{what}"),
        3 => {
            assert_eq!(num("corruptions"), 0, "{what}");
            assert!(leaked > 0, "{what}");
            assert!(text.contains("leaked clusters ("), "{what}: {text}");
        }
        _ => unreachable!(),
    }
    (text, json)
}

/// `qcow check -r MODE`: exit 0, says what it repaired, then that the image is clean.
#[track_caller]
fn repair(p: &Path, mode: &str, what: &str) -> String {
    let o = qcow(&[&"check", &"-r", &mode, &p]);
    assert_eq!(
        o.code,
        0,
        "{what}: check -r {mode}: {}{}",
        o.text(),
        o.stderr
    );
    assert!(o.stderr.is_empty(), "{what}: {:?}", o.stderr);
    let t = o.text();
    assert!(
        t.contains("The following inconsistencies were found and repaired:"),
        "{what}: {t}"
    );
    assert!(
        t.contains("No errors were found on the image."),
        "{what}: {t}"
    );
    t
}

/// Asserts `got` equals `want` in every cluster whose guest offset is not in `skip`.
#[track_caller]
fn assert_healthy_same(got: &[u8], want: &[u8], cs: u64, skip: &[u64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: guest size");
    let mut compared = 0;
    for (i, (g, w)) in got
        .chunks(cs as usize)
        .zip(want.chunks(cs as usize))
        .enumerate()
    {
        let guest = i as u64 * cs;
        if skip.contains(&guest) {
            continue;
        }
        assert_bytes_eq(g, w, &format!("{what}: guest cluster at {guest}"));
        compared += 1;
    }
    assert!(compared > 0, "{what}: nothing compared");
}

fn cluster(raw: &[u8], guest: u64, cs: u64) -> &[u8] {
    &raw[guest as usize..(guest + cs) as usize]
}

/// A file's bytes after `f` ran must equal its bytes before.
#[track_caller]
fn unchanged<T>(p: &Path, what: &str, f: impl FnOnce() -> T) -> T {
    let before = read(p);
    let r = f();
    assert_bytes_eq(&read(p), &before, &format!("{what}: file changed"));
    r
}

/// A qemu-img image of 3 MiB of mixed data (two L2 tables, unallocated runs), made by
/// `qemu-img convert` (with `-c`: compressed); returns it and QEMU's view of it.
fn qemu_base(d: &Path, seed: u64, compressed: bool) -> (PathBuf, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let mut data = mixed(&mut rng, 3 << 20);
    data[..64 << 10].copy_from_slice(&rng.bytes(64 << 10));
    let src = d.join(format!("src-{seed}.raw"));
    write(&src, &data);
    let img = d.join(format!("img-{seed}.qcow"));
    if compressed {
        qemu_convert_compressed(&src, &img);
    } else {
        qemu_img_ok(&[&"convert", &"-O", &"qcow", &src, &img]);
    }
    let raw = qemu_raw(&img, &[], d);
    assert_bytes_eq(&raw, &data, "qemu-img convert");
    check(&img, 0, "fresh qemu-img image");
    (img, raw)
}

/// `qemu-img create -f qcow` encrypted with the secret in `pw` (and a backing file).
fn qemu_create_encrypted(img: &Path, pw: &Path, size: &str, backing: Option<&str>) {
    let obj = secret_object(pw);
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![
        &"create",
        &"-f",
        &"qcow",
        &"--object",
        &obj,
        &"-o",
        &"encrypt.format=aes,encrypt.key-secret=s0",
    ];
    if let Some(b) = &backing {
        args.extend_from_slice(&[&"-b", b, &"-F", &"qcow"]);
    }
    args.push(&img);
    if !size.is_empty() {
        args.push(&size);
    }
    qemu_img_ok(&args);
}

/// The virtual size `qemu-img info` reports.
fn qemu_size(img: &Path) -> u64 {
    Json::parse(&qemu_img_ok(&[&"info", &"--output=json", &img]))
        .get("virtual-size")
        .expect("virtual-size")
        .u64()
}

/// One layer of `qemu-img info --backing-chain --output=json`.
#[derive(Debug)]
struct Layer {
    filename: String,
    format: String,
    backing: Option<String>,
    full_backing: Option<String>,
}

/// The backing chain as QEMU opens it; `pre` goes before the image argument.
fn qemu_chain(img: &dyn AsRef<OsStr>, pre: &Args) -> Vec<Layer> {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"info", &"--backing-chain", &"--output=json"];
    args.extend_from_slice(pre);
    args.push(img);
    let j = Json::parse(&qemu_img_ok(&args));
    let s = |v: &Json, k: &str| match v.get(k) {
        Some(Json::Str(s)) => Some(s.clone()),
        None => None,
        x => panic!("{k}: {x:?}"),
    };
    j.arr()
        .iter()
        .map(|l| Layer {
            filename: s(l, "filename").expect("filename"),
            format: s(l, "format").expect("format"),
            backing: s(l, "backing-filename"),
            full_backing: s(l, "full-backing-filename"),
        })
        .collect()
}

/// Asserts QEMU opens `img` on exactly the chain `want` (file, format) below it, with
/// `name` as the top's stored backing name.
#[track_caller]
fn assert_chain(img: &Path, pre: &Args, name: Option<&str>, want: &[(&Path, &str)]) {
    let opts;
    let arg: &dyn AsRef<OsStr> = if pre.is_empty() {
        &img
    } else {
        opts = image_opts(img);
        &opts
    };
    let chain = qemu_chain(arg, pre);
    assert_eq!(
        chain.len(),
        want.len() + 1,
        "{}: chain {chain:?}",
        img.display()
    );
    assert_eq!(chain[0].format, "qcow", "{chain:?}");
    assert_eq!(chain[0].backing.as_deref(), name, "{chain:?}");
    for (i, (file, fmt)) in want.iter().enumerate() {
        let l = &chain[i + 1];
        assert_eq!(
            std::fs::canonicalize(&l.filename).expect("canonicalize"),
            std::fs::canonicalize(file).expect("canonicalize"),
            "{chain:?}"
        );
        assert_eq!(&l.format, fmt, "{chain:?}");
        let above = &chain[i];
        assert_eq!(
            above.full_backing.as_deref(),
            Some(l.filename.as_str()),
            "{chain:?}"
        );
    }
}

#[test]
fn check_passes_every_image_qemu_makes() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(601);
    let src = d.join("src.raw");
    write(&src, &mixed(&mut rng, 3 << 20));
    let rnd = d.join("rnd.bin");
    write(&rnd, &rng.bytes(1 << 20));
    let txt = d.join("txt.bin");
    write(&txt, &rng.text(4096));
    let pw = d.join("pw");
    write(&pw, b"qemu-made secret");

    let empty = d.join("empty.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &empty, &"16M"]);
    check(&empty, 0, "qemu-img create");
    let huge = d.join("huge.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &huge, &"100G"]);
    check(&huge, 0, "qemu-img create 100G");
    let odd = d.join("odd.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &odd, &"1000001"]);
    check(&odd, 0, "qemu-img create of an odd size");

    let written = d.join("written.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &written, &"16M"]);
    qemu_io_qcow(
        &written,
        &[
            "write -P 0x11 0 65536".into(),
            "write -P 0x22 3000001 7777".into(),
            format!("write -s {} 5242880 1048576", rnd.display()),
            format!("write -c -s {} 8388608 4096", txt.display()),
            format!("write -c -s {} 8392704 4096", txt.display()),
            "write -z 100000 5000".into(),
            "write -P 0x33 16776704 512".into(),
        ],
    );
    let (h, e) = entries(&written);
    assert!(
        e.iter().any(|x| x.compressed()),
        "qemu-io write -c compressed"
    );
    assert_eq!(h.cs(), 4096);
    check(&written, 0, "qemu-io writes");

    let conv = d.join("conv.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &src, &conv]);
    check(&conv, 0, "qemu-img convert");
    let comp = d.join("comp.qcow");
    qemu_convert_compressed(&src, &comp);
    check(&comp, 0, "qemu-img convert -c");

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
    ]);
    check(&ov, 0, "empty overlay");
    qemu_io_qcow(
        &ov,
        &[
            "write -P 0x44 1000 3000".into(),
            "write -z 1048576 65536".into(),
            "write -P 0x45 3144000 1728".into(),
        ],
    );
    check(&ov, 0, "overlay after qemu-io writes");
    let ov_raw = d.join("ov-raw.qcow");
    qemu_img_ok(&[
        &"create", &"-f", &"qcow", &"-b", &"src.raw", &"-F", &"raw", &ov_raw, &"4M",
    ]);
    qemu_io_qcow(&ov_raw, &["write -P 0x46 3145000 10000".into()]);
    check(&ov_raw, 0, "overlay of a raw file");

    let enc = d.join("enc.qcow");
    qemu_create_encrypted(&enc, &pw, "4M", None);
    check(&enc, 0, "encrypted, empty");
    qemu_io_enc(
        &enc,
        &pw,
        &[
            "write -P 0x55 0 10000".into(),
            format!("write -s {} 1048576 300000", rnd.display()),
            "write -P 0x56 4193792 512".into(),
        ],
    );
    check(&enc, 0, "encrypted after writes");
    let enc_conv = d.join("enc-conv.qcow");
    qemu_convert_encrypted(&src, &enc_conv, &pw);
    check(&enc_conv, 0, "encrypted convert");
    assert_bytes_eq(
        &qemu_decrypted(&enc_conv, &pw, d),
        &read(&src),
        "encrypted convert",
    );
    let enc_ov = d.join("enc-ov.qcow");
    qemu_create_encrypted(&enc_ov, &pw, "", Some("conv.qcow"));
    qemu_io_enc(&enc_ov, &pw, &["write -P 0x57 7000 9000".into()]);
    check(&enc_ov, 0, "encrypted overlay");
}

#[test]
fn check_passes_every_image_we_make() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(602);
    let pw = d.join("pw");
    write(&pw, b"our secret");
    let a = d.join("a.qcow");
    qcow_ok(&[&"create", &a, &"5M"]);
    check(&a, 0, "qcow create");
    let size = 5u64 << 20;
    let writes: Vec<(bool, u64, Vec<u8>)> = vec![
        (false, 1000, rng.bytes(70000)),
        (false, 1 << 20, rng.text(200_000)),
        (true, 2 << 20, rng.text(128 << 10)),
        (false, 100_000, vec![0; 10000]),
        (true, 3 << 20, rng.bytes(64 << 10)),
        (false, size - 4095, rng.bytes(4095)),
        (false, 1 << 20, rng.bytes(4096)),
    ];
    for (i, (c, at, data)) in writes.iter().enumerate() {
        let o = if *c {
            qcow_stdin(&[&"write", &"-c", &a, &at.to_string()], data)
        } else {
            qcow_stdin(&[&"write", &a, &at.to_string()], data)
        };
        assert_eq!(o.code, 0, "write {i}: {}", o.stderr);
        check(&a, 0, &format!("after qcow write {i}"));
    }
    let (_, e) = entries(&a);
    assert!(e.iter().any(|x| x.compressed()), "write -c compressed");

    let b = d.join("b.qcow");
    qcow_ok(&[&"create", &"-b", &"a.qcow", &b]);
    check(&b, 0, "qcow create -b");
    for (at, len) in [(0u64, 512usize), (777, 3000), (4 << 20, 70000)] {
        let o = qcow_stdin(&[&"write", &b, &at.to_string()], &rng.bytes(len));
        assert_eq!(o.code, 0, "{}", o.stderr);
        check(&b, 0, &format!("overlay after a write at {at}"));
    }

    let c = d.join("c.qcow");
    qcow_ok(&[&"convert", &"-O", &"qcow", &b, &c]);
    check(&c, 0, "qcow convert -O qcow");
    let cc = d.join("cc.qcow");
    qcow_ok(&[&"convert", &"-O", &"qcow", &"-c", &b, &cc]);
    check(&cc, 0, "qcow convert -O qcow -c");
    let bb = d.join("bb.qcow");
    qcow_ok(&[&"convert", &"-O", &"qcow", &"-B", &"a.qcow", &b, &bb]);
    check(&bb, 0, "qcow convert -B");
    let e = d.join("e.qcow");
    qcow_ok(&[
        &"convert",
        &"-O",
        &"qcow",
        &"--target-password-file",
        &pw,
        &"--encrypt",
        &b,
        &e,
    ]);
    check(&e, 0, "qcow convert --encrypt");
    let o = qcow_stdin(
        &[&"write", &"--password-file", &pw, &e, &"12345"],
        &rng.bytes(9000),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    check(&e, 0, "encrypted after a write");
    let ce = d.join("ce.qcow");
    qcow_ok(&[&"create", &"--encrypt", &"--password-file", &pw, &ce, &"1M"]);
    check(&ce, 0, "qcow create --encrypt");

    // A partial write over a compressed cluster stops using its stream, as QEMU's
    // does: that space leaks (exit 3), and `-r leaks` reclaims it without changing
    // what QEMU reads.
    let (h, ents) = entries(&cc);
    let z = ents
        .iter()
        .find(|x| x.compressed() && x.clen(&h) > 16)
        .expect("a compressed cluster");
    let o = qcow_stdin(&[&"write", &cc, &(z.guest + 100).to_string()], b"partial");
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (text, json) = check(&cc, 3, "partial write over a compressed cluster");
    // The stream, and the padding after it when nothing live follows in its sector.
    let p = json.get("problems").expect("problems").arr();
    assert_eq!(p.len(), 1, "{text}");
    assert_eq!(
        p[0].get("offset").expect("offset").u64(),
        z.host(&h),
        "{text}"
    );
    let leaked = p[0].get("length").expect("length").u64();
    assert!(
        (z.clen(&h)..z.clen(&h) + h.cs()).contains(&leaked),
        "{leaked} bytes for a {}-byte stream: {text}",
        z.clen(&h)
    );
    assert!(
        text.contains(&format!(
            "Leaked: {leaked} bytes leaked at host offset {}",
            z.host(&h)
        )),
        "{text}"
    );
    let before = qemu_raw(&cc, &[], d);
    let len_before = file_len(&cc);
    repair(&cc, "leaks", "partial write over a compressed cluster");
    check(&cc, 0, "after -r leaks");
    assert!(file_len(&cc) <= len_before);
    assert_bytes_eq(&qemu_raw(&cc, &[], d), &before, "after -r leaks");
}

#[test]
fn leaks_are_found_and_reclaimed() {
    let dir = tmp();
    let d = dir.path();
    for (seed, mode) in [(611u64, "leaks"), (612, "all")] {
        // A cluster of garbage appended.
        let (img, raw) = qemu_base(d, seed, false);
        let h = hdr(&img);
        let len = file_len(&img);
        assert_eq!(len % h.cs(), 0);
        let mut f = read(&img);
        f.extend(std::iter::repeat_n(0xa5, h.cs() as usize));
        write(&img, &f);
        let what = format!("appended cluster, -r {mode}");
        let (text, json) = check(&img, 3, &what);
        assert!(
            text.contains(&format!(
                "Leaked: 4096 bytes leaked at host offset {len} (1 whole clusters)"
            )),
            "{what}: {text}"
        );
        assert!(text.contains("1 leaked clusters (4096 bytes)"), "{text}");
        assert_eq!(json.get("leaks").expect("leaks").u64(), 1);
        assert_eq!(json.get("leaked-bytes").expect("lb").u64(), 4096);
        assert_eq!(json.get("image-end-offset").expect("eo").u64(), len);
        let p = &json.get("problems").expect("problems").arr()[0];
        assert_eq!(p.get("offset").expect("offset").u64(), len, "{what}");
        assert_eq!(p.get("length").expect("length").u64(), 4096, "{what}");
        let t = repair(&img, mode, &what);
        assert!(t.contains("truncated the file"), "{what}: {t}");
        assert_eq!(file_len(&img), len, "{what}");
        check(&img, 0, &what);
        assert_bytes_eq(&qemu_raw(&img, &[], d), &raw, &what);

        // An L2 entry unlinked in the middle of the file: its cluster leaks.
        let (h, e) = entries(&img);
        let victim = e[e.len() / 2];
        assert!(!victim.compressed());
        patch(&img, victim.at, &[0; 8]);
        let what = format!("unlinked L2 entry, -r {mode}");
        let (text, json) = check(&img, 3, &what);
        assert!(
            text.contains(&format!(
                "Leaked: 4096 bytes leaked at host offset {} (1 whole clusters)",
                victim.value
            )),
            "{what}: {text}"
        );
        assert_eq!(json.get("leaks").expect("leaks").u64(), 1);
        let t = repair(&img, mode, &what);
        assert!(t.contains("Repaired: moved data cluster"), "{what}: {t}");
        assert_eq!(file_len(&img), len - h.cs(), "{what}");
        check(&img, 0, &what);
        let got = qemu_raw(&img, &[], d);
        assert_healthy_same(&got, &raw, h.cs(), &[victim.guest], &what);
        assert!(cluster(&got, victim.guest, h.cs()).iter().all(|&b| b == 0));
    }
}

#[test]
fn leaks_in_an_overlay_with_an_unlinked_l2_table() {
    let dir = tmp();
    let d = dir.path();
    let ov = rebase_setup(d, 616);
    let before = qemu_raw(&ov, &[], d);
    let h = hdr(&ov);
    assert_eq!((h.cs(), h.l2_span(), h.l1_size()), (512, 2 << 20, 2));
    let table = be64_at(&ov, h.l1_offset);
    assert_ne!(table, 0);
    let len = file_len(&ov);
    // The first L1 entry dropped: its 32 KiB table and the clusters of the write at
    // 100000 leak; QEMU reads base1 there now.
    patch(&ov, h.l1_offset, &[0; 8]);
    let what = "overlay, unlinked L2 table";
    let (text, json) = check(&ov, 3, what);
    let leaked = json.get("leaked-bytes").expect("lb").u64();
    // The table, the 138 clusters, and the padding QEMU left before the table.
    let data = 170_000u64.div_ceil(512) * 512 - 100_000 / 512 * 512;
    assert!(
        ((32 << 10) + data..(32 << 10) + data + 512).contains(&leaked),
        "{text}"
    );
    let runs = json.get("problems").expect("problems").arr();
    assert!(
        runs.iter().any(|r| {
            let at = r.get("offset").expect("offset").u64();
            at <= table && table + (32 << 10) <= at + r.get("length").expect("len").u64()
        }),
        "the table at {table} leaks: {text}"
    );
    let t = repair(&ov, "leaks", what);
    assert!(t.contains("Repaired: moved "), "{t}");
    check(&ov, 0, what);
    // Reclaimed, but for padding to the next cluster boundary.
    assert!(
        file_len(&ov) < len - leaked + 512,
        "{len} -> {}",
        file_len(&ov)
    );
    assert_chain(
        &ov,
        &[],
        Some("base1.qcow"),
        &[(&d.join("base1.qcow"), "qcow")],
    );
    let mut want = before.clone();
    want[..2 << 20].copy_from_slice(&read(&d.join("base1.src"))[..2 << 20]);
    assert_bytes_eq(&qemu_raw(&ov, &[], d), &want, what);

    // A short tail of garbage: leaked bytes, truncated by -r all.
    let len = file_len(&ov);
    let mut f = read(&ov);
    f.extend_from_slice(&[0x5a; 1000]);
    write(&ov, &f);
    let (_, json) = check(&ov, 3, "1000 bytes appended");
    assert_eq!(json.get("leaked-bytes").expect("lb").u64(), 1000);
    assert_eq!(json.get("image-end-offset").expect("eo").u64(), len);
    repair(&ov, "all", "1000 bytes appended");
    assert_eq!(file_len(&ov), len);
    check(&ov, 0, "1000 bytes appended");
    assert_bytes_eq(&qemu_raw(&ov, &[], d), &want, "1000 bytes appended");
}

#[test]
fn two_entries_sharing_a_cluster() {
    let dir = tmp();
    let d = dir.path();
    let (img, raw) = qemu_base(d, 621, false);
    let (h, e) = entries(&img);
    let (a, b) = (e[3], e[e.len() - 5]);
    assert!(a.value < b.value && a.guest / h.l2_span() != b.guest / h.l2_span());
    patch(&img, b.at, &a.value.to_be_bytes());
    let what = "two L2 entries sharing a cluster";
    let (text, json) = check(&img, 2, what);
    assert_eq!(json.get("corruptions").expect("c").u64(), 1, "{text}");
    assert!(
        text.contains(&format!(
            "ERROR data cluster at host offset {} (4096 bytes; L1 index {}, L2 index {}, guest offset {}) overlaps data cluster at host offset {} (4096 bytes; L1 index {}, L2 index {}, guest offset {})",
            a.value,
            b.guest / h.l2_span(),
            (b.guest % h.l2_span()) / h.cs(),
            b.guest,
            a.value,
            a.guest / h.l2_span(),
            (a.guest % h.l2_span()) / h.cs(),
            a.guest
        )),
        "{text}"
    );
    // B's old cluster leaks too.
    assert!(
        text.contains(&format!(
            "Leaked: 4096 bytes leaked at host offset {}",
            b.value
        )),
        "{text}"
    );
    // QEMU reads A's data at both guest offsets.
    let shared = qemu_raw(&img, &[], d);
    assert_bytes_eq(
        cluster(&shared, b.guest, h.cs()),
        cluster(&raw, a.guest, h.cs()),
        "QEMU's view",
    );
    // `-r leaks` does not move data around wrong references.
    let o = qcow(&[&"check", &"-r", &"leaks", &img]);
    assert_eq!(o.code, 2, "-r leaks on a corrupt image: {}", o.text());
    let o = qcow(&[&"check", &"-r", &"all", &"--output=json", &img]);
    assert_eq!(o.code, 0, "{}{}", o.text(), o.stderr);
    let j = Json::parse(&o.text());
    assert_eq!(j.get("corruptions").expect("c").u64(), 0);
    assert_eq!(j.get("corruptions-fixed").expect("cf").u64(), 1);
    assert!(j.get("leaks-fixed").expect("lf").u64() >= 1);
    let repairs = j.get("repairs").expect("repairs").arr();
    assert!(
        repairs
            .iter()
            .any(|r| matches!(r, Json::Str(s) if s.starts_with("copied to host offset"))),
        "{repairs:?}"
    );
    check(&img, 0, what);
    let got = qemu_raw(&img, &[], d);
    assert_healthy_same(&got, &raw, h.cs(), &[b.guest], what);
    assert_bytes_eq(
        cluster(&got, b.guest, h.cs()),
        cluster(&raw, a.guest, h.cs()),
        "the copy",
    );
    // The two guest clusters are separate again: a write to one leaves the other.
    let (_, e2) = entries(&img);
    let find = |g: u64| e2.iter().find(|x| x.guest == g).expect("entry").value;
    assert_ne!(find(a.guest), find(b.guest));
}

#[test]
fn repairs_of_an_encrypted_image_keep_what_qemu_decrypts() {
    let dir = tmp();
    let d = dir.path();
    let pw = d.join("pw");
    write(&pw, b"repair secret");
    let mut rng = Rng::new(625);
    let src = d.join("src.raw");
    write(&src, &rng.bytes(1 << 20));
    let img = d.join("enc.qcow");
    qemu_convert_encrypted(&src, &img, &pw);
    let raw = read(&src);
    let (h, e) = entries(&img);
    let (a, b) = (e[7], e[200]);
    // B shares A's cluster: QEMU decrypts A's bytes with B's sectors' IVs.
    patch(&img, b.at, &a.value.to_be_bytes());
    // C is misaligned by one sector.
    let c = e[100];
    patch(&img, c.at, &(c.value + 512).to_be_bytes());
    let view = qemu_decrypted(&img, &pw, d);
    let what = "encrypted, shared and misaligned clusters";
    let (text, _) = check(&img, 2, what);
    assert!(text.contains("is not aligned to 4096 bytes"), "{text}");
    assert!(
        text.contains(&format!("overlaps data cluster at host offset {}", a.value)),
        "{text}"
    );
    repair(&img, "all", what);
    check(&img, 0, what);
    let got = qemu_decrypted(&img, &pw, d);
    assert_healthy_same(&got, &raw, h.cs(), &[b.guest, c.guest], what);
    for g in [b.guest, c.guest] {
        assert_bytes_eq(cluster(&got, g, h.cs()), cluster(&view, g, h.cs()), what);
    }
}

/// Reads a guest window of a qcow image as QEMU does.
fn qemu_window(img: &Path, at: u64, len: u64, d: &Path) -> Vec<u8> {
    let opts = format!(
        "driver=raw,offset={at},size={len},file.driver=qcow,file.file.filename={}",
        img.display()
    );
    qemu_raw(&opts, &[&"--image-opts"], d)
}

#[test]
fn l2_table_on_the_l1_table() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(631);
    let rnd = d.join("rnd.bin");
    write(&rnd, &rng.bytes(256 << 10));
    // 2 GiB: a 1024-entry (8 KiB) L1 table covering host offset 4096.
    let img = d.join("img.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &img, &"2G"]);
    let at = [0u64, 1 << 30, (1 << 30) + (2 << 20)];
    qemu_io_qcow(
        &img,
        &at.map(|a| format!("write -s {} {a} 262144", rnd.display())),
    );
    check(&img, 0, "fresh");
    let h = hdr(&img);
    assert_eq!((h.l1_offset, h.l1_size()), (48, 1024));
    let before: Vec<Vec<u8>> = at
        .iter()
        .map(|&a| qemu_window(&img, a, 256 << 10, d))
        .collect();
    for w in &before {
        assert_bytes_eq(w, &read(&rnd), "QEMU's view");
    }
    let idx = (1u64 << 30) / h.l2_span();
    let l1e = h.l1_offset + 8 * idx;
    assert_ne!(be64_at(&img, l1e), 0);
    patch(&img, l1e, &4096u64.to_be_bytes());
    let what = "L2 table on the L1 table";
    let (text, json) = check(&img, 2, what);
    assert!(
        text.contains(&format!(
            "ERROR L2 table at host offset 4096 (4096 bytes; L1 index {idx}, guest offset 1073741824) overlaps the L1 table"
        )),
        "{text}"
    );
    let p = json.get("problems").expect("problems").arr();
    assert!(p
        .iter()
        .any(|x| x.get("offset").map(Json::u64) == Some(4096)
            && x.get("type") == Some(&Json::Str("corruption".into()))));
    let o = qcow(&[&"check", &"-r", &"leaks", &img]);
    assert_eq!(o.code, 2, "{}", o.text());
    let t = repair(&img, "all", what);
    assert!(
        t.contains("Repaired: dropped: L2 table at host offset 4096"),
        "{t}"
    );
    check(&img, 0, what);
    assert_eq!(be64_at(&img, l1e), 0, "the reference is dropped");
    assert_bytes_eq(&qemu_window(&img, at[0], 256 << 10, d), &before[0], what);
    assert_bytes_eq(&qemu_window(&img, at[2], 256 << 10, d), &before[2], what);
    assert!(qemu_window(&img, at[1], 2 << 20, d).iter().all(|&b| b == 0));
    // Nothing else appeared: QEMU maps data exactly at the two healthy windows.
    let map = parse_map(&qemu_img_ok(&[&"map", &"--output=json", &img]));
    let mut data: Vec<(u64, u64)> = Vec::new();
    for x in map.iter().filter(|x| x.data) {
        match data.last_mut() {
            Some((s, l)) if *s + *l == x.start => *l += x.length,
            _ => data.push((x.start, x.length)),
        }
    }
    assert_eq!(
        data,
        vec![(at[0], 256 << 10), (at[2], 256 << 10)],
        "{map:?}"
    );
}

#[test]
fn data_cluster_past_the_end_of_the_file() {
    let dir = tmp();
    let d = dir.path();
    let (img, raw) = qemu_base(d, 641, false);
    let (h, e) = entries(&img);
    let victim = e[10];
    let len = file_len(&img);
    let far = len.div_ceil(h.cs()) * h.cs() + 16 * h.cs();
    patch(&img, victim.at, &far.to_be_bytes());
    let what = "data cluster past EOF";
    let (text, _) = check(&img, 2, what);
    assert!(
        text.contains(&format!(
            "ERROR data cluster at host offset {far} (4096 bytes; L1 index 0, L2 index {}, guest offset {}) reaches past the end of the {len}-byte file",
            victim.guest / h.cs(),
            victim.guest
        )),
        "{text}"
    );
    let t = repair(&img, "all", what);
    assert!(
        t.contains(&format!(
            "Repaired: dropped: data cluster at host offset {far}"
        )),
        "{t}"
    );
    check(&img, 0, what);
    assert_eq!(
        file_len(&img),
        len - h.cs(),
        "the orphaned cluster is reclaimed"
    );
    let got = qemu_raw(&img, &[], d);
    assert_healthy_same(&got, &raw, h.cs(), &[victim.guest], what);
    assert!(cluster(&got, victim.guest, h.cs()).iter().all(|&b| b == 0));
}

#[test]
fn misaligned_data_cluster() {
    let dir = tmp();
    let d = dir.path();
    let (img, raw) = qemu_base(d, 651, false);
    let (h, e) = entries(&img);
    // A cluster whose host successor is allocated too: the misaligned one overlaps it.
    let victim = *e
        .iter()
        .find(|x| e.iter().any(|y| y.value == x.value + h.cs()))
        .expect("two adjacent clusters");
    let moved = victim.value + 512;
    patch(&img, victim.at, &moved.to_be_bytes());
    // QEMU reads the cluster at the misaligned offset.
    let view = qemu_raw(&img, &[], d);
    let what = "misaligned data cluster";
    let (text, _) = check(&img, 2, what);
    assert!(
        text.contains(&format!(
            "ERROR data cluster at host offset {moved} (4096 bytes; L1 index 0, L2 index {}, guest offset {}) is not aligned to 4096 bytes",
            victim.guest / h.cs(),
            victim.guest
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("ERROR data cluster at host offset {moved} "))
            && text.contains(" overlaps data cluster at host offset "),
        "{text}"
    );
    let t = repair(&img, "all", what);
    assert!(t.contains("Repaired: copied to host offset"), "{t}");
    check(&img, 0, what);
    let got = qemu_raw(&img, &[], d);
    assert_healthy_same(&got, &raw, h.cs(), &[victim.guest], what);
    assert_bytes_eq(
        cluster(&got, victim.guest, h.cs()),
        cluster(&view, victim.guest, h.cs()),
        "the copy keeps what QEMU read",
    );
    let (_, e2) = entries(&img);
    assert!(e2.iter().all(|x| x.value % h.cs() == 0), "all aligned now");
}

#[test]
fn compressed_cluster_that_does_not_inflate() {
    let dir = tmp();
    let d = dir.path();
    let (img, raw) = qemu_base(d, 661, true);
    let (h, e) = entries(&img);
    // Incompressible clusters are stored plain.
    let z: Vec<Entry> = e.into_iter().filter(Entry::compressed).collect();
    assert!(z.len() > 10);
    let victim = z[z.len() / 2];
    let (host, clen) = (victim.host(&h), victim.clen(&h));
    assert!(clen > 16);
    // 0xff: a final block of the reserved type 3.
    patch(&img, host, &vec![0xff; clen as usize]);
    let what = "compressed cluster that does not inflate";
    let (text, _) = check(&img, 2, what);
    assert!(
        text.contains(&format!(
            "ERROR compressed cluster at host offset {host} ({clen} bytes; L1 index 0, L2 index {}, guest offset {}) is not a valid deflate stream",
            victim.guest / h.cs(),
            victim.guest
        )),
        "{text}"
    );
    let o = qcow(&[&"check", &"-r", &"leaks", &img]);
    assert_eq!(o.code, 2, "{}", o.text());
    let t = repair(&img, "all", what);
    assert!(t.contains("Repaired: dropped: compressed cluster"), "{t}");
    check(&img, 0, what);
    let got = qemu_raw(&img, &[], d);
    assert_healthy_same(&got, &raw, h.cs(), &[victim.guest], what);
    assert!(cluster(&got, victim.guest, h.cs()).iter().all(|&b| b == 0));
}

/// A 16 MiB qemu-img image with data in its first 3 MiB (L2 table and data right after
/// the L1 table); returns it and a raw copy of its content.
fn sixteen(d: &Path, name: &str, seed: u64) -> (PathBuf, PathBuf) {
    let mut rng = Rng::new(seed);
    let mut data = mixed(&mut rng, 3 << 20);
    // Data around 1.5 MiB, where the shrink test cuts.
    let mid = (3 << 19) - 8192;
    data[mid..mid + 16384].copy_from_slice(&rng.bytes(16384));
    data[..4096].copy_from_slice(&rng.bytes(4096));
    data.resize(16 << 20, 0);
    let raw = d.join(format!("{name}.raw"));
    write(&raw, &data);
    let img = d.join(format!("{name}.qcow"));
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &img]);
    (img, raw)
}

/// `qcow resize ARGS`: exit 0, "Image resized.".
fn resize_ok(args: &Args) {
    let mut a: Vec<&dyn AsRef<OsStr>> = vec![&"resize"];
    a.extend_from_slice(args);
    let out = qcow_ok(&a);
    assert_eq!(String::from_utf8_lossy(&out), "Image resized.\n");
}

/// Extends or truncates a raw file.
fn set_len(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("open")
        .set_len(len)
        .expect("set_len");
}

#[test]
fn resize_grows_in_place_and_by_moving_the_l1_table() {
    let dir = tmp();
    let d = dir.path();
    let (img, raw) = sixteen(d, "a", 671);
    let img2 = d.join("b.qcow");
    std::fs::copy(&img, &img2).expect("copy");
    let h = hdr(&img);
    assert_eq!((h.l1_offset, h.l1_size()), (48, 8));
    let (_, e) = entries(&img);
    assert!(
        e.iter().any(|x| x.value == 8192),
        "data right after the first L2 table"
    );

    // 512 MiB: 256 entries (2 KiB) fit before the L2 table at 4096.
    resize_ok(&[&img, &"512M"]);
    assert_eq!(hdr(&img).l1_offset, 48, "grown in place");
    assert_eq!(qemu_size(&img), 512 << 20);
    set_len(&raw, 512 << 20);
    assert_qemu_identical(&raw, &img, &[&"-f", &"raw", &"-F", &"qcow"], "512M");
    check(&img, 0, "grown to 512M");

    // 1 GiB: 512 entries (4 KiB) reach the L2 table: the L1 table moves.
    resize_ok(&[&img2, &"1G"]);
    let h2 = hdr(&img2);
    assert_ne!(h2.l1_offset, 48, "moved");
    assert_eq!(h2.l1_size(), 512);
    assert_eq!(qemu_size(&img2), 1 << 30);
    set_len(&raw, 1 << 30);
    assert_qemu_identical(&raw, &img2, &[&"-f", &"raw", &"-F", &"qcow"], "1G");
    check(&img2, 0, "grown to 1G");
    // The grown image takes writes as QEMU sees them, past the old end too.
    qemu_io_qcow(&img2, &["write -P 0x61 1073737728 4096".into()]);
    check(&img2, 0, "1G after a QEMU write at its end");

    // An empty image: the L1 table ends the file and grows in place to 1 GiB.
    let empty = d.join("empty.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &empty, &"16M"]);
    resize_ok(&[&empty, &"1G"]);
    assert_eq!(hdr(&empty).l1_offset, 48);
    assert_eq!(qemu_size(&empty), 1 << 30);
    check(&empty, 0, "empty grown to 1G");
    let zeros = d.join("zeros.raw");
    write(&zeros, &[]);
    set_len(&zeros, 1 << 30);
    assert_qemu_identical(&zeros, &empty, &[&"-f", &"raw", &"-F", &"qcow"], "empty 1G");
}

#[test]
fn resize_to_two_tib() {
    let dir = tmp();
    let d = dir.path();
    let (img, raw) = sixteen(d, "a", 681);
    let t2 = 2u64 << 40;
    resize_ok(&[&img, &"2T"]);
    assert_eq!(qemu_size(&img), t2);
    let h = hdr(&img);
    assert_ne!(h.l1_offset, 48, "an 8 MiB L1 table cannot stay at 48");
    assert_eq!(h.l1_size(), 1 << 20);
    check(&img, 0, "2T");
    // `qemu-img compare` of 2 TiB walks QEMU's qcow block status one cluster at a
    // time (minutes): compare the old 16 MiB through a raw window, then zeros.
    let window = format!(
        "driver=raw,size={},file.driver=qcow,file.file.filename={}",
        16 << 20,
        img.display()
    );
    let r = format!(
        "driver=raw,file.driver=file,file.filename={}",
        raw.display()
    );
    let (code, text) = qemu_compare(&window, &r, &[&"--image-opts"]);
    assert_eq!(code, 0, "old content: {text}");
    qemu_io_qcow(
        &img,
        &[
            format!("read -P 0 {} 1048576", 16 << 20),
            format!("read -P 0 {} 1048576", 1u64 << 40),
            format!("read -P 0 {} 1048576", t2 - (1 << 20)),
        ],
    );
    // QEMU writes at the far end; the image still checks clean.
    qemu_io_qcow(&img, &[format!("write -P 0x62 {} 4096", t2 - 4096)]);
    check(&img, 0, "2T after a QEMU write at its end");
    qemu_io_qcow(&img, &[format!("read -P 0x62 {} 4096", t2 - 4096)]);
}

#[test]
fn resize_shrink_and_relative_sizes() {
    let dir = tmp();
    let d = dir.path();
    let (img, raw) = sixteen(d, "a", 691);
    let f = [&"-f" as &dyn AsRef<OsStr>, &"raw", &"-F", &"qcow"];

    // Shrinking without --shrink: refused, one line, nothing changed.
    for size in ["1M", "-1M", "16777215"] {
        let line = unchanged(&img, "refused shrink", || {
            qcow_err(&[&"resize", &img, &size], 1)
        });
        assert!(line.contains("--shrink"), "{line}");
    }

    // Shrink to an unaligned size: QEMU rounds to 512 bytes.
    let len = file_len(&img);
    let cut = (3u64 << 19) + 1000;
    let rounded = cut.div_ceil(512) * 512;
    resize_ok(&[&"--shrink", &img, &cut.to_string()]);
    assert_eq!(qemu_size(&img), rounded);
    assert!(
        file_len(&img) < len,
        "the clusters past the end are reclaimed"
    );
    check(&img, 0, "shrunk");
    set_len(&raw, rounded);
    assert_qemu_identical(&raw, &img, &f, "shrunk");

    // +SIZE: the old prefix, then zeros (also in the rest of the cut cluster).
    resize_ok(&[&img, &"+1M"]);
    let grown = rounded + (1 << 20);
    assert_eq!(qemu_size(&img), grown);
    check(&img, 0, "+1M");
    set_len(&raw, grown);
    assert_qemu_identical(&raw, &img, &f, "+1M");

    // -SIZE with --shrink.
    resize_ok(&[&"--shrink", &img, &"-1536K"]);
    let smaller = grown - (1536 << 10);
    assert_eq!(qemu_size(&img), smaller);
    check(&img, 0, "-1536K");
    set_len(&raw, smaller);
    assert_qemu_identical(&raw, &img, &f, "-1536K");

    // Growing by a suffixed size, then back to the original size.
    resize_ok(&[&img, &"16M"]);
    assert_eq!(qemu_size(&img), 16 << 20);
    check(&img, 0, "16M again");
    set_len(&raw, 16 << 20);
    assert_qemu_identical(&raw, &img, &f, "16M again");

    // The same size changes nothing.
    unchanged(&img, "same size", || resize_ok(&[&img, &"16M"]));
    for bad in ["0", "12Q", "-16M", "+16E"] {
        unchanged(&img, bad, || {
            qcow_err(&[&"resize", &"--shrink", &img, &bad], 1)
        });
    }
}

#[test]
fn resize_compressed_encrypted_overlay_and_raw() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(695);
    let f = [&"-f" as &dyn AsRef<OsStr>, &"raw", &"-F", &"qcow"];

    // Compressed: a shrink cutting a compressed cluster, then growth: zeros past the
    // cut, not the rest of the old cluster.
    let raw = d.join("text.raw");
    write(&raw, &rng.text(3 << 20));
    let img = d.join("comp.qcow");
    qemu_convert_compressed(&raw, &img);
    let cut = (1u64 << 20) + 512;
    let (h, e) = entries(&img);
    assert!(e
        .iter()
        .any(|x| x.compressed() && x.guest == cut & !(h.cs() - 1)));
    resize_ok(&[&"--shrink", &img, &cut.to_string()]);
    check(&img, 0, "compressed, shrunk");
    resize_ok(&[&img, &"2M"]);
    check(&img, 0, "compressed, grown");
    set_len(&raw, cut);
    set_len(&raw, 2 << 20);
    assert_qemu_identical(&raw, &img, &f, "compressed, shrunk and grown");

    // Encrypted, made by QEMU with an odd size: grown, shrunk, grown again.
    let pw = d.join("pw");
    write(&pw, b"resize secret");
    let enc = d.join("enc.qcow");
    qemu_create_encrypted(&enc, &pw, "3000000", None);
    let size = 3_000_000u64.div_ceil(512) * 512;
    let rnd = d.join("rnd.bin");
    write(&rnd, &rng.bytes(1 << 20));
    qemu_io_enc(
        &enc,
        &pw,
        &[
            format!("write -s {} 1000000 1048576", rnd.display()),
            format!("write -P 0x71 {} 512", size - 512),
        ],
    );
    let mut model = qemu_decrypted(&enc, &pw, d);
    assert_eq!(model.len() as u64, size);
    for (args, len) in [
        (vec!["+1M"], size + (1 << 20)),
        (vec!["--shrink", "2M"], 2 << 20),
        (vec!["4M"], 4 << 20),
    ] {
        let what = format!("encrypted, resize {args:?}");
        let mut a: Vec<&dyn AsRef<OsStr>> = vec![&"resize"];
        a.extend(
            args.iter()
                .take(args.len() - 1)
                .map(|s| s as &dyn AsRef<OsStr>),
        );
        a.push(&enc);
        a.push(args.last().expect("size"));
        assert_eq!(qcow_ok(&a), b"Image resized.\n");
        model.resize(len as usize, 0);
        check(&enc, 0, &what);
        assert_bytes_eq(&qemu_decrypted(&enc, &pw, d), &model, &what);
    }

    // An overlay: shrunk and grown, it reads the same through QEMU and through us;
    // the old prefix stays, and past the backing file's end there are zeros.
    let ov = rebase_setup(d, 696);
    let before = qemu_raw(&ov, &[], d);
    resize_ok(&[&"--shrink", &ov, &"2M"]);
    resize_ok(&[&ov, &"8M"]);
    check(&ov, 0, "overlay shrunk and grown");
    assert_eq!(qemu_size(&ov), 8 << 20);
    let got = qemu_raw(&ov, &[], d);
    assert_bytes_eq(&got[..2 << 20], &before[..2 << 20], "overlay prefix");
    assert!(
        got[4 << 20..].iter().all(|&b| b == 0),
        "past the backing file"
    );
    let ours = d.join("ours.raw");
    qcow_ok(&[&"convert", &"-O", &"raw", &ov, &ours]);
    assert_bytes_eq(&read(&ours), &got, "overlay: qcow and QEMU agree");

    // A raw file resizes as `qemu-img resize -f raw` would: the same refusal to
    // shrink without --shrink.
    let r = d.join("disk.raw");
    write(&r, &[7u8; 1 << 20]);
    resize_ok(&[&r, &"+1M"]);
    assert_eq!(file_len(&r), 2 << 20);
    unchanged(&r, "raw shrink", || qcow_err(&[&"resize", &r, &"1M"], 1));
    resize_ok(&[&"--shrink", &r, &"512K"]);
    assert_eq!(read(&r), vec![7u8; 512 << 10]);
}

/// base1.qcow (4 MiB of mixed data), base2.qcow (base1 with some ranges changed),
/// base3.raw (others changed), and ov.qcow, an overlay of base1 with QEMU writes.
fn rebase_setup(d: &Path, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    let b1 = mixed(&mut rng, 4 << 20);
    let mut b2 = b1.clone();
    b2[..300_000].copy_from_slice(&rng.bytes(300_000));
    b2[2 << 20..(2 << 20) + 100_000].fill(0);
    let mut b3 = b1.clone();
    b3[1 << 20..(1 << 20) + 500_000].copy_from_slice(&rng.text(500_000));
    b3[(4 << 20) - 7000..].fill(0x77);
    for (name, data) in [("base1", &b1), ("base2", &b2)] {
        let src = d.join(format!("{name}.src"));
        write(&src, data);
        qemu_img_ok(&[
            &"convert",
            &"-O",
            &"qcow",
            &src,
            &d.join(format!("{name}.qcow")),
        ]);
    }
    write(&d.join("base3.raw"), &b3);
    let ov = d.join("ov.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"base1.qcow",
        &"-F",
        &"qcow",
        &ov,
    ]);
    qemu_io_qcow(
        &ov,
        &[
            "write -P 0x5a 100000 70000".into(),
            "write -z 2097152 65536".into(),
            "write -P 0x33 4193304 1000".into(),
        ],
    );
    ov
}

/// `qemu-img compare` options: a raw file, then a qcow image.
fn raw_vs_qcow() -> Vec<&'static dyn AsRef<OsStr>> {
    const RAW_VS_QCOW: [&str; 4] = ["-f", "raw", "-F", "qcow"];
    RAW_VS_QCOW.iter().map(|s| s as &dyn AsRef<OsStr>).collect()
}

#[test]
fn rebase_keeps_the_content() {
    let dir = tmp();
    let d = dir.path();
    let ov = rebase_setup(d, 701);
    assert_chain(
        &ov,
        &[],
        Some("base1.qcow"),
        &[(&d.join("base1.qcow"), "qcow")],
    );
    let before = d.join("before.raw");
    write(&before, &qemu_raw(&ov, &[], d));
    let f = raw_vs_qcow();

    let len = file_len(&ov);
    qcow_ok(&[&"rebase", &"-b", &"base2.qcow", &"-F", &"qcow", &ov]);
    assert!(file_len(&ov) > len, "the differing clusters were copied in");
    assert_chain(
        &ov,
        &[],
        Some("base2.qcow"),
        &[(&d.join("base2.qcow"), "qcow")],
    );
    assert_qemu_identical(&before, &ov, &f, "onto base2.qcow");
    check(&ov, 0, "onto base2.qcow");

    qcow_ok(&[&"rebase", &"-b", &"base3.raw", &"-F", &"raw", &ov]);
    assert_chain(
        &ov,
        &[],
        Some("base3.raw"),
        &[(&d.join("base3.raw"), "raw")],
    );
    assert_qemu_identical(&before, &ov, &f, "onto base3.raw");
    check(&ov, 0, "onto base3.raw");

    // Back onto base1, the format probed.
    qcow_ok(&[&"rebase", &"-b", &"base1.qcow", &ov]);
    assert_chain(
        &ov,
        &[],
        Some("base1.qcow"),
        &[(&d.join("base1.qcow"), "qcow")],
    );
    assert_qemu_identical(&before, &ov, &f, "back onto base1.qcow");
    check(&ov, 0, "back onto base1.qcow");

    // An absolute name is stored as given.
    let abs = d.join("base2.qcow");
    qcow_ok(&[&"rebase", &"-b", &abs, &ov]);
    let abs_name = abs.to_str().expect("utf-8");
    assert_chain(&ov, &[], Some(abs_name), &[(&abs, "qcow")]);
    assert_qemu_identical(&before, &ov, &f, "absolute name");
    check(&ov, 0, "absolute name");

    // Backing files shorter (odd length) and longer than the overlay.
    let short = d.join("short.raw");
    write(&short, &read(&d.join("base2.src"))[..1_000_001]);
    let long_src = d.join("long.src");
    let mut long = read(&d.join("base2.src"));
    long.extend(vec![0x42; 4 << 20]);
    write(&long_src, &long);
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &long_src, &d.join("long.qcow")]);
    for (name, fmt) in [("short.raw", "raw"), ("long.qcow", "qcow")] {
        qcow_ok(&[&"rebase", &"-b", &name, &"-F", &fmt, &ov]);
        assert_chain(&ov, &[], Some(name), &[(&d.join(name), fmt)]);
        assert_qemu_identical(&before, &ov, &f, name);
        check(&ov, 0, name);
        assert_eq!(qemu_size(&ov), 4 << 20);
    }

    qcow_ok(&[&"rebase", &"-b", &"", &ov]);
    assert_chain(&ov, &[], None, &[]);
    assert_qemu_identical(&before, &ov, &f, "without a backing file");
    check(&ov, 0, "without a backing file");
    assert_eq!(qemu_size(&ov), 4 << 20);
}

#[test]
fn rebase_unsafe_changes_only_the_name() {
    let dir = tmp();
    let d = dir.path();
    let ov = rebase_setup(d, 711);
    let before = qemu_raw(&ov, &[], d);
    let own = |img: &Path| -> Vec<(u64, u64)> {
        parse_map(&qemu_img_ok(&[&"map", &"--output=json", &img]))
            .iter()
            .filter(|x| x.depth == 0 && x.present)
            .map(|x| (x.start, x.length))
            .collect()
    };
    let mine = own(&ov);
    assert!(!mine.is_empty());
    let file_before = read(&ov);
    let (h, e_before) = entries(&ov);

    // A name of the same length: the L1 and L2 tables and the data clusters are not
    // touched (the new name goes to free space, then back after the header).
    let out = qcow_ok(&[&"rebase", &"-u", &"-b", &"base2.qcow", &ov]);
    assert!(out.is_empty());
    assert_chain(
        &ov,
        &[],
        Some("base2.qcow"),
        &[(&d.join("base2.qcow"), "qcow")],
    );
    let file_after = read(&ov);
    assert_eq!(file_after.len(), file_before.len());
    let (h2, e_after) = entries(&ov);
    assert_eq!(h2.l1_offset, h.l1_offset);
    let l1 = h.l1_offset as usize..(h.l1_offset + 8 * h.l1_size()) as usize;
    assert_eq!(file_after[l1.clone()], file_before[l1]);
    assert_eq!(
        e_after
            .iter()
            .map(|x| (x.guest, x.at, x.value))
            .collect::<Vec<_>>(),
        e_before
            .iter()
            .map(|x| (x.guest, x.at, x.value))
            .collect::<Vec<_>>(),
        "-u: the L2 tables"
    );
    for x in &e_before {
        let r = x.value as usize..(x.value + h.cs()) as usize;
        assert_eq!(
            file_after[r.clone()],
            file_before[r],
            "-u: data cluster of {}",
            x.guest
        );
    }
    check(&ov, 0, "-u onto base2");
    assert_eq!(own(&ov), mine, "-u: the overlay's own clusters");
    // The guest: the overlay's clusters as before, base2 everywhere else.
    let b2 = read(&d.join("base2.src"));
    let expect = |base: &[u8]| -> Vec<u8> {
        let mut v = base.to_vec();
        for &(s, l) in &mine {
            v[s as usize..(s + l) as usize].copy_from_slice(&before[s as usize..(s + l) as usize]);
        }
        v
    };
    let after = qemu_raw(&ov, &[], d);
    assert_bytes_eq(&after, &expect(&b2), "-u onto base2");
    assert_ne!(
        after, before,
        "base1 and base2 differ where the overlay is empty"
    );

    // A longer name onto a raw file.
    let long = "base3.raw-is-the-raw-file.raw";
    std::fs::rename(d.join("base3.raw"), d.join(long)).expect("rename");
    qcow_ok(&[&"rebase", &"-u", &"-b", &long, &"-F", &"raw", &ov]);
    assert_chain(&ov, &[], Some(long), &[(&d.join(long), "raw")]);
    check(&ov, 0, "-u onto a raw file");
    assert_eq!(own(&ov), mine);
    let b3 = read(&d.join(long));
    assert_bytes_eq(&qemu_raw(&ov, &[], d), &expect(&b3), "-u onto base3");

    // No backing file: zeros where the overlay is empty.
    qcow_ok(&[&"rebase", &"-u", &"-b", &"", &ov]);
    assert_chain(&ov, &[], None, &[]);
    check(&ov, 0, "-u without a backing file");
    assert_eq!(own(&ov), mine);
    assert_bytes_eq(
        &qemu_raw(&ov, &[], d),
        &expect(&vec![0; 4 << 20]),
        "-u without a backing file",
    );
}

#[test]
fn rebase_resolves_relative_names_against_the_image() {
    let dir = tmp();
    let d = dir.path();
    let imgs = d.join("imgs");
    let work = d.join("work");
    std::fs::create_dir_all(imgs.join("sub")).expect("mkdir");
    std::fs::create_dir(&work).expect("mkdir");
    let ov = rebase_setup(&imgs, 721);
    std::fs::copy(imgs.join("base2.qcow"), imgs.join("sub/b2.qcow")).expect("copy");
    // A decoy in the working directory, missing beside the image.
    std::fs::copy(imgs.join("base2.qcow"), work.join("decoy.qcow")).expect("copy");
    let before = d.join("before.raw");
    write(&before, &qemu_raw(&ov, &[], d));
    let f = raw_vs_qcow();
    let rel = Path::new("../imgs/ov.qcow");

    qcow_ok_in(Some(&work), &[&"rebase", &"-b", &"base2.qcow", &rel]);
    assert_chain(
        &ov,
        &[],
        Some("base2.qcow"),
        &[(&imgs.join("base2.qcow"), "qcow")],
    );
    assert_qemu_identical(&before, &ov, &f, "relative base2.qcow");
    check(&ov, 0, "relative base2.qcow");

    qcow_ok_in(Some(&work), &[&"rebase", &"-b", &"sub/b2.qcow", &rel]);
    assert_chain(
        &ov,
        &[],
        Some("sub/b2.qcow"),
        &[(&imgs.join("sub/b2.qcow"), "qcow")],
    );
    assert_qemu_identical(&before, &ov, &f, "relative sub/b2.qcow");

    let o = unchanged(&ov, "decoy", || {
        let o = qcow_in(&work, &[&"rebase", &"-b", &"decoy.qcow", &rel]);
        assert_fails(&o, 1, "a name found only in the working directory");
        o
    });
    assert!(o.stderr.contains("decoy.qcow"), "{}", o.stderr);

    qcow_ok_in(
        Some(&work),
        &[&"rebase", &"-u", &"-b", &"../imgs/base1.qcow", &rel],
    );
    assert_chain(
        &ov,
        &[],
        Some("../imgs/base1.qcow"),
        &[(&imgs.join("base1.qcow"), "qcow")],
    );
    check(&ov, 0, "-u ../imgs/base1.qcow");
    // Safe rebase from there onto base2 (base1 read through the relative name).
    qcow_ok_in(Some(&work), &[&"rebase", &"-b", &"base2.qcow", &rel]);
    assert_qemu_identical(&before, &ov, &f, "from ../imgs/base1.qcow onto base2");
}

#[test]
fn rebase_encrypted_overlay() {
    let dir = tmp();
    let d = dir.path();
    rebase_setup(d, 731);
    let pw = d.join("pw");
    write(&pw, b"rebase secret");
    let ov = d.join("enc.qcow");
    qemu_create_encrypted(&ov, &pw, "", Some("base1.qcow"));
    qemu_io_enc(
        &ov,
        &pw,
        &[
            "write -P 0x5b 4096 20000".into(),
            "write -P 0x5c 2090000 20000".into(),
        ],
    );
    let obj = secret_object(&pw);
    let pre: [&dyn AsRef<OsStr>; 3] = [&"--object", &obj, &"--image-opts"];
    assert_chain(
        &ov,
        &pre,
        Some("base1.qcow"),
        &[(&d.join("base1.qcow"), "qcow")],
    );
    let before = d.join("before.raw");
    write(&before, &qemu_decrypted(&ov, &pw, d));
    let model = format!("driver=raw,file.filename={}", before.display());

    // Without the password the clusters cannot be copied in: refused, unchanged.
    unchanged(&ov, "no password", || {
        qcow_err(&[&"rebase", &"-b", &"base2.qcow", &ov], 1)
    });

    qcow_ok(&[
        &"rebase",
        &"--password-file",
        &pw,
        &"-b",
        &"base2.qcow",
        &ov,
    ]);
    assert_chain(
        &ov,
        &pre,
        Some("base2.qcow"),
        &[(&d.join("base2.qcow"), "qcow")],
    );
    let (code, text) = qemu_compare(&model, &image_opts(&ov), &pre);
    assert_eq!(code, 0, "encrypted onto base2: {text}");
    check(&ov, 0, "encrypted onto base2");

    qcow_ok(&[&"rebase", &"--password-file", &pw, &"-b", &"", &ov]);
    assert_chain(&ov, &pre, None, &[]);
    let (code, text) = qemu_compare(&model, &image_opts(&ov), &pre);
    assert_eq!(code, 0, "encrypted without backing: {text}");
    check(&ov, 0, "encrypted without backing");

    // -u needs no password: it only writes the name.
    qcow_ok(&[&"rebase", &"-u", &"-b", &"base1.qcow", &ov]);
    assert_chain(
        &ov,
        &pre,
        Some("base1.qcow"),
        &[(&d.join("base1.qcow"), "qcow")],
    );
    check(&ov, 0, "encrypted -u");
}

#[test]
fn rebase_refuses_loops_and_needs_the_old_backing_file() {
    let dir = tmp();
    let d = dir.path();
    let ov = rebase_setup(d, 741);
    let before = d.join("before.raw");
    write(&before, &qemu_raw(&ov, &[], d));
    // b2 names the overlay as its backing file.
    let loopy = d.join("loopy.qcow");
    qemu_img_ok(&[
        &"create", &"-f", &"qcow", &"-u", &"-b", &"ov.qcow", &"-F", &"qcow", &loopy, &"4M",
    ]);
    for args in [
        vec![&"rebase" as &dyn AsRef<OsStr>, &"-b", &"ov.qcow", &ov],
        vec![&"rebase", &"-b", &"./ov.qcow", &"-F", &"raw", &ov],
        vec![&"rebase", &"-b", &"loopy.qcow", &ov],
    ] {
        let line = unchanged(&ov, "loop", || qcow_err(&args, 1));
        assert!(line.contains("comes back to this image"), "{line}");
    }
    let long = "x".repeat(2000);
    let line = unchanged(&ov, "long name", || {
        qcow_err(&[&"rebase", &"-u", &"-b", &long, &ov], 1)
    });
    assert!(line.contains("too long"), "{line}");

    // The old backing file gone: a safe rebase cannot know the old content; -u can
    // name the new one; check needs no backing file.
    std::fs::rename(d.join("base1.qcow"), d.join("moved.qcow")).expect("rename");
    check(&ov, 0, "backing file missing");
    let line = unchanged(&ov, "old backing missing", || {
        qcow_err(&[&"rebase", &"-b", &"base2.qcow", &ov], 1)
    });
    assert!(line.contains("base1.qcow"), "{line}");
    qcow_ok(&[&"rebase", &"-u", &"-b", &"moved.qcow", &ov]);
    assert_chain(
        &ov,
        &[],
        Some("moved.qcow"),
        &[(&d.join("moved.qcow"), "qcow")],
    );
    assert_qemu_identical(&before, &ov, &raw_vs_qcow(), "-u onto the moved file");
}

#[test]
fn maintenance_errors_are_one_line() {
    let dir = tmp();
    let d = dir.path();
    let (img, _) = qemu_base(d, 741, false);
    let raw = d.join("disk.raw");
    write(&raw, &[7u8; 1 << 20]);
    let missing = d.join("missing.qcow");

    // A raw file (`resize` takes one, as qemu-img does: see
    // resize_compressed_encrypted_overlay_and_raw).
    for args in [
        vec![&"check" as &dyn AsRef<OsStr>, &raw],
        vec![&"check", &"-r", &"all", &raw],
        vec![&"check", &"--output=json", &raw],
        vec![&"rebase", &"-b", &"", &raw],
        vec![&"rebase", &"-u", &"-b", &"x.qcow", &raw],
    ] {
        let line = unchanged(&raw, "raw", || qcow_err(&args, 1));
        assert!(line.contains("disk.raw"), "{line}");
    }

    // A missing file.
    for args in [
        vec![&"check" as &dyn AsRef<OsStr>, &missing],
        vec![&"check", &"-r", &"leaks", &missing],
        vec![&"resize", &missing, &"1G"],
        vec![&"rebase", &"-b", &"", &missing],
        vec![&"rebase", &"-u", &"-b", &"x", &missing],
    ] {
        let line = qcow_err(&args, 1);
        assert!(line.contains("missing.qcow"), "{line}");
        assert!(!missing.exists());
    }

    // A missing new backing file; a corrupt image.
    unchanged(&img, "missing backing", || {
        qcow_err(&[&"rebase", &"-b", &"nowhere.qcow", &img], 1)
    });
    let corrupt = d.join("corrupt.qcow");
    std::fs::copy(&img, &corrupt).expect("copy");
    let (_, e) = entries(&corrupt);
    patch(&corrupt, e[5].at, &e[4].value.to_be_bytes());
    for args in [
        vec![&"resize" as &dyn AsRef<OsStr>, &corrupt, &"1G"],
        vec![&"rebase", &"-u", &"-b", &"img.qcow", &corrupt],
        vec![&"rebase", &"-b", &"", &corrupt],
    ] {
        let line = unchanged(&corrupt, "corrupt", || qcow_err(&args, 1));
        assert!(line.contains("corrupt.qcow"), "{line}");
    }

    // Hostile headers (qcow magic, version 1): each field out of range.
    let good = read(&img);
    let hostile: Vec<(&str, usize, Vec<u8>)> = vec![
        ("cluster bits 64", 32, vec![64]),
        ("cluster bits 8", 32, vec![8]),
        ("l2 bits 0", 33, vec![0]),
        ("L1 past EOF", 40, (1u64 << 40).to_be_bytes().to_vec()),
        ("L1 offset overflows", 40, u64::MAX.to_be_bytes().to_vec()),
        ("size 2^62", 24, (1u64 << 62).to_be_bytes().to_vec()),
        (
            "backing name past EOF",
            8,
            (1u64 << 40).to_be_bytes().to_vec(),
        ),
        ("crypt method 7", 36, 7u32.to_be_bytes().to_vec()),
    ];
    let bad = d.join("hostile.qcow");
    for (what, at, bytes) in &hostile {
        let mut b = good.clone();
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
        if *at == 8 {
            b[16..20].copy_from_slice(&100u32.to_be_bytes());
        }
        write(&bad, &b);
        for args in [
            vec![&"check" as &dyn AsRef<OsStr>, &bad],
            vec![&"check", &"-r", &"all", &bad],
            vec![&"check", &"--output=json", &bad],
            vec![&"resize", &bad, &"1G"],
            vec![&"resize", &"--shrink", &bad, &"1M"],
            vec![&"rebase", &"-u", &"-b", &"img.qcow", &bad],
            vec![&"rebase", &"-b", &"", &bad],
        ] {
            let line = unchanged(&bad, what, || qcow_err(&args, 1));
            assert!(line.contains("hostile.qcow"), "{what}: {line}");
        }
    }
}
