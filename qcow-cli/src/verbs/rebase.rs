//! `qcow rebase`: change the backing file.

use std::io::Write;
use std::path::Path;

use qcow_std::Format;

use crate::common::{err, VerbResult};

/// Runs `rebase`.
pub fn run(
    file: &Path,
    _backing: &str,
    _format: Option<Format>,
    _unsafe_mode: bool,
    _password: Option<&Path>,
    _out: &mut dyn Write,
) -> VerbResult {
    Err(err(file, "rebase is not implemented yet"))
}
