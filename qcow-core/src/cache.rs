//! A fixed-capacity cache of table entries (L1 and L2), in 64-entry chunks.
//!
//! Chunks are 512 bytes of a table, read in one go; the cache needs no allocator and
//! holds at most [`CACHE_CHUNKS`] of them (about 8 KiB).

use crate::io::BlockIo;

/// Entries per cached chunk (512 bytes).
pub const CHUNK_ENTRIES: usize = 64;
/// Chunks the cache holds.
pub const CACHE_CHUNKS: usize = 16;

#[derive(Debug, Clone)]
struct Chunk {
    base: u64,
    entries: [u64; CHUNK_ENTRIES],
    stamp: u32,
}

/// Table entries recently read, keyed by the host offset of their chunk.
#[derive(Debug, Default)]
pub struct TableCache {
    chunks: heapless::Vec<Chunk, CACHE_CHUNKS>,
    clock: u32,
}

fn chunk_of(table: u64, index: u64) -> Option<(u64, usize, u64)> {
    let chunk = index.checked_div(CHUNK_ENTRIES as u64)?;
    let first = chunk.checked_mul(CHUNK_ENTRIES as u64)?;
    let base = table.checked_add(first.checked_mul(8)?)?;
    let slot = usize::try_from(index.checked_sub(first)?).ok()?;
    Some((base, slot, first))
}

impl TableCache {
    /// An empty cache.
    pub const fn new() -> Self {
        TableCache {
            chunks: heapless::Vec::new(),
            clock: 0,
        }
    }

    /// Entry `index` of the table of `table_entries` entries at host offset `table`.
    /// The caller has checked that the whole table lies inside the device.
    pub fn get<B: BlockIo>(
        &mut self,
        io: &mut B,
        table: u64,
        table_entries: u64,
        index: u64,
    ) -> Result<u64, B::Error> {
        let Some((base, slot, first)) = chunk_of(table, index) else {
            return Ok(0);
        };
        self.clock = self.clock.wrapping_add(1);
        let clock = self.clock;
        if let Some(c) = self.chunks.iter_mut().find(|c| c.base == base) {
            c.stamp = clock;
            return Ok(c.entries.get(slot).copied().unwrap_or(0));
        }
        let n = table_entries
            .saturating_sub(first)
            .min(CHUNK_ENTRIES as u64);
        let mut raw = [0u8; CHUNK_ENTRIES * 8];
        // n ≤ 64, so n * 8 ≤ 512.
        let len = usize::try_from(n).unwrap_or(0).saturating_mul(8);
        if let Some(dst) = raw.get_mut(..len) {
            io.read_at(base, dst)?;
        }
        let mut entries = [0u64; CHUNK_ENTRIES];
        for (e, b) in entries.iter_mut().zip(raw.chunks_exact(8)) {
            let mut v = [0u8; 8];
            v.copy_from_slice(b);
            *e = u64::from_be_bytes(v);
        }
        let value = entries.get(slot).copied().unwrap_or(0);
        let chunk = Chunk {
            base,
            entries,
            stamp: clock,
        };
        if let Err(chunk) = self.chunks.push(chunk) {
            if let Some(victim) = self
                .chunks
                .iter_mut()
                .min_by_key(|c| clock.wrapping_sub(c.stamp).wrapping_neg())
            {
                *victim = chunk;
            }
        }
        Ok(value)
    }

    /// Records that entry `index` of the table at `table` now holds `value`.
    #[cfg(feature = "alloc")]
    pub fn update(&mut self, table: u64, index: u64, value: u64) {
        if let Some((base, slot, _)) = chunk_of(table, index) {
            for c in self.chunks.iter_mut().filter(|c| c.base == base) {
                if let Some(e) = c.entries.get_mut(slot) {
                    *e = value;
                }
            }
        }
    }

    /// Forgets everything (after metadata moved).
    #[cfg(feature = "alloc")]
    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}
