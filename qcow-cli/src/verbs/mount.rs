//! `qcow mount`: the guest disk and its partitions as files, over FUSE.
//!
//! Without `--foreground` the verb re-executes itself with `--foreground` and
//! [`READY_ENV`] set, its stdin/stdout on `/dev/null` and its stderr a pipe to us: the
//! child opens the image, mounts, then writes [`READY_MARK`] as a line; we relay what
//! came before it (warnings, or the one `qcow: ` error line and its exit status) and
//! return 0 once the mark arrives. No `fork` in a threaded process, no `unsafe`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qcow_std::Format;

use crate::common::{err, open_disk, CliError, VerbResult};

/// Set in the background child's environment: announce readiness on stderr.
pub const READY_ENV: &str = "QCOW_MOUNT_READY";
/// The line the background child writes on stderr once the mount is live.
pub const READY_MARK: &str = "\u{1}qcow-mount-ready";

/// The arguments of `mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Allow writes.
    #[arg(long)]
    pub rw: bool,
    /// Format (probed when absent).
    #[arg(short = 'f')]
    pub format: Option<Format>,
    /// Secret of encrypted images.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// FUSE mount options (e.g. allow_other).
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// Serve in this process instead of returning once mounted.
    #[arg(long)]
    pub foreground: bool,
    /// Image file.
    pub file: PathBuf,
    /// Existing directory to mount on.
    pub mountpoint: PathBuf,
}

/// Runs `mount`.
pub fn run(args: &Args) -> VerbResult {
    if args.foreground {
        serve(args)
    } else {
        background(args)
    }
}

/// Writes a line on stderr, ignoring failure (after readiness nobody may be reading).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Opens, mounts and serves in this process until the mount goes away.
fn serve(args: &Args) -> VerbResult {
    let announce = std::env::var_os(READY_ENV).is_some();
    match std::fs::metadata(&args.mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(err(&args.mountpoint, "mount point is not a directory")),
        Err(e) => return Err(err(&args.mountpoint, format!("mount point: {e}"))),
    }
    let disk = open_disk(
        &args.file,
        args.format,
        args.password_file.as_deref(),
        args.rw,
    )?;
    let table = qcow_mount::table(&disk);
    for w in &table.warnings {
        say(&format!(
            "qcow: {}: warning: partition table: {w}",
            args.file.display()
        ));
    }
    let files = qcow_mount::windows(&disk, &table);
    let opts = qcow_mount::MountOptions {
        writable: args.rw,
        fuse: args.options.clone(),
    };
    let mounted = qcow_mount::mount(disk, files, &args.mountpoint, &opts)
        .map_err(|e| err(&args.mountpoint, format!("cannot mount: {e}")))?;
    if announce {
        say(READY_MARK);
    }
    // From here on stderr may have no reader: report without failing.
    match mounted.run() {
        Ok(()) => Ok(0),
        Err(e) => {
            say(&format!("qcow: {}: {e}", args.mountpoint.display()));
            Ok(1)
        }
    }
}

/// The arguments of the foreground child, with absolute paths (it runs in `/`).
fn child_args(args: &Args) -> Result<Vec<OsString>, CliError> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| err(p, e));
    let mut v: Vec<OsString> = vec!["mount".into(), "--foreground".into()];
    if args.rw {
        v.push("--rw".into());
    }
    if let Some(f) = args.format {
        v.extend(["-f".into(), f.to_string().into()]);
    }
    if let Some(p) = &args.password_file {
        v.extend(["--password-file".into(), abs(p)?.into()]);
    }
    for o in &args.options {
        v.extend(["-o".into(), o.into()]);
    }
    v.extend([
        "--".into(),
        abs(&args.file)?.into(),
        abs(&args.mountpoint)?.into(),
    ]);
    Ok(v)
}

/// Starts the server in the background and returns once the mount is live.
fn background(args: &Args) -> VerbResult {
    let exe = std::env::current_exe().map_err(|e| CliError::Stream {
        what: "find the qcow executable",
        source: e,
    })?;
    let mut child = Command::new(exe)
        .args(child_args(args)?)
        .env(READY_ENV, "1")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's ^C does not reach the server.
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::Stream {
            what: "start the mount process",
            source: e,
        })?;
    let Some(pipe) = child.stderr.take() else {
        return Err(CliError::Stream {
            what: "read the mount process's stderr",
            source: std::io::ErrorKind::BrokenPipe.into(),
        });
    };
    let mut reported = false;
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        if line == READY_MARK {
            // Live: the child keeps serving; its stderr pipe closes with us.
            return Ok(0);
        }
        reported |= line.starts_with("qcow: ") && !line.contains(": warning: ");
        say(&line);
    }
    let status = child.wait().map_err(|e| CliError::Stream {
        what: "wait for the mount process",
        source: e,
    })?;
    match status.code() {
        Some(c) if c != 0 && reported => Ok(u8::try_from(c).unwrap_or(1)),
        Some(0) => Err(err(
            &args.mountpoint,
            "the mount process ended before mounting",
        )),
        _ => Err(err(
            &args.mountpoint,
            format!("the mount process failed ({status})"),
        )),
    }
}
