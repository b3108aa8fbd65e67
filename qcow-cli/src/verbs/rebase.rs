//! `qcow rebase`: change the backing file (qemu-img refuses qcow).

use std::io::Write;
use std::path::Path;

use qcow_std::maint::Maintenance;
use qcow_std::{Disk, Format};

use crate::common::{err, read_secret, VerbResult};

/// Runs `rebase`: with `unsafe_mode` only the name changes; otherwise every cluster
/// whose content differs between the old and new backing chains is first copied into
/// the image, so the guest content stays the same.
pub fn run(
    file: &Path,
    backing: &str,
    format: Option<Format>,
    unsafe_mode: bool,
    password: Option<&Path>,
    _out: &mut dyn Write,
) -> VerbResult {
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
