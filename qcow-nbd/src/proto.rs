//! The NBD wire format: handshake, options, requests and replies, as pure functions
//! over byte slices. Every parser bounds what it accepts by the input's real length.

/// `NBDMAGIC`, the server's first eight bytes.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of option replies.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of transmission requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Server handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Server handshake flag: the client may omit the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes after `EXPORT_NAME`.
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Option numbers.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = 0x8000_0001;
    pub const ERR_POLICY: u32 = 0x8000_0002;
    pub const ERR_INVALID: u32 = 0x8000_0003;
    pub const ERR_UNKNOWN: u32 = 0x8000_0006;
    pub const ERR_TOO_BIG: u32 = 0x8000_0009;
}

/// `NBD_INFO_*` types.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tflag {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Commands.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = 0x8001;
}

/// Errors of transmission replies (the spec's errno values).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// `base:allocation` flag: a hole.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` flag: reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// Length of an option request header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a transmission request header.
pub const REQUEST_LEN: usize = 28;

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(s.try_into().ok()?))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// The client's flags, or `None` when it sets bits this server does not know
/// (the spec says to close the connection then).
pub fn parse_client_flags(b: &[u8]) -> Option<u32> {
    let f = be_u32(b, 0)?;
    (f & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) == 0).then_some(f)
}

/// An option request's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option number.
    pub option: u32,
    /// Length of the data that follows.
    pub len: u32,
}

/// Parses an option header; `None` when the magic is wrong or it is short.
pub fn parse_option_header(b: &[u8]) -> Option<OptionHeader> {
    if be_u64(b, 0)? != IHAVEOPT {
        return None;
    }
    Some(OptionHeader {
        option: be_u32(b, 8)?,
        len: be_u32(b, 12)?,
    })
}

/// An option reply: header, then `data`.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(u32::try_from(data.len()).unwrap_or(u32::MAX)).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The data of an `INFO`/`GO` request: export name and the info types asked for.
pub fn parse_info_request(d: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let n = usize::try_from(be_u32(d, 0)?).ok()?;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let at = 4 + n;
    let count = usize::from(be_u16(d, at)?);
    let rest = d.get(at + 2..)?;
    if rest.len() != count.checked_mul(2)? {
        return None;
    }
    let reqs = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, reqs))
}

/// The data of a `LIST_META_CONTEXT`/`SET_META_CONTEXT` request: export name and
/// queries.
pub fn parse_meta_request(d: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let n = usize::try_from(be_u32(d, 0)?).ok()?;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let mut at = 4 + n;
    let count = be_u32(d, at)?;
    at += 4;
    let mut queries = Vec::new();
    for _ in 0..count {
        let len = usize::try_from(be_u32(d, at)?).ok()?;
        at += 4;
        queries.push(d.get(at..at.checked_add(len)?)?);
        at += len;
    }
    (at == d.len()).then_some((name, queries))
}

/// The meta contexts this server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// `base:allocation`.
    BaseAllocation,
    /// `qemu:allocation-depth`.
    AllocationDepth,
}

impl Context {
    /// Every context, in id order.
    pub const ALL: [Context; 2] = [Context::BaseAllocation, Context::AllocationDepth];

    /// The context's name.
    pub fn name(self) -> &'static str {
        match self {
            Context::BaseAllocation => "base:allocation",
            Context::AllocationDepth => "qemu:allocation-depth",
        }
    }

    /// The id this server gives it.
    pub fn id(self) -> u32 {
        match self {
            Context::BaseAllocation => 1,
            Context::AllocationDepth => 2,
        }
    }
}

/// The contexts a query names: exact names, or for `LIST` a namespace (`base:`,
/// `qemu:`).
pub fn match_query(query: &[u8], list: bool) -> Vec<Context> {
    Context::ALL
        .into_iter()
        .filter(|c| {
            let name = c.name().as_bytes();
            query == name || (list && query.ends_with(b":") && name.starts_with(query))
        })
        .collect()
}

/// A `META_CONTEXT` reply's data: id, name.
pub fn meta_context_data(id: u32, name: &str) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v
}

/// The `INFO_EXPORT` info: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut v = info::EXPORT.to_be_bytes().to_vec();
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v
}

/// An info carrying a string (`INFO_NAME`, `INFO_DESCRIPTION`).
pub fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let mut v = kind.to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// The `INFO_BLOCK_SIZE` info.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut v = info::BLOCK_SIZE.to_be_bytes().to_vec();
    for x in [min, preferred, max] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v
}

/// The reply to `EXPORT_NAME`: size, flags, and 124 zeros unless `no_zeroes`.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        v.extend_from_slice(&[0u8; 124]);
    }
    v
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub kind: u16,
    /// The client's cookie, echoed in the reply.
    pub handle: u64,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

/// Parses a request header; `None` when the magic is wrong or it is short.
pub fn parse_request(b: &[u8]) -> Option<Request> {
    if be_u32(b, 0)? != REQUEST_MAGIC {
        return None;
    }
    Some(Request {
        flags: be_u16(b, 4)?,
        kind: be_u16(b, 6)?,
        handle: be_u64(b, 8)?,
        offset: be_u64(b, 16)?,
        len: be_u32(b, 24)?,
    })
}

/// Encodes a request header (for clients and tests).
pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.kind.to_be_bytes());
    b[8..16].copy_from_slice(&r.handle.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// A simple reply header.
pub fn simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&handle.to_be_bytes());
    b
}

/// A structured reply chunk header.
pub fn chunk_header(flags: u16, kind: u16, handle: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

/// A whole `OFFSET_HOLE` chunk.
pub fn hole_chunk(flags: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = chunk_header(flags, chunk::OFFSET_HOLE, handle, 12).to_vec();
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// The header of an `OFFSET_DATA` chunk carrying `len` bytes at `offset` (the data
/// follows).
pub fn data_chunk_header(flags: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = chunk_header(flags, chunk::OFFSET_DATA, handle, len.saturating_add(8)).to_vec();
    v.extend_from_slice(&offset.to_be_bytes());
    v
}

/// A whole `ERROR` chunk (always the last one).
pub fn error_chunk(handle: u64, error: u32, msg: &str) -> Vec<u8> {
    let msg = msg
        .as_bytes()
        .get(..msg.len().min(4096))
        .unwrap_or_default();
    let len = 6 + msg.len() as u32;
    let mut v = chunk_header(chunk::FLAG_DONE, chunk::ERROR, handle, len).to_vec();
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// A whole `BLOCK_STATUS` chunk: context id, then (length, flags) descriptors.
pub fn block_status_chunk(flags: u16, handle: u64, id: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = u32::try_from(4 + extents.len().saturating_mul(8)).unwrap_or(u32::MAX);
    let mut v = chunk_header(flags, chunk::BLOCK_STATUS, handle, len).to_vec();
    v.extend_from_slice(&id.to_be_bytes());
    for (l, f) in extents {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&f.to_be_bytes());
    }
    v
}

/// A `NONE` chunk ending a reply.
pub fn done_chunk(handle: u64) -> [u8; 20] {
    chunk_header(chunk::FLAG_DONE, chunk::NONE, handle, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_flags() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Some(3));
        assert_eq!(parse_client_flags(&[0, 0, 0, 4]), None);
        assert_eq!(parse_client_flags(&[0, 0, 0]), None);
    }

    #[test]
    fn option_header() {
        let mut b = b"IHAVEOPT".to_vec();
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        let h = parse_option_header(&b).unwrap();
        assert_eq!((h.option, h.len), (7, u32::MAX));
        b[0] = b'X';
        assert_eq!(parse_option_header(&b), None);
        assert_eq!(parse_option_header(&b[..10]), None);
    }

    #[test]
    fn info_request() {
        let d = [0, 0, 0, 2, b'h', b'i', 0, 2, 0, 1, 0, 3];
        let (name, reqs) = parse_info_request(&d).unwrap();
        assert_eq!((name, reqs), (&b"hi"[..], vec![1, 3]));
        assert!(parse_info_request(&d[..11]).is_none());
        assert!(parse_info_request(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_none());
        let extra = [0, 0, 0, 0, 0, 0, 9];
        assert!(parse_info_request(&extra).is_none());
    }

    #[test]
    fn meta_request_and_queries() {
        let mut d = vec![0, 0, 0, 0, 0, 0, 0, 2];
        for q in [&b"base:allocation"[..], b"qemu:"] {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        let (name, qs) = parse_meta_request(&d).unwrap();
        assert!(name.is_empty());
        assert_eq!(match_query(qs[0], false), vec![Context::BaseAllocation]);
        assert_eq!(match_query(qs[1], true), vec![Context::AllocationDepth]);
        assert!(match_query(qs[1], false).is_empty());
        assert!(parse_meta_request(&d[..d.len() - 1]).is_none());
        let lying = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_meta_request(&lying).is_none());
    }

    #[test]
    fn request_round_trip() {
        let r = Request {
            flags: cflag::FUA,
            kind: cmd::WRITE,
            handle: 0x1122_3344_5566_7788,
            offset: 1 << 40,
            len: 4096,
        };
        assert_eq!(parse_request(&encode_request(&r)), Some(r));
        let mut bad = encode_request(&r);
        bad[0] ^= 1;
        assert_eq!(parse_request(&bad), None);
    }

    #[test]
    fn replies() {
        let s = simple_reply(errno::EPERM, 9);
        assert_eq!(&s[..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1]);
        let h = hole_chunk(chunk::FLAG_DONE, 1, 512, 1024);
        assert_eq!(h.len(), 32);
        assert_eq!(&h[4..8], &[0, 1, 0, 2]);
        let e = error_chunk(1, errno::EIO, "bad");
        assert_eq!(&e[16..20], &9u32.to_be_bytes());
        let b = block_status_chunk(chunk::FLAG_DONE, 1, 1, &[(4096, 3), (512, 0)]);
        assert_eq!(&b[16..20], &20u32.to_be_bytes());
        assert_eq!(b.len(), 40);
        let r = option_reply(opt::GO, rep::ACK, &[]);
        assert_eq!(r.len(), 20);
        assert_eq!(export_name_reply(1, 2, false).len(), 134);
        assert_eq!(export_name_reply(1, 2, true).len(), 10);
        assert_eq!(info_block_size(1, 4096, 1 << 25).len(), 14);
    }
}
