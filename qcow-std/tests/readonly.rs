//! A write through a read-only file descriptor fails with a clear error and leaves the
//! image exactly as it was, still readable.

use qcow_core::write::{create, CreateOptions};
use qcow_std::file::FileIo;
use qcow_std::{open, OpenOptions};

#[test]
fn write_to_read_only_image_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.qcow");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut io = FileIo::new(f);
    create(&mut io, &CreateOptions::new(1 << 20)).unwrap();
    drop(io);
    {
        let mut rw = open(
            &path,
            &OpenOptions {
                writable: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        rw.write_at(4096, b"kept").unwrap();
    }
    let before = std::fs::read(&path).unwrap();

    let mut disk = open(&path, &OpenOptions::default()).unwrap();
    for (at, data) in [(4096u64, &b"over"[..]), (65536, &[7u8; 5000][..])] {
        let e = disk.write_at(at, data).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&path.display().to_string()),
            "error names the file: {msg}"
        );
    }
    drop(disk);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the image is unchanged"
    );
    let mut disk = open(&path, &OpenOptions::default()).unwrap();
    let mut buf = [0u8; 4];
    disk.read_at(4096, &mut buf).unwrap();
    assert_eq!(&buf, b"kept");
}
