//! Every verb of `qcow` on every hostile image of `qcow-core/tests/hostile/cases.rs`
//! (and on a few hostile backing chains): the exit status is one the contract allows,
//! an error is a `qcow: ` line, and there is never a panic (exit 101), a signal or a
//! hang. Every run is under an address-space limit (`ulimit -v`, 1 GiB), and the
//! reading verbs run again under 64 MiB on the cases whose header asks for a 2 GiB L1
//! table, a 4 GiB backing name or an overflowing size: nothing of the kind is
//! allocated.

#[allow(dead_code)] // shared with qcow-core's test, which uses all of it
#[path = "../../qcow-core/tests/hostile/cases.rs"]
mod cases;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QCOW: &str = env!("CARGO_BIN_EXE_qcow");
/// Address space for one run, in KiB.
const LIMIT_KB: u64 = 1 << 20;
/// Address space for the reading verbs on the worst cases, in KiB.
const TIGHT_KB: u64 = 64 << 10;
const TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stderr: String,
}

/// Runs `qcow ARGS` under `ulimit -v LIMIT` (KiB) with `stdin`, killing it after
/// [`TIMEOUT`].
fn qcow(args: &[&str], stdin: &[u8], dir: &Path, limit: u64) -> Run {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {limit}; exec \"$0\" \"$@\""))
        .arg(QCOW)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sh");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut err_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("qcow {} hung (killed after {TIMEOUT:?})", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = writer.join();
    let stderr = reader.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        panic!("qcow {} died of signal {sig}: {stderr}", args.join(" "));
    }
    Run {
        code: status.code().unwrap(),
        stderr,
    }
}

/// Runs a verb and checks its status against the contract: `ok` lists the statuses
/// that are not errors; 1 (2 for `compare`) is an error and needs a `qcow: ` line.
fn verb(args: &[&str], stdin: &[u8], dir: &Path, ok: &[i32]) -> i32 {
    verb_in(LIMIT_KB, args, stdin, dir, ok)
}

/// [`verb`] under an address-space limit of `limit` KiB.
fn verb_in(limit: u64, args: &[&str], stdin: &[u8], dir: &Path, ok: &[i32]) -> i32 {
    let r = qcow(args, stdin, dir, limit);
    let what = format!("qcow {}", args.join(" "));
    assert_ne!(r.code, 101, "{what} panicked: {}", r.stderr);
    let error_code = if args[0] == "compare" { 2 } else { 1 };
    if r.code == error_code {
        assert!(
            r.stderr.lines().any(|l| l.starts_with("qcow: ")),
            "{what}: exit {} without a `qcow: ` line: {:?}",
            r.code,
            r.stderr
        );
    } else {
        assert!(
            ok.contains(&r.code),
            "{what}: exit {} ({})",
            r.code,
            r.stderr
        );
    }
    r.code
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

fn copy_of(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(src, &p).unwrap();
    p
}

/// Every verb on `file`; the verbs that write get a copy.
fn every_verb(file: &Path, dir: &Path, valid: &Path) {
    let f = file.to_str().unwrap();
    let v = valid.to_str().unwrap();
    let out = |ext: &str| dir.join(format!("out.{ext}")).to_str().unwrap().to_string();
    let (raw, qc) = (out("raw"), out("qcow"));
    for args in [
        vec!["info", f],
        vec!["info", "--output=json", f],
        vec!["read", f, "0", "4k"],
        vec!["read", f, "511", "1k"],
        vec!["read", "--password-file", "pw", f, "0", "4k"],
        vec!["map", f],
        vec!["map", "--output=json", f],
        vec!["convert", "-O", "raw", f, &raw],
        vec!["convert", "-O", "qcow", "-c", f, &qc],
    ] {
        verb(&args, b"", dir, &[0]);
    }
    verb(&["check", f], b"", dir, &[0, 2, 3]);
    verb(&["check", "--output=json", f], b"", dir, &[0, 2, 3]);
    verb(&["compare", f, f], b"", dir, &[0, 1]);
    verb(&["compare", f, v], b"", dir, &[0, 1]);
    let data = vec![0x5au8; 1536];
    let cases: [(&str, Vec<&str>, &[u8]); 6] = [
        ("w.qcow", vec!["write", "W", "0"], &data),
        ("wc.qcow", vec!["write", "-c", "W", "512"], &data),
        ("commit.qcow", vec!["commit", "W"], b""),
        ("resize.qcow", vec!["resize", "W", "+1M"], b""),
        ("rebase.qcow", vec!["rebase", "-u", "-b", "", "W"], b""),
        ("rebase2.qcow", vec!["rebase", "-b", "base.img", "W"], b""),
    ];
    for (name, args, stdin) in cases {
        let copy = copy_of(file, dir, name);
        let c = copy.to_str().unwrap();
        let args: Vec<&str> = args.iter().map(|a| if *a == "W" { c } else { a }).collect();
        verb(&args, stdin, dir, &[0]);
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // The backing file the overlay cases name, and a password file.
    std::fs::write(dir.path().join("base.img"), vec![0x11u8; 1 << 20]).unwrap();
    std::fs::write(dir.path().join("pw"), cases::SECRET).unwrap();
    let valid = dir.path().join("valid.qcow");
    std::fs::write(&valid, cases::base(12, 9, 1 << 20, false).bytes).unwrap();
    (dir, valid)
}

#[test]
fn every_verb_on_every_hostile_image() {
    let (dir, valid) = setup();
    let all = cases::all();
    let start = Instant::now();
    for case in &all {
        let file = dir.path().join(format!("{}.qcow", case.name));
        std::fs::write(&file, &case.image).unwrap();
        every_verb(&file, dir.path(), &valid);
        if case.worst {
            let f = file.to_str().unwrap();
            let v = valid.to_str().unwrap();
            for args in [
                vec!["info", f],
                vec!["read", f, "0", "4k"],
                vec!["map", f],
                vec!["check", f],
                vec!["compare", f, v],
            ] {
                let code = verb_in(TIGHT_KB, &args, b"", dir.path(), &[0, 1, 2, 3]);
                assert_ne!(code, 0, "{args:?}");
            }
        }
        // Opening refused in the core is an error for every reading verb.
        if let cases::Expect::Open(_) = case.expect {
            let f = file.to_str().unwrap();
            assert_eq!(verb(&["info", "-f", "qcow", f], b"", dir.path(), &[0]), 1);
            assert_eq!(verb(&["map", "-f", "qcow", f], b"", dir.path(), &[0]), 1);
        }
    }
    eprintln!("{} cases in {:?}", all.len(), start.elapsed());
}

/// Writes an overlay of `base` naming `backing`.
fn overlay(path: &Path, backing: &str) {
    let mut io = qcow_core::io::MemIo::default();
    let opts = qcow_core::write::CreateOptions::new(1 << 20).backing(Some(backing.as_bytes()));
    qcow_core::write::create(&mut io, &opts).unwrap();
    std::fs::write(path, io.0).unwrap();
}

#[test]
fn hostile_backing_chains() {
    let (dir, valid) = setup();
    let d = dir.path();
    // An image that is its own backing file, and a loop of two.
    overlay(&d.join("self.qcow"), "self.qcow");
    overlay(&d.join("a.qcow"), "b.qcow");
    overlay(&d.join("b.qcow"), "a.qcow");
    // A chain deeper than the limit (64).
    for i in 0..70 {
        overlay(
            &d.join(format!("deep{i}.qcow")),
            &format!("deep{}.qcow", i + 1),
        );
    }
    std::fs::write(d.join("deep70.qcow"), vec![0u8; 4096]).unwrap();
    // Backing files that are missing, a directory, a FIFO, a character device, and a
    // name holding a NUL byte or 1023 bytes.
    overlay(&d.join("missing.qcow"), "no-such-file");
    std::fs::create_dir(d.join("subdir")).unwrap();
    overlay(&d.join("dir.qcow"), "subdir");
    mkfifo(&d.join("fifo"));
    overlay(&d.join("fifo.qcow"), "fifo");
    overlay(&d.join("tty.qcow"), "/dev/tty");
    overlay(&d.join("nul.qcow"), "a\0b");
    overlay(&d.join("long.qcow"), &"x".repeat(1023));
    // The deepest chain accepted (64 overlays over a raw file) reads, maps and
    // converts within the limits: the recursion through the layers is bounded.
    let top = d.join("deep6.qcow");
    let t = top.to_str().unwrap();
    let raw = d.join("deep.raw");
    let r = raw.to_str().unwrap();
    for args in [
        vec!["read", t, "0", "1M"],
        vec!["map", "--output=json", t],
        vec!["convert", "-O", "raw", t, r],
        vec!["compare", t, r],
    ] {
        assert_eq!(verb(&args, b"", d, &[0]), 0, "{args:?}");
    }
    assert_eq!(verb(&["read", "deep5.qcow", "0", "512"], b"", d, &[0]), 1);
    for name in [
        "self", "a", "deep0", "missing", "dir", "fifo", "tty", "nul", "long",
    ] {
        let file = d.join(format!("{name}.qcow"));
        every_verb(&file, d, &valid);
        let f = file.to_str().unwrap();
        // Everything that needs the chain fails with one line.
        assert_eq!(verb(&["read", f, "0", "512"], b"", d, &[0]), 1, "{name}");
    }
}

/// A 40 KiB image whose 4096 L1 entries all name one L2 table of alternating plain
/// and unallocated entries (QEMU reads it): 262144 extents. `map` streams them, so it
/// runs in a fixed amount of memory however many there are.
#[test]
fn many_extents_from_a_small_file() {
    let (dir, _) = setup();
    let d = dir.path();
    let b = cases::base(9, 6, 4096 << 15, false);
    let mut img = b.bytes.clone();
    for i in 0..4096u64 {
        cases::put(&mut img, b.l1 + 8 * i, &b.l2.to_be_bytes());
    }
    for j in 0..64u64 {
        let e = if j % 2 == 0 { b.data0 } else { 0 };
        cases::put(&mut img, b.l2 + 8 * j, &e.to_be_bytes());
    }
    assert!(img.len() < 40 << 10);
    let file = d.join("shared.qcow");
    std::fs::write(&file, &img).unwrap();
    let f = file.to_str().unwrap();
    for args in [vec!["map", "--output=json", f], vec!["map", f]] {
        assert_eq!(verb_in(TIGHT_KB, &args, b"", d, &[0]), 0, "{args:?}");
    }
    assert_eq!(verb(&["info", f], b"", d, &[0]), 0);
    assert_eq!(verb(&["read", f, "0", "1M"], b"", d, &[0]), 0);
    // Every L1 entry after the first names a table already named: corruptions.
    assert_eq!(verb(&["check", f], b"", d, &[0, 2, 3]), 2);
}

/// A FIFO or a socket named as the image itself: opening a FIFO waits for a writer
/// forever (`qemu-img info FIFO` hangs), and neither can be read at offsets. Every verb
/// refuses both at once, in one line.
#[test]
fn a_fifo_or_socket_as_the_image_is_refused_without_hanging() {
    let (dir, valid) = setup();
    let d = dir.path();
    let fifo = d.join("image.fifo");
    mkfifo(&fifo);
    let sock = d.join("image.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    for (file, what) in [(&fifo, "FIFO"), (&sock, "socket")] {
        let f = file.to_str().unwrap();
        for args in [
            vec!["info", f],
            vec!["info", "-f", "raw", f],
            vec!["read", f, "0", "1"],
            vec!["map", f],
            vec!["check", f],
            vec!["convert", "-O", "raw", f, "out.raw"],
            vec!["compare", f, valid.to_str().unwrap()],
            vec!["resize", f, "2M"],
            vec!["commit", f],
            vec!["nbd", "-r", "-k", "x.sock", f],
            vec!["mount", f, "."],
        ] {
            let r = qcow(&args, b"", d, LIMIT_KB);
            let want = if args[0] == "compare" { 2 } else { 1 };
            assert_eq!(r.code, want, "{what}: {args:?}: {}", r.stderr);
            // open(2) of a socket fails by itself (ENXIO); a FIFO is caught by us.
            let why = if what == "FIFO" {
                "FIFO or socket is not a disk image"
            } else {
                "No such device or address"
            };
            assert!(
                r.stderr.starts_with(&format!("qcow: {f}: ")) && r.stderr.contains(why),
                "{what}: {args:?}: {}",
                r.stderr
            );
        }
    }
}
