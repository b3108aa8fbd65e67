//! The native half of the `qcow` Python package (`qcow._qcow`): a handle over
//! [`qcow_std::Disk`] and the image verbs. The Python half (`python/qcow/`) builds the
//! `io.RawIOBase` file object and the `pyqcow` drop-in on it.
//!
//! Every call into a [`qcow_std::Disk`] runs with the GIL released; a Python file
//! object used as storage takes the GIL back only for its `read`/`seek`/`tell` calls.
#![forbid(unsafe_code)]
// No function over 80 lines (the threshold is in the workspace's clippy.toml).
#![deny(clippy::too_many_lines)]

mod ahead;
mod handle;
mod pool;
mod source;
mod verbs;

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use zeroize::Zeroizing;

create_exception!(
    qcow,
    Error,
    PyOSError,
    "A bad or corrupt image, or an encrypted one read without its password."
);

/// A library error as the Python exception that fits it.
pub(crate) fn to_py(e: qcow_std::Error) -> PyErr {
    let msg = e.to_string();
    match e.io_kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        std::io::ErrorKind::PermissionDenied if !matches!(e, qcow_std::Error::ReadOnly { .. }) => {
            PyPermissionError::new_err(msg)
        }
        _ => Error::new_err(msg),
    }
}

/// The error Python's io raises on a closed file.
pub(crate) fn closed_err() -> PyErr {
    PyValueError::new_err("I/O operation on closed file.")
}

/// A password given as `bytes`, `bytearray` or `str` (its UTF-8 bytes).
pub(crate) fn secret(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Zeroizing<Vec<u8>>>> {
    let Some(o) = obj else { return Ok(None) };
    if o.is_none() {
        return Ok(None);
    }
    if let Ok(b) = o.downcast::<PyBytes>() {
        return Ok(Some(Zeroizing::new(b.as_bytes().to_vec())));
    }
    if let Ok(b) = o.downcast::<PyByteArray>() {
        return Ok(Some(Zeroizing::new(b.to_vec())));
    }
    if let Ok(s) = o.downcast::<PyString>() {
        return Ok(Some(Zeroizing::new(s.to_cow()?.as_bytes().to_vec())));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(
        "password must be bytes or str",
    ))
}

/// A format name: `"qcow"`, `"raw"` or `None` (probed).
pub(crate) fn format(name: Option<&str>) -> PyResult<Option<qcow_std::Format>> {
    name.map(|n| {
        n.parse()
            .map_err(|e: qcow_std::open::UnknownFormat| PyValueError::new_err(e.to_string()))
    })
    .transpose()
}

/// Stops handing reads to the reader threads and waits (at most 10 s, the GIL
/// released) until none is busy: registered with `os.register_at_fork(before=...)`,
/// so a forked child never inherits a lock that a reader thread held mid-read.
#[pyfunction]
fn before_fork(py: Python<'_>) {
    py.allow_threads(|| pool::quiesce(std::time::Duration::from_secs(10)));
}

/// After a fork, in the parent: the reader threads take reads again.
#[pyfunction]
fn after_fork_in_parent() {
    pool::resume();
}

#[pymodule]
fn _qcow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_class::<handle::Handle>()?;
    m.add_function(wrap_pyfunction!(verbs::create, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::convert, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::check, m)?)?;
    m.add_function(wrap_pyfunction!(before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_parent, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
