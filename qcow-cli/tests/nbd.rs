//! `qcow nbd` against real clients (libnbd's nbdinfo/nbdcopy, qemu-img, qemu-io), side
//! by side with `qemu-nbd` on the same images, and against hostile clients speaking
//! raw bytes over a unix socket. Needs Debian's `libnbd-bin` and `qemu-utils`: a test
//! fails with a clear message when one is missing.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// Runs a client tool, panicking with the package to install when it is missing.
fn tool(prog: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Out {
    let o = Command::new(prog)
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                let pkg = if prog.starts_with("nbd") {
                    "libnbd-bin"
                } else {
                    "qemu-utils"
                };
                panic!("{prog} not found: install {pkg}")
            }
            _ => panic!("cannot run {prog}: {e}"),
        });
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn tool_ok(prog: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let o = tool(prog, args);
    assert_eq!(o.code, 0, "{prog} failed: {}{}", o.text(), o.stderr);
    o.text()
}

/// A server started with `--fork` (so it accepts as soon as the command returns),
/// stopped with SIGTERM when dropped.
struct Server {
    pid: String,
    socket: PathBuf,
}

impl Server {
    fn start(prog: &str, dir: &Path, tag: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Server {
        let socket = dir.join(format!("{tag}.sock"));
        let pid_file = dir.join(format!("{tag}.pid"));
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
        if prog == "qcow" {
            all.push(&"nbd");
        }
        all.extend_from_slice(&[&"--fork", &"-t", &"-k", &socket, &"--pid-file", &pid_file]);
        all.extend_from_slice(args);
        let prog = if prog == "qcow" { qcow_bin() } else { prog };
        tool_ok(prog, &all);
        let pid = String::from_utf8(read(&pid_file))
            .unwrap()
            .trim()
            .to_string();
        Server { pid, socket }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    fn kill(&self, sig: &str) -> bool {
        let _ = Command::new("kill").args([sig, &self.pid]).status();
        // Wait until it is gone (kill -0 fails).
        for _ in 0..500 {
            if !Command::new("kill")
                .args(["-0", &self.pid])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill("-TERM");
    }
}

/// A 64 MiB base with data, and an overlay on it with more data and a zeroed range.
fn chain(dir: &Path) -> PathBuf {
    let base = dir.join("base.qcow");
    let top = dir.join("top.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &base, &"64M"]);
    qemu_io_ok(&[
        &"-f",
        &"qcow",
        &"-c",
        &"write -P 0xab 1M 3M",
        &"-c",
        &"write -P 0x5c 40M 64k",
        &base,
    ]);
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"base.qcow",
        &"-F",
        &"qcow",
        &top,
    ]);
    qemu_io_ok(&[
        &"-f",
        &"qcow",
        &"-c",
        &"write -P 0x77 2M 2M",
        &"-c",
        &"write -P 0x01 50M 1M",
        &top,
    ]);
    top
}

/// Parses `nbdinfo --map` lines and merges adjacent extents of the same type.
fn merged_map(text: &str) -> Vec<(u64, u64, u32)> {
    let mut v: Vec<(u64, u64, u32)> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f.len() >= 3, "odd map line {l:?}");
        let (off, len, t) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        match v.last_mut() {
            Some(last) if last.2 == t && last.0 + last.1 == off => last.1 += len,
            _ => v.push((off, len, t)),
        }
    }
    assert!(!v.is_empty(), "empty map");
    v
}

/// `qemu-img map --output=json` entries reduced to (start, length, zero, data), merged.
fn merged_qemu_map(json: &str) -> Vec<(u64, u64, bool, bool)> {
    let mut v: Vec<(u64, u64, bool, bool)> = Vec::new();
    for l in json.lines().filter(|l| l.contains("\"start\"")) {
        let num = |k: &str| -> u64 {
            let i = l.find(&format!("\"{k}\": ")).unwrap() + k.len() + 4;
            l[i..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let (s, n) = (num("start"), num("length"));
        let (z, d) = (l.contains("\"zero\": true"), l.contains("\"data\": true"));
        match v.last_mut() {
            Some(last) if (last.2, last.3) == (z, d) && last.0 + last.1 == s => last.1 += n,
            _ => v.push((s, n, z, d)),
        }
    }
    assert!(!v.is_empty(), "empty map: {json}");
    v
}

#[test]
fn libnbd_tools_match_qemu_nbd() {
    let d = tmp();
    let top = chain(d.path());
    let q = Server::start("qcow", d.path(), "q", &[&"-r", &top]);
    let r = Server::start(
        "qemu-nbd",
        d.path(),
        "r",
        &[&"-r", &"-A", &"-f", &"qcow", &top],
    );
    let info = tool_ok("nbdinfo", &[&"--json", &q.uri()]);
    for want in [
        "\"is_read_only\": true",
        "\"export-size\": 67108864",
        "\"structured\": true",
        "base:allocation",
        "qemu:allocation-depth",
    ] {
        assert!(info.contains(want), "nbdinfo --json lacks {want}: {info}");
    }
    for map in ["--map", "--map=qemu:allocation-depth"] {
        let a = merged_map(&tool_ok("nbdinfo", &[&map, &q.uri()]));
        let b = merged_map(&tool_ok("nbdinfo", &[&map, &r.uri()]));
        assert_eq!(a, b, "nbdinfo {map}: qcow nbd vs qemu-nbd");
    }
    let depth = tool_ok("nbdinfo", &[&"--map=qemu:allocation-depth", &q.uri()]);
    assert!(depth.contains("backing depth 2"), "no base data in {depth}");
    assert_eq!(
        tool("nbdinfo", &[&"--can", &"write", &q.uri()]).code,
        2,
        "read-only export can write"
    );
    assert_eq!(tool("nbdinfo", &[&"--can", &"flush", &q.uri()]).code, 0);
    // Bytes: nbdcopy out of both, and qemu-img on the URIs.
    let (a, b) = (d.path().join("a.raw"), d.path().join("b.raw"));
    tool_ok("nbdcopy", &[&q.uri(), &a]);
    tool_ok("nbdcopy", &[&r.uri(), &b]);
    assert!(read(&a) == read(&b), "nbdcopy bytes differ");
    assert_qemu_identical(&top, &a, &[&"-F", &"raw"], "nbdcopy out of qcow nbd");
    let (code, msg) = qemu_compare(&q.uri(), &top, &[&"-f", &"raw", &"-F", &"qcow"]);
    assert_eq!(code, 0, "qemu-img compare on the URI: {msg}");
    let c = d.path().join("c.qcow");
    qemu_img_ok(&[&"convert", &"-f", &"raw", &"-O", &"qcow", &q.uri(), &c]);
    assert_qemu_identical(&top, &c, &[], "qemu-img convert from the URI");
    let ma = merged_qemu_map(&qemu_img_ok(&[
        &"map",
        &"--output=json",
        &"-f",
        &"raw",
        &q.uri(),
    ]));
    let mb = merged_qemu_map(&qemu_img_ok(&[
        &"map",
        &"--output=json",
        &"-f",
        &"raw",
        &r.uri(),
    ]));
    assert_eq!(ma, mb, "qemu-img map: qcow nbd vs qemu-nbd");
    assert!(
        ma.iter().any(|e| e.2) && ma.iter().any(|e| e.3),
        "map without holes or data: {ma:?}"
    );
}

#[test]
fn socket_activation_and_errors_before_serving() {
    let d = tmp();
    let top = chain(d.path());
    let size = tool_ok(
        "nbdinfo",
        &[
            &"--size",
            &"--",
            &"[",
            &qcow_bin(),
            &"nbd",
            &"-r",
            &top,
            &"]",
        ],
    );
    assert_eq!(size.trim(), "67108864");
    let missing = d.path().join("missing.qcow");
    let line = qcow_err(
        &[&"nbd", &"-r", &"-k", &d.path().join("m.sock"), &missing],
        1,
    );
    assert!(line.contains("missing.qcow"), "{line}");
    let line = qcow_err(
        &[
            &"nbd",
            &"--fork",
            &"-r",
            &"-k",
            &d.path().join("m.sock"),
            &missing,
        ],
        1,
    );
    assert!(line.contains("missing.qcow"), "{line}");
}

/// Applies qemu-io commands to a qcow export and to a raw copy of its content; both
/// must end equal, and the image must check clean (leaks allowed after discards).
#[test]
fn writes_through_the_export() {
    let d = tmp();
    let top = chain(d.path());
    let expect = d.path().join("expect.raw");
    qemu_img_ok(&[&"convert", &"-f", &"qcow", &"-O", &"raw", &top, &expect]);
    let cmds = [
        "write -P 0x42 8M 1M",
        "write -P 0x43 2050k 4k",
        "write -z 1M 64k",
        "discard 40M 64k",
        "write -z 50M 1M",
        "flush",
    ];
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-f", &"raw"];
    for c in &cmds {
        args.push(&"-c");
        args.push(c);
    }
    {
        let s = Server::start("qcow", d.path(), "w", &[&top]);
        let uri = s.uri();
        let mut a = args.clone();
        a.push(&uri);
        qemu_io_ok(&a);
        // nbdcopy into the export, too: 1 MiB of pattern at 20 MiB.
        let src = d.path().join("src.raw");
        write(&src, &vec![0x99u8; 1 << 20]);
        let o = tool("nbdcopy", &[&src, &uri]);
        assert_eq!(o.code, 0, "nbdcopy into the export: {}", o.stderr);
    }
    let mut a = args.clone();
    a.push(&expect);
    qemu_io_ok(&a);
    let mut e = read(&expect);
    e[..1 << 20].copy_from_slice(&vec![0x99u8; 1 << 20]);
    write(&expect, &e);
    let o = qcow(&[&"check", &top]);
    assert!(
        o.code == 0 || o.code == 3,
        "check after writes: {}{}",
        o.text(),
        o.stderr
    );
    assert_qemu_identical(
        &top,
        &expect,
        &[&"-F", &"raw"],
        "after writes through the export",
    );
}

/// A kill -9 of the server while nbdcopy streams writes leaves every byte old (zero)
/// or new, and an image that checks without corruption.
#[test]
fn kill_during_writes_leaves_old_or_new() {
    let d = tmp();
    let img = d.path().join("k.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &img, &"64M"]);
    let src = d.path().join("src.raw");
    write(&src, &vec![0x22u8; 64 << 20]);
    let s = Server::start("qcow", d.path(), "k", &[&img]);
    let start = file_len(&img);
    let mut copy = Command::new("nbdcopy")
        .args([src.as_os_str(), s.uri().as_ref()])
        .stderr(Stdio::null())
        .spawn()
        .expect("nbdcopy not found: install libnbd-bin");
    // Kill once the writes are under way (the image has grown).
    while file_len(&img) <= start + (1 << 20) {
        if copy.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(s.kill("-KILL"), "the server outlived kill -9");
    let _ = copy.wait();
    let o = qcow(&[&"check", &img]);
    assert!(
        o.code == 0 || o.code == 3,
        "check after kill -9: {}{}",
        o.text(),
        o.stderr
    );
    let out = d.path().join("after.raw");
    qemu_img_ok(&[&"convert", &"-f", &"qcow", &"-O", &"raw", &img, &out]);
    let bytes = read(&out);
    let bad = bytes.iter().position(|&b| b != 0 && b != 0x22);
    assert_eq!(bad, None, "a byte neither old nor new");
    assert!(bytes.contains(&0x22), "nothing was written before the kill");
}

/// A raw NBD client: fixed newstyle, NO_ZEROES, GO on export "" (simple replies).
struct Raw(UnixStream);

impl Raw {
    fn connect(sock: &Path) -> Raw {
        let mut s = UnixStream::connect(sock).expect("connect");
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        Raw(s)
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut b = b"IHAVEOPT".to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.0.write_all(&b).unwrap();
    }

    /// Reads option replies until a final one; returns the final reply type.
    fn reply(&mut self) -> u32 {
        loop {
            let mut h = [0u8; 20];
            self.0.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut d = vec![0u8; len as usize];
            self.0.read_exact(&mut d).unwrap();
            if kind == 1 || kind >= 0x8000_0000 {
                return kind;
            }
        }
    }

    fn go(sock: &Path) -> Raw {
        let mut c = Raw::connect(sock);
        c.option(7, &[0, 0, 0, 0, 0, 0]);
        assert_eq!(c.reply(), 1, "GO not acknowledged");
        c
    }

    fn request(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) {
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.0.write_all(&b).unwrap();
    }

    /// A simple reply's error (its data, for a read, is read and dropped).
    fn simple(&mut self, data: usize) -> u32 {
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(&h[..4], &0x6744_6698u32.to_be_bytes());
        let e = u32::from_be_bytes(h[4..8].try_into().unwrap());
        if e == 0 {
            let mut d = vec![0u8; data];
            self.0.read_exact(&mut d).unwrap();
        }
        e
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn hostile_clients() {
    let d = tmp();
    let img = d.path().join("h.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &img, &"1M"]);
    let ro = Server::start("qcow", d.path(), "ro", &[&"-r", &"-e", &"4", &img]);
    let rw = Server::start("qcow", d.path(), "rw", &[&"-e", &"4", &img]);
    // A client that connects and says nothing holds no one else up.
    let _silent = UnixStream::connect(&ro.socket).unwrap();
    // An option claiming 4 GiB of data: disconnected.
    let mut c = Raw::connect(&ro.socket);
    let mut b = b"IHAVEOPT".to_vec();
    b.extend_from_slice(&6u32.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    c.0.write_all(&b).unwrap();
    assert!(c.closed(), "a 4 GiB option did not close the connection");
    // Unknown option, unknown export.
    let mut c = Raw::connect(&ro.socket);
    c.option(99, &[]);
    assert_eq!(c.reply(), 0x8000_0001, "unknown option");
    c.option(7, &[0, 0, 0, 1, b'x', 0, 0]);
    assert_eq!(c.reply(), 0x8000_0006, "unknown export");
    // Transmission errors, read-only export.
    let mut c = Raw::go(&ro.socket);
    c.request(0, 0, 4096, &[]);
    assert_eq!(c.simple(4096), 0, "read");
    c.request(0, 1 << 20, 1, &[]);
    assert_eq!(c.simple(1), 22, "read past the end: EINVAL");
    c.request(0, u64::MAX, 2, &[]);
    assert_eq!(c.simple(2), 22, "read at 2^64-1: EINVAL");
    c.request(0, 0, 64 << 20, &[]);
    assert_eq!(c.simple(0), 22, "64 MiB read: EINVAL");
    c.request(1, 0, 512, &[1; 512]);
    assert_eq!(c.simple(0), 1, "write to a read-only export: EPERM");
    c.request(4, 0, 512, &[]);
    assert_eq!(c.simple(0), 1, "trim on a read-only export: EPERM");
    c.request(42, 0, 0, &[]);
    assert_eq!(c.simple(0), 22, "unknown command: EINVAL");
    c.request(7, 0, 512, &[]);
    assert_eq!(c.simple(0), 22, "block status without a context: EINVAL");
    // Writable export: past the end, ENOSPC; then a client vanishing mid-payload.
    let mut w = Raw::go(&rw.socket);
    w.request(1, (1 << 20) - 256, 512, &[3; 512]);
    assert_eq!(w.simple(0), 28, "write past the end: ENOSPC");
    w.request(1, 0, 512, &[3; 512]);
    assert_eq!(w.simple(0), 0, "write");
    w.request(1, 4096, 1 << 20, &[4; 1000]);
    drop(w);
    // A write whose payload is 4 GiB: EINVAL and a disconnect.
    let mut w = Raw::go(&rw.socket);
    w.request(1, 0, u32::MAX, &[]);
    assert_eq!(w.simple(0), 22, "4 GiB write: EINVAL");
    assert!(w.closed(), "4 GiB write did not disconnect");
    // The servers still serve.
    let mut c = Raw::go(&rw.socket);
    c.request(0, 0, 512, &[]);
    let mut h = [0u8; 16];
    c.0.read_exact(&mut h).unwrap();
    let mut data = [0u8; 512];
    c.0.read_exact(&mut data).unwrap();
    assert_eq!(data, [3u8; 512], "data written before");
    c.request(2, 0, 0, &[]);
    assert_eq!(
        tool_ok("nbdinfo", &[&"--size", &ro.uri()]).trim(),
        "1048576"
    );
}

/// libnbd's `nbdfuse` mounting the export: its file reads as qemu-img reads the chain.
#[test]
fn nbdfuse_mounts_the_export() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: nbdfuse needs FUSE (install fuse3)"
    );
    let d = tmp();
    let top = chain(d.path());
    let q = Server::start("qcow", d.path(), "q", &[&"-r", &top]);
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let pid = d.path().join("nbdfuse.pid");
    let mut child = Command::new("nbdfuse")
        .args([&"-r" as &dyn AsRef<std::ffi::OsStr>, &"-P", &pid, &mnt])
        .arg("--unix")
        .arg(&q.socket)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("nbdfuse not found: install libnbd-bin ({e})"));
    for _ in 0..500 {
        if pid.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let got = std::fs::read(mnt.join("nbd"));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = child.wait();
    let got = got.expect("read the nbdfuse file");
    let want = qemu_raw(&top, &[], d.path());
    assert!(
        got == want,
        "nbdfuse's file differs from qemu-img's raw conversion"
    );
}

/// TCP on 127.0.0.1 and an encrypted image with `--password-file`: qemu-img reads the
/// export as QEMU decrypts the image.
#[test]
fn tcp_export_of_an_encrypted_image() {
    let d = tmp();
    let pw = d.path().join("pw");
    write(&pw, b"nbd-secret");
    let plain = d.path().join("plain.raw");
    let mut data = vec![0u8; 4 << 20];
    for (i, b) in data.iter_mut().enumerate().skip(1 << 20).take(1 << 20) {
        *b = (i % 251) as u8;
    }
    write(&plain, &data);
    let enc = d.path().join("enc.qcow");
    qemu_convert_encrypted(&plain, &enc, &pw);
    // A free port: bind port 0, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let pid_file = d.path().join("tcp.pid");
    tool_ok(
        qcow_bin(),
        &[
            &"nbd",
            &"--fork",
            &"-r",
            &"-p",
            &port,
            &"--pid-file",
            &pid_file,
            &"--password-file",
            &pw,
            &enc,
        ],
    );
    let uri = format!("nbd://127.0.0.1:{port}");
    let got = qemu_raw(&uri, &[&"-f", &"raw"], d.path());
    let pid = String::from_utf8(read(&pid_file)).unwrap();
    let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
    assert!(got == data, "the TCP export differs from the plaintext");
    assert!(
        got == qemu_decrypted(&enc, &pw, d.path()),
        "differs from QEMU's decryption"
    );
    // Without the password: refused before serving, one line.
    let o = tool(qcow_bin(), &[&"nbd", &"-r", &"-p", &port, &enc]);
    assert_eq!(o.code, 1, "served an encrypted image without its password");
    assert!(
        o.stderr.starts_with("qcow: ") && o.stderr.contains("password"),
        "{}",
        o.stderr
    );
}
