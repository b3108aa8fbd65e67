//! Executing one transmission request on the disk and writing its reply.

use std::io::{self, Write};

use qcow_core::StatusKind;

use crate::proto::{self, cflag, chunk, cmd, errno, Context, Request};
use crate::server::{Conn, MAX_REQUEST};

/// Flags any command may carry.
const KNOWN_FLAGS: u16 =
    cflag::FUA | cflag::NO_HOLE | cflag::DF | cflag::REQ_ONE | cflag::FAST_ZERO;
/// Extents per context in one BLOCK_STATUS reply at most.
const MAX_EXTENTS: usize = 1 << 16;
/// Block-status queries per request at most (the reply then covers less).
const MAX_QUERIES: usize = 1 << 18;

/// The NBD error for a library error.
fn errno_of(e: qcow_std::Error) -> u32 {
    if matches!(e, qcow_std::Error::ReadOnly { .. }) {
        return errno::EPERM;
    }
    let e = io::Error::from(e);
    match (e.raw_os_error(), e.kind()) {
        (Some(28), _) => errno::ENOSPC,
        (Some(12), _) => errno::ENOMEM,
        (_, io::ErrorKind::PermissionDenied) => errno::EPERM,
        (_, io::ErrorKind::InvalidInput) => errno::EINVAL,
        _ => errno::EIO,
    }
}

/// Checks a request against the export and session: the error to reply, if any.
fn check<W: Write>(conn: &Conn<'_, W>, req: &Request) -> Result<(), (u32, &'static str)> {
    let writes = matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if !matches!(
        req.kind,
        cmd::READ
            | cmd::WRITE
            | cmd::FLUSH
            | cmd::TRIM
            | cmd::CACHE
            | cmd::WRITE_ZEROES
            | cmd::BLOCK_STATUS
    ) {
        return Err((errno::EINVAL, "unknown command"));
    }
    if req.flags & !KNOWN_FLAGS != 0 {
        return Err((errno::EINVAL, "unknown command flags"));
    }
    if req.flags & cflag::DF != 0 && !conn.session.structured {
        return Err((errno::EINVAL, "DF without structured replies"));
    }
    if writes && conn.export.read_only() {
        return Err((errno::EPERM, "the export is read-only"));
    }
    if req.kind == cmd::FLUSH {
        return Ok(());
    }
    let size = conn.export.disk.size();
    let end = req.offset.checked_add(u64::from(req.len));
    if end.is_none_or(|e| e > size) {
        return Err(if matches!(req.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            (errno::ENOSPC, "write past the end of the export")
        } else {
            (errno::EINVAL, "request past the end of the export")
        });
    }
    if req.kind == cmd::READ && req.len > MAX_REQUEST {
        return Err(if req.flags & cflag::DF != 0 {
            (errno::EOVERFLOW, "read longer than 32 MiB")
        } else {
            (errno::EINVAL, "read longer than 32 MiB")
        });
    }
    if req.kind == cmd::BLOCK_STATUS {
        if conn.session.contexts.is_empty() {
            return Err((errno::EINVAL, "no meta context was negotiated"));
        }
        if req.len == 0 {
            return Err((errno::EINVAL, "block status of no bytes"));
        }
    }
    Ok(())
}

/// Executes `req` (with its write payload) and writes its reply.
pub(crate) fn execute<W: Write>(conn: &Conn<'_, W>, req: &Request, payload: &[u8]) {
    if let Err((e, msg)) = check(conn, req) {
        return conn.error(req, e, msg);
    }
    let disk = &conn.export.disk;
    let fua = |r: Result<(), qcow_std::Error>| {
        r.and_then(|()| {
            if req.flags & cflag::FUA != 0 {
                disk.flush()
            } else {
                Ok(())
            }
        })
    };
    let len = u64::from(req.len);
    let r = match req.kind {
        cmd::READ => return read(conn, req),
        cmd::BLOCK_STATUS => return block_status(conn, req),
        cmd::WRITE => fua(disk.write_at(req.offset, payload)),
        cmd::FLUSH => disk.flush(),
        cmd::TRIM => fua(disk.discard(req.offset, len)),
        cmd::WRITE_ZEROES if req.flags & cflag::NO_HOLE != 0 => {
            if req.flags & cflag::FAST_ZERO != 0 {
                // Allocated zeros are written, which is not fast.
                return conn.error(req, errno::ENOTSUP, "zeroing without holes is not fast");
            }
            fua(disk.write_zeroes(req.offset, len))
        }
        cmd::WRITE_ZEROES => fua(disk.discard(req.offset, len)),
        _ => Ok(()), // CACHE: reads are not cached here.
    };
    match r {
        Ok(()) => conn.ok(req),
        Err(e) => conn.error(req, errno_of(e), "I/O error"),
    }
}

/// A piece of a structured read reply.
enum Piece {
    Data { offset: u64, len: usize },
    Hole { offset: u64, len: u32 },
}

fn is_zero(kind: &StatusKind) -> bool {
    matches!(kind, StatusKind::Unallocated | StatusKind::Hole { .. })
}

/// The pieces of `[offset, offset + len)`: data runs and holes, merged.
fn pieces(
    conn_disk: &qcow_std::Disk,
    offset: u64,
    len: u64,
) -> Result<Vec<Piece>, qcow_std::Error> {
    let mut v: Vec<Piece> = Vec::new();
    let mut at = 0u64;
    while at < len {
        let s = conn_disk.block_status(offset + at, len - at)?;
        let n = s.len.clamp(1, len - at);
        let zero = is_zero(&s.kind);
        match (v.last_mut(), zero) {
            (Some(Piece::Data { len: l, .. }), false) => *l += n as usize,
            (Some(Piece::Hole { len: l, .. }), true) => *l += n as u32,
            (_, false) => v.push(Piece::Data {
                offset: at,
                len: n as usize,
            }),
            (_, true) => v.push(Piece::Hole {
                offset: at,
                len: n as u32,
            }),
        }
        at += n;
    }
    Ok(v)
}

fn read<W: Write>(conn: &Conn<'_, W>, req: &Request) {
    let disk = &conn.export.disk;
    let len = req.len as usize;
    let mut buf = vec![0u8; len];
    if !conn.session.structured {
        return match disk.read_at(req.offset, &mut buf) {
            Ok(()) => conn.send(&[&proto::simple_reply(0, req.handle), &buf]),
            Err(e) => conn.error(req, errno_of(e), "read failed"),
        };
    }
    let pieces = if req.flags & cflag::DF != 0 || len == 0 {
        vec![Piece::Data { offset: 0, len }]
    } else {
        match pieces(disk, req.offset, u64::from(req.len)) {
            Ok(p) => p,
            Err(e) => return conn.error(req, errno_of(e), "block status failed"),
        }
    };
    for p in &pieces {
        if let Piece::Data { offset, len } = *p {
            let at = offset as usize;
            let Some(dst) = buf.get_mut(at..at + len) else {
                return conn.error(req, errno::EIO, "internal error");
            };
            if let Err(e) = disk.read_at(req.offset + offset, dst) {
                return conn.error(req, errno_of(e), "read failed");
            }
        }
    }
    let mut headers: Vec<Vec<u8>> = Vec::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() {
            chunk::FLAG_DONE
        } else {
            0
        };
        headers.push(match *p {
            Piece::Data { offset, len } => {
                proto::data_chunk_header(flags, req.handle, req.offset + offset, len as u32)
            }
            Piece::Hole { offset, len } => {
                proto::hole_chunk(flags, req.handle, req.offset + offset, len)
            }
        });
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(pieces.len() * 2);
    for (h, p) in headers.iter().zip(&pieces) {
        parts.push(h);
        if let Piece::Data { offset, len } = *p {
            parts.push(
                buf.get(offset as usize..offset as usize + len)
                    .unwrap_or_default(),
            );
        }
    }
    conn.send(&parts);
}

/// The value of `ctx` for a status.
fn context_flags(ctx: Context, s: &qcow_core::Status) -> u32 {
    match ctx {
        Context::BaseAllocation if is_zero(&s.kind) => proto::STATE_HOLE | proto::STATE_ZERO,
        Context::BaseAllocation => 0,
        Context::AllocationDepth => match s.kind {
            StatusKind::Unallocated => 0,
            _ => s.depth.saturating_add(1),
        },
    }
}

fn block_status<W: Write>(conn: &Conn<'_, W>, req: &Request) {
    let disk = &conn.export.disk;
    let ctxs = &conn.session.contexts;
    let one = req.flags & cflag::REQ_ONE != 0;
    let mut lists: Vec<Vec<(u32, u32)>> = vec![Vec::new(); ctxs.len()];
    let len = u64::from(req.len);
    let mut at = 0u64;
    for _ in 0..MAX_QUERIES {
        if at >= len {
            break;
        }
        let s = match disk.block_status(req.offset + at, len - at) {
            Ok(s) => s,
            Err(e) => return conn.error(req, errno_of(e), "block status failed"),
        };
        let n = s.len.clamp(1, len - at) as u32;
        let mut full = false;
        for (c, list) in ctxs.iter().zip(lists.iter_mut()) {
            let f = context_flags(*c, &s);
            match list.last_mut() {
                Some((l, lf)) if *lf == f => *l += n,
                _ => list.push((n, f)),
            }
            full |= list.len() > if one { 1 } else { MAX_EXTENTS };
        }
        at += u64::from(n);
        if full {
            break;
        }
    }
    let limit = if one { 1 } else { MAX_EXTENTS };
    let mut parts = Vec::with_capacity(ctxs.len());
    for (i, (c, list)) in ctxs.iter().zip(lists.iter()).enumerate() {
        let flags = if i + 1 == ctxs.len() {
            chunk::FLAG_DONE
        } else {
            0
        };
        let ext = list.get(..list.len().min(limit)).unwrap_or_default();
        parts.push(proto::block_status_chunk(flags, req.handle, c.id(), ext));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    conn.send(&refs);
}
