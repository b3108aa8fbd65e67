//! `create`, `convert` and `check`, as the CLI's verbs of those names.

use std::path::{Path, PathBuf};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use qcow_core::write::CreateOptions;
use qcow_std::convert::ConvertOptions;
use qcow_std::maint::{Maintenance, RepairMode};
use qcow_std::{Disk, Format};
use zeroize::Zeroizing;

use crate::{format, secret, to_py, Error};

fn check_secret(path: &Path, s: &Option<Zeroizing<Vec<u8>>>) -> PyResult<()> {
    if let Some(s) = s {
        qcow_core::crypt::Cipher::from_secret(s).map_err(|_| {
            Error::new_err(format!(
                "{}: secret is not valid UTF-8 (or holds a NUL byte)",
                path.display()
            ))
        })?;
    }
    Ok(())
}

/// Creates an empty qcow image of `size` bytes, as `qcow create` (encrypted when a
/// password is given; the size defaults to the backing file's). `cluster_bits`
/// (9..=16) overrides QEMU's default cluster size.
#[pyfunction]
#[pyo3(signature = (path, size=None, *, backing=None, backing_format=None, password=None,
    cluster_bits=None))]
pub fn create(
    py: Python<'_>,
    path: PathBuf,
    size: Option<u64>,
    backing: Option<String>,
    backing_format: Option<&str>,
    password: Option<&Bound<'_, PyAny>>,
    cluster_bits: Option<u8>,
) -> PyResult<()> {
    let bfmt = format(backing_format)?;
    let secret = secret(password)?;
    check_secret(&path, &secret)?;
    let backing = backing.filter(|b| !b.is_empty());
    let bsize = match &backing {
        Some(b) => {
            let bp = qcow_std::open::resolve_backing(&path, Path::new(b));
            let d = py
                .allow_threads(|| Disk::options().format(bfmt).open(&bp))
                .map_err(to_py)?;
            Some(d.size())
        }
        None => None,
    };
    let size = match size.or(bsize) {
        Some(0) => return Err(PyValueError::new_err("image size must be at least 1 byte")),
        Some(s) => s,
        None => return Err(PyValueError::new_err("create needs a size")),
    };
    let opts = CreateOptions::new(size)
        .backing(backing.as_deref().map(str::as_bytes))
        .encrypted(secret.is_some())
        .cluster_bits(cluster_bits);
    py.allow_threads(|| qcow_std::create::create(&path, &opts))
        .map_err(to_py)
}

/// Copies `src` into a new image `dst`, as `qcow convert`.
#[pyfunction]
#[pyo3(signature = (src, dst, *, output_format="raw", compress=false, backing=None,
    password=None, target_password=None, progress=None, format=None))]
#[allow(clippy::too_many_arguments)]
pub fn convert(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    output_format: &str,
    compress: bool,
    backing: Option<String>,
    password: Option<&Bound<'_, PyAny>>,
    target_password: Option<&Bound<'_, PyAny>>,
    progress: Option<Py<PyAny>>,
    format: Option<&str>,
) -> PyResult<()> {
    let out: Format = output_format
        .parse()
        .map_err(|e: qcow_std::open::UnknownFormat| PyValueError::new_err(e.to_string()))?;
    let infmt = crate::format(format)?;
    let src_secret = secret(password)?;
    let encrypt = secret(target_password)?;
    if out == Format::Raw && (compress || backing.is_some() || encrypt.is_some()) {
        return Err(PyValueError::new_err(
            "compress, backing and target_password need output_format='qcow'",
        ));
    }
    check_secret(&dst, &encrypt)?;
    let same = matches!((std::fs::canonicalize(&src), std::fs::canonicalize(&dst)), (Ok(a), Ok(b)) if a == b);
    if same {
        return Err(PyValueError::new_err("the destination is the source"));
    }
    let have = src_secret.is_some();
    let s2 = src_secret.clone();
    let disk = py
        .allow_threads(|| Disk::options().format(infmt).secret(src_secret).open(&src))
        .map_err(to_py)?;
    if disk.info().encrypted && !have {
        let e = qcow_std::Error::image(disk.path(), qcow_core::Error::PasswordRequired);
        return Err(to_py(e));
    }
    let bdisk = match &backing {
        Some(b) => {
            let bp = qcow_std::open::resolve_backing(&dst, Path::new(b));
            Some(
                py.allow_threads(|| Disk::options().secret(s2).open(&bp))
                    .map_err(to_py)?,
            )
        }
        None => None,
    };
    let mut failed: Option<PyErr> = None;
    let mut cb = |done: u64, total: u64| {
        if let (Some(f), None) = (&progress, &failed) {
            failed = Python::with_gil(|py| f.call1(py, (done, total)).err());
        }
    };
    let has_progress = progress.is_some();
    py.allow_threads(|| {
        let mut opts = ConvertOptions::new(out).compress(compress).encrypt(encrypt);
        if let (Some(name), Some(d)) = (&backing, &bdisk) {
            opts = opts.backing(name.clone(), d);
        }
        if has_progress {
            opts = opts.progress(&mut cb);
        }
        qcow_std::convert::convert(&disk, &dst, opts)
    })
    .map_err(to_py)?;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Checks (and with `repair`, `"leaks"` or `"all"`, repairs) an image, as `qcow check`.
#[pyfunction]
#[pyo3(signature = (path, *, repair=None, format=None))]
pub fn check<'py>(
    py: Python<'py>,
    path: PathBuf,
    repair: Option<&str>,
    format: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let mode = match repair {
        None => None,
        Some("leaks") => Some(RepairMode::Leaks),
        Some("all") => Some(RepairMode::All),
        Some(o) => {
            return Err(PyValueError::new_err(format!(
                "repair must be None, 'leaks' or 'all', not {o:?}"
            )))
        }
    };
    let fmt = crate::format(format)?;
    let (report, repaired) = py
        .allow_threads(|| {
            let mut m = Maintenance::open_as(&path, fmt, mode.is_some())?;
            if m.format() != Format::Qcow {
                return Err(qcow_std::Error::NotQcow { path: path.clone() });
            }
            match mode {
                None => Ok((m.check()?, None)),
                Some(mode) => {
                    let r = m.repair(mode)?;
                    Ok((r.after.clone(), Some(r)))
                }
            }
        })
        .map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("image-end-offset", report.image_end_offset)?;
    d.set_item("total-clusters", report.total_clusters)?;
    d.set_item("check-errors", 0)?;
    d.set_item("leaks", report.leaked_clusters)?;
    d.set_item("leaked-bytes", report.leaked_bytes)?;
    d.set_item("corruptions", report.corruptions.len())?;
    d.set_item("allocated-clusters", report.allocated_clusters)?;
    d.set_item("filename", path.display().to_string())?;
    d.set_item("format", "qcow")?;
    d.set_item("fragmented-clusters", report.fragmented_clusters)?;
    d.set_item("compressed-clusters", report.compressed_clusters)?;
    if let Some(r) = &repaired {
        d.set_item("leaks-fixed", r.leaks_fixed())?;
        d.set_item("corruptions-fixed", r.corruptions_fixed())?;
        let acts: Vec<String> = r.actions.iter().map(|a| a.to_string()).collect();
        d.set_item("repairs", acts)?;
    }
    let problems = PyList::empty(py);
    for c in &report.corruptions {
        let p = PyDict::new(py);
        p.set_item("type", "corruption")?;
        p.set_item("message", c.to_string())?;
        if let Some(r) = c.reference() {
            p.set_item("offset", r.host)?;
            p.set_item("length", r.len)?;
        }
        problems.append(p)?;
    }
    for l in &report.leaks {
        let p = PyDict::new(py);
        p.set_item("type", "leak")?;
        p.set_item("message", l.to_string())?;
        p.set_item("offset", l.offset)?;
        p.set_item("length", l.len)?;
        problems.append(p)?;
    }
    d.set_item("problems", problems)?;
    Ok(d)
}
