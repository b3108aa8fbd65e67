//! `qcow resize`: change the virtual size (qemu-img refuses qcow).

use std::io::Write;
use std::path::Path;

use qcow_core::maint::resize_with_key;
use qcow_std::file::FileIo;
use qcow_std::Format;

use crate::common::{err, parse_size, read_secret, CliError, VerbResult};

/// Runs `resize`: SIZE, +SIZE or -SIZE.
pub fn run(
    file: &Path,
    size: &str,
    shrink: bool,
    password: Option<&Path>,
    out: &mut dyn Write,
) -> VerbResult {
    // Another image format is refused by name (resize has no -f raw).
    let format = qcow_std::probe(file)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(|e| err(file, e))?;
    let mut io = FileIo::new(f);
    let header = match format {
        Format::Qcow => Some(
            qcow_core::image::read_header(&mut io)
                .map_err(|e| CliError::from(qcow_std::Error::image(file, e)))?,
        ),
        Format::Raw => None,
    };
    let current = match &header {
        Some(h) => h.geometry().size,
        None => io.file().metadata().map_err(|e| err(file, e))?.len(),
    };
    let (sign, digits) = match size.as_bytes().first() {
        Some(b'+') => (1, &size[1..]),
        Some(b'-') => (-1, &size[1..]),
        _ => (0, size),
    };
    let n = parse_size(digits).map_err(|e| err(file, e))?;
    let new = match sign {
        1 => current
            .checked_add(n)
            .ok_or_else(|| err(file, "new size overflows"))?,
        -1 => current.checked_sub(n).ok_or_else(|| {
            err(
                file,
                format!("cannot shrink by {n}: the image is only {current} bytes"),
            )
        })?,
        _ => n,
    };
    if new == 0 {
        return Err(err(file, "the new size must be at least 1 byte"));
    }
    if new < current && !shrink {
        return Err(err(
            file,
            format!("shrinking from {current} to {new} bytes drops data: use --shrink to confirm"),
        ));
    }
    match &header {
        Some(h) => {
            let secret = password.map(read_secret).transpose()?;
            let cipher = match &secret {
                Some(s) if h.is_encrypted() => {
                    Some(qcow_core::crypt::Cipher::from_secret(s).map_err(|_| {
                        err(file, "secret is not valid UTF-8 (or holds a NUL byte)")
                    })?)
                }
                _ => None,
            };
            let cut = new.div_ceil(512) * 512 % h.geometry().cluster_size() != 0;
            if h.is_encrypted() && new < current && cut && cipher.is_none() {
                return Err(err(
                    file,
                    "shrinking an encrypted image inside a cluster needs --password-file \
                     (the cut part of the cluster is overwritten with encrypted zeros)",
                ));
            }
            resize_with_key(&mut io, new, shrink, cipher.as_ref())
                .map_err(|e| CliError::from(qcow_std::Error::image(file, e)))?;
        }
        None => io.file().set_len(new).map_err(|e| err(file, e))?,
    }
    io.file().sync_data().map_err(|e| err(file, e))?;
    writeln!(out, "Image resized.").map_err(|e| CliError(format!("cannot write output: {e}")))?;
    Ok(0)
}
