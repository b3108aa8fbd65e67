//! Reads a whole image through one shared `Disk` in 1 MiB requests spread over THREADS
//! threads, and prints a checksum: what `cargo xtask bench` times to show how reads
//! scale with threads.
//!
//! `cargo run --release -p qcow-std --example read_all -- THREADS IMAGE`

use std::sync::atomic::{AtomicU64, Ordering};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: read_all THREADS IMAGE";
    let threads: u64 = args.next().ok_or(usage)?.parse()?;
    let path = args.next().ok_or(usage)?;
    let disk = qcow_std::Disk::open(path)?;
    let size = disk.size();
    const CHUNK: u64 = 1 << 20;
    let next = AtomicU64::new(0);
    let sums = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let (disk, next) = (&disk, &next);
                s.spawn(move || -> Result<u64, qcow_std::Error> {
                    let mut buf = vec![0u8; CHUNK as usize];
                    let mut sum = 0u64;
                    loop {
                        let at = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if at >= size {
                            return Ok(sum);
                        }
                        let n = (size - at).min(CHUNK) as usize;
                        disk.read_at(at, &mut buf[..n])?;
                        sum = buf[..n]
                            .iter()
                            .step_by(4096)
                            .fold(sum, |a, &b| a + u64::from(b));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| "a reader panicked")?
                    .map_err(Into::into)
            })
            .collect::<Result<Vec<u64>, Box<dyn std::error::Error>>>()
    })?;
    println!("{} bytes, checksum {}", size, sums.iter().sum::<u64>());
    Ok(())
}
