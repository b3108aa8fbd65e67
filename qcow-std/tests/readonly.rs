//! A write to a read-only disk fails with a clear error naming the file and leaves the
//! image exactly as it was, still readable: refused up front when the disk was opened
//! read-only, and by the OS when the descriptor underneath is read-only.

use std::sync::Arc;

use qcow_core::write::{create, CreateOptions};
use qcow_std::file::FileIo;
use qcow_std::Disk;

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
        let rw = Disk::options().writable(true).open(&path).unwrap();
        rw.write_at(4096, b"kept").unwrap();
    }
    let before = std::fs::read(&path).unwrap();

    let read_only = Disk::open(&path).unwrap();
    // Writable handle over a read-only descriptor: the OS refuses.
    let ro_fd = Arc::new(std::fs::File::open(&path).unwrap());
    let ro_storage = Disk::options()
        .writable(true)
        .open_storage(ro_fd, &path)
        .unwrap();
    for disk in [&read_only, &ro_storage] {
        for (at, data) in [(4096u64, &b"over"[..]), (65536, &[7u8; 5000][..])] {
            let e = disk.write_at(at, data).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&path.display().to_string()),
                "error names the file: {msg}"
            );
            if std::ptr::eq(disk, &read_only) {
                assert!(matches!(e, qcow_std::Error::ReadOnly { .. }), "{e:?}");
                let kind = std::io::Error::from(e).kind();
                assert_eq!(kind, std::io::ErrorKind::PermissionDenied);
            } else {
                assert!(matches!(e, qcow_std::Error::Io { .. }), "{e:?}");
            }
        }
    }
    drop((read_only, ro_storage));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the image is unchanged"
    );
    let disk = Disk::open(&path).unwrap();
    let mut buf = [0u8; 4];
    disk.read_at(4096, &mut buf).unwrap();
    assert_eq!(&buf, b"kept");
}
