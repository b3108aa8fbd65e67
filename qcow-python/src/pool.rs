//! Reader threads that outlive a read. A large read is split between the calling
//! thread and these: threads spawned for each read cost about 0.2 ms of CPU apiece
//! (new stacks, malloc arenas, inflate state), as much as inflating 40 clusters, and
//! ate the gain of a second core on 1 MiB reads. The pool belongs to one process: a
//! forked child (Python's `multiprocessing`) does not have its parent's threads, so it
//! makes its own on first use. Besides splitting large reads, the workers read ahead
//! of a sequence of smaller ones ([`read_ahead`], used by `crate::ahead`).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, TryLockError};

use qcow_std::{Disk, Error};

/// What a worker sends back: the part's index, its bytes, how the read went.
type Done = (usize, Vec<u8>, Result<(), Error>);

/// One part of a read: `len` bytes at `offset`, into `buf` (at least `len` long).
struct Job {
    disk: Disk,
    offset: u64,
    buf: Vec<u8>,
    len: usize,
    index: usize,
    done: Sender<Done>,
}

/// Part buffers handed back after their bytes were copied out: reused, so a read
/// does not fault in fresh pages for every part.
static SPARES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of at least `len` bytes (its contents are overwritten by the read).
fn spare(len: usize) -> Vec<u8> {
    let mut buf = SPARES
        .try_lock()
        .ok()
        .and_then(|mut s| s.pop())
        .unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf
}

fn give_back(buf: Vec<u8>) {
    if let Ok(mut s) = SPARES.try_lock() {
        if s.len() < 8 && buf.len() <= PART_MAX {
            s.push(buf);
        }
    }
}

/// Jobs sent and not finished, for [`quiesce`].
static IN_FLIGHT: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

fn in_flight() -> MutexGuard<'static, usize> {
    IN_FLIGHT.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits (up to `limit`) until no worker is reading. Called before `fork()`: a worker
/// in the middle of a read may hold one of the image's locks, which would stay locked
/// forever in the child.
pub fn quiesce(limit: std::time::Duration) {
    let busy = in_flight();
    let _ = IN_FLIGHT.1.wait_timeout_while(busy, limit, |n| *n > 0);
}

/// Sends `job` to `worker`, counted in flight until the worker is done with it.
fn send(worker: &Sender<Job>, job: Job) -> Result<(), Job> {
    *in_flight() += 1;
    worker.send(job).map_err(|e| {
        finished();
        e.0
    })
}

fn finished() {
    let mut n = in_flight();
    *n = n.saturating_sub(1);
    IN_FLIGHT.1.notify_all();
}

struct Pool {
    pid: u32,
    workers: Vec<Sender<Job>>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Parts are whole 64 KiB units (a multiple of every cluster size), so no compressed
/// cluster is inflated twice.
const UNIT: usize = 64 << 10;

fn spawn_worker() -> Option<Sender<Job>> {
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("qcow-reader".into())
        .spawn(move || {
            for job in rx {
                let Job {
                    disk,
                    offset,
                    mut buf,
                    len,
                    index,
                    done,
                } = job;
                let r = match buf.get_mut(..len) {
                    Some(part) => disk.read_at(offset, part),
                    None => Err(Error::io(
                        disk.path(),
                        std::io::Error::other("a part buffer too short"),
                    )),
                };
                // The handle is let go before the caller hears back, so a close()
                // right after the read closes the file.
                drop(disk);
                finished();
                let _ = done.send((index, buf, r));
            }
        })
        .ok()?;
    Some(tx)
}

/// How many workers the pool has: one per core, at most 4.
pub fn threads() -> usize {
    qcow_std::cores().min(4)
}

/// This process's workers, [`threads`] of them, made on first use (and anew in a
/// forked child). None while another thread holds the pool: that caller reads alone
/// rather than wait (or, in a child forked at that moment, deadlock).
fn workers() -> Vec<Sender<Job>> {
    let mut pool = match POOL.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return Vec::new(),
    };
    let pid = std::process::id();
    if pool.as_ref().is_none_or(|p| p.pid != pid) {
        let workers = (0..threads()).filter_map(|_| spawn_worker()).collect();
        *pool = Some(Pool { pid, workers });
    }
    pool.as_ref().map(|p| p.workers.clone()).unwrap_or_default()
}

/// A read handed to a worker before anyone asked for it ([`read_ahead`]).
pub struct Pending {
    pid: u32,
    replies: Receiver<Done>,
}

impl Pending {
    /// Waits for the read and copies its first `dst.len()` bytes into `dst`. False
    /// when the read failed, its worker is gone, or this is a forked child (whose
    /// parent's worker will never answer): the caller then reads for itself.
    pub fn wait(self, dst: &mut [u8]) -> bool {
        if self.pid != std::process::id() {
            return false;
        }
        let Ok((_, bytes, r)) = self.replies.recv() else {
            return false;
        };
        let copied = bytes
            .get(..dst.len())
            .map(|src| dst.copy_from_slice(src))
            .is_some();
        give_back(bytes);
        r.is_ok() && copied
    }
}

/// Starts reading `len` bytes at `offset` on the pool's worker `n` (modulo their
/// count); None when there is no worker to take it.
pub fn read_ahead(disk: &Disk, offset: u64, len: usize, n: usize) -> Option<Pending> {
    let workers = workers();
    let worker = workers.get(n.checked_rem(workers.len())?)?;
    let (done, replies) = channel::<Done>();
    let job = Job {
        disk: disk.clone(),
        offset,
        buf: spare(len),
        len,
        index: 0,
        done,
    };
    send(worker, job).ok()?;
    Some(Pending {
        pid: std::process::id(),
        replies,
    })
}

/// The most one part holds: a huge read goes window after window, so the spare
/// buffers kept stay small whatever a caller asks for.
const PART_MAX: usize = 8 << 20;

/// Reads `buf` at `offset` (inside the disk) on this thread and up to `helpers` pool
/// threads, each part into its own buffer then copied here.
pub fn read_split(disk: &Disk, offset: u64, buf: &mut [u8], helpers: usize) -> Result<(), Error> {
    let mut workers = workers();
    workers.truncate(helpers);
    if workers.is_empty() {
        return disk.read_at(offset, buf);
    }
    let window = PART_MAX.saturating_mul(workers.len().saturating_add(1));
    let mut at = offset;
    for w in buf.chunks_mut(window) {
        read_window(disk, at, w, &workers)?;
        at = at.saturating_add(w.len() as u64);
    }
    Ok(())
}

/// One window of [`read_split`]: a part here, one on each worker.
fn read_window(
    disk: &Disk,
    offset: u64,
    buf: &mut [u8],
    workers: &[Sender<Job>],
) -> Result<(), Error> {
    let part = buf
        .len()
        .div_ceil(workers.len().saturating_add(1))
        .next_multiple_of(UNIT);
    let (mine, rest) = buf.split_at_mut(part.min(buf.len()));
    let mut parts: Vec<&mut [u8]> = rest.chunks_mut(part).collect();
    let (done, replies) = channel::<Done>();
    let mut pending = 0usize;
    for (index, (chunk, worker)) in parts.iter_mut().zip(workers).enumerate() {
        let at = offset.saturating_add(part.saturating_mul(index.saturating_add(1)) as u64);
        let job = Job {
            disk: disk.clone(),
            offset: at,
            buf: spare(chunk.len()),
            len: chunk.len(),
            index,
            done: done.clone(),
        };
        match send(worker, job) {
            Ok(()) => pending = pending.saturating_add(1),
            // A worker that is gone: its part is read here.
            Err(_) => disk.read_at(at, chunk)?,
        }
    }
    drop(done);
    let first = disk.read_at(offset, mine);
    let mut result = first;
    for _ in 0..pending {
        let Ok((index, bytes, r)) = replies.recv() else {
            return Err(Error::io(
                disk.path(),
                std::io::Error::other("a reader thread failed"),
            ));
        };
        let src = parts.get(index).and_then(|p| bytes.get(..p.len()));
        match (r, parts.get_mut(index), src) {
            (Ok(()), Some(dst), Some(src)) => dst.copy_from_slice(src),
            (Ok(()), _, _) => {
                result = result.and(Err(Error::io(
                    disk.path(),
                    std::io::Error::other("a reader thread answered for no part"),
                )))
            }
            (Err(e), _, _) => result = result.and(Err(e)),
        }
        give_back(bytes);
    }
    result
}
