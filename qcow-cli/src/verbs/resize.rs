//! `qcow resize`: change the virtual size (qemu-img refuses qcow).

use std::io::Write;
use std::path::Path;

use qcow_std::maint::{Maintenance, ResizeOptions};

use crate::common::{err, parse_size, read_secret, CliError, VerbResult};

/// Runs `resize`: SIZE, +SIZE or -SIZE.
pub fn run(
    file: &Path,
    size: &str,
    shrink: bool,
    password: Option<&Path>,
    out: &mut dyn Write,
) -> VerbResult {
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
    writeln!(out, "Image resized.").map_err(|e| CliError(format!("cannot write output: {e}")))?;
    Ok(0)
}
