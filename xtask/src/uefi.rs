//! Tasks of issue 17: `uefi [--password-file F] [--disk IMAGE]... IMAGE...` and
//! `uefi-test`.
//!
//! The UEFI application (examples/uefi) is built as a static library for the Linux
//! target (the toolchain has no UEFI target) and made a PE with Debian's gnu-efi:
//! crt0's `_start` (relocates the image, calls `efi_main`), libgnuefi's `_relocate`,
//! examples/uefi/efi.lds, then `objcopy --target=efi-app-x86_64`. [`build_uefi`]
//! checks what that needs: only `R_X86_64_RELATIVE` relocations (all `_relocate`
//! applies), every allocated section of the ELF in the PE (objcopy drops the rest
//! silently), no undefined symbol, no allocator, no std.
//!
//! The images are put on a FAT file system (mtools, dosfstools) with the
//! application as `\EFI\BOOT\BOOTX64.EFI`, and OVMF boots it under
//! `qemu-system-x86_64` with TCG (no KVM needed). The application prints on the
//! console, which OVMF copies to the serial port, and powers the machine off.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::firmware::{
    build_clean, example_command, forbidden, require, shared_images, Lab, Rng, DISK,
};
use crate::{no_args, root, stdout_of};

/// gnu-efi's start code and relocator, and OVMF, as Debian installs them.
const CRT0: &str = "/usr/lib/crt0-efi-x86_64.o";
const LIBGNUEFI: &str = "/usr/lib/libgnuefi.a";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The list of images the application reads (examples/uefi/src/manifest.rs).
const LIST: &str = "qcow-uefi.txt";
/// A boot that has not powered off by then is a hang.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// The PE sections objcopy keeps (gnu-efi's list, and .bss).
const PE_SECTIONS: &[&str] = &[
    ".text", ".sdata", ".data", ".bss", ".dynamic", ".dynsym", ".rel", ".rela", ".rel.*",
    ".rela.*", ".reloc",
];

fn uefi_dir() -> PathBuf {
    root().join("examples").join("uefi")
}

/// Fails, naming the Debian package, when a file or tool the task needs is missing.
fn require_installed() -> Result<(), String> {
    for (file, package) in [
        (CRT0, "gnu-efi"),
        (LIBGNUEFI, "gnu-efi"),
        (OVMF_CODE, "ovmf"),
        (OVMF_VARS, "ovmf"),
    ] {
        if !Path::new(file).is_file() {
            return Err(format!(
                "{file} is missing: install the Debian package {package} (.ci/run does)"
            ));
        }
    }
    for (tool, package) in [
        ("ld", "binutils"),
        ("objcopy", "binutils"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
        (
            "qemu-system-x86_64",
            "qemu-system-x86 (from bookworm-backports)",
        ),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!(
                "`{tool}` is missing: install {package} (.ci/run does)"
            ));
        }
    }
    Ok(())
}

/// Builds the application and returns the path of its `.efi` file.
pub fn build_uefi() -> Result<PathBuf, String> {
    require_installed()?;
    let dir = uefi_dir();
    let target_dir = dir.join("target");
    build_clean(
        example_command(&dir)
            .args(["build", "--release", "--target-dir"])
            .arg(&target_dir),
    )?;
    let release = target_dir.join("x86_64-unknown-linux-gnu").join("release");
    let lib = release.join("libqcow_uefi.a");
    let so = release.join("qcow-uefi.so");
    let efi = release.join("qcow-uefi.efi");
    crate::run(
        Command::new("ld")
            .args(["-nostdlib", "-znocombreloc", "-shared", "-Bsymbolic"])
            .args(["--gc-sections", "--no-undefined", "-T"])
            .arg(dir.join("efi.lds"))
            .arg("--version-script")
            .arg(dir.join("local.ver"))
            .arg(CRT0)
            .arg(&lib)
            .arg(LIBGNUEFI)
            .arg("-o")
            .arg(&so),
    )?;
    let mut objcopy = Command::new("objcopy");
    objcopy.arg("--strip-all");
    for s in PE_SECTIONS {
        objcopy.args(["-j", s]);
    }
    crate::run(
        objcopy
            .args(["--target=efi-app-x86_64", "--subsystem=10"])
            .arg(&so)
            .arg(&efi),
    )?;
    check_relocations(&so)?;
    check_symbols(&so)?;
    check_sections(&so, &efi)?;
    let len = fs::metadata(&efi)
        .map_err(|e| format!("{}: {e}", efi.display()))?
        .len();
    eprintln!("{}: {len} bytes", efi.display());
    Ok(efi)
}

/// Only `R_X86_64_RELATIVE`: the one kind gnu-efi's `_relocate` applies.
fn check_relocations(so: &Path) -> Result<(), String> {
    let out = stdout_of(Command::new("readelf").args(["-r", "-W"]).arg(so))?;
    let mut relative = 0;
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(kind) = fields.get(2).filter(|k| k.starts_with("R_")) else {
            continue;
        };
        if *kind != "R_X86_64_RELATIVE" {
            return Err(format!(
                "{}: relocation {kind} left, which _relocate does not apply:\n{line}",
                so.display()
            ));
        }
        relative += 1;
    }
    eprintln!(
        "{}: {relative} relocations, all R_X86_64_RELATIVE",
        so.display()
    );
    Ok(())
}

/// No undefined symbol, no allocator or libc, nothing of std.
fn check_symbols(so: &Path) -> Result<(), String> {
    let nm = stdout_of(Command::new("nm").arg("--demangle").arg(so))?;
    let mut symbols = 0;
    for line in nm.lines() {
        let (kind, name) = match line.get(17..).and_then(|l| l.split_once(' ')) {
            Some((kind, name)) if line.len() > 17 => (kind, name),
            _ => match line.trim_start().split_once(' ') {
                Some((kind, name)) => (kind, name),
                None => continue,
            },
        };
        symbols += 1;
        if kind == "U" || kind == "w" || kind == "v" {
            return Err(format!("{}: undefined symbol {name}", so.display()));
        }
        if forbidden(name) || name.contains("std::") || name.contains("alloc::alloc") {
            return Err(format!("{}: has symbol {name}", so.display()));
        }
    }
    if symbols == 0 {
        return Err(format!("{}: nm found no symbols to check", so.display()));
    }
    eprintln!(
        "{}: {symbols} symbols, none undefined, no allocator, libc or std",
        so.display()
    );
    Ok(())
}

/// Name and size of each section `objdump -h` lists (with `alloc_only`, those
/// flagged ALLOC).
fn sections(file: &Path, alloc_only: bool) -> Result<Vec<(String, u64)>, String> {
    let out = stdout_of(Command::new("objdump").arg("-h").arg(file))?;
    let lines: Vec<&str> = out.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(idx), Some(name), Some(size)) = (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        if idx.parse::<u32>().is_err() {
            continue;
        }
        let size = u64::from_str_radix(size, 16).map_err(|e| format!("objdump -h: {e}"))?;
        let flags = lines.get(i + 1).copied().unwrap_or("");
        if !alloc_only || flags.contains("ALLOC") {
            found.push((name.to_string(), size));
        }
    }
    Ok(found)
}

/// Every allocated, non-empty section of the ELF is in the PE, as large: none was
/// an orphan that objcopy dropped.
fn check_sections(so: &Path, efi: &Path) -> Result<(), String> {
    let pe = sections(efi, false)?;
    let elf = sections(so, true)?;
    for (name, size) in &elf {
        // The ELF hash tables are for a dynamic loader; UEFI has none.
        if *size == 0 || name == ".hash" || name == ".gnu.hash" || name == ".dynstr" {
            continue;
        }
        if !pe.iter().any(|(n, s)| n == name && s == size) {
            return Err(format!(
                "section {name} ({size} bytes) of {} is not in {}: add it to \
                 examples/uefi/efi.lds (and to objcopy's list)",
                so.display(),
                efi.display()
            ));
        }
    }
    let line: Vec<String> = pe.iter().map(|(n, s)| format!("{n} {s}")).collect();
    eprintln!(
        "{}: every allocated section is in the PE: {}",
        so.display(),
        line.join(", ")
    );
    Ok(())
}

// ---- the FAT volume and the boot ---------------------------------------------------

/// `path` with `.` and `..` resolved lexically (as the application resolves names on
/// the volume), made absolute against the current directory.
fn normalize(path: &Path) -> Result<PathBuf, String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("current directory: {e}"))?
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

/// The backing chain of the image at `image` (absolute, normalized): every file it
/// names that exists, resolved as the application and QEMU resolve them, and
/// whether any name was absolute. A file that does not open ends the walk (the
/// application then says so).
fn chain_files(image: &Path) -> Result<(Vec<PathBuf>, bool), String> {
    let mut files = vec![image.to_path_buf()];
    let mut absolute = false;
    let mut current = image.to_path_buf();
    // Deeper than the application reads is pointless; a loop ends here too.
    for _ in 0..qcow_core::chain::LAYERS {
        let Ok(bytes) = fs::read(&current) else { break };
        let mut io = qcow_core::io::SliceIo(&bytes);
        let Ok(header) = qcow_core::image::read_header(&mut io) else {
            break;
        };
        let mut buf = [0u8; qcow_core::header::MAX_BACKING_NAME];
        let name = match qcow_core::image::read_backing_name(&mut io, &header, &mut buf) {
            Ok(name) if !name.is_empty() => String::from_utf8_lossy(name).into_owned(),
            _ => break,
        };
        absolute |= name.starts_with('/');
        let next = normalize(&current.parent().unwrap_or(Path::new("/")).join(&name))?;
        if !next.is_file() || files.contains(&next) {
            break;
        }
        files.push(next.clone());
        current = next;
    }
    Ok((files, absolute))
}

/// What to boot: images on the volume (with an optional password file), and
/// images attached as raw disks.
#[derive(Default)]
struct Boot {
    images: Vec<PathBuf>,
    password: Option<PathBuf>,
    disks: Vec<PathBuf>,
}

/// The application's output, and how long the machine ran.
struct Booted {
    lines: Vec<String>,
    took: Duration,
}

/// The volume path of `file` below the directory `base`, `/`-separated.
fn on_volume(file: &Path, base: &Path) -> Result<String, String> {
    let rel = file
        .strip_prefix(base)
        .map_err(|_| format!("{} is not below {}", file.display(), base.display()))?;
    Ok(rel.to_string_lossy().replace('\\', "/"))
}

/// Makes the FAT volume `fat` in `work`: the application, the images and their
/// backing chains (below the directory common to all of them, `/` when a backing
/// file is named by an absolute path, so the names resolve there as on the host),
/// the password file, and the list.
fn make_volume(work: &Path, efi: &Path, boot: &Boot) -> Result<PathBuf, String> {
    let mut files = Vec::new();
    let mut any_absolute = false;
    let mut tops = Vec::new();
    for image in &boot.images {
        let image = normalize(image)?;
        if !image.is_file() {
            return Err(format!("{}: no such file", image.display()));
        }
        let (chain, absolute) = chain_files(&image)?;
        any_absolute |= absolute;
        for f in chain {
            if !files.contains(&f) {
                files.push(f);
            }
        }
        tops.push(image);
    }
    let base = if any_absolute {
        PathBuf::from("/")
    } else {
        let mut base = files
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        while !files.iter().all(|f| f.starts_with(&base)) {
            base.pop();
        }
        base
    };
    let mut list = String::from("# made by cargo xtask uefi\n");
    let secret = boot.password.as_ref().map(|_| "qcow-uefi.secret");
    for top in &tops {
        list.push_str(&on_volume(top, &base)?);
        if let Some(s) = secret {
            list.push(' ');
            list.push_str(s);
        }
        list.push('\n');
    }
    let list_file = work.join(LIST);
    fs::write(&list_file, &list).map_err(|e| format!("{}: {e}", list_file.display()))?;

    // Room for the files, the application, and FAT's own structures.
    let mut bytes = 4 << 20;
    for f in files.iter().chain([efi.to_path_buf()].iter()) {
        bytes += fs::metadata(f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .len();
    }
    let kib = (bytes + bytes / 8) / 1024 + 1024;
    let fat = work.join("boot.fat");
    let _ = fs::remove_file(&fat);
    stdout_of(
        Command::new("mkfs.fat")
            .args(["-n", "QCOW", "-C"])
            .arg(&fat)
            .arg(kib.to_string()),
    )?;
    let mtools = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let mut cmd = Command::new(args[0]);
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&fat)
            .args(&args[1..]);
        stdout_of(&mut cmd).map(drop)
    };
    let mut dirs = vec!["EFI".to_string(), "EFI/BOOT".to_string()];
    let mut copies = vec![
        (efi.to_path_buf(), "EFI/BOOT/BOOTX64.EFI".to_string()),
        (list_file, LIST.to_string()),
    ];
    if let Some(p) = &boot.password {
        copies.push((p.clone(), "qcow-uefi.secret".to_string()));
    }
    for f in &files {
        let dest = on_volume(f, &base)?;
        let mut prefix = String::new();
        for part in dest
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !dirs.contains(&prefix) {
                dirs.push(prefix.clone());
            }
        }
        copies.push((f.clone(), dest));
    }
    for d in &dirs {
        mtools(&["mmd".as_ref(), format!("::/{d}").as_ref()])?;
    }
    for (from, to) in &copies {
        mtools(&[
            "mcopy".as_ref(),
            from.as_os_str(),
            format!("::/{to}").as_ref(),
        ])?;
    }
    Ok(fat)
}

/// `from` copied to `to`, padded with zeros to whole 512-byte sectors (a disk's
/// last partial sector would be cut off; zeros past the end change nothing).
fn padded_copy(from: &Path, to: &Path) -> Result<(), String> {
    let mut data = fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    data.resize(data.len().div_ceil(512) * 512, 0);
    fs::write(to, &data).map_err(|e| format!("{}: {e}", to.display()))
}

/// Boots OVMF on the volume (and the disks) in `work`, and returns what the
/// application printed: the lines from `qcow-uefi: start` to its tally.
fn boot(work: &Path, efi: &Path, what: &Boot) -> Result<Booted, String> {
    fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let fat = make_volume(work, efi, what)?;
    let vars = work.join("OVMF_VARS.fd");
    fs::copy(OVMF_VARS, &vars).map_err(|e| format!("{}: {e}", vars.display()))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35,accel=tcg",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
    ])
    .args(["-net", "none", "-drive"])
    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
    .arg("-drive")
    .arg(format!("if=none,id=boot,format=raw,file={}", fat.display()))
    .args(["-device", "virtio-blk-pci,drive=boot,bootindex=1"]);
    for (i, disk) in what.disks.iter().enumerate() {
        let copy = work.join(format!("disk{i}.img"));
        padded_copy(disk, &copy)?;
        // A boot index makes OVMF connect the disk (with a boot order it connects
        // only the devices in it); the volume, first, is what boots.
        qemu.arg("-drive")
            .arg(format!(
                "if=none,id=disk{i},format=raw,readonly=on,file={}",
                copy.display()
            ))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=disk{i},bootindex={}", i + 2));
    }
    let log = work.join("serial.log");
    let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    eprintln!("$ {}", crate::show(&qemu));
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run qemu-system-x86_64: {e}"))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > BOOT_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the machine did not power off within {} s (serial output: {})",
                    BOOT_LIMIT.as_secs(),
                    log.display()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for qemu-system-x86_64: {e}")),
        }
    };
    let took = start.elapsed();
    let raw = fs::read(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let text = strip_escapes(&String::from_utf8_lossy(&raw));
    if !status.success() {
        return Err(format!("qemu-system-x86_64 exited with {status}:\n{text}"));
    }
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end().to_string())
        .skip_while(|l| l != "qcow-uefi: start")
        .collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("qcow-uefi: ") && l.contains(" read, "));
    match end {
        Some(end) => Ok(Booted {
            lines: lines[..=end].to_vec(),
            took,
        }),
        None => Err(format!(
            "the application did not finish (no tally line); serial output:\n{text}"
        )),
    }
}

/// The text without the terminal's escape sequences (ESC [ ... letter) and CRs.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `cargo xtask uefi [--password-file F] [--disk IMAGE]... IMAGE...`.
pub fn uefi(args: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: cargo xtask uefi [--password-file FILE] [--disk IMAGE]... IMAGE...";
    let mut what = Boot::default();
    let mut args = args.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--password-file" => what.password = Some(args.next().ok_or(USAGE)?.into()),
            "--disk" => what.disks.push(args.next().ok_or(USAGE)?.into()),
            s if s.starts_with('-') => return Err(USAGE.into()),
            image => what.images.push(image.into()),
        }
    }
    if what.images.is_empty() && what.disks.is_empty() {
        return Err(USAGE.into());
    }
    let efi = build_uefi()?;
    let booted = boot(
        &root().join("target").join("xtask").join("uefi"),
        &efi,
        &what,
    )?;
    for line in &booted.lines {
        println!("{line}");
    }
    eprintln!(
        "booted, read and powered off in {:.1} s",
        booted.took.as_secs_f64()
    );
    Ok(())
}

// ---- uefi-test ---------------------------------------------------------------------

/// `cargo xtask uefi-test`.
pub fn uefi_test(args: &[String]) -> Result<(), String> {
    no_args("uefi-test", args)?;
    require("qemu-img")?;
    require("qemu-io")?;
    let efi = build_uefi()?;
    // Clippy holds the application's unsafe blocks to their SAFETY comments.
    build_clean(
        example_command(&uefi_dir())
            .args(["clippy", "--quiet", "--release", "--target-dir"])
            .arg(uefi_dir().join("target"))
            .args(["--", "-D", "warnings"]),
    )?;
    let dir = root().join("target").join("xtask").join("uefi-test");
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let images = dir.join("images");
    fs::create_dir_all(images.join("chain")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lab = Lab {
        dir: images.clone(),
        firmware: efi.clone(),
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // plain, compressed, 64 KiB clusters, chain/top.qcow -> chain/over.qcow ->
    // ../plain.qcow: the images examples/firmware is tested on.
    shared_images(&lab, &mut rng)?;

    // Encrypted (AES-CBC), the password in a file; QEMU writes more into it.
    lab.write("secret.txt", b"uefi-test password")?;
    let object = "secret,id=s0,file=secret.txt";
    let opts = "driver=qcow,file.filename=encrypted.qcow,encrypt.key-secret=s0";
    lab.qemu_img(&[
        "convert",
        "--object",
        object,
        "-O",
        "qcow",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s0",
        "base.raw",
        "encrypted.qcow",
    ])?;
    stdout_of(
        Command::new("qemu-io")
            .current_dir(&images)
            .args(["--object", object, "--image-opts"])
            .args(["-c", "write -q -P 0x3c 1000000 70001", opts]),
    )?;
    lab.qemu_img(&[
        "convert",
        "--object",
        object,
        "--image-opts",
        opts,
        "-O",
        "raw",
        "expected.raw",
    ])?;
    let data = fs::read(images.join("expected.raw")).map_err(|e| format!("expected.raw: {e}"))?;
    let encrypted = (data.len() as u64, qcow_example_common::crc32::crc32(&data));
    let plain = fs::read(images.join("plain.qcow")).map_err(|e| format!("plain.qcow: {e}"))?;
    if fs::read(images.join("encrypted.qcow")).ok().as_deref() == Some(&plain[..]) {
        return Err("encrypted.qcow equals plain.qcow: not encrypted?".into());
    }

    // Hostile: a data cluster past the end of the file, and a chain that loops.
    lab.write("truncated.qcow", &plain[..plain.len() / 2])?;
    lab.create(
        "loop.qcow",
        &qcow_core::write::CreateOptions::new(DISK).backing(Some(b"loop.qcow")),
    )?;

    // Everything in one boot: the listed images (the password applies to the
    // encrypted one only: the others ignore it), and a qcow image as a raw disk.
    let listed = [
        "plain.qcow",
        "compressed.qcow",
        "big-cluster.qcow",
        "encrypted.qcow",
        "chain/top.qcow",
        "truncated.qcow",
        "loop.qcow",
    ];
    let what = Boot {
        images: listed.iter().map(|i| images.join(i)).collect(),
        password: Some(images.join("secret.txt")),
        disks: vec![images.join("compressed.qcow")],
    };
    let booted = boot(&dir.join("boot"), &efi, &what)?;
    for line in &booted.lines {
        eprintln!("  | {line}");
    }
    let printed = |label: &str| {
        booted
            .lines
            .iter()
            .find(|l| {
                l.starts_with(&format!("{label}: ")) || l.starts_with(&format!("qcow: {label}: "))
            })
            .cloned()
            .unwrap_or_default()
    };
    let mut report = Vec::new();
    let mut agree = |label: &str, (size, crc): (u64, u32)| -> Result<(), String> {
        let want = format!("{label}: size {size} crc32 {crc}");
        let got = printed(label);
        if got != want {
            return Err(format!(
                "{label}: the application printed {got:?}; qemu-img says size {size}, CRC-32 {crc}"
            ));
        }
        report.push(format!("{label:<28} size {size:>9}  crc32 {crc:>10}  ok"));
        Ok(())
    };
    for image in [
        "plain.qcow",
        "compressed.qcow",
        "big-cluster.qcow",
        "chain/top.qcow",
    ] {
        agree(image, lab.expected(image)?)?;
    }
    agree("encrypted.qcow", encrypted)?;
    // The disk: the only block device holding qcow; its label names its handle.
    let disk = booted
        .lines
        .iter()
        .find(|l| l.starts_with("disk "))
        .and_then(|l| l.split(':').next())
        .unwrap_or("disk ?")
        .to_string();
    agree(&disk, lab.expected("compressed.qcow")?)?;
    for (image, needle) in [
        ("truncated.qcow", "past the end"),
        ("loop.qcow", "backing chain deeper than"),
    ] {
        let line = printed(image);
        if !line.starts_with(&format!("qcow: {image}: ")) || !line.contains(needle) {
            return Err(format!(
                "{image}: expected a refusal 'qcow: {image}: ...{needle}...', got {line:?}"
            ));
        }
        report.push(format!("{image:<28} refused: {line}"));
    }
    let tally = booted.lines.last().cloned().unwrap_or_default();
    if !tally.starts_with("qcow-uefi: 6 read, 2 refused; stack ")
        || booted.lines.iter().any(|l| l.contains("internal error"))
    {
        return Err(format!("unexpected tally or a panic: {:?}", booted.lines));
    }
    report.push(format!(
        "powered off cleanly ({:.1} s): {tally}",
        booted.took.as_secs_f64()
    ));

    eprintln!();
    for line in &report {
        eprintln!("{line}");
    }
    println!("uefi-test: {} passed, 0 failed", report.len());
    Ok(())
}
