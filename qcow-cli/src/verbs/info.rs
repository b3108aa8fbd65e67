//! `qcow info`: format, sizes, backing file. Needs no password.

use std::io::Write;
use std::path::{Path, PathBuf};

use qcow_std::{Disk, Format};

use crate::common::{disk_usage, human_size, json_str, Output, VerbResult};

/// The arguments of `info`.
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

/// Runs `info`.
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let (file, format, output) = (a.file.as_path(), a.format, a.output);
    let disk = Disk::options().format(format).no_backing(true).open(file)?;
    let size = disk.size();
    let actual = disk_usage(file);
    let name = file.display().to_string();
    let fmt = disk.format();
    let info = disk.info();
    let (cluster, encrypted) = (info.cluster_size, info.encrypted);
    let backing = info
        .backing_name
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let w = crate::common::CliError::output;
    match output {
        Output::Json => {
            let mut fields = vec![
                format!("    \"virtual-size\": {size}"),
                format!("    \"filename\": {}", json_str(&name)),
            ];
            if let Some(c) = cluster {
                fields.push(format!("    \"cluster-size\": {c}"));
            }
            fields.push(format!("    \"format\": \"{fmt}\""));
            fields.push(format!("    \"actual-size\": {actual}"));
            if fmt == Format::Qcow {
                fields.push(format!("    \"encrypted\": {encrypted}"));
            }
            if let Some(b) = &backing {
                let full = qcow_std::open::resolve_backing(file, Path::new(b));
                fields.push(format!(
                    "    \"full-backing-filename\": {}",
                    json_str(&full.display().to_string())
                ));
                fields.push(format!("    \"backing-filename\": {}", json_str(b)));
            }
            fields.push("    \"dirty-flag\": false".into());
            writeln!(out, "{{\n{}\n}}", fields.join(",\n")).map_err(w)?;
        }
        Output::Human => {
            writeln!(out, "image: {name}").map_err(w)?;
            writeln!(out, "file format: {fmt}").map_err(w)?;
            writeln!(out, "virtual size: {} ({size} bytes)", human_size(size)).map_err(w)?;
            writeln!(out, "disk size: {}", human_size(actual)).map_err(w)?;
            if encrypted {
                writeln!(out, "encrypted: yes").map_err(w)?;
            }
            if let Some(c) = cluster {
                writeln!(out, "cluster_size: {c}").map_err(w)?;
            }
            if let Some(b) = &backing {
                // As qemu-img: the resolved path too, when it differs from the name.
                let full = qcow_std::open::resolve_backing(file, Path::new(b));
                if full.as_os_str() == std::ffi::OsStr::new(b) {
                    writeln!(out, "backing file: {b}").map_err(w)?;
                } else {
                    writeln!(out, "backing file: {b} (actual path: {})", full.display())
                        .map_err(w)?;
                }
            }
        }
    }
    Ok(0)
}
