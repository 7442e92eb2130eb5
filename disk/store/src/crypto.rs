//! Encrypted stores: the store key, keyed chunk ids and sealed records.
//!
//! The unit of encryption is the *store* (the staging store has no namespaces): one key per
//! store, chosen when the store is created, covering every record in every pack. The store
//! takes raw key material ([`StoreKey`]) and never writes it down; the service seals it with
//! the appliance key and the CLI reads it from a recovery key file (see [`crate::recovery`]).
//!
//! ## Derived keys
//! The store key is never used directly. Each use derives its own key with
//! `blake3::derive_key` under a context string of its own, so no two uses share a key:
//!
//! | derived key | context | used for |
//! |---|---|---|
//! | id key | `rackvault 2026-12 store chunk id key` | chunk ids: `blake3::keyed_hash(id key, plaintext)` |
//! | AES master | `rackvault 2026-12 store aes-256-gcm record key` | per-record AES-256-GCM subkeys (below) |
//! | XChaCha key | `rackvault 2026-12 store xchacha20-poly1305 record key` | XChaCha20-Poly1305 records |
//! | key check | `rackvault 2026-12 store key check value` | kept in the store marker: a wrong key is refused at open, before anything is read |
//!
//! ## Chunk ids
//! In an encrypted store a chunk's id is the keyed blake3 of its plaintext. Dedup works as in
//! a plain store (the same bytes under the same key give the same id) and all-zero chunks are
//! still [`Digest::ZERO`] and never stored. Without the key the ids say nothing about the
//! content: whoever holds the packs cannot test whether they contain a block or file they
//! know, which plain blake3 ids would allow. Equal ids still show equal chunks within a store
//! (dedup needs that), and record headers show sizes and kinds.
//!
//! ## Sealed records
//! An encrypted record's payload is `salt [24] ‖ ciphertext ‖ tag [16]`, where the ciphertext
//! is of what an unencrypted record would store (a zstd frame or raw bytes: compress, then
//! encrypt). The associated data is the record header without its checksum: `b"RVa1"`, kind,
//! codec, cipher, 0, raw length, stored length, chunk id ([`record_aad`]). A record therefore
//! cannot be relabelled (other kind, id or lengths) without its tag failing, and since the
//! pack number, offset and store id are *not* in it, a record is valid wherever it lies under
//! the same key: GC repack, repair and replication copy records verbatim, never re-encrypt.
//! The record's `cipher` byte says which AEAD sealed it, so a store (or a replica) can hold
//! records of both ciphers and read them all.
//!
//! ## Nonces never repeat under one key
//! No counter is kept anywhere: two processes writing one store, a crash that loses state, or
//! a record copied to another store cannot make a nonce repeat. Every record draws a fresh
//! 24-byte salt from the kernel's CSPRNG (`/dev/urandom`).
//!
//! * **XChaCha20-Poly1305**: the salt is the 192-bit nonce. Among `n` records under one key
//!   the chance of any repeat is below `n²/2^193`: for `2^48` records (an exabyte of 4 KiB
//!   chunks) that is `2^-97`.
//! * **AES-256-GCM** has a 96-bit nonce: random nonces under one key are safe only up to
//!   about `2^32` messages (NIST SP 800-38D), which a store of 4 KiB chunks reaches at 16 TiB.
//!   So no record is sealed under the AES master key itself: the salt's first 12 bytes
//!   select a subkey, `blake3::keyed_hash(AES master, "rackvault aes-gcm subkey" ‖
//!   salt[0..12])`, and its last 12 bytes are the GCM nonce under that subkey. A (key, nonce)
//!   pair repeats only if all 24 bytes of two salts match, the same `n²/2^193` bound as
//!   XChaCha, and a subkey typically seals a single record, far from GCM's limits. (This is
//!   the idea of XAES-256-GCM, with keyed blake3, a PRF, as the derivation.) The cost is one
//!   blake3 of 40 bytes and one AES key schedule per record: under a microsecond against the
//!   ~100 µs it takes to seal a 256 KiB chunk.
//!
//! AES-256-GCM is chosen for new records where the CPU has AES-NI and carry-less multiply
//! (ARMv8 AES and PMULL), XChaCha20-Poly1305 elsewhere ([`Cipher::preferred`]); both are
//! always readable.

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::pack::{Codec, RecordKind};
use crate::Digest;

/// Length of a store key.
pub const KEY_LEN: usize = 32;
/// Bytes an encrypted record's payload adds to what it seals: salt and tag.
pub const SEAL_OVERHEAD: usize = SALT_LEN + TAG_LEN;
const SALT_LEN: usize = 24;
const TAG_LEN: usize = 16;

const CTX_ID: &str = "rackvault 2026-12 store chunk id key";
const CTX_AES: &str = "rackvault 2026-12 store aes-256-gcm record key";
const CTX_XCHACHA: &str = "rackvault 2026-12 store xchacha20-poly1305 record key";
const CTX_CHECK: &str = "rackvault 2026-12 store key check value";
const AES_SUBKEY_LABEL: &[u8] = b"rackvault aes-gcm subkey";

/// Fill `buf` from the kernel's CSPRNG (one open file per thread).
pub(crate) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    thread_local! {
        static URANDOM: std::cell::RefCell<Option<std::fs::File>> = const { std::cell::RefCell::new(None) };
    }
    URANDOM.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(std::fs::File::open("/dev/urandom")?);
        }
        match slot.as_mut() {
            Some(f) => f.read_exact(buf),
            None => Err(std::io::Error::other("/dev/urandom is not open")),
        }
    })
}

/// A store's key: 32 bytes of raw key material. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; KEY_LEN]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    /// A new random key from the kernel's CSPRNG.
    pub fn generate() -> std::io::Result<StoreKey> {
        let mut k = [0u8; KEY_LEN];
        fill_random(&mut k)?;
        Ok(StoreKey(k))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> StoreKey {
        StoreKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The value kept in the store marker to recognise this key (a one-way derivation: it
    /// tells nothing of the key).
    pub fn check_value(&self) -> [u8; 32] {
        blake3::derive_key(CTX_CHECK, &self.0)
    }
}

/// The AEAD that sealed a record (the record header's `cipher` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// Not encrypted: every record of a plain store.
    None = 0,
    Aes256Gcm = 1,
    XChaCha20Poly1305 = 2,
}

impl Cipher {
    pub fn from_u8(v: u8) -> Option<Cipher> {
        match v {
            0 => Some(Cipher::None),
            1 => Some(Cipher::Aes256Gcm),
            2 => Some(Cipher::XChaCha20Poly1305),
            _ => None,
        }
    }

    /// The name the marker and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::None => "none",
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    pub fn from_name(name: &str) -> Option<Cipher> {
        [Cipher::None, Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305].into_iter().find(|c| c.name() == name)
    }

    /// AES-256-GCM where the CPU accelerates it (AES-NI and PCLMULQDQ, or ARMv8 AES and
    /// PMULL), XChaCha20-Poly1305 elsewhere: constant-time and fast in software.
    pub fn preferred() -> Cipher {
        if aes_accelerated() {
            Cipher::Aes256Gcm
        } else {
            Cipher::XChaCha20Poly1305
        }
    }
}

/// Whether this CPU has AES and carry-less multiply instructions.
pub fn aes_accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// How a store names its chunks: plain blake3, or blake3 keyed with the store's id key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChunkIds(Option<[u8; 32]>);

impl fmt::Debug for ChunkIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "ChunkIds(keyed)" } else { "ChunkIds(plain)" })
    }
}

impl ChunkIds {
    /// The ids of an unencrypted store: `blake3(plaintext)`.
    pub const PLAIN: ChunkIds = ChunkIds(None);

    pub fn keyed(key: &StoreKey) -> ChunkIds {
        ChunkIds(Some(blake3::derive_key(CTX_ID, key.as_bytes())))
    }

    /// The id of `data`.
    pub fn of(&self, data: &[u8]) -> Digest {
        match &self.0 {
            None => Digest::of(data),
            Some(k) => Digest(*blake3::keyed_hash(k, data).as_bytes()),
        }
    }

    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }
}

/// The associated data of a sealed record: its header without the checksum.
pub fn record_aad(
    kind: RecordKind,
    codec: Codec,
    cipher: Cipher,
    raw_len: u32,
    stored_len: u32,
    digest: &Digest,
) -> [u8; 48] {
    let mut a = [0u8; 48];
    a[0..4].copy_from_slice(b"RVa1");
    a[4] = kind as u8;
    a[5] = codec as u8;
    a[6] = cipher as u8;
    a[8..12].copy_from_slice(&raw_len.to_le_bytes());
    a[12..16].copy_from_slice(&stored_len.to_le_bytes());
    a[16..48].copy_from_slice(&digest.0);
    a
}

struct RecordKeys {
    /// The cipher new records are sealed with.
    cipher: Cipher,
    aes_master: [u8; 32],
    xchacha: XChaCha20Poly1305,
}

/// Everything a store needs to name and seal its records: the chunk-id scheme, and for an
/// encrypted store the record keys. Cheap to clone (the keys are shared).
#[derive(Clone)]
pub struct Keyring {
    ids: ChunkIds,
    records: Option<Arc<RecordKeys>>,
    /// The keys of stores this one holds replicas of (recovery keys given at open): foreign
    /// records open with them (see `pack`). Never used to seal.
    replicas: Arc<[Keyring]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids).field("cipher", &self.cipher()).finish()
    }
}

impl Keyring {
    /// An unencrypted store's: plain ids, no sealing.
    pub fn plain() -> Keyring {
        Keyring { ids: ChunkIds::PLAIN, records: None, replicas: Arc::new([]) }
    }

    /// An encrypted store's, sealing new records with `cipher` (never [`Cipher::None`]:
    /// that gives XChaCha20-Poly1305).
    pub fn new(key: &StoreKey, cipher: Cipher) -> Keyring {
        let cipher = if cipher == Cipher::None { Cipher::XChaCha20Poly1305 } else { cipher };
        let xkey = blake3::derive_key(CTX_XCHACHA, key.as_bytes());
        let records = RecordKeys {
            cipher,
            aes_master: blake3::derive_key(CTX_AES, key.as_bytes()),
            xchacha: XChaCha20Poly1305::new((&xkey).into()),
        };
        Keyring { ids: ChunkIds::keyed(key), records: Some(Arc::new(records)), replicas: Arc::new([]) }
    }

    pub fn ids(&self) -> ChunkIds {
        self.ids
    }

    /// This keyring, also opening the foreign records of replicas sealed under `keys` (the
    /// recovery keys of the stores they came from).
    pub fn with_replica_keys(self, keys: &[StoreKey]) -> Keyring {
        let replicas: Vec<Keyring> = keys.iter().map(|k| Keyring::new(k, Cipher::preferred())).collect();
        Keyring { replicas: replicas.into(), ..self }
    }

    /// The replica keys (see [`Keyring::with_replica_keys`]).
    pub fn replica_keys(&self) -> &[Keyring] {
        &self.replicas
    }

    /// The id of `data` in this store.
    pub fn digest(&self, data: &[u8]) -> Digest {
        self.ids.of(data)
    }

    /// The cipher new records are sealed with ([`Cipher::None`] for a plain store).
    pub fn cipher(&self) -> Cipher {
        self.records.as_ref().map_or(Cipher::None, |r| r.cipher)
    }

    pub fn is_encrypted(&self) -> bool {
        self.records.is_some()
    }

    /// The AES-256-GCM subkey the salt's first 12 bytes select, and the GCM nonce (its last
    /// 12 bytes).
    fn aes_subkey(keys: &RecordKeys, salt: &[u8; SALT_LEN]) -> Result<(LessSafeKey, Nonce), String> {
        let mut h = blake3::Hasher::new_keyed(&keys.aes_master);
        h.update(AES_SUBKEY_LABEL);
        h.update(&salt[..12]);
        let key = UnboundKey::new(&AES_256_GCM, h.finalize().as_bytes())
            .map_err(|_| "AES-256-GCM refused a 32-byte key".to_string())?;
        let nonce = Nonce::try_assume_unique_for_key(&salt[12..]).map_err(|_| "bad GCM nonce length".to_string())?;
        Ok((LessSafeKey::new(key), nonce))
    }

    /// Seal `payload` (what a plain record would store) for a record with these header
    /// fields. Returns the cipher used and the sealed payload (`salt ‖ ciphertext ‖ tag`).
    pub fn seal(
        &self,
        kind: RecordKind,
        codec: Codec,
        raw_len: u32,
        digest: &Digest,
        payload: &[u8],
    ) -> Result<(Cipher, Vec<u8>), String> {
        let keys = self.records.as_ref().ok_or("this store is not encrypted")?;
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt).map_err(|e| format!("no random bytes for a record nonce (/dev/urandom: {e})"))?;
        let stored_len = u32::try_from(payload.len() + SEAL_OVERHEAD).map_err(|_| "record too large to seal")?;
        let aad = record_aad(kind, codec, keys.cipher, raw_len, stored_len, digest);
        let mut out = Vec::with_capacity(payload.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&salt);
        out.extend_from_slice(payload);
        let sealed = &mut out[SALT_LEN..];
        let refused = |_| "the AEAD refused to seal the record".to_string();
        let tag: [u8; TAG_LEN] = match keys.cipher {
            Cipher::Aes256Gcm => {
                let (key, nonce) = Self::aes_subkey(keys, &salt)?;
                let tag = key.seal_in_place_separate_tag(nonce, Aad::from(&aad), sealed).map_err(refused)?;
                tag.as_ref().try_into().map_err(|_| "AES-GCM tag is not 16 bytes".to_string())?
            }
            _ => keys
                .xchacha
                .encrypt_in_place_detached(chacha20poly1305::XNonce::from_slice(&salt), &aad, sealed)
                .map_err(|_| "the AEAD refused to seal the record".to_string())?
                .into(),
        };
        out.extend_from_slice(&tag);
        Ok((keys.cipher, out))
    }

    /// Open a sealed payload into `out` (what a plain record would have stored), checking its
    /// tag against the header fields.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        kind: RecordKind,
        codec: Codec,
        cipher: Cipher,
        raw_len: u32,
        digest: &Digest,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let Some(keys) = self.records.as_ref() else {
            return Err("the record is encrypted and the store was opened without its key".into());
        };
        if payload.len() < SEAL_OVERHEAD {
            return Err(format!("encrypted payload of {} bytes is shorter than its nonce and tag", payload.len()));
        }
        let stored_len = payload.len() as u32;
        let aad = record_aad(kind, codec, cipher, raw_len, stored_len, digest);
        let salt: &[u8; SALT_LEN] =
            payload[..SALT_LEN].try_into().map_err(|_| "encrypted payload without a salt".to_string())?;
        let body_len = payload.len() - SEAL_OVERHEAD;
        let (body, tag) = payload[SALT_LEN..].split_at(body_len);
        out.clear();
        let r = match cipher {
            Cipher::Aes256Gcm => {
                // ring opens ciphertext ‖ tag in place.
                out.extend_from_slice(&payload[SALT_LEN..]);
                let (key, nonce) = Self::aes_subkey(keys, salt)?;
                let r = key.open_in_place(nonce, Aad::from(&aad), out).map(|_| ());
                out.truncate(body_len);
                r.map_err(|_| ())
            }
            Cipher::XChaCha20Poly1305 => {
                out.extend_from_slice(body);
                keys.xchacha
                    .decrypt_in_place_detached(
                        chacha20poly1305::XNonce::from_slice(salt),
                        &aad,
                        out,
                        chacha20poly1305::Tag::from_slice(tag),
                    )
                    .map_err(|_| ())
            }
            Cipher::None => return Err("a plain record handed to decryption".into()),
        };
        r.map_err(|_| {
            out.clear();
            "the encrypted record fails authentication (its ciphertext or header was altered, or it was sealed \
             under another key)"
                .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StoreKey {
        StoreKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn both_ciphers_round_trip_and_refuse_a_changed_header_or_byte() {
        for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            let ring = Keyring::new(&key(7), cipher);
            let plain = b"some chunk bytes".repeat(100);
            let d = ring.digest(&plain);
            let (c, sealed) = ring.seal(RecordKind::Data, Codec::Raw, plain.len() as u32, &d, &plain).unwrap();
            assert_eq!(c, cipher);
            assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
            assert!(!sealed.windows(16).any(|w| w == &plain[..16]));
            let mut out = Vec::new();
            ring.open(RecordKind::Data, Codec::Raw, c, plain.len() as u32, &d, &sealed, &mut out).unwrap();
            assert_eq!(out, plain);
            // Relabelled as a tree node: refused.
            assert!(ring.open(RecordKind::Tree, Codec::Raw, c, plain.len() as u32, &d, &sealed, &mut out).is_err());
            // One flipped bit: refused.
            let mut bad = sealed.clone();
            bad[40] ^= 1;
            assert!(ring.open(RecordKind::Data, Codec::Raw, c, plain.len() as u32, &d, &bad, &mut out).is_err());
            // Another key: refused.
            let other = Keyring::new(&key(8), cipher);
            assert!(other.open(RecordKind::Data, Codec::Raw, c, plain.len() as u32, &d, &sealed, &mut out).is_err());
        }
    }

    #[test]
    fn keyed_ids_differ_from_plain_ids_and_between_keys() {
        let data = b"block";
        assert_eq!(ChunkIds::PLAIN.of(data), Digest::of(data));
        assert_ne!(ChunkIds::keyed(&key(1)).of(data), Digest::of(data));
        assert_ne!(ChunkIds::keyed(&key(1)).of(data), ChunkIds::keyed(&key(2)).of(data));
        assert_eq!(ChunkIds::keyed(&key(1)).of(data), ChunkIds::keyed(&key(1)).of(data));
    }

    #[test]
    fn two_seals_of_the_same_record_use_different_salts() {
        let ring = Keyring::new(&key(3), Cipher::Aes256Gcm);
        let d = ring.digest(b"x");
        let a = ring.seal(RecordKind::Data, Codec::Raw, 1, &d, b"x").unwrap().1;
        let b = ring.seal(RecordKind::Data, Codec::Raw, 1, &d, b"x").unwrap().1;
        assert_ne!(a[..SALT_LEN], b[..SALT_LEN]);
    }
}
