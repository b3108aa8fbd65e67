//! Tasks of issue 8: `nostd`, `firmware IMAGE` and `firmware-test`.
//!
//! The firmware (examples/firmware) is its own workspace with its own
//! `.cargo/config.toml` (link flags, target), which cargo reads only when run from
//! that directory: [`build_firmware`] does so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{capture, cargo, no_args, root, run, show, stdout_of};

/// The target the firmware is built for (set in examples/firmware/.cargo/config.toml).
const FIRMWARE_TARGET: &str = "x86_64-unknown-linux-gnu";
/// A bare-metal target for the core's no_std builds.
const BARE_TARGET: &str = "x86_64-unknown-none";

fn firmware_dir() -> PathBuf {
    root().join("examples").join("firmware")
}

/// Runs a cargo build, echoing its output, and fails on any warning too.
pub(crate) fn build_clean(cmd: &mut Command) -> Result<(), String> {
    eprintln!("$ {}", show(cmd));
    let out = capture(cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    if !out.status.success() {
        return Err(format!("`{}` failed: {}", show(cmd), out.status));
    }
    if stderr.lines().any(|l| l.starts_with("warning")) {
        return Err(format!("`{}` printed warnings", show(cmd)));
    }
    Ok(())
}

/// `cargo`, run in the firmware's directory (for its .cargo/config.toml) with only
/// its own flags.
fn firmware_command() -> Command {
    example_command(&firmware_dir())
}

/// `cargo`, run in the directory of an example with its own workspace and
/// .cargo/config.toml, with only the flags given there.
pub(crate) fn example_command(dir: &Path) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(dir)
        // The firmware's flags come from its .cargo/config.toml; RUSTFLAGS would
        // replace them all (and CI may set it).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Builds the firmware in release and returns the binary's path.
fn build_firmware() -> Result<PathBuf, String> {
    let target_dir = firmware_dir().join("target");
    let mut cmd = firmware_command();
    cmd.args(["build", "--release", "--target-dir"])
        .arg(&target_dir);
    build_clean(&mut cmd)?;
    let bin = target_dir
        .join(FIRMWARE_TARGET)
        .join("release")
        .join("qcow-firmware");
    if !bin.is_file() {
        return Err(format!("the build made no {}", bin.display()));
    }
    Ok(bin)
}

/// `cargo xtask firmware IMAGE`.
pub fn firmware(args: &[String]) -> Result<(), String> {
    let [image] = args else {
        return Err("usage: cargo xtask firmware IMAGE".into());
    };
    let bin = build_firmware()?;
    // The image path is taken relative to the caller's directory, as given.
    run(Command::new(&bin).arg(image))
}

/// Whether rustup has `target` (adding it if it can).
fn have_target(target: &str) -> bool {
    let installed = |_: ()| {
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == target)
            })
            .unwrap_or(false)
    };
    if installed(()) {
        return true;
    }
    eprintln!("$ rustup target add {target}");
    let _ = Command::new("rustup")
        .args(["target", "add", target])
        .status();
    installed(())
}

/// `cargo xtask nostd`.
pub fn nostd(args: &[String]) -> Result<(), String> {
    no_args("nostd", args)?;
    let core = ["build", "--quiet", "-p", "qcow-core"];
    let matrix: [&[&str]; 3] = [
        &["--no-default-features"],
        &["--no-default-features", "--features", "alloc"],
        &["--all-features"],
    ];
    for features in matrix {
        build_clean(cargo().args(core).args(features))?;
    }
    if have_target(BARE_TARGET) {
        // No std exists for this target: any std use in the core fails to build.
        // The target has no SSE (soft-float), and the aes crate's AES-NI backend
        // crashes LLVM there ("Do not know how to split the result of this
        // operator", rust-lang/rust#117938): its portable backend is chosen with
        // `--cfg aes_force_soft`, as any SSE-less target (UEFI, kernels) needs.
        for features in &matrix[..2] {
            build_clean(
                cargo()
                    .args(core)
                    .args(*features)
                    .args(["--target", BARE_TARGET])
                    .env(
                        "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
                        "--cfg aes_force_soft",
                    ),
            )?;
        }
    } else {
        eprintln!(
            "note: rustup target {BARE_TARGET} is not installed and cannot be added: \
             skipping the bare-metal builds (the firmware below still proves no_std)"
        );
    }
    let bin = build_firmware()?;
    check_firmware_binary(&bin)?;
    // The dev profile links differently (no LTO: core's unwind tables stay in).
    build_clean(
        firmware_command()
            .args(["build", "--quiet", "--target-dir"])
            .arg(firmware_dir().join("target")),
    )?;
    // Clippy holds the firmware's unsafe blocks to their SAFETY comments.
    build_clean(
        firmware_command()
            .args(["clippy", "--quiet", "--release", "--target-dir"])
            .arg(firmware_dir().join("target"))
            .args(["--", "-D", "warnings"]),
    )?;
    eprintln!("nostd: ok");
    Ok(())
}

/// Symbols that would mean an allocator, libc or a formatting printf got in.
pub(crate) fn forbidden(sym: &str) -> bool {
    const EXACT: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "printf",
        "fprintf",
        "puts",
        "__libc_start_main",
        "_init",
        "_fini",
    ];
    const PART: &[&str] = &[
        "__rust_alloc",
        "__rg_alloc",
        "__rust_dealloc",
        "malloc",
        "printf",
    ];
    EXACT.contains(&sym) || PART.iter().any(|p| sym.contains(p))
}

/// Checks that `bin` is a static, non-PIE ELF executable with no interpreter and no
/// dynamic section, and that `nm` finds no undefined and no allocator/libc symbol.
fn check_firmware_binary(bin: &Path) -> Result<(), String> {
    let elf = fs::read(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8).map(|b| {
            let mut v = [0u8; 8];
            v.copy_from_slice(b);
            u64::from_le_bytes(v)
        })
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return Err(format!("{} is not a 64-bit ELF file", bin.display()));
    }
    const ET_EXEC: u16 = 2;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    if u16_at(16) != Some(ET_EXEC) {
        return Err(format!(
            "{} is not a static (non-PIE) executable",
            bin.display()
        ));
    }
    let phoff = u64_at(0x20).unwrap_or(0) as usize;
    let phentsize = usize::from(u16_at(0x36).unwrap_or(0));
    let phnum = usize::from(u16_at(0x38).unwrap_or(0));
    for i in 0..phnum {
        match u32_at(phoff + i * phentsize) {
            Some(PT_INTERP) => return Err(format!("{} has an interpreter", bin.display())),
            Some(PT_DYNAMIC) => return Err(format!("{} is dynamically linked", bin.display())),
            Some(_) => {}
            None => return Err(format!("{}: truncated program headers", bin.display())),
        }
    }
    eprintln!(
        "{}: static non-PIE ELF executable, no PT_INTERP, no PT_DYNAMIC",
        bin.display()
    );

    let nm = stdout_of(Command::new("nm").arg(bin))?;
    let mut symbols = 0;
    for line in nm.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, name) = match fields[..] {
            [kind, name] => (kind, name),
            [_, kind, name] => (kind, name),
            _ => continue,
        };
        symbols += 1;
        if kind == "U" || kind == "w" || kind == "v" {
            return Err(format!("{}: undefined symbol {name}", bin.display()));
        }
        if forbidden(name) {
            return Err(format!("{}: has symbol {name}", bin.display()));
        }
    }
    if symbols == 0 {
        return Err(format!(
            "{}: nm found no symbols to check (stripped?)",
            bin.display()
        ));
    }
    eprintln!(
        "{}: {symbols} symbols, none undefined, no malloc/free/printf/__rust_alloc",
        bin.display()
    );
    if let Ok(size) = stdout_of(Command::new("size").arg(bin)) {
        eprint!("{size}");
    }
    Ok(())
}

// ---- firmware-test ---------------------------------------------------------------

/// Virtual size of the test disk: 8 MiB and three sectors (not a whole cluster).
pub(crate) const DISK: u64 = 8 * 1024 * 1024 + 3 * 512;

/// The CRC-32 of zlib, as both freestanding examples compute it (one copy, in
/// examples/common; its check value is asserted at compile time there).
pub(crate) use qcow_example_common::crc32::crc32;

/// xorshift64*: reproducible noise without a dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            v.extend_from_slice(&self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// `n` bytes of text lines.
pub(crate) fn text(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 80);
    let mut i = 0u32;
    while v.len() < n {
        v.extend_from_slice(
            format!("{i:08}: the quick brown fox jumps over the lazy qcow image\n").as_bytes(),
        );
        i += 1;
    }
    v.truncate(n);
    v
}

/// The raw test disk: random data, text, zero runs and a byte pattern, with edges
/// off cluster boundaries.
pub(crate) fn disk(rng: &mut Rng) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(rng.bytes(1024 * 1024 + 333));
    d.extend(text(1536 * 1024 + 77));
    d.resize(d.len() + 2 * 1024 * 1024 + 3 * 4096 + 100, 0);
    d.extend(rng.bytes(700_001));
    d.resize(d.len() + 1024 * 1024, 0xa5);
    d.resize(d.len() + 512 * 1024 + 9, 0);
    d.extend(text(300_000));
    d.resize(DISK as usize - 10_000, 0);
    d.extend(rng.bytes(10_000));
    d
}

/// The test's scratch directory and the tools it drives.
pub(crate) struct Lab {
    pub(crate) dir: PathBuf,
    /// The program `firmware`, `agree` and `refuses` run.
    pub(crate) firmware: PathBuf,
}

impl Lab {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn write(&self, name: &str, data: &[u8]) -> Result<(), String> {
        fs::write(self.path(name), data).map_err(|e| format!("{name}: {e}"))
    }

    pub(crate) fn qemu_img(&self, args: &[&str]) -> Result<String, String> {
        stdout_of(Command::new("qemu-img").current_dir(&self.dir).args(args))
    }

    /// Runs qemu-io commands on a qcow image.
    pub(crate) fn qemu_io(&self, image: &str, cmds: &[String]) -> Result<(), String> {
        let mut cmd = Command::new("qemu-io");
        cmd.current_dir(&self.dir).args(["-f", "qcow"]);
        for c in cmds {
            cmd.arg("-c").arg(c);
        }
        stdout_of(cmd.arg(image)).map(drop)
    }

    /// A qcow image written by qcow-core (for what qemu-img cannot make), then
    /// written into by QEMU.
    pub(crate) fn create(
        &self,
        name: &str,
        opts: &qcow_core::write::CreateOptions<'_>,
    ) -> Result<(), String> {
        let mut io = qcow_core::io::MemIo::default();
        qcow_core::write::create(&mut io, opts).map_err(|e| format!("{name}: {e:?}"))?;
        self.write(name, &io.0)
    }

    /// Size and CRC-32 of `image` as QEMU reads it.
    pub(crate) fn expected(&self, image: &str) -> Result<(u64, u32), String> {
        self.qemu_img(&["convert", "-O", "raw", image, "expected.raw"])?;
        let data = fs::read(self.path("expected.raw")).map_err(|e| format!("expected.raw: {e}"))?;
        Ok((data.len() as u64, crc32(&data)))
    }

    /// Runs the firmware on `image` (a path relative to the lab, so that backing
    /// names resolve against the image's directory, not the current one).
    fn firmware(&self, image: &str) -> Result<(i32, String, String), String> {
        let out = capture(
            Command::new(&self.firmware)
                .current_dir(&self.dir)
                .arg(image),
        )?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The firmware must agree with qemu-img on `image`.
    fn agree(&self, image: &str) -> Result<String, String> {
        let (size, crc) = self.expected(image)?;
        let (code, out, err) = self.firmware(image)?;
        let want = format!("{size}\n{crc}\n");
        if code != 0 || out != want || !err.is_empty() {
            return Err(format!(
                "{image}: firmware exited {code} with stdout {out:?} stderr {err:?}; \
                 qemu-img says size {size}, CRC-32 {crc}"
            ));
        }
        Ok(format!("{image:<28} size {size:>9}  crc32 {crc:>10}  ok"))
    }

    /// The firmware must refuse `image` with exit status 1 and a message holding `needle`.
    fn refuses(&self, image: &str, needle: &str) -> Result<String, String> {
        let (code, out, err) = self.firmware(image)?;
        let line = err.lines().next().unwrap_or("");
        if code != 1
            || !out.is_empty()
            || !line.starts_with("qcow: ")
            || !err.contains(needle)
            || err.contains("internal error")
        {
            return Err(format!(
                "{image}: expected exit 1 and 'qcow: ...{needle}...', got exit {code}, \
                 stdout {out:?}, stderr {err:?}"
            ));
        }
        Ok(format!("{image:<28} refused: {line}"))
    }
}

/// Fails loudly when a QEMU tool is missing.
pub(crate) fn require(tool: &str) -> Result<(), String> {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(format!(
            "`{tool}` is needed to make and read the reference images and was not found \
             (Debian/Ubuntu: apt-get install qemu-utils)"
        )),
    }
}

/// The images both freestanding readers are tested on (firmware-test, uefi-test),
/// made in `lab.dir` (which must have a `chain/` directory): `base.raw`, and from it
/// by QEMU `plain.qcow`, `compressed.qcow`, `big-cluster.qcow` (64 KiB clusters),
/// `chain/over.qcow` (over `../plain.qcow`) and `chain/top.qcow` (over that).
pub(crate) fn shared_images(lab: &Lab, rng: &mut Rng) -> Result<(), String> {
    // The raw disk and pieces of data for qemu-io's `write -s`.
    lab.write("base.raw", &disk(rng))?;
    lab.write("rand-a.bin", &rng.bytes(777_777))?;
    lab.write("rand-b.bin", &rng.bytes(65_536))?;
    lab.write("rand-c.bin", &rng.bytes(70_000))?;
    lab.write("text-64k.bin", &text(65_536))?;

    // 1. Plain: QEMU's own writer, default geometry (4 KiB clusters, 512 L2 entries).
    lab.qemu_img(&["convert", "-O", "qcow", "base.raw", "plain.qcow"])?;

    // 2. Compressed: every non-zero cluster deflated. QEMU 10's qcow driver fails the
    //    zero-length compressed write that ends `convert -c` (exit 1, no message)
    //    after writing the whole image, so the status alone cannot be trusted: accept
    //    a silent 1, and let `qemu-img compare` vouch for the result.
    let out = capture(Command::new("qemu-img").current_dir(&lab.dir).args([
        "convert",
        "-c",
        "-O",
        "qcow",
        "base.raw",
        "compressed.qcow",
    ]))?;
    if !(out.status.success() || out.status.code() == Some(1) && out.stderr.is_empty()) {
        return Err(format!(
            "qemu-img convert -c failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    lab.qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow",
        "base.raw",
        "compressed.qcow",
    ])?;
    let len = |name: &str| fs::metadata(lab.path(name)).map(|m| m.len()).unwrap_or(0);
    if len("compressed.qcow") >= len("plain.qcow") {
        return Err("compressed.qcow is no smaller than plain.qcow: not compressed?".into());
    }

    // 3. 64 KiB clusters, 8192 L2 entries: header by qcow-core (qemu-img only makes
    //    the default geometry), data by QEMU: patterns, random data at odd offsets,
    //    compressed clusters (compressible and not), zero writes, the last sector.
    lab.create(
        "big-cluster.qcow",
        &qcow_core::write::CreateOptions::new(DISK)
            .cluster_bits(Some(16))
            .l2_bits(Some(13)),
    )?;
    let info = lab.qemu_img(&["info", "big-cluster.qcow"])?;
    if !info.contains("cluster_size: 65536") {
        return Err(format!(
            "big-cluster.qcow: QEMU does not see 64 KiB clusters:\n{info}"
        ));
    }
    lab.qemu_io(
        "big-cluster.qcow",
        &[
            "write -q -P 0x5a 0 1M".into(),
            "write -q -s rand-a.bin 1572871 777777".into(),
            "write -q -c -s text-64k.bin 4M 64k".into(),
            "write -q -c -s rand-b.bin 5M 64k".into(),
            "write -q -z 6M 128k".into(),
            "write -q -P 0x77 7000001 4321".into(),
            format!("write -q -P 0x99 {} 512", DISK - 512),
        ],
    )?;

    // 4. An overlay whose backing file is qcow, named relative to the overlay's
    //    directory (chain/ -> ../plain.qcow), written into by QEMU: the zero write
    //    must hide the backing data beneath it.
    lab.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        "../plain.qcow",
        "-F",
        "qcow",
        "chain/over.qcow",
    ])?;
    lab.qemu_io(
        "chain/over.qcow",
        &[
            "write -q -P 0x11 100k 300k".into(),
            "write -q -s rand-c.bin 3145733 70000".into(),
            "write -q -z 6M 8k".into(),
            format!("write -q -P 0x22 {} 512", DISK - 512),
        ],
    )?;

    // 5. Three deep and larger than its backing file: past the backing file's end
    //    the guest reads zeros.
    lab.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        "over.qcow",
        "-F",
        "qcow",
        "chain/top.qcow",
        "10M",
    ])?;
    lab.qemu_io(
        "chain/top.qcow",
        &[
            "write -q -P 0x33 50k 10k".into(),
            "write -q -P 0x44 9M 4k".into(),
        ],
    )?;
    Ok(())
}

/// `cargo xtask firmware-test`.
pub fn firmware_test(args: &[String]) -> Result<(), String> {
    no_args("firmware-test", args)?;
    require("qemu-img")?;
    require("qemu-io")?;
    let firmware = build_firmware()?;
    let dir = root().join("target").join("xtask").join("firmware-test");
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for sub in ["", "chain", "deep"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let lab = Lab { dir, firmware };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut report = Vec::new();

    shared_images(&lab, &mut rng)?;
    report.push(lab.agree("plain.qcow")?);
    report.push(lab.agree("compressed.qcow")?);
    report.push(lab.agree("big-cluster.qcow")?);
    report.push(lab.agree("chain/over.qcow")?);
    report.push(lab.agree("chain/top.qcow")?);

    // 6. A raw backing file, named by an absolute path.
    let raw = lab.path("base.raw").to_string_lossy().into_owned();
    lab.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        &raw,
        "-F",
        "raw",
        "raw-backed.qcow",
        "9M",
    ])?;
    lab.qemu_io("raw-backed.qcow", &["write -q -P 0x55 2M 64k".into()])?;
    report.push(lab.agree("raw-backed.qcow")?);

    // 7. Partial-cluster writes over a compressed backing file (copy-on-write of
    //    compressed clusters).
    lab.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        "../compressed.qcow",
        "-F",
        "qcow",
        "chain/over-compressed.qcow",
    ])?;
    lab.qemu_io(
        "chain/over-compressed.qcow",
        &[
            "write -q -P 0x66 4097 1000".into(),
            "write -q -P 0x67 2100000 70000".into(),
        ],
    )?;
    report.push(lab.agree("chain/over-compressed.qcow")?);

    // 8. The deepest chain accepted: four qcow images over a raw file (5 layers);
    //    one more is refused below.
    let mut below = ("../base.raw".to_string(), "raw");
    for i in 1..=5u64 {
        let name = format!("deep/d{i}.qcow");
        lab.qemu_img(&[
            "create", "-q", "-f", "qcow", "-b", &below.0, "-F", below.1, &name,
        ])?;
        lab.qemu_io(&name, &[format!("write -q -P {} {}M 4k", 0x10 + i, i)])?;
        below = (format!("d{i}.qcow"), "qcow");
    }
    report.push(lab.agree("deep/d4.qcow")?);

    // Refusals: exit 1, `qcow: <message>` on stderr, no panic.
    report.push(lab.refuses("deep/d5.qcow", "backing chain deeper than 5")?);
    report.push(lab.refuses("base.raw", "not a qcow image")?);
    let with_backing =
        |name: &'static [u8]| qcow_core::write::CreateOptions::new(1024 * 1024).backing(Some(name));
    lab.create("loop.qcow", &with_backing(b"loop.qcow"))?;
    report.push(lab.refuses("loop.qcow", "backing chain deeper than")?);
    lab.create("orphan.qcow", &with_backing(b"no-such-file.qcow"))?;
    report.push(lab.refuses("orphan.qcow", "cannot open backing file")?);
    lab.qemu_img(&["create", "-q", "-f", "qcow2", "v3.qcow2", "1M"])?;
    lab.create("over-qcow2.qcow", &with_backing(b"v3.qcow2"))?;
    report.push(lab.refuses("over-qcow2.qcow", "only version 1")?);
    let plain = fs::read(lab.path("plain.qcow")).map_err(|e| format!("plain.qcow: {e}"))?;
    lab.write("truncated.qcow", &plain[..plain.len() / 2])?;
    report.push(lab.refuses("truncated.qcow", "past the end")?);
    report.push(lab.refuses("no-such-image.qcow", "No such file or directory")?);

    eprintln!();
    for line in &report {
        eprintln!("{line}");
    }
    println!("firmware-test: {} passed, 0 failed", report.len());
    Ok(())
}

// ---- firmware-footprint ------------------------------------------------------------

/// `cargo xtask firmware-footprint`: the figures qcow-core/README.md quotes, measured
/// on the images of `firmware-test` (made first when missing): `size`, the peak
/// stack under `valgrind --tool=massif --stacks=yes`, and the peak RSS as the kernel
/// counts it (VmHWM, read under gdb when the process calls exit_group; `/usr/bin/time`
/// would count the forked child before its exec too).
pub fn firmware_footprint(args: &[String]) -> Result<(), String> {
    no_args("firmware-footprint", args)?;
    let dir = root().join("target").join("xtask").join("firmware-test");
    if !dir.join("deep").join("d4.qcow").exists() {
        firmware_test(&[])?;
    }
    let bin = build_firmware()?;
    let len = fs::metadata(&bin)
        .map_err(|e| format!("{}: {e}", bin.display()))?
        .len();
    let nm = stdout_of(Command::new("nm").arg(&bin))?;
    println!("binary: {len} bytes, {} symbols", nm.lines().count());
    print!("{}", stdout_of(Command::new("size").arg(&bin))?);
    println!("{:<28} {:>12} {:>10}", "image", "peak stack", "VmHWM");
    for image in [
        "plain.qcow",
        "compressed.qcow",
        "big-cluster.qcow",
        "chain/top.qcow",
        "deep/d4.qcow",
    ] {
        let massif = dir.join("massif.out");
        let stack = capture(
            Command::new("valgrind")
                .current_dir(&dir)
                .args(["--tool=massif", "--stacks=yes"])
                .arg(format!("--massif-out-file={}", massif.display()))
                .arg(&bin)
                .arg(image),
        )
        .ok()
        .and_then(|_| fs::read_to_string(&massif).ok())
        .and_then(|m| {
            m.lines()
                .filter_map(|l| l.strip_prefix("mem_stacks_B="))
                .filter_map(|v| v.parse::<u64>().ok())
                .max()
        })
        .map_or("(no valgrind)".to_string(), |b| format!("{b} B"));
        let hwm = capture(
            Command::new("gdb")
                .current_dir(&dir)
                .args(["-q", "-batch", "-ex", "catch syscall exit_group", "-ex"])
                .arg(format!("run {image} >/dev/null"))
                .args([
                    "-ex",
                    "python print(open('/proc/%d/status' % gdb.selected_inferior().pid).read())",
                ])
                .arg(&bin),
        )
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "(no gdb)".into());
        println!("{image:<28} {stack:>12} {hwm:>10}");
    }
    Ok(())
}
