//! `cargo xtask bench`: qcow and qemu-img side by side on the same files, in one run.
//!
//! Makes a 256 MiB input of mixed random data, text and zero runs, then runs each
//! operation with qemu-img and with qcow alternately (3 rounds by default), and prints
//! the medians, their ratio (qemu-img's time / ours), the target, and the peak memory
//! of each (from `/usr/bin/time -f %M`). `--write` also stores the table in
//! `benches/RESULTS.md` and the ratios as `benches/results.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{cargo, root, run};

/// The input's size.
const INPUT: u64 = 256 << 20;

/// One measured command: wall seconds and peak RSS in KiB.
#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    kib: u64,
}

/// Runs `argv` under `/usr/bin/time -f %M` (when present), returning wall time and peak
/// memory; fails unless it exits 0.
fn measure(argv: &[String], stdout_to_null: bool) -> Result<Sample, String> {
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-f").arg("%M").args(argv);
        c
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    if stdout_to_null {
        cmd.stdout(std::process::Stdio::null());
    }
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    let secs = start.elapsed().as_secs_f64();
    // qemu-img 10.0's `convert -c -O qcow` exits 1 silently though its output is
    // complete (checked with `qemu-img compare` below): accept a silent exit 1 from it.
    let silent_qemu_c = argv.first().is_some_and(|a| a == "qemu-img")
        && argv.iter().any(|a| a == "-c")
        && out.status.code() == Some(1)
        && !String::from_utf8_lossy(&out.stderr).contains("qemu-img:");
    if !out.status.success() && !silent_qemu_c {
        return Err(format!(
            "`{}` failed: {}\n{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let kib = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    Ok(Sample { secs, kib })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A xorshift generator: the input is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 256 MiB in 1 MiB pieces: random, text, zeros, and half random / half text.
fn make_input(path: &Path) -> Result<(), String> {
    if path.metadata().map(|m| m.len() == INPUT).unwrap_or(false) {
        return Ok(());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let text: Vec<u8> = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud \
exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.\n"
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    let mut data = Vec::with_capacity(INPUT as usize);
    for i in 0..(INPUT >> 20) {
        match i % 4 {
            0 => (0..(1 << 17)).for_each(|_| data.extend_from_slice(&rng.next().to_le_bytes())),
            1 => data.extend_from_slice(&text),
            2 => data.resize(data.len() + (1 << 20), 0),
            _ => {
                (0..(1 << 16)).for_each(|_| data.extend_from_slice(&rng.next().to_le_bytes()));
                data.extend_from_slice(&text[..1 << 19]);
            }
        }
    }
    std::fs::write(path, &data).map_err(|e| format!("{}: {e}", path.display()))
}

struct Row {
    name: &'static str,
    target: &'static str,
    qemu: Option<f64>,
    ours: f64,
    qemu_kib: u64,
    ours_kib: u64,
    note: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.qemu.map(|q| q / self.ours)
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `qemu-img convert FLAGS SRC OUT` and `qcow convert FLAGS SRC OUT`.
fn convert_args(
    qcow: &str,
    flags: &[&str],
    src: &str,
    out: (&str, &str),
) -> (Vec<String>, Vec<String>) {
    let argv = |prog: &str, dst: &str| {
        let mut v = s(&[prog, "convert"]);
        v.extend(s(flags));
        v.extend(s(&[src, dst]));
        v
    };
    (argv("qemu-img", out.0), argv(qcow, out.1))
}

/// Runs `qemu` and `ours` alternately `rounds` times, removing each one's output first.
fn pair(
    rounds: usize,
    (qemu, ours): (Vec<String>, Vec<String>),
    outputs: (&Path, &Path),
) -> Result<(Vec<Sample>, Vec<Sample>), String> {
    let (mut q, mut o) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let _ = std::fs::remove_file(outputs.0);
        q.push(measure(&qemu, true)?);
        let _ = std::fs::remove_file(outputs.1);
        o.push(measure(&ours, true)?);
    }
    Ok((q, o))
}

/// The pyqcow reader: the whole image in 1 MiB `read_buffer` calls.
const PYQCOW: &str = "import sys, pyqcow\nf = pyqcow.file()\nf.open(sys.argv[1])\n\
size = f.get_media_size()\nn = 0\nwhile n < size:\n    n += len(f.read_buffer(min(1 << 20, size - n)))\n\
f.close()\n";

/// Runs each command of `cmds` once per round, in turn; returns each one's samples.
/// Before each, the files in `outputs` are removed and written back (`sync`), so no
/// command pays for truncating or writing back what the one before it wrote.
fn rounds_of(
    rounds: usize,
    cmds: &[Vec<String>],
    outputs: &[PathBuf],
) -> Result<Vec<Vec<Sample>>, String> {
    let mut out = vec![Vec::new(); cmds.len()];
    for _ in 0..rounds {
        for (c, o) in cmds.iter().zip(out.iter_mut()) {
            for f in outputs {
                let _ = std::fs::remove_file(f);
            }
            let _ = Command::new("sync").status();
            o.push(measure(c, true)?);
        }
    }
    Ok(out)
}

/// The inflate-only time of `img`'s compressed clusters on `threads` threads (the
/// example prints it: no I/O, no lookups), the median of `rounds`.
fn inflate_only(rounds: usize, root: &Path, img: &str, threads: &str) -> Result<f64, String> {
    let prog = root.join("target/release/examples/inflate_only");
    let mut v = Vec::new();
    for _ in 0..rounds {
        let out = Command::new(&prog)
            .args([threads, img])
            .output()
            .map_err(|e| format!("inflate_only: {e}"))?;
        let secs = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
            .ok_or("inflate_only printed no time")?;
        v.push(secs);
    }
    Ok(median(v))
}

/// Mounts `img` with `qcowmount` on `dir` (libqcow's FUSE mount); `None` when it cannot
/// mount here (no qcowmount, no /dev/fuse, not root).
fn qcowmount(img: &str, dir: &Path) -> Option<PathBuf> {
    let _ = std::fs::create_dir_all(dir);
    let ok = Command::new("qcowmount")
        .arg(img)
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let file = dir.join("qcow1");
    (ok && file.exists()).then_some(file)
}

fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

/// The fastest peer (libqcow: pyqcow and `qcowmount` + `dd`) and the floor (`cat` of the
/// raw file, inflate-only) beside whole-image reads of the plain and compressed images
/// by `qcow read`, `qcow convert -O raw` and the `Disk` handle (2 threads).
fn libqcow_rows(rounds: usize, root: &Path, dir: &Path) -> Result<Vec<Row>, String> {
    let py = "/usr/bin/python3";
    let pyq = dir.join("pyqcow_read.py");
    std::fs::write(&pyq, PYQCOW).map_err(|e| e.to_string())?;
    let ok = Command::new(py).args(["-c", "import pyqcow"]).status();
    if !ok.is_ok_and(|s| s.success()) {
        return Err("pyqcow not found: apt-get install python3-libqcow libqcow-utils".into());
    }
    let qcow = root.join("target/release/qcow").display().to_string();
    let read_all = root
        .join("target/release/examples/read_all")
        .display()
        .to_string();
    let ps = |n: &str| dir.join(n).display().to_string();
    let pyq = pyq.display().to_string();
    let size = INPUT.to_string();
    let mut rows = Vec::new();
    for (img, label) in [("in-comp.qcow", "compressed"), ("in-plain.qcow", "plain")] {
        let (name, target, floor) = if label == "compressed" {
            ("compressed", "≥ 2.5", true)
        } else {
            ("plain", "≥ 3", false)
        };
        let mnt = dir.join("mnt");
        let mounted = qcowmount(&ps(img), &mnt);
        let dd = mounted.as_ref().map(|f| {
            let from = format!("if={}", f.display());
            let to = format!("of={}", ps("lq-peer.raw"));
            [
                s(&["dd", &from, "of=/dev/null", "bs=1M"]),
                // As convert: a sparse output file, synced.
                s(&["dd", &from, &to, "bs=1M", "conv=sparse,fsync"]),
            ]
        });
        let mut cmds = vec![
            s(&[py, &pyq, &ps(img)]),
            s(&[&qcow, "read", &ps(img), "0", &size]),
            s(&[&read_all, "2", &ps(img)]),
            s(&[&qcow, "convert", "-O", "raw", &ps(img), &ps("lq-out.raw")]),
            s(&["cat", &ps("mixed.raw")]),
        ];
        cmds.extend(dd.into_iter().flatten());
        let outputs = [dir.join("lq-out.raw"), dir.join("lq-peer.raw")];
        let r = rounds_of(rounds, &cmds, &outputs);
        if mounted.is_some() {
            unmount(&mnt);
        }
        let r = r?;
        let _ = std::fs::remove_file(dir.join("lq-out.raw"));
        let _ = std::fs::remove_file(dir.join("lq-peer.raw"));
        let med = |i: usize| median(r[i].iter().map(|x| x.secs).collect());
        let kib = |i: usize| r[i].iter().map(|x| x.kib).max().unwrap_or(0);
        let mk = |n: String, peer: usize, ours: usize, target: &'static str, note: String| Row {
            name: Box::leak(n.into_boxed_str()),
            target,
            qemu: Some(med(peer)),
            ours: med(ours),
            qemu_kib: kib(peer),
            ours_kib: kib(ours),
            note,
        };
        let peers = [(0usize, "pyqcow")]
            .into_iter()
            .chain(mounted.is_some().then_some((5usize, "qcowmount + dd")));
        for (peer, pname) in peers {
            for (ours, how) in [(1usize, "qcow read"), (2, "Disk handle, 2 threads")] {
                let note = format!("peer column: {pname} (libqcow), output to /dev/null");
                rows.push(mk(
                    format!("{name} → raw: {how} vs {pname}"),
                    peer,
                    ours,
                    target,
                    note,
                ));
            }
        }
        if mounted.is_some() {
            let note = "peer column: qcowmount + dd conv=sparse,fsync to a file (libqcow)";
            rows.push(mk(
                format!("{name} → raw file: qcow convert -O raw vs qcowmount + dd"),
                6,
                3,
                target,
                note.into(),
            ));
        }
        if mounted.is_none() {
            eprintln!(
                "qcowmount could not mount here (needs root and /dev/fuse): its rows are left out"
            );
        }
        if floor {
            rows.push(mk(
                format!("{name} → raw: qcow read vs cat of the raw file"),
                4,
                1,
                "floor",
                "peer column: cat mixed.raw > /dev/null".into(),
            ));
            let one = inflate_only(rounds, root, &ps(img), "1")?;
            let two = inflate_only(rounds, root, &ps(img), "2")?;
            let mib = 96.0; // the bench image's compressed clusters: 24576 of 4 KiB
            rows.push(Row {
                name: "inflate only (the image's compressed clusters): 2 cores vs 1",
                target: "floor",
                qemu: Some(one),
                ours: two,
                qemu_kib: 0,
                ours_kib: 0,
                note: format!(
                    "{:.0} MiB/s on 1 core, {:.0} MiB/s on 2; qcow read is {:.1}× the 2-core floor",
                    mib / one,
                    mib / two,
                    med(1) / two
                ),
            });
        }
    }
    Ok(rows)
}

fn row(name: &'static str, target: &'static str, q: &[Sample], o: &[Sample], note: String) -> Row {
    Row {
        name,
        target,
        qemu: Some(median(q.iter().map(|x| x.secs).collect())),
        ours: median(o.iter().map(|x| x.secs).collect()),
        qemu_kib: q.iter().map(|x| x.kib).max().unwrap_or(0),
        ours_kib: o.iter().map(|x| x.kib).max().unwrap_or(0),
        note,
    }
}

/// `cargo xtask bench [--rounds N] [--write]`.
pub fn bench(args: &[String]) -> Result<(), String> {
    let mut rounds = 3usize;
    let mut write = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--write" => write = true,
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--rounds takes a positive number")?
            }
            _ => return Err(format!("unknown argument '{a}' (--rounds N, --write)")),
        }
    }
    for tool in ["qemu-img", "qemu-io"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} not found: install qemu-utils"));
        }
    }
    run(cargo().args(["build", "--release", "-p", "qcow-cli"]))?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "qcow-std",
        "--example",
        "read_all",
        "--example",
        "inflate_only",
    ]))?;
    let root = root();
    let qcow = root.join("target/release/qcow").display().to_string();
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let p = |n: &str| -> PathBuf { dir.join(n) };
    let ps = |n: &str| -> String { dir.join(n).display().to_string() };
    eprintln!("making the 256 MiB input ...");
    make_input(&p("mixed.raw"))?;
    // Inputs made by qemu-img, used by both sides.
    run(Command::new("qemu-img").args([
        "convert",
        "-O",
        "qcow",
        &ps("mixed.raw"),
        &ps("in-plain.qcow"),
    ]))?;
    // qemu-img 10.0 exits 1 silently here though the image is complete: verify it.
    let _ = Command::new("qemu-img")
        .args([
            "convert",
            "-c",
            "-O",
            "qcow",
            &ps("mixed.raw"),
            &ps("in-comp.qcow"),
        ])
        .status();
    let same = Command::new("qemu-img")
        .args(["compare", "-q", &ps("in-comp.qcow"), &ps("mixed.raw")])
        .status();
    if !same.is_ok_and(|s| s.success()) {
        return Err("qemu-img convert -c made a bad image".into());
    }
    let pw = p("pw");
    std::fs::write(&pw, b"benchmark-secret").map_err(|e| e.to_string())?;
    let secret = format!("secret,id=s0,file={}", pw.display());
    let _ = std::fs::remove_file(p("in-enc.qcow"));
    run(Command::new(&qcow).args([
        "convert",
        "-O",
        "qcow",
        "--encrypt",
        "--target-password-file",
        &ps("pw"),
        &ps("mixed.raw"),
        &ps("in-enc.qcow"),
    ]))?;

    let mut rows = Vec::new();
    let out_q = p("out.qcow");
    let out_r = p("out.raw");
    let (q, o) = pair(
        rounds,
        convert_args(
            &qcow,
            &["-O", "qcow"],
            &ps("mixed.raw"),
            (&ps("out.qcow"), &ps("out.qcow")),
        ),
        (&out_q, &out_q),
    )?;
    rows.push(row("raw → qcow", "≥ 4", &q, &o, String::new()));
    let (q, o) = pair(
        rounds,
        convert_args(
            &qcow,
            &["-O", "raw"],
            &ps("in-plain.qcow"),
            (&ps("out.raw"), &ps("out.raw")),
        ),
        (&out_r, &out_r),
    )?;
    rows.push(row("qcow → raw", "≥ 3", &q, &o, String::new()));
    let (q, o) = pair(
        rounds,
        convert_args(
            &qcow,
            &["-O", "raw"],
            &ps("in-comp.qcow"),
            (&ps("out.raw"), &ps("out.raw")),
        ),
        (&out_r, &out_r),
    )?;
    rows.push(row("compressed qcow → raw", "≥ 3", &q, &o, String::new()));
    // The shared handle: the compressed image read with 1 and with 2 threads.
    let read_all = root
        .join("target/release/examples/read_all")
        .display()
        .to_string();
    let nowhere = p("nothing");
    // Runs of under 0.1 s on 2 shared cores: three times the rounds for a steady median.
    let (one, two) = pair(
        rounds * 3,
        (
            s(&[&read_all, "1", &ps("in-comp.qcow")]),
            s(&[&read_all, "2", &ps("in-comp.qcow")]),
        ),
        (&nowhere, &nowhere),
    )?;
    rows.push(row(
        "Disk handle, compressed: 2 threads vs 1",
        "≥ 1.8",
        &one,
        &two,
        format!(
            "the qemu-img column is our 1-thread read; {} runs each",
            rounds * 3
        ),
    ));
    // Sizes of -c outputs: measured once each, outside the timing loop.
    let qc = p("qemu-c.qcow");
    let oc = p("ours-c.qcow");
    let (q, o) = pair(
        rounds,
        convert_args(
            &qcow,
            &["-c", "-O", "qcow"],
            &ps("mixed.raw"),
            (&ps("qemu-c.qcow"), &ps("ours-c.qcow")),
        ),
        (&qc, &oc),
    )?;
    for (img, who) in [(&qc, "qemu-img"), (&oc, "qcow")] {
        let same = Command::new("qemu-img")
            .args(["compare", "-q"])
            .arg(img)
            .arg(p("mixed.raw"))
            .status();
        if !same.is_ok_and(|s| s.success()) {
            return Err(format!("{who}'s -c output differs from the input"));
        }
    }
    let qsize = qc.metadata().map(|m| m.len()).unwrap_or(0);
    let osize = oc.metadata().map(|m| m.len()).unwrap_or(0);
    let pct = (osize as f64 / qsize as f64 - 1.0) * 100.0;
    rows.push(row(
        "raw → qcow -c",
        "≥ 8, size ≤ qemu-img's",
        &q,
        &o,
        format!("size {osize} vs {qsize} ({pct:+.1}%)"),
    ));
    let (q, o) = pair(
        rounds,
        (
            s(&[
                "qemu-img",
                "convert",
                "--object",
                &secret,
                "--image-opts",
                &format!(
                    "driver=qcow,file.filename={},encrypt.key-secret=s0",
                    ps("in-enc.qcow")
                ),
                "-O",
                "raw",
                &ps("out.raw"),
            ]),
            s(&[
                &qcow,
                "convert",
                "--password-file",
                &ps("pw"),
                "-O",
                "raw",
                &ps("in-enc.qcow"),
                &ps("out.raw"),
            ]),
        ),
        (&out_r, &out_r),
    )?;
    rows.push(row("encrypted qcow → raw", "≥ 1", &q, &o, String::new()));
    // A 1 TiB sparse image with 1 MiB of data near its end; read it at random offsets.
    let big = p("sparse-1t.qcow");
    let _ = std::fs::remove_file(&big);
    run(Command::new(&qcow)
        .args(["create", &ps("sparse-1t.qcow"), "1T"])
        .stdout(std::process::Stdio::null()))?;
    let tail = (1u64 << 40) - (16 << 20);
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow",
            "-c",
            &format!("write -P 0x5a {tail} 16M"),
            &ps("sparse-1t.qcow"),
        ])
        .stdout(std::process::Stdio::null()))?;
    let mut rng = Rng(42);
    let mut reads = Vec::new();
    for i in 0..(rounds * 3) {
        let off = if i % 2 == 0 {
            tail + (rng.next() % (15 << 20))
        } else {
            rng.next() % ((1u64 << 40) - (1 << 20))
        };
        reads.push(measure(
            &s(&[&qcow, "read", &ps("sparse-1t.qcow"), &off.to_string(), "1M"]),
            true,
        )?);
    }
    rows.push(Row {
        name: "read 1 MiB of a 1 TiB sparse image",
        target: "≤ 20 ms",
        qemu: None,
        ours: median(reads.iter().map(|x| x.secs).collect()),
        qemu_kib: 0,
        ours_kib: reads.iter().map(|x| x.kib).max().unwrap_or(0),
        note: "random offsets, half in the data".into(),
    });
    rows.extend(mount_rows(rounds, &qcow, &dir)?);
    rows.extend(nbd_rows(&qcow, &dir, rounds)?);
    rows.extend(libqcow_rows(rounds, &root, &dir)?);
    let worst = rows.iter().map(|r| r.ours_kib).max().unwrap_or(0);
    eprintln!(
        "peak memory of our runs: {:.1} MiB (target ≤ 64)",
        worst as f64 / 1024.0
    );
    let table = render(&rows, rounds);
    println!("{table}");
    // The Python package against pyqcow on the same images (xtask/src/python.rs).
    let python =
        crate::python::bench_reads(&[p("in-plain.qcow"), p("in-comp.qcow")], rounds.max(5))?;
    println!("{python}");
    if write {
        let machine = machine();
        let date = String::from_utf8_lossy(
            &Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%d %H:%M UTC")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .trim()
        .to_string();
        let md = format!(
            "# Benchmark results\n\nMade by `cargo xtask bench --write` on {date}, {machine}.\n\
             Each operation ran {rounds} times with qemu-img and with qcow alternately on the same \
             files; times are medians, ratio = qemu-img / qcow (higher is better), memory is the \
             peak RSS of the worst run. The machine is shared and noisy: compare ratios, not \
             seconds. Rows whose notes name a peer column hold that peer (libqcow's pyqcow or \
             `qcowmount`, `cat`, the inflate-only floor) in the qemu-img column. \
             `results.svg` plots the ratios.\n\n{table}\n\
             The Python package (`qcow.open`) against libqcow's pyqcow, whole-image reads \
             in 1 MiB chunks, alternately in the same run (qcow-python/bench/read_bench.py; \
             targets: 3× plain, 2× compressed):\n\n{python}\n"
        );
        std::fs::write(root.join("benches/RESULTS.md"), md).map_err(|e| e.to_string())?;
        std::fs::write(root.join("benches/results.svg"), svg(&rows)).map_err(|e| e.to_string())?;
        eprintln!("wrote benches/RESULTS.md and benches/results.svg");
    }
    let _ = std::fs::remove_file(&out_r);
    let _ = std::fs::remove_file(&big);
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let qemu = String::from_utf8_lossy(
        &Command::new("qemu-img")
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .lines()
    .next()
    .unwrap_or("")
    .to_string();
    format!("{cores} cores ({cpu}), {qemu}")
}

fn render(rows: &[Row], rounds: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| operation (256 MiB mixed input, {rounds} runs each) | qemu-img | qcow | ratio | target | peak MiB qemu-img / qcow | notes |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for r in rows {
        let q = r.qemu.map_or("–".into(), |q| format!("{q:.3} s"));
        let ratio = r.ratio().map_or("–".into(), |x| format!("{x:.1}×"));
        let ours = if r.qemu.is_none() {
            format!("{:.1} ms", r.ours * 1000.0)
        } else {
            format!("{:.3} s", r.ours)
        };
        let mem = if r.qemu.is_none() {
            format!("{:.1}", r.ours_kib as f64 / 1024.0)
        } else {
            format!(
                "{:.1} / {:.1}",
                r.qemu_kib as f64 / 1024.0,
                r.ours_kib as f64 / 1024.0
            )
        };
        let _ = writeln!(
            t,
            "| {} | {q} | {ours} | {ratio} | {} | {mem} | {} |",
            r.name, r.target, r.note
        );
    }
    t
}

/// A bar chart of the ratios, as a self-contained SVG.
fn svg(rows: &[Row]) -> String {
    let bars: Vec<(&str, f64)> = rows
        .iter()
        .filter_map(|r| r.ratio().map(|x| (r.name, x)))
        .collect();
    let max = bars.iter().map(|b| b.1).fold(1.0f64, f64::max).ceil();
    let (w, bar_h, left) = (720.0, 34.0, 230.0);
    let h = 60.0 + bars.len() as f64 * bar_h;
    let scale = (w - left - 60.0) / max;
    let mut o = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"15\">qemu-img time / qcow time (higher is better)</text>\n");
    for (i, (name, x)) in bars.iter().enumerate() {
        let y = 40.0 + i as f64 * bar_h;
        let _ = writeln!(o, "<text x=\"10\" y=\"{}\">{}</text><rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"#3b7dd8\"/><text x=\"{:.1}\" y=\"{}\">{x:.1}×</text>", y + 18.0, name, x * scale, bar_h - 10.0, left + x * scale + 6.0, y + 18.0);
    }
    let one = left + scale;
    let _ = writeln!(o, "<line x1=\"{one:.1}\" y1=\"32\" x2=\"{one:.1}\" y2=\"{}\" stroke=\"#c33\" stroke-dasharray=\"4\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#c33\">1× (qemu-img)</text>", h - 10.0, one + 4.0, h - 4.0);
    o.push_str("</svg>\n");
    o
}

/// Issue 15: `dd bs=1M` of `qcow mount`'s `disk` against libqcow's `qcowmount` on the
/// same plain and compressed images, each on a fresh mount (no page cache carried over),
/// alternately; and what the FUSE transport costs: `dd` of a raw file through
/// `qcow mount -f raw` against `dd` of the file itself.
fn mount_rows(rounds: usize, qcow: &str, dir: &Path) -> Result<Vec<Row>, String> {
    for tool in ["qcowmount", "fusermount3", "dd"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Err(format!("{tool} not found: install libqcow-utils and fuse3"));
        }
    }
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let m = mnt.display().to_string();
    let unmount = || {
        let _ = Command::new("fusermount3").args(["-u", &m]).status();
    };
    unmount();
    // One dd of FILE (inside the mount made by `mount`, when given), the mount undone.
    let dd = |mount: Option<Vec<String>>, file: &str| -> Result<Sample, String> {
        if let Some(argv) = &mount {
            run(Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(std::process::Stdio::null()))?;
            // qcowmount may return before its file shows (a busy machine): wait for it.
            for _ in 0..200 {
                if Path::new(file).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let r = measure(
            &s(&["dd", &format!("if={file}"), "of=/dev/null", "bs=1M"]),
            true,
        );
        if mount.is_some() {
            unmount();
        }
        r
    };
    let mut rows = Vec::new();
    for (name, img) in [
        (
            "mount: dd bs=1M of disk, plain (peer: qcowmount)",
            "in-plain.qcow",
        ),
        (
            "mount: dd bs=1M of disk, compressed (peer: qcowmount)",
            "in-comp.qcow",
        ),
    ] {
        let img = dir.join(img).display().to_string();
        let (mut q, mut o) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            q.push(dd(
                Some(s(&["qcowmount", &img, &m])),
                &format!("{m}/qcow1"),
            )?);
            o.push(dd(
                Some(s(&[qcow, "mount", &img, &m])),
                &format!("{m}/disk"),
            )?);
        }
        let target = if img.ends_with("comp.qcow") {
            "≥ 2"
        } else {
            "≥ 1.5"
        };
        rows.push(row(name, target, &q, &o, "ratio = qcowmount / qcow".into()));
    }
    let raw = dir.join("mixed.raw").display().to_string();
    let (mut q, mut o) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        q.push(dd(None, &raw)?);
        o.push(dd(
            Some(s(&[qcow, "mount", "-f", "raw", &raw, &m])),
            &format!("{m}/disk"),
        )?);
    }
    rows.push(row(
        "FUSE transport: dd of a raw file, direct vs through qcow mount -f raw",
        "–",
        &q,
        &o,
        "ratio = direct / mounted: what FUSE itself costs".into(),
    ));
    Ok(rows)
}

/// A server started with `--fork` on a unix socket in `dir`, stopped with SIGTERM when
/// dropped.
struct NbdServer {
    pid: String,
    uri: String,
}

impl NbdServer {
    fn start(
        prog: &str,
        pre: &[&str],
        dir: &Path,
        tag: &str,
        args: &[&str],
    ) -> Result<Self, String> {
        let sock = dir.join(format!("{tag}.sock")).display().to_string();
        let pid_file = dir.join(format!("{tag}.pid"));
        let pidf = pid_file.display().to_string();
        let _ = std::fs::remove_file(&pid_file);
        run(Command::new(prog)
            .args(pre)
            .args(["--fork", "-t", "-r", "-k", &sock, "--pid-file", &pidf])
            .args(args))?;
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("{prog} wrote no pid file: {e}"))?
            .trim()
            .to_string();
        Ok(NbdServer {
            pid,
            uri: format!("nbd+unix:///?socket={sock}"),
        })
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid]).status();
    }
}

/// `nbdcopy URI null:` of the plain and compressed images out of `qcow nbd` and out of
/// `qemu-nbd -r -f qcow`, and of the plain image against `qemu-nbd` exporting the raw
/// input, alternately.
fn nbd_rows(qcow: &str, dir: &Path, rounds: usize) -> Result<Vec<Row>, String> {
    for tool in ["nbdcopy", "qemu-nbd"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!(
                "{tool} not found: install libnbd-bin and qemu-utils"
            ));
        }
    }
    let ps = |n: &str| -> String { dir.join(n).display().to_string() };
    let copy = |uri: &str| s(&["nbdcopy", uri, "null:"]);
    let mut rows = Vec::new();
    let cases: [(&'static str, &'static str, &str, &str); 3] = [
        (
            "nbdcopy out of qcow nbd (plain)",
            "≥ 8",
            "in-plain.qcow",
            "qcow",
        ),
        (
            "nbdcopy out of qcow nbd (compressed)",
            "≥ 8",
            "in-comp.qcow",
            "qcow",
        ),
        (
            "nbdcopy plain: qemu-nbd raw file / qcow nbd",
            "≥ 0.67",
            "in-plain.qcow",
            "raw",
        ),
    ];
    for (i, (name, target, img, peer_fmt)) in cases.into_iter().enumerate() {
        let peer_file = if peer_fmt == "raw" {
            ps("mixed.raw")
        } else {
            ps(img)
        };
        let peer = NbdServer::start(
            "qemu-nbd",
            &[],
            dir,
            &format!("peer{i}"),
            &["-f", peer_fmt, &peer_file],
        )?;
        let ours = NbdServer::start(qcow, &["nbd"], dir, &format!("ours{i}"), &[&ps(img)])?;
        let (mut q, mut o) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            q.push(measure(&copy(&peer.uri), true)?);
            o.push(measure(&copy(&ours.uri), true)?);
        }
        rows.push(row(
            name,
            target,
            &q,
            &o,
            "server not counted in memory".into(),
        ));
    }
    Ok(rows)
}
