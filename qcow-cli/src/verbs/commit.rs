//! `qcow commit`: write the overlay's data into its backing file, then empty it.

use std::io::Write;
use std::path::Path;

use crate::common::{err, CliError, VerbResult};

/// Runs `commit`.
pub fn run(file: &Path, password: Option<&Path>, out: &mut dyn Write) -> VerbResult {
    let secret = password.map(crate::common::read_secret).transpose()?;
    qcow_std::commit::commit(file, secret).map_err(CliError::from)?;
    writeln!(out, "Image committed.").map_err(|e| err(file, e))?;
    Ok(0)
}
