//! `qcow map`: how the guest content is stored, as `qemu-img map`.

use std::io::Write;
use std::path::PathBuf;

use qcow_std::map::for_each_extent;
use qcow_std::{Disk, Format};

use crate::common::{err, json_str, CliError, Output, VerbResult};

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
