//! The console: UTF-8 text written as UCS-2 lines (CR LF) through the firmware.

use core::fmt;

use crate::efi::System;

/// A line buffer over the firmware's console, for `write!`.
pub struct Console<'a> {
    system: &'a System,
    buf: [u16; 128],
    len: usize,
}

impl<'a> Console<'a> {
    /// The console of `system`.
    pub fn new(system: &'a System) -> Self {
        Console {
            system,
            buf: [0; 128],
            len: 0,
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if let Some(nul) = self.buf.get_mut(self.len) {
            *nul = 0;
            let text = self.buf.get_mut(..=self.len).unwrap_or_default();
            self.system.output(text);
        }
        self.len = 0;
    }

    fn push(&mut self, unit: u16) {
        // Keep room for the NUL.
        if self.len + 1 >= self.buf.len() {
            self.flush();
        }
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = unit;
            self.len += 1;
        }
    }
}

impl fmt::Write for Console<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c == '\n' {
                self.push(u16::from(b'\r'));
                self.push(u16::from(b'\n'));
                self.flush();
                continue;
            }
            // The console takes UCS-2: one unit per character, none past the BMP.
            let mut units = [0u16; 2];
            match c.encode_utf16(&mut units) {
                [unit] => self.push(*unit),
                _ => self.push(0xfffd),
            }
        }
        Ok(())
    }
}

impl Drop for Console<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}
