//! Issue 18, through the `qcow` binary and checked with QEMU: `check -r all` on the
//! image the `check` fuzz target found (a backing name inside the L1 table's padding,
//! a dozen bad entries, healthy clusters) used to move every extent onto one offset
//! and cut the file below its L2 table. Now it lists each action once, ends clean, and
//! QEMU reads every cluster it read before the same; `-r leaks` keeps them too; and
//! the list of actions is bounded.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The reproducer, kept as a regression of the `check` fuzz target.
fn repro() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/check/crash-cbce9d61ebc3a027f6c713b16b4eb9c06a6ee581")
}

/// 512-byte clusters, one 4096-entry L2 table at 1024.
const CS: u64 = 512;
const L2: u64 = 1024;
/// The two data entries QEMU refuses to read (not 512-byte aligned): L2 index 790 at
/// host 105 (in the header area) and L2 index 1618 at host 15616 (inside the table).
const UNREADABLE: [(u64, u64); 2] = [(790, 105), (1618, 15616)];

fn guest(j: u64) -> u64 {
    j * CS
}

/// What QEMU reads of every healthy cluster of `img`: `qemu-img convert` of a copy
/// with the entries QEMU refuses zeroed (zeroing an entry changes no other cluster).
fn qemu_healthy(img: &Path, d: &Path) -> Vec<u8> {
    let probe = d.join(format!("probe-{}.qcow", unique()));
    std::fs::copy(img, &probe).expect("copy");
    for (j, _) in UNREADABLE {
        patch(&probe, L2 + 8 * j, &[0; 8]);
    }
    qemu_raw(&probe, &[&"-f", &"qcow"], d)
}

/// Every `Repaired:` line once.
#[track_caller]
fn assert_listed_once(text: &str) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Repaired:"))
        .collect();
    for (i, l) in lines.iter().enumerate() {
        assert!(!lines[..i].contains(l), "listed twice: {l}\n{text}");
    }
}

#[test]
fn repair_all_keeps_every_cluster_qemu_reads() {
    let t = tmp();
    let img = t.path().join("repro.qcow");
    std::fs::copy(repro(), &img).expect("copy");
    assert_eq!(file_len(&img), 36845);
    // QEMU refuses the two misaligned entries, and reads everything else.
    let o = qemu_img(&[
        &"convert",
        &"-f",
        &"qcow",
        &"-O",
        &"raw",
        &img,
        &t.path().join("x"),
    ]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("error while reading at byte 404480"),
        "{}",
        o.stderr
    );
    for (j, _) in UNREADABLE {
        let o = run_qemu_io_read(&img, guest(j));
        assert!(o.contains("Input/output error"), "{o}");
    }
    let before = qemu_healthy(&img, t.path());
    assert!(before[1536..3072].iter().any(|&b| b != 0), "no data read");

    let o = qcow(&[&"check", &img]);
    assert_eq!(o.code, 2, "{}", o.text());
    assert!(o.text().contains("\n12 errors were found on the image."));

    let o = qcow(&[&"check", &"-r", &"all", &img]);
    assert_eq!(o.code, 0, "{}{}", o.text(), o.stderr);
    assert!(o.stderr.is_empty(), "{}", o.stderr);
    assert_eq!(o.text(), EXPECTED_REPAIR_ALL);
    assert_listed_once(&o.text());

    let o = qcow(&[&"check", &img]);
    assert_eq!(o.code, 0, "{}", o.text());
    assert!(o.text().starts_with("No errors were found on the image.\n"));
    assert_eq!(file_len(&img), 36352);
    // QEMU reads the whole image now: every cluster it read before, the same; the
    // dropped one (it pointed into the header area) as unallocated; the copied one as
    // the bytes its entry pointed at.
    let after = qemu_raw(&img, &[&"-f", &"qcow"], t.path());
    let skip: Vec<u64> = UNREADABLE.iter().map(|&(j, _)| guest(j)).collect();
    for (i, (a, b)) in after
        .chunks(CS as usize)
        .zip(before.chunks(CS as usize))
        .enumerate()
    {
        let g = i as u64 * CS;
        if !skip.contains(&g) {
            assert_bytes_eq(a, b, &format!("guest cluster at {g}"));
        }
    }
    assert_eq!(after.len(), before.len());
    let cluster = |g: u64| &after[g as usize..(g + CS) as usize];
    assert_bytes_eq(cluster(guest(790)), &[0; CS as usize], "the dropped one");
    let original = read_at(&repro(), 15616, CS as usize);
    assert_bytes_eq(cluster(guest(1618)), &original, "the copied one");
}

/// `-r leaks` moves nothing on a corrupt image: only the leaked tail goes, and every
/// cluster QEMU reads stays.
#[test]
fn repair_leaks_keeps_every_cluster_qemu_reads() {
    let t = tmp();
    let img = t.path().join("repro.qcow");
    std::fs::copy(repro(), &img).expect("copy");
    let before = qemu_healthy(&img, t.path());
    let o = qcow(&[&"check", &"-r", &"leaks", &img]);
    assert_eq!(o.code, 2, "{}{}", o.text(), o.stderr);
    let text = o.text();
    let repaired: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Repaired:"))
        .collect();
    assert_eq!(
        repaired,
        ["Repaired: truncated the file from 36845 to 35840 bytes"],
        "{text}"
    );
    assert!(
        text.contains("\n12 errors were found on the image."),
        "{text}"
    );
    assert!(
        text.contains("\nLeaked: 16 bytes leaked at host offset 48\n"),
        "{text}"
    );
    assert_eq!(file_len(&img), 35840);
    assert_bytes_eq(&qemu_healthy(&img, t.path()), &before, "QEMU's view");
}

/// A repair of thousands of moves lists the first 1000 and counts the rest, in both
/// output forms.
#[test]
fn the_list_of_repairs_is_bounded() {
    let t = tmp();
    let img = t.path().join("many.qcow");
    // 512-byte clusters, 4096-entry tables: 8192 clusters written, every other one
    // dropped: the clusters at the end of the file move into the 4096 holes.
    lib_create(&img, 4 << 20, Some(9), Some(12), None);
    let mut rng = Rng::new(18);
    let data = rng.bytes(4 << 20);
    let o = qcow_stdin(&[&"write", &img, &"0"], &data);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let h = read_at(&img, 40, 8);
    let l1 = u64::from_be_bytes(h.try_into().expect("8"));
    for i in 0..2 {
        let table = be64_at(&img, l1 + 8 * i);
        for j in (1..4096).step_by(2) {
            patch(&img, table + 8 * j, &[0; 8]);
        }
    }
    let before = qemu_raw(&img, &[&"-f", &"qcow"], t.path());
    let copy = t.path().join("copy.qcow");
    std::fs::copy(&img, &copy).expect("copy");

    let o = qcow(&[&"check", &"-r", &"leaks", &img]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let text = o.text();
    assert_listed_once(&text);
    let repaired: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Repaired:"))
        .collect();
    assert_eq!(repaired.len(), 1001, "{}", repaired.len());
    let last = repaired[1000];
    assert!(
        last.starts_with("Repaired: ")
            && last.contains(" more actions not listed (")
            && last.contains(" moved"),
        "{last}"
    );
    let more: usize = last["Repaired: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(more > 500, "{last}");
    assert_bytes_eq(
        &qemu_raw(&img, &[&"-f", &"qcow"], t.path()),
        &before,
        "QEMU's view",
    );
    assert_eq!(qcow(&[&"check", &img]).code, 0);

    let o = qcow(&[&"check", &"-r", &"leaks", &"--output=json", &copy]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = Json::parse(&o.text());
    assert_eq!(j.get("repairs").expect("repairs").arr().len(), 1000);
    assert_eq!(
        j.get("repairs-not-listed")
            .expect("repairs-not-listed")
            .u64(),
        more as u64
    );
    assert_bytes_eq(
        &qemu_raw(&copy, &[&"-f", &"qcow"], t.path()),
        &before,
        "QEMU's view",
    );
}

/// `qemu-io -c "read GUEST 512"` on `img`: its output, errors included.
fn run_qemu_io_read(img: &Path, guest: u64) -> String {
    let o = std::process::Command::new("qemu-io")
        .args(["-f", "qcow", "-c", &format!("read {guest} 512")])
        .arg(img)
        .output()
        .expect("qemu-io is not installed (it is needed by this test)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const EXPECTED_REPAIR_ALL: &str = "\
The following inconsistencies were found and repaired:

    2 leaked clusters
    12 corruptions

Repaired: copied to host offset 36864: L2 table at host offset 1024 (32768 bytes; L1 index 0, guest offset 0) overlaps data cluster at host offset 15616 (512 bytes; L1 index 0, L2 index 1618, guest offset 828416)
Repaired: dropped: data cluster at host offset 105 (512 bytes; L1 index 0, L2 index 790, guest offset 404480) overlaps the backing file name
Repaired: dropped: data cluster at host offset 1761607680 (512 bytes; L1 index 0, L2 index 2722, guest offset 1393664) reaches past the end of the 36845-byte file
Repaired: dropped: data cluster at host offset 17169973579350016 (512 bytes; L1 index 0, L2 index 3671, guest offset 1879552) reaches past the end of the 36845-byte file
Repaired: dropped: data cluster at host offset 31528 (512 bytes; L1 index 0, L2 index 3786, guest offset 1938432) maps guest bytes past the virtual size 1048576
Repaired: dropped: compressed cluster at host offset 9897803673239552 (253 bytes; L1 index 0, L2 index 3787, guest offset 1938944) reaches past the end of the 36845-byte file
Repaired: copied to host offset 69632: data cluster at host offset 15616 (512 bytes; L1 index 0, L2 index 1618, guest offset 828416) is not aligned to 512 bytes
Repaired: moved data cluster at host offset 69632 (512 bytes; L1 index 0, L2 index 1618, guest offset 828416) from host offset 69632 to 1024
Repaired: moved data cluster at host offset 35328 (512 bytes; L1 index 0, L2 index 5, guest offset 2560) from host offset 35328 to 1536
Repaired: moved data cluster at host offset 34816 (512 bytes; L1 index 0, L2 index 4, guest offset 2048) from host offset 34816 to 2048
Repaired: moved data cluster at host offset 34304 (512 bytes; L1 index 0, L2 index 3, guest offset 1536) from host offset 34304 to 2560
Repaired: moved data cluster at host offset 33792 (512 bytes; L1 index 0, L2 index 2, guest offset 1024) from host offset 33792 to 3072
Repaired: moved L2 table at host offset 36864 (32768 bytes; L1 index 0, guest offset 0) from host offset 36864 to 3584
Repaired: moved the L1 table from host offset 64 to 48
Repaired: truncated the file from 70144 to 36352 bytes

Double checking the fixed image now...
No errors were found on the image.
5/2048 = 0.24% allocated, 80.00% fragmented, 0.00% compressed clusters
Image end offset: 36352
";
