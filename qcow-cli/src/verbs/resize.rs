//! `qcow resize`: change the virtual size.

use std::io::Write;
use std::path::Path;

use crate::common::{err, VerbResult};

/// Runs `resize`.
pub fn run(file: &Path, _size: &str, _shrink: bool, _out: &mut dyn Write) -> VerbResult {
    Err(err(file, "resize is not implemented yet"))
}
