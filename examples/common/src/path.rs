//! Paths in fixed buffers, and how a backing file name is resolved.

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
}
