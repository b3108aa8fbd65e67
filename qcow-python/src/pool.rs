//! Reader threads that outlive a read. A large read is split between the calling
//! thread and these: threads spawned for each read cost about 0.2 ms of CPU apiece
//! (new stacks, malloc arenas, inflate state), as much as inflating 40 clusters, and
//! ate the gain of a second core on 1 MiB reads. The pool belongs to one process: a
//! forked child (Python's `multiprocessing`) does not have its parent's threads, so it
//! makes its own on first use. Besides splitting large reads, the workers read ahead
//! of a sequence of smaller ones ([`read_ahead`], used by `crate::ahead`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};

use qcow_std::{Disk, Error};

/// What a worker sends back: the part's index, its bytes, how the read went.
type Done = (usize, Vec<u8>, Result<(), Error>);

/// One part of a read: `len` bytes at `offset`, into a buffer the worker takes (so a
/// job waiting in a queue holds no memory); skipped once `cancel` is set.
struct Job {
    disk: Disk,
    offset: u64,
    len: usize,
    index: usize,
    done: Sender<Done>,
    cancel: Option<Arc<AtomicBool>>,
    gate: Arc<Gate>,
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

/// A pool's count of jobs sent and not finished, and whether a fork is coming (then
/// no job is sent: the caller reads for itself). Each process's pool has its own, so
/// a forked child never sees its parent's count or a lock held at the fork.
#[derive(Default)]
struct Gate {
    state: Mutex<(usize, bool)>,
    idle: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
    /// Counts `job` in and sends it to `worker`; refused while a fork is coming.
    fn send(&self, worker: &Sender<Job>, job: Job) -> Result<(), Job> {
        {
            let mut st = self.lock();
            if st.1 {
                return Err(job);
            }
            st.0 += 1;
        }
        worker.send(job).map_err(|e| {
            self.finished();
            e.0
        })
    }
    fn finished(&self) {
        let mut st = self.lock();
        st.0 = st.0.saturating_sub(1);
        self.idle.notify_all();
    }
}

/// This process's pool's gate, when it has a pool.
fn gate() -> Option<Arc<Gate>> {
    let pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    pool.as_ref()
        .filter(|p| p.pid == pid)
        .map(|p| p.gate.clone())
}

/// Before `fork()`: stops new jobs and waits (up to `limit`) until no worker is
/// reading. A worker in the middle of a read may hold one of the image's locks, which
/// would stay locked forever in the child.
pub fn quiesce(limit: std::time::Duration) {
    if let Some(g) = gate() {
        let mut st = g.lock();
        st.1 = true;
        let _ = g.idle.wait_timeout_while(st, limit, |st| st.0 > 0);
    }
}

/// After `fork()`, in the parent: jobs may be sent again. (The child makes a new pool.)
pub fn resume() {
    if let Some(g) = gate() {
        g.lock().1 = false;
    }
}

struct Pool {
    pid: u32,
    workers: Vec<Sender<Job>>,
    gate: Arc<Gate>,
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
                    len,
                    index,
                    done,
                    cancel,
                    gate,
                } = job;
                let (buf, r) = if cancel.is_some_and(|c| c.load(Ordering::Acquire)) {
                    let gone = std::io::Error::other("a read ahead no longer wanted");
                    (Vec::new(), Err(Error::io(disk.path(), gone)))
                } else {
                    let mut buf = spare(len);
                    let r = match buf.get_mut(..len) {
                        Some(part) => disk.read_at(offset, part),
                        None => Ok(()),
                    };
                    (buf, r)
                };
                // The handle is let go before the caller hears back, so a close()
                // right after the read closes the file.
                drop(disk);
                // Counted out only after the reply: a fork never catches a worker
                // inside a channel's lock.
                let _ = done.send((index, buf, r));
                gate.finished();
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
/// forked child), with their gate. None while another thread holds the pool: that
/// caller reads alone rather than wait (or, in a child forked at that moment,
/// deadlock).
fn workers() -> Option<(Vec<Sender<Job>>, Arc<Gate>)> {
    let mut pool = match POOL.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    let pid = std::process::id();
    if pool.as_ref().is_none_or(|p| p.pid != pid) {
        let workers = (0..threads()).filter_map(|_| spawn_worker()).collect();
        let gate = Arc::default();
        // A parent's pool, in a forked child: its channels may be locked by threads
        // that do not exist here, so it is let go of without dropping (freeing) it.
        std::mem::forget(pool.replace(Pool { pid, workers, gate }));
    }
    pool.as_ref().map(|p| (p.workers.clone(), p.gate.clone()))
}

/// A read handed to a worker before anyone asked for it ([`read_ahead`]).
pub struct Pending {
    pid: u32,
    /// Always `Some` until dropped (see `Drop`).
    replies: Option<Receiver<Done>>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Pending {
    /// In a forked child the channel may be locked by the parent's worker, which does
    /// not exist here: it is let go of without dropping it.
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            std::mem::forget(self.replies.take());
        }
    }
}

impl Pending {
    /// Tells the worker the part is no longer wanted: unless it has begun, it is not read.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// Whether the worker is done with it (its buffer then goes back for reuse); true
    /// in a forked child, where the parent's worker never answers.
    pub fn is_done(&self) -> bool {
        if self.pid != std::process::id() {
            return true;
        }
        let Some(replies) = self.replies.as_ref() else {
            return true;
        };
        match replies.try_recv() {
            Ok((_, bytes, _)) => {
                give_back(bytes);
                true
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => false,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => true,
        }
    }

    /// Waits for the read and copies its first `dst.len()` bytes into `dst`. False
    /// when the read failed, its worker is gone, or this is a forked child (whose
    /// parent's worker will never answer): the caller then reads for itself.
    pub fn wait(self, dst: &mut [u8]) -> bool {
        if self.pid != std::process::id() {
            return false;
        }
        let Some(Ok((_, bytes, r))) = self.replies.as_ref().map(Receiver::recv) else {
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
    let (workers, gate) = workers()?;
    let worker = workers.get(n.checked_rem(workers.len())?)?;
    let (done, replies) = channel::<Done>();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        disk: disk.clone(),
        offset,
        len,
        index: 0,
        done,
        cancel: Some(cancel.clone()),
        gate: gate.clone(),
    };
    gate.send(worker, job).ok()?;
    Some(Pending {
        pid: std::process::id(),
        replies: Some(replies),
        cancel,
    })
}

/// The most one part holds: a huge read goes window after window, so the spare
/// buffers kept stay small whatever a caller asks for.
const PART_MAX: usize = 8 << 20;

/// Reads `buf` at `offset` (inside the disk) on this thread and up to `helpers` pool
/// threads, each part into its own buffer then copied here.
pub fn read_split(disk: &Disk, offset: u64, buf: &mut [u8], helpers: usize) -> Result<(), Error> {
    let Some((mut workers, gate)) = workers() else {
        return disk.read_at(offset, buf);
    };
    workers.truncate(helpers);
    if workers.is_empty() {
        return disk.read_at(offset, buf);
    }
    let window = PART_MAX.saturating_mul(workers.len().saturating_add(1));
    let mut at = offset;
    for w in buf.chunks_mut(window) {
        read_window(disk, at, w, (&workers, &gate))?;
        at = at.saturating_add(w.len() as u64);
    }
    Ok(())
}

/// One window of [`read_split`]: a part here, one on each worker.
fn read_window(
    disk: &Disk,
    offset: u64,
    buf: &mut [u8],
    (workers, gate): (&[Sender<Job>], &Arc<Gate>),
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
            len: chunk.len(),
            index,
            done: done.clone(),
            cancel: None,
            gate: gate.clone(),
        };
        match gate.send(worker, job) {
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
