//! `commit` into a backing file smaller than the overlay grows it first, as
//! `qemu-img commit` does, for raw and qcow backing files.

mod common;

use common::*;

#[test]
fn commit_grows_a_smaller_backing_file() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(5);
    for fmt in ["raw", "qcow"] {
        let raw = d.join(format!("base-src-{fmt}.raw"));
        write(&raw, &rng.bytes(100_000));
        let base = d.join(format!("base.{fmt}"));
        if fmt == "raw" {
            std::fs::copy(&raw, &base).unwrap();
        } else {
            qcow_ok(&[&"convert", &"-O", &"qcow", &raw, &base]);
        }
        let over = d.join(format!("over-{fmt}.qcow"));
        qcow_ok(&[
            &"create",
            &"-b",
            &base.file_name().unwrap(),
            &"-F",
            &fmt,
            &over,
            &"2M",
        ]);
        let data = rng.bytes(70_000);
        let stdin = d.join("data");
        write(&stdin, &data);
        let o = qcow_stdin_file(&[&"write", &over, &"1990000"], &stdin);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let view = qemu_raw(&over, &[], d);
        qcow_ok(&[&"commit", &over]);
        let grown = qemu_raw(&base, &[], d);
        assert_eq!(
            grown.len(),
            2 << 20,
            "{fmt} backing file grown to the overlay's size"
        );
        assert_bytes_eq(&grown, &view, &format!("{fmt} backing file after commit"));
        if fmt == "qcow" {
            let o = qcow(&[&"check", &base]);
            assert_eq!(o.code, 0, "check of the grown qcow base: {}", o.text());
        }
    }
}
