//! Chunk identities.

use std::fmt;

/// The blake3-256 digest of a chunk's uncompressed bytes: its identity in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Stands for an all-zero chunk in a restore point's index. Such chunks are never stored.
    /// No blake3 output is all zeros in practice (2^-256).
    pub const ZERO: Digest = Digest([0; 32]);

    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    pub fn is_zero(&self) -> bool {
        *self == Digest::ZERO
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }

    pub fn from_slice(b: &[u8]) -> Option<Digest> {
        Some(Digest(b.try_into().ok()?))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// True when every byte of `data` is zero. Word-at-a-time so the compiler vectorises it.
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    let body = words.by_ref().all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0);
    body && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_all_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_all_zero(&v));
    }
}
