//! Serving one connection: the handshake, then pipelined transmission.
//!
//! A reader (the calling thread) parses requests and hands them to a small pool of
//! workers that do the disk I/O on the shared [`Disk`]; replies are written whole
//! under a lock on the writer, in completion order. Memory per connection is bounded:
//! each request carries at most [`MAX_REQUEST`] bytes and the bytes in flight are
//! capped at [`MAX_IN_FLIGHT`].

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex, RwLock};

use qcow_std::Disk;

use crate::proto::{self, cmd, errno, opt, rep, tflag, Context, Request};

/// The largest READ or WRITE payload accepted (as qemu-nbd: 32 MiB).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Payload bytes in flight on one connection at most.
pub const MAX_IN_FLIGHT: u64 = 64 << 20;
/// The largest option data accepted; a longer option closes the connection.
pub const MAX_OPTION: u32 = 64 << 10;
/// Worker threads per connection.
const WORKERS: usize = 8;
/// Requests queued per connection at most (beyond the budget in bytes).
const QUEUE: usize = 64;

/// What is served: a disk under a name.
#[derive(Debug)]
pub struct Export {
    /// The disk (read-only exports open it read-only).
    pub disk: Disk,
    /// Export name clients must ask for.
    pub name: String,
    /// Free text shown by `nbdinfo`.
    pub description: String,
    /// Whether to advertise `CAN_MULTI_CONN` (true unless the server accepts only
    /// one client: clients like nbdcopy then open several connections).
    pub multi_conn: bool,
    gate: RwLock<()>,
    stopped: AtomicBool,
}

impl Export {
    /// An export of `disk` named `name`; read-only when the disk is.
    pub fn new(disk: Disk, name: impl Into<String>, description: impl Into<String>) -> Self {
        Export {
            disk,
            name: name.into(),
            description: description.into(),
            multi_conn: true,
            gate: RwLock::new(()),
            stopped: AtomicBool::new(false),
        }
    }

    /// Whether clients may only read.
    pub fn read_only(&self) -> bool {
        !self.disk.is_writable()
    }

    /// The transmission flags.
    pub fn flags(&self) -> u16 {
        let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_DF | tflag::SEND_CACHE;
        if self.multi_conn {
            // One Disk serves every connection: what one writes, all see.
            f |= tflag::CAN_MULTI_CONN;
        }
        if self.read_only() {
            f |= tflag::READ_ONLY;
        } else {
            f |= tflag::SEND_FUA
                | tflag::SEND_TRIM
                | tflag::SEND_WRITE_ZEROES
                | tflag::SEND_FAST_ZERO;
        }
        f
    }

    /// Stops serving: waits for the requests in flight on every connection, makes
    /// later ones fail with `ESHUTDOWN`, and flushes the disk.
    pub fn shutdown(&self) -> Result<(), qcow_std::Error> {
        {
            let _all = self.gate.write().unwrap_or_else(|e| e.into_inner());
            self.stopped.store(true, Ordering::SeqCst);
        }
        self.disk.flush()
    }
}

/// What the handshake settled.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The meta contexts selected for BLOCK_STATUS.
    pub contexts: Vec<Context>,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Serves one connection from handshake to disconnect. Returns `Ok` when the client
/// leaves (DISC, ABORT, or closing the connection), an error when it broke the
/// protocol or the connection failed.
pub fn serve<R: Read, W: Write + Send>(mut r: R, mut w: W, export: &Export) -> io::Result<()> {
    match handshake(&mut r, &mut w, export)? {
        Some(s) => transmit(r, w, export, &s),
        None => Ok(()),
    }
}

fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the handshake: `Some(session)` to go on to transmission, `None` when the
/// client aborted or left.
pub fn handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    export: &Export,
) -> io::Result<Option<Session>> {
    w.write_all(&proto::greeting())?;
    w.flush()?;
    let mut cf = [0u8; 4];
    if !read_exact_or_eof(r, &mut cf)? {
        return Ok(None);
    }
    let client = proto::parse_client_flags(&cf).ok_or_else(|| invalid("unknown client flags"))?;
    let no_zeroes = client & proto::CLIENT_NO_ZEROES != 0;
    let mut s = Session::default();
    loop {
        let mut h = [0u8; proto::OPTION_HEADER_LEN];
        if !read_exact_or_eof(r, &mut h)? {
            return Ok(None);
        }
        let h = proto::parse_option_header(&h).ok_or_else(|| invalid("bad option magic"))?;
        if h.len > MAX_OPTION {
            return Err(invalid("option too long"));
        }
        let mut data = vec![0u8; h.len as usize];
        if !read_exact_or_eof(r, &mut data)? {
            return Ok(None);
        }
        match option(w, export, &mut s, h.option, &data, no_zeroes)? {
            Step::More => w.flush()?,
            Step::Go => {
                w.flush()?;
                return Ok(Some(s));
            }
            Step::Quit => {
                w.flush()?;
                return Ok(None);
            }
        }
    }
}

enum Step {
    More,
    Go,
    Quit,
}

fn option<W: Write>(
    w: &mut W,
    export: &Export,
    s: &mut Session,
    o: u32,
    data: &[u8],
    no_zeroes: bool,
) -> io::Result<Step> {
    let reply = |w: &mut W, kind: u32, d: &[u8]| w.write_all(&proto::option_reply(o, kind, d));
    match o {
        opt::EXPORT_NAME => {
            if data != export.name.as_bytes() {
                return Err(invalid("unknown export"));
            }
            w.write_all(&proto::export_name_reply(
                export.disk.size(),
                export.flags(),
                no_zeroes,
            ))?;
            return Ok(Step::Go);
        }
        opt::ABORT => {
            reply(w, rep::ACK, &[])?;
            return Ok(Step::Quit);
        }
        opt::LIST if !data.is_empty() => reply(w, rep::ERR_INVALID, &[])?,
        opt::LIST => {
            let mut d = (export.name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(export.name.as_bytes());
            d.extend_from_slice(export.description.as_bytes());
            reply(w, rep::SERVER, &d)?;
            reply(w, rep::ACK, &[])?;
        }
        opt::INFO | opt::GO => return info(w, export, o, data),
        opt::STRUCTURED_REPLY if !data.is_empty() => reply(w, rep::ERR_INVALID, &[])?,
        opt::STRUCTURED_REPLY => {
            s.structured = true;
            reply(w, rep::ACK, &[])?;
        }
        opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => meta(w, export, s, o, data)?,
        _ => reply(w, rep::ERR_UNSUP, &[])?,
    }
    Ok(Step::More)
}

fn info<W: Write>(w: &mut W, export: &Export, o: u32, data: &[u8]) -> io::Result<Step> {
    let Some((name, reqs)) = proto::parse_info_request(data) else {
        w.write_all(&proto::option_reply(o, rep::ERR_INVALID, &[]))?;
        return Ok(Step::More);
    };
    if name != export.name.as_bytes() {
        w.write_all(&proto::option_reply(o, rep::ERR_UNKNOWN, &[]))?;
        return Ok(Step::More);
    }
    let info = |w: &mut W, d: Vec<u8>| w.write_all(&proto::option_reply(o, rep::INFO, &d));
    for kind in [
        proto::info::NAME,
        proto::info::DESCRIPTION,
        proto::info::BLOCK_SIZE,
    ] {
        if !reqs.contains(&kind) {
            continue;
        }
        match kind {
            proto::info::NAME => info(w, proto::info_string(kind, &export.name))?,
            proto::info::DESCRIPTION => info(w, proto::info_string(kind, &export.description))?,
            _ => info(w, proto::info_block_size(1, 4096, MAX_REQUEST))?,
        }
    }
    info(w, proto::info_export(export.disk.size(), export.flags()))?;
    w.write_all(&proto::option_reply(o, rep::ACK, &[]))?;
    Ok(if o == opt::GO { Step::Go } else { Step::More })
}

fn meta<W: Write>(
    w: &mut W,
    export: &Export,
    s: &mut Session,
    o: u32,
    data: &[u8],
) -> io::Result<()> {
    let set = o == opt::SET_META_CONTEXT;
    let reply = |w: &mut W, kind: u32, d: &[u8]| w.write_all(&proto::option_reply(o, kind, d));
    let Some((name, queries)) = proto::parse_meta_request(data) else {
        return reply(w, rep::ERR_INVALID, &[]);
    };
    if set && !s.structured {
        return reply(w, rep::ERR_INVALID, &[]);
    }
    if name != export.name.as_bytes() {
        return reply(w, rep::ERR_UNKNOWN, &[]);
    }
    let mut found: Vec<Context> = Vec::new();
    if queries.is_empty() && !set {
        found.extend(Context::ALL);
    }
    for q in queries {
        for c in proto::match_query(q, !set) {
            if !found.contains(&c) {
                found.push(c);
            }
        }
    }
    for c in &found {
        let id = if set { c.id() } else { 0 };
        reply(
            w,
            rep::META_CONTEXT,
            &proto::meta_context_data(id, c.name()),
        )?;
    }
    if set {
        s.contexts = found;
    }
    reply(w, rep::ACK, &[])
}

/// Bytes in flight on one connection, bounded.
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    fn take(&self, n: u64) {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *u + n > MAX_IN_FLIGHT && *u > 0 {
            u = self.freed.wait(u).unwrap_or_else(|e| e.into_inner());
        }
        *u += n;
    }

    fn give(&self, n: u64) {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *u = u.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// One request handed to a worker.
struct Job {
    req: Request,
    payload: Vec<u8>,
    cost: u64,
}

/// What the workers share.
pub(crate) struct Conn<'a, W: Write> {
    pub(crate) export: &'a Export,
    pub(crate) session: &'a Session,
    out: Mutex<io::BufWriter<W>>,
    budget: Budget,
    broken: AtomicBool,
}

impl<W: Write> Conn<'_, W> {
    /// Writes one whole reply (its parts in order) under the lock.
    pub(crate) fn send(&self, parts: &[&[u8]]) {
        let mut w = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let r = parts
            .iter()
            .try_for_each(|p| w.write_all(p))
            .and_then(|()| w.flush());
        if r.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) fn error(&self, req: &Request, e: u32, msg: &str) {
        if self.session.structured {
            self.send(&[&proto::error_chunk(req.handle, e, msg)]);
        } else {
            self.send(&[&proto::simple_reply(e, req.handle)]);
        }
    }

    pub(crate) fn ok(&self, req: &Request) {
        if self.session.structured {
            self.send(&[&proto::done_chunk(req.handle)]);
        } else {
            self.send(&[&proto::simple_reply(0, req.handle)]);
        }
    }
}

/// Serves requests after the handshake until the client disconnects.
pub fn transmit<R: Read, W: Write + Send>(
    r: R,
    w: W,
    export: &Export,
    session: &Session,
) -> io::Result<()> {
    let conn = Conn {
        export,
        session,
        out: Mutex::new(io::BufWriter::with_capacity(256 << 10, w)),
        budget: Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
        },
        broken: AtomicBool::new(false),
    };
    let (tx, rx) = sync_channel::<Job>(QUEUE);
    let rx = Mutex::new(rx);
    std::thread::scope(|sc| {
        for _ in 0..WORKERS {
            sc.spawn(|| worker(&conn, &rx));
        }
        let res = read_requests(r, &conn, tx);
        // Dropping the sender (in read_requests) ends the workers once the queue is
        // drained; the scope waits for them, so every reply is written.
        res
    })
}

fn worker<W: Write>(conn: &Conn<'_, W>, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { return };
        if !conn.broken.load(Ordering::SeqCst) {
            let _g = conn.export.gate.read().unwrap_or_else(|e| e.into_inner());
            if conn.export.stopped.load(Ordering::SeqCst) {
                conn.error(&job.req, errno::ESHUTDOWN, "server is shutting down");
            } else {
                crate::ops::execute(conn, &job.req, &job.payload);
            }
        }
        conn.budget.give(job.cost);
    }
}

fn read_requests<R: Read, W: Write>(
    mut r: R,
    conn: &Conn<'_, W>,
    tx: SyncSender<Job>,
) -> io::Result<()> {
    loop {
        if conn.broken.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "client went away",
            ));
        }
        let mut h = [0u8; proto::REQUEST_LEN];
        if !read_exact_or_eof(&mut r, &mut h)? {
            return Ok(());
        }
        let req = proto::parse_request(&h).ok_or_else(|| invalid("bad request magic"))?;
        if req.kind == cmd::DISC {
            return Ok(());
        }
        let mut payload = Vec::new();
        let mut cost = 0u64;
        if req.kind == cmd::WRITE {
            if req.len > MAX_REQUEST {
                conn.error(&req, errno::EINVAL, "write longer than 32 MiB");
                return Err(invalid("write longer than the maximum"));
            }
            cost = u64::from(req.len);
            conn.budget.take(cost);
            payload = vec![0u8; req.len as usize];
            if !read_exact_or_eof(&mut r, &mut payload)? {
                conn.budget.give(cost);
                return Ok(());
            }
        } else if req.kind == cmd::READ {
            cost = u64::from(req.len.min(MAX_REQUEST));
            conn.budget.take(cost);
        }
        if tx.send(Job { req, payload, cost }).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn export() -> Export {
        let storage = qcow_std::ReadWriteSeek::new(io::Cursor::new(vec![0u8; 1 << 16]));
        let disk = Disk::options()
            .writable(true)
            .format(Some(qcow_std::Format::Raw))
            .open_storage(Arc::new(storage), "t.raw")
            .unwrap();
        disk.write_at(0, &[7u8; 4096]).unwrap();
        Export::new(disk, "", "test")
    }

    fn opt(o: u32, d: &[u8]) -> Vec<u8> {
        let mut v = b"IHAVEOPT".to_vec();
        v.extend_from_slice(&o.to_be_bytes());
        v.extend_from_slice(&(d.len() as u32).to_be_bytes());
        v.extend_from_slice(d);
        v
    }

    #[test]
    fn structured_read_over_a_byte_stream() {
        let e = export();
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(opt(opt::STRUCTURED_REPLY, &[]));
        input.extend(opt(opt::GO, &[0, 0, 0, 0, 0, 0]));
        let r = Request {
            flags: 0,
            kind: cmd::READ,
            handle: 5,
            offset: 0,
            len: 1024,
        };
        input.extend(proto::encode_request(&r));
        let mut out = Vec::new();
        serve(io::Cursor::new(input), &mut out, &e).unwrap();
        assert_eq!(&out[..16], b"NBDMAGICIHAVEOPT");
        let mut at = 18;
        // STRUCTURED_REPLY's ACK, GO's INFO_EXPORT and ACK.
        for want in [rep::ACK, rep::INFO, rep::ACK] {
            let kind = u32::from_be_bytes(out[at + 12..at + 16].try_into().unwrap());
            let len = u32::from_be_bytes(out[at + 16..at + 20].try_into().unwrap());
            assert_eq!(kind, want);
            at += 20 + len as usize;
        }
        let c = &out[at..];
        assert_eq!(&c[..4], &proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(u16::from_be_bytes([c[4], c[5]]), proto::chunk::FLAG_DONE);
        assert_eq!(u16::from_be_bytes([c[6], c[7]]), proto::chunk::OFFSET_DATA);
        assert_eq!(u64::from_be_bytes(c[8..16].try_into().unwrap()), 5);
        assert_eq!(&c[20..28], &0u64.to_be_bytes());
        assert_eq!(&c[28..], &[7u8; 1024][..]);
    }
}
