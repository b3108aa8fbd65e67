//! `qcow mount`: a guest disk and its partitions as files, over FUSE.
//!
//! [`parts`] reads the partition table (a pure function over bytes); [`fs`] is the FUSE
//! file system over a [`qcow_std::Disk`]; [`mount`] puts them together and returns once
//! the kernel has the mount, [`Mounted::run`] serves until it is unmounted.
//!
//! The partition table of a disk (here hand-made bytes; [`table`] reads a [`Disk`]'s):
//!
//! ```
//! let mut disk = vec![0u8; 4 << 20];
//! disk[446 + 4] = 0x83;                                              // Linux
//! disk[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());   // first sector
//! disk[446 + 12..446 + 16].copy_from_slice(&1000u32.to_le_bytes());  // sectors
//! disk[510..512].copy_from_slice(&[0x55, 0xAA]);
//! let t = qcow_mount::parse(&disk[..]);
//! assert_eq!(t.kind, qcow_mount::Kind::Mbr);
//! assert_eq!((t.parts[0].number, t.parts[0].start, t.parts[0].len), (1, 2048 * 512, 1000 * 512));
//! // Then: qcow_mount::mount(disk, files, dir, &options)?.run() (needs /dev/fuse).
//! ```
#![forbid(unsafe_code)]
// No function over 80 lines (the threshold is in the workspace's clippy.toml).
#![deny(clippy::too_many_lines)]

pub mod fs;
pub mod parts;

use std::io;
use std::path::Path;

use fuser::{Config, MountOption, Session, SessionACL};
use qcow_std::Disk;

pub use fs::{DiskFs, Window};
pub use parts::{parse, Kind, Partition, Table};

/// A [`parts::Source`] reading a disk's guest bytes.
struct DiskSource<'a>(&'a Disk);

impl parts::Source for DiskSource<'_> {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.0.size())
            && self.0.read_at(offset, buf).is_ok()
    }
}

/// Reads the partition table of `disk`.
pub fn table(disk: &Disk) -> Table {
    parse(&DiskSource(disk))
}

/// The files of a mount: `disk`, then `p1`, `p2`, ... for the table's partitions.
pub fn windows(disk: &Disk, table: &Table) -> Vec<Window> {
    let whole = Window {
        name: "disk".into(),
        start: 0,
        len: disk.size(),
    };
    let parts = table.parts.iter().map(|p| Window {
        name: format!("p{}", p.number),
        start: p.start,
        len: p.len,
    });
    std::iter::once(whole).chain(parts).collect()
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Allow writes (the disk must be open writable).
    pub writable: bool,
    /// FUSE mount options, as `-o` gives them (`allow_other`, `default_permissions`, ...).
    pub fuse: Vec<String>,
}

/// A live mount; [`Mounted::run`] serves it.
pub struct Mounted {
    session: Session<DiskFs>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mounted")
    }
}

/// Mounts `files` of `disk` on `mountpoint`; when this returns the mount is live
/// (the kernel's handshake is done).
pub fn mount(
    disk: Disk,
    files: Vec<Window>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> io::Result<Mounted> {
    let mut config = Config::default();
    let fsname = disk.path().display().to_string().replace(',', "_");
    config.mount_options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("qcow".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.mount_options.push(if opts.writable {
        MountOption::RW
    } else {
        MountOption::RO
    });
    for o in opts.fuse.iter().flat_map(|o| o.split(',')) {
        match o {
            "" => {}
            "allow_other" => config.acl = SessionACL::All,
            "allow_root" => config.acl = SessionACL::RootAndOwner,
            "auto_unmount" => config.mount_options.push(MountOption::AutoUnmount),
            "default_permissions" => config.mount_options.push(MountOption::DefaultPermissions),
            "ro" if opts.writable => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "-o ro with --rw",
                ))
            }
            "ro" | "rw" if !opts.writable => {}
            "rw" => {}
            other => config.mount_options.push(MountOption::CUSTOM(other.into())),
        }
    }
    config.n_threads = Some(
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8),
    );
    config.clone_fd = true;
    let (uid, gid) = owner();
    let fs = DiskFs::new(disk, files, opts.writable, uid, gid);
    let session = Session::new(fs, mountpoint, &config)?;
    Ok(Mounted { session })
}

impl Mounted {
    /// Serves requests until the file system is unmounted (`fusermount3 -u`, `umount`).
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

/// This process's user and group (the owner of `/proc/self`), for the files' owner.
fn owner() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or((0, 0), |m| (m.uid(), m.gid()))
}
