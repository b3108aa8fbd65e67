//! `qcow nbd`: serve an image over NBD (flags as qemu-nbd's).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use qcow_nbd::Export;
use qcow_std::Format;

use crate::common::{err, open_disk, CliError, VerbResult};

/// Set in the re-executed server of `--fork`: it reports readiness on stdout.
const DAEMON_ENV: &str = "QCOW_NBD_DAEMON";
/// How long a client may take over the handshake (as qemu-nbd's default).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The flags of `qcow nbd` (qemu-nbd's).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Export read-only.
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,
    /// Format (probed when absent).
    #[arg(short = 'f', long = "format")]
    pub format: Option<Format>,
    /// Listen on this unix socket.
    #[arg(short = 'k', long = "socket", conflicts_with = "port")]
    pub socket: Option<PathBuf>,
    /// TCP port.
    #[arg(short = 'p', long = "port", default_value_t = 10809)]
    pub port: u16,
    /// TCP address to listen on.
    #[arg(short = 'b', long = "bind", default_value = "127.0.0.1")]
    pub bind: String,
    /// Export name.
    #[arg(short = 'x', long = "export-name", default_value = "")]
    pub name: String,
    /// Export description.
    #[arg(short = 'D', long = "description", default_value = "")]
    pub description: String,
    /// Keep serving after the last client leaves.
    #[arg(short = 't', long = "persistent")]
    pub persistent: bool,
    /// Clients served at once.
    #[arg(short = 'e', long = "shared", default_value_t = 1)]
    pub shared: usize,
    /// Return once the socket accepts connections; serve in the background.
    #[arg(long)]
    pub fork: bool,
    /// Write the server's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Secret of an encrypted image.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Image file.
    pub file: PathBuf,
}

enum Listener {
    Unix(UnixListener, Option<PathBuf>),
    Tcp(TcpListener),
}

/// Runs `nbd`.
pub fn run(a: &Args) -> VerbResult {
    if a.shared == 0 {
        return Err(err(&a.file, "-e: at least one client is needed"));
    }
    if a.fork && std::env::var_os(DAEMON_ENV).is_none() {
        return fork();
    }
    let disk = open_disk(&a.file, a.format, a.password_file.as_deref(), !a.read_only)?;
    let listener = listen(a)?;
    if let Some(p) = &a.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| err(p, format!("cannot write the pid file: {e}")))?;
    }
    let mut export = Export::new(disk, a.name.clone(), a.description.clone());
    export.multi_conn = a.shared > 1;
    let export = Arc::new(export);
    let socket = match &listener {
        Listener::Unix(_, p) => p.clone(),
        Listener::Tcp(_) => None,
    };
    on_signals(&export, socket.clone())?;
    if std::env::var_os(DAEMON_ENV).is_some() {
        detach();
    }
    serve(listener, &export, a, socket)
}

/// `--fork`: runs this command again as the server and returns once it is ready.
fn fork() -> VerbResult {
    let exe = std::env::current_exe().map_err(|e| CliError::Stream {
        what: "fork",
        source: e,
    })?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(DAEMON_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| CliError::Stream {
                what: "fork",
                source: e,
            })?
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line == "ready\n" {
        return Ok(0);
    }
    // The server failed before serving and said why on stderr.
    let _ = child.wait();
    Ok(1)
}

/// In the `--fork` server: tells the parent it is ready, then lets go of its
/// stdout and stderr.
fn detach() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"ready\n").and_then(|()| out.flush());
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

fn listen(a: &Args) -> Result<Listener, CliError> {
    if let Some(fd) = crate::os::activation_fd() {
        let unix = rustix::net::sockopt::socket_domain(&fd)
            .is_ok_and(|d| d == rustix::net::AddressFamily::UNIX);
        return Ok(if unix {
            Listener::Unix(UnixListener::from(fd), None)
        } else {
            Listener::Tcp(TcpListener::from(fd))
        });
    }
    if let Some(path) = &a.socket {
        // A socket left by an earlier server is replaced, as qemu-nbd does.
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path).map_err(|e| err(path, format!("cannot listen: {e}")))?;
        return Ok(Listener::Unix(l, Some(path.clone())));
    }
    let l = TcpListener::bind((a.bind.as_str(), a.port)).map_err(|e| {
        err(
            std::path::Path::new(&format!("{}:{}", a.bind, a.port)),
            format!("cannot listen: {e}"),
        )
    })?;
    Ok(Listener::Tcp(l))
}

/// Leaves: flushes the disk, removes the socket, exits 0 (or 1 when the flush failed).
fn finish(export: &Export, socket: Option<&Path>) -> ! {
    let r = export.shutdown();
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
    if let Err(e) = r {
        eprintln!("qcow: {e}");
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// SIGTERM and SIGINT: finish what is in flight, flush, exit 0.
fn on_signals(export: &Arc<Export>, socket: Option<PathBuf>) -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| CliError::Stream {
            what: "handle signals",
            source: e,
        })?;
    let export = Arc::clone(export);
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            finish(&export, socket.as_deref());
        }
    });
    Ok(())
}

/// Accepts clients (at most `-e` at once), each on its own thread.
fn serve(l: Listener, export: &Arc<Export>, a: &Args, socket: Option<PathBuf>) -> VerbResult {
    let active = Arc::new((Mutex::new(0usize), Condvar::new()));
    loop {
        {
            let (n, cv) = &*active;
            let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= a.shared {
                n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
            }
        }
        let conn = match &l {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
        };
        let Ok(conn) = conn else { continue };
        *active.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let (export, active, socket) = (Arc::clone(export), Arc::clone(&active), socket.clone());
        let persistent = a.persistent;
        std::thread::spawn(move || {
            let _ = conn.serve(&export);
            let (n, cv) = &*active;
            let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
            *n = n.saturating_sub(1);
            if *n == 0 && !persistent {
                finish(&export, socket.as_deref());
            }
            cv.notify_all();
        });
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn serve(self, export: &Export) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => {
                s.set_read_timeout(Some(HANDSHAKE_LIMIT))?;
                let r = s.try_clone()?;
                session(r, s, export, |s| s.set_read_timeout(None))
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(HANDSHAKE_LIMIT))?;
                let r = s.try_clone()?;
                session(r, s, export, |s| s.set_read_timeout(None))
            }
        }
    }
}

fn session<S: std::io::Read + Write + Send>(
    r: S,
    mut w: S,
    export: &Export,
    untime: impl Fn(&S) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(128 << 10, r);
    let Some(session) = qcow_nbd::handshake(&mut r, &mut w, export)? else {
        return Ok(());
    };
    untime(&w)?;
    qcow_nbd::transmit(r, w, export, &session)
}
