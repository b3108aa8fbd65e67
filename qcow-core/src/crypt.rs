//! QEMU's legacy qcow encryption: AES-128-CBC per 512-byte sector, IV "plain64".
//!
//! As `crypto/block-qcow.c`: the secret must be valid UTF-8 without NUL bytes; its
//! first 16 bytes (zero-padded when shorter) are the key. The IV of a sector is its
//! guest sector number, little-endian, zero-padded to 16 bytes. The format has no key
//! check: a wrong password reads as garbage, it cannot be detected.

use aes::cipher::{
    block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::Aes128;
use zeroize::Zeroizing;

/// Bytes per encrypted sector.
pub const SECTOR: usize = 512;

/// The expanded key. `aes` zeroizes its round keys on drop (its `zeroize` feature).
#[derive(Clone)]
pub struct Cipher {
    aes: Aes128,
}

impl core::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// The secret is refused (QEMU: "Data from secret … is not valid UTF-8").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretNotUtf8;

fn iv(sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    if let Some(d) = iv.get_mut(..8) {
        d.copy_from_slice(&sector.to_le_bytes());
    }
    iv
}

impl Cipher {
    /// The cipher for a secret, exactly as QEMU derives it.
    pub fn from_secret(secret: &[u8]) -> Result<Self, SecretNotUtf8> {
        if core::str::from_utf8(secret).is_err() || secret.contains(&0) {
            return Err(SecretNotUtf8);
        }
        let mut key = Zeroizing::new([0u8; 16]);
        let n = secret.len().min(16);
        if let (Some(d), Some(s)) = (key.get_mut(..n), secret.get(..n)) {
            d.copy_from_slice(s);
        }
        let aes = Aes128::new_from_slice(&key[..]).map_err(|_| SecretNotUtf8)?;
        Ok(Cipher { aes })
    }

    /// Decrypts whole sectors in place; `first_sector` is the guest sector number of
    /// `buf[0]`. A trailing partial sector is left as is (callers pass whole sectors).
    pub fn decrypt(&self, first_sector: u64, buf: &mut [u8]) {
        let mut sector = first_sector;
        for chunk in buf.chunks_exact_mut(SECTOR) {
            let iv = iv(sector);
            let d = cbc::Decryptor::<Aes128>::inner_iv_init(self.aes.clone(), &iv.into());
            let _ = d.decrypt_padded_mut::<NoPadding>(chunk);
            sector = sector.wrapping_add(1);
        }
    }

    /// Encrypts whole sectors in place, as [`Cipher::decrypt`].
    pub fn encrypt(&self, first_sector: u64, buf: &mut [u8]) {
        let mut sector = first_sector;
        for chunk in buf.chunks_exact_mut(SECTOR) {
            let iv = iv(sector);
            let e = cbc::Encryptor::<Aes128>::inner_iv_init(self.aes.clone(), &iv.into());
            let _ = e.encrypt_padded_mut::<NoPadding>(chunk, SECTOR);
            sector = sector.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        assert!(Cipher::from_secret(b"a\0b").is_err());
        assert!(Cipher::from_secret(&[0xff, 0xfe]).is_err());
        assert!(Cipher::from_secret(b"a-secret-longer-than-16").is_ok());
    }

    #[test]
    fn roundtrip() {
        let c = Cipher::from_secret(b"pw").unwrap_or_else(|_| unreachable!());
        let mut buf = [7u8; 1024];
        c.encrypt(5, &mut buf);
        assert_ne!(buf[..512], [7u8; 512]);
        c.decrypt(5, &mut buf);
        assert_eq!(buf, [7u8; 1024]);
    }
}
