//! Committing an overlay into its backing file.

use std::path::Path;

use qcow_core::StatusKind;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::maint::{Maintenance, ResizeOptions};
use crate::open::Format;
use crate::Disk;

/// Bytes copied per request.
const CHUNK: u64 = 4 << 20;

/// Grows the backing file to `size` when it is smaller, as `qemu-img commit` does: a
/// raw file is extended, a qcow image resized (its L1 table moved if it must be).
fn grow_base(base: &Path, size: u64) -> Result<(), Error> {
    let mut m = Maintenance::open(base, true)?;
    if m.size()? < size {
        m.resize(&ResizeOptions::new(size))?;
    }
    Ok(())
}

/// Writes every cluster the overlay at `path` holds into its backing file (qcow or
/// raw; grown first when it is smaller), flushes the backing file, then empties the
/// overlay (QEMU's `make_empty`), so the guest view is unchanged at every step.
pub fn commit(path: &Path, secret: Option<Zeroizing<Vec<u8>>>) -> Result<(), Error> {
    let top = Disk::options()
        .writable(true)
        .secret(secret.clone())
        .open(path)?;
    let info = top.info();
    if info.format != Format::Qcow {
        return Err(Error::NotQcow {
            path: path.to_path_buf(),
        });
    }
    let Some(base_path) = info.backing_path() else {
        return Err(Error::NoBackingFile {
            path: path.to_path_buf(),
        });
    };
    if info.encrypted && secret.is_none() {
        return Err(Error::image(path, qcow_core::Error::PasswordRequired));
    }
    let size = top.size();
    grow_base(&base_path, size)?;
    let base = Disk::options()
        .writable(true)
        .secret(secret)
        .open(&base_path)?;
    let base_size = base.size();
    let mut data = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < size {
        let s = top.block_status(at, (size - at).min(CHUNK))?;
        let len = s.len.clamp(1, size - at);
        if s.depth == 0 && s.kind != StatusKind::Unallocated {
            let n = len as usize;
            top.read_at(at, &mut data[..n])?;
            let fits = base_size.saturating_sub(at).min(len) as usize;
            if data[fits..n].iter().any(|&b| b != 0) {
                return Err(Error::BackingTooSmall {
                    path: base_path,
                    size: base_size,
                    offset: at + fits as u64,
                });
            }
            if fits > 0 {
                base.write_at(at, &data[..fits])?;
            }
        }
        at += len;
    }
    base.flush()?;
    drop(base);
    top.make_empty()
}
