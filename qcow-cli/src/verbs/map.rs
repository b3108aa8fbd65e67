//! `qcow map`: how the guest content is stored, as `qemu-img map`.

use std::io::Write;
use std::path::PathBuf;

use qcow_core::StatusKind;
use qcow_std::{Disk, Format};

use crate::common::{err, json_str, CliError, Output, VerbResult};

/// One extent of `qemu-img map --output=json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// Layer holding it (0 = the image itself).
    pub depth: u32,
    /// Whether some layer holds it.
    pub present: bool,
    /// Whether it reads as zeros.
    pub zero: bool,
    /// Whether it holds data.
    pub data: bool,
    /// Whether it is compressed.
    pub compressed: bool,
    /// Host offset, for plain data (absent for compressed and encrypted data).
    pub offset: Option<u64>,
}

impl Extent {
    fn continues(&self, next: &Extent) -> bool {
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && match (self.offset, next.offset) {
                (Some(a), Some(b)) => a + self.length == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// Calls `f` on each merged extent of a disk, in order, as soon as it is complete:
/// memory stays constant however many extents a (hostile) image has.
pub fn for_each_extent(
    disk: &Disk,
    mut f: impl FnMut(&Extent) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let size = disk.size();
    let mut cur: Option<Extent> = None;
    let mut at = 0u64;
    while at < size {
        let s = disk.block_status(at, size - at)?;
        let len = s.len.clamp(1, size - at);
        let (present, zero, data, compressed, offset) = match s.kind {
            StatusKind::Unallocated => (false, true, false, false, None),
            StatusKind::Data { host } => (true, false, true, false, Some(host)),
            StatusKind::Hole { host } => (true, true, false, false, Some(host)),
            // QEMU 10 reports encrypted clusters as data without an offset, not
            // as compressed.
            StatusKind::Encrypted { .. } => (true, false, true, false, None),
            StatusKind::Compressed { .. } => (true, false, true, true, None),
        };
        let e = Extent {
            start: at,
            length: len,
            depth: s.depth,
            present,
            zero,
            data,
            compressed,
            offset,
        };
        match &mut cur {
            Some(last) if last.continues(&e) => last.length += len,
            _ => {
                if let Some(done) = cur.replace(e) {
                    f(&done)?;
                }
            }
        }
        at += len;
    }
    if let Some(done) = cur {
        f(&done)?;
    }
    Ok(())
}

/// The arguments of `map`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Format (probed when absent).
    #[arg(short = 'f')]
    format: Option<Format>,
    /// Image file.
    file: PathBuf,
}

/// Runs `map`.
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let (file, format, output) = (a.file.as_path(), a.format, a.output);
    let disk = Disk::options().format(format).open(file)?;
    let out = &mut std::io::BufWriter::new(out);
    let w = CliError::output;
    match output {
        Output::Json => {
            let mut first = true;
            write!(out, "[").map_err(w)?;
            for_each_extent(&disk, |e| {
                let sep = if first { "" } else { ",\n" };
                first = false;
                write!(
                    out,
                    "{sep}{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                    e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
                )
                .map_err(w)?;
                if let Some(o) = e.offset {
                    write!(out, ", \"offset\": {o}").map_err(w)?;
                }
                write!(out, "}}").map_err(w)
            })?;
            writeln!(out, "]").map_err(w)?;
        }
        Output::Human => {
            let chain: Vec<_> = disk.layers().into_iter().map(|l| l.path).collect();
            writeln!(
                out,
                "{:<16}{:<16}{:<16}File",
                "Offset", "Length", "Mapped to"
            )
            .map_err(w)?;
            let hex = |v: u64| {
                if v == 0 {
                    "0".to_string()
                } else {
                    format!("{v:#x}")
                }
            };
            for_each_extent(&disk, |e| {
                if e.data && e.offset.is_none() {
                    return Err(err(
                        file,
                        "File contains external, encrypted or compressed clusters.",
                    ));
                }
                if let Some(o) = e.offset {
                    let f = chain
                        .get(e.depth as usize)
                        .map_or_else(String::new, |p| p.display().to_string());
                    writeln!(
                        out,
                        "{:<16}{:<16}{:<16}{}",
                        hex(e.start),
                        hex(e.length),
                        hex(o),
                        json_str(&f).trim_matches('"')
                    )
                    .map_err(w)?;
                }
                Ok(())
            })?;
        }
    }
    out.flush().map_err(w)?;
    Ok(0)
}
