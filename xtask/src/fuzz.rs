//! The fuzz tasks: `fuzz` runs the cargo-fuzz targets of `fuzz/` (libFuzzer, nightly),
//! `fuzz-ci` runs every target for a minute from the committed inputs (CI runs it),
//! `fuzz-build` builds every target, `fuzz-replay` runs the seed corpora and the crash
//! regressions through the same harnesses on stable, without libFuzzer.

use std::process::Command;

use crate::{root, run, stdout_of};

/// Seconds per target when `fuzz` is given none.
const DEFAULT_SECONDS: u64 = 300;
/// Seconds per target of `fuzz-ci`, when given none.
const CI_SECONDS: u64 = 60;

/// `cargo +nightly` (through rustup's proxy: `$CARGO` is the stable toolchain's own
/// cargo, which takes no `+toolchain`), in `fuzz/`.
fn nightly() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(root().join("fuzz"));
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// Installs cargo-fuzz when it is missing; checks that a nightly toolchain is there.
fn ensure_cargo_fuzz() -> Result<(), String> {
    stdout_of(Command::new("rustc").args(["+nightly", "--version"]))
        .map_err(|e| format!("no nightly toolchain (rustup toolchain install nightly): {e}"))?;
    if stdout_of(nightly().args(["fuzz", "--version"])).is_err() {
        eprintln!("cargo-fuzz is missing: installing it");
        run(Command::new("cargo").args(["install", "cargo-fuzz"]))?;
    }
    Ok(())
}

/// The targets of `fuzz/Cargo.toml`, as `cargo fuzz list` gives them.
fn targets() -> Result<Vec<String>, String> {
    let out = stdout_of(nightly().args(["fuzz", "list"]))?;
    let v: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if v.is_empty() {
        return Err("cargo fuzz list names no target".into());
    }
    Ok(v)
}

/// `cargo xtask fuzz [TARGET] [SECONDS] [-- FLAGS]`: one target, or all in turn, one
/// process at a time (the machine is shared), with libFuzzer's memory limit; FLAGS go
/// to libFuzzer after ours (a later flag wins: `-- -timeout=60` on a loaded machine,
/// where a starved process can spend 10 s of wall time on one input).
pub fn fuzz(args: &[String]) -> Result<(), String> {
    let (args, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (
            args.get(..i).unwrap_or_default(),
            args.get(i + 1..).unwrap_or_default(),
        ),
        None => (args, &[][..]),
    };
    ensure_cargo_fuzz()?;
    let all = targets()?;
    let (chosen, seconds) = match args {
        [] => (all.clone(), DEFAULT_SECONDS),
        [one] => match one.parse::<u64>() {
            Ok(s) => (all.clone(), s),
            Err(_) => (vec![one.clone()], DEFAULT_SECONDS),
        },
        [one, s] => (
            vec![one.clone()],
            s.parse()
                .map_err(|_| format!("SECONDS must be a number (got '{s}')"))?,
        ),
        _ => return Err("usage: cargo xtask fuzz [TARGET] [SECONDS] [-- FLAGS]".into()),
    };
    for t in &chosen {
        if !all.contains(t) {
            return Err(format!(
                "no fuzz target '{t}' (targets: {})",
                all.join(", ")
            ));
        }
    }
    for t in &chosen {
        eprintln!("==> fuzz {t} for {seconds} s");
        run(nightly()
            .args(["fuzz", "run", t, "--"])
            .args(libfuzzer_flags(t, seconds, 10))
            .args(extra))?;
    }
    Ok(())
}

/// libFuzzer's flags for a run of `seconds`: its memory limit, a limit of `timeout`
/// seconds of wall time per input (a slower one is a hang, and fails the run), the
/// statistics at the end.
///
/// `nbd` runs the server, whose worker threads are scoped: their thread-local and
/// thread bookkeeping is freed as each thread ends, a moment after the scope has
/// joined it, which libFuzzer's per-input leak check can see as a leak that no run
/// of the saved input alone reproduces. Leak detection is off for that target only.
fn libfuzzer_flags(target: &str, seconds: u64, timeout: u64) -> Vec<String> {
    let mut v = vec![
        format!("-max_total_time={seconds}"),
        "-rss_limit_mb=2048".into(),
        format!("-timeout={timeout}"),
        "-print_final_stats=1".into(),
    ];
    if target == "nbd" {
        v.push("-detect_leaks=0".into());
    }
    v
}

/// `fuzz-ci`'s limit per input, in seconds of wall time. Inputs take well under a
/// second; the margin keeps a slow or busy CI machine from failing on timing alone,
/// while a real hang still fails.
const CI_TIMEOUT: u64 = 60;

/// `cargo xtask fuzz-ci [SECONDS]`: every target in turn, one process at a time, for
/// SECONDS (default 60) each, from the committed inputs only (the `seed-*` files of
/// `corpus/TARGET` and the `regressions/TARGET` files, copied to a fresh directory
/// under `fuzz/target`, so what earlier runs left in `corpus/` plays no part). Fails
/// on the first crash, leak, hang (an input running 60 s) or out-of-memory (libFuzzer
/// writes the input to `fuzz/artifacts/TARGET/`).
pub fn fuzz_ci(args: &[String]) -> Result<(), String> {
    let seconds = match args {
        [] => CI_SECONDS,
        [s] => s
            .parse()
            .map_err(|_| format!("SECONDS must be a number (got '{s}')"))?,
        _ => return Err("usage: cargo xtask fuzz-ci [SECONDS]".into()),
    };
    ensure_cargo_fuzz()?;
    let fuzz = root().join("fuzz");
    for t in targets()? {
        let dir = fuzz.join("target").join("ci-corpus").join(&t);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = copy_inputs(&fuzz.join("corpus").join(&t), &dir, true)?
            + copy_inputs(&fuzz.join("regressions").join(&t), &dir, false)?;
        if n == 0 {
            return Err(format!("no committed input for fuzz target {t}"));
        }
        eprintln!("==> fuzz {t} for {seconds} s from {n} committed inputs");
        run(nightly()
            .args(["fuzz", "run", &t])
            .arg(&dir)
            .arg("--")
            .args(libfuzzer_flags(&t, seconds, CI_TIMEOUT)))?;
    }
    Ok(())
}

/// Copies the files of `from` (only `seed-*` ones when `seeds`) into `to`; a missing
/// `from` has none. Returns how many.
fn copy_inputs(from: &std::path::Path, to: &std::path::Path, seeds: bool) -> Result<usize, String> {
    let Ok(rd) = std::fs::read_dir(from) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd {
        let p = e.map_err(|e| format!("{}: {e}", from.display()))?.path();
        let Some(name) = p.file_name() else { continue };
        if !p.is_file() || (seeds && !name.to_string_lossy().starts_with("seed-")) {
            continue;
        }
        std::fs::copy(&p, to.join(name)).map_err(|e| format!("{}: {e}", p.display()))?;
        n += 1;
    }
    Ok(n)
}

/// `cargo xtask fuzz-build`: every target builds (with libFuzzer and ASan), so none
/// rots.
pub fn fuzz_build(args: &[String]) -> Result<(), String> {
    crate::no_args("fuzz-build", args)?;
    ensure_cargo_fuzz()?;
    run(nightly().args(["fuzz", "build"]))
}

/// `cargo xtask fuzz-replay`: the seed corpora and crash regressions through the
/// harnesses, on the stable toolchain.
pub fn fuzz_replay(args: &[String]) -> Result<(), String> {
    crate::no_args("fuzz-replay", args)?;
    let manifest = root().join("fuzz").join("Cargo.toml");
    run(crate::cargo()
        .arg("test")
        .arg("--manifest-path")
        .arg(manifest))
}
