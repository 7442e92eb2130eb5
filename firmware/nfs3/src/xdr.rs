//! XDR (RFC 4506), only what the procedures of this crate need.
//!
//! Every item is a multiple of 4 bytes, big-endian. `opaque<>` and `string<>` are a 4-byte
//! length, the bytes, and zero padding up to the next multiple of 4. Optional data
//! (`*type`, and the linked lists of READDIRPLUS and EXPORT) is a 4-byte boolean followed by
//! the item when it is TRUE.
//!
//! The decoder works on a borrowed reply and never trusts a length: every length is checked
//! against the bytes that are actually left *before* anything is sliced or allocated, so a
//! hostile length costs nothing. Failures are [`XdrError`] values carrying what was being
//! decoded; they never panic.

/// A reply did not decode: truncated, or a length/discriminant out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdrError(pub String);

impl std::fmt::Display for XdrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends XDR items to a byte vector.
#[derive(Debug, Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder { buf: Vec::with_capacity(128) }
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(u32::from(v))
    }
    /// Variable-length `opaque<>` (also `string<>`): length, bytes, padding.
    pub fn opaque(&mut self, v: &[u8]) -> &mut Self {
        // Lengths we send are bounded by the callers (names, handles, paths), never > 4 GiB.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.fixed(v)
    }
    /// Fixed-length `opaque[n]`: bytes and padding, no length.
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        let pad = (4 - v.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }
}

/// Reads XDR items from a borrowed buffer, bounds-checked.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Byte position of the cursor.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], XdrError> {
        if n > self.remaining() {
            return Err(XdrError(format!(
                "reply truncated in {what}: needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, XdrError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, XdrError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A boolean; anything but 0 or 1 is an error (a desynchronised or hostile reply).
    pub fn bool(&mut self, what: &str) -> Result<bool, XdrError> {
        match self.u32(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(XdrError(format!("{what}: boolean with value {v}"))),
        }
    }

    /// `opaque<max>`: the length is checked against `max` and against the bytes left.
    pub fn opaque(&mut self, max: usize, what: &str) -> Result<&'a [u8], XdrError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(XdrError(format!("{what}: length {len} exceeds the limit of {max}")));
        }
        self.fixed(len, what)
    }

    /// `opaque[n]`: `n` bytes plus padding.
    pub fn fixed(&mut self, n: usize, what: &str) -> Result<&'a [u8], XdrError> {
        let padded = n.checked_add(3).map(|v| v & !3).ok_or_else(|| XdrError(format!("{what}: length overflow")))?;
        let s = self.take(padded, what)?;
        Ok(&s[..n])
    }

    /// Skip `n` bytes (already multiple of 4 in all uses).
    pub fn skip(&mut self, n: usize, what: &str) -> Result<(), XdrError> {
        self.take(n, what).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let mut e = Encoder::new();
        e.u32(7).u64(1 << 40).opaque(b"abcde").bool(true);
        assert_eq!(e.buf.len(), 4 + 8 + 4 + 8 + 4);
        let mut d = Decoder::new(&e.buf);
        assert_eq!(d.u32("a").unwrap(), 7);
        assert_eq!(d.u64("b").unwrap(), 1 << 40);
        assert_eq!(d.opaque(16, "c").unwrap(), b"abcde");
        assert!(d.bool("d").unwrap());
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert!(d.opaque(usize::MAX, "x").is_err());
        let mut d = Decoder::new(&[0, 0, 0, 9, 1, 2, 3, 4]);
        assert!(d.opaque(64, "x").is_err());
        let mut d = Decoder::new(&[0, 0, 0, 2]);
        assert!(d.bool("b").is_err());
        let mut d = Decoder::new(&[0, 0]);
        assert!(d.u32("u").is_err());
    }
}
