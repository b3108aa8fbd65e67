//! `qcow write`: stdin's bytes at a guest offset.

use std::io::Read;
use std::path::Path;

use qcow_std::{Disk, Format};

use crate::common::{err, open_disk, parse_size, CliError, VerbResult};

/// Bytes taken from stdin at a time (a multiple of every cluster size).
const CHUNK: usize = 4 << 20;

/// The bytes left to read on stdin when it is a regular file (`< FILE`), so that a
/// write reaching past the end can be refused before anything is written.
pub fn stdin_len() -> Option<u64> {
    use std::io::Seek;
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let mut f = std::fs::File::from(fd);
    let m = f.metadata().ok()?;
    if !m.is_file() {
        return None;
    }
    let pos = f.stream_position().ok()?;
    Some(m.len().saturating_sub(pos))
}

fn past_end(file: &Path, at: u64, n: u64, size: u64) -> CliError {
    err(
        file,
        format!("write at offset {at} of {n} bytes reaches past the virtual size {size}"),
    )
}

/// Runs `write`, taking the data from `input`; `input_len`, when known, is checked
/// against the virtual size first (otherwise each chunk is checked before it is
/// written, so a piped stream too long for the image is cut after whole chunks).
pub fn run(
    file: &Path,
    format: Option<Format>,
    offset: &str,
    compress: bool,
    password: Option<&Path>,
    input: &mut dyn Read,
    input_len: Option<u64>,
) -> VerbResult {
    let offset = parse_size(offset).map_err(|e| err(file, format!("offset: {e}")))?;
    if format.is_none() {
        crate::common::refuse_other_qcow(file)?;
    }
    let mut disk = open_disk(file, format, password, true)?;
    let size = disk.size();
    if let Some(n) = input_len.filter(|&n| n > 0) {
        if offset.checked_add(n).is_none_or(|e| e > size) {
            return Err(past_end(file, offset, n, size));
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    loop {
        let n = fill(input, &mut buf).map_err(|e| CliError(format!("cannot read stdin: {e}")))?;
        if n == 0 {
            break;
        }
        if at.checked_add(n as u64).is_none_or(|e| e > size) {
            return Err(past_end(file, at, n as u64, size));
        }
        write_chunk(&mut disk, at, &buf[..n], compress)?;
        at += n as u64;
    }
    disk.flush()?;
    Ok(0)
}

fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn write_chunk(disk: &mut Disk, at: u64, data: &[u8], compress: bool) -> Result<(), CliError> {
    let path = disk.path().to_path_buf();
    let image = match disk.qcow() {
        Some(img) if compress => img,
        _ => return Ok(disk.write_at(at, data)?),
    };
    let cs = image.geometry().cluster_size();
    let size = image.size();
    let e = |e| CliError::from(qcow_std::Error::image(&path, e));
    let mut pos = 0usize;
    while pos < data.len() {
        let g = at + pos as u64;
        let in_cl = g % cs;
        let n = ((cs - in_cl) as usize).min(data.len() - pos);
        let piece = &data[pos..pos + n];
        let whole = in_cl == 0 && (n as u64 == cs || g + n as u64 == size);
        if whole {
            image.write_compressed(g, piece).map_err(e)?;
        } else {
            image.write_at(g, piece).map_err(e)?;
        }
        pos += n;
    }
    Ok(())
}
