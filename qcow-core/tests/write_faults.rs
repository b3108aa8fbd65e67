//! Fault injection on the write path: fail the k-th device write (or run out of space
//! after n bytes) for every k across a workload; the image must still open, and every
//! guest byte must be either the old or the new data of the interrupted operation.
// Test code: a failed unwrap or index is a failed test; the values are small and known.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use embedded_io::{ErrorKind, ErrorType};
use qcow_core::io::MemIo;
use qcow_core::write::{create, CreateOptions};
use qcow_core::{BlockIo, Image, NoBacking, Raw};

/// A device that fails every write after a budget of writes or bytes is spent.
struct Faulty {
    inner: MemIo,
    writes_left: Option<usize>,
    bytes_left: Option<usize>,
}

impl ErrorType for Faulty {
    type Error = ErrorKind;
}

impl Faulty {
    fn spend(&mut self, n: usize) -> Result<(), ErrorKind> {
        if let Some(w) = &mut self.writes_left {
            if *w == 0 {
                return Err(ErrorKind::Other);
            }
            *w -= 1;
        }
        if let Some(b) = &mut self.bytes_left {
            if *b < n {
                *b = 0;
                return Err(ErrorKind::OutOfMemory);
            }
            *b -= n;
        }
        Ok(())
    }
}

impl BlockIo for Faulty {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ErrorKind> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), ErrorKind> {
        self.spend(buf.len())?;
        self.inner.write_at(offset, buf)
    }
    fn len(&mut self) -> Result<u64, ErrorKind> {
        self.inner.len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), ErrorKind> {
        let grow = usize::try_from(len.saturating_sub(self.inner.0.len() as u64)).unwrap();
        self.spend(grow)?;
        self.inner.set_len(len)
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

const SIZE: u64 = 1 << 20;

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Compressed(u64, Vec<u8>),
}

#[path = "../src/testutil/mixed.rs"]
mod mixed;

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    mixed::mixed(seed, len, 700)
}

fn workload() -> Vec<Op> {
    vec![
        Op::Write(0, pattern(1, 100)),
        Op::Write(4000, pattern(2, 300)), // straddles a cluster
        Op::Compressed(8192, vec![b'a'; 4096]), // compressed cluster
        Op::Write(8192 + 100, pattern(3, 50)), // over the compressed one
        Op::Write(256 * 1024 - 10, pattern(4, 20)), // straddles an L2 span
        Op::Compressed(512 * 1024, pattern(5, 4096)), // random: stored plain
        Op::Write(SIZE - 1, vec![0xee]),  // the last byte
        Op::Write(600 * 1024, pattern(6, 20_000)), // a large run
        Op::Write(0, vec![0; 4096]),      // zeros over data
        Op::Compressed(16384, vec![0; 4096]),
    ]
}

fn apply(model: &mut [u8], op: &Op) {
    let (off, data) = match op {
        Op::Write(o, d) | Op::Compressed(o, d) => (*o as usize, d),
    };
    model[off..off + data.len()].copy_from_slice(data);
}

fn fresh(backing: bool) -> MemIo {
    let mut io = MemIo::default();
    let opts = CreateOptions::new(SIZE)
        .backing(backing.then_some(&b"base.raw"[..]))
        .cluster_bits(Some(12))
        .l2_bits(Some(6));
    create(&mut io, &opts).unwrap();
    io
}

fn base_raw() -> Vec<u8> {
    pattern(99, SIZE as usize / 2)
}

fn read_all(bytes: Vec<u8>, backing: bool) -> Vec<u8> {
    let mut out = vec![0u8; SIZE as usize];
    if backing {
        let raw = Raw::new(MemIo(base_raw())).unwrap();
        let mut img = Image::open(MemIo(bytes), raw, vec![0u8; 8192]).unwrap();
        img.read_at(0, &mut out).unwrap();
    } else {
        let mut img = Image::open(MemIo(bytes), NoBacking::new(), vec![0u8; 8192]).unwrap();
        img.read_at(0, &mut out).unwrap();
    }
    out
}

/// Runs the workload on a faulty device; returns the device bytes and the index of
/// the operation that failed (ops.len() when none did).
fn run(backing: bool, writes: Option<usize>, bytes: Option<usize>) -> (Vec<u8>, usize) {
    let ops = workload();
    let dev = Faulty {
        inner: fresh(backing),
        writes_left: writes,
        bytes_left: bytes,
    };
    let mut failed = ops.len();
    let mut dev = dev;
    {
        let res: Vec<bool> = if backing {
            let raw = Raw::new(MemIo(base_raw())).unwrap();
            let mut img = Image::open(&mut dev, BackingAdapter(raw), vec![0u8; 8192]).unwrap();
            ops.iter().map(|op| exec(&mut img, op)).collect_until_err()
        } else {
            let mut img = Image::open(&mut dev, NoBacking::new(), vec![0u8; 8192]).unwrap();
            ops.iter().map(|op| exec(&mut img, op)).collect_until_err()
        };
        if let Some(i) = res.iter().position(|ok| !ok) {
            failed = i;
        }
    }
    (dev.inner.0, failed)
}

/// Adapts a MemIo-backed raw layer to the faulty device's error type (the same).
struct BackingAdapter(Raw<MemIo>);

impl qcow_core::Backing for BackingAdapter {
    type IoError = ErrorKind;
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_layer(&mut self, o: u64, b: &mut [u8]) -> Result<(), qcow_core::Error<ErrorKind>> {
        self.0.read_layer(o, b)
    }
    fn status(&mut self, o: u64, m: u64) -> Result<qcow_core::Status, qcow_core::Error<ErrorKind>> {
        self.0.status(o, m)
    }
}

fn exec<B, K>(img: &mut Image<B, K, Vec<u8>>, op: &Op) -> bool
where
    B: BlockIo<Error = ErrorKind>,
    K: qcow_core::Backing<IoError = ErrorKind>,
{
    match op {
        Op::Write(o, d) => img.write_at(*o, d).is_ok(),
        Op::Compressed(o, d) => img.write_compressed(*o, d).is_ok(),
    }
}

trait CollectUntilErr: Iterator<Item = bool> + Sized {
    fn collect_until_err(self) -> Vec<bool> {
        let mut v = Vec::new();
        for ok in self {
            v.push(ok);
            if !ok {
                break;
            }
        }
        v
    }
}
impl<I: Iterator<Item = bool>> CollectUntilErr for I {}

fn check_outcome(bytes: Vec<u8>, failed: usize, backing: bool, what: &str) {
    let ops = workload();
    let mut old = vec![0u8; SIZE as usize];
    if backing {
        let b = base_raw();
        old[..b.len()].copy_from_slice(&b);
    }
    for op in &ops[..failed] {
        apply(&mut old, op);
    }
    let mut new = old.clone();
    if let Some(op) = ops.get(failed) {
        apply(&mut new, op);
    }
    let got = read_all(bytes, backing);
    for (i, ((g, o), n)) in got.iter().zip(&old).zip(&new).enumerate() {
        assert!(
            g == o || g == n,
            "{what}: byte {i} is {g:#x}, neither old {o:#x} nor new {n:#x} (op {failed} failed)"
        );
    }
}

#[test]
fn every_failed_write_leaves_old_or_new() {
    for backing in [false, true] {
        let (_, done) = run(backing, None, None);
        assert_eq!(
            done,
            workload().len(),
            "the workload succeeds without faults"
        );
        let mut k = 0;
        loop {
            let (bytes, failed) = run(backing, Some(k), None);
            check_outcome(
                bytes,
                failed,
                backing,
                &format!("write #{k} failed, backing {backing}"),
            );
            if failed == workload().len() {
                break;
            }
            k += 1;
        }
        assert!(k > 20, "the workload issued {k} writes");
    }
}

#[test]
fn disk_full_leaves_old_or_new() {
    for backing in [false, true] {
        for budget in (0..80_000).step_by(1531) {
            let (bytes, failed) = run(backing, None, Some(budget));
            check_outcome(
                bytes,
                failed,
                backing,
                &format!("disk full after {budget} bytes"),
            );
        }
    }
}

#[test]
fn read_only_device_gives_an_error_and_keeps_the_image() {
    let bytes = fresh(false).0;
    let mut img = Image::open(
        qcow_core::io::SliceIo(&bytes),
        NoBacking::new(),
        vec![0u8; 8192],
    )
    .unwrap();
    assert!(matches!(
        img.write_at(0, &[1, 2, 3]),
        Err(qcow_core::Error::Io(ErrorKind::Unsupported))
    ));
    let mut out = vec![1u8; 4096];
    img.read_at(0, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0));
}
