//! `qcow._qcow.Handle`: one opened [`Disk`], closable, shared between threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use qcow_core::StatusKind;
use qcow_std::map::Extent;
use qcow_std::{Disk, DiskOptions, Storage};

use crate::ahead::ReadAhead;
use crate::source::PyStorage;
use crate::{closed_err, secret, to_py};

/// Where the top image comes from, to reopen it on another parent.
#[derive(Clone)]
enum Src {
    Path(PathBuf),
    Obj(Arc<dyn Storage>, PathBuf),
}

/// An opened image (the native half of `qcow.Image` and `qcow.pyqcow.file`).
#[pyclass(frozen, module = "qcow._qcow")]
pub struct Handle {
    disk: RwLock<Option<Disk>>,
    src: Src,
    opts: DiskOptions,
    /// pyqcow's rule: with a backing name but no parent, reading unallocated data fails.
    strict: bool,
    ahead: ReadAhead,
}

impl Handle {
    fn build(py: Python<'_>, src: Src, opts: DiskOptions, strict: bool) -> PyResult<Self> {
        let o = opts.clone();
        let s = src.clone();
        let disk = py
            .allow_threads(move || match s {
                Src::Path(p) => o.open(p),
                Src::Obj(st, name) => o.open_storage(st, name),
            })
            .map_err(to_py)?;
        Ok(Handle {
            disk: RwLock::new(Some(disk)),
            src,
            opts,
            strict,
            ahead: ReadAhead::default(),
        })
    }

    /// The open disk (a cheap clone: it shares the chain), or `ValueError` once closed.
    pub fn disk(&self) -> PyResult<Disk> {
        self.disk
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(closed_err)
    }

    /// The byte count a read of `n` at `offset` returns: up to the end.
    fn clamp(disk: &Disk, offset: u64, n: u64) -> usize {
        let left = disk.size().saturating_sub(offset);
        usize::try_from(n.min(left)).unwrap_or(usize::MAX)
    }
}

/// Fails when `[offset, offset + len)` needs backing data that no parent supplies.
fn backed(disk: &Disk, strict: bool, offset: u64, len: u64) -> Result<(), String> {
    if !strict || disk.layers().len() > 1 || disk.info().backing_name.is_none() {
        return Ok(());
    }
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end {
        let s = disk.block_status(at, end - at).map_err(|e| e.to_string())?;
        if matches!(s.kind, StatusKind::Unallocated) {
            return Err(format!(
                "{}: reading offset {at} needs the backing file: set it with set_parent",
                disk.path().display()
            ));
        }
        at = at.saturating_add(s.len.max(1));
    }
    Ok(())
}

/// Reads of at least this many bytes are split between this thread and the pool's
/// (the Disk reads without a lock across I/O and inflate). Below it, handing a part to
/// another thread and copying it back costs more than it saves: measured on the bench's
/// 256 MiB images, 1 MiB reads are fastest on one thread, 4 and 16 MiB reads faster
/// split. Shorter reads in sequence are read ahead instead ([`ReadAhead`]).
const SPLIT: usize = 2 << 20;

impl Handle {
    fn read_into(&self, disk: &Disk, offset: u64, buf: &mut [u8]) -> PyResult<()> {
        backed(disk, self.strict, offset, buf.len() as u64).map_err(PyOSError::new_err)?;
        let threads = crate::pool::threads();
        if buf.len() <= SPLIT || threads < 2 {
            return self.ahead.read(disk, offset, buf).map_err(to_py);
        }
        crate::pool::read_split(disk, offset, buf, threads - 1).map_err(to_py)
    }
}

#[pymethods]
impl Handle {
    /// Opens `path`; `chain=False` opens the top image alone (pyqcow's way).
    #[staticmethod]
    #[pyo3(signature = (path, writable=false, password=None, format=None, chain=true))]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        writable: bool,
        password: Option<&Bound<'_, PyAny>>,
        format: Option<&str>,
        chain: bool,
    ) -> PyResult<Self> {
        let mut o = DiskOptions::new();
        o.writable(writable)
            .format(crate::format(format)?)
            .secret(secret(password)?)
            .no_backing(!chain);
        Self::build(py, Src::Path(path), o, !chain)
    }

    /// Opens a Python file object (read-only, the top image alone).
    #[staticmethod]
    #[pyo3(signature = (fobj, password=None, format=None, name=None))]
    fn open_file_object(
        py: Python<'_>,
        fobj: Py<PyAny>,
        password: Option<&Bound<'_, PyAny>>,
        format: Option<&str>,
        name: Option<PathBuf>,
    ) -> PyResult<Self> {
        let st: Arc<dyn Storage> = Arc::new(PyStorage::new(py, fobj)?);
        let mut o = DiskOptions::new();
        o.format(crate::format(format)?)
            .secret(secret(password)?)
            .no_backing(true);
        let name = name.unwrap_or_else(|| PathBuf::from("<file object>"));
        Self::build(py, Src::Obj(st, name), o, true)
    }

    /// The same image reopened on `parent` as its backing layer.
    fn with_parent(&self, py: Python<'_>, parent: &Handle) -> PyResult<Self> {
        self.disk()?;
        let mut o = self.opts.clone();
        o.backing(parent.disk()?);
        Self::build(py, self.src.clone(), o, self.strict)
    }

    /// The same image reopened with a password.
    fn with_password(&self, py: Python<'_>, password: &Bound<'_, PyAny>) -> PyResult<Self> {
        self.disk()?;
        let mut o = self.opts.clone();
        o.secret(secret(Some(password))?);
        Self::build(py, self.src.clone(), o, self.strict)
    }

    /// Virtual size in bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.disk()?.size())
    }
    /// Whether it was opened for writing.
    #[getter]
    fn writable(&self) -> PyResult<bool> {
        Ok(self.disk()?.is_writable())
    }
    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.disk
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }
    /// The backing file name stored in the top image, or `None`.
    #[getter]
    fn backing_name<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self
            .disk()?
            .info()
            .backing_name
            .map(|b| PyBytes::new(py, &b)))
    }
    /// Whether the top image is encrypted.
    #[getter]
    fn encrypted(&self) -> PyResult<bool> {
        Ok(self.disk()?.info().encrypted)
    }
    /// The top image's format name.
    #[getter]
    fn format(&self) -> PyResult<String> {
        Ok(self.disk()?.format().to_string())
    }
    /// Whether a parent (backing layer) is attached.
    #[getter]
    fn has_parent(&self) -> PyResult<bool> {
        Ok(self.disk()?.layers().len() > 1)
    }

    /// Up to `n` bytes at `offset` (fewer at the end), the GIL released.
    fn read_at<'py>(&self, py: Python<'py>, offset: u64, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        let disk = self.disk()?;
        let len = Self::clamp(&disk, offset, n);
        if len == 0 {
            return Ok(PyBytes::new(py, b""));
        }
        PyBytes::new_with(py, len, |buf| {
            py.allow_threads(|| self.read_into(&disk, offset, buf))
        })
    }

    /// Writes `data` at `offset` (inside the size); returns the byte count.
    fn write_at(&self, py: Python<'_>, offset: u64, data: &[u8]) -> PyResult<usize> {
        let disk = self.disk()?;
        // `bytes` are immutable and the caller holds them: read without the GIL.
        py.allow_threads(|| self.ahead.writing(|| disk.write_at(offset, data)))
            .map_err(to_py)?;
        Ok(data.len())
    }

    /// Makes what was written durable.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let disk = self.disk()?;
        py.allow_threads(|| disk.flush()).map_err(to_py)
    }

    /// Flushes (when writable) and closes; later calls raise `ValueError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let d = self
            .disk
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        py.allow_threads(|| self.ahead.clear());
        match d {
            Some(d) if d.is_writable() => py.allow_threads(|| d.flush()).map_err(to_py),
            _ => Ok(()),
        }
    }

    /// The keys and values of `qcow info --output=json`.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let disk = self.disk()?;
        info_dict(py, &disk)
    }

    /// The extents of `qcow map --output=json`.
    fn map<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let disk = self.disk()?;
        let extents = py.allow_threads(|| extents(&disk)).map_err(to_py)?;
        let list = PyList::empty(py);
        for e in extents {
            let d = PyDict::new(py);
            d.set_item("start", e.start)?;
            d.set_item("length", e.length)?;
            d.set_item("depth", e.depth)?;
            d.set_item("present", e.present)?;
            d.set_item("zero", e.zero)?;
            d.set_item("data", e.data)?;
            d.set_item("compressed", e.compressed)?;
            if let Some(o) = e.offset {
                d.set_item("offset", o)?;
            }
            list.append(d)?;
        }
        Ok(list)
    }
}

fn info_dict<'py>(py: Python<'py>, disk: &Disk) -> PyResult<Bound<'py, PyDict>> {
    use std::os::unix::fs::MetadataExt;
    let info = disk.info();
    let path = disk.path();
    let d = PyDict::new(py);
    d.set_item("virtual-size", disk.size())?;
    d.set_item("filename", path.display().to_string())?;
    if let Some(c) = info.cluster_size {
        d.set_item("cluster-size", c)?;
    }
    d.set_item("format", disk.format().to_string())?;
    let actual = std::fs::metadata(path).map_or(0, |m| m.blocks() * 512);
    d.set_item("actual-size", actual)?;
    if disk.format() == qcow_std::Format::Qcow {
        d.set_item("encrypted", info.encrypted)?;
    }
    if let Some(b) = &info.backing_name {
        let b = String::from_utf8_lossy(b).into_owned();
        let full = qcow_std::open::resolve_backing(path, Path::new(&b));
        d.set_item("full-backing-filename", full.display().to_string())?;
        d.set_item("backing-filename", b)?;
    }
    d.set_item("dirty-flag", false)?;
    Ok(d)
}

/// The merged extents of a disk, as the CLI's `map`.
fn extents(disk: &Disk) -> Result<Vec<Extent>, qcow_std::Error> {
    let mut out = Vec::new();
    qcow_std::map::for_each_extent(disk, |e| {
        out.push(*e);
        Ok::<(), qcow_std::Error>(())
    })?;
    Ok(out)
}
