//! The fuzz harnesses, one per surface of `qcow-core`.
//!
//! Each `fuzz_targets/NAME.rs` only calls [`NAME`](crate) here, so that `tests/replay.rs`
//! can run the seed corpora and the crash regressions on stable, without libFuzzer.
//!
//! A harness panics only on a bug: a panic inside `qcow-core`, a broken invariant, or a
//! device error. The core promises never to read past the end of its device (it checks
//! every extent against the file's length first), so an [`Error::Io`] from a
//! [`SliceIo`] means a missing check.

use embedded_io::ErrorKind;
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;
use qcow_core::cluster::{inflate as core_inflate, Deflater, InflateError};
use qcow_core::header::{Header, HEADER_SIZE, MAX_L1_ENTRIES};
use qcow_core::image::{read_header, scratch_len};
use qcow_core::io::{MemIo, SliceIo};
use qcow_core::maint::{Action, RepairMode};
use qcow_core::write::{create, CreateOptions};
use qcow_core::{Backing, Cluster, Error, Image, NoBacking, Raw};

type E = ErrorKind;

/// Fails the run on a device error: the core read or wrote outside the device.
fn no_io<T>(r: Result<T, Error<E>>) -> Result<T, Error<E>> {
    if let Err(Error::Io(e)) = &r {
        panic!("device error {e:?}: the core went outside the device");
    }
    r
}

/// A byte pattern that is neither zero nor periodic in a cluster.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Reads fuzz input as a little stream of numbers; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// `Header::decode` and `Header::validate_layout` on arbitrary bytes: the first 48 are
/// the header, the next 8 (or the input's length) the file's length.
pub fn header(data: &[u8]) {
    let Some(raw) = data.get(..HEADER_SIZE) else {
        return;
    };
    let raw: &[u8; HEADER_SIZE] = raw.try_into().expect("48 bytes");
    let Ok(h) = Header::decode::<()>(raw) else {
        return;
    };
    // What decode accepts, encode writes back (bytes 34..36 are padding).
    let mut canon = *raw;
    canon[34] = 0;
    canon[35] = 0;
    assert_eq!(h.encode(), canon);
    assert_eq!(Header::decode::<()>(&h.encode()), Ok(h));
    let g = h.geometry();
    assert!(g.l1_size() >= 1 && g.l1_size() <= MAX_L1_ENTRIES);
    assert!(g.size() <= h.size && h.size - g.size() < 512);
    assert!(u128::from(g.l1_size()) * u128::from(g.l2_span()) >= u128::from(g.size()));
    assert!(g.l1_bytes() <= 1 << 31);
    let file_len = match data.get(HEADER_SIZE..HEADER_SIZE + 8) {
        Some(b) => u64::from_be_bytes(b.try_into().expect("8 bytes")),
        None => data.len() as u64,
    };
    if h.validate_layout::<()>(file_len).is_ok() {
        let end = h.l1_table_offset.checked_add(g.l1_bytes()).expect("L1 end");
        assert!(end <= file_len);
        assert!(h.l1_table_offset >= HEADER_SIZE as u64);
        assert_eq!(h.l1_table_offset % 8, 0);
        if let Some(r) = h.backing_name_range() {
            assert!(r.start >= HEADER_SIZE as u64 && r.end <= file_len);
            assert!(r.end - r.start <= qcow_core::header::MAX_BACKING_NAME as u64);
        } else {
            assert_eq!(h.backing_file_offset, 0);
        }
    }
}

/// Opens `data` as an image over `backing`; `None` when the header is refused.
fn open<K: Backing<IoError = E>>(
    data: &[u8],
    backing: K,
) -> Option<Image<SliceIo<'_>, K, Vec<u8>>> {
    let mut io = SliceIo(data);
    let h = no_io(read_header(&mut io)).ok()?;
    let scratch = vec![0u8; scratch_len(&h.geometry())];
    Some(
        no_io(Image::open(io, backing, scratch)).expect("a header accepted once is accepted twice"),
    )
}

/// Guest offsets worth probing: the first clusters of the first L2 spans, their last
/// clusters, a few unaligned ones, and the end of the image.
fn probes(img: &Image<SliceIo<'_>, NoBacking<E>, Vec<u8>>) -> Vec<u64> {
    let g = *img.geometry();
    let cs = g.cluster_size();
    let mut v = Vec::new();
    for i in 0..g.l1_size().min(32) {
        let base = i * g.l2_span();
        for j in [0, 1, 2, 3, g.l2_entries() - 1] {
            v.push(base + j * cs);
        }
        v.push(base + cs / 2 + 3);
    }
    v.extend([
        g.size().saturating_sub(1),
        g.size() / 2,
        g.size().saturating_sub(cs),
    ]);
    v.retain(|&x| x < g.size());
    v
}

/// `lookup` and `extent` for many guest offsets, then a walk of the whole image with
/// `status`, as `qcow map` does.
pub fn map(data: &[u8]) {
    let Some(mut img) = open(data, NoBacking::new()) else {
        return;
    };
    let g = *img.geometry();
    let (size, cs, file_len) = (g.size(), g.cluster_size(), data.len() as u64);
    for guest in probes(&img) {
        let c = no_io(img.lookup(guest));
        match c {
            Ok(Cluster::Plain { host }) => {
                assert_eq!(host % 512, 0);
                assert!(host >= HEADER_SIZE as u64 && host + cs <= file_len);
            }
            Ok(Cluster::Compressed { host, len }) => {
                assert!(len > 0 && len < cs);
                assert!(host >= HEADER_SIZE as u64 && host + len <= file_len);
            }
            _ => {}
        }
        let max = size - guest;
        let e = no_io(img.extent(guest, max));
        if let Ok((first, len)) = e {
            assert!(len >= 1 && len <= max, "extent length {len} of {max}");
            match (c, first) {
                (Ok(Cluster::Unallocated), Cluster::Unallocated) => {}
                (Ok(Cluster::Plain { host }), Cluster::Plain { host: h }) => {
                    assert_eq!(h, host + guest % cs)
                }
                (Ok(a @ Cluster::Compressed { .. }), b) => {
                    assert_eq!(a, b);
                    assert!(len <= cs - guest % cs);
                }
                (c, first) => panic!("lookup {c:?} but extent {first:?}"),
            }
        }
        // The run of an extent is really stored alike: every cluster in it looks up so.
        if let Ok((Cluster::Plain { host }, len)) = e {
            let mut at = guest - guest % cs + cs;
            while at < guest + len && at < guest + 64 * cs {
                let want = host + (at - guest);
                assert_eq!(img.lookup(at), Ok(Cluster::Plain { host: want }));
                at += cs;
            }
        }
    }
    let mut at = 0u64;
    let mut steps = 0;
    while at < size && steps < 4096 {
        match no_io(Backing::status(&mut img, at, size - at)) {
            Ok(s) => {
                assert!(s.len >= 1 && s.len <= size - at, "status length {}", s.len);
                assert_eq!(s.depth, 0);
                at += s.len;
            }
            Err(_) => at = (at / cs + 1) * cs,
        }
        steps += 1;
    }
}

/// Reads every cluster (up to a bound) three ways: without a backing layer, over a
/// small raw backing layer, and with a secret; checks they agree where they must, and
/// that unaligned reads across clusters return the same bytes as aligned ones.
pub fn read(data: &[u8]) {
    let Some(mut plain) = open(data, NoBacking::new()) else {
        return;
    };
    let base = pattern(5000, 0x5a);
    let raw = Raw::new(MemIo(base.clone())).expect("memory");
    let mut over = open(data, raw).expect("opened once");
    let mut keyed = open(data, NoBacking::new()).expect("opened once");
    keyed.set_secret(b"fuzz").expect("a UTF-8 secret");
    let encrypted = plain.header().is_encrypted();
    let g = *plain.geometry();
    let (size, cs) = (g.size(), g.cluster_size());
    let mut prev: Option<(u64, Vec<u8>)> = None;
    let mut at = 0u64;
    let mut steps = 0;
    while at < size && steps < 256 {
        steps += 1;
        let n = cs.min(size - at) as usize;
        let c = no_io(plain.lookup(at));
        let mut a = vec![0u8; n];
        let ra = no_io(plain.read_at(at, &mut a));
        let mut b = vec![0u8; n];
        let rb = no_io(over.read_at(at, &mut b));
        let mut k = vec![0u8; n];
        let rk = no_io(keyed.read_at(at, &mut k));
        match (&c, &ra) {
            (Err(e), r) => assert_eq!(r.as_ref().err(), Some(e)),
            (Ok(Cluster::Plain { .. }), Err(Error::PasswordRequired)) => assert!(encrypted),
            _ => {}
        }
        assert_eq!(ra.is_ok(), rb.is_ok(), "{ra:?} / {rb:?}");
        if let (Ok(()), Ok(())) = (&ra, &rb) {
            if c == Ok(Cluster::Unallocated) {
                assert!(a.iter().all(|&x| x == 0));
                let from = (at as usize).min(base.len());
                let to = (at as usize + n).min(base.len());
                assert_eq!(&b[..to - from], &base[from..to]);
                assert!(b[to - from..].iter().all(|&x| x == 0));
            } else {
                assert_eq!(a, b);
            }
        }
        if !encrypted {
            assert_eq!(ra, rk);
            if ra.is_ok() {
                assert_eq!(a, k);
            }
        } else if c == Ok(Cluster::Unallocated) {
            assert_eq!(rk, Ok(()));
            assert!(k.iter().all(|&x| x == 0));
        }
        // An unaligned read across the boundary with the previous cluster.
        let this = if encrypted {
            rk.is_ok().then_some(k)
        } else {
            ra.is_ok().then_some(a)
        };
        let reader = if encrypted { &mut keyed } else { &mut plain };
        if let (Some((p_at, p)), Some(cur)) = (&prev, &this) {
            if p_at + p.len() as u64 == at && p.len() >= 7 && cur.len() >= 9 {
                let mut w = [0u8; 16];
                if no_io(reader.read_at(at - 7, &mut w)).is_ok() {
                    assert_eq!(&w[..7], &p[p.len() - 7..]);
                    assert_eq!(&w[7..], &cur[..9]);
                }
            }
        }
        prev = this.map(|v| (at, v));
        at = match no_io(plain.extent(at, size - at)) {
            Ok((Cluster::Unallocated, len)) if len > cs => (at + len) / cs * cs,
            _ => at + n as u64,
        };
    }
}

/// `cluster::inflate` into a cluster-size buffer (the first byte picks the size), checked
/// against miniz_oxide's own inflate into a larger buffer; then a deflate round trip.
pub fn inflate(data: &[u8]) {
    let Some((&b, input)) = data.split_first() else {
        return;
    };
    let cl = 1usize << (9 + (b % 8));
    let mut out = vec![0u8; cl];
    let r = core_inflate(input, &mut out);
    let mut big = vec![0u8; 2 * cl + 1];
    let mut st = DecompressorOxide::new();
    let (status, _, written) = decompress(
        &mut st,
        input,
        &mut big,
        0,
        inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    );
    match r {
        Ok(()) => {
            assert!(
                written >= cl,
                "accepted, but the stream gives only {written} bytes"
            );
            assert_eq!(&big[..cl], &out[..]);
        }
        Err(InflateError::Short(n)) => {
            assert!(n < cl);
            assert_eq!((status, written), (TINFLStatus::Done, n));
            assert_eq!(&big[..n], &out[..n]);
        }
        Err(InflateError::Invalid) => {
            assert!(
                !matches!(status, TINFLStatus::Done | TINFLStatus::HasMoreOutput),
                "refused a stream that inflates ({status:?}, {written} bytes)"
            );
        }
    }
    // Round trip: what the deflater writes, inflate gives back.
    let mut plain = input.to_vec();
    plain.resize(cl, 0);
    let mut stream = vec![0u8; cl];
    if let Some(n) = Deflater::default().compress(&plain, &mut stream) {
        assert!(n < cl);
        let mut back = vec![0u8; cl];
        assert_eq!(core_inflate(&stream[..n], &mut back), Ok(()));
        assert_eq!(back, plain);
    }
}

fn fill(kind: u8, len: usize, inp: &mut Input<'_>) -> Vec<u8> {
    match kind % 4 {
        0 => vec![0u8; len],
        1 => vec![inp.u8(); len],
        2 => pattern(len, inp.u8()),
        _ => {
            let src = inp.take(64).to_vec();
            if src.is_empty() {
                return vec![0xa5; len];
            }
            src.iter().copied().cycle().take(len).collect()
        }
    }
}

type MemImage = Image<MemIo, Raw<MemIo>, Vec<u8>>;

fn reopen(img: MemImage, secret: Option<&[u8]>) -> MemImage {
    let (mut io, backing) = img.into_parts();
    let h = read_header(&mut io).expect("our header");
    let scratch = vec![0u8; scratch_len(&h.geometry())];
    let mut img = Image::open(io, backing, scratch).expect("our image reopens");
    if let Some(s) = secret {
        img.set_secret(s).expect("secret");
    }
    img
}

/// A sequence of writes decoded from the input, on a fresh image made by `create`,
/// checked against an in-memory model of the guest disk after each read and at the end.
pub fn write(data: &[u8]) {
    let mut inp = Input(data);
    let cluster_bits = 9 + inp.u8() % 8;
    let l2_bits = 6 + inp.u8() % 8;
    let size = 1 + u64::from(inp.u32() % (1 << 20));
    let flags = inp.u8();
    let encrypted = flags & 1 != 0;
    let base_len = if flags & 2 != 0 {
        usize::from(inp.u16()) % (size as usize + 4096)
    } else {
        0
    };
    let secret: Option<&[u8]> = encrypted.then_some(b"fuzz");
    let mut io = MemIo::default();
    let opts = CreateOptions::new(size)
        .encrypted(encrypted)
        .cluster_bits(Some(cluster_bits))
        .l2_bits(Some(l2_bits));
    let h = create(&mut io, &opts).expect("create");
    let g = h.geometry();
    let base = pattern(base_len, 0x3c);
    let raw = Raw::new(MemIo(base.clone())).expect("memory");
    let mut img = Image::open(io, raw, vec![0u8; scratch_len(&g)]).expect("open what we made");
    if let Some(s) = secret {
        img.set_secret(s).expect("secret");
    }
    img.set_barriers(flags & 4 != 0);
    let size = g.size() as usize;
    let cs = g.cluster_len();
    let backing_view = |len: usize| {
        let mut m = vec![0u8; len];
        let n = base.len().min(len);
        m[..n].copy_from_slice(&base[..n]);
        m
    };
    let mut model = backing_view(size);
    let mut ops = 0;
    while !inp.is_empty() && ops < 48 {
        ops += 1;
        match inp.u8() % 8 {
            0 | 1 => {
                let off = inp.u32() as usize % (size + 2 * cs);
                let len = usize::from(inp.u16()) % (3 * cs + 1);
                let kind = inp.u8();
                let d = fill(kind, len, &mut inp);
                let r = img.write_at(off as u64, &d);
                if off + len > size {
                    assert!(matches!(r, Err(Error::OutOfRange { .. })), "{r:?}");
                } else {
                    r.expect("write");
                    model[off..off + len].copy_from_slice(&d);
                }
            }
            2 | 3 => {
                let n_cl = size.div_ceil(cs).max(1);
                let off = (inp.u16() as usize % n_cl) * cs;
                let len = if inp.u8() & 1 == 0 {
                    cs.min(size.saturating_sub(off))
                } else {
                    usize::from(inp.u16()) % (cs + 1)
                };
                let kind = inp.u8();
                let d = fill(kind, len, &mut inp);
                let r = img.write_compressed(off as u64, &d);
                if off + len > size {
                    assert!(matches!(r, Err(Error::OutOfRange { .. })), "{r:?}");
                } else {
                    r.expect("compressed write");
                    model[off..off + len].copy_from_slice(&d);
                }
            }
            4 => {
                let off = inp.u32() as usize % size.max(1);
                let len = (usize::from(inp.u16()) % (2 * cs + 1)).min(size - off);
                let mut got = vec![0u8; len];
                img.read_at(off as u64, &mut got).expect("read");
                assert!(got == model[off..off + len], "read at {off}+{len}");
            }
            5 => img = reopen(img, secret),
            6 => {
                let d = inp.take(usize::from(inp_peek(&inp)) % 40 + 1).to_vec();
                let off = inp.u32() as usize % size.max(1);
                let d = &d[..d.len().min(size - off)];
                img.write_at(off as u64, d).expect("small write");
                model[off..off + d.len()].copy_from_slice(d);
            }
            _ => {
                if inp.u8() % 4 == 0 {
                    img.make_empty().expect("make_empty");
                    model = backing_view(size);
                }
            }
        }
    }
    let mut img = reopen(img, secret);
    let mut got = vec![0u8; size];
    img.read_at(0, &mut got).expect("read back");
    if let Some(i) = got.iter().zip(&model).position(|(a, b)| a != b) {
        panic!(
            "guest byte {i} reads {} but {} was written",
            got[i], model[i]
        );
    }
    // The file is ours: `check` must find no corruption in it.
    let report = qcow_core::check::check(img.io()).expect("check our image");
    assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);
}

/// Reads guest cluster `at` (or what is left of the image there).
fn read_cluster<K: Backing<IoError = E>>(
    img: &mut Image<SliceIo<'_>, K, Vec<u8>>,
    at: u64,
) -> Result<Vec<u8>, Error<E>> {
    let n = img.geometry().cluster_size().min(img.size() - at) as usize;
    let mut buf = vec![0u8; n];
    no_io(img.read_at(at, &mut buf)).map(|()| buf)
}

/// The guest offsets of the first clusters worth reading: every cluster, skipping
/// unallocated L2 spans, at most `max`.
fn clusters(img: &mut Image<SliceIo<'_>, NoBacking<E>, Vec<u8>>, max: usize) -> Vec<u64> {
    let (size, cs) = (img.size(), img.geometry().cluster_size());
    let mut v = Vec::new();
    let mut at = 0u64;
    while at < size && v.len() < max {
        v.push(at);
        at = match no_io(img.extent(at, size - at)) {
            Ok((Cluster::Unallocated, len)) if len > cs => (at + len) / cs * cs,
            _ => at + cs,
        };
    }
    v
}

/// `check::check` on arbitrary bytes, held to agree with the reader; then
/// `maint::repair` on a copy, in both modes: afterwards the image checks as the repair
/// reports, every cluster that read before reads the same, no action is listed twice
/// and no move goes where the extent is; after `All` nothing is left but what cannot
/// be repaired.
pub fn check(data: &[u8]) {
    let report = match no_io(qcow_core::check::check(&mut SliceIo(data))) {
        Ok(r) => r,
        Err(e) => {
            if !matches!(e, Error::OutOfMemory) {
                let opens = open(data, NoBacking::new()).is_some();
                assert!(!opens, "check fails ({e:?}) on an image the reader opens");
            }
            return;
        }
    };
    let Some(mut img) = open(data, NoBacking::new()) else {
        panic!("check accepted a header the reader refuses");
    };
    img.set_secret(b"fuzz").expect("secret");
    let mut before = Vec::new();
    for at in clusters(&mut img, 512) {
        let r = read_cluster(&mut img, at);
        if let Err(e) = &r {
            assert!(
                !report.corruptions.is_empty(),
                "the reader fails at {at} ({e:?}) but check finds nothing"
            );
        }
        before.push((at, r));
    }
    if report.corruptions.is_empty() {
        for (at, r) in &before {
            assert!(
                r.is_ok(),
                "check finds nothing but reading {at} fails: {r:?}"
            );
        }
    }
    for mode in [RepairMode::All, RepairMode::Leaks] {
        repaired(data, mode, &report, &before);
    }
}

/// A guest cluster's offset and what reading it gave.
type ClusterRead = (u64, Result<Vec<u8>, Error<E>>);

/// One repair of the `check` harness.
fn repaired(
    data: &[u8],
    mode: RepairMode,
    report: &qcow_core::check::Report,
    before: &[ClusterRead],
) {
    let mut mem = MemIo(data.to_vec());
    let rep = match qcow_core::maint::repair(&mut mem, mode) {
        Ok(rep) => rep,
        Err(Error::Io(e)) => panic!("repair: device error {e:?}"),
        Err(_) => return,
    };
    assert_eq!(&rep.before, report);
    let again = qcow_core::check::check(&mut mem).expect("a repaired image checks");
    assert_eq!(again, rep.after);
    if mode == RepairMode::All {
        assert!(
            again
                .corruptions
                .iter()
                .all(|c| matches!(c, qcow_core::check::Corruption::MetadataOverlap { .. })),
            "left after repair: {:?}",
            again.corruptions
        );
    }
    let mut seen = std::collections::HashSet::new();
    for a in &rep.actions {
        assert!(seen.insert(format!("{a:?}")), "{mode:?}: {a} listed twice");
        if let Action::Moved { from, to, .. } = a {
            assert_ne!(from, to, "{mode:?}: {a}");
        }
    }
    let fixed = mem.0;
    let mut img = open(&fixed, NoBacking::new()).expect("a repaired image opens");
    img.set_secret(b"fuzz").expect("secret");
    for (at, r) in before {
        if let Ok(old) = r {
            let new = read_cluster(&mut img, *at).expect("a healthy cluster reads after repair");
            assert!(*old == new, "repair ({mode:?}) changed guest cluster {at}");
        }
    }
}

fn inp_peek(inp: &Input<'_>) -> u8 {
    inp.0.first().copied().unwrap_or(0)
}

/// `qcow_mount::parts::parse` on arbitrary bytes as a whole disk: every partition it
/// reports lies inside the disk, after sector 0, and overlaps no other; numbers are
/// unique.
pub fn partitions(data: &[u8]) {
    let t = qcow_mount::parts::parse(data);
    let size = data.len() as u64;
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut numbers = std::collections::BTreeSet::new();
    for p in &t.parts {
        let end = p.start.checked_add(p.len).expect("end fits");
        assert!(
            p.start >= 512 && p.len > 0 && end <= size,
            "{p:?} outside {size}"
        );
        assert!(numbers.insert(p.number), "number {} twice", p.number);
        for &(s, e) in &seen {
            assert!(end <= s || p.start >= e, "{p:?} overlaps {s}..{e}");
        }
        seen.push((p.start, end));
    }
}

/// The NBD server (`qcow-nbd`): the input is everything a client sends, from its
/// flags through options and requests, served from a 1 MiB writable raw disk in
/// memory; also every parser of `qcow_nbd::proto` on the raw input. Panics only on a
/// bug: the server must answer or disconnect, never panic.
pub fn nbd(data: &[u8]) {
    use qcow_nbd::proto;
    let _ = proto::parse_client_flags(data);
    let _ = proto::parse_option_header(data);
    let _ = proto::parse_info_request(data);
    let _ = proto::parse_meta_request(data);
    let _ = proto::parse_request(data);
    let storage = qcow_std::ReadWriteSeek::new(std::io::Cursor::new(vec![0u8; 1 << 20]));
    let disk = qcow_std::Disk::options()
        .writable(true)
        .format(Some(qcow_std::Format::Raw))
        .open_storage(std::sync::Arc::new(storage), "fuzz.raw")
        .expect("an in-memory raw disk opens");
    let export = qcow_nbd::Export::new(disk, "", "fuzz");
    let _ = qcow_nbd::serve(std::io::Cursor::new(data), std::io::sink(), &export);
}
