//! What the freestanding examples share: `examples/firmware` (a Linux process without
//! libc) and `examples/uefi` (a UEFI application) read a qcow image and its backing
//! chain the same way, through this crate, over their own files.
//!
//! The chain itself (a `Volume` where backing files open, fixed-size paths, QEMU's
//! backing name resolution, the bounded walk, the layers nested without an
//! allocator) is `qcow_core::chain`'s; what is the examples' own is here:
//!
//! - [`digest`](mod@digest): [`digest`](fn@digest) and [`digest_file`]: open the
//!   chain, read the whole guest disk and return its size and CRC-32.
//! - [`crc32`]: zlib's CRC-32, the figure both examples print.
//! - `mem` (feature `mem`): the C memory functions the compiler calls, for programs
//!   linked without libc.
//!
//! `#![no_std]`, no allocator; the only code that is not safe Rust is the assembly of
//! `mem`.
#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]
// A `Failure` carries the file's name (up to 240 bytes) so the message can name it;
// without an allocator there is no box to put it in.
#![allow(clippy::result_large_err)]

pub mod crc32;
pub mod digest;
// Assembly (`global_asm!`) counts as unsafe code: the crate's one exception.
#[cfg(feature = "mem")]
#[allow(unsafe_code)]
pub mod mem;

pub use digest::{digest, digest_file, Digest, POOL_LEN};
