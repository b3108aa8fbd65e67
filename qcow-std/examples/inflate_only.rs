//! The inflate-only floor: reads every compressed stream of an image into memory, then
//! inflates them all on THREADS threads and prints the seconds that took (nothing
//! else: no file reads, no table lookups, no output). `cargo xtask bench` compares
//! whole-image reads with it.
//!
//! `cargo run --release -p qcow-std --example inflate_only -- THREADS IMAGE`

use std::time::Instant;

use qcow_core::cluster::Inflater;
use qcow_core::StatusKind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: inflate_only THREADS IMAGE";
    let threads: usize = args.next().ok_or(usage)?.parse()?;
    let path = args.next().ok_or(usage)?;
    let disk = qcow_std::Disk::open(&path)?;
    let cluster = disk.info().cluster_size.ok_or("not a qcow image")? as usize;
    // The host offset of every compressed cluster; a stream ends where the next one
    // begins (or a cluster later): trailing bytes do not disturb inflation.
    let mut hosts = Vec::new();
    let mut at = 0u64;
    while at < disk.size() {
        let s = disk.block_status(at, disk.size() - at)?;
        if let StatusKind::Compressed { host } = s.kind {
            hosts.push(host);
        }
        at += s.len;
    }
    let file = std::fs::read(&path)?;
    let mut sorted = hosts.clone();
    sorted.sort_unstable();
    let streams: Vec<&[u8]> = hosts
        .iter()
        .map(|&h| {
            let next = sorted.partition_point(|&x| x <= h);
            let end = sorted
                .get(next)
                .copied()
                .unwrap_or(u64::MAX)
                .min(h + cluster as u64)
                .min(file.len() as u64);
            &file[h as usize..end as usize]
        })
        .collect();
    let start = Instant::now();
    let per = streams.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for part in streams.chunks(per) {
            s.spawn(move || {
                let mut inf = Inflater::new();
                let mut out = vec![0u8; cluster];
                for st in part {
                    inf.inflate(st, &mut out).expect("a valid stream");
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.6} {} clusters", streams.len());
    Ok(())
}
