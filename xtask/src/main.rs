//! Project automation, run as `cargo xtask <task> [args]` (the alias is in
//! `.cargo/config.toml`). Only `std` and the project's own crates: nothing to install
//! beyond the tools a task names (qemu-img, nm, ...).
//!
//! Every task is one row of [`TASKS`]. To add one: write a `fn(&[String]) ->
//! Result<(), String>` (in its own module for anything sizeable), add a row, and, if
//! CI should run it, call it from [`ci`].

mod bench;
mod firmware;
mod fuzz;
mod python;
mod uefi;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};

/// A task: `cargo xtask <name> <usage>`.
struct Task {
    /// What follows `cargo xtask`.
    name: &'static str,
    /// Its arguments, for `help`.
    usage: &'static str,
    /// One line for `help`.
    about: &'static str,
    /// Runs it with the arguments after the name.
    run: fn(&[String]) -> Result<(), String>,
}

/// Every task, in the order `help` lists them.
const TASKS: &[Task] = &[
    Task {
        name: "ci",
        usage: "",
        about: "everything CI runs (see fn ci in xtask/src/main.rs)",
        run: ci,
    },
    // ---- fuzz / bench tasks go here --------------------------------------------
    Task {
        name: "fuzz",
        usage: "[TARGET] [SECONDS] [-- FLAGS]",
        about: "run one cargo-fuzz target of fuzz/ (all in turn when none is named) for \
                SECONDS each (default 300), on nightly, FLAGS passed to libFuzzer; \
                installs cargo-fuzz if missing",
        run: fuzz::fuzz,
    },
    Task {
        name: "fuzz-ci",
        usage: "[SECONDS]",
        about: "every cargo-fuzz target in turn for SECONDS each (default 60), from the \
                committed seeds and regressions only; fails on any crash (CI runs it)",
        run: fuzz::fuzz_ci,
    },
    Task {
        name: "fuzz-build",
        usage: "",
        about: "build every fuzz target (cargo +nightly fuzz build), so none rots",
        run: fuzz::fuzz_build,
    },
    Task {
        name: "fuzz-replay",
        usage: "",
        about: "the fuzz seed corpora and crash regressions through the harnesses, on \
                stable without libFuzzer (cargo test in fuzz/)",
        run: fuzz::fuzz_replay,
    },
    Task {
        name: "bench",
        usage: "[--rounds N] [--write]",
        about: "qcow and qemu-img side by side on a 256 MiB mixed input: medians, \
                ratios, peak memory (--write: benches/RESULTS.md and results.svg)",
        run: bench::bench,
    },
    Task {
        name: "python-test",
        usage: "",
        about: "build and pip-install qcow-python into a venv of Debian's python3 \
                (--system-site-packages: pyqcow beside it) and run its pytest tests",
        run: python::python_test,
    },
    Task {
        name: "python-bench",
        usage: "[--rounds N]",
        about: "whole-image reads in 1 MiB chunks, qcow's Python package and pyqcow \
                alternately, on the bench images (also run at the end of `bench`)",
        run: python::python_bench,
    },
    // ---- no_std and firmware (examples/firmware, xtask/src/firmware.rs) ---------
    Task {
        name: "nostd",
        usage: "",
        about: "qcow-core's feature matrix, a bare-metal target, and the firmware binary \
                checked with nm: no allocator, no libc, statically linked",
        run: firmware::nostd,
    },
    Task {
        name: "firmware",
        usage: "IMAGE",
        about: "build examples/firmware (release) and run it on IMAGE: prints the \
                virtual size and the CRC-32 of the guest content",
        run: firmware::firmware,
    },
    Task {
        name: "firmware-test",
        usage: "",
        about: "compare the firmware's CRC-32 with qemu-img's raw conversion on images \
                made by QEMU (plain, compressed, 64 KiB clusters, backing chains)",
        run: firmware::firmware_test,
    },
    Task {
        name: "firmware-footprint",
        usage: "",
        about: "the firmware's size, peak stack (valgrind) and peak RSS (gdb) on the \
                firmware-test images: the figures of qcow-core/README.md",
        run: firmware::firmware_footprint,
    },
    // ---- UEFI (examples/uefi, xtask/src/uefi.rs) ---------------------------------
    Task {
        name: "uefi",
        usage: "[--password-file F] [--disk IMAGE]... IMAGE...",
        about: "build examples/uefi, put the images (and their backing files) on a FAT \
                volume, boot OVMF under qemu-system-x86_64 and print what the UEFI \
                application printed: virtual size and CRC-32 of each",
        run: uefi::uefi,
    },
    Task {
        name: "uefi-test",
        usage: "",
        about: "boot the UEFI application on images made by QEMU (plain, compressed, \
                64 KiB clusters, encrypted, a chain, a raw disk, hostile ones) and \
                compare with qemu-img's raw conversion",
        run: uefi::uefi_test,
    },
    // ---- other tasks ---------------------------------------------------------
    Task {
        name: "help",
        usage: "",
        about: "this list",
        run: help,
    },
];

/// What CI runs, in order. Add the checks CI should make here.
fn ci(args: &[String]) -> Result<(), String> {
    no_args("ci", args)?;
    for tool in ["qemu-img", "qemu-io"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!(
                "{tool} not found: install qemu-utils (the tests need it)"
            ));
        }
    }
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    run(cargo().args(["test", "--workspace"]))?;
    for name in [
        "nostd",
        "firmware-test",
        "fuzz-replay",
        "fuzz-build",
        "python-test",
        "fuzz-ci",
    ] {
        run_task(name, &[])?;
    }
    run_task("uefi-test", &[])?;
    Ok(())
}

fn help(_: &[String]) -> Result<(), String> {
    println!("usage: cargo xtask <task> [args]\n\ntasks:");
    for t in TASKS {
        let head = format!("{} {}", t.name, t.usage);
        println!("  {:<22} {}", head.trim_end(), t.about);
    }
    Ok(())
}

/// Runs the task `name` (used by `ci` and other composite tasks).
fn run_task(name: &str, args: &[String]) -> Result<(), String> {
    let task = TASKS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("no task named '{name}' (try `cargo xtask help`)"))?;
    eprintln!("==> xtask {name}");
    (task.run)(args).map_err(|e| format!("{name}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((name, rest)) = args.split_first() else {
        let _ = help(&[]);
        return ExitCode::FAILURE;
    };
    match run_task(name, rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- helpers shared by tasks ---------------------------------------------------

/// Fails unless `args` is empty.
fn no_args(task: &str, args: &[String]) -> Result<(), String> {
    match args.first() {
        None => Ok(()),
        Some(a) => Err(format!("{task} takes no arguments (got '{a}')")),
    }
}

/// The workspace root (the parent of xtask/).
fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// `cargo`, the one running us when there is one.
fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// The command line of `cmd`, for messages.
fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited output; fails unless it exits 0.
fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("$ {}", show(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run `{}`: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {status}", show(cmd)))
    }
}

/// Runs `cmd` and returns its output, whatever its status.
fn capture(cmd: &mut Command) -> Result<Output, String> {
    cmd.output()
        .map_err(|e| format!("cannot run `{}`: {e}", show(cmd)))
}

/// Runs `cmd` and returns its stdout; fails (with its stderr) unless it exits 0.
fn stdout_of(cmd: &mut Command) -> Result<String, String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
