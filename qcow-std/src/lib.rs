//! qcow (version 1) images on files.
//!
//! Adapts [`qcow_core`] to the file system: [`file::FileIo`] is positional I/O on a
//! file, [`mod@probe`] tells a file's format from its signature (qcow version 1, raw,
//! or another image format, refused by name), [`open()`] probes a file and resolves
//! its backing chain, [`io::DiskIo`] offers `Read + Write + Seek` over an opened disk,
//! and [`convert`] copies between raw and qcow images.
//!
//! ```no_run
//! use std::io::Read;
//! let mut disk = qcow_std::open("disk.qcow", &qcow_std::OpenOptions::default())?;
//! let mut first_sector = [0u8; 512];
//! qcow_std::io::DiskIo::new(&mut disk).read_exact(&mut first_sector)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod commit;
pub mod convert;
pub mod create;
pub mod error;
pub mod file;
pub mod io;
pub mod open;
pub mod probe;

pub use error::Error;
pub use open::{open, probe, Disk, Format, OpenOptions};
pub use qcow_core;
