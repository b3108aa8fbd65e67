//! The FUSE file system: a root directory holding `disk` and one file per partition,
//! each a window onto the [`Disk`].

use std::cell::RefCell;
use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use qcow_core::StatusKind;
use qcow_std::Disk;

/// How long the kernel may cache names and attributes (they change only by our writes).
const TTL: Duration = Duration::from_secs(1);
/// The largest request we serve at once (the kernel sends at most 1 MiB here).
const MAX_IO: u32 = 1 << 20;
/// Root directory inode.
const ROOT: u64 = 1;

/// One file of the mount: a byte window of the disk.
#[derive(Debug, Clone)]
pub struct Window {
    /// Its name in the root directory (`disk`, `p1`, ...).
    pub name: String,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The file system served: windows onto one disk.
#[derive(Debug)]
pub struct DiskFs {
    disk: Disk,
    files: Vec<Window>,
    writable: bool,
    uid: u32,
    gid: u32,
}

thread_local! {
    /// A reusable read buffer per FUSE worker thread.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl DiskFs {
    /// `flush`/`fsync`: makes what was written durable (nothing to do read-only).
    fn sync(&self, reply: ReplyEmpty) {
        if !self.writable {
            return reply.ok();
        }
        match self.disk.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl DiskFs {
    /// A file system over `disk` showing `files` (the first is usually the whole disk).
    pub fn new(disk: Disk, files: Vec<Window>, writable: bool, uid: u32, gid: u32) -> Self {
        DiskFs {
            disk,
            files,
            writable,
            uid,
            gid,
        }
    }

    fn file(&self, ino: INodeNo) -> Option<&Window> {
        let i = ino.0.checked_sub(ROOT + 1)?;
        self.files.get(usize::try_from(i).ok()?)
    }

    fn mtime(&self) -> SystemTime {
        std::fs::metadata(self.disk.path())
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let t = self.mtime();
        let (kind, size, perm, nlink) = if ino.0 == ROOT {
            (FileType::Directory, 0, 0o755, 2)
        } else {
            let f = self.file(ino)?;
            let perm = if self.writable { 0o644 } else { 0o444 };
            (FileType::RegularFile, f.len, perm, 1)
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The disk range of `len` bytes at `offset` of file `ino`, clipped to the file.
    fn range(&self, ino: INodeNo, offset: u64, len: u64) -> Result<(u64, u64), Errno> {
        let f = self.file(ino).ok_or(Errno::ENOENT)?;
        let n = f.len.saturating_sub(offset).min(len);
        Ok((f.start.saturating_add(offset), n))
    }

    fn seek(&self, ino: INodeNo, offset: i64, whence: i32) -> Result<i64, Errno> {
        let f = self.file(ino).ok_or(Errno::ENOENT)?;
        let off = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        if off >= f.len {
            return Err(Errno::ENXIO);
        }
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        let mut pos = off;
        while pos < f.len {
            let st = self
                .disk
                .block_status(f.start + pos, f.len - pos)
                .map_err(errno)?;
            let is_data = !matches!(st.kind, StatusKind::Unallocated | StatusKind::Hole { .. });
            if is_data == want_data {
                return i64::try_from(pos).map_err(|_| Errno::EOVERFLOW);
            }
            pos = pos.saturating_add(st.len.max(1));
        }
        if want_data {
            Err(Errno::ENXIO)
        } else {
            i64::try_from(f.len).map_err(|_| Errno::EOVERFLOW)
        }
    }
}

/// The errno for a library error: the host's own when it has one, else EIO.
fn errno(e: qcow_std::Error) -> Errno {
    match e {
        qcow_std::Error::ReadOnly { .. } => Errno::EROFS,
        qcow_std::Error::Image {
            source: qcow_core::Error::OutOfRange { .. },
            ..
        } => Errno::EINVAL,
        qcow_std::Error::Io { source, .. } => {
            source.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
        }
        _ => Errno::EIO,
    }
}

impl Filesystem for DiskFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: as much readahead as the kernel allows, 1 MiB writes.
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_write(MAX_IO);
        Ok(())
    }

    fn destroy(&mut self) {
        if self.writable {
            // Nobody to tell: the kernel has gone.
            let _ = self.disk.flush();
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent.0 == ROOT)
            .then(|| self.files.iter().position(|f| OsStr::new(&f.name) == name))
            .flatten()
            .and_then(|i| self.attr(INodeNo(ROOT + 1 + i as u64)));
        match found {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(a) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // The files have the disk's fixed size: truncating to it is a no-op, growing
        // is refused with EFBIG, shrinking with EPERM.
        match size {
            Some(s) if s > a.size => reply.error(Errno::EFBIG),
            Some(s) if s < a.size => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &a),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.file(ino).is_none() {
            return reply.error(Errno::EISDIR);
        }
        if !self.writable && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // Direct I/O: `disk` and the partition files alias the same bytes, so no page
        // cache may hold a stale copy of one after a write through the other.
        let fl = FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        reply.opened(FileHandle(0), fl);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (at, n) = match self.range(ino, offset, u64::from(size.min(MAX_IO))) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        BUF.with_borrow_mut(|buf| {
            // n <= MAX_IO.
            buf.resize(n as usize, 0);
            match self.disk.read_at(at, buf) {
                Ok(()) => reply.data(buf),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        let (at, n) = match self.range(ino, offset, data.len() as u64) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        if n == 0 && !data.is_empty() {
            // At or past the end: the file cannot grow.
            return reply.error(Errno::ENOSPC);
        }
        // n <= data.len(); a write reaching past the end is cut short, as on a device.
        match self.disk.write_at(at, &data[..n as usize]) {
            Ok(()) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.sync(reply)
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(reply)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let dots = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
        ];
        let files = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (ROOT + 1 + i as u64, FileType::RegularFile, f.name.as_str()));
        for (i, (ino, kind, name)) in dots.into_iter().chain(files).enumerate() {
            let next = i as u64 + 1;
            if next > offset && reply.add(INodeNo(ino), next, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.disk.size().div_ceil(512);
        let files = self.files.len() as u64 + 1;
        reply.statfs(blocks, 0, 0, files, 0, 512, 255, 512);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        let Some(f) = self.file(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let end = offset.checked_add(length);
        let (at, n) = (
            f.start.saturating_add(offset),
            f.len.saturating_sub(offset).min(length),
        );
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let result = if mode == punch {
            // As NBD's TRIM: unallocate where nothing shows through, zeros elsewhere.
            self.disk.discard(at, n)
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE == libc::FALLOC_FL_ZERO_RANGE {
            self.disk.write_zeroes(at, n)
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
            // Plain allocation: nothing to reserve in a growing image, but no growing.
            if end.is_none_or(|e| e > f.len) && mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
                return reply.error(Errno::EFBIG);
            }
            Ok(())
        } else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.seek(ino, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }
}
