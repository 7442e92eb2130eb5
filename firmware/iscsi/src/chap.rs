//! CHAP with MD5 (RFC 1994, as used by RFC 7143 §12.1.3) and the secrets it needs.
//!
//! `response = MD5(identifier || secret || challenge)`. Binary values travel as `0x` + hex
//! (we send that form) or `0b` + base64 (we accept both). A [`Secret`] never appears in Debug
//! or Display output and is overwritten with zeros when dropped.

use md5::{Digest, Md5};
use std::fmt;
use std::io::Read;

/// A CHAP secret. Debug/Display print `<redacted>`; the bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(s: impl Into<Vec<u8>>) -> Secret {
        Secret(s.into())
    }
    /// The secret's bytes, for computing a CHAP response only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.as_bytes().to_vec())
    }
}
impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s.into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *b = 0;
        }
        // Keep the zeroing from being optimised away as a dead store.
        std::hint::black_box(&self.0);
    }
}

/// A CHAP user name and secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: Secret,
}

impl Chap {
    pub fn new(user: impl Into<String>, secret: impl Into<Secret>) -> Chap {
        Chap { user: user.into(), secret: secret.into() }
    }
}

/// MD5 CHAP response.
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// `0x` + lowercase hex.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes a CHAP binary value (`0x` hex or `0b` base64), at most 1024 bytes.
pub fn decode_binary(v: &str) -> Result<Vec<u8>, String> {
    const MAX: usize = 1024;
    if v.len() > 2 + 2 * MAX {
        return Err("CHAP value too long".into());
    }
    // Split on bytes: a hostile value may put a multi-byte character where the prefix goes.
    let (prefix, body) = v.as_bytes().split_at(v.len().min(2));
    match prefix {
        b"0x" | b"0X" => {
            // An odd count means a leading zero nibble was left out.
            let mut nibbles: Vec<u8> = Vec::with_capacity(body.len() + 1);
            if body.len() % 2 == 1 {
                nibbles.push(0);
            }
            for &c in body {
                nibbles.push(match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    _ => return Err("CHAP value is not valid hex".into()),
                });
            }
            Ok(nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
        }
        b"0b" | b"0B" => {
            let mut out = Vec::new();
            let mut acc: u32 = 0;
            let mut bits = 0;
            for &c in body {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    b'=' => break,
                    _ => return Err("CHAP value is not valid base64".into()),
                };
                acc = (acc << 6) | v as u32;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                    acc &= (1 << bits) - 1;
                }
            }
            Ok(out)
        }
        _ => Err("CHAP value lacks the 0x/0b prefix".into()),
    }
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_chap_vector() {
        // MD5(0x01 || "secret" || 0x00..0x0f), computed independently with python hashlib.
        let r = response(1, b"secret", &(0u8..16).collect::<Vec<_>>());
        assert_eq!(encode_hex(&r), "0x740e86463bda3a4d7017d6e0fba0699d");
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0102ff").unwrap(), vec![1, 2, 0xff]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAQL/").unwrap(), vec![1, 2, 0xff]);
        assert!(decode_binary("1234").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary(&format!("0x{}", "a".repeat(5000))).is_err());
        assert!(decode_binary("").is_err());
        // Found by the fuzzer: a multi-byte character across the prefix boundary.
        assert!(decode_binary("0\u{575}").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Chap::new("user", "TopSecret123");
        let s = format!("{c:?} {}", c.secret);
        assert!(!s.contains("TopSecret"), "{s}");
        assert!(s.contains("user"));
    }
}
