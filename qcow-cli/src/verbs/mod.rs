//! One module per verb; [`run`] dispatches.

pub mod check;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod info;
pub mod map;
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
    match verb {
        Verb::Create {
            backing,
            backing_format,
            unsafe_mode,
            encrypt,
            password_file,
            file,
            size,
        } => create::run(
            &file,
            size.as_deref(),
            create::BackingArgs {
                name: backing.as_deref(),
                format: backing_format,
                unsafe_mode,
            },
            encrypt,
            password_file.as_deref(),
            out,
        ),
        Verb::Info {
            output,
            format,
            file,
        } => info::run(&file, format, output, out),
        Verb::Convert {
            format,
            out_format,
            compress,
            progress,
            backing,
            threads,
            password_file,
            target_password_file,
            encrypt,
            src,
            dst,
        } => convert::run(
            &convert::Args {
                format,
                out_format,
                compress,
                progress,
                backing,
                threads: threads.unwrap_or(0),
                password_file,
                target_password_file,
                encrypt,
                src,
                dst,
            },
            out,
        ),
        Verb::Compare {
            format_a,
            format_b,
            password_file,
            strict,
            a,
            b,
        } => compare::run(
            &a,
            &b,
            format_a,
            format_b,
            password_file.as_deref(),
            strict,
            out,
        ),
        Verb::Map {
            output,
            format,
            file,
        } => map::run(&file, format, output, out),
        Verb::Check {
            repair,
            output,
            format,
            file,
        } => check::run(&file, format, repair, output, out),
        Verb::Commit {
            password_file,
            file,
        } => commit::run(&file, password_file.as_deref(), out),
        Verb::Resize {
            shrink,
            password_file,
            file,
            size,
        } => resize::run(&file, &size, shrink, password_file.as_deref(), out),
        Verb::Rebase {
            unsafe_mode,
            backing,
            backing_format,
            password_file,
            file,
        } => rebase::run(
            &file,
            &backing,
            backing_format,
            unsafe_mode,
            password_file.as_deref(),
            out,
        ),
        Verb::Read {
            password_file,
            format,
            file,
            offset,
            length,
        } => read::run(
            &file,
            format,
            &offset,
            &length,
            password_file.as_deref(),
            out,
        ),
        Verb::Write {
            compress,
            password_file,
            format,
            file,
            offset,
        } => write::run(
            &file,
            format,
            &offset,
            compress,
            password_file.as_deref(),
            &mut std::io::stdin().lock(),
            write::stdin_len(),
        ),
        Verb::Nbd {
            read_only,
            format,
            socket,
            port,
            bind,
            name,
            description,
            persistent,
            shared,
            fork,
            pid_file,
            password_file,
            file,
        } => nbd::run(&nbd::Args {
            read_only,
            format,
            socket,
            port,
            bind,
            name,
            description,
            persistent,
            shared,
            fork,
            pid_file,
            password_file,
            file,
        }),
    }
}
