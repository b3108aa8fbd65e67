//! The sequential writer of fresh images: every cluster pushed reads back, across many
//! L2 tables, plain and compressed, encrypted or not.
// Test code: a failed unwrap or index is a failed test; the values are small and known.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use qcow_core::cluster::Deflater;
use qcow_core::io::MemIo;
use qcow_core::write::{CreateOptions, Writer};
use qcow_core::{Image, NoBacking};

fn data(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| ((i * 31 + j as u64 / 7) % 251) as u8)
        .collect()
}

fn roundtrip(cluster_bits: u8, l2_bits: u8, secret: Option<&[u8]>) {
    let cs = 1usize << cluster_bits;
    let clusters = (5u64 << l2_bits) + 3; // several L2 tables and a partial one
    let size = (clusters - 1) * cs as u64 + 512; // the last cluster is partial
    let opts = CreateOptions::new(size)
        .cluster_bits(Some(cluster_bits))
        .l2_bits(Some(l2_bits))
        .encrypted(secret.is_some());
    let mut w = Writer::create(MemIo::default(), &opts, secret).unwrap();
    let mut d = Deflater::default();
    let mut model = vec![0u8; size as usize];
    let mut out = vec![0u8; cs];
    for c in 0..clusters {
        if c % 5 == 4 {
            continue; // a hole
        }
        let start = c as usize * cs;
        let len = cs.min(size as usize - start);
        let buf = data(c, len);
        model[start..start + len].copy_from_slice(&buf);
        let mut padded = buf.clone();
        padded.resize(cs, 0);
        match d.compress(&padded, &mut out) {
            Some(n) if c % 2 == 0 && secret.is_none() => w.push_compressed(c, &out[..n]).unwrap(),
            _ => w.push_plain(c, &buf).unwrap(),
        }
    }
    let io = w.finish().unwrap();
    let mut img = Image::open(io, NoBacking::new(), vec![0u8; 2 * cs]).unwrap();
    if let Some(s) = secret {
        img.set_secret(s).unwrap();
    }
    let mut got = vec![0u8; size as usize];
    img.read_at(0, &mut got).unwrap();
    assert!(
        got == model,
        "cluster_bits {cluster_bits} l2_bits {l2_bits}"
    );
}

#[test]
fn many_tables() {
    roundtrip(9, 6, None);
    roundtrip(12, 6, None);
    roundtrip(12, 9, None);
    roundtrip(16, 6, None);
    roundtrip(12, 6, Some(b"secret"));
}
