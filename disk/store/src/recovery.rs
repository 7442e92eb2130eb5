//! The recovery key: an encrypted store's key in a form that survives the appliance, so that
//! a new appliance can open the store (or a replica of it) after a disaster.
//!
//! ## Printable form
//! ```text
//! RVK1-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-DDDDC-SSSSS
//! ```
//! (`D`: a key character, `C`: its group's check character, `S`: the whole key's check.)
//! The 32 key bytes (256 bits, padded with 4 zero bits) are written as 52 characters of
//! Crockford's base32 (`0-9`, `A-Z` without `I L O U`), cut into 13 groups of 4. Each group
//! carries a fifth *check character* (5 bits of blake3 over the group's number and its four
//! characters), so a mistyped group is named: 31 of 32 typing mistakes within a group are
//! caught by that group's check. The last group `SSSSS` is 25 bits of blake3 over the whole
//! key, which catches what the group checks miss (all but one in 2^25). Reading is lenient
//! where it cannot be wrong: case, spaces, line breaks and dashes are ignored, and `O`, `I`,
//! `L` are read as `0`, `1`, `1`.
//!
//! ## File form
//! A JSON document of its own versioned type, [`RecoveryKeyFile`] (`"kind":
//! "rackvault-recovery-key", "v": 1`), holding the printable form, the store id and the
//! cipher. A file holding only the printable form is read too (someone typed it in).

use serde::{Deserialize, Serialize};

use crate::crypto::{StoreKey, KEY_LEN};
use crate::error::{Result, StoreError};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const PREFIX: &str = "RVK1";
const GROUPS: usize = 13;
const DATA_CHARS: usize = 4;
/// Characters of the printable form without its prefix and dashes.
const CHARS: usize = GROUPS * (DATA_CHARS + 1) + 5;
const FILE_KIND: &str = "rackvault-recovery-key";

fn wrong(detail: String) -> StoreError {
    StoreError::RecoveryKey(detail)
}

fn value_of(c: u8) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        c => c,
    };
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

fn group_check(index: usize, chars: &[u8]) -> u8 {
    let mut h = blake3::Hasher::new();
    h.update(b"rackvault recovery key group");
    h.update(&[index as u8]);
    h.update(chars);
    ALPHABET[(h.finalize().as_bytes()[0] & 31) as usize]
}

fn key_check(key: &[u8; KEY_LEN]) -> [u8; 5] {
    let h = blake3::derive_key("rackvault 2026-12 recovery key checksum", key);
    let bits = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) >> 7; // 25 bits
    let mut out = [0u8; 5];
    for (i, o) in out.iter_mut().enumerate() {
        *o = ALPHABET[((bits >> (5 * (4 - i))) & 31) as usize];
    }
    out
}

/// The printable form of `key`.
pub fn to_printable(key: &StoreKey) -> String {
    let bytes = key.as_bytes();
    // 256 bits + 4 zero bits = 52 five-bit characters.
    let mut chars = Vec::with_capacity(GROUPS * DATA_CHARS);
    let (mut acc, mut nbits) = (0u32, 0u32);
    for &b in bytes.iter() {
        acc = (acc << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            chars.push(ALPHABET[((acc >> nbits) & 31) as usize]);
        }
    }
    if nbits > 0 {
        chars.push(ALPHABET[((acc << (5 - nbits)) & 31) as usize]);
    }
    let mut out = String::from(PREFIX);
    for (i, g) in chars.chunks(DATA_CHARS).enumerate() {
        out.push('-');
        out.extend(g.iter().map(|&c| c as char));
        out.push(group_check(i, g) as char);
    }
    out.push('-');
    out.extend(key_check(bytes).iter().map(|&c| c as char));
    out
}

/// The printable form laid out for paper: the prefix, then lines of five groups.
pub fn to_printable_lines(key: &StoreKey) -> String {
    let p = to_printable(key);
    let groups: Vec<&str> = p.split('-').collect();
    let mut out = String::new();
    for (i, line) in groups.chunks(5).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&line.join("-"));
    }
    out
}

/// Read a printable recovery key, naming the group that is wrong when one is.
pub fn parse_printable(text: &str) -> Result<StoreKey> {
    let mut s: String = text.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    s.make_ascii_uppercase();
    let s = s.strip_prefix(PREFIX).unwrap_or(&s);
    if s.len() != CHARS || !s.is_ascii() {
        return Err(wrong(format!(
            "a recovery key has {} groups of 5 characters after \"{PREFIX}\" ({CHARS} characters), this one has {} \
             characters; re-type it from the printout",
            GROUPS + 1,
            s.chars().count()
        )));
    }
    let raw = s.as_bytes();
    let mut data = Vec::with_capacity(GROUPS * DATA_CHARS);
    for g in 0..GROUPS {
        let group = &raw[g * 5..g * 5 + 5];
        let mut canon = [0u8; 5];
        for (j, &c) in group.iter().enumerate() {
            let v = value_of(c).ok_or_else(|| {
                wrong(format!(
                    "group {} holds {:?}, which is not in the key's alphabet (0-9 and A-Z without I, L, O, U); \
                     re-type group {} from the printout",
                    g + 1,
                    c as char,
                    g + 1
                ))
            })?;
            canon[j] = ALPHABET[v as usize];
        }
        if group_check(g, &canon[..DATA_CHARS]) != canon[DATA_CHARS] {
            return Err(wrong(format!(
                "group {} ({}) does not match its check character; re-type group {} from the printout",
                g + 1,
                String::from_utf8_lossy(group),
                g + 1
            )));
        }
        data.extend_from_slice(&canon[..DATA_CHARS]);
    }
    let mut key = [0u8; KEY_LEN];
    let (mut acc, mut nbits, mut n) = (0u32, 0u32, 0usize);
    for &c in &data {
        acc = (acc << 5) | u32::from(value_of(c).unwrap_or(0));
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            if n < KEY_LEN {
                key[n] = (acc >> nbits) as u8;
            }
            n += 1;
        }
    }
    let mut sum = [0u8; 5];
    for (j, &c) in raw[GROUPS * 5..].iter().enumerate() {
        sum[j] = ALPHABET[value_of(c)
            .ok_or_else(|| wrong(format!("the last group holds {:?}, which is not in the key's alphabet", c as char)))?
            as usize];
    }
    if (acc & ((1 << nbits) - 1)) != 0 || key_check(&key) != sum {
        return Err(wrong("the checksum does not match; re-type it from the printout".into()));
    }
    Ok(StoreKey::from_bytes(key))
}

/// A recovery key file (`v` 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryKeyFile {
    /// Always `rackvault-recovery-key`.
    pub kind: String,
    pub v: u32,
    /// The store it opens (hex), for the operator; a key opens any copy of that store.
    pub store_id: String,
    /// The cipher new records of the store are sealed with.
    pub cipher: String,
    pub created_unix: u64,
    /// The key in its printable form.
    pub key: String,
    pub note: String,
}

impl RecoveryKeyFile {
    pub fn new(key: &StoreKey, store_id: &str, cipher: &str) -> RecoveryKeyFile {
        RecoveryKeyFile {
            kind: FILE_KIND.into(),
            v: 1,
            store_id: store_id.into(),
            cipher: cipher.into(),
            created_unix: crate::now_unix(),
            key: to_printable(key),
            note: "Whoever holds this key can read every backup in the store. Keep it offline, and away from the \
                   appliance: without it an encrypted store cannot be read."
                .into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    pub fn store_key(&self) -> Result<StoreKey> {
        parse_printable(&self.key)
    }
}

/// Read the text of a recovery key file: the JSON form, or the printable form alone.
pub fn parse_file(text: &str) -> Result<StoreKey> {
    let t = text.trim_start();
    if t.starts_with('{') {
        let f: RecoveryKeyFile = serde_json::from_str(t).map_err(|e| {
            wrong(format!("the file is not a recovery key file ({e}); give the file `key export` wrote"))
        })?;
        if f.kind != FILE_KIND || f.v != 1 {
            return Err(wrong(format!(
                "the file is a {:?} version {}, not a {FILE_KIND} version 1; give the file `key export` wrote",
                f.kind, f.v
            )));
        }
        return f.store_key();
    }
    parse_printable(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StoreKey {
        StoreKey::from_bytes(*blake3::hash(b"recovery test").as_bytes())
    }

    #[test]
    fn the_printable_recovery_key_round_trips_leniently() {
        let k = key();
        let p = to_printable(&k);
        assert_eq!(p.len(), PREFIX.len() + CHARS + GROUPS + 1);
        assert_eq!(parse_printable(&p).unwrap(), k);
        // Lower case, spaces and line breaks instead of dashes, O for 0.
        let sloppy = to_printable_lines(&k).to_lowercase().replace('-', " ").replace('0', "o");
        assert_eq!(parse_printable(&sloppy).unwrap(), k);
        let file = RecoveryKeyFile::new(&k, "00ff", "aes-256-gcm").to_json();
        assert_eq!(parse_file(&file).unwrap(), k);
        assert_eq!(parse_file(&p).unwrap(), k);
    }

    #[test]
    fn the_printable_recovery_key_detects_a_mistyped_group() {
        let k = key();
        let p = to_printable(&k);
        let mut caught_by_group = 0;
        let mut total = 0;
        // Every single-character substitution in every data group is refused.
        for g in 0..GROUPS {
            for j in 0..5 {
                let at = PREFIX.len() + 1 + g * 6 + j;
                for &c in ALPHABET.iter() {
                    if c == p.as_bytes()[at] {
                        continue;
                    }
                    let mut t = p.clone().into_bytes();
                    t[at] = c;
                    let e = parse_printable(std::str::from_utf8(&t).unwrap()).unwrap_err().to_string();
                    total += 1;
                    if e.contains(&format!("group {} ", g + 1)) {
                        caught_by_group += 1;
                    } else {
                        assert!(e.contains("checksum does not match; re-type it from the printout"), "{e}");
                    }
                }
            }
        }
        // Most are named by their group's check character.
        assert!(caught_by_group * 10 > total * 9, "{caught_by_group} of {total}");
        // Two swapped groups pass the group checks only if... they do not: the check covers the position.
        let groups: Vec<&str> = p.split('-').collect();
        let mut swapped = groups.clone();
        swapped.swap(2, 3);
        assert!(parse_printable(&swapped.join("-")).is_err());
        // A character outside the alphabet is named.
        let e = parse_printable(&p.replacen(groups[1], "UUUUU", 1)).unwrap_err().to_string();
        assert!(e.contains("group 1 holds 'U'"), "{e}");
        // Too short.
        let e = parse_printable(&p[..p.len() - 6]).unwrap_err().to_string();
        assert!(e.contains("re-type it from the printout"), "{e}");
    }
}
