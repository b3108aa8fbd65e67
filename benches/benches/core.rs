//! Criterion benchmarks of the core's hot paths: L2 lookup, cluster inflate and
//! deflate, AES sector decryption, and a whole-image read over an in-memory device.
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use qcow_core::cluster::{inflate, Deflater};
use qcow_core::crypt::Cipher;
use qcow_core::io::MemIo;
use qcow_core::write::{CreateOptions, Writer};
use qcow_core::{Image, NoBacking};

const SIZE: u64 = 16 << 20;

#[path = "../../qcow-core/src/testutil/mixed.rs"]
mod data;

/// Clusters of text and of noise in turn.
fn mixed(len: usize, seed: u32) -> Vec<u8> {
    data::mixed(seed, len, 4096)
}

/// A 16 MiB image, every cluster allocated (every other one compressed when asked).
fn image(compressed: bool) -> MemIo {
    let mut w = Writer::create(MemIo::default(), &CreateOptions::new(SIZE), None).unwrap();
    let data = mixed(SIZE as usize, 7);
    let mut d = Deflater::default();
    let mut out = vec![0u8; 4096];
    for (i, c) in data.chunks(4096).enumerate() {
        match d.compress(c, &mut out) {
            Some(n) if compressed => w.push_compressed(i as u64, &out[..n]).unwrap(),
            _ => w.push_plain(i as u64, c).unwrap(),
        }
    }
    w.finish().unwrap()
}

fn benches(c: &mut Criterion) {
    let text = mixed(4096, 1);
    let mut d = Deflater::default();
    let mut out = vec![0u8; 4096];
    let n = d.compress(&text, &mut out).unwrap();
    let stream = out[..n].to_vec();

    let mut g = c.benchmark_group("cluster");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("deflate 4k", |b| {
        b.iter(|| d.compress(black_box(&text), &mut out))
    });
    let mut plain = vec![0u8; 4096];
    g.bench_function("inflate 4k", |b| {
        b.iter(|| inflate(black_box(&stream), &mut plain).unwrap())
    });
    let cipher = Cipher::from_secret(b"benchmark").unwrap();
    let mut sector = vec![0u8; 4096];
    g.bench_function("aes decrypt 4k", |b| {
        b.iter(|| cipher.decrypt(black_box(8), &mut sector))
    });
    g.finish();

    let mut img = Image::open(image(false), NoBacking::new(), vec![0u8; 8192]).unwrap();
    let mut x = 12345u64;
    c.bench_function("l2 lookup (random cluster)", |b| {
        b.iter(|| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            img.lookup(black_box((x >> 20) % SIZE)).unwrap()
        })
    });

    let mut g = c.benchmark_group("full read 16 MiB");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10);
    let mut buf = vec![0u8; SIZE as usize];
    for compressed in [false, true] {
        let mut img = Image::open(image(compressed), NoBacking::new(), vec![0u8; 8192]).unwrap();
        let name = if compressed { "compressed" } else { "plain" };
        g.bench_function(name, |b| b.iter(|| img.read_at(0, &mut buf).unwrap()));
    }
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
