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
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Create(verbs::create::Args),
    /// Show an image's format, sizes, backing file.
    Info(verbs::info::Args),
    /// Copy an image into a new raw or qcow image.
    Convert(verbs::convert::Args),
    /// Compare the guest content of two images.
    Compare(verbs::compare::Args),
    /// Show how the guest content is stored.
    Map(verbs::map::Args),
    /// Verify (and repair) an image's structure.
    Check(verbs::check::Args),
    /// Write an overlay's data into its backing file, then empty the overlay.
    Commit(verbs::commit::Args),
    /// Change the virtual size.
    Resize(verbs::resize::Args),
    /// Change the backing file.
    Rebase(verbs::rebase::Args),
    /// Write guest bytes [OFFSET, OFFSET+LENGTH) to stdout.
    Read(verbs::read::Args),
    /// Mount the guest disk and its partitions as files (FUSE).
    Mount(verbs::mount::Args),
    /// Serve the image over NBD (as qemu-nbd).
    Nbd(verbs::nbd::Args),
    /// Write stdin's bytes at guest OFFSET.
    Write(verbs::write::Args),
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
        Verb::Compare(_) => 2,
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
