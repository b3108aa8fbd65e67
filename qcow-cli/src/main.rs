//! `qcow`: qemu-img's verbs for QEMU's qcow (version 1) images.
//!
//! Argument parsing lives here; each verb is a function in [`verbs`] that writes to a
//! given writer and returns its exit status, so it can be tested without a process.
// Only `os` (one commented OS edge) may use `unsafe`.
#![deny(unsafe_code)]

mod common;
mod os;
mod verbs;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use common::Output;
use qcow_std::Format;

#[derive(Parser)]
#[command(
    name = "qcow",
    version,
    about = "qemu-img for QEMU's qcow (version 1) images"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

/// The verbs of `../shared/CLI.md`.
#[derive(Subcommand)]
pub enum Verb {
    /// Create a new image.
    Create {
        /// Backing file (stored as given; relative to FILE's directory).
        #[arg(short = 'b')]
        backing: Option<String>,
        /// Backing file format.
        #[arg(short = 'F')]
        backing_format: Option<Format>,
        /// Do not open the backing file (it need not exist yet; SIZE is then required).
        #[arg(short = 'u')]
        unsafe_mode: bool,
        /// Encrypt with QEMU's legacy AES-CBC (weak; LUKS/qcow2 is the modern choice).
        #[arg(long)]
        encrypt: bool,
        /// File whose bytes are the secret.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Image file.
        file: PathBuf,
        /// Virtual size (defaults to the backing file's).
        size: Option<String>,
    },
    /// Show an image's format, sizes, backing file.
    Info {
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Format (probed when absent).
        #[arg(short = 'f')]
        format: Option<Format>,
        /// Image file.
        file: PathBuf,
    },
    /// Copy an image into a new raw or qcow image.
    Convert {
        /// Source format (probed when absent).
        #[arg(short = 'f')]
        format: Option<Format>,
        /// Output format.
        #[arg(short = 'O', default_value = "raw")]
        out_format: Format,
        /// Write compressed clusters.
        #[arg(short = 'c')]
        compress: bool,
        /// Show progress on stderr.
        #[arg(short = 'p')]
        progress: bool,
        /// Make DST an overlay of BACKING holding only what differs.
        #[arg(short = 'B')]
        backing: Option<String>,
        /// Worker threads for compression (default: all cores).
        #[arg(short = 'm')]
        threads: Option<usize>,
        /// Secret of an encrypted source.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Secret of the encrypted output.
        #[arg(long)]
        target_password_file: Option<PathBuf>,
        /// Encrypt the output (needs --target-password-file).
        #[arg(long)]
        encrypt: bool,
        /// Source image.
        src: PathBuf,
        /// Destination image.
        dst: PathBuf,
    },
    /// Compare the guest content of two images.
    Compare {
        /// Format of A.
        #[arg(short = 'f')]
        format_a: Option<Format>,
        /// Format of B.
        #[arg(short = 'F')]
        format_b: Option<Format>,
        /// Secret of encrypted images.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Fail when the sizes differ.
        #[arg(short = 's')]
        strict: bool,
        /// First image.
        a: PathBuf,
        /// Second image.
        b: PathBuf,
    },
    /// Show how the guest content is stored.
    Map {
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Format (probed when absent).
        #[arg(short = 'f')]
        format: Option<Format>,
        /// Image file.
        file: PathBuf,
    },
    /// Verify (and repair) an image's structure.
    Check {
        /// Repair: `leaks` or `all`.
        #[arg(short = 'r')]
        repair: Option<verbs::check::RepairMode>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Format (must be qcow).
        #[arg(short = 'f')]
        format: Option<Format>,
        /// Image file.
        file: PathBuf,
    },
    /// Write an overlay's data into its backing file, then empty the overlay.
    Commit {
        /// Secret of encrypted images.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Overlay.
        file: PathBuf,
    },
    /// Change the virtual size.
    Resize {
        /// Allow shrinking (drops the clusters past the new end).
        #[arg(long)]
        shrink: bool,
        /// Secret of an encrypted image (needed to shrink it inside a cluster).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Image file.
        file: PathBuf,
        /// New size, or +SIZE / -SIZE relative to the current one.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Change the backing file.
    Rebase {
        /// Only rewrite the name; do not copy data.
        #[arg(short = 'u')]
        unsafe_mode: bool,
        /// New backing file ("" removes it).
        #[arg(short = 'b')]
        backing: String,
        /// New backing file's format.
        #[arg(short = 'F')]
        backing_format: Option<Format>,
        /// Secret of encrypted images.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Image file.
        file: PathBuf,
    },
    /// Write guest bytes [OFFSET, OFFSET+LENGTH) to stdout.
    Read {
        /// Secret of encrypted images.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Format (probed when absent).
        #[arg(short = 'f')]
        format: Option<Format>,
        /// Image file.
        file: PathBuf,
        /// Guest offset.
        offset: String,
        /// Length.
        length: String,
    },
    /// Write stdin's bytes at guest OFFSET.
    Write {
        /// Compress whole clusters where possible.
        #[arg(short = 'c')]
        compress: bool,
        /// Secret of encrypted images.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Format (probed when absent).
        #[arg(short = 'f')]
        format: Option<Format>,
        /// Image file.
        file: PathBuf,
        /// Guest offset.
        offset: String,
    },
    /// Serve the image over NBD (as qemu-nbd).
    Nbd {
        /// Export read-only.
        #[arg(short = 'r', long = "read-only")]
        read_only: bool,
        /// Format (probed when absent).
        #[arg(short = 'f', long = "format")]
        format: Option<Format>,
        /// Listen on this unix socket.
        #[arg(short = 'k', long = "socket", conflicts_with = "port")]
        socket: Option<PathBuf>,
        /// TCP port.
        #[arg(short = 'p', long = "port", default_value_t = 10809)]
        port: u16,
        /// TCP address to listen on.
        #[arg(short = 'b', long = "bind", default_value = "127.0.0.1")]
        bind: String,
        /// Export name.
        #[arg(short = 'x', long = "export-name", default_value = "")]
        name: String,
        /// Export description.
        #[arg(short = 'D', long = "description", default_value = "")]
        description: String,
        /// Keep serving after the last client leaves.
        #[arg(short = 't', long = "persistent")]
        persistent: bool,
        /// Clients served at once.
        #[arg(short = 'e', long = "shared", default_value_t = 1)]
        shared: usize,
        /// Return once the socket accepts connections; serve in the background.
        #[arg(long)]
        fork: bool,
        /// Write the server's pid here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Secret of an encrypted image.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Image file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // A usage error is an error: exit 2 for compare (its own codes), else 1.
            let compare = std::env::args().nth(1).is_some_and(|v| v == "compare");
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ if compare => 2,
                _ => 1,
            };
            if code == 0 {
                let _ = e.print();
            } else {
                // One line, as every error of ours: `qcow: what is wrong`.
                let what = if e.kind()
                    == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                {
                    "a verb is required".to_string()
                } else {
                    let text = e.render().to_string();
                    let words: Vec<&str> = text
                        .lines()
                        .take_while(|l| !l.trim().is_empty())
                        .map(str::trim)
                        .collect();
                    let joined = words.join(" ");
                    joined
                        .strip_prefix("error: ")
                        .unwrap_or(&joined)
                        .to_string()
                };
                eprintln!("qcow: {what} (see qcow --help)");
            }
            return ExitCode::from(code);
        }
    };
    let error_code = match cli.verb {
        Verb::Compare { .. } => 2,
        _ => 1,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let r = verbs::run(cli.verb, &mut out);
    let _ = out.flush();
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("qcow: {e}");
            ExitCode::from(error_code)
        }
    }
}
