//! The run: the listed images, then the disks, then the figures and power-off.

use core::fmt::{self, Write};

use embedded_io::ErrorType;
use qcow_core::chain::{self, Failure, Path, Probed, Show, Volume, PATH_MAX};
use qcow_example_common::{digest, digest_file, Digest, POOL_LEN};
use r_efi::efi::{Handle, Status};

use crate::console::Console;
use crate::disk::{Bounce, DiskIo, MAX_BLOCK};
use crate::efi::{stack, EfiError, System};
use crate::manifest::{self, Line};
use crate::volume::{BootVolume, FileIo};

/// Bytes of `\qcow-uefi.txt` read at most.
const LIST_LEN: usize = 16 * 1024;
/// Bytes of a password file read at most.
const SECRET_LEN: usize = 4096;
/// Block devices looked at, at most.
const MAX_DISKS: usize = 64;

/// The application's static memory (in `.bss`): the pool the chains are read with
/// (the read buffer and every layer's scratch buffer), the list, a password, a
/// disk block.
#[repr(C, align(4096))]
pub struct Memory {
    pool: [u8; POOL_LEN],
    list: [u8; LIST_LEN],
    secret: [u8; SECRET_LEN],
    bounce: Bounce,
}

impl Memory {
    /// All zeros.
    pub const ZERO: Memory = Memory {
        pool: [0; POOL_LEN],
        list: [0; LIST_LEN],
        secret: [0; SECRET_LEN],
        bounce: Bounce([0; MAX_BLOCK]),
    };
}

/// Images read and refused.
#[derive(Default)]
struct Tally {
    read: usize,
    refused: usize,
}

impl Tally {
    /// Prints the outcome for the image `label`.
    fn report(
        &mut self,
        out: &mut Console<'_>,
        label: &Path,
        r: Result<Digest, Failure<EfiError>>,
    ) {
        match r {
            Ok(d) => {
                self.read += 1;
                let _ = writeln!(out, "{label}: size {} crc32 {}", d.size, d.crc32);
            }
            Err(failure) => self.refuse(out, format_args!("{failure}")),
        }
    }

    /// Prints `qcow: <why>`.
    fn refuse(&mut self, out: &mut Console<'_>, why: fmt::Arguments<'_>) {
        self.refused += 1;
        let _ = writeln!(out, "qcow: {why}");
    }
}

/// Runs the application; returns only if the machine could not be powered off.
pub fn main(system: &System, memory: &mut Memory) -> Status {
    system.disable_watchdog();
    let mut out = Console::new(system);
    let _ = writeln!(out, "qcow-uefi: start");
    let mut tally = Tally::default();
    let Memory {
        pool,
        list,
        secret,
        bounce,
    } = memory;
    match system.boot_volume() {
        Ok(root) => {
            let mut volume = BootVolume::new(root);
            listed(&mut volume, pool, list, secret, &mut out, &mut tally);
            disks(system, &mut volume, pool, bounce, &mut out, &mut tally);
        }
        Err(e) => {
            tally.refuse(&mut out, format_args!("cannot open the boot volume: {e}"));
            disks(system, &mut NoVolume, pool, bounce, &mut out, &mut tally);
        }
    }
    let _ = write!(
        out,
        "qcow-uefi: {} read, {} refused",
        tally.read, tally.refused
    );
    let _ = writeln!(out, "; stack {} bytes", stack::used());
    out.flush();
    system.shutdown()
}

/// `path` with `\` as `/` (the separator backing file names use).
fn slash_path(bytes: &[u8]) -> Option<Path> {
    let mut buf = [0u8; PATH_MAX];
    let dst = buf.get_mut(..bytes.len())?;
    for (d, &s) in dst.iter_mut().zip(bytes) {
        *d = if s == b'\\' { b'/' } else { s };
    }
    Path::new(dst)
}

/// Reads the images of the list, if there is one. (Not inlined, as `disks`: each
/// has a frame of its own, never both at once.)
#[inline(never)]
fn listed(
    volume: &mut BootVolume,
    pool: &mut [u8],
    list: &mut [u8],
    secret: &mut [u8],
    out: &mut Console<'_>,
    tally: &mut Tally,
) {
    let Some(list_path) = Path::new(manifest::PATH) else {
        return; // a short constant: cannot happen
    };
    let text = match volume.read_file(&list_path, list) {
        Ok(text) => text,
        Err(EfiError::Status(Status::NOT_FOUND)) => return,
        Err(e) => return tally.refuse(out, format_args!("{list_path}: {e:?}")),
    };
    for line in manifest::lines(text) {
        let (image, secret_file) = match line {
            Line::Image { image, secret } => (image, secret),
            Line::Malformed(l) => {
                tally.refuse(
                    out,
                    format_args!("{list_path}: '{}': expected IMAGE [SECRET-FILE]", Show(l)),
                );
                continue;
            }
        };
        let Some(path) = slash_path(image) else {
            tally.refuse(out, format_args!("{}: path too long", Show(image)));
            continue;
        };
        let password = match secret_file.map(|s| (s, slash_path(s))) {
            None => None,
            Some((s, None)) => {
                tally.refuse(out, format_args!("{}: path too long", Show(s)));
                continue;
            }
            Some((_, Some(s))) => match volume.read_file(&s, secret) {
                Ok(p) => Some(p),
                Err(e) => {
                    tally.refuse(out, format_args!("{s}: cannot read password file: {e:?}"));
                    continue;
                }
            },
        };
        let r = digest_file(volume, &path, password, pool);
        tally.report(out, &path, r);
        secret.fill(0);
    }
}

/// Reads every disk or partition whose first block holds a qcow (version 1) image.
#[inline(never)]
fn disks<V: Volume<File = FileIo>>(
    system: &System,
    volume: &mut V,
    pool: &mut [u8],
    bounce: &mut Bounce,
    out: &mut Console<'_>,
    tally: &mut Tally,
) {
    let mut handles: [Handle; MAX_DISKS] = [core::ptr::null_mut(); MAX_DISKS];
    let n = match system.block_handles(&mut handles) {
        Ok(n) => n,
        Err(e) => return tally.refuse(out, format_args!("cannot list the disks: {e:?}")),
    };
    for (i, &handle) in handles.iter().take(n).enumerate() {
        let dev = system.block_device(handle);
        let Some(mut disk) = dev.and_then(|d| DiskIo::new(d, bounce)) else {
            continue; // no medium, or blocks this does not read
        };
        if !matches!(chain::probe(&mut disk), Ok(Probed::Qcow)) {
            continue;
        }
        let mut label = Label::default();
        let _ = write!(label, "disk {i}");
        let Some(path) = Path::new(label.bytes()) else {
            continue;
        };
        let r = digest(volume, disk, &path, None, pool);
        tally.report(out, &path, r);
    }
}

/// A short label, formatted in place.
#[derive(Default)]
struct Label {
    buf: [u8; 32],
    len: usize,
}

impl Label {
    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl Write for Label {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// No boot volume: every backing file is missing.
struct NoVolume;

impl Volume for NoVolume {
    type File = FileIo;
    fn open(&mut self, _: &Path) -> Result<FileIo, <FileIo as ErrorType>::Error> {
        Err(EfiError::Status(Status::NOT_FOUND))
    }
}
