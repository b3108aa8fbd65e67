//! `qcow rebase`: change the backing file (qemu-img refuses qcow).

use std::io::Write;
use std::path::{Path, PathBuf};

use qcow_std::maint::Maintenance;
use qcow_std::{Disk, Format};

use crate::common::{err, read_secret, VerbResult};

/// The arguments of `rebase`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only rewrite the name; do not copy data.
    #[arg(short = 'u')]
    unsafe_mode: bool,
    /// New backing file ("" removes it).
    #[arg(short = 'b')]
    backing: String,
    /// New backing file's format.
    #[arg(short = 'F')]
    backing_format: Option<Format>,
    /// Secret of encrypted images.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Image file.
    file: PathBuf,
}

/// Runs `rebase`: with `unsafe_mode` only the name changes; otherwise every cluster
/// whose content differs between the old and new backing chains is first copied into
/// the image, so the guest content stays the same.
pub fn run(a: &Args, _out: &mut dyn Write) -> VerbResult {
    let (file, backing, format) = (a.file.as_path(), a.backing.as_str(), a.backing_format);
    let (unsafe_mode, password) = (a.unsafe_mode, a.password_file.as_deref());
    if unsafe_mode {
        let mut m = Maintenance::open(file, true)?;
        if m.format() != Format::Qcow {
            return Err(err(file, "rebase needs a qcow image"));
        }
        m.set_backing_file(backing.as_bytes())?;
        return Ok(0);
    }
    let secret = password.map(read_secret).transpose()?;
    let disk = Disk::options()
        .writable(true)
        .secret(secret.clone())
        .open(file)?;
    if disk.format() != Format::Qcow {
        return Err(err(file, "rebase needs a qcow image"));
    }
    crate::common::require_secret(&disk, secret.is_some())?;
    if backing.is_empty() {
        disk.rebase(b"", None)?;
    } else {
        let path = qcow_std::open::resolve_backing(file, Path::new(backing));
        let new = Disk::options().format(format).secret(secret).open(&path)?;
        disk.rebase(backing.as_bytes(), Some(&new))?;
    }
    disk.flush()?;
    Ok(0)
}
