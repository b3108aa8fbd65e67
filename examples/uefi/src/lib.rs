//! `qcow-uefi`: a UEFI application that reads qcow images with `qcow-core` (no std,
//! no allocator), booted by real firmware (OVMF under QEMU, or a PC's).
//!
//! It reads, in turn:
//! - the images listed in `\qcow-uefi.txt` on the volume it was loaded from, one per
//!   line, `IMAGE [SECRET-FILE]` (paths on that volume, `/` or `\` separated, no
//!   spaces; `#` starts a comment), through `EFI_SIMPLE_FILE_SYSTEM_PROTOCOL`;
//!   `SECRET-FILE` holds the password of an encrypted image, as QEMU's
//!   `--object secret,file=`;
//! - every disk or partition whose first block holds a qcow image (written raw onto
//!   it, e.g. a virtio disk), through `EFI_BLOCK_IO_PROTOCOL`;
//!
//! backing files resolved on the boot volume (against the image's directory; for a
//! disk, the volume's root). For each it prints the virtual size and the CRC-32 of
//! the guest content, or `qcow: ` and why it was refused, then the stack it used, and
//! powers the machine off:
//!
//! ```text
//! qcow-uefi: start
//! plain.qcow: size 8390144 crc32 2093781633
//! qcow: truncated.qcow: data cluster at host offset 2359296 (guest offset 2347008) lies past the end of the 2361344-byte file
//! disk 1: size 8390144 crc32 2093781633
//! qcow-uefi: 2 read, 1 refused; stack 70368 bytes
//! ```
//!
//! The reading itself is `qcow_core::chain` (the backing chain) and
//! `qcow-example-common` (the whole-disk CRC-32), the code the Linux firmware example
//! (`examples/firmware`) runs. Here: the firmware's services behind safe wrappers
//! ([`efi`], the only `unsafe`), a `BlockIo` over a file ([`volume`]) and over a
//! disk's blocks ([`disk`]), the console ([`console`]), the list ([`manifest`]), and
//! the run ([`app`]).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod app;
mod console;
mod disk;
mod efi;
mod manifest;
mod volume;
