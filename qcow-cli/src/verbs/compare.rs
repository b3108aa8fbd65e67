//! `qcow compare`: do two images hold the same guest content?

use std::io::Write;
use std::path::Path;

use qcow_std::{Disk, Format};

use crate::common::{open_disk, CliError, VerbResult};

const CHUNK: u64 = 4 << 20;

/// Runs `compare`: 0 identical, 1 different (first differing offset printed), errors
/// are exit 2 (by the caller).
pub fn run(
    a: &Path,
    b: &Path,
    fa: Option<Format>,
    fb: Option<Format>,
    password: Option<&Path>,
    strict: bool,
    out: &mut dyn Write,
) -> VerbResult {
    let da = open_disk(a, fa, password, false)?;
    let db = open_disk(b, fb, password, false)?;
    let w = |e: std::io::Error| CliError(format!("cannot write output: {e}"));
    let (sa, sb) = (da.size(), db.size());
    if strict && sa != sb {
        writeln!(out, "Strict mode: Image size mismatch!").map_err(w)?;
        return Ok(1);
    }
    let common = sa.min(sb);
    if let Some(off) = first_difference(&da, &db, common)? {
        writeln!(out, "Content mismatch at offset {off}!").map_err(w)?;
        return Ok(1);
    }
    if sa != sb {
        writeln!(out, "Warning: Image size mismatch!").map_err(w)?;
        let longer = if sa > sb { &da } else { &db };
        if let Some(off) = first_nonzero(longer, common)? {
            writeln!(out, "Content mismatch at offset {off}!").map_err(w)?;
            return Ok(1);
        }
    }
    writeln!(out, "Images are identical.").map_err(w)?;
    Ok(0)
}

/// Bytes from `at` that read as zeros without reading them (unallocated, or a hole).
fn unallocated(d: &Disk, at: u64, max: u64) -> Result<u64, CliError> {
    Ok(d.zero_run(at, max)?)
}

/// The first differing 512-byte sector (as qemu-img reports it) below `end`.
fn first_difference(a: &Disk, b: &Disk, end: u64) -> Result<Option<u64>, CliError> {
    let mut x = vec![0u8; CHUNK as usize];
    let mut y = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < end {
        let n = (end - at).min(CHUNK);
        let skip = unallocated(a, at, n)?.min(unallocated(b, at, n)?);
        if skip > 0 {
            at += skip;
            continue;
        }
        let n = n as usize;
        a.read_at(at, &mut x[..n])?;
        b.read_at(at, &mut y[..n])?;
        if x[..n] != y[..n] {
            let i = x[..n]
                .iter()
                .zip(&y[..n])
                .position(|(p, q)| p != q)
                .unwrap_or(0);
            return Ok(Some(at + (i as u64 / 512) * 512));
        }
        at += n as u64;
    }
    Ok(None)
}

fn first_nonzero(d: &Disk, from: u64) -> Result<Option<u64>, CliError> {
    let end = d.size();
    let mut x = vec![0u8; CHUNK as usize];
    let mut at = from;
    while at < end {
        let n = (end - at).min(CHUNK);
        let skip = unallocated(d, at, n)?;
        if skip > 0 {
            at += skip;
            continue;
        }
        let n = n as usize;
        d.read_at(at, &mut x[..n])?;
        if let Some(i) = x[..n].iter().position(|&v| v != 0) {
            return Ok(Some(at + (i as u64 / 512) * 512));
        }
        at += n as u64;
    }
    Ok(None)
}
