//! `qcow rebase`: change the backing file (qemu-img refuses qcow).

use std::io::Write;
use std::path::Path;

use qcow_core::maint::{rebase, set_backing_file};
use qcow_core::NoBacking;
use qcow_std::file::FileIo;
use qcow_std::{Format, OpenOptions};

use crate::common::{err, read_secret, CliError, VerbResult};

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
    if qcow_std::probe(file)? != Format::Qcow {
        return Err(err(file, "rebase needs a qcow image"));
    }
    let core_err = |e| CliError::from(qcow_std::Error::image(file, e));
    if unsafe_mode {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .map_err(|e| err(file, e))?;
        let mut io = FileIo::new(f);
        set_backing_file(&mut io, backing.as_bytes()).map_err(core_err)?;
        io.file().sync_data().map_err(|e| err(file, e))?;
        return Ok(0);
    }
    let secret = password.map(read_secret).transpose()?;
    let opts = OpenOptions {
        writable: true,
        secret: secret.clone(),
        ..OpenOptions::default()
    };
    let mut disk = qcow_std::open(file, &opts)?;
    crate::common::require_secret(&mut disk, secret.is_some())?;
    let image = disk
        .qcow()
        .ok_or_else(|| err(file, "rebase needs a qcow image"))?;
    if backing.is_empty() {
        rebase(image, &mut NoBacking::new(), b"").map_err(core_err)?;
    } else {
        let path = qcow_std::open::resolve_backing(file, Path::new(backing));
        let opts = OpenOptions {
            format,
            secret,
            ..OpenOptions::default()
        };
        let mut new = qcow_std::open(&path, &opts)?;
        rebase(image, &mut new, backing.as_bytes()).map_err(core_err)?;
    }
    image.flush().map_err(core_err)?;
    Ok(0)
}
