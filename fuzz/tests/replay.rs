//! Replays the committed seed corpora (`corpus/TARGET/seed-*`) and the crash
//! regressions (`regressions/TARGET/*`) through the harnesses, on stable, without
//! libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`.

use std::path::Path;

type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("header", qcow_fuzz::header),
    ("map", qcow_fuzz::map),
    ("read", qcow_fuzz::read),
    ("inflate", qcow_fuzz::inflate),
    ("write", qcow_fuzz::write),
    ("check", qcow_fuzz::check),
    ("partitions", qcow_fuzz::partitions),
    ("nbd", qcow_fuzz::nbd),
];

fn inputs(dir: &Path, seeds_only: bool) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !seeds_only
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    v.sort();
    v
}

fn replay(name: &str, f: Harness) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = inputs(&root.join("corpus").join(name), true);
    files.extend(inputs(&root.join("regressions").join(name), false));
    for p in &files {
        let data = std::fs::read(p).unwrap();
        eprintln!("{name}: {}", p.display());
        f(&data);
    }
    files.len()
}

#[test]
fn seeds_and_regressions() {
    let mut total = 0;
    for (name, f) in TARGETS {
        let n = replay(name, *f);
        assert!(n > 0, "no seed for target {name}");
        total += n;
    }
    eprintln!("replayed {total} inputs");
}
