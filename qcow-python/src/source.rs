//! A Python file object (`read`, `seek`, `tell`) as [`qcow_std::Storage`].

use std::io;
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

/// Reads a Python file-like object. Each access seeks then reads under one lock, and
/// holds the GIL only for those calls: callers hold no GIL while they wait for the
/// lock, so the lock is always taken before the GIL.
pub struct PyStorage {
    obj: Py<PyAny>,
    lock: Mutex<()>,
    len: u64,
}

impl std::fmt::Debug for PyStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PyStorage(..)")
    }
}

fn py_io(e: PyErr) -> io::Error {
    io::Error::other(format!("the file object raised {e}"))
}

impl PyStorage {
    /// Wraps `obj`, taking its length from `seek(0, 2)`.
    pub fn new(py: Python<'_>, obj: Py<PyAny>) -> PyResult<Self> {
        let end = obj.bind(py).call_method1("seek", (0, 2))?;
        let len = match end.extract::<u64>() {
            Ok(n) => n,
            Err(_) => obj.bind(py).call_method0("tell")?.extract::<u64>()?,
        };
        Ok(PyStorage {
            obj,
            lock: Mutex::new(()),
            len,
        })
    }

    fn fill(&self, py: Python<'_>, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let obj = self.obj.bind(py);
        obj.call_method1("seek", (offset, 0)).map_err(py_io)?;
        let mut done = 0usize;
        while done < buf.len() {
            let want = buf.len() - done;
            let got = obj.call_method1("read", (want,)).map_err(py_io)?;
            let n = if let Ok(b) = got.downcast::<PyBytes>() {
                put(buf, done, b.as_bytes())?
            } else if let Ok(b) = got.downcast::<PyByteArray>() {
                put(buf, done, &b.to_vec())?
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the file object's read() returned no bytes object",
                ));
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file object ended before offset {}",
                        offset + done as u64
                    ),
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// Copies `data` into `buf` at `at`; more bytes than asked is an error.
fn put(buf: &mut [u8], at: usize, data: &[u8]) -> io::Result<usize> {
    let dst = buf
        .get_mut(at..at.saturating_add(data.len()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the file object's read() returned more bytes than asked",
            )
        })?;
    dst.copy_from_slice(data);
    Ok(data.len())
}

impl qcow_std::Storage for PyStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        Python::with_gil(|py| self.fill(py, buf, offset))
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a file object source is read-only",
        ))
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a file object source is read-only",
        ))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}
