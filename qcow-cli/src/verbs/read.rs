//! `qcow read`: guest bytes to stdout.

use std::io::Write;
use std::path::Path;

use qcow_std::Format;

use crate::common::{err, open_disk, parse_size, CliError, VerbResult};

/// Bytes read per request.
const CHUNK: u64 = 4 << 20;

/// Runs `read`.
pub fn run(
    file: &Path,
    format: Option<Format>,
    offset: &str,
    length: &str,
    password: Option<&Path>,
    out: &mut dyn Write,
) -> VerbResult {
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
    let mut buf = vec![0u8; CHUNK.min(length) as usize];
    let mut done = 0u64;
    while done < length {
        let n = (length - done).min(CHUNK) as usize;
        disk.read_at(offset + done, &mut buf[..n])?;
        out.write_all(&buf[..n])
            .map_err(|e| CliError(format!("cannot write output: {e}")))?;
        done += n as u64;
    }
    Ok(0)
}
