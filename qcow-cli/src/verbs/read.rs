//! `qcow read`: guest bytes to stdout.

use std::io::Write;
use std::path::PathBuf;

use qcow_std::Format;

use crate::common::{err, open_disk, parse_size, CliError, VerbResult};

/// The arguments of `read`.
#[derive(Debug, clap::Args)]
pub struct Args {
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
}

/// Runs `read`.
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let (file, format, password) = (a.file.as_path(), a.format, a.password_file.as_deref());
    let (offset, length) = (a.offset.as_str(), a.length.as_str());
    let offset = parse_size(offset).map_err(|e| err(file, format!("offset: {e}")))?;
    let length = parse_size(length).map_err(|e| err(file, format!("length: {e}")))?;
    let disk = open_disk(file, format, password, false)?;
    let size = disk.size();
    if offset.checked_add(length).is_none_or(|e| e > size) {
        return Err(err(
            file,
            format!(
                "read at offset {offset} of {length} bytes reaches past the virtual size {size}"
            ),
        ));
    }
    disk.read_in_order(offset, length, 0, |part| {
        out.write_all(part).map_err(CliError::output)
    })?;
    Ok(0)
}
