//! What the verbs share: errors, sizes, secrets, opening.

use std::fmt;
use std::path::{Path, PathBuf};

use qcow_std::{Disk, Format};
use zeroize::Zeroizing;

/// A failed verb: one line for stderr, after `qcow: `.
#[derive(Debug)]
pub enum CliError {
    /// The library failed (its error names the file).
    Lib(qcow_std::Error),
    /// The command refuses a request about a file (a bad argument or combination).
    Refused {
        /// The file.
        path: PathBuf,
        /// Why, for people.
        why: String,
    },
    /// Writing the output or reading the input failed.
    Stream {
        /// Which stream: "write output", "read stdin", ...
        what: &'static str,
        /// The failure.
        source: std::io::Error,
    },
}

impl CliError {
    /// Writing to stdout failed.
    pub fn output(source: std::io::Error) -> Self {
        CliError::Stream {
            what: "write output",
            source,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Lib(e) => write!(f, "{e}{}", hint(e)),
            CliError::Refused { path, why } => write!(f, "{}: {why}", path.display()),
            CliError::Stream { what, source } => write!(f, "cannot {what}: {source}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Lib(e) => Some(e),
            CliError::Refused { .. } => None,
            CliError::Stream { source, .. } => Some(source),
        }
    }
}

impl From<qcow_std::Error> for CliError {
    fn from(e: qcow_std::Error) -> Self {
        CliError::Lib(e)
    }
}

/// The flag that answers a library error, for its one line.
fn hint(e: &qcow_std::Error) -> &'static str {
    use qcow_core::Error as C;
    use qcow_std::Error as S;
    match e {
        S::Image { source, .. } => match source {
            C::PasswordRequired => " (--password-file)",
            C::Corrupt(_) => " (check -r all)",
            C::ShrinkRefused { .. } => " (--shrink)",
            _ => "",
        },
        S::EncryptedShrinkNeedsKey { .. } => " (--password-file)",
        _ => "",
    }
}

/// A verb's result: its exit status, or an error (exit 1, or the verb's own code).
pub type VerbResult = Result<u8, CliError>;

/// An error about `path`.
pub fn err(path: &Path, what: impl fmt::Display) -> CliError {
    CliError::Refused {
        path: path.to_path_buf(),
        why: what.to_string(),
    }
}

/// Output format of `info`, `map`, `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Text for people.
    Human,
    /// JSON with qemu-img's key names.
    Json,
}

/// Parses a SIZE: bytes, or a number with a suffix k/K, M, G, T, P, E (powers of 1024),
/// as qemu-img does (a fraction is allowed with a suffix: `1.5G`; `0x` hexadecimal
/// without one).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size '{s}' (bytes, or a number with k, M, G, T, P or E)");
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        // As qemu: hexadecimal bytes, without a suffix.
        return u64::from_str_radix(hex, 16).map_err(|_| bad());
    }
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c {
                'b' | 'B' => 0,
                'k' | 'K' => 10,
                'm' | 'M' => 20,
                'g' | 'G' => 30,
                't' | 'T' => 40,
                'p' | 'P' => 50,
                'e' | 'E' => 60,
                _ => return Err(bad()),
            };
            (&s[..i], 1u64 << shift)
        }
        _ => (s, 1),
    };
    if num.is_empty() || num.starts_with('-') || num.starts_with('+') {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || !(0.0..18446744073709551616.0).contains(&v) {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Reads a secret file's bytes exactly (no newline stripping, as QEMU's
/// `--object secret,file=`).
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, CliError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| err(path, format!("cannot read password file: {e}")))
}

/// Opens a disk for a verb.
pub fn open_disk(
    path: &Path,
    format: Option<Format>,
    password: Option<&Path>,
    writable: bool,
) -> Result<Disk, CliError> {
    let disk = Disk::options()
        .writable(writable)
        .format(format)
        .secret(password.map(read_secret).transpose()?)
        .open(path)?;
    require_secret(&disk, password.is_some())?;
    Ok(disk)
}

/// Fails when an encrypted image was opened without a password.
pub fn require_secret(disk: &Disk, have: bool) -> Result<(), CliError> {
    if disk.info().encrypted && !have {
        let e = qcow_std::Error::image(disk.path(), qcow_core::Error::PasswordRequired);
        return Err(e.into());
    }
    Ok(())
}

/// qemu's `size_to_str`: three significant digits and a binary unit.
pub fn human_size(v: u64) -> String {
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let x = v as f64 / (1000.0 / 1024.0);
    let exp = if x <= 0.0 {
        0
    } else {
        x.log2().floor() as i64 + 1
    };
    let i = ((exp - 1).max(0) / 10).min(6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", fmt_g3(v as f64 / div), UNITS[i])
}

/// C's `%0.3g`.
fn fmt_g3(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let digits = x.abs().log10().floor() as i32;
    let decimals = (2 - digits).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Space the file takes on disk (allocated blocks).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("16X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("16E").is_err());
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert!(parse_size("0x1M").is_err());
        assert!(parse_size("0x").is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_size(1024), "1 KiB");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1048576), "1 MiB");
        assert_eq!(human_size(700416), "684 KiB");
        assert_eq!(human_size(1000), "0.977 KiB");
        assert_eq!(human_size(0), "0 B");
    }
}
