//! `qcow check`: verify (and repair) an image's structure.

use std::io::Write;
use std::path::Path;

use qcow_std::Format;

use crate::common::{err, Output, VerbResult};

/// What `-r` repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RepairMode {
    /// Reclaim leaked space.
    Leaks,
    /// Also drop bad references, then reclaim.
    All,
}

/// Runs `check`.
pub fn run(
    file: &Path,
    _format: Option<Format>,
    _repair: Option<RepairMode>,
    _output: Output,
    _out: &mut dyn Write,
) -> VerbResult {
    Err(err(file, "check is not implemented yet"))
}
