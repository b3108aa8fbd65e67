//! `\qcow-uefi.txt`: the images to read, one per line, `IMAGE [SECRET-FILE]`.

/// The list's path on the boot volume.
pub const PATH: &[u8] = b"qcow-uefi.txt";

/// One line of the list.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// An image, and the file holding its password when it is encrypted.
    Image {
        /// The image's path on the volume.
        image: &'a [u8],
        /// The password file's path.
        secret: Option<&'a [u8]>,
    },
    /// A line with more than two fields.
    Malformed(&'a [u8]),
}

/// The lines that name something: blank lines and `#` comments are skipped.
pub fn lines(text: &[u8]) -> impl Iterator<Item = Line<'_>> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let line = match line.iter().position(|&b| b == b'#') {
            Some(hash) => line.get(..hash).unwrap_or_default(),
            None => line,
        };
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let image = fields.next()?;
        let secret = fields.next();
        Some(match fields.next() {
            None => Line::Image { image, secret },
            Some(_) => Line::Malformed(line.trim_ascii()),
        })
    })
}
