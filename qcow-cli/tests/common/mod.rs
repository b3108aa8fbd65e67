//! What the reference test suites share: running `qcow`, `qemu-img` and `qemu-io`,
//! temporary directories, deterministic data, a small JSON reader, and images made
//! with the library.
//!
//! A test that needs QEMU fails (never passes silently) when QEMU is not installed.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use qcow_core::write::{create, CreateOptions};
use qcow_std::file::FileIo;

/// Arguments of any mix of strings and paths: `&[&"read", &path, &"0"]`.
pub type Args<'a> = [&'a dyn AsRef<OsStr>];

/// What a process did.
#[derive(Debug)]
pub struct Out {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
}

impl Out {
    /// Standard output as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn describe(prog: &str, args: &Args) -> String {
    let mut s = prog.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

fn run_prog(prog: &str, args: &Args, stdin: Option<&[u8]>, cwd: Option<&Path>) -> Out {
    let mut cmd = Command::new(prog);
    for a in args {
        cmd.arg(a.as_ref());
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && prog.starts_with("qemu") => {
            panic!("{prog} not found: install qemu-utils")
        }
        Err(e) => panic!("cannot run {}: {e}", describe(prog, args)),
    };
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            // The child may exit early (an error): a broken pipe is its business.
            let _ = pipe.write_all(&data);
        })
    });
    let o = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{}: {e}", describe(prog, args)));
    if let Some(w) = writer {
        w.join().expect("stdin writer");
    }
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The `qcow` binary under test.
pub fn qcow_bin() -> &'static str {
    env!("CARGO_BIN_EXE_qcow")
}

/// Runs `qcow ARGS`.
pub fn qcow(args: &Args) -> Out {
    run_prog(qcow_bin(), args, None, None)
}

/// Runs `qcow ARGS` in directory `cwd`.
pub fn qcow_in(cwd: &Path, args: &Args) -> Out {
    run_prog(qcow_bin(), args, None, Some(cwd))
}

/// Runs `qcow ARGS` with the regular file `stdin` as its standard input (`< FILE`).
pub fn qcow_stdin_file(args: &Args, stdin: &Path) -> Out {
    let mut cmd = Command::new(qcow_bin());
    for a in args {
        cmd.arg(a.as_ref());
    }
    let f = std::fs::File::open(stdin).expect("open stdin file");
    let o = cmd.stdin(f).output().expect("run qcow");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `qcow ARGS` with `stdin` as its standard input.
pub fn qcow_stdin(args: &Args, stdin: &[u8]) -> Out {
    run_prog(qcow_bin(), args, Some(stdin), None)
}

/// Runs `qcow ARGS`, asserts exit 0, returns its standard output.
pub fn qcow_ok(args: &Args) -> Vec<u8> {
    let o = qcow(args);
    assert_eq!(o.code, 0, "{} failed: {}", describe("qcow", args), o.stderr);
    o.stdout
}

/// Asserts that `o` is a failure with exit `code` and exactly one stderr line starting
/// `qcow: `; returns that line.
pub fn assert_fails(o: &Out, code: i32, what: &str) -> String {
    assert_eq!(
        o.code,
        code,
        "{what}: expected exit {code}, got {} (stdout {:?}, stderr {:?})",
        o.code,
        o.text(),
        o.stderr
    );
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: want one stderr line, got {:?}",
        o.stderr
    );
    assert!(
        lines[0].starts_with("qcow: "),
        "{what}: stderr does not start with 'qcow: ': {:?}",
        o.stderr
    );
    lines[0].to_string()
}

/// Runs `qcow ARGS`, asserts exit `code` and one `qcow: ` stderr line; returns it.
pub fn qcow_err(args: &Args, code: i32) -> String {
    let o = qcow(args);
    assert_fails(&o, code, &describe("qcow", args))
}

/// Runs `qemu-img ARGS` (panics when qemu-img is not installed).
pub fn qemu_img(args: &Args) -> Out {
    run_prog("qemu-img", args, None, None)
}

/// Runs `qemu-img ARGS`, asserts success, returns its standard output.
pub fn qemu_img_ok(args: &Args) -> String {
    let o = qemu_img(args);
    assert_eq!(
        o.code,
        0,
        "{} failed: {}{}",
        describe("qemu-img", args),
        o.text(),
        o.stderr
    );
    o.text()
}

/// `qemu-img convert -c -O qcow SRC DST`. QEMU 10 writes the image completely but
/// exits 1 without a message (its final zero-length "EOF" compressed write is refused
/// by the qcow driver): accept exactly that, and prove the output complete with
/// `qemu-img compare`.
pub fn qemu_convert_compressed(src: &Path, dst: &Path) {
    let o = qemu_img(&[&"convert", &"-c", &"-O", &"qcow", &src, &dst]);
    assert!(
        o.code == 0 || (o.code == 1 && o.stderr.is_empty() && o.stdout.is_empty()),
        "qemu-img convert -c failed: {}",
        o.stderr
    );
    assert_qemu_identical(&src, &dst, &[], "qemu-img convert -c output");
}

/// Runs `qemu-io ARGS`, asserts success (every command succeeded).
pub fn qemu_io_ok(args: &Args) -> String {
    let o = run_prog("qemu-io", args, None, None);
    let text = o.text();
    assert!(
        o.code == 0
            && !text.to_lowercase().contains("fail")
            && !text.to_lowercase().contains("error")
            && o.stderr.is_empty(),
        "{} failed (exit {}): {text}{}",
        describe("qemu-io", args),
        o.code,
        o.stderr
    );
    text
}

/// `qemu-io -f qcow -c CMD... IMG`.
pub fn qemu_io_qcow(img: &Path, cmds: &[String]) {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"-f", &"qcow"];
    for c in cmds {
        args.push(&"-c");
        args.push(c);
    }
    args.push(&img);
    qemu_io_ok(&args);
}

/// The guest content of `img` as `qemu-img convert -O raw` reads it. `pre` goes
/// before the image argument (for example `-f qcow`, or `--object ... --image-opts`).
pub fn qemu_raw(img: &dyn AsRef<OsStr>, pre: &Args, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("qemu-raw-{}.raw", unique()));
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"convert"];
    args.extend_from_slice(pre);
    args.extend_from_slice(&[&"-O", &"raw", img, &out]);
    qemu_img_ok(&args);
    let data = read(&out);
    std::fs::remove_file(&out).expect("remove");
    data
}

/// `qemu-img compare A B` (formats probed unless given in `pre`): (exit, stdout).
pub fn qemu_compare(a: &dyn AsRef<OsStr>, b: &dyn AsRef<OsStr>, pre: &Args) -> (i32, String) {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"compare"];
    args.extend_from_slice(pre);
    args.extend_from_slice(&[a, b]);
    let o = qemu_img(&args);
    (o.code, format!("{}{}", o.text(), o.stderr))
}

/// Asserts `qemu-img compare` finds `a` and `b` identical.
pub fn assert_qemu_identical(a: &dyn AsRef<OsStr>, b: &dyn AsRef<OsStr>, pre: &Args, what: &str) {
    let (code, text) = qemu_compare(a, b, pre);
    assert_eq!(code, 0, "{what}: qemu-img compare: {text}");
}

/// A number unique in this process, for file names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("qcow-test-")
        .tempdir()
        .expect("tempdir")
}

/// A file's bytes.
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Writes a file.
pub fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()))
}

/// The length of a file.
pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .len()
}

/// Bytes the file really occupies on disk.
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .blocks()
        * 512
}

/// Overwrites bytes of a file in place.
pub fn patch(p: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("open for patch");
    f.write_all_at(bytes, at).expect("patch");
}

/// Reads `len` bytes of a file at `at`.
pub fn read_at(p: &Path, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).expect("open");
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at).expect("read_at");
    b
}

/// A big-endian u64 of a file.
pub fn be64_at(p: &Path, at: u64) -> u64 {
    u64::from_be_bytes(read_at(p, at, 8).try_into().expect("8 bytes"))
}

/// Creates a qcow image with the library, with an explicit geometry.
pub fn lib_create(
    p: &Path,
    size: u64,
    cluster_bits: Option<u8>,
    l2_bits: Option<u8>,
    backing: Option<&str>,
) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .expect("create image file");
    let mut io = FileIo::new(f);
    let opts = CreateOptions::new(size)
        .backing(backing.map(str::as_bytes))
        .cluster_bits(cluster_bits)
        .l2_bits(l2_bits);
    create(&mut io, &opts).expect("create image");
}

/// SplitMix64: deterministic data and choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// `n` bytes of English-like text (compresses well, but not trivially).
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 24] = [
            "the",
            "qcow",
            "image",
            "cluster",
            "table",
            "backing",
            "file",
            "guest",
            "offset",
            "reads",
            "writes",
            "zero",
            "data",
            "compressed",
            "header",
            "version",
            "one",
            "of",
            "a",
            "and",
            "QEMU",
            "sector",
            "L2",
            "is",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            let w = WORDS[self.below(WORDS.len() as u64) as usize];
            v.extend_from_slice(w.as_bytes());
            v.push(if self.below(12) == 0 { b'\n' } else { b' ' });
        }
        v.truncate(n);
        v
    }
}

/// Data of `len` bytes mixing random bytes, text and zeros in runs of 4 KiB..64 KiB.
pub fn mixed(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let run = ((4096 + rng.below(60 << 10)) as usize).min(len - v.len());
        match rng.below(3) {
            0 => v.extend(rng.bytes(run)),
            1 => v.extend(rng.text(run)),
            _ => v.resize(v.len() + run, 0),
        }
    }
    v
}

/// Where two byte strings first differ.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() == b.len() {
            None
        } else {
            Some(a.len().min(b.len()))
        })
}

/// Asserts two byte strings are equal, naming the first difference.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = first_diff(got, want) {
        panic!(
            "{what}: differs at byte {i} (lengths {} and {}): got {:?}, want {:?}",
            got.len(),
            want.len(),
            got.get(i..(i + 8).min(got.len())),
            want.get(i..(i + 8).min(want.len())),
        );
    }
}

/// A JSON value, as far as qemu-img's output needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written.
    Num(String),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, keys in order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses a JSON document (panics on malformed input).
    pub fn parse(s: &str) -> Json {
        let b = s.as_bytes();
        let mut i = 0;
        let v = parse_value(b, &mut i);
        skip_ws(b, &mut i);
        assert_eq!(i, b.len(), "trailing bytes after JSON: {s:?}");
        v
    }
    /// A member of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    /// The number as u64.
    pub fn u64(&self) -> u64 {
        match self {
            Json::Num(n) => n.parse().unwrap_or_else(|_| panic!("not a u64: {n}")),
            v => panic!("not a number: {v:?}"),
        }
    }
    /// The elements of an array.
    pub fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(v) => v,
            v => panic!("not an array: {v:?}"),
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn parse_value(b: &[u8], i: &mut usize) -> Json {
    skip_ws(b, i);
    let rest = &b[*i..];
    match rest.first() {
        Some(b'{') => {
            *i += 1;
            let mut m = Vec::new();
            skip_ws(b, i);
            if b[*i] == b'}' {
                *i += 1;
                return Json::Obj(m);
            }
            loop {
                skip_ws(b, i);
                let Json::Str(k) = parse_value(b, i) else {
                    panic!("object key is not a string")
                };
                skip_ws(b, i);
                assert_eq!(b[*i], b':', "expected ':'");
                *i += 1;
                let v = parse_value(b, i);
                m.push((k, v));
                skip_ws(b, i);
                match b[*i] {
                    b',' => *i += 1,
                    b'}' => {
                        *i += 1;
                        return Json::Obj(m);
                    }
                    c => panic!("unexpected {:?} in object", c as char),
                }
            }
        }
        Some(b'[') => {
            *i += 1;
            let mut v = Vec::new();
            skip_ws(b, i);
            if b[*i] == b']' {
                *i += 1;
                return Json::Arr(v);
            }
            loop {
                v.push(parse_value(b, i));
                skip_ws(b, i);
                match b[*i] {
                    b',' => *i += 1,
                    b']' => {
                        *i += 1;
                        return Json::Arr(v);
                    }
                    c => panic!("unexpected {:?} in array", c as char),
                }
            }
        }
        Some(b'"') => {
            *i += 1;
            let mut s = Vec::new();
            loop {
                match b[*i] {
                    b'"' => {
                        *i += 1;
                        break;
                    }
                    b'\\' => {
                        *i += 1;
                        match b[*i] {
                            b'n' => s.push(b'\n'),
                            b't' => s.push(b'\t'),
                            b'r' => s.push(b'\r'),
                            b'u' => {
                                let h = std::str::from_utf8(&b[*i + 1..*i + 5]).expect("hex");
                                let c = char::from_u32(u32::from_str_radix(h, 16).expect("hex"))
                                    .unwrap_or('\u{fffd}');
                                let mut buf = [0u8; 4];
                                s.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                *i += 4;
                            }
                            c => s.push(c),
                        }
                        *i += 1;
                    }
                    c => {
                        s.push(c);
                        *i += 1;
                    }
                }
            }
            Json::Str(String::from_utf8(s).expect("utf-8 string"))
        }
        _ if rest.starts_with(b"true") => {
            *i += 4;
            Json::Bool(true)
        }
        _ if rest.starts_with(b"false") => {
            *i += 5;
            Json::Bool(false)
        }
        _ if rest.starts_with(b"null") => {
            *i += 4;
            Json::Null
        }
        _ => {
            let start = *i;
            while *i < b.len() && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                *i += 1;
            }
            assert!(*i > start, "bad JSON at byte {start}");
            Json::Num(String::from_utf8_lossy(&b[start..*i]).into_owned())
        }
    }
}

/// A map extent of `qemu-img map --output=json`, with the keys both tools print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapExtent {
    pub start: u64,
    pub length: u64,
    pub depth: u64,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    pub offset: Option<u64>,
}

/// Parses `map --output=json` and merges adjacent extents that continue each other.
pub fn parse_map(text: &str) -> Vec<MapExtent> {
    let j = Json::parse(text);
    let flag = |e: &Json, k: &str| match e.get(k) {
        Some(Json::Bool(b)) => *b,
        None => false,
        v => panic!("{k}: {v:?}"),
    };
    let mut out: Vec<MapExtent> = Vec::new();
    for e in j.arr() {
        let x = MapExtent {
            start: e.get("start").expect("start").u64(),
            length: e.get("length").expect("length").u64(),
            depth: e.get("depth").expect("depth").u64(),
            present: flag(e, "present"),
            zero: flag(e, "zero"),
            data: flag(e, "data"),
            compressed: flag(e, "compressed"),
            offset: e.get("offset").map(Json::u64),
        };
        if let Some(last) = out.last_mut() {
            let same = last.start + last.length == x.start
                && (
                    last.depth,
                    last.present,
                    last.zero,
                    last.data,
                    last.compressed,
                ) == (x.depth, x.present, x.zero, x.data, x.compressed)
                && match (last.offset, x.offset) {
                    (Some(a), Some(b)) => a + last.length == b,
                    (None, None) => true,
                    _ => false,
                };
            if same {
                last.length += x.length;
                continue;
            }
        }
        out.push(x);
    }
    out
}

/// Runs `qcow ARGS` in `cwd` (or here), asserts exit 0, returns its standard output.
pub fn qcow_ok_in(cwd: Option<&Path>, args: &Args) -> Vec<u8> {
    let o = run_prog(qcow_bin(), args, None, cwd);
    assert_eq!(
        o.code,
        0,
        "{} (in {cwd:?}) failed: {}",
        describe("qcow", args),
        o.stderr
    );
    o.stdout
}

/// Checks every way we read `img` against `want` (QEMU's view of it): `qcow read` of
/// everything and of windows, `qcow convert -O raw`, and the library's `DiskIo`
/// (whole, windows, the last byte). `img` may be relative to `cwd`, where the `qcow`
/// processes run; `pw` is a password file for encrypted images.
pub fn check_reads(
    img: &Path,
    cwd: Option<&Path>,
    want: &[u8],
    pw: Option<&Path>,
    rng: &mut Rng,
    what: &str,
) {
    use std::io::{Read, Seek, SeekFrom};
    let dir = tmp();
    let size = want.len() as u64;
    let with_pw = |mut v: Vec<&'static str>| {
        if pw.is_some() {
            v.push("--password-file");
        }
        v
    };
    let read_args = |at: u64, len: u64| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> =
            with_pw(vec!["read"]).into_iter().map(Into::into).collect();
        if let Some(p) = pw {
            v.push(p.into());
        }
        v.extend([img.into(), at.to_string().into(), len.to_string().into()]);
        v
    };
    let run_read = |at: u64, len: u64| -> Out {
        let a = read_args(at, len);
        let refs: Vec<&dyn AsRef<OsStr>> = a.iter().map(|x| x as &dyn AsRef<OsStr>).collect();
        run_prog(qcow_bin(), &refs, None, cwd)
    };
    let o = run_read(0, size);
    assert_eq!(o.code, 0, "{what}: qcow read: {}", o.stderr);
    assert_bytes_eq(&o.stdout, want, &format!("{what}: qcow read"));

    let out = dir.path().join("out.raw");
    let mut conv: Vec<&dyn AsRef<OsStr>> = vec![&"convert", &"-O", &"raw"];
    if let Some(p) = &pw {
        conv.push(&"--password-file");
        conv.push(p);
    }
    conv.push(&img);
    conv.push(&out);
    qcow_ok_in(cwd, &conv);
    assert_bytes_eq(&read(&out), want, &format!("{what}: qcow convert -O raw"));

    let full = match cwd {
        Some(c) => c.join(img),
        None => img.to_path_buf(),
    };
    let mut io = qcow_std::Disk::options()
        .secret(pw.map(|p| zeroize::Zeroizing::new(read(p))))
        .open(&full)
        .expect("open");
    let mut all = Vec::new();
    io.read_to_end(&mut all).expect("read_to_end");
    assert_bytes_eq(&all, want, &format!("{what}: Disk read_to_end"));
    for _ in 0..40 {
        let at = rng.below(size);
        let len = (1 + rng.below(3 * 65536)).min(size - at) as usize;
        io.seek(SeekFrom::Start(at)).expect("seek");
        let mut b = vec![0u8; len];
        io.read_exact(&mut b).expect("read_exact");
        assert_bytes_eq(
            &b,
            &want[at as usize..at as usize + len],
            &format!("{what}: Disk window {at}+{len}"),
        );
    }
    let mut last = [0u8; 1];
    io.seek(SeekFrom::End(-1)).expect("seek end");
    io.read_exact(&mut last).expect("last byte");
    assert_eq!(last[0], want[want.len() - 1], "{what}: last byte");
    assert_eq!(io.read(&mut last).expect("read at end"), 0, "{what}: EOF");

    for (at, len) in [
        (size - 1, 1),
        (rng.below(size.saturating_sub(5000).max(1)), 4999.min(size)),
        (rng.below(size), 1),
    ] {
        let o = run_read(at, len);
        assert_eq!(o.code, 0, "{what}: qcow read {at} {len}: {}", o.stderr);
        assert_bytes_eq(
            &o.stdout,
            &want[at as usize..(at + len) as usize],
            &format!("{what}: qcow read {at} {len}"),
        );
    }
    let o = run_read(size - 1, 2);
    assert_fails(&o, 1, &format!("{what}: read past the end"));
}

/// `--object secret,...` for a password file (the secret's id is `s0`).
pub fn secret_object(pw: &Path) -> String {
    format!("secret,id=s0,file={}", pw.display())
}

/// `--image-opts` of an encrypted qcow image whose secret is `s0`.
pub fn image_opts(img: &Path) -> String {
    format!(
        "driver=qcow,file.filename={},encrypt.key-secret=s0",
        img.display()
    )
}

/// The guest content of an encrypted image as QEMU decrypts it.
pub fn qemu_decrypted(img: &Path, pw: &Path, dir: &Path) -> Vec<u8> {
    let obj = secret_object(pw);
    qemu_raw(&image_opts(img), &[&"--object", &obj, &"--image-opts"], dir)
}

/// `qemu-io` commands on an encrypted image.
pub fn qemu_io_enc(img: &Path, pw: &Path, cmds: &[String]) {
    let obj = secret_object(pw);
    let opts = image_opts(img);
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"--object", &obj, &"--image-opts"];
    for c in cmds {
        args.push(&"-c");
        args.push(c);
    }
    args.push(&opts);
    qemu_io_ok(&args);
}

/// `qemu-img convert -O qcow` of `src` into `dst`, encrypted with the secret in `pw`.
pub fn qemu_convert_encrypted(src: &Path, dst: &Path, pw: &Path) {
    let obj = secret_object(pw);
    qemu_img_ok(&[
        &"convert",
        &"--object",
        &obj,
        &"-O",
        &"qcow",
        &"-o",
        &"encrypt.format=aes,encrypt.key-secret=s0",
        &src,
        &dst,
    ]);
}
