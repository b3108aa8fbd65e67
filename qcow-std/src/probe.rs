//! Which format a file is, from its signature: qcow version 1, another image format
//! QEMU knows (refused by name: reading it as raw would show its container bytes as
//! the guest disk), or raw.
//!
//! [`detect`] is a pure function over the file's first [`HEAD_LEN`] bytes and its
//! last [`TAIL_LEN`] (a fixed VHD's footer); [`probe_io`] reads them from a
//! [`BlockIo`]. The signatures are those QEMU's drivers probe for (`block/*.c`), read
//! as QEMU reads them: the first 512 bytes, missing bytes as zeros. One addition: a
//! `conectix` footer at the end (a fixed VHD), which QEMU's `vpc` probe does not
//! look for (it reads such a file as raw).
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]

use std::fmt;

use qcow_core::header::{MAGIC, VERSION};
use qcow_core::BlockIo;

/// Bytes read from the start of a file (QEMU's `BLOCK_PROBE_BUF_SIZE`).
pub const HEAD_LEN: usize = 512;
/// Bytes read from the end of a file: a VHD footer.
pub const TAIL_LEN: usize = 512;

/// What a file's signature says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// QEMU's qcow, version 1.
    Qcow,
    /// No signature we know: a plain disk image.
    Raw,
    /// Another image format.
    Foreign(Foreign),
}

/// An image format other than qcow version 1, as QEMU's drivers recognise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Foreign {
    /// The qcow magic (`QFI\xfb`) with a version other than 1: qcow2 is 2 or 3.
    Qcow2 {
        /// The version field.
        version: u32,
    },
    /// A VMDK sparse extent (`KDMV`, or VMware 3's `COWD`).
    Vmdk,
    /// A VMDK text descriptor (`version=1`, 2 or 3 after comment lines).
    VmdkDescriptor,
    /// A VirtualBox disk image (signature `0xbeda107f` at 64).
    Vdi,
    /// A VHD (QEMU's `vpc`): `conectix` at the start (dynamic) or in the footer (fixed).
    Vhd,
    /// A VHDX image (`vhdxfile`).
    Vhdx,
    /// A QED image (`QED\0`).
    Qed,
    /// A LUKS volume (`LUKS\xba\xbe`).
    Luks {
        /// The LUKS version field.
        version: u16,
    },
    /// A Bochs growing redolog image.
    Bochs,
    /// A compressed loop image (cloop V2.0).
    Cloop,
    /// A Parallels image (`WithoutFreeSpace` or `WithouFreSpacExt`, version 2).
    Parallels,
}

impl Foreign {
    /// QEMU's name for the format (`qemu-img -f NAME`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Foreign::Qcow2 { .. } => "qcow2",
            Foreign::Vmdk | Foreign::VmdkDescriptor => "vmdk",
            Foreign::Vdi => "vdi",
            Foreign::Vhd => "vpc",
            Foreign::Vhdx => "vhdx",
            Foreign::Qed => "qed",
            Foreign::Luks { .. } => "luks",
            Foreign::Bochs => "bochs",
            Foreign::Cloop => "cloop",
            Foreign::Parallels => "parallels",
        }
    }
}

/// The format with its article: `a qcow2 image (version 3)`.
impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Foreign::Qcow2 {
                version: v @ (2 | 3),
            } => write!(f, "a qcow2 image (version {v})"),
            Foreign::Qcow2 { version } => {
                write!(f, "an image with the qcow magic and version {version}")
            }
            Foreign::Vmdk => f.write_str("a VMDK image"),
            Foreign::VmdkDescriptor => f.write_str("a VMDK descriptor"),
            Foreign::Vdi => f.write_str("a VDI image"),
            Foreign::Vhd => f.write_str("a VHD image"),
            Foreign::Vhdx => f.write_str("a VHDX image"),
            Foreign::Qed => f.write_str("a QED image"),
            Foreign::Luks { version } => write!(f, "a LUKS image (version {version})"),
            Foreign::Bochs => f.write_str("a Bochs image"),
            Foreign::Cloop => f.write_str("a cloop image"),
            Foreign::Parallels => f.write_str("a Parallels image"),
        }
    }
}

const CLOOP_MAGIC: &[u8] = b"#!/bin/sh\n#V2.0 Format\n\
modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

/// What `head` (the file's first bytes, up to [`HEAD_LEN`]; fewer when the file is
/// shorter) and `tail` (its last [`TAIL_LEN`] bytes; fewer or none when shorter) say
/// the file is.
pub fn detect(head: &[u8], tail: &[u8]) -> Detected {
    let version = head.get(4..).and_then(|v| v.first_chunk::<4>());
    if let (Some(magic), Some(version)) = (head.first_chunk::<4>(), version) {
        if *magic == MAGIC.to_be_bytes() {
            let version = u32::from_be_bytes(*version);
            return if version == VERSION {
                Detected::Qcow
            } else {
                Detected::Foreign(Foreign::Qcow2 { version })
            };
        }
    }
    // As QEMU: a 512-byte buffer, zeros past the end of a shorter file.
    let mut b = [0u8; HEAD_LEN];
    b.iter_mut().zip(head).for_each(|(d, s)| *d = *s);
    let footer = tail
        .len()
        .checked_sub(TAIL_LEN)
        .and_then(|start| tail.get(start..));
    match signature(&b) {
        Some(f) => Detected::Foreign(f),
        None if footer.is_some_and(|t| t.starts_with(b"conectix")) => {
            Detected::Foreign(Foreign::Vhd)
        }
        None => Detected::Raw,
    }
}

/// The little-endian u32 at `at`.
fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..)?.first_chunk().map(|x| u32::from_le_bytes(*x))
}

/// True when `b` holds `sig` at `at`.
fn has(b: &[u8], at: usize, sig: &[u8]) -> bool {
    b.get(at..).is_some_and(|s| s.starts_with(sig))
}

/// The foreign signature at the start of the file, if any (the buffer is 512 bytes).
fn signature(b: &[u8; HEAD_LEN]) -> Option<Foreign> {
    let f = if has(b, 0, b"KDMV") || has(b, 0, b"COWD") {
        Foreign::Vmdk
    } else if has(b, 0, b"vhdxfile") {
        Foreign::Vhdx
    } else if has(b, 0, b"conectix") {
        Foreign::Vhd
    } else if has(b, 0, b"QED\0") {
        Foreign::Qed
    } else if has(b, 0, b"LUKS\xba\xbe") {
        let v = b.get(6..).and_then(|s| s.first_chunk::<2>());
        Foreign::Luks {
            version: v.map_or(0, |v| u16::from_be_bytes(*v)),
        }
    } else if le32(b, 0x40) == Some(0xbeda_107f) {
        Foreign::Vdi
    } else if bochs(b) {
        Foreign::Bochs
    } else if (has(b, 0, b"WithoutFreeSpace") || has(b, 0, b"WithouFreSpacExt"))
        && le32(b, 16) == Some(2)
    {
        Foreign::Parallels
    } else if has(b, 0, CLOOP_MAGIC) {
        Foreign::Cloop
    } else if vmdk_descriptor(b) {
        Foreign::VmdkDescriptor
    } else {
        return None;
    };
    Some(f)
}

/// QEMU's `bochs_probe`: NUL-terminated magic, type and subtype; version 1 or 2.
fn bochs(b: &[u8]) -> bool {
    has(b, 0, b"Bochs Virtual HD Image\0")
        && has(b, 32, b"Redolog\0")
        && has(b, 48, b"Growing\0")
        && matches!(le32(b, 64), Some(0x0002_0000 | 0x0001_0000))
}

/// QEMU's `vmdk_probe` for a text descriptor: comment lines and blank lines (spaces,
/// an optional `\r`), then `version=1`, `2` or `3` ending the line.
fn vmdk_descriptor(b: &[u8]) -> bool {
    let mut rest = b;
    while let Some(&c) = rest.first() {
        match c {
            b'#' => {
                rest = match rest.iter().position(|&x| x == b'\n') {
                    Some(nl) => rest.get(nl..).and_then(|r| r.get(1..)).unwrap_or(&[]),
                    None => &[],
                }
            }
            b' ' => {
                let spaces = rest.iter().take_while(|&&x| x == b' ').count();
                let line = rest.get(spaces..).unwrap_or(&[]);
                let line = line.strip_prefix(b"\r").unwrap_or(line);
                match line.strip_prefix(b"\n") {
                    Some(r) => rest = r,
                    None => return false,
                }
            }
            _ => {
                return [b'1', b'2', b'3'].iter().any(|&v| {
                    let line = rest
                        .strip_prefix(b"version=")
                        .and_then(|r| r.strip_prefix(&[v]));
                    line.is_some_and(|l| l.starts_with(b"\n") || l.starts_with(b"\r\n"))
                })
            }
        }
    }
    false
}

/// Reads a device's first [`HEAD_LEN`] and last [`TAIL_LEN`] bytes and [`detect`]s
/// its format.
pub fn probe_io<B: BlockIo>(io: &mut B) -> Result<Detected, B::Error> {
    let len = io.len()?;
    let mut head = [0u8; HEAD_LEN];
    let n = usize::try_from(len).map_or(HEAD_LEN, |l| l.min(HEAD_LEN));
    let head = head.get_mut(..n).unwrap_or_default();
    io.read_at(0, head)?;
    let mut tail = [0u8; TAIL_LEN];
    let tail: &[u8] = match len.checked_sub(TAIL_LEN as u64) {
        Some(at) => {
            io.read_at(at, &mut tail)?;
            &tail
        }
        None => &[],
    };
    Ok(detect(head, tail))
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]
mod tests {
    use super::*;

    fn head(parts: &[(usize, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; HEAD_LEN];
        for (at, bytes) in parts {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        b
    }

    fn foreign(head: &[u8]) -> Option<Foreign> {
        match detect(head, &[]) {
            Detected::Foreign(f) => Some(f),
            _ => None,
        }
    }

    #[test]
    fn qcow_versions() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x01", &[]), Detected::Qcow);
        assert_eq!(
            foreign(b"QFI\xfb\0\0\0\x03"),
            Some(Foreign::Qcow2 { version: 3 })
        );
        assert_eq!(
            foreign(b"QFI\xfb\0\0\0\x02rest"),
            Some(Foreign::Qcow2 { version: 2 })
        );
        // Too short to hold a version: raw, as before.
        assert_eq!(detect(b"QFI\xfb\0\0\0", &[]), Detected::Raw);
        assert_eq!(detect(b"", &[]), Detected::Raw);
        assert_eq!(
            Foreign::Qcow2 { version: 3 }.to_string(),
            "a qcow2 image (version 3)"
        );
        assert_eq!(
            Foreign::Qcow2 { version: 9 }.to_string(),
            "an image with the qcow magic and version 9"
        );
    }

    #[test]
    fn simple_magics() {
        for (magic, want) in [
            (&b"KDMV\x01\0\0\0"[..], Foreign::Vmdk),
            (b"COWD", Foreign::Vmdk),
            (b"vhdxfile", Foreign::Vhdx),
            (b"conectix", Foreign::Vhd),
            (b"QED\0", Foreign::Qed),
            (b"LUKS\xba\xbe\0\x01", Foreign::Luks { version: 1 }),
            (b"LUKS\xba\xbe\0\x02", Foreign::Luks { version: 2 }),
            (CLOOP_MAGIC, Foreign::Cloop),
        ] {
            assert_eq!(foreign(magic), Some(want), "{magic:?}");
            assert_eq!(foreign(&head(&[(0, magic)])), Some(want), "{magic:?}");
        }
        // One byte short of each: raw (missing bytes read as zeros, as in QEMU, so a
        // 3-byte file `QED` is QED's `QED\0`).
        for magic in [&b"vhdxfil"[..], b"conecti", b"QEE", b"LUKS\xba"] {
            assert_eq!(detect(magic, &[]), Detected::Raw, "{magic:?}");
        }
        assert_eq!(detect(&CLOOP_MAGIC[..40], &[]), Detected::Raw);
    }

    #[test]
    fn vdi_bochs_parallels() {
        let vdi = head(&[(0x40, &0xbeda_107fu32.to_le_bytes())]);
        assert_eq!(foreign(&vdi), Some(Foreign::Vdi));
        let bochs = |version: u32, subtype: &[u8]| {
            head(&[
                (0, b"Bochs Virtual HD Image\0"),
                (32, b"Redolog\0"),
                (48, subtype),
                (64, &version.to_le_bytes()),
            ])
        };
        assert_eq!(
            foreign(&bochs(0x2_0000, b"Growing\0")),
            Some(Foreign::Bochs)
        );
        assert_eq!(
            foreign(&bochs(0x1_0000, b"Growing\0")),
            Some(Foreign::Bochs)
        );
        assert_eq!(foreign(&bochs(0x3_0000, b"Growing\0")), None);
        assert_eq!(foreign(&bochs(0x2_0000, b"Undoable\0")), None);
        for magic in [b"WithoutFreeSpace", b"WithouFreSpacExt"] {
            let p = head(&[(0, magic), (16, &2u32.to_le_bytes())]);
            assert_eq!(foreign(&p), Some(Foreign::Parallels));
            let p = head(&[(0, magic), (16, &3u32.to_le_bytes())]);
            assert_eq!(foreign(&p), None);
        }
    }

    #[test]
    fn vmdk_descriptors() {
        for text in [
            &b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n"[..],
            b"version=2\r\n",
            b"# a\n# b\n   \n  \r\nversion=3\n",
        ] {
            assert_eq!(foreign(text), Some(Foreign::VmdkDescriptor), "{text:?}");
        }
        for text in [
            &b"# Disk DescriptorFile\n\nversion=1\n"[..],
            b"version=4\n",
            b"version=1",
            b"  x\nversion=1\n",
            b"# only a comment",
            b"hello world\n",
        ] {
            assert_eq!(detect(text, &[]), Detected::Raw, "{text:?}");
        }
    }

    #[test]
    fn vhd_footer_at_the_end() {
        let mut footer = vec![0u8; TAIL_LEN];
        footer[..8].copy_from_slice(b"conectix");
        assert_eq!(
            detect(&[0u8; HEAD_LEN], &footer),
            Detected::Foreign(Foreign::Vhd)
        );
        // Only a whole 512-byte footer counts.
        assert_eq!(detect(b"x", &footer[..511]), Detected::Raw);
        // A qcow image is qcow, whatever its last sector holds.
        assert_eq!(detect(b"QFI\xfb\0\0\0\x01", &footer), Detected::Qcow);
    }

    #[test]
    fn probe_io_reads_head_and_tail() {
        let mut data = vec![0u8; 4096];
        data[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        let mut io = qcow_core::io::MemIo(data);
        assert_eq!(
            probe_io(&mut io).ok(),
            Some(Detected::Foreign(Foreign::Vhd))
        );
        let mut io = qcow_core::io::MemIo(b"QED\0".to_vec());
        assert_eq!(
            probe_io(&mut io).ok(),
            Some(Detected::Foreign(Foreign::Qed))
        );
        let mut io = qcow_core::io::MemIo(Vec::new());
        assert_eq!(probe_io(&mut io).ok(), Some(Detected::Raw));
    }
}
