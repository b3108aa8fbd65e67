//! `qcow commit`: write the overlay's data into its backing file, then empty it.

use std::io::Write;
use std::path::PathBuf;

use crate::common::{err, CliError, VerbResult};

/// The arguments of `commit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Secret of encrypted images.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Overlay.
    file: PathBuf,
}

/// Runs `commit`.
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let (file, password) = (a.file.as_path(), a.password_file.as_deref());
    let secret = password.map(crate::common::read_secret).transpose()?;
    qcow_std::commit::commit(file, secret).map_err(CliError::from)?;
    writeln!(out, "Image committed.").map_err(|e| err(file, e))?;
    Ok(0)
}
