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
//! # Memory
//! Nothing is allocated. One static pool (in `.bss`, so it costs nothing until
//! touched) holds the 64 KiB read buffer and every image's scratch buffer, carved to
//! the exact [`scratch_len`] of each image's geometry (8 KiB for 4 KiB clusters, at
//! most 128 KiB). The [`Image`]s themselves, with their table caches (about 9 KiB
//! each), live on the stack: five of them, whether the layers exist or not.
//!
//! # Backing files
//! A backing file name is resolved against the directory of the image naming it
//! (absolute names are used as they are) and probed: `QFI\xfb` with version 1 is a qcow
//! image, anything else is raw. The chain is at most [`LAYERS`] images deep (the top
//! image and four backing files), with no recursion a file could drive:
//! 1. [`discover`] walks the chain top-down in a bounded loop, opening each file into
//!    a fixed array of [`LayerFile`]s (a cycle just runs into the bound);
//! 2. [`run`] builds the layers bottom-up as types nested to a fixed depth: each
//!    layer is a [`Lower`] (absent, raw, or a qcow [`Image`]) whose own backing is a
//!    `&mut` borrow of the layer beneath, down to [`NoBacking`]:
//!    `Image<Fd, &mut Lower<&mut Lower<&mut Lower<&mut Lower<NoBacking>>>>, _>`.
//!    Reading then goes through qcow-core's own [`Backing`] chain. Deepening the
//!    chain is one more line in `run` (and in `LAYERS`).
//!
//! Borrowing rather than owning the layer beneath keeps every image in a local of
//! its own: an owned nesting would be moved (copied) level by level, and the stack
//! frame held about three times the chain.
//!
//! # Unsafe
//! This file is the only place in the repository with `unsafe`: the entry point
//! (`_start` in `global_asm!`, reading argc/argv off the initial stack), the C
//! functions the compiler calls (`memcpy`, `memmove`, `memset`, `memcmp`/`bcmp`,
//! `strlen`, in assembly, and a `rust_eh_personality` stub), the system calls in
//! [`sys`], and taking the static pool once. Each block says why it is sound.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::ffi::CStr;
use core::fmt::{self, Write};

use embedded_io::{ErrorKind, ErrorType};
use qcow_core::header::{MAGIC, MAX_BACKING_NAME, VERSION};
use qcow_core::image::{read_backing_name, read_header, scratch_len};
use qcow_core::{Backing, BlockIo, Error, Image, NoBacking, Raw, Status};

/// Images in the longest chain accepted: the top image and four backing files.
const LAYERS: usize = 5;
/// Bytes read per call into the top image.
const READ_LEN: usize = 64 * 1024;
/// The largest scratch buffer an image needs (64 KiB clusters: two clusters).
const MAX_SCRATCH: usize = 2 * 64 * 1024;
/// The static pool: the read buffer and a worst-case scratch buffer per layer.
const POOL_LEN: usize = READ_LEN + LAYERS * MAX_SCRATCH;
/// Linux's `PATH_MAX`, terminating NUL included.
const PATH_MAX: usize = 4096;

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

// The C library functions the compiler itself emits calls to (block copies and
// fills, slice comparison) and `CStr::from_ptr` uses (strlen). With libc gone
// somebody has to define them; on bare-metal targets (`x86_64-unknown-none`,
// `thumbv7em-none-eabi`, ...) compiler_builtins does, but not on a Linux target. They
// are written in assembly so that the compiler cannot turn their loops back into
// calls to themselves. SysV ABI: arguments in rdi, rsi, rdx; result in rax; the
// direction flag is clear on entry and must be clear on return.
core::arch::global_asm!(
    // void *memcpy(void *dst, const void *src, size_t n)
    ".globl memcpy",
    ".type memcpy,@function",
    "memcpy:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "rep movsb",
    "ret",
    // void *memmove(void *dst, const void *src, size_t n): backwards when dst > src.
    ".globl memmove",
    ".type memmove,@function",
    "memmove:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "cmp rdi, rsi",
    "jbe .Lmemmove_forward",
    "lea rsi, [rsi + rdx - 1]",
    "lea rdi, [rdi + rdx - 1]",
    "std",
    "rep movsb",
    "cld",
    "ret",
    ".Lmemmove_forward:",
    "rep movsb",
    "ret",
    // void *memset(void *dst, int c, size_t n)
    ".globl memset",
    ".type memset,@function",
    "memset:",
    "mov r8, rdi",
    "mov eax, esi",
    "mov rcx, rdx",
    "rep stosb",
    "mov rax, r8",
    "ret",
    // int memcmp(const void *a, const void *b, size_t n), and bcmp (same contract,
    // only zero/non-zero matters).
    ".globl memcmp",
    ".type memcmp,@function",
    ".globl bcmp",
    ".type bcmp,@function",
    "memcmp:",
    "bcmp:",
    "xor eax, eax",
    "test rdx, rdx",
    "jz .Lmemcmp_done",
    "mov rcx, rdx",
    "repe cmpsb",
    "je .Lmemcmp_done",
    "movzx eax, byte ptr [rdi - 1]",
    "movzx ecx, byte ptr [rsi - 1]",
    "sub eax, ecx",
    ".Lmemcmp_done:",
    "ret",
    // The precompiled core library is built to unwind, and in builds without LTO its
    // unwind tables name the personality routine. With panic = "abort" nothing ever
    // unwinds, so it is never called: a trap will do.
    ".globl rust_eh_personality",
    ".type rust_eh_personality,@function",
    "rust_eh_personality:",
    "ud2",
    // size_t strlen(const char *s)
    ".globl strlen",
    ".type strlen,@function",
    "strlen:",
    "mov rdx, rdi",
    "xor eax, eax",
    "mov rcx, -1",
    "repne scasb",
    "lea rax, [rdi - 1]",
    "sub rax, rdx",
    "ret",
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

/// Shows bytes (a path) as text, invalid UTF-8 as U+FFFD.
struct Show<'a>(&'a [u8]);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
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

/// A NUL-terminated path in a fixed buffer.
struct Path {
    buf: [u8; PATH_MAX],
    /// Bytes before the NUL.
    len: usize,
}

impl Path {
    /// Concatenates `parts` and a NUL; `None` when that exceeds `PATH_MAX` or a part
    /// holds a NUL.
    fn concat(parts: &[&[u8]]) -> Option<Path> {
        let mut p = Path {
            buf: [0; PATH_MAX],
            len: 0,
        };
        for part in parts {
            if part.contains(&0) {
                return None;
            }
            let end = p.len.checked_add(part.len())?;
            p.buf.get_mut(p.len..end)?.copy_from_slice(part);
            p.len = end;
        }
        // The NUL: the buffer is zeroed, there only has to be room for it.
        (p.len < PATH_MAX).then_some(p)
    }
    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
    fn c_str(&self) -> &CStr {
        // concat() keeps the buffer NUL-terminated with no NUL before `len`.
        CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }
    /// The backing file `name` of the image at this path: as it is when absolute,
    /// else relative to this image's directory (as QEMU's `path_combine`).
    fn backing(&self, name: &[u8]) -> Option<Path> {
        if name.first() == Some(&b'/') {
            return Path::concat(&[name]);
        }
        let dir = match self.bytes().iter().rposition(|&b| b == b'/') {
            Some(slash) => self.bytes().get(..=slash).unwrap_or_default(),
            None => &[],
        };
        Path::concat(&[dir, name])
    }
}

/// A layer's file as [`discover`] found it.
enum LayerFile {
    /// No layer at this depth.
    Absent,
    /// A raw file (no qcow magic).
    Raw(Fd),
    /// A qcow image.
    Qcow(Fd),
}

/// Opens `path` or fails naming it.
fn open_or_fail(path: &Path, what: &str) -> Fd {
    Fd::open(path.c_str()).unwrap_or_else(|e| {
        fail(format_args!(
            "cannot open {what} '{}': {e:?}",
            Show(path.bytes())
        ))
    })
}

/// Walks the backing chain of `image` top-down and opens every file in it, in a loop
/// bounded by [`LAYERS`]. Every qcow header is read and checked here, so errors name
/// the file.
fn discover(image: &CStr) -> [LayerFile; LAYERS] {
    let mut files: [LayerFile; LAYERS] = core::array::from_fn(|_| LayerFile::Absent);
    let mut path = Path::concat(&[image.to_bytes()])
        .unwrap_or_else(|| fail(format_args!("image path is too long")));
    let mut fd = open_or_fail(&path, "image");
    let mut is_qcow = true; // the top image must be qcow: read_header says if not
    for (depth, slot) in files.iter_mut().enumerate() {
        if !is_qcow {
            *slot = LayerFile::Raw(fd);
            break;
        }
        let at = |e: Error<SysError>| -> ! { fail(format_args!("{}: {e}", Show(path.bytes()))) };
        let header = read_header(&mut fd).unwrap_or_else(|e| at(e));
        let mut name_buf = [0u8; MAX_BACKING_NAME];
        let name = read_backing_name(&mut fd, &header, &mut name_buf).unwrap_or_else(|e| at(e));
        let name_len = name.len();
        *slot = LayerFile::Qcow(fd);
        // QEMU treats an empty name as no backing file.
        if name_len == 0 {
            break;
        }
        let name = name_buf.get(..name_len).unwrap_or_default();
        if depth + 1 == LAYERS {
            let e = Error::<SysError>::ChainTooDeep(LAYERS);
            fail(format_args!("{}: {e}", Show(image.to_bytes())));
        }
        let next = path.backing(name).unwrap_or_else(|| {
            fail(format_args!(
                "{}: backing file name '{}' is too long or holds a NUL byte",
                Show(path.bytes()),
                Show(name)
            ))
        });
        fd = open_or_fail(&next, "backing file");
        is_qcow = probe_qcow(&mut fd, &next);
        path = next;
    }
    files
}

/// Whether the file starts with the qcow v1 magic and version; fails on other
/// versions of the magic (qcow2 is not readable here and must not be read as raw).
fn probe_qcow(fd: &mut Fd, path: &Path) -> bool {
    let len = fd
        .len()
        .unwrap_or_else(|e| fail(format_args!("{}: {e:?}", Show(path.bytes()))));
    if len < 8 {
        return false;
    }
    let mut head = [0u8; 8];
    fd.read_at(0, &mut head)
        .unwrap_or_else(|e| fail(format_args!("{}: {e:?}", Show(path.bytes()))));
    let [m0, m1, m2, m3, v0, v1, v2, v3] = head;
    if u32::from_be_bytes([m0, m1, m2, m3]) != MAGIC {
        return false;
    }
    let version = u32::from_be_bytes([v0, v1, v2, v3]);
    if version != VERSION {
        fail(format_args!(
            "{}: backing file is qcow version {version}, only version 1 is supported",
            Show(path.bytes())
        ));
    }
    true
}

/// A layer beneath an image: nothing, a raw file, or a qcow image with its own layer
/// `N` beneath. Nesting it gives a chain of fixed, type-level depth.
#[allow(clippy::large_enum_variant)] // no allocator to box with: see "Memory" above
enum Lower<N> {
    Absent,
    Raw(Raw<Fd>),
    Qcow(Image<Fd, N, &'static mut [u8]>),
}

impl<N: Backing<IoError = SysError>> Backing for Lower<N> {
    type IoError = SysError;
    fn is_present(&self) -> bool {
        !matches!(self, Lower::Absent)
    }
    fn size(&self) -> u64 {
        match self {
            Lower::Absent => 0,
            Lower::Raw(r) => r.size(),
            Lower::Qcow(i) => i.size(),
        }
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error<SysError>> {
        match self {
            Lower::Absent => {
                buf.fill(0);
                Ok(())
            }
            Lower::Raw(r) => r.read_at(offset, buf),
            Lower::Qcow(i) => Backing::read_at(i, offset, buf),
        }
    }
    fn status(&mut self, offset: u64, max: u64) -> Result<Status, Error<SysError>> {
        match self {
            Lower::Absent => NoBacking::<SysError>::new().status(offset, max),
            Lower::Raw(r) => r.status(offset, max),
            Lower::Qcow(i) => i.status(offset, max),
        }
    }
}

/// Takes `n` bytes off the front of the pool.
fn carve(pool: &mut &'static mut [u8], n: usize) -> Option<&'static mut [u8]> {
    if pool.len() < n {
        return None;
    }
    let (head, rest) = core::mem::take(pool).split_at_mut(n);
    *pool = rest;
    Some(head)
}

/// Opens the qcow image on `fd`, layer `depth` of the chain, over the layer `below`
/// it, with a scratch buffer carved from the pool.
fn open_qcow<N: Backing<IoError = SysError>>(
    depth: usize,
    mut fd: Fd,
    below: N,
    pool: &mut &'static mut [u8],
) -> Image<Fd, N, &'static mut [u8]> {
    let at = |e: Error<SysError>| -> ! { fail(format_args!("layer {depth} of the chain: {e}")) };
    let need = read_header(&mut fd)
        .map(|h| scratch_len(&h.geometry()))
        .unwrap_or_else(|e| at(e));
    let got = pool.len();
    let scratch = carve(pool, need).unwrap_or_else(|| at(Error::BufferTooSmall { need, got }));
    Image::open(fd, below, scratch).unwrap_or_else(|e| at(e))
}

/// Opens layer `depth` of the chain over the layer `below` it.
fn open_layer<N: Backing<IoError = SysError>>(
    depth: usize,
    file: LayerFile,
    below: N,
    pool: &mut &'static mut [u8],
) -> Lower<N> {
    match file {
        LayerFile::Absent => Lower::Absent,
        LayerFile::Raw(fd) => Lower::Raw(
            Raw::new(fd).unwrap_or_else(|e| fail(format_args!("layer {depth} of the chain: {e}"))),
        ),
        LayerFile::Qcow(fd) => Lower::Qcow(open_qcow(depth, fd, below, pool)),
    }
}

/// Opens the chain of `image`, reads the whole guest disk and prints its size and
/// CRC-32.
fn run(image: &CStr, pool: &'static mut [u8]) -> ! {
    let (buf, mut pool) = pool.split_at_mut(READ_LEN);
    let [f0, f1, f2, f3, f4] = discover(image);
    let LayerFile::Qcow(top) = f0 else {
        fail(format_args!("{}: not a qcow image", Show(image.to_bytes())))
    };
    // Bottom-up, one line per level of LAYERS. Each layer is a local of its own and
    // the one above borrows it (`Backing` is implemented for `&mut T`), so no layer
    // is ever moved into another: the stack holds each Image once.
    let mut l4 = open_layer(4, f4, NoBacking::new(), &mut pool);
    let mut l3 = open_layer(3, f3, &mut l4, &mut pool);
    let mut l2 = open_layer(2, f2, &mut l3, &mut pool);
    let mut l1 = open_layer(1, f1, &mut l2, &mut pool);
    let mut top = open_qcow(0, top, &mut l1, &mut pool);

    let size = top.size();
    let mut crc = !0u32;
    let mut offset = 0u64;
    while offset < size {
        let n = usize::try_from(size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let chunk = buf.get_mut(..n).unwrap_or_default();
        top.read_at(offset, chunk)
            .unwrap_or_else(|e| fail(format_args!("{}: {e}", Show(image.to_bytes()))));
        crc = crc32_update(crc, chunk);
        offset += n as u64;
    }

    let mut out = Out::new(1);
    if writeln!(out, "{size}\n{}", !crc).is_err() || out.flush().is_err() {
        fail(format_args!("cannot write to stdout"));
    }
    sys::exit(0)
}

/// The CRC-32 table (IEEE 802.3, reflected polynomial 0xEDB88320), built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Feeds `data` into a running CRC (start from `!0`, finish with `!`).
const fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    let mut i = 0;
    while i < data.len() {
        crc = CRC_TABLE[((crc ^ data[i] as u32) & 0xff) as usize] ^ (crc >> 8);
        i += 1;
    }
    crc
}

// The standard check value, verified at compile time.
const _: () = assert!(!crc32_update(!0, b"123456789") == 0xCBF4_3926);
