//! `cargo xtask python-test` and the Python rows of `cargo xtask bench`: the `qcow`
//! package (qcow-python/) installed with pip into a virtual environment made from
//! Debian's python3 with `--system-site-packages`, so Debian's `pyqcow`
//! (python3-libqcow) is importable beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{no_args, root, run, stdout_of};

/// Debian's interpreter (not a pyenv shim: python3-libqcow lives in its dist-packages).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The virtual environment's python, made (and the package installed) on first use.
fn venv() -> Result<PathBuf, String> {
    let root = root();
    let dir = root.join("target/python-venv");
    let py = dir.join("bin/python");
    if !Path::new(SYSTEM_PYTHON).exists() {
        return Err(format!(
            "{SYSTEM_PYTHON} not found: install python3, python3-venv and python3-libqcow"
        ));
    }
    if !py.exists() {
        run(Command::new(SYSTEM_PYTHON).args([
            "-m",
            "venv",
            "--system-site-packages",
            &dir.display().to_string(),
        ]))?;
    }
    run(Command::new(&py).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "maturin>=1.5,<2",
        "pytest",
    ]))?;
    // The project's build cache is reused; no build isolation (maturin is installed).
    run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--force-reinstall",
            "--no-deps",
            &root.join("qcow-python").display().to_string(),
        ])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("PATH", with_bin(&dir)))?;
    let pyqcow = Command::new(&py)
        .args(["-c", "import pyqcow"])
        .output()
        .map_err(|e| e.to_string())?;
    if !pyqcow.status.success() {
        return Err("pyqcow is not importable: install Debian's python3-libqcow".into());
    }
    Ok(py)
}

/// `$PATH` with the environment's `bin` first (where pip's build finds maturin).
fn with_bin(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.join("bin")];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap_or_default()
}

/// `cargo xtask python-test`: builds and installs the package, runs its pytest tests.
pub fn python_test(args: &[String]) -> Result<(), String> {
    no_args("python-test", args)?;
    let py = venv()?;
    run(Command::new(&py)
        .args(["-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"])
        .arg(root().join("qcow-python/tests"))
        .current_dir(root().join("qcow-python/tests")))
}

/// Whole-image reads in 1 MiB chunks, qcow and pyqcow alternately (`rounds` each), on
/// `images`: the medians and ratios (pyqcow time / ours) as a Markdown table.
pub fn bench_reads(images: &[PathBuf], rounds: usize) -> Result<String, String> {
    let py = venv()?;
    let mut cmd = Command::new(&py);
    cmd.arg(root().join("qcow-python/bench/read_bench.py"))
        .arg(rounds.to_string());
    for i in images {
        cmd.arg(i);
    }
    stdout_of(&mut cmd)
}

/// `cargo xtask python-bench [--rounds N]`: [`bench_reads`] on the plain and compressed
/// 256 MiB images that `cargo xtask bench` made.
pub fn python_bench(args: &[String]) -> Result<(), String> {
    let rounds = match args {
        [] => 5,
        [flag, n] if flag == "--rounds" => n
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .ok_or("--rounds takes a positive number")?,
        _ => return Err("usage: cargo xtask python-bench [--rounds N]".into()),
    };
    let dir = root().join("target/bench");
    let imgs = [dir.join("in-plain.qcow"), dir.join("in-comp.qcow")];
    if imgs.iter().any(|p| !p.exists()) {
        return Err("the bench images are missing: run `cargo xtask bench` first".into());
    }
    println!("{}", bench_reads(&imgs, rounds)?);
    Ok(())
}
