//! Committing an overlay into its backing file.

use std::path::Path;

use qcow_core::Cluster;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::file::FileIo;
use crate::open::{open, resolve_backing, Format, OpenOptions};

/// Bytes copied per request.
const CHUNK: u64 = 4 << 20;

/// Grows the backing file to `size` when it is smaller, as `qemu-img commit` does: a
/// raw file is extended, a qcow image resized (its L1 table moved if it must be).
fn grow_base(base: &Path, size: u64) -> Result<(), Error> {
    use qcow_core::BlockIo;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(base)
        .map_err(|e| Error::io(base, e))?;
    let mut io = FileIo::new(file);
    match crate::open::probe(base)? {
        Format::Raw => {
            let len = io.len().map_err(|e| Error::io(base, e))?;
            if len < size {
                io.set_len(size).map_err(|e| Error::io(base, e))?;
            }
        }
        Format::Qcow => {
            let h = qcow_core::image::read_header(&mut io).map_err(|e| Error::image(base, e))?;
            if h.geometry().size < size {
                qcow_core::maint::resize(&mut io, size, false)
                    .map_err(|e| Error::image(base, e))?;
            }
        }
    }
    io.flush().map_err(|e| Error::io(base, e))
}

/// Writes every cluster the overlay at `path` holds into its backing file (qcow or
/// raw; grown first when it is smaller), flushes the backing file, then empties the overlay (QEMU's `make_empty`), so
/// the guest view is unchanged at every step.
pub fn commit(path: &Path, secret: Option<Zeroizing<Vec<u8>>>) -> Result<(), Error> {
    let opts = OpenOptions {
        writable: true,
        secret: secret.clone(),
        ..OpenOptions::default()
    };
    let mut top = open(path, &opts)?;
    let img = top
        .qcow()
        .ok_or_else(|| Error::invalid(path, "commit needs a qcow overlay"))?;
    let h = *img.header();
    let mut buf = [0u8; qcow_core::header::MAX_BACKING_NAME];
    let name = qcow_core::image::read_backing_name(img.io(), &h, &mut buf)
        .map_err(|e| Error::image(path, e))?
        .to_vec();
    if name.is_empty() {
        return Err(Error::invalid(
            path,
            "image has no backing file to commit into",
        ));
    }
    if h.is_encrypted() && secret.is_none() {
        return Err(Error::image(path, qcow_core::Error::PasswordRequired));
    }
    use std::os::unix::ffi::OsStrExt;
    let base_path = resolve_backing(path, Path::new(std::ffi::OsStr::from_bytes(&name)));
    grow_base(&base_path, img.size())?;
    let mut base = open(
        &base_path,
        &OpenOptions {
            writable: true,
            secret,
            ..OpenOptions::default()
        },
    )?;
    let size = img.size();
    let base_size = base.size();
    let mut data = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < size {
        let (c, len) = img
            .extent(at, (size - at).min(CHUNK))
            .map_err(|e| Error::image(path, e))?;
        let len = len.clamp(1, size - at);
        if c != Cluster::Unallocated {
            let n = len as usize;
            img.read_at(at, &mut data[..n])
                .map_err(|e| Error::image(path, e))?;
            let fits = base_size.saturating_sub(at).min(len) as usize;
            if data[fits..n].iter().any(|&b| b != 0) {
                return Err(Error::invalid(
                    &base_path,
                    format!("backing file ({base_size} bytes) is smaller than the overlay's data at offset {}", at + fits as u64),
                ));
            }
            if fits > 0 {
                base.write_at(at, &data[..fits])?;
            }
        }
        at += len;
    }
    base.flush()?;
    drop(base);
    img.make_empty().map_err(|e| Error::image(path, e))?;
    Ok(())
}
