//! An NBD server for qcow-std disks (the NBD project's `doc/proto.md`).
//!
//! [`proto`] holds the wire format as pure functions over byte slices (no I/O, so it
//! can be unit-tested and fuzzed); [`server`] runs a connection over any pair of
//! reader and writer, serving a [`qcow_std::Disk`] with pipelined requests.
//!
//! A session over in-memory streams: a client that greets in the fixed newstyle and
//! aborts (a real server hands [`serve`] each accepted socket, cloned for reading):
//!
//! ```
//! use std::io::Cursor;
//! let storage = qcow_std::ReadWriteSeek::new(Cursor::new(vec![0u8; 1 << 20]));
//! let disk = qcow_std::Disk::options()
//!     .format(Some(qcow_std::Format::Raw))
//!     .open_storage(std::sync::Arc::new(storage), "mem.raw")?;
//! let export = qcow_nbd::Export::new(disk, "", "a 1 MiB disk");
//! let mut client = 3u32.to_be_bytes().to_vec();                 // fixed newstyle, no zeroes
//! client.extend(0x4948_4156_454F_5054u64.to_be_bytes());        // IHAVEOPT
//! client.extend([2u32.to_be_bytes(), 0u32.to_be_bytes()].concat()); // NBD_OPT_ABORT, no data
//! let mut server_said = Vec::new();
//! qcow_nbd::serve(Cursor::new(client), &mut server_said, &export)?;
//! assert!(server_said.starts_with(b"NBDMAGIC"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
// No function over 80 lines (the threshold is in the workspace's clippy.toml).
#![deny(clippy::too_many_lines)]

mod ops;
pub mod proto;
pub mod server;

pub use server::{handshake, serve, transmit, Export, Session};
