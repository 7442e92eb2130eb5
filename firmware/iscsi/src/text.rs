//! Text keys (RFC 7143 §6): the data segment of Login and Text PDUs is a list of
//! `key=value\0` records. A long list may be split over several PDUs with the C (continue) bit,
//! even inside a record, so the raw bytes are gathered first ([`TextBuffer`]) and parsed once
//! complete ([`parse`]).
//!
//! Limits (hostile input): keys up to [`MAX_KEY`] bytes of `[A-Za-z0-9.-+@_]`, values up to
//! [`MAX_VALUE`] bytes of UTF-8 without NUL, at most [`MAX_PAIRS`] records, and a gathered
//! text of at most the buffer's limit. Anything else is an error, never a panic.

/// Longest key (RFC 7143: 63 bytes).
pub const MAX_KEY: usize = 63;
/// Longest value (RFC 7143: 255 for most, 8192 for some such as CHAP values).
pub const MAX_VALUE: usize = 8192;
/// Most records in one text.
pub const MAX_PAIRS: usize = 4096;

/// Why a text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError(pub String);

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b".-+@_".contains(&c)
}

/// Parses a complete text into `(key, value)` pairs in order. Empty records (padding, a
/// trailing NUL) are skipped.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for rec in data.split(|&b| b == 0) {
        if rec.is_empty() {
            continue;
        }
        if out.len() >= MAX_PAIRS {
            return Err(TextError(format!("more than {MAX_PAIRS} text keys")));
        }
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| TextError("text record without '='".into()))?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        if k.is_empty() || k.len() > MAX_KEY || !k.iter().all(|&c| key_char(c)) {
            return Err(TextError(format!("invalid text key ({} bytes)", k.len())));
        }
        if v.len() > MAX_VALUE {
            return Err(TextError(format!("value of key {} is {} bytes, more than {MAX_VALUE}", lossy(k), v.len())));
        }
        let v = std::str::from_utf8(v).map_err(|_| TextError(format!("value of key {} is not UTF-8", lossy(k))))?;
        out.push((lossy(k), v.to_string()));
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Encodes pairs as `key=value\0...`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// Gathers the data segments of a C-bit sequence up to a size limit.
#[derive(Debug)]
pub struct TextBuffer {
    buf: Vec<u8>,
    max: usize,
}

impl TextBuffer {
    pub fn new(max: usize) -> Self {
        TextBuffer { buf: Vec::new(), max }
    }

    pub fn push(&mut self, seg: &[u8]) -> Result<(), TextError> {
        if self.buf.len() + seg.len() > self.max {
            return Err(TextError(format!("text response longer than {} bytes", self.max)));
        }
        self.buf.extend_from_slice(seg);
        Ok(())
    }

    pub fn parse(&self) -> Result<Vec<(String, String)>, TextError> {
        parse(&self.buf)
    }
}

/// The last value of `key` in `pairs`.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_split() {
        let t = encode(&[("TargetName", "iqn.x:y"), ("TargetAddress", "127.0.0.1:3260,1")]);
        assert_eq!(parse(&t).unwrap()[1], ("TargetAddress".into(), "127.0.0.1:3260,1".into()));
        let mut b = TextBuffer::new(1000);
        b.push(&t[..5]).unwrap();
        b.push(&t[5..]).unwrap();
        assert_eq!(b.parse().unwrap().len(), 2);
        assert!(TextBuffer::new(4).push(&t).is_err());
        assert_eq!(parse(b"A=\0\0\0").unwrap(), vec![("A".into(), String::new())]);
    }

    #[test]
    fn hostile() {
        assert!(parse(b"novalue\0").is_err());
        assert!(parse(b"=x\0").is_err());
        assert!(parse(b"bad key=x\0").is_err());
        assert!(parse(&[b'K', b'=', 0xff, 0]).is_err());
        let long = [b"K=".as_slice(), &vec![b'a'; MAX_VALUE + 1]].concat();
        assert!(parse(&long).is_err());
        let many: Vec<u8> = std::iter::repeat_n(b"A=1\0".as_slice(), MAX_PAIRS + 1).flatten().copied().collect();
        assert!(parse(&many).is_err());
    }
}
