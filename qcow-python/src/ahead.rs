//! Sequential read-ahead for one handle. Python reads an image in modest chunks (1 MiB
//! `read` and `read_buffer` calls): too small to split between threads with profit,
//! but read in sequence. When a read starts where the last one ended, the next chunks
//! of the same length are handed to the pool's workers (one per core), so the cores
//! inflate and decrypt them while Python handles the current one; a read that finds
//! its chunk ahead only waits for it and copies it.
//!
//! A part read ahead is used only for the very read it was made for (same offset and
//! length), only in the process that made it, and only when no write began since it
//! was started: a write bumps a counter before and after, and parts stamped with
//! another count (or made while a write ran) are dropped. Anything else reads as
//! without read-ahead, on the caller's thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use qcow_std::{Disk, Error};

use crate::pool::{self, Pending};

/// Reads of these lengths read ahead (longer ones are split between threads).
const LENGTHS: std::ops::RangeInclusive<usize> = (64 << 10)..=(2 << 20);

/// One part in flight: `len` bytes at `offset`, started at write count `stamp`.
struct Slot {
    offset: u64,
    len: usize,
    stamp: u64,
    pending: Pending,
}

#[derive(Default)]
struct State {
    /// Where the last read ended.
    last_end: Option<u64>,
    /// The parts in flight, in disk order, each starting where the one before ends.
    queue: VecDeque<Slot>,
    /// Parts no longer wanted (cancelled) that a worker may still be reading: `close`
    /// waits for them, and while as many as there are workers linger no more start.
    stale: Vec<Pending>,
}

impl State {
    /// Cancels every queued part, keeping them until their workers are done.
    fn drop_queue(&mut self) {
        for s in self.queue.drain(..) {
            s.pending.cancel();
            self.stale.push(s.pending);
        }
    }
}

/// A handle's read-ahead state (see the module's docs).
#[derive(Default)]
pub struct ReadAhead {
    state: Mutex<State>,
    /// Even while no write runs; bumped before and after each write.
    writes: AtomicU64,
}

impl ReadAhead {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `buf` at `offset` (inside the disk): from a part read ahead when one was
    /// made for this read, else on this thread; reads in sequence start the next ones.
    pub fn read(&self, disk: &Disk, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        if !LENGTHS.contains(&buf.len()) || pool::threads() < 2 {
            return disk.read_at(offset, buf);
        }
        if let Some(s) = self.plan(disk, offset, buf.len()) {
            if s.stamp == self.writes.load(Ordering::Acquire) {
                if s.pending.wait(buf) {
                    return Ok(());
                }
            } else {
                // Made before a write: not used, but waited for (it holds the image).
                s.pending.cancel();
                s.pending.wait(&mut []);
            }
        }
        disk.read_at(offset, buf)
    }

    /// Takes the part made for this read, if any (dropping the queue when the read
    /// goes elsewhere), and tops the queue up when reads go in sequence.
    fn plan(&self, disk: &Disk, offset: u64, len: usize) -> Option<Slot> {
        let mut st = self.lock();
        st.stale.retain(|p| !p.is_done());
        let hit = match st.queue.front() {
            Some(s) if s.offset == offset && s.len == len => st.queue.pop_front(),
            _ => {
                st.drop_queue();
                None
            }
        };
        let end = offset.checked_add(len as u64);
        if hit.is_some() || st.last_end == Some(offset) {
            if let Some(end) = end {
                self.top_up(&mut st, disk, end, len);
            }
        }
        st.last_end = end;
        hit
    }

    /// Starts reads of `len` bytes each from where the queue (or the current read,
    /// ending at `next`) ends, until one per worker is in flight or the disk ends.
    fn top_up(&self, st: &mut State, disk: &Disk, mut next: u64, len: usize) {
        let stamp = self.writes.load(Ordering::Acquire);
        if stamp % 2 == 1 || st.stale.len() >= pool::threads() {
            return; // a write is running, or the workers are busy with unwanted parts
        }
        if let Some(last) = st.queue.back() {
            next = last.offset.saturating_add(last.len as u64);
        }
        let size = disk.size();
        let chunk = len as u64;
        while st.queue.len() < pool::threads() && next < size {
            let n = chunk.min(size - next);
            let nth = usize::try_from(next / chunk).unwrap_or(0);
            let Some(pending) = pool::read_ahead(disk, next, n as usize, nth) else {
                return;
            };
            st.queue.push_back(Slot {
                offset: next,
                len: n as usize,
                stamp,
                pending,
            });
            next += n;
        }
    }

    /// Runs the write `f`: parts read ahead before or during it are not used after it.
    pub fn writing<R>(&self, f: impl FnOnce() -> R) -> R {
        self.writes.fetch_add(1, Ordering::AcqRel);
        let r = f();
        self.writes.fetch_add(1, Ordering::AcqRel);
        self.lock().drop_queue();
        r
    }

    /// Cancels the parts in flight and waits for those a worker has begun (each holds
    /// the image open).
    pub fn clear(&self) {
        let stale = {
            let mut st = self.lock();
            st.drop_queue();
            std::mem::take(&mut st.stale)
        };
        for p in stale {
            p.wait(&mut []);
        }
    }
}
