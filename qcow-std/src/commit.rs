//! Committing an overlay into its backing file.

use std::path::Path;

use qcow_core::Cluster;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::open::{open, resolve_backing, OpenOptions};

/// Bytes copied per request.
const CHUNK: u64 = 4 << 20;

/// Writes every cluster the overlay at `path` holds into its backing file (qcow or
/// raw), flushes the backing file, then empties the overlay (QEMU's `make_empty`), so
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
