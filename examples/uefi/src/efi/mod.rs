//! The firmware's services, behind safe wrappers: the only `unsafe` of the
//! application, one small module per kind of firmware object.
//!
//! | module | what |
//! |---|---|
//! | `system` | the entry point `efi_main`, the system table: console output, handles, protocols, the watchdog, shutdown |
//! | `file` | `EFI_FILE_PROTOCOL`: a file (or directory) opened for reading |
//! | `block` | `EFI_BLOCK_IO_PROTOCOL`: reading whole blocks of a disk |
//! | `stack` | the application's own stack (256 KiB in `.bss`): painted, switched to at entry, measured |
//!
//! One invariant makes the wrappers sound: the application never calls
//! `ExitBootServices`, so the system table, the boot services and every protocol
//! interface obtained from them stay valid until the machine is shut down.

mod block;
mod file;
pub mod stack;
mod system;

use core::fmt;

pub use block::BlockDevice;
pub use file::File;
pub use system::System;

use r_efi::efi::Status;

/// What a firmware call or a device read can fail with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EfiError {
    /// The firmware returned this error status.
    Status(Status),
    /// A read met the end of the file.
    UnexpectedEof,
    /// Writing was asked of a read-only device.
    ReadOnly,
    /// A read past the last block of a disk.
    OutOfRange,
    /// The name cannot be a path on the volume: not UTF-8, outside the Basic
    /// Multilingual Plane, above the root (`..`), or too long.
    BadPath,
}

impl EfiError {
    /// The error for a status that is not `SUCCESS`.
    pub fn check(status: Status) -> Result<(), EfiError> {
        if status.is_error() {
            Err(EfiError::Status(status))
        } else {
            Ok(())
        }
    }
}

/// The name of an error status (UEFI specification, appendix D).
fn status_name(s: Status) -> &'static str {
    match s {
        Status::LOAD_ERROR => "load error",
        Status::INVALID_PARAMETER => "invalid parameter",
        Status::UNSUPPORTED => "unsupported",
        Status::BAD_BUFFER_SIZE => "bad buffer size",
        Status::BUFFER_TOO_SMALL => "buffer too small",
        Status::NOT_READY => "not ready",
        Status::DEVICE_ERROR => "device error",
        Status::WRITE_PROTECTED => "write protected",
        Status::OUT_OF_RESOURCES => "out of resources",
        Status::VOLUME_CORRUPTED => "volume corrupted",
        Status::VOLUME_FULL => "volume full",
        Status::NO_MEDIA => "no media",
        Status::MEDIA_CHANGED => "media changed",
        Status::NOT_FOUND => "not found",
        Status::ACCESS_DENIED => "access denied",
        Status::NO_RESPONSE => "no response",
        Status::NO_MAPPING => "no mapping",
        Status::TIMEOUT => "timeout",
        Status::NOT_STARTED => "not started",
        Status::ALREADY_STARTED => "already started",
        Status::ABORTED => "aborted",
        _ => "error",
    }
}

impl fmt::Debug for EfiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EfiError::Status(s) => {
                // The error bit is the top one; the code is what the spec numbers.
                let code = s.as_usize() & !(1 << (usize::BITS - 1));
                write!(f, "{} (EFI status {code})", status_name(s))
            }
            EfiError::UnexpectedEof => f.write_str("unexpected end of file"),
            EfiError::ReadOnly => f.write_str("read-only device"),
            EfiError::OutOfRange => f.write_str("read past the end of the disk"),
            EfiError::BadPath => f.write_str("not a valid path on the volume"),
        }
    }
}

impl fmt::Display for EfiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl embedded_io::Error for EfiError {
    fn kind(&self) -> embedded_io::ErrorKind {
        use embedded_io::ErrorKind;
        match *self {
            EfiError::Status(Status::NOT_FOUND) => ErrorKind::NotFound,
            EfiError::Status(Status::ACCESS_DENIED | Status::WRITE_PROTECTED) => {
                ErrorKind::PermissionDenied
            }
            EfiError::Status(Status::INVALID_PARAMETER) | EfiError::BadPath => {
                ErrorKind::InvalidInput
            }
            EfiError::ReadOnly => ErrorKind::Unsupported,
            EfiError::OutOfRange => ErrorKind::InvalidInput,
            _ => ErrorKind::Other,
        }
    }
}
