//! Chains opened over in-memory files: what the freestanding examples read.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embedded_io::{ErrorKind, ErrorType};

use super::*;
use crate::io::MemIo;
use crate::write::{create, CreateOptions};

/// The device error of the test files: an `ErrorKind` that can be displayed
/// (opening errors show as `Debug`, as the examples print them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault(ErrorKind);

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl embedded_io::Error for Fault {
    fn kind(&self) -> ErrorKind {
        self.0
    }
}

/// A file in memory.
struct File(MemIo);

impl ErrorType for File {
    type Error = Fault;
}

impl BlockIo for File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.0.read_at(offset, buf).map_err(Fault)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Fault> {
        self.0.write_at(offset, buf).map_err(Fault)
    }
    fn len(&mut self) -> Result<u64, Fault> {
        self.0.len().map_err(Fault)
    }
    fn set_len(&mut self, len: u64) -> Result<(), Fault> {
        self.0.set_len(len).map_err(Fault)
    }
    fn flush(&mut self) -> Result<(), Fault> {
        Ok(())
    }
}

/// Files by path, and the paths opened, in order.
#[derive(Default)]
struct Files {
    files: Vec<(Vec<u8>, Vec<u8>)>,
    opened: Vec<String>,
}

impl Files {
    fn add(&mut self, path: &str, data: Vec<u8>) -> &mut Self {
        self.files.push((path.as_bytes().to_vec(), data));
        self
    }
}

impl Volume for Files {
    type File = File;
    fn open(&mut self, path: &Path) -> Result<File, Fault> {
        self.opened.push(format!("{path}"));
        let found = self.files.iter().find(|(p, _)| p == path.bytes());
        let (_, data) = found.ok_or(Fault(ErrorKind::NotFound))?;
        Ok(File(MemIo(data.clone())))
    }
}

const MIB: u64 = 1024 * 1024;

/// A qcow image of `size` bytes over `backing`, with `fill` bytes written at each
/// `(offset, len)` (whole 4 KiB clusters, so no backing data is merged in).
fn qcow(size: u64, backing: Option<&[u8]>, writes: &[(u64, usize, u8)]) -> Vec<u8> {
    let mut io = MemIo::default();
    create(&mut io, &CreateOptions::new(size).backing(backing)).unwrap();
    let mut image = Image::open(io, NoBacking::new(), vec![0u8; 2 * 4096]).unwrap();
    for &(offset, len, fill) in writes {
        image.write_at(offset, &vec![fill; len]).unwrap();
    }
    image.into_parts().0 .0
}

/// `data` with `fill` over each `(offset, len)`.
fn overlay(mut data: Vec<u8>, writes: &[(u64, usize, u8)]) -> Vec<u8> {
    for &(offset, len, fill) in writes {
        let at = offset as usize;
        data[at..at + len].fill(fill);
    }
    data
}

/// The guest disk of the chain from `top`, as the examples read it.
fn read(files: &mut Files, top: &str) -> Result<Vec<u8>, Failure<Fault>> {
    let mut pool = vec![0u8; SCRATCH_LEN];
    let path = Path::new(top.as_bytes()).unwrap();
    open_file(files, &path, None, &mut pool, |image| {
        let mut disk = vec![0u8; image.size() as usize];
        image.read_at(0, &mut disk)?;
        Ok(disk)
    })
}

/// The failure of the chain from `top`, and its message.
fn refused(files: &mut Files, top: &str) -> (FailureKind<Fault>, String) {
    match read(files, top) {
        Ok(_) => panic!("{top}: read"),
        Err(failure) => {
            let message = format!("{failure}");
            (failure.kind, message)
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn qcow_over_raw() {
    let raw = pattern(3 * 65536 + 100); // shorter than the guest: zeros past it
    let writes = [(4096, 8192, 0xaa), (MIB - 4096, 4096, 0xbb)];
    let mut files = Files::default();
    files
        .add("img/top.qcow", qcow(MIB, Some(b"base.raw"), &writes))
        .add("img/base.raw", raw.clone());
    let mut want = raw;
    want.resize(MIB as usize, 0);
    assert_eq!(
        read(&mut files, "img/top.qcow").unwrap(),
        overlay(want, &writes)
    );
    assert_eq!(files.opened, ["img/top.qcow", "img/base.raw"]);
}

#[test]
fn three_deep_with_relative_and_absolute_names() {
    let base = [(0, 65536, 1), (3 * 65536, 4096, 2)];
    let over = [(4096, 4096, 3), (3 * 65536, 4096, 4)];
    let top = [(8192, 4096, 5), (4096, 4096, 6)];
    let mut files = Files::default();
    files
        .add("/abs/base.qcow", qcow(MIB, None, &base))
        .add(
            "chain/../over.qcow",
            qcow(MIB, Some(b"/abs/base.qcow"), &over),
        )
        .add("chain/top.qcow", qcow(2 * MIB, Some(b"../over.qcow"), &top));
    let below = overlay(vec![0; MIB as usize], &base);
    let mut want = overlay(below, &over);
    want.resize(2 * MIB as usize, 0);
    let want = overlay(want, &top);
    assert_eq!(read(&mut files, "chain/top.qcow").unwrap(), want);
    let opened = ["chain/top.qcow", "chain/../over.qcow", "/abs/base.qcow"];
    assert_eq!(files.opened, opened);

    // What discover found: two qcow images, then nothing.
    let path = Path::new(b"chain/top.qcow").unwrap();
    let mut top = files.open(&path).unwrap();
    let found = discover(&mut files, &mut top, &path).unwrap();
    assert!(matches!(
        found,
        [Found::Qcow(_), Found::Qcow(_), Found::Absent, Found::Absent]
    ));
}

#[test]
fn the_deepest_chain_and_one_more() {
    let mut files = Files::default();
    files.add("d0.raw", pattern(MIB as usize));
    let mut want = pattern(MIB as usize);
    for i in 1..=5u8 {
        let below = if i == 1 {
            "d0.raw".into()
        } else {
            format!("d{}.qcow", i - 1)
        };
        let writes = [(u64::from(i) * 65536, 4096, 0x10 + i)];
        files.add(
            &format!("d{i}.qcow"),
            qcow(MIB, Some(below.as_bytes()), &writes),
        );
        want = overlay(want, &writes);
        if i == 4 {
            // Five layers: the top image and four backing files.
            assert_eq!(read(&mut files, "d4.qcow").unwrap(), want);
        }
    }
    let (kind, message) = refused(&mut files, "d5.qcow");
    assert!(matches!(
        kind,
        FailureKind::Qcow(Error::ChainTooDeep(LAYERS))
    ));
    assert_eq!(message, "d5.qcow: backing chain deeper than 5 images");
}

#[test]
fn a_cycle_runs_into_the_bound() {
    let mut files = Files::default();
    files.add("loop.qcow", qcow(MIB, Some(b"loop.qcow"), &[]));
    let (kind, message) = refused(&mut files, "loop.qcow");
    assert!(matches!(kind, FailureKind::Qcow(Error::ChainTooDeep(5))));
    assert_eq!(message, "loop.qcow: backing chain deeper than 5 images");
    assert_eq!(files.opened.len(), LAYERS);
}

#[test]
fn other_qcow_versions_are_refused_and_short_files_are_raw() {
    let mut v2 = vec![0u8; 4096];
    v2[..4].copy_from_slice(&MAGIC.to_be_bytes());
    v2[4..8].copy_from_slice(&2u32.to_be_bytes());
    let mut files = Files::default();
    files
        .add("over-qcow2.qcow", qcow(MIB, Some(b"v3.qcow2"), &[]))
        .add("v3.qcow2", v2)
        .add("tiny.qcow", qcow(4096, Some(b"tiny.raw"), &[]))
        .add("tiny.raw", b"QFI".to_vec());
    let (kind, message) = refused(&mut files, "over-qcow2.qcow");
    assert!(matches!(kind, FailureKind::OtherVersion(2)));
    assert_eq!(
        message,
        "v3.qcow2: backing file is qcow version 2, only version 1 is supported"
    );
    let mut want = b"QFI".to_vec();
    want.resize(4096, 0);
    assert_eq!(read(&mut files, "tiny.qcow").unwrap(), want);
}

#[test]
fn names_too_long_or_holding_nul_are_refused() {
    // A directory of 4000 bytes and a name of 200: past PATH_MAX.
    let top = format!("{}/top.qcow", "d".repeat(4000));
    let mut files = Files::default();
    files
        .add(&top, qcow(MIB, Some(&[b'n'; 200]), &[]))
        .add("nul.qcow", qcow(MIB, Some(b"a\0b"), &[]));
    let (kind, message) = refused(&mut files, &top);
    assert!(matches!(kind, FailureKind::BackingName));
    let tail = format!("...{}/top.qcow", "d".repeat(240 - 9));
    assert_eq!(
        message,
        format!("{tail}: its backing file name is too long or holds a NUL byte")
    );
    let (kind, _) = refused(&mut files, "nul.qcow");
    assert!(matches!(kind, FailureKind::BackingName));
    assert_eq!(files.opened, [top.as_str(), "nul.qcow"]);
}

#[test]
fn missing_files_name_the_file() {
    let mut files = Files::default();
    files.add("dir/orphan.qcow", qcow(MIB, Some(b"gone.qcow"), &[]));
    let (kind, message) = refused(&mut files, "dir/orphan.qcow");
    assert!(matches!(
        kind,
        FailureKind::OpenBacking(Fault(ErrorKind::NotFound))
    ));
    assert_eq!(
        message,
        "cannot open backing file 'dir/gone.qcow': Fault(NotFound)"
    );
    let (kind, message) = refused(&mut files, "none.qcow");
    assert!(matches!(
        kind,
        FailureKind::OpenImage(Fault(ErrorKind::NotFound))
    ));
    assert_eq!(message, "cannot open image 'none.qcow': Fault(NotFound)");
}

#[test]
fn a_raw_top_image_and_a_truncated_layer_are_refused() {
    let plain = qcow(MIB, None, &[(0, 65536, 9)]);
    let mut files = Files::default();
    files
        .add("base.raw", pattern(4096))
        .add("half.qcow", plain[..plain.len() / 2].to_vec())
        .add("over-half.qcow", qcow(MIB, Some(b"half.qcow"), &[]));
    let (kind, message) = refused(&mut files, "base.raw");
    assert!(matches!(kind, FailureKind::Qcow(Error::BadMagic(_))));
    assert!(
        message.starts_with("base.raw: not a qcow image"),
        "{message}"
    );
    // The truncated image opens (its tables are in); its data is past the end.
    let (kind, message) = refused(&mut files, "over-half.qcow");
    assert!(matches!(
        kind,
        FailureKind::Qcow(Error::BadReference { .. })
    ));
    assert!(message.starts_with("over-half.qcow: "), "{message}");
}

#[test]
fn the_pool_bounds_the_scratch_buffers() {
    let mut files = Files::default();
    files
        .add("base.qcow", qcow(MIB, None, &[]))
        .add("top.qcow", qcow(MIB, Some(b"base.qcow"), &[]));
    let path = Path::new(b"top.qcow").unwrap();
    // A backing file made without one has 4 KiB clusters: 8 KiB of scratch; the
    // top one 512-byte clusters: 1 KiB.
    for (len, depth) in [(8191, Some(1)), (8192 + 1023, None)] {
        let mut pool = vec![0u8; len];
        let r = open_file(&mut files, &path, None, &mut pool, |_| Ok(()));
        let Err(failure) = r else {
            panic!("opened with a pool of {len} bytes")
        };
        match (failure.kind, depth) {
            (FailureKind::Layer { depth: 1, error }, Some(1))
            | (FailureKind::Qcow(error), None) => {
                assert!(matches!(error, Error::BufferTooSmall { .. }), "{error}")
            }
            (kind, _) => panic!("{len}: {kind:?}"),
        }
    }
    let mut pool = vec![0u8; 8192 + 1024];
    assert!(open_file(&mut files, &path, None, &mut pool, |_| Ok(())).is_ok());
}

#[test]
fn an_error_of_the_reader_is_the_top_image_s() {
    let mut files = Files::default();
    files.add("top.qcow", qcow(MIB, None, &[]));
    let mut pool = vec![0u8; SCRATCH_LEN];
    let path = Path::new(b"top.qcow").unwrap();
    let r: Result<(), _> = open_file(&mut files, &path, None, &mut pool, |_| {
        Err(Error::Unsupported("here"))
    });
    let Err(failure) = r else { panic!("no error") };
    assert_eq!(format!("{failure}"), "top.qcow: unsupported: here");
}

#[test]
fn encrypted_layers_read_with_the_secret() {
    let mut io = MemIo::default();
    let opts = CreateOptions::new(MIB)
        .encrypted(true)
        .backing(Some(b"base.raw"));
    create(&mut io, &opts).unwrap();
    let mut image = Image::open(io, NoBacking::new(), vec![0u8; 2 * 4096]).unwrap();
    image.set_secret(b"secret").unwrap();
    image.write_at(65536, &[0x5a; 4096]).unwrap();
    let mut files = Files::default();
    files
        .add("enc.qcow", image.into_parts().0 .0)
        .add("base.raw", pattern(MIB as usize));
    let mut pool = vec![0u8; SCRATCH_LEN];
    let path = Path::new(b"enc.qcow").unwrap();
    let mut got = vec![0u8; MIB as usize];
    let r = open_file(&mut files, &path, Some(b"secret"), &mut pool, |image| {
        image.read_at(0, &mut got)
    });
    assert!(r.is_ok());
    assert_eq!(got, overlay(pattern(MIB as usize), &[(65536, 4096, 0x5a)]));
}

#[test]
fn probe_tells_qcow_from_other_versions_and_raw() {
    let mut v3 = MAGIC.to_be_bytes().to_vec();
    v3.extend_from_slice(&3u32.to_be_bytes());
    let cases = [
        (qcow(MIB, None, &[]), Probed::Qcow),
        (v3.clone(), Probed::OtherVersion(3)),
        (v3[..7].to_vec(), Probed::Raw),
        (pattern(4096), Probed::Raw),
    ];
    for (data, want) in cases {
        assert_eq!(probe(&mut MemIo(data)), Ok(want));
    }
}
