//! `qcow write`: stdin's bytes at a guest offset.

use std::io::Read;
use std::path::Path;

use qcow_std::{Disk, Format};

use crate::common::{err, open_disk, parse_size, CliError, VerbResult};

/// Bytes taken from stdin at a time (a multiple of every cluster size).
const CHUNK: usize = 4 << 20;

/// Runs `write`, taking the data from `input`.
pub fn run(
    file: &Path,
    format: Option<Format>,
    offset: &str,
    compress: bool,
    password: Option<&Path>,
    input: &mut dyn Read,
) -> VerbResult {
    let offset = parse_size(offset).map_err(|e| err(file, format!("offset: {e}")))?;
    let mut disk = open_disk(file, format, password, true)?;
    let size = disk.size();
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    loop {
        let n = fill(input, &mut buf).map_err(|e| CliError(format!("cannot read stdin: {e}")))?;
        if n == 0 {
            break;
        }
        if at.checked_add(n as u64).is_none_or(|e| e > size) {
            return Err(err(
                file,
                format!("write at offset {at} of {n} bytes reaches past the virtual size {size}"),
            ));
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
