//! The one OS edge that needs `unsafe`: taking the listening socket that a socket
//! activator (systemd, libnbd's `[ … ]` form) passed as file descriptor 3.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};

/// Socket activation's first descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Takes fd 3 when `LISTEN_PID` is this process and `LISTEN_FDS` is at least 1.
pub fn activation_fd() -> Option<OwnedFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    // SAFETY: the activation protocol hands this process fd 3, open, for it to own;
    // nothing else in this process uses fd 3 (it is taken once, before any file is
    // opened by the verb, and the environment check above guards against reuse).
    Some(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) })
}
