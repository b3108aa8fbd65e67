//! Reading a long range in order on several threads: [`Disk::read_in_order`].

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use crate::{Disk, Error};

/// Bytes each thread reads at a time.
const CHUNK: u64 = 4 << 20;

/// The most threads one call uses, bounding its memory (about 3 chunks each).
const MAX_THREADS: usize = 4;

/// What a reader thread hands over: a chunk's bytes, or why it stopped.
type Part = Result<Vec<u8>, Error>;

impl Disk {
    /// Reads `len` bytes from `offset` and hands them to `sink` in order, 4 MiB at a
    /// time, on this thread. `threads` threads (0: every core; at most 4) read the chunks in turn,
    /// each into buffers of its own, ahead of `sink`: large reads of compressed or
    /// encrypted data keep every core busy, and threads are made once per call, not
    /// per chunk. The first error, of a read or of `sink`, ends it.
    pub fn read_in_order<E: From<Error>>(
        &self,
        offset: u64,
        len: u64,
        threads: usize,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.check_range(offset, len)?;
        // Each thread keeps up to three chunks (12 MiB): at most 4 of them.
        let threads = match threads {
            0 => crate::cores(),
            n => n,
        }
        .min(MAX_THREADS);
        let chunks = len.div_ceil(CHUNK);
        if threads <= 1 || chunks <= 1 {
            let mut buf = vec![0u8; len.min(CHUNK) as usize];
            for k in 0..chunks {
                let n = chunk_len(len, k);
                let part = &mut buf[..n];
                self.read_at(offset + k * CHUNK, part)?;
                sink(part)?;
            }
            return Ok(());
        }
        let threads = threads.min(usize::try_from(chunks).unwrap_or(usize::MAX));
        std::thread::scope(|s| {
            let lanes: Vec<(Receiver<Part>, Sender<Vec<u8>>)> = (0..threads)
                .map(|i| {
                    let (parts, lane) = sync_channel::<Part>(1);
                    let (spare, spares) = channel::<Vec<u8>>();
                    let step = threads as u64;
                    s.spawn(move || self.read_lane(offset, len, (i as u64, step), &parts, &spares));
                    (lane, spare)
                })
                .collect();
            for k in 0..chunks {
                let (lane, spare) = &lanes[(k % threads as u64) as usize];
                let buf = lane.recv().map_err(|_| {
                    Error::io(
                        self.path(),
                        std::io::Error::other("a reader thread stopped"),
                    )
                })??;
                sink(&buf)?;
                let _ = spare.send(buf);
            }
            Ok(())
        })
    }

    /// One reader of [`Disk::read_in_order`]: chunks `first`, `first + step`, …, each
    /// sent to `parts` (in a buffer from `spares` when one came back); stops at the end,
    /// at an error (sent), or when nobody listens any more.
    fn read_lane(
        &self,
        offset: u64,
        len: u64,
        (first, step): (u64, u64),
        parts: &SyncSender<Part>,
        spares: &Receiver<Vec<u8>>,
    ) {
        let mut k = first;
        while k < len.div_ceil(CHUNK) {
            let n = chunk_len(len, k);
            let mut buf = spares.try_recv().unwrap_or_default();
            buf.resize(n, 0);
            let part = self.read_at(offset + k * CHUNK, &mut buf).map(|()| buf);
            let failed = part.is_err();
            if parts.send(part).is_err() || failed {
                return;
            }
            k += step;
        }
    }
}

/// The length of chunk `k` of a `len`-byte read.
fn chunk_len(len: u64, k: u64) -> usize {
    (len - k * CHUNK).min(CHUNK) as usize
}
