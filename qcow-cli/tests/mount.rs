//! Issue 15, `qcow mount`, on real kernel FUSE mounts (no mocks): the disk file equals
//! what `qemu-img convert -O raw` reads, partition files equal their slices, `--rw`
//! carries an ext4 file system made and filled through the mount, a `kill -9` in the
//! middle of writes leaves old or new bytes only, lying tables and bad images are
//! handled. Needs `/dev/fuse`, `fusermount3` (Debian `fuse3`), `sfdisk`, `sgdisk`,
//! `mkfs.ext4`, `e2fsck`, `debugfs`; a test fails with a clear message when one is missing.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// The line `qcow mount` writes once mounted when `QCOW_MOUNT_READY` is set.
const READY: &str = "\u{1}qcow-mount-ready";

fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain(["/sbin".into(), "/usr/sbin".into()])
                .any(|d| d.join(tool).is_file())
        })
        .unwrap_or(false);
    assert!(found, "{tool} not found: install it (see .ci/run)");
}

fn need_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests need kernel FUSE"
    );
    need("fusermount3");
}

fn sh(prog: &str, args: &[&dyn AsRef<OsStr>]) -> Out {
    need(prog);
    let mut c = Command::new(prog);
    for a in args {
        c.arg(a.as_ref());
    }
    let o = c.output().unwrap_or_else(|e| panic!("{prog}: {e}"));
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn sh_ok(prog: &str, args: &[&dyn AsRef<OsStr>]) -> String {
    let o = sh(prog, args);
    assert_eq!(o.code, 0, "{prog} failed: {}{}", o.text(), o.stderr);
    o.text()
}

fn mounted(dir: &Path) -> bool {
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.to_str().unwrap_or("")))
}

/// A live mount served by a `qcow mount --foreground` child; unmounted on drop.
struct Mount {
    dir: PathBuf,
    child: Option<Child>,
    /// What the child wrote on stderr before it was ready.
    stderr: String,
}

impl Mount {
    /// Mounts `img` with `args` on a new directory in `tmp`; waits until it is live.
    fn new(tmp: &Path, img: &Path, args: &[&str]) -> Mount {
        need_fuse();
        let dir = tmp.join(format!("mnt{}", unique()));
        std::fs::create_dir(&dir).expect("mkdir");
        let mut child = Command::new(qcow_bin())
            .arg("mount")
            .arg("--foreground")
            .args(args)
            .arg(img)
            .arg(&dir)
            .env("QCOW_MOUNT_READY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qcow mount");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr"));
        let mut stderr = String::new();
        loop {
            let mut l = String::new();
            let n = lines.read_line(&mut l).expect("read stderr");
            assert!(n > 0, "qcow mount ended before mounting: {stderr}");
            if l.trim_end() == READY {
                break;
            }
            stderr.push_str(&l);
        }
        // Keep draining so that later messages never block the server.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut lines, &mut std::io::sink());
        });
        Mount {
            dir,
            child: Some(child),
            stderr,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Unmounts and waits for the server to exit (its final flush done); its status.
    fn unmount(mut self) -> i32 {
        sh_ok("fusermount3", &[&"-u", &self.dir]);
        let st = self.child.take().expect("child").wait().expect("wait");
        assert!(!mounted(&self.dir));
        st.code().unwrap_or(-1)
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

fn patterned_raw(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let data = mixed(&mut Rng::new(seed), size);
    write(path, &data);
    data
}

#[test]
fn disk_equals_qemu_raw_for_plain_compressed_encrypted_overlay() {
    let t = tmp();
    let d = t.path();
    let raw = d.join("src.raw");
    patterned_raw(&raw, 8 << 20, 15);
    let plain = d.join("plain.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &plain]);
    let comp = d.join("comp.qcow");
    qemu_convert_compressed(&raw, &comp);
    let pw = d.join("pw");
    write(&pw, b"secret15");
    let enc = d.join("enc.qcow");
    qemu_convert_encrypted(&raw, &enc, &pw);
    let over = d.join("over.qcow");
    qemu_img_ok(&[
        &"create", &"-f", &"qcow", &"-b", &plain, &"-F", &"qcow", &over,
    ]);
    qemu_io_qcow(
        &over,
        &["write -P 0x5a 1M 3M".into(), "write -z 6M 64k".into()],
    );

    for (img, args, pre) in [
        (&plain, vec![], vec![]),
        (&comp, vec![], vec![]),
        (&over, vec![], vec![]),
    ] {
        let want = qemu_raw(img, &pre, d);
        let m = Mount::new(d, img, &args);
        assert_eq!(m.names(), ["disk"], "{}", img.display());
        assert_bytes_eq(&read(&m.path("disk")), &want, &img.display().to_string());
        assert_eq!(m.unmount(), 0);
    }
    let want = qemu_decrypted(&enc, &pw, d);
    let pws = pw.to_str().expect("utf-8");
    let m = Mount::new(d, &enc, &["--password-file", pws]);
    assert_bytes_eq(&read(&m.path("disk")), &want, "encrypted");
    assert_eq!(m.unmount(), 0);
}

/// `(number, start, size)` in sectors from `sfdisk -d`.
fn sfdisk_parts(img: &Path) -> Vec<(u32, u64, u64)> {
    let dump = sh_ok("sfdisk", &[&"-d", &img]);
    let name = img.to_str().expect("utf-8");
    let mut v = Vec::new();
    for l in dump.lines().filter(|l| l.starts_with(name)) {
        let (dev, rest) = l.split_once(':').expect("dump line");
        let num: u32 = dev.trim()[name.len()..].parse().expect("number");
        let field = |k: &str| -> u64 {
            rest.split(',')
                .find_map(|f| f.trim().strip_prefix(k))
                .map(|v| v.trim_start_matches('=').trim().parse().expect("value"))
                .expect("field")
        };
        v.push((num, field("start"), field("size")));
    }
    v
}

fn check_partitions(img_raw: &Path, d: &Path, expect: &[&str]) {
    let data = read(img_raw);
    let q = d.join(format!("parts{}.qcow", unique()));
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &img_raw, &q]);
    let m = Mount::new(d, &q, &[]);
    assert_eq!(m.names(), expect);
    assert!(
        m.stderr.is_empty(),
        "warnings on an honest table: {}",
        m.stderr
    );
    let parts = sfdisk_parts(img_raw);
    for (num, start, size) in parts {
        let name = format!("p{num}");
        if num >= 5
            || !matches!(
                data.get(446 + 16 * (num as usize - 1) + 4),
                Some(5 | 0xf | 0x85)
            )
        {
            let slice = &data[(start * 512) as usize..((start + size) * 512) as usize];
            assert_bytes_eq(&read(&m.path(&name)), slice, &name);
        }
    }
    assert_bytes_eq(&read(&m.path("disk")), &data, "disk");
    assert_eq!(m.unmount(), 0);
}

#[test]
fn partition_files_equal_their_slices_mbr_and_gpt() {
    let t = tmp();
    let d = t.path();
    let name = |n: &str| d.join(n).to_str().expect("utf-8").to_string();
    // MBR: two primaries, an extended one holding two logical partitions.
    let mbr = d.join("mbr.raw");
    patterned_raw(&mbr, 32 << 20, 1);
    let script = format!(
        "label: dos\nunit: sectors\n{0}1 : start=2048, size=8192, type=83\n\
         {0}2 : start=10240, size=30720, type=5\n{0}3 : start=40960, size=8192, type=83\n\
         {0}5 : start=12288, size=8192, type=83\n{0}6 : start=22528, size=16384, type=83\n",
        name("mbr.raw")
    );
    need("sfdisk");
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&mbr)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    assert!(c.wait().expect("sfdisk").success(), "sfdisk failed");
    check_partitions(&mbr, d, &["disk", "p1", "p3", "p5", "p6"]);

    // GPT: three partitions, the second slot left empty.
    let gpt = d.join("gpt.raw");
    patterned_raw(&gpt, 32 << 20, 2);
    sh_ok(
        "sgdisk",
        &[
            &"-n",
            &"1:2048:+4M",
            &"-n",
            &"3:0:+8M",
            &"-n",
            &"4:0:+1M",
            &gpt,
        ],
    );
    check_partitions(&gpt, d, &["disk", "p1", "p3", "p4"]);
}

#[test]
fn hostile_tables_show_disk_alone_or_the_valid_entries() {
    let t = tmp();
    let d = t.path();
    // MBR: p1 valid, p2 overlapping p1, p3 past the end, p4 an extended partition whose
    // EBR points at itself.
    let raw = d.join("lies.raw");
    let mut data = patterned_raw(&raw, 4 << 20, 3);
    let mut slot = |sector: usize, i: usize, kind: u8, lba: u32, len: u32| {
        let at = sector * 512 + 446 + 16 * i;
        data[at..at + 16].fill(0);
        data[at + 4] = kind;
        data[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
        data[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
        data[sector * 512 + 510] = 0x55;
        data[sector * 512 + 511] = 0xAA;
    };
    slot(0, 0, 0x83, 2048, 1024);
    slot(0, 1, 0x83, 2100, 100);
    slot(0, 2, 0x83, 7000, 0xFFFF_0000);
    slot(0, 3, 0x05, 4096, 2048);
    slot(4096, 0, 0x83, 16, 100);
    slot(4096, 1, 0x05, 0, 1); // relative 0 would be itself: ends the chain
    slot(4096, 1, 0x05, 1, 1);
    slot(4097, 0, 0, 0, 0);
    slot(4097, 1, 0x05, 0x80, 1); // 4224: past p5 (4112..4212)
    slot(4224, 1, 0x05, 1, 1); // back to 4097: a loop
    write(&raw, &data);
    let q = d.join("lies.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &q]);
    let m = Mount::new(d, &q, &[]);
    assert_eq!(m.names(), ["disk", "p1", "p5"]);
    assert!(m.stderr.contains("warning"), "no warning: {}", m.stderr);
    assert!(m.stderr.contains("loops"), "{}", m.stderr);
    assert_bytes_eq(&read(&m.path("p1")), &data[2048 * 512..3072 * 512], "p1");
    assert_eq!(m.unmount(), 0);

    // GPT with both tables' CRCs broken: the disk alone.
    let gpt = d.join("gpt.raw");
    patterned_raw(&gpt, 4 << 20, 4);
    sh_ok("sgdisk", &[&"-n", &"1:2048:+1M", &gpt]);
    let size = file_len(&gpt);
    patch(&gpt, 512 + 100 - 8, &[0xff]); // primary header: inside the CRC'd 92 bytes
    patch(&gpt, 512 + 40, &[0x99]);
    patch(&gpt, size - 512 + 40, &[0x99]); // backup header
    let q = d.join("gpt.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &gpt, &q]);
    let m = Mount::new(d, &q, &[]);
    assert_eq!(m.names(), ["disk"]);
    assert!(m.stderr.contains("CRC32"), "{}", m.stderr);
    assert_eq!(m.unmount(), 0);
}

#[test]
fn an_image_that_fails_to_open_is_refused_before_mounting() {
    need_fuse();
    let t = tmp();
    let d = t.path();
    let dir = d.join("mnt");
    std::fs::create_dir(&dir).expect("mkdir");
    let missing = d.join("missing.qcow");
    let o = qcow(&[&"mount", &missing, &dir]);
    assert_fails(&o, 1, "missing image");
    assert!(!mounted(&dir));

    let raw = d.join("r.raw");
    patterned_raw(&raw, 1 << 20, 5);
    let pw = d.join("pw");
    write(&pw, b"pw");
    let enc = d.join("enc.qcow");
    qemu_convert_encrypted(&raw, &enc, &pw);
    let o = qcow(&[&"mount", &enc, &dir]);
    let line = assert_fails(&o, 1, "encrypted without a password");
    assert!(line.contains("--password-file"), "{line}");
    assert!(!mounted(&dir));

    // A qcow2 image is refused by name; a mount point that is a file is refused.
    let q2 = d.join("x.qcow2");
    qemu_img_ok(&[&"create", &"-f", &"qcow2", &q2, &"1M"]);
    assert_fails(&qcow(&[&"mount", &q2, &dir]), 1, "qcow2");
    let plain = d.join("p.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &plain]);
    assert_fails(&qcow(&[&"mount", &plain, &raw]), 1, "file as mount point");
    assert!(!mounted(&dir));
}

#[test]
fn background_mount_returns_once_live_and_exits_on_unmount() {
    need_fuse();
    let t = tmp();
    let d = t.path();
    let raw = d.join("r.raw");
    let data = patterned_raw(&raw, 2 << 20, 6);
    let img = d.join("i.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &img]);
    let dir = d.join("mnt");
    std::fs::create_dir(&dir).expect("mkdir");
    // Without --foreground: returns 0 with the mount live, holding none of our pipes
    // (output() would wait for them).
    let o = qcow(&[&"mount", &img, &dir]);
    let guard = Mount {
        dir: dir.clone(),
        child: None,
        stderr: String::new(),
    };
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.is_empty() && o.stdout.is_empty(), "{}", o.stderr);
    assert!(mounted(&dir));
    assert_bytes_eq(&read(&dir.join("disk")), &data, "background mount");
    // Sizes are the virtual size; times are the image file's.
    let (meta, img_meta) = (
        std::fs::metadata(dir.join("disk")).expect("stat disk"),
        std::fs::metadata(&img).expect("stat image"),
    );
    assert_eq!(meta.len(), data.len() as u64);
    assert_eq!(meta.modified().ok(), img_meta.modified().ok());
    // Read-only: opening for writing fails with EROFS.
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("disk"))
        .expect_err("writable open of a read-only mount");
    assert_eq!(e.raw_os_error(), Some(30), "{e}"); // EROFS
                                                   // `umount` ends it as well as fusermount3 -u.
    sh_ok("umount", &[&dir]);
    assert!(!mounted(&dir));
    drop(guard);
}

/// The `len` bytes at `at` of the guest disk of `img`, as QEMU reads them.
fn qemu_slice(img: &Path, at: u64, len: u64, d: &Path) -> Vec<u8> {
    let all = qemu_raw(&img, &[], d);
    all[at as usize..(at + len) as usize].to_vec()
}

#[test]
fn rw_mount_carries_an_ext4_file_system() {
    for t in ["mkfs.ext4", "e2fsck", "debugfs", "sgdisk", "sfdisk"] {
        need(t);
    }
    let t = tmp();
    let d = t.path();
    let img = d.join("fs.qcow");
    qcow_ok(&[&"create", &img, &"64M"]);
    // A GPT made through the mount itself.
    let m = Mount::new(d, &img, &["--rw"]);
    sh_ok("sgdisk", &[&"-n", &"1:2048:+40M", &m.path("disk")]);
    assert_eq!(m.unmount(), 0);
    let m = Mount::new(d, &img, &["--rw"]);
    assert_eq!(m.names(), ["disk", "p1"]);
    let p1 = m.path("p1");
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let data = mixed(&mut Rng::new(100 + i), 300_000 * (i as usize + 1));
            (format!("f{i}"), data)
        })
        .collect();
    let src = d.join("src");
    std::fs::create_dir(&src).expect("mkdir");
    for (n, data) in &files {
        write(&src.join(n), data);
    }
    sh_ok("mkfs.ext4", &[&"-q", &"-F", &p1]);
    let lo = d.join("lo");
    std::fs::create_dir(&lo).expect("mkdir");
    let loop_ok = sh("mount", &[&"-o", &"loop", &p1, &lo]).code == 0;
    if loop_ok {
        for (n, _) in &files {
            std::fs::copy(src.join(n), lo.join(n)).expect("copy into the loop mount");
        }
        sh_ok("umount", &[&lo]);
    } else {
        eprintln!("no loop devices here: populating with mkfs.ext4 -d instead");
        sh_ok("mkfs.ext4", &[&"-q", &"-F", &"-d", &src, &p1]);
    }
    // Writes past the end and growth are refused.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&p1)
        .expect("open p1");
    let len = f.metadata().expect("stat").len();
    assert_eq!(len, 40 << 20);
    f.seek(SeekFrom::Start(len)).expect("seek");
    let e = f.write(b"x").expect_err("write at the end");
    assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
    let e = f.set_len(len + 1).expect_err("grow");
    assert_eq!(e.raw_os_error(), Some(27), "{e}"); // EFBIG
    f.sync_all().expect("fsync");
    drop(f);
    assert_eq!(m.unmount(), 0);

    let o = qcow(&[&"check", &img]);
    assert_eq!(o.code, 0, "qcow check: {}{}", o.text(), o.stderr);
    let part = d.join("p1.raw");
    write(&part, &qemu_slice(&img, 2048 * 512, 40 << 20, d));
    sh_ok("e2fsck", &[&"-fn", &part]);
    for (n, data) in &files {
        let out = d.join(format!("{n}.out"));
        let cmd = format!("dump /{n} {}", out.display());
        sh_ok("debugfs", &[&"-R", &cmd, &part]);
        assert_bytes_eq(&read(&out), data, n);
    }
}

#[test]
fn punch_hole_discards_and_seek_data_finds_data() {
    let t = tmp();
    let d = t.path();
    let img = d.join("h.qcow");
    qcow_ok(&[&"create", &img, &"8M"]);
    qemu_io_qcow(&img, &["write -P 0x11 1M 2M".into()]);
    let m = Mount::new(d, &img, &["--rw"]);
    let disk = m.path("disk");
    // SEEK_DATA / SEEK_HOLE through the kernel (python3's os.lseek).
    need("python3");
    let py = format!(
        "import os\nf=os.open('{}',os.O_RDONLY)\nprint(os.lseek(f,0,os.SEEK_DATA),os.lseek(f,(1<<20)+5,os.SEEK_HOLE))",
        disk.display()
    );
    let out = sh_ok("python3", &[&"-c", &py]);
    assert_eq!(out.trim(), format!("{} {}", 1 << 20, 3 << 20));
    sh_ok(
        "fallocate",
        &[
            &"-p",
            &"-o",
            &(1u64 << 20).to_string(),
            &"-l",
            &(1u64 << 20).to_string(),
            &disk,
        ],
    );
    let mut buf = vec![0u8; 3 << 20];
    std::fs::File::open(&disk)
        .expect("open")
        .read_exact(&mut buf)
        .expect("read");
    assert!(
        buf[1 << 20..2 << 20].iter().all(|&b| b == 0),
        "punched range"
    );
    assert!(
        buf[2 << 20..3 << 20].iter().all(|&b| b == 0x11),
        "kept range"
    );
    assert_eq!(m.unmount(), 0);
    let map = qemu_img_ok(&[&"map", &"--output=json", &img]);
    // 0..1M was never written, 1M..2M is punched: one extent, not present.
    assert!(
        map.contains(&format!(
            "\"start\": 0, \"length\": {}, \"depth\": 0, \"present\": false",
            2 << 20
        )),
        "{map}"
    );
    // qcow (version 1) has no refcounts: a discarded cluster inside the file is leaked
    // (exit 3, "no harm to data"), as after NBD's TRIM; never corrupt.
    let o = qcow(&[&"check", &img]);
    assert!(o.code == 0 || o.code == 3, "{}{}", o.text(), o.stderr);
    assert!(!o.text().contains("ERROR"), "{}", o.text());
}

#[test]
fn kill_9_while_writing_leaves_old_or_new_bytes() {
    let t = tmp();
    let d = t.path();
    let size = 16usize << 20;
    let raw = d.join("old.raw");
    let old = patterned_raw(&raw, size, 7);
    let img = d.join("k.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &img]);
    let new = mixed(&mut Rng::new(8), size);
    let mut m = Mount::new(d, &img, &["--rw"]);
    let disk = m.path("disk");
    let (tx, rx) = std::sync::mpsc::channel();
    let chunks = new.clone();
    let writer = std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&disk) else {
            return;
        };
        for (i, c) in chunks.chunks(256 << 10).enumerate() {
            if f.write_all(c).is_err() {
                return;
            }
            let _ = tx.send(i);
        }
    });
    // Kill once a few writes have been answered, with more in flight.
    for _ in 0..4 {
        rx.recv().expect("writes answered");
    }
    m.kill();
    let _ = writer.join();
    drop(m);
    let o = qcow(&[&"check", &img]);
    assert_eq!(
        o.code,
        0,
        "qcow check after kill -9: {}{}",
        o.text(),
        o.stderr
    );
    let got = qemu_raw(&img, &[], d);
    assert_eq!(got.len(), size);
    let mut newer = 0;
    for (i, ((g, o), n)) in got.iter().zip(&old).zip(&new).enumerate() {
        assert!(
            g == o || g == n,
            "byte {i}: {g:#x} is neither old {o:#x} nor new {n:#x}"
        );
        newer += usize::from(g == n && g != o);
    }
    assert!(newer > 0, "no new byte reached the image");
}

#[test]
fn damaged_l2_table_found_later_gives_eio_and_the_mount_stays_up() {
    let t = tmp();
    let d = t.path();
    let raw = d.join("r.raw");
    let data = patterned_raw(&raw, 4 << 20, 9);
    let img = d.join("dmg.qcow");
    qemu_img_ok(&[&"convert", &"-O", &"qcow", &raw, &img]);
    let m = Mount::new(d, &img, &[]);
    // Point the first entry of the second L2 table (guest 2 MiB: 4 KiB clusters, 512
    // entries a table) far past the end of the file; the mount read only sectors 0-1.
    let l1 = be64_at(&img, 40);
    let l2 = be64_at(&img, l1 + 8);
    assert_ne!(l2, 0, "the second L2 table exists");
    patch(&img, l2, &(1u64 << 50).to_be_bytes());
    let mut f = std::fs::File::open(m.path("disk")).expect("open");
    let mut buf = vec![0u8; 4096];
    f.seek(SeekFrom::Start(2 << 20)).expect("seek");
    let e = f
        .read_exact(&mut buf)
        .expect_err("read of the damaged cluster");
    assert_eq!(e.raw_os_error(), Some(5), "{e}"); // EIO
    f.seek(SeekFrom::Start(3 << 20)).expect("seek");
    f.read_exact(&mut buf).expect("read elsewhere");
    assert_bytes_eq(&buf, &data[3 << 20..(3 << 20) + 4096], "after EIO");
    drop(f);
    assert_eq!(m.unmount(), 0);
}
