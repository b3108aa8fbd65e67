//! `qcow write`: stdin's bytes at a guest offset.

use std::io::Read;
use std::path::{Path, PathBuf};

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

/// The arguments of `write`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Compress whole clusters where possible.
    #[arg(short = 'c')]
    compress: bool,
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
}

/// Runs `write`, taking the data from `input`; `input_len`, when known (stdin is a
/// file), is checked against the virtual size first; otherwise the input is spooled
/// first and refused whole when it is too long. Nothing is written then.
pub fn run(a: &Args, input: &mut dyn Read, input_len: Option<u64>) -> VerbResult {
    let (file, format, password) = (a.file.as_path(), a.format, a.password_file.as_deref());
    let (offset, compress) = (a.offset.as_str(), a.compress);
    let offset = parse_size(offset).map_err(|e| err(file, format!("offset: {e}")))?;
    let disk = open_disk(file, format, password, true)?;
    let size = disk.size();
    if let Some(n) = input_len.filter(|&n| n > 0) {
        if offset.checked_add(n).is_none_or(|e| e > size) {
            return Err(past_end(file, offset, n, size));
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    if input_len.is_some() {
        loop {
            let n = fill(input, &mut buf).map_err(|e| CliError::Stream {
                what: "read stdin",
                source: e,
            })?;
            if n == 0 {
                break;
            }
            if at.checked_add(n as u64).is_none_or(|e| e > size) {
                return Err(past_end(file, at, n as u64, size));
            }
            write_chunk(&disk, at, &buf[..n], compress)?;
            at += n as u64;
        }
    } else {
        // A pipe: take all of it first (into an unlinked temporary file past the first
        // chunk), so a stream too long for the image is refused before anything is
        // written.
        let spool = spool(input, size.saturating_sub(offset), &mut buf)
            .map_err(|e| CliError::Stream { what: "read stdin", source: e })?
            .ok_or_else(|| {
                err(
                    file,
                    format!(
                        "write at offset {offset} of more than {} bytes reaches past the virtual size {size}",
                        size.saturating_sub(offset)
                    ),
                )
            })?;
        match spool {
            Spool::Memory(n) => write_chunk(&disk, at, &buf[..n], compress)?,
            Spool::File(f, total) => {
                use std::os::unix::fs::FileExt;
                let mut done = 0u64;
                while done < total {
                    let n = (total - done).min(CHUNK as u64) as usize;
                    f.read_exact_at(&mut buf[..n], done)
                        .map_err(|e| CliError::Stream {
                            what: "read the spooled input",
                            source: e,
                        })?;
                    write_chunk(&disk, at, &buf[..n], compress)?;
                    at += n as u64;
                    done += n as u64;
                }
            }
        }
    }
    disk.flush()?;
    Ok(0)
}

/// Where [`spool`] put the input.
enum Spool {
    /// All of it is in the buffer: this many bytes.
    Memory(usize),
    /// In this unlinked file, this many bytes.
    File(std::fs::File, u64),
}

/// Reads all of `input`; `None` when it holds more than `limit` bytes.
fn spool(input: &mut dyn Read, limit: u64, buf: &mut [u8]) -> std::io::Result<Option<Spool>> {
    use std::io::Write;
    let n = fill(input, buf)?;
    if n as u64 > limit {
        return Ok(None);
    }
    if n < buf.len() {
        return Ok(Some(Spool::Memory(n)));
    }
    let path = std::env::temp_dir().join(format!(
        "qcow-write-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    f.write_all(&buf[..n])?;
    let mut total = n as u64;
    loop {
        let k = fill(input, buf)?;
        if k == 0 {
            break;
        }
        total += k as u64;
        if total > limit {
            return Ok(None);
        }
        f.write_all(&buf[..k])?;
    }
    Ok(Some(Spool::File(f, total)))
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

fn write_chunk(disk: &Disk, at: u64, data: &[u8], compress: bool) -> Result<(), CliError> {
    if compress {
        disk.write_compressed(at, data)?;
    } else {
        disk.write_at(at, data)?;
    }
    Ok(())
}
