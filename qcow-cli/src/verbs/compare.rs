//! `qcow compare`: do two images hold the same guest content?

use std::io::Write;
use std::path::PathBuf;

use qcow_std::{Disk, Format};

use crate::common::{open_disk, CliError, VerbResult};

const CHUNK: u64 = 4 << 20;

/// The arguments of `compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Format of A.
    #[arg(short = 'f')]
    format_a: Option<Format>,
    /// Format of B.
    #[arg(short = 'F')]
    format_b: Option<Format>,
    /// Secret of encrypted images.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Fail when the sizes differ.
    #[arg(short = 's')]
    strict: bool,
    /// First image.
    a: PathBuf,
    /// Second image.
    b: PathBuf,
}

/// Runs `compare`: 0 identical, 1 different (first differing offset printed), errors
/// are exit 2 (by the caller).
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let (fa, fb, strict) = (a.format_a, a.format_b, a.strict);
    let password = a.password_file.as_deref();
    let (a, b) = (a.a.as_path(), a.b.as_path());
    let da = open_disk(a, fa, password, false)?;
    let db = open_disk(b, fb, password, false)?;
    let w = CliError::output;
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
