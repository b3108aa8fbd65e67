//! The CRC-32 of zlib's `crc32` (IEEE 802.3, reflected polynomial 0xEDB88320).

/// The lookup table, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A running CRC-32.
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    /// The CRC of nothing so far.
    pub const fn new() -> Self {
        Crc32(!0)
    }

    /// Feeds `data` in.
    pub const fn update(mut self, data: &[u8]) -> Self {
        let mut i = 0;
        while i < data.len() {
            self.0 = TABLE[((self.0 ^ data[i] as u32) & 0xff) as usize] ^ (self.0 >> 8);
            i += 1;
        }
        self
    }

    /// The CRC of everything fed in.
    pub const fn finish(self) -> u32 {
        !self.0
    }
}

/// The CRC-32 of `data`.
pub const fn crc32(data: &[u8]) -> u32 {
    Crc32::new().update(data).finish()
}

// The standard check value, verified at compile time.
const _: () = assert!(crc32(b"123456789") == 0xCBF4_3926);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        // In pieces, as a disk is read.
        let c = Crc32::new().update(b"1234").update(b"").update(b"56789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }
}
