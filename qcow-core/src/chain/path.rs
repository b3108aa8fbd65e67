//! Paths in fixed buffers, and how a backing file name is resolved (QEMU's
//! `path_combine`).

use core::ffi::CStr;
use core::fmt::{self, Write};

/// Longest path in bytes, terminating NUL included (Linux's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// A path of `/`-separated bytes in a fixed buffer, kept NUL-terminated.
#[derive(Clone)]
pub struct Path {
    buf: [u8; PATH_MAX],
    /// Bytes before the NUL.
    len: usize,
}

impl Path {
    /// `bytes` as a path; `None` when too long or holding a NUL.
    pub fn new(bytes: &[u8]) -> Option<Path> {
        Path::concat(&[bytes])
    }

    /// Concatenates `parts`; `None` when that (and a NUL) exceeds [`PATH_MAX`] or a
    /// part holds a NUL.
    pub fn concat(parts: &[&[u8]]) -> Option<Path> {
        let mut p = Path {
            buf: [0; PATH_MAX],
            len: 0,
        };
        for part in parts {
            if part.contains(&0) {
                return None;
            }
            let end = p.len.checked_add(part.len())?;
            p.buf.get_mut(p.len..end)?.copy_from_slice(part);
            p.len = end;
        }
        // The NUL: the buffer is zeroed, there only has to be room for it.
        (p.len < PATH_MAX).then_some(p)
    }

    /// The path's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The path as a C string.
    pub fn c_str(&self) -> &CStr {
        // concat() keeps the buffer NUL-terminated with no NUL before `len`.
        CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }

    /// The backing file `name` of the image at this path: as it is when absolute,
    /// else relative to this image's directory (as QEMU's `path_combine`). `None` when
    /// the result is too long or `name` holds a NUL.
    pub fn backing(&self, name: &[u8]) -> Option<Path> {
        if name.first() == Some(&b'/') {
            return Path::new(name);
        }
        let dir = match self.bytes().iter().rposition(|&b| b == b'/') {
            Some(slash) => self.bytes().get(..=slash).unwrap_or_default(),
            None => &[],
        };
        Path::concat(&[dir, name])
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Show(self.bytes()).fmt(f)
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Show(self.bytes()), f)
    }
}

/// Bytes of a path a [`Name`] keeps.
const NAME_LEN: usize = 240;

/// A path as messages name it, small enough to carry in an error: the whole path up
/// to 240 bytes, else `...` and its last 240 bytes.
#[derive(Clone)]
pub struct Name {
    buf: [u8; NAME_LEN],
    len: usize,
    cut: bool,
}

impl From<&Path> for Name {
    fn from(path: &Path) -> Self {
        let bytes = path.bytes();
        let tail = bytes
            .get(bytes.len().saturating_sub(NAME_LEN)..)
            .unwrap_or_default();
        let mut name = Name {
            buf: [0; NAME_LEN],
            len: tail.len(),
            cut: tail.len() < bytes.len(),
        };
        if let Some(dst) = name.buf.get_mut(..tail.len()) {
            dst.copy_from_slice(tail);
        }
        name
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cut {
            f.write_str("...")?;
        }
        Show(self.buf.get(..self.len).unwrap_or_default()).fmt(f)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Shows bytes (a path, a name read from a file) as text, invalid UTF-8 as U+FFFD.
pub struct Show<'a>(pub &'a [u8]);

impl fmt::Debug for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::Display::fmt(self, f)?;
        f.write_char('"')
    }
}

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(image: &str, name: &str) -> Option<[u8; 64]> {
        let p = Path::new(image.as_bytes())?.backing(name.as_bytes())?;
        let mut out = [0u8; 64];
        out.get_mut(..p.bytes().len())?.copy_from_slice(p.bytes());
        Some(out)
    }

    fn text(b: &[u8; 64]) -> &str {
        core::str::from_utf8(b).unwrap().trim_end_matches('\0')
    }

    #[test]
    fn backing_names_resolve_as_qemu() {
        let cases = [
            ("top.qcow", "base.qcow", "base.qcow"),
            ("chain/top.qcow", "over.qcow", "chain/over.qcow"),
            ("chain/over.qcow", "../plain.qcow", "chain/../plain.qcow"),
            ("chain/top.qcow", "/abs/base.raw", "/abs/base.raw"),
            ("/a/b/top.qcow", "c/base", "/a/b/c/base"),
        ];
        for (image, name, want) in cases {
            assert_eq!(
                text(&backing(image, name).unwrap()),
                want,
                "{image} + {name}"
            );
        }
    }

    #[test]
    fn too_long_or_nul_is_refused() {
        assert!(Path::new(&[b'a'; PATH_MAX - 1]).is_some());
        assert!(Path::new(&[b'a'; PATH_MAX]).is_none());
        assert!(Path::new(b"a\0b").is_none());
        let long = Path::new(&[b'a'; PATH_MAX - 1]).unwrap();
        assert!(long.backing(b"x").is_some()); // no directory: just the name
        let dir = Path::new(&[b'/'; PATH_MAX - 1]).unwrap();
        assert!(dir.backing(b"x").is_none());
        assert_eq!(long.c_str().to_bytes().len(), PATH_MAX - 1);
    }

    #[test]
    fn names_keep_the_tail() {
        use core::fmt::Write;
        struct Buf([u8; 300], usize);
        impl Write for Buf {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0[self.1..self.1 + s.len()].copy_from_slice(s.as_bytes());
                self.1 += s.len();
                Ok(())
            }
        }
        let mut short = Buf([0; 300], 0);
        write!(short, "{}", Name::from(&Path::new(b"dir/a.qcow").unwrap())).unwrap();
        assert_eq!(&short.0[..short.1], b"dir/a.qcow");
        let mut long = [b'x'; 1000];
        long[..3].copy_from_slice(b"abc");
        long[990..].copy_from_slice(b"/end.qcow\xff");
        let mut out = Buf([0; 300], 0);
        write!(out, "{}", Name::from(&Path::new(&long).unwrap())).unwrap();
        let text = core::str::from_utf8(&out.0[..out.1]).unwrap();
        assert!(
            text.starts_with("...xxx") && text.ends_with("/end.qcow\u{fffd}"),
            "{text}"
        );
        assert_eq!(text.len(), 3 + 239 + 3);
    }
}
