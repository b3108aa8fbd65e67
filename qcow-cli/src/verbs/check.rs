//! `qcow check`: verify (and repair) an image's structure (qemu-img refuses qcow).

use std::io::Write;
use std::path::{Path, PathBuf};

use qcow_std::maint::{Action, Maintenance, RepairMode as CoreMode, Report};
use qcow_std::Format;

use crate::common::{err, json_str, CliError, Output, VerbResult};

/// What `-r` repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RepairMode {
    /// Reclaim leaked space.
    Leaks,
    /// Also drop or copy bad references, then reclaim.
    All,
}

/// Exit status of a report: 0 clean, 2 corruptions, 3 only leaks.
pub fn status(r: &Report) -> u8 {
    if !r.corruptions.is_empty() {
        2
    } else if !r.leaks.is_empty() {
        3
    } else {
        0
    }
}

/// Repair actions listed at most, in either output form; the rest are counted by kind
/// (a repair of a large image may move millions of extents).
pub const MAX_LISTED: usize = 1000;

/// The line that stands for the actions past [`MAX_LISTED`], if any.
fn omitted(actions: &[Action]) -> Option<String> {
    let rest = actions.get(MAX_LISTED..).filter(|r| !r.is_empty())?;
    let mut counts = [0usize; 4];
    for a in rest {
        let i = match a {
            Action::Moved { .. } => 0,
            Action::Copied { .. } => 1,
            Action::Dropped { .. } => 2,
            Action::Truncated { .. } => 3,
        };
        counts[i] += 1;
    }
    let kinds: Vec<String> = ["moved", "copied", "dropped", "truncated"]
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    Some(format!(
        "{} more actions not listed ({})",
        rest.len(),
        kinds.join(", ")
    ))
}

/// The arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repair: `leaks` or `all`.
    #[arg(short = 'r')]
    repair: Option<RepairMode>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Format (must be qcow).
    #[arg(short = 'f')]
    format: Option<Format>,
    /// Image file.
    file: PathBuf,
}

/// Runs `check`.
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let (file, format, output) = (a.file.as_path(), a.format, a.output);
    let repair_mode = a.repair;
    let mut m = Maintenance::open_as(file, format, repair_mode.is_some())?;
    if m.format() != Format::Qcow {
        return Err(err(file, "check needs a qcow image (this one is raw)"));
    }
    let w = CliError::output;
    let (report, repaired) = match repair_mode {
        None => (m.check()?, None),
        Some(mode) => {
            let r = m.repair(match mode {
                RepairMode::Leaks => CoreMode::Leaks,
                RepairMode::All => CoreMode::All,
            })?;
            (r.after.clone(), Some(r))
        }
    };
    match output {
        Output::Human => {
            if let Some(r) = &repaired {
                if !r.actions.is_empty() {
                    writeln!(
                        out,
                        "The following inconsistencies were found and repaired:\n"
                    )
                    .map_err(w)?;
                    writeln!(out, "    {} leaked clusters", r.leaks_fixed()).map_err(w)?;
                    writeln!(out, "    {} corruptions\n", r.corruptions_fixed()).map_err(w)?;
                    for a in r.actions.iter().take(MAX_LISTED) {
                        writeln!(out, "Repaired: {a}").map_err(w)?;
                    }
                    if let Some(more) = omitted(&r.actions) {
                        writeln!(out, "Repaired: {more}").map_err(w)?;
                    }
                    writeln!(out, "\nDouble checking the fixed image now...").map_err(w)?;
                }
            }
            human(&report, out).map_err(w)?;
        }
        Output::Json => json(file, &report, repaired.as_ref(), out).map_err(w)?,
    }
    Ok(status(&report))
}

fn human(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for c in &r.corruptions {
        writeln!(out, "ERROR {c}")?;
    }
    for l in &r.leaks {
        writeln!(out, "Leaked: {l}")?;
    }
    if r.is_clean() {
        writeln!(out, "No errors were found on the image.")?;
    }
    if !r.corruptions.is_empty() {
        writeln!(
            out,
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
            r.corruptions.len()
        )?;
    }
    if !r.leaks.is_empty() {
        writeln!(
            out,
            "\n{} leaked clusters ({} bytes) were found on the image.\nThis means waste of disk space, but no harm to data.",
            r.leaked_clusters, r.leaked_bytes
        )?;
    }
    if r.total_clusters > 0 {
        let pct = |n: u64, d: u64| {
            if d == 0 {
                0.0
            } else {
                n as f64 * 100.0 / d as f64
            }
        };
        writeln!(
            out,
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            r.allocated_clusters,
            r.total_clusters,
            pct(r.allocated_clusters, r.total_clusters),
            pct(r.fragmented_clusters, r.allocated_clusters),
            pct(r.compressed_clusters, r.allocated_clusters)
        )?;
    }
    writeln!(out, "Image end offset: {}", r.image_end_offset)
}

fn json(
    file: &Path,
    r: &Report,
    repaired: Option<&qcow_core::maint::RepairReport>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    for c in &r.corruptions {
        let (host, len) = c
            .reference()
            .map_or((None, None), |x| (Some(x.host), Some(x.len)));
        let mut s = format!(
            "{{ \"type\": \"corruption\", \"message\": {}",
            json_str(&c.to_string())
        );
        if let (Some(h), Some(l)) = (host, len) {
            s.push_str(&format!(", \"offset\": {h}, \"length\": {l}"));
        }
        s.push_str(" }");
        problems.push(s);
    }
    for l in &r.leaks {
        problems.push(format!(
            "{{ \"type\": \"leak\", \"message\": {}, \"offset\": {}, \"length\": {} }}",
            json_str(&l.to_string()),
            l.offset,
            l.len
        ));
    }
    let mut fields = vec![
        format!("    \"image-end-offset\": {}", r.image_end_offset),
        format!("    \"total-clusters\": {}", r.total_clusters),
        "    \"check-errors\": 0".to_string(),
        format!("    \"leaks\": {}", r.leaked_clusters),
        format!("    \"leaked-bytes\": {}", r.leaked_bytes),
        format!("    \"corruptions\": {}", r.corruptions.len()),
        format!("    \"allocated-clusters\": {}", r.allocated_clusters),
        format!(
            "    \"filename\": {}",
            json_str(&file.display().to_string())
        ),
        "    \"format\": \"qcow\"".to_string(),
        format!("    \"fragmented-clusters\": {}", r.fragmented_clusters),
        format!("    \"compressed-clusters\": {}", r.compressed_clusters),
    ];
    if let Some(rep) = repaired {
        fields.push(format!("    \"leaks-fixed\": {}", rep.leaks_fixed()));
        fields.push(format!(
            "    \"corruptions-fixed\": {}",
            rep.corruptions_fixed()
        ));
        let actions: Vec<String> = rep
            .actions
            .iter()
            .take(MAX_LISTED)
            .map(|a| format!("        {}", json_str(&a.to_string())))
            .collect();
        fields.push(format!(
            "    \"repairs\": [\n{}\n    ]",
            actions.join(",\n")
        ));
        fields.push(format!(
            "    \"repairs-not-listed\": {}",
            rep.actions.len().saturating_sub(MAX_LISTED)
        ));
    }
    fields.push(format!(
        "    \"problems\": [{}{}{}]",
        if problems.is_empty() {
            ""
        } else {
            "\n        "
        },
        problems.join(",\n        "),
        if problems.is_empty() { "" } else { "\n    " }
    ));
    writeln!(out, "{{\n{}\n}}", fields.join(",\n"))
}
