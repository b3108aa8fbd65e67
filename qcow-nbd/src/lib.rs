//! An NBD server for qcow-std disks (the NBD project's `doc/proto.md`).
//!
//! [`proto`] holds the wire format as pure functions over byte slices (no I/O, so it
//! can be unit-tested and fuzzed); [`server`] runs a connection over any pair of
//! reader and writer, serving a [`qcow_std::Disk`] with pipelined requests.
#![forbid(unsafe_code)]

mod ops;
pub mod proto;
pub mod server;

pub use server::{handshake, serve, transmit, Export, Session};
