//! `qcow create`: a new, empty image laid out as QEMU lays it out.

use std::io::Write;
use std::path::{Path, PathBuf};

use qcow_core::write::CreateOptions;
use qcow_std::{Disk, Format};

use crate::common::{err, parse_size, read_secret, CliError, VerbResult};

/// The warning QEMU's users get for this cipher.
pub const WEAK_CIPHER: &str = "qcow: warning: the qcow AES-CBC encryption is weak and deprecated \
(no integrity, predictable IVs, a password used directly as key); use LUKS (qcow2/luks) for new images";

/// The arguments of `create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backing file (stored as given; relative to FILE's directory).
    #[arg(short = 'b')]
    backing: Option<String>,
    /// Backing file format.
    #[arg(short = 'F')]
    backing_format: Option<Format>,
    /// Do not open the backing file (it need not exist yet; SIZE is then required).
    #[arg(short = 'u')]
    unsafe_mode: bool,
    /// Encrypt with QEMU's legacy AES-CBC (weak; LUKS/qcow2 is the modern choice).
    #[arg(long)]
    encrypt: bool,
    /// File whose bytes are the secret.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Image file.
    file: PathBuf,
    /// Virtual size (defaults to the backing file's).
    size: Option<String>,
}

/// Runs `create`.
pub fn run(a: &Args, out: &mut dyn Write) -> VerbResult {
    let file = a.file.as_path();
    let size = a.size.as_deref();
    let (encrypt, password) = (a.encrypt, a.password_file.as_deref());
    let (backing, backing_format, unsafe_mode) =
        (a.backing.as_deref(), a.backing_format, a.unsafe_mode);
    let backing = backing.filter(|b| !b.is_empty());
    // As qemu-img: the backing file must open (it gives the default size), unless -u.
    let backing_size = match backing {
        Some(b) if !unsafe_mode => {
            let path = qcow_std::open::resolve_backing(file, Path::new(b));
            let disk = Disk::options()
                .format(backing_format)
                .open(&path)
                .map_err(|e| err(file, format!("cannot open backing file: {e}")))?;
            Some(disk.size())
        }
        _ => None,
    };
    let size = match (size, backing_size) {
        (Some(s), _) => parse_size(s).map_err(|e| err(file, e))?,
        (None, Some(s)) => s,
        (None, None) => return Err(err(file, "image creation needs a size parameter")),
    };
    if size == 0 {
        return Err(err(file, "image size must be at least 1 byte"));
    }
    let secret = match (encrypt, password) {
        (true, Some(p)) => Some(read_secret(p)?),
        (true, None) => {
            return Err(err(file, "--encrypt needs --password-file"));
        }
        (false, _) => None,
    };
    if let Some(s) = &secret {
        qcow_core::crypt::Cipher::from_secret(s)
            .map_err(|_| err(file, "secret is not valid UTF-8 (or holds a NUL byte)"))?;
        eprintln!("{WEAK_CIPHER}");
    }
    let opts = CreateOptions::new(size)
        .backing(backing.map(str::as_bytes))
        .encrypted(encrypt);
    // Refused options touch nothing; a failure after the file was made removes it.
    qcow_std::create::create(file, &opts)?;
    let mut line = format!(
        "Formatting '{}', fmt=qcow size={}",
        file.display(),
        opts.size.div_ceil(512) * 512
    );
    if let Some(b) = backing {
        line.push_str(&format!(" backing_file={b}"));
        if let Some(f) = backing_format {
            line.push_str(&format!(" backing_fmt={f}"));
        }
    }
    if encrypt {
        line.push_str(" encrypt.format=aes");
    }
    writeln!(out, "{line}").map_err(CliError::output)?;
    Ok(0)
}
