//! `qcow convert`: copy an image into a new raw or qcow image.

use std::io::Write;
use std::path::{Path, PathBuf};

use qcow_std::convert::{convert, ConvertOptions};
use qcow_std::{Disk, Format};

use crate::common::{err, open_disk, read_secret, CliError, VerbResult};

/// The arguments of `convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source format (probed when absent).
    #[arg(short = 'f')]
    format: Option<Format>,
    /// Output format.
    #[arg(short = 'O', default_value = "raw")]
    out_format: Format,
    /// Write compressed clusters.
    #[arg(short = 'c')]
    compress: bool,
    /// Show progress on stderr.
    #[arg(short = 'p')]
    progress: bool,
    /// Make DST an overlay of BACKING holding only what differs.
    #[arg(short = 'B')]
    backing: Option<String>,
    /// Worker threads for compression (default: all cores).
    #[arg(short = 'm')]
    threads: Option<usize>,
    /// Secret of an encrypted source.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Secret of the encrypted output.
    #[arg(long)]
    target_password_file: Option<PathBuf>,
    /// Encrypt the output (needs --target-password-file).
    #[arg(long)]
    encrypt: bool,
    /// Source image.
    src: PathBuf,
    /// Destination image.
    dst: PathBuf,
}

/// Runs `convert`.
pub fn run(a: &Args, _out: &mut dyn Write) -> VerbResult {
    let dst = a.dst.as_path();
    if a.out_format == Format::Raw && (a.compress || a.backing.is_some() || a.encrypt) {
        return Err(err(dst, "-c, -B and --encrypt need -O qcow"));
    }
    let encrypt = match (a.encrypt, &a.target_password_file) {
        (true, Some(p)) => Some(read_secret(p)?),
        (true, None) => return Err(err(dst, "--encrypt needs --target-password-file")),
        (false, Some(_)) if a.out_format == Format::Qcow => {
            return Err(err(dst, "--target-password-file needs --encrypt"))
        }
        _ => None,
    };
    if let Some(s) = &encrypt {
        qcow_core::crypt::Cipher::from_secret(s)
            .map_err(|_| err(dst, "secret is not valid UTF-8 (or holds a NUL byte)"))?;
        eprintln!("{}", super::create::WEAK_CIPHER);
    }
    if same_file(&a.src, dst) {
        return Err(err(dst, "the destination is the source"));
    }
    let src = open_disk(&a.src, a.format, a.password_file.as_deref(), false)?;
    let backing = match &a.backing {
        Some(b) => {
            let path = qcow_std::open::resolve_backing(dst, Path::new(b));
            let secret = a.password_file.as_deref().map(read_secret).transpose()?;
            Some((b.clone(), Disk::options().secret(secret).open(&path)?))
        }
        None => None,
    };
    let mut last = -1i64;
    let mut show = |done: u64, total: u64| {
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let key = (pct * 100.0) as i64;
        if key != last {
            last = key;
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "    ({pct:.2}/100%)\r");
            if done >= total {
                let _ = writeln!(e);
            }
        }
    };
    let mut opts = ConvertOptions::new(a.out_format)
        .compress(a.compress)
        .encrypt(encrypt)
        .threads(a.threads.unwrap_or(0));
    if let Some((name, disk)) = &backing {
        opts = opts.backing(name.clone(), disk);
    }
    if a.progress {
        opts = opts.progress(&mut show);
    }
    convert(&src, dst, opts).map_err(CliError::from)?;
    Ok(0)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
