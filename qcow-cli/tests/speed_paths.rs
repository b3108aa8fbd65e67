//! The fast paths of `convert` (issue 9) give the same bytes as the simple ones:
//! compression and decompression on any number of threads, holes skipped in raw
//! sources, large sequential writes.

mod common;

use common::*;

/// 6 MiB of random data, text and zero runs (holes in the raw file, too).
fn input(d: &std::path::Path) -> std::path::PathBuf {
    let mut rng = Rng::new(9);
    let mut data = mixed(&mut rng, 6 << 20);
    data[(2 << 20)..(3 << 20)].fill(0);
    let p = d.join("in.raw");
    write(&p, &data);
    p
}

#[test]
fn compressed_output_is_the_same_on_any_number_of_threads() {
    let dir = tmp();
    let d = dir.path();
    let src = input(d);
    let mut outputs = Vec::new();
    for m in ["1", "2", "3", "8"] {
        let out = d.join(format!("c{m}.qcow"));
        qcow_ok(&[&"convert", &"-c", &"-m", &m, &"-O", &"qcow", &src, &out]);
        assert_qemu_identical(&out, &src, &[], &format!("convert -c -m {m}"));
        outputs.push(read(&out));
    }
    for (i, o) in outputs.iter().enumerate().skip(1) {
        assert!(
            o == &outputs[0],
            "convert -c output {i} differs from -m 1's"
        );
    }
}

#[test]
fn parallel_inflate_reads_as_qemu_reads() {
    let dir = tmp();
    let d = dir.path();
    let src = input(d);
    let comp = d.join("q.qcow");
    qemu_convert_compressed(&src, &comp);
    // Overwrite some compressed clusters partly, so plain and compressed interleave.
    qemu_io_qcow(
        &comp,
        &[
            "write -P 0x11 1000 3000".into(),
            "write -P 0x22 65536 512".into(),
        ],
    );
    let want = qemu_raw(&comp, &[], d);
    for m in ["1", "2", "5"] {
        let out = d.join(format!("out{m}.raw"));
        qcow_ok(&[&"convert", &"-m", &m, &"-O", &"raw", &comp, &out]);
        assert_bytes_eq(
            &read(&out),
            &want,
            &format!("convert -m {m} of a compressed image"),
        );
    }
}

#[test]
fn raw_holes_and_zeros_stay_holes() {
    let dir = tmp();
    let d = dir.path();
    // A sparse raw source: data at 1 MiB and at 7 MiB, holes elsewhere.
    let src = d.join("sparse.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    patch(&src, 1 << 20, &[0x5a; 10000]);
    patch(&src, 7 << 20, b"tail");
    let q = d.join("s.qcow");
    qcow_ok(&[&"convert", &"-O", &"qcow", &src, &q]);
    assert_qemu_identical(&q, &src, &[], "sparse raw to qcow");
    let map = parse_map(&qemu_img_ok(&[&"map", &"--output=json", &q]));
    let data: u64 = map.iter().filter(|e| e.data).map(|e| e.length).sum();
    assert!(
        data <= 5 * 4096,
        "only the written clusters are allocated ({data} bytes)"
    );
    let back = d.join("back.raw");
    qcow_ok(&[&"convert", &"-O", &"raw", &q, &back]);
    assert_eq!(read(&back), read(&src));
    assert!(
        allocated(&back) <= 64 << 10,
        "the raw output is sparse: {}",
        allocated(&back)
    );
}
