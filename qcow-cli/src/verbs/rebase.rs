//! `qcow rebase`: change the backing file (qemu-img refuses qcow).

use std::io::Write;
use std::path::Path;

use qcow_core::header::MAX_BACKING_NAME;
use qcow_core::image::{read_backing_name, read_header};
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
        refuse_loop(file, &path)?;
        rebase(image, &mut new, backing.as_bytes()).map_err(core_err)?;
    }
    image.flush().map_err(core_err)?;
    Ok(0)
}

/// Refuses a new backing file whose chain (already opened: no deeper than the limit)
/// comes back to `file`: the image would be its own backing file, and no longer open.
fn refuse_loop(file: &Path, backing: &Path) -> Result<(), CliError> {
    use std::os::unix::ffi::OsStrExt;
    let me = std::fs::canonicalize(file).map_err(|e| err(file, e))?;
    let mut cur = backing.to_path_buf();
    for _ in 0..=OpenOptions::default().max_depth {
        if std::fs::canonicalize(&cur).is_ok_and(|c| c == me) {
            return Err(err(
                file,
                format!(
                    "the new backing chain through {} comes back to this image",
                    backing.display()
                ),
            ));
        }
        if qcow_std::probe(&cur)? != Format::Qcow {
            return Ok(());
        }
        let f = std::fs::File::open(&cur).map_err(|e| err(&cur, e))?;
        let mut io = FileIo::new(f);
        let image_err = |e| CliError::from(qcow_std::Error::image(&cur, e));
        let header = read_header(&mut io).map_err(image_err)?;
        let mut buf = [0u8; MAX_BACKING_NAME];
        let name = read_backing_name(&mut io, &header, &mut buf).map_err(image_err)?;
        if name.is_empty() {
            return Ok(());
        }
        let name = Path::new(std::ffi::OsStr::from_bytes(name)).to_path_buf();
        cur = qcow_std::open::resolve_backing(&cur, &name);
    }
    Ok(())
}
