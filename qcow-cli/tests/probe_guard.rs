//! A qcow2 image probes as raw (the contract: only qcow version 1 is qcow), but the
//! verbs that modify a file refuse to treat it as raw, unless `-f raw` says so.

mod common;

use common::*;

#[test]
fn qcow2_is_not_modified_as_raw() {
    let dir = tmp();
    let d = dir.path();
    let img = d.join("disk.qcow2");
    qemu_img_ok(&[&"create", &"-f", &"qcow2", &img, &"1M"]);
    let before = read(&img);
    let o = qcow(&[&"resize", &"--shrink", &img, &"512"]);
    assert_fails(&o, 1, "resize of a qcow2 file");
    let data = d.join("data");
    write(&data, b"hello");
    let o = qcow_stdin_file(&[&"write", &img, &"0"], &data);
    assert_fails(&o, 1, "write into a qcow2 file");
    assert!(o.stderr.contains("version 3"), "{}", o.stderr);
    assert_eq!(read(&img), before, "the qcow2 file is unchanged");
    // Reading it is fine: it is raw bytes to us.
    let o = qcow(&[&"info", &img]);
    assert_eq!(o.code, 0);
    assert!(o.text().contains("file format: raw"), "{}", o.text());
    // -f raw insists.
    let o = qcow_stdin_file(&[&"write", &"-f", &"raw", &img, &"100"], &data);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(&read(&img)[100..105], b"hello");
}

/// Usage errors are one `qcow: ` line too; compare's are exit 2 (its error code).
#[test]
fn usage_errors_are_one_line() {
    for (args, code) in [
        (vec!["info"], 1),
        (vec!["bogus"], 1),
        (vec!["convert", "-O", "qcow2", "a", "b"], 1),
        (vec!["check", "-r", "everything", "x"], 1),
        (vec!["compare", "a"], 2),
        (vec![], 1),
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let o = qcow(&a);
        assert_fails(&o, code, &format!("qcow {args:?}"));
    }
}
