//! A qcow2 image is refused by name (the contract: only qcow version 1 is qcow, and
//! another format's signature is refused), by the verbs that would modify it too,
//! unless `-f raw` says so. Every format and verb: `formats.rs`.

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
    // Reading it is refused too, naming it; -f raw reads its bytes.
    let o = qcow(&[&"info", &img]);
    let line = assert_fails(&o, 1, "info of a qcow2 file");
    assert!(line.contains("this is a qcow2 image (version 3)"), "{line}");
    let o = qcow(&[&"info", &"-f", &"raw", &img]);
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

/// A piped write too long for the image is refused whole: nothing is written.
#[test]
fn piped_write_past_the_end_changes_nothing() {
    let dir = tmp();
    let d = dir.path();
    let img = d.join("p.qcow");
    qcow_ok(&[&"create", &img, &"6M"]);
    qcow_ok_piped(&img, &[0x11u8; 4096], "0");
    let before = read(&img);
    for len in [(6 << 20) + 1, 9 << 20] {
        let o = run_piped(&img, &vec![0x5au8; len], "0");
        assert_fails(&o, 1, &format!("piped write of {len} bytes"));
        assert_eq!(
            read(&img),
            before,
            "a refused piped write of {len} bytes changes nothing"
        );
    }
    // One that fits, longer than the first chunk: spooled, then written.
    let mut rng = Rng::new(8);
    let data = rng.bytes(5_000_000);
    qcow_ok_piped(&img, &data, "1000");
    assert_eq!(qcow_ok(&[&"read", &img, &"1000", &"5000000"]), data);
}

fn run_piped(img: &std::path::Path, data: &[u8], offset: &str) -> Out {
    use std::io::Write;
    let mut child = std::process::Command::new(qcow_bin())
        .args([
            std::ffi::OsStr::new("write"),
            img.as_os_str(),
            std::ffi::OsStr::new(offset),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn qcow_ok_piped(img: &std::path::Path, data: &[u8], offset: &str) {
    let o = run_piped(img, data, offset);
    assert_eq!(o.code, 0, "piped write: {}", o.stderr);
}
