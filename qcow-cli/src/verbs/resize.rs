//! `qcow resize`: change the virtual size (qemu-img refuses qcow).

use std::io::Write;
use std::path::PathBuf;

use qcow_std::maint::{Maintenance, ResizeOptions};

use crate::common::{err, parse_size, read_secret, CliError, VerbResult};

/// The arguments of `resize`.
#[derive(Debug, clap::Args)]
pub struct Args {
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
}

/// Runs `resize`: SIZE, +SIZE or -SIZE.
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let (file, size, shrink) = (a.file.as_path(), a.size.as_str(), a.shrink);
    let password = a.password_file.as_deref();
    // Another image format is refused by name (resize has no -f raw).
    let mut m = Maintenance::open(file, true)?;
    let current = m.size()?;
    let (sign, digits) = match size.as_bytes().first() {
        Some(b'+') => (1, &size[1..]),
        Some(b'-') => (-1, &size[1..]),
        _ => (0, size),
    };
    let n = parse_size(digits).map_err(|e| err(file, e))?;
    let new = match sign {
        1 => current
            .checked_add(n)
            .ok_or_else(|| err(file, "new size overflows"))?,
        -1 => current.checked_sub(n).ok_or_else(|| {
            err(
                file,
                format!("cannot shrink by {n}: the image is only {current} bytes"),
            )
        })?,
        _ => n,
    };
    if new == 0 {
        return Err(err(file, "the new size must be at least 1 byte"));
    }
    let secret = password.map(read_secret).transpose()?;
    m.resize(&ResizeOptions::new(new).shrink(shrink).secret(secret))?;
    writeln!(out, "Image resized.").map_err(CliError::output)?;
    Ok(0)
}
