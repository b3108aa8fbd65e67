//! One module per verb; [`run`] dispatches.

pub mod check;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod info;
pub mod map;
pub mod mount;
pub mod nbd;
pub mod read;
pub mod rebase;
pub mod resize;
pub mod write;

use std::io::Write;

use crate::common::VerbResult;
use crate::Verb;

/// Runs a verb, writing its normal output to `out`.
pub fn run(verb: Verb, out: &mut dyn Write) -> VerbResult {
    match &verb {
        Verb::Create(a) => create::run(a, out),
        Verb::Info(a) => info::run(a, out),
        Verb::Convert(a) => convert::run(a, out),
        Verb::Compare(a) => compare::run(a, out),
        Verb::Map(a) => map::run(a, out),
        Verb::Check(a) => check::run(a, out),
        Verb::Commit(a) => commit::run(a, out),
        Verb::Resize(a) => resize::run(a, out),
        Verb::Rebase(a) => rebase::run(a, out),
        Verb::Read(a) => read::run(a, out),
        Verb::Mount(a) => mount::run(a),
        Verb::Nbd(a) => nbd::run(a),
        Verb::Write(a) => write::run(a, &mut std::io::stdin().lock(), write::stdin_len()),
    }
}
