//! `qcow-firmware`: reads a whole qcow guest disk the way a bootloader would, with no
//! `std`, no libc, no allocator and no start files: its own `_start`, six raw Linux
//! system calls, and `qcow-core` built with `default-features = false`.
//!
//! ```text
//! qcow-firmware IMAGE
//! 8388608          <- virtual size in bytes
//! 3632233996       <- CRC-32 (IEEE, as zlib's crc32) of the guest content
//! ```
//!
//! Errors go to stderr as `qcow: <message>`, with exit status 1.
//!
//! # Memory and backing files
//! As `qcow_core::chain` says (the UEFI example reads chains the same way, both
//! through `qcow-example-common`): nothing is allocated; one static pool (in `.bss`,
//! so it costs nothing until touched) holds the 64 KiB read buffer and every image's
//! scratch buffer; the five `Image`s of the deepest chain live on the stack. Backing file
//! names are resolved against the directory of the image naming them, as QEMU does.
//!
//! # Unsafe
//! This file holds the firmware's `unsafe`: the entry point (`_start` in
//! `global_asm!`, reading argc/argv off the initial stack), the system calls in
//! [`sys`], and taking the static pool once. Each block says why it is sound. The C
//! functions the compiler calls (`memcpy`, ...) are assembly in
//! `qcow-example-common`'s `mem` module, shared with the UEFI example.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::ffi::CStr;
use core::fmt::{self, Write};

use embedded_io::{ErrorKind, ErrorType};
use qcow_core::chain::{Path, Volume};
use qcow_core::BlockIo;
// With its `mem` feature the shared crate also defines the C memory functions the
// compiler calls (memcpy, ...).
use qcow_example_common::{digest_file, POOL_LEN};

// ---------------------------------------------------------------------------------
// Entry point and system calls: all of the unsafe code.
// ---------------------------------------------------------------------------------

// The kernel starts a static executable at `_start` with rsp pointing at argc, followed
// by argv[0..argc], a NULL, the environment and the auxiliary vector. We pass that
// pointer to `entry` as its first argument (rdi), 16-byte align the stack as the SysV
// ABI wants at a call, and never return (`entry` exits; ud2 traps if it did not).
core::arch::global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

/// Called once, by `_start`, with the initial stack pointer.
///
/// # Safety
/// `sp` must be the process's initial stack pointer as the kernel set it up.
unsafe extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: the kernel put argc at *sp.
    let argc = unsafe { *sp };
    if argc != 2 {
        fail(format_args!("usage: qcow-firmware IMAGE"));
    }
    // SAFETY: argv[1] exists (argc is 2) and is a NUL-terminated string that lives,
    // untouched, as long as the process.
    let image: &'static CStr = unsafe {
        let argv = sp.add(1).cast::<*const core::ffi::c_char>();
        CStr::from_ptr(*argv.add(1))
    };
    static mut POOL: [u8; POOL_LEN] = [0; POOL_LEN];
    // SAFETY: `entry` runs once, on the only thread, and nothing else names POOL, so
    // this is the one and only reference to it.
    let pool: &'static mut [u8] = unsafe { &mut *core::ptr::addr_of_mut!(POOL) };
    run(image, pool)
}

/// Raw x86_64 Linux system calls, each behind a safe wrapper. Failures are the
/// kernel's negated errno.
mod sys {
    use core::arch::asm;
    use core::ffi::CStr;

    const WRITE: usize = 1;
    const OPEN: usize = 2;
    const CLOSE: usize = 3;
    const LSEEK: usize = 8;
    const PREAD64: usize = 17;
    const EXIT_GROUP: usize = 231;
    const O_RDONLY: usize = 0;
    const O_CLOEXEC: usize = 0o2_000_000;
    const SEEK_END: usize = 2;

    /// `syscall` with four arguments (unused ones are ignored by the kernel).
    ///
    /// # Safety
    /// The arguments must be valid for system call `nr`: any pointer among them must
    /// be valid for what the kernel does with it.
    unsafe fn syscall4(
        nr: usize,
        a0: usize,
        a1: usize,
        a2: usize,
        a3: usize,
    ) -> Result<usize, i32> {
        let ret: isize;
        // SAFETY: the caller vouches for the arguments; `syscall` clobbers only rax
        // (the result), rcx and r11, all declared here.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a0,
                in("rsi") a1,
                in("rdx") a2,
                in("r10") a3,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        // -4095..=-1 are errors; anything else is a result.
        if (-4095..0).contains(&ret) {
            Err(-ret as i32)
        } else {
            Ok(ret as usize)
        }
    }

    /// `open(path, O_RDONLY | O_CLOEXEC)`.
    pub fn open(path: &CStr) -> Result<i32, i32> {
        // SAFETY: `path` is NUL-terminated and outlives the call; the kernel only reads it.
        let fd = unsafe { syscall4(OPEN, path.as_ptr() as usize, O_RDONLY | O_CLOEXEC, 0, 0)? };
        Ok(fd as i32)
    }

    /// `pread64(fd, buf, offset)`: bytes read, 0 at end of file.
    pub fn pread(fd: i32, buf: &mut [u8], offset: u64) -> Result<usize, i32> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we
        // borrow mutably for the call.
        unsafe {
            syscall4(
                PREAD64,
                fd as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                offset as usize,
            )
        }
    }

    /// `write(fd, buf)`: bytes written.
    pub fn write(fd: i32, buf: &[u8]) -> Result<usize, i32> {
        // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
        unsafe { syscall4(WRITE, fd as usize, buf.as_ptr() as usize, buf.len(), 0) }
    }

    /// `lseek(fd, 0, SEEK_END)`: the file's length.
    pub fn len(fd: i32) -> Result<u64, i32> {
        // SAFETY: no pointers involved.
        unsafe { syscall4(LSEEK, fd as usize, 0, SEEK_END, 0).map(|n| n as u64) }
    }

    /// `close(fd)`.
    pub fn close(fd: i32) {
        // SAFETY: no pointers involved; a failed close of a read-only file loses nothing.
        let _ = unsafe { syscall4(CLOSE, fd as usize, 0, 0, 0) };
    }

    /// `exit_group(code)`.
    pub fn exit(code: i32) -> ! {
        // SAFETY: exit_group does not return and touches no memory of ours.
        unsafe {
            asm!("syscall", in("rax") EXIT_GROUP, in("rdi") code as isize, options(noreturn, nostack));
        }
    }
}

// ---------------------------------------------------------------------------------
// Everything below is safe code.
// ---------------------------------------------------------------------------------

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail(format_args!("internal error: {info}"))
}

/// Writes all of `bytes` to `fd`.
fn write_all(fd: i32, mut bytes: &[u8]) -> Result<(), i32> {
    while !bytes.is_empty() {
        match sys::write(fd, bytes) {
            Ok(0) => return Err(EIO),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A line buffer over a file descriptor, for `write!`.
struct Out {
    fd: i32,
    buf: [u8; 256],
    len: usize,
}

impl Out {
    fn new(fd: i32) -> Self {
        Out {
            fd,
            buf: [0; 256],
            len: 0,
        }
    }
    fn flush(&mut self) -> Result<(), i32> {
        let r = write_all(self.fd, self.buf.get(..self.len).unwrap_or_default());
        self.len = 0;
        r
    }
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush().map_err(|_| fmt::Error)?;
            }
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Prints `qcow: <message>` on stderr and exits with status 1.
fn fail(msg: fmt::Arguments<'_>) -> ! {
    let mut err = Out::new(2);
    let _ = writeln!(err, "qcow: {msg}");
    let _ = err.flush();
    sys::exit(1)
}

const EINTR: i32 = 4;
const EIO: i32 = 5;

/// A device error: the kernel's errno, or a read that met the end of the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SysError {
    Errno(i32),
    UnexpectedEof,
    ReadOnly,
}

impl fmt::Debug for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SysError::Errno(e) => {
                let text = match e {
                    1 => "Operation not permitted",
                    2 => "No such file or directory",
                    5 => "Input/output error",
                    9 => "Bad file descriptor",
                    12 => "Cannot allocate memory",
                    13 => "Permission denied",
                    20 => "Not a directory",
                    21 => "Is a directory",
                    22 => "Invalid argument",
                    24 => "Too many open files",
                    36 => "File name too long",
                    40 => "Too many levels of symbolic links",
                    _ => "error",
                };
                write!(f, "{text} (errno {e})")
            }
            SysError::UnexpectedEof => f.write_str("unexpected end of file"),
            SysError::ReadOnly => f.write_str("read-only device"),
        }
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl embedded_io::Error for SysError {
    fn kind(&self) -> ErrorKind {
        match *self {
            SysError::Errno(2) => ErrorKind::NotFound,
            SysError::Errno(1 | 13) => ErrorKind::PermissionDenied,
            SysError::Errno(22) => ErrorKind::InvalidInput,
            SysError::Errno(4) => ErrorKind::Interrupted,
            SysError::ReadOnly => ErrorKind::Unsupported,
            _ => ErrorKind::Other,
        }
    }
}

/// An open, read-only file: the [`BlockIo`] every layer reads through.
struct Fd(i32);

impl Fd {
    fn open(path: &CStr) -> Result<Fd, SysError> {
        sys::open(path).map(Fd).map_err(SysError::Errno)
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        sys::close(self.0);
    }
}

impl ErrorType for Fd {
    type Error = SysError;
}

impl BlockIo for Fd {
    fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), SysError> {
        while !buf.is_empty() {
            match sys::pread(self.0, buf, offset) {
                Ok(0) => return Err(SysError::UnexpectedEof),
                Ok(n) => {
                    buf = buf.get_mut(n..).unwrap_or_default();
                    offset = offset.saturating_add(n as u64);
                }
                Err(EINTR) => {}
                Err(e) => return Err(SysError::Errno(e)),
            }
        }
        Ok(())
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> Result<(), SysError> {
        Err(SysError::ReadOnly)
    }
    fn len(&mut self) -> Result<u64, SysError> {
        sys::len(self.0).map_err(SysError::Errno)
    }
    fn set_len(&mut self, _: u64) -> Result<(), SysError> {
        Err(SysError::ReadOnly)
    }
    fn flush(&mut self) -> Result<(), SysError> {
        Ok(())
    }
}

/// The file system, where the image and its backing files are opened.
struct Root;

impl Volume for Root {
    type File = Fd;
    fn open(&mut self, path: &Path) -> Result<Fd, SysError> {
        Fd::open(path.c_str())
    }
}

/// Reads the chain of `image`, prints its size and CRC-32, and exits.
fn run(image: &CStr, pool: &'static mut [u8]) -> ! {
    let path =
        Path::new(image.to_bytes()).unwrap_or_else(|| fail(format_args!("image path is too long")));
    let digest = digest_file(&mut Root, &path, None, pool)
        .unwrap_or_else(|failure| fail(format_args!("{failure}")));
    let mut out = Out::new(1);
    if writeln!(out, "{}\n{}", digest.size, digest.crc32).is_err() || out.flush().is_err() {
        fail(format_args!("cannot write to stdout"));
    }
    sys::exit(0)
}
