//! A `no_std` reader and writer of QEMU's qcow (version 1) disk image format.
//!
//! The format is the one of QEMU's `block/qcow.c`: a 48-byte big-endian [`header`],
//! an L1 table of L2 table offsets, L2 tables of cluster offsets ([`entry`]), plain
//! data clusters, raw-deflate compressed clusters ([`cluster`]), optional legacy
//! AES-128-CBC encryption ([`crypt`]) and an optional backing file.
//!
//! Everything works on a positional device, [`BlockIo`]. Reading needs no allocator:
//! an [`Image`] takes a caller-provided scratch buffer of [`image::scratch_len`] bytes
//! (two clusters, 128 KiB at most) and caches table entries in a fixed-capacity
//! table cache (about 8 KiB).
//!
//! A backing chain is a nest of [`Backing`] layers; [`chain`] opens one from files
//! without an allocator (backing names resolved as QEMU does, a bounded walk) for
//! programs without std.
//!
//! # Features
//! - `alloc` (default): the write path ([`write`](mod@write): `Image::write_at`,
//!   `Image::write_compressed`, [`write::create`], [`write::Writer`]), the compressor
//!   ([`cluster::Deflater`]), [`check`], [`maint`] (repair, resize, rebase), and the
//!   in-memory device [`io::MemIo`].
//!
//! # Stricter than QEMU
//! Where QEMU reads zeros, we report a [`Error::BadReference`]: an L2 table, data
//! cluster or compressed stream that lies past the end of the file, is not 512-byte
//! aligned (plain clusters and tables), or overlaps the header, backing name or L1
//! table. An L1 table or backing name past the end of the file fails at open.
//! # Example
//!
//! An image made, written and read in memory (with `alloc`; without it, [`Image::open`]
//! takes a [`io::SliceIo`] or your own [`BlockIo`] and a caller's scratch buffer):
//!
//! ```
//! use qcow_core::{io::MemIo, write::{create, CreateOptions}, Image, NoBacking};
//! let mut io = MemIo::default();
//! create(&mut io, &CreateOptions::new(1 << 20))?;           // 1 MiB, QEMU's layout
//! let mut image = Image::open(io, NoBacking::new(), vec![0u8; 2 * 4096])?;
//! image.write_at(4096, b"hello")?;                          // data, then L2, then L1
//! let mut buf = [0u8; 5];
//! image.read_at(4096, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), qcow_core::Error<embedded_io::ErrorKind>>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
// No function over 80 lines (the threshold is in the workspace's clippy.toml).
#![deny(clippy::too_many_lines)]
#![deny(missing_docs)]
// The unit-test modules: a failed unwrap or index is a failed test, and their values are
// small and known. The library itself is still linted without this: clippy
// --all-targets checks the non-test build too.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod cache;
pub mod chain;
#[cfg(feature = "alloc")]
pub mod check;
pub mod cluster;
pub mod crypt;
pub mod entry;
pub mod error;
pub mod header;
pub mod image;
pub mod io;
#[cfg(feature = "alloc")]
pub mod maint;
#[cfg(all(test, feature = "alloc"))]
mod testutil;
#[cfg(feature = "alloc")]
pub mod write;

pub use entry::Cluster;
pub use error::{Error, Problem, RefKind};
pub use header::{Geometry, Header};
pub use image::{Backing, Image, NoBacking, Raw, Status, StatusKind};
pub use io::BlockIo;
