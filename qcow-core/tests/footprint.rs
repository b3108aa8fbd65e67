//! What the read path costs in memory, as qcow-core/README.md states it for firmware
//! authors: run with `--nocapture` to see the figures.

// A test panics to fail.
#![allow(clippy::unwrap_used)]

use core::mem::size_of;

use embedded_io::ErrorKind;
use qcow_core::image::scratch_len;
use qcow_core::io::SliceIo;
use qcow_core::{Geometry, Image, NoBacking};

/// An image over a borrowed device with a borrowed scratch buffer: what a firmware
/// holds. (With the `alloc` feature the struct also has room for the compressor
/// handle of the write path: one pointer more.)
type FirmwareImage<'a> = Image<SliceIo<'a>, NoBacking<ErrorKind>, &'a mut [u8]>;

#[test]
fn image_struct_size() {
    let image = size_of::<FirmwareImage<'_>>();
    println!("size_of::<Image<SliceIo, NoBacking, &mut [u8]>>() = {image} bytes");
    // README.md states 9.1 KiB, of which the table cache is 8.3 KiB: a firmware
    // budgets with these, so growing them is a change to make on purpose (and to
    // write down there, with `cargo xtask firmware-footprint`).
    assert!(image <= 9 * 1024 + 256, "Image grew to {image} bytes");
}

#[test]
fn scratch_is_two_clusters() {
    for (cluster_bits, want) in [(9u8, 1024usize), (12, 8 * 1024), (16, 128 * 1024)] {
        let g = Geometry::new::<()>(cluster_bits, 9, 1 << 20).unwrap();
        println!(
            "cluster_bits {cluster_bits}: scratch_len = {}",
            scratch_len(&g)
        );
        assert_eq!(scratch_len(&g), want);
    }
}
