//! `qcow info` (human) prints the lines `qemu-img info` prints before its child-node
//! section, word for word, wherever it is run from.

mod common;

use common::*;

fn qemu_lines(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|l| !l.starts_with("Child node"))
        .map(String::from)
        .collect()
}

#[test]
fn human_info_matches_qemu_img() {
    let dir = tmp();
    let d = dir.path();
    let base = d.join("base.qcow");
    qemu_img_ok(&[&"create", &"-f", &"qcow", &base, &"700416"]);
    qemu_io_qcow(&base, &["write -P 1 0 64k".into()]);
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let over = sub.join("over.qcow");
    qemu_img_ok(&[
        &"create",
        &"-f",
        &"qcow",
        &"-b",
        &"../base.qcow",
        &"-F",
        &"qcow",
        &over,
    ]);
    let raw = d.join("odd.raw");
    write(&raw, &[7u8; 1000]);
    // A relative name, run from the overlay's parent directory.
    let rel = std::path::Path::new("sub/over.qcow");
    let want = qemu_lines(&String::from_utf8_lossy(&run_in(d, "qemu-img", rel)));
    let got = String::from_utf8_lossy(&run_in(d, qcow_bin(), rel)).to_string();
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        want,
        "info of sub/over.qcow"
    );
    assert!(got.contains("(actual path: sub/../base.qcow)"), "{got}");
    for cwd in [d, &sub, std::path::Path::new("/")] {
        for img in [&base, &over, &raw] {
            let want = qemu_lines(&String::from_utf8_lossy(&run_in(cwd, "qemu-img", img)));
            let got = String::from_utf8_lossy(&run_in(cwd, qcow_bin(), img)).to_string();
            let got: Vec<String> = got.lines().map(String::from).collect();
            assert_eq!(
                got,
                want,
                "info of {} from {}",
                img.display(),
                cwd.display()
            );
        }
    }
}

fn run_in(cwd: &std::path::Path, prog: &str, img: &std::path::Path) -> Vec<u8> {
    let o = std::process::Command::new(prog)
        .current_dir(cwd)
        .arg("info")
        .arg(img)
        .output()
        .unwrap_or_else(|e| panic!("{prog} not found ({e}): install qemu-utils"));
    assert!(
        o.status.success(),
        "{prog} info: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}
