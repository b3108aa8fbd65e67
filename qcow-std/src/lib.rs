//! qcow (version 1) images on files.
//!
//! Adapts [`qcow_core`] to the operating system. [`Disk`] is the one handle every
//! consumer shares: an opened image with its backing chain (or a raw file), `Send +
//! Sync`, positional reads and writes on `&self`, `Read + Write + Seek` itself, block
//! status, discard. [`DiskOptions`] opens it from a path or any [`Storage`];
//! [`convert`] copies between raw and qcow images, [`commit`] merges an overlay into
//! its backing file, [`maint`] checks, repairs, resizes and rebases.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("qcow-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # std::env::set_current_dir(&dir)?;  // a fresh image where the example looks
//! # let opts = qcow_std::qcow_core::write::CreateOptions::new(4 << 20);
//! # qcow_std::create::create("disk.qcow".as_ref(), &opts)?;
//! use std::io::Read;
//! let mut disk = qcow_std::Disk::open("disk.qcow")?;
//! let mut first_sector = [0u8; 512];
//! disk.read_exact(&mut first_sector)?;                 // Read + Seek: a cursor
//! disk.read_at(1 << 20, &mut first_sector)?;           // positional, &self
//! let layers = disk.layers();                          // the chain, top first
//! println!("{} layers, {} bytes", layers.len(), disk.size());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Platforms: Unix (Linux first): the file layer (`pread`/`pwrite`, `SEEK_DATA`,
//! `fallocate`) lives in [`mod@file`].
#![forbid(unsafe_code)]
// No function over 80 lines (the threshold is in the workspace's clippy.toml).
#![deny(clippy::too_many_lines)]
#![deny(missing_docs)]

pub mod commit;
pub mod convert;
pub mod create;
mod disk;
pub mod error;
pub mod file;
pub mod maint;
pub mod map;
pub mod open;
pub mod probe;
mod storage;
mod stream;

pub use disk::{Disk, LayerInfo};
pub use error::Error;
pub use open::{probe, DiskOptions, Format};
pub use qcow_core;
pub use storage::{ReadSeek, ReadWriteSeek, Storage, StorageIo};

/// The cores this process may run on (`std::thread::available_parallelism`, at least
/// 1), found once: on Linux each call of that reads cgroup files, a dozen system calls
/// too many for every read.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The README's Rust examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
