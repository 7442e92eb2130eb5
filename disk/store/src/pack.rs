//! Pack files: append-only, immutable once sealed, self-describing.
//!
//! ## On-disk format (all integers little-endian)
//! ```text
//! pack header, 64 bytes
//!   0  magic        b"RVPACK\0\x01"
//!   8  format       u32  (store format version: 3 in an encrypted store, else 2)
//!  12  reserved     u32  = 0
//!  16  pack number  u64
//!  24  store id     [u8; 16]
//!  40  created      u64  (unix seconds)
//!  48  reserved     [u8; 12] = 0
//!  60  crc32c       u32  of bytes 0..60
//! records, back to back from byte 64:
//!   0  magic        b"RVc1"
//!   4  kind         u8   (1 = data chunk, 2 = index-tree node, 3 = restore-point manifest,
//!                         4 = tombstone of a deleted restore point; format 2)
//!   5  codec        u8   (0 = stored raw, 1 = zstd frame)
//!   6  cipher       u8   (0 = not encrypted; format 3: 1 = AES-256-GCM, 2 = XChaCha20-Poly1305)
//!   7  flags        u8   (bit 0 = foreign, see below; other bits 0)
//!   8  raw_len      u32  (uncompressed length)
//!  12  stored_len   u32  (payload length)
//!  16  digest       [u8; 32]  the chunk id: blake3 of the uncompressed bytes, keyed in an
//!                             encrypted store (see `crypto`)
//!  48  crc32c       u32  of bytes 0..48 followed by the payload
//!  52  reserved     [u8; 12] = 0
//!  64  payload      stored_len bytes
//! zero padding up to a multiple of 4096 bytes (direct I/O), only after the last record
//! ```
//! An encrypted record (cipher ≠ 0) has the payload `salt [24] ‖ ciphertext ‖ tag [16]`: the
//! AEAD seal of what the plain record would store (zstd frame or raw bytes), with the header
//! fields as associated data (see [`crate::crypto`] for the nonces and why they never repeat).
//! The checksum covers the sealed payload, so damage is found without the key; the tag proves
//! authenticity with it. Nothing in a record names its pack or store, so an encrypted record
//! is copied verbatim into another pack or another store with the same key. Format 2 wrote
//! byte 6 as zero, so every older record reads as unencrypted; in an encrypted store an
//! unencrypted record is refused as tampering (it was written without the key).
//!
//! ### Foreign records (replicas held without their key)
//! A replication receiver that does not hold the sending store's key keeps the sender's
//! records as they come and sets the *foreign* flag: a sealed data chunk it cannot open, and
//! an index-tree node the sender sent opened (a node holds only chunk ids, which are keyed,
//! so it says nothing of the content; the receiver must walk trees for GC, verify and its
//! completeness check). Its chunk id is the sender's keyed id, so this store cannot check it:
//! the checksum is the only check, and a foreign record is never deduplicated against by a
//! backup here, which stores its own copy instead (see `Store::contains`). With the sender's
//! recovery key given to the store ([`Keyring::with_replica_keys`]) a foreign sealed record
//! opens and its tag and id are checked as in its own store. The flag is not part of the
//! associated data (byte 7 is 0 there), so the record verifies under its key wherever it lies.
//! Format 2 wrote byte 7 as zero: every older record reads as not foreign.
//!
//! A reader can walk a pack from byte 64, record by record, and rebuild the chunk index from
//! it alone: every record carries its digest, both lengths and a checksum. A record whose
//! magic is zero marks the padding at the end (fewer than 4096 zero bytes before the end of
//! the file). Damage does not end a walk: [`scan_pack`] reads past a damaged pack header
//! (records are self-checking) and, after a damaged record, resynchronises on the next offset
//! holding a record magic whose checksum matches, reporting the stretch it skipped.
//!
//! ## Writing
//! [`PackWriter`] appends records into a 4 KiB-aligned buffer and hands whole buffers to a
//! `uringio::WriteBehind`, which writes them at increasing offsets with a few in flight while
//! the next one fills; the file is opened with `O_DIRECT` where the filesystem allows it.
//! [`PackWriter::seal`] pads the tail, waits for every write, then `fsync`s.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uringio::AlignedBuf;

use crate::catalog::PackInfo;
use crate::crypto::{Cipher, Keyring};
use crate::error::{Result, StoreError};
use crate::Digest;

pub const PACK_MAGIC: &[u8; 8] = b"RVPACK\0\x01";
pub const RECORD_MAGIC: &[u8; 4] = b"RVc1";
pub const PACK_HEADER_LEN: u64 = 64;
pub const RECORD_HEADER_LEN: usize = 64;
/// Largest chunk or tree node the store accepts (bytes, uncompressed).
pub const MAX_RECORD_RAW: u32 = 16 << 20;
/// Record header byte 7: a foreign record.
const FLAG_FOREIGN: u8 = 1;

/// Write buffer: large enough to keep the device busy, small enough for bounded memory.
const WRITE_BUF: usize = 8 << 20;
/// Buffers being written while the next one fills (so up to 4 × 8 MiB per open pack).
const WRITES_IN_FLIGHT: usize = 3;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Data = 1,
    Tree = 2,
    /// A restore point's manifest (JSON), written last, so the catalog can be rebuilt from
    /// packs alone.
    Manifest = 3,
    /// A deleted restore point's tombstone (JSON [`Tombstone`](crate::Tombstone)), so that
    /// rebuilding the catalog from packs never brings the point back. Format 2.
    Tombstone = 4,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<RecordKind> {
        match v {
            1 => Some(RecordKind::Data),
            2 => Some(RecordKind::Tree),
            3 => Some(RecordKind::Manifest),
            4 => Some(RecordKind::Tombstone),
            _ => None,
        }
    }
}

/// How a record's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A chunk ready to be stored: its digest and its encoded payload.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    pub digest: Digest,
    pub kind: RecordKind,
    pub codec: Codec,
    /// [`Cipher::None`] unless the payload is sealed.
    pub cipher: Cipher,
    pub raw_len: u32,
    pub payload: Vec<u8>,
    /// Kept for a replication source whose key this store lacks (see the module docs).
    pub foreign: bool,
    /// Stored raw for now although it may compress: the recompression pass compresses it
    /// later (see the crate docs, "Compression off the critical path"). Not written to the
    /// record: the pack's [`PackInfo::deferred_bytes`](crate::PackInfo) counts it.
    pub deferred: bool,
}

impl EncodedChunk {
    /// The record header this chunk is stored under, its checksum still 0 (the writer computes
    /// it over the encoded header and the payload).
    pub fn header(&self) -> RecordHeader {
        RecordHeader {
            kind: self.kind,
            codec: self.codec,
            cipher: self.cipher,
            raw_len: self.raw_len,
            stored_len: self.payload.len() as u32,
            digest: self.digest,
            foreign: self.foreign,
            crc: 0,
        }
    }

    /// A record as it was read from a pack (or a replication stream): `payload` as stored.
    pub fn from_record(header: &RecordHeader, payload: Vec<u8>) -> EncodedChunk {
        EncodedChunk {
            digest: header.digest,
            kind: header.kind,
            codec: header.codec,
            cipher: header.cipher,
            raw_len: header.raw_len,
            payload,
            foreign: header.foreign,
            deferred: false,
        }
    }

    /// An unencrypted record of `payload` as it is to be stored.
    pub fn plain(digest: Digest, kind: RecordKind, codec: Codec, raw_len: u32, payload: Vec<u8>) -> EncodedChunk {
        EncodedChunk { digest, kind, codec, cipher: Cipher::None, raw_len, payload, foreign: false, deferred: false }
    }

    /// This record sealed with `keys` if it is not sealed yet and the store is encrypted.
    pub fn sealed_for(self, keys: &Keyring) -> Result<EncodedChunk> {
        if self.cipher != Cipher::None || !keys.is_encrypted() {
            return Ok(self);
        }
        let (cipher, payload) = keys
            .seal(self.kind, self.codec, self.raw_len, &self.digest, &self.payload)
            .map_err(|e| StoreError::Invalid(format!("sealing chunk {}: {e}", self.digest)))?;
        Ok(EncodedChunk { cipher, payload, ..self })
    }
}

/// Compresses chunks; one per worker thread (it keeps zstd's context between chunks).
pub struct ChunkEncoder {
    level: Option<i32>,
    /// Defer the compression of data chunks to the recompression pass.
    defer: bool,
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder").field("level", &self.level).field("defer", &self.defer).finish()
    }
}

impl ChunkEncoder {
    /// An encoder compressing at zstd `level`; `None` stores every chunk raw (for data known
    /// not to compress, or when backup speed matters more than space).
    pub fn new(level: Option<i32>) -> ChunkEncoder {
        let compressor = level.map(|l| zstd::bulk::Compressor::new(l).expect("zstd accepts every level in its range"));
        ChunkEncoder { level, defer: false, compressor }
    }

    /// An encoder for the backup window: data chunks are stored raw, those that may compress
    /// marked [`deferred`](EncodedChunk::deferred) for [`Store::recompress`](crate::Store)
    /// to compress later at the store's level; chunks that look random are stored raw for
    /// good. Other records (tree nodes, manifests, files) are small and compressed at `level`
    /// now.
    pub fn deferring(level: i32) -> ChunkEncoder {
        ChunkEncoder { defer: true, ..ChunkEncoder::new(Some(level)) }
    }

    /// Encode `raw` whose digest is already known. Compression must save at least 1/16 of the
    /// bytes to be kept; otherwise the chunk is stored raw, which also makes restore cheaper.
    /// Chunks that look like encrypted or already-compressed data are not even tried: zstd
    /// spends most of a backup's CPU time failing to compress them.
    pub fn encode(&mut self, digest: Digest, kind: RecordKind, raw: &[u8]) -> EncodedChunk {
        let raw_len = raw.len() as u32;
        let incompressible = self.compressor.is_none() || looks_incompressible(raw);
        if self.defer && kind == RecordKind::Data {
            let mut chunk = EncodedChunk::plain(digest, kind, Codec::Raw, raw_len, raw.to_vec());
            chunk.deferred = !incompressible;
            return chunk;
        }
        let limit = raw.len() - raw.len() / 16;
        let mut out = Vec::with_capacity(limit);
        let compressed = match &mut self.compressor {
            Some(c) => !incompressible && c.compress_to_buffer(raw, &mut out).is_ok(),
            None => false,
        };
        let (codec, payload) =
            if compressed && out.len() < limit { (Codec::Zstd, out) } else { (Codec::Raw, raw.to_vec()) };
        EncodedChunk::plain(digest, kind, codec, raw_len, payload)
    }

    /// [`encode`](ChunkEncoder::encode), then seal the record if `keys` is an encrypted
    /// store's (on the calling worker thread, so sealing runs in parallel like compression).
    pub fn encode_for(&mut self, keys: &Keyring, digest: Digest, kind: RecordKind, raw: &[u8]) -> Result<EncodedChunk> {
        self.encode(digest, kind, raw).sealed_for(keys)
    }
}

/// Whether a record found in a pack may be one whose compression was deferred: a raw data
/// chunk of the store's own. Used where a pack's [`PackInfo`](crate::PackInfo) is rebuilt
/// from its records alone (the deferral is not written to records); the recompression pass
/// then tries each such record once, and one that looks random costs only its entropy check.
pub fn maybe_deferred(header: &RecordHeader) -> bool {
    header.kind == RecordKind::Data && header.codec == Codec::Raw && !header.foreign
}

/// Sample windows of a chunk and estimate the entropy of their bytes. Only if every window
/// looks random (close to 8 bits per byte) is the chunk judged incompressible. A chunk with
/// any low-entropy window (text, zeros, structured binary) is compressed.
pub fn looks_incompressible(raw: &[u8]) -> bool {
    const WINDOW: usize = 4096;
    const WINDOWS: usize = 8;
    // A 4 KiB sample of uniform random bytes estimates at about 7.95 bits per byte.
    const THRESHOLD_BITS: f64 = 7.6;
    if raw.len() < WINDOW * WINDOWS {
        return false;
    }
    let stride = (raw.len() - WINDOW) / (WINDOWS - 1);
    (0..WINDOWS).all(|w| {
        let window = &raw[w * stride..w * stride + WINDOW];
        let mut counts = [0u32; 256];
        for &b in window {
            counts[b as usize] += 1;
        }
        let n = WINDOW as f64;
        let entropy: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.log2()
            })
            .sum();
        entropy >= THRESHOLD_BITS
    })
}

/// How far [`check_content`] could check a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentCheck {
    /// Decoded, and its content matches its id (and its tag, if sealed).
    Verified,
    /// A foreign record: sealed with a key this store does not hold, or an opened tree node
    /// whose keyed id this store cannot compute. Its checksum is the only check there is.
    ChecksumOnly,
}

/// Decode a record's payload into `out`: open it if it is sealed, decompress it, and with
/// [`ReadCheck::Digest`] check its content against the record's chunk id under `keys`.
///
/// A foreign record (see the module docs) that is sealed opens under the first of the
/// keyring's replica keys that opens it, and is refused when none does (the text says to
/// give the source's recovery key). A foreign record that is not sealed (an opened tree
/// node) is decompressed; its id is checked only where a replica key computes it.
pub fn decode_record(
    keys: &Keyring,
    header: &RecordHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
    check: ReadCheck,
) -> std::result::Result<(), String> {
    match decode_any(keys, header, payload, out, check)? {
        Some(_) => Ok(()),
        None => Err(format!(
            "record {} is sealed with the key of the store it was replicated from, which this appliance does \
             not hold: give that store's recovery key to read it",
            header.digest
        )),
    }
}

/// Check a record's content as far as this store can (verify and pack scans): decode it and
/// match it against its id; for a foreign record without its key, the checksum alone
/// (already checked by the caller) is all there is.
pub fn check_content(
    keys: &Keyring,
    header: &RecordHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<ContentCheck, String> {
    Ok(decode_any(keys, header, payload, out, ReadCheck::Digest)?.unwrap_or(ContentCheck::ChecksumOnly))
}

/// `None`: a foreign sealed record no key here opens.
fn decode_any(
    keys: &Keyring,
    header: &RecordHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
    check: ReadCheck,
) -> std::result::Result<Option<ContentCheck>, String> {
    if header.foreign {
        if header.cipher == Cipher::None {
            decompress_payload(header.codec, payload, header.raw_len, out)?;
            let verified = keys.replica_keys().iter().any(|k| k.digest(out) == header.digest);
            return Ok(Some(if verified { ContentCheck::Verified } else { ContentCheck::ChecksumOnly }));
        }
        for k in keys.replica_keys() {
            if open_and_decode(k, header, payload, out).is_ok() && k.digest(out) == header.digest {
                return Ok(Some(ContentCheck::Verified));
            }
        }
        return Ok(None);
    }
    if header.cipher == Cipher::None {
        if keys.is_encrypted() {
            // An encrypted store never writes a record unsealed: this one was put there by
            // someone without the key, and its content would be unauthenticated.
            return Err("an unencrypted record in an encrypted store (written without the key: tampering)".into());
        }
        decompress_payload(header.codec, payload, header.raw_len, out)?;
    } else {
        open_and_decode(keys, header, payload, out)?;
    }
    if check == ReadCheck::Digest && keys.digest(out) != header.digest {
        return Err(format!("content does not match its digest {}", header.digest));
    }
    Ok(Some(ContentCheck::Verified))
}

/// Open a sealed record with `keys` and decompress it into `out`.
fn open_and_decode(
    keys: &Keyring,
    header: &RecordHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let open = |dst: &mut Vec<u8>| {
        keys.open(header.kind, header.codec, header.cipher, header.raw_len, &header.digest, payload, dst)
    };
    match header.codec {
        Codec::Raw => {
            open(out)?;
            if out.len() != header.raw_len as usize {
                return Err(format!("raw payload is {} bytes, header says {}", out.len(), header.raw_len));
            }
        }
        Codec::Zstd => {
            thread_local! {
                static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            PLAIN.with(|cell| {
                let mut plain = cell.borrow_mut();
                open(&mut plain)?;
                decompress_payload(header.codec, &plain, header.raw_len, out)
            })?;
        }
    }
    Ok(())
}

/// Decode an unencrypted record payload into `out` and check it against its plain blake3
/// `digest` (tape records, which come from unencrypted stores).
pub fn decode_payload(
    codec: Codec,
    payload: &[u8],
    raw_len: u32,
    digest: &Digest,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    decompress_payload(codec, payload, raw_len, out)?;
    if Digest::of(out) != *digest {
        return Err(format!("content does not match its digest {digest}"));
    }
    Ok(())
}

/// Decode a record payload into `out` without re-hashing it.
pub fn decompress_payload(
    codec: Codec,
    payload: &[u8],
    raw_len: u32,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    out.clear();
    match codec {
        Codec::Raw => {
            if payload.len() != raw_len as usize {
                return Err(format!("raw payload is {} bytes, header says {raw_len}", payload.len()));
            }
            out.extend_from_slice(payload);
        }
        Codec::Zstd => {
            out.reserve(raw_len as usize);
            // One decompression context per thread, reused: creating one per chunk costs
            // more than decompressing a small chunk.
            thread_local! {
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
            }
            let n = DCTX
                .with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new()?);
                    }
                    // The Vec's spare capacity (>= raw_len) is the destination, so a frame
                    // that claims more than raw_len fails instead of allocating.
                    slot.as_mut().expect("set above").decompress_to_buffer(payload, out)
                })
                .map_err(|e| format!("zstd: {e}"))?;
            if n != raw_len as usize {
                return Err(format!("decompressed to {n} bytes, header says {raw_len}"));
            }
        }
    }
    Ok(())
}

/// How much [`read_record`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCheck {
    /// The record checksum (crc32c over header and stored bytes) and the lengths. Catches
    /// damage to stored bytes; used on the restore path, which must be fast.
    Checksum,
    /// Also re-hash the decoded content and compare it with the digest: end to end.
    Digest,
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub codec: Codec,
    pub cipher: Cipher,
    pub raw_len: u32,
    pub stored_len: u32,
    pub digest: Digest,
    /// Byte 7, bit 0: a foreign record (see the module docs).
    pub foreign: bool,
    pub crc: u32,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(RECORD_MAGIC);
        h[4] = self.kind as u8;
        h[5] = self.codec as u8;
        h[6] = self.cipher as u8;
        h[7] = u8::from(self.foreign);
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..48].copy_from_slice(&self.digest.0);
        h[48..52].copy_from_slice(&self.crc.to_le_bytes());
        h
    }

    /// Parse a header; `Ok(None)` for zero padding.
    pub fn decode(h: &[u8]) -> std::result::Result<Option<RecordHeader>, String> {
        if h.len() < RECORD_HEADER_LEN {
            return Err("truncated record header".into());
        }
        if h[0..4] == [0; 4] {
            return Ok(None);
        }
        if &h[0..4] != RECORD_MAGIC {
            return Err("bad record magic".into());
        }
        let kind = RecordKind::from_u8(h[4]).ok_or_else(|| format!("unknown record kind {}", h[4]))?;
        let codec = Codec::from_u8(h[5]).ok_or_else(|| format!("unknown codec {}", h[5]))?;
        let cipher = Cipher::from_u8(h[6]).ok_or_else(|| format!("unknown cipher {}", h[6]))?;
        if h[7] & !FLAG_FOREIGN != 0 {
            return Err(format!("unknown record flags {:#04x}", h[7]));
        }
        let foreign = h[7] & FLAG_FOREIGN != 0;
        let raw_len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        if raw_len > MAX_RECORD_RAW || stored_len > MAX_RECORD_RAW + (MAX_RECORD_RAW >> 4) {
            return Err(format!("absurd record lengths raw={raw_len} stored={stored_len}"));
        }
        let digest = Digest(h[16..48].try_into().expect("32 bytes"));
        let crc = u32::from_le_bytes(h[48..52].try_into().expect("4 bytes"));
        Ok(Some(RecordHeader { kind, codec, cipher, raw_len, stored_len, digest, foreign, crc }))
    }

    /// The checksum over the header's first 48 bytes and the payload.
    pub fn compute_crc(header48: &[u8], payload: &[u8]) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(&header48[..48]), payload)
    }
}

/// Encode the 64-byte pack header of a store of format `format`.
pub fn encode_pack_header(pack: u64, store_id: &[u8; 16], created: u64, format: u32) -> [u8; PACK_HEADER_LEN as usize] {
    let mut h = [0u8; PACK_HEADER_LEN as usize];
    h[0..8].copy_from_slice(PACK_MAGIC);
    h[8..12].copy_from_slice(&format.to_le_bytes());
    h[16..24].copy_from_slice(&pack.to_le_bytes());
    h[24..40].copy_from_slice(store_id);
    h[40..48].copy_from_slice(&created.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Parse a pack header, returning (format, pack number, store id).
pub fn decode_pack_header(h: &[u8]) -> std::result::Result<(u32, u64, [u8; 16]), String> {
    if h.len() < PACK_HEADER_LEN as usize {
        return Err("file shorter than a pack header".into());
    }
    if &h[0..8] != PACK_MAGIC {
        return Err("not a pack file (bad magic)".into());
    }
    let crc = u32::from_le_bytes(h[60..64].try_into().expect("4 bytes"));
    if crc32c::crc32c(&h[0..60]) != crc {
        return Err("pack header checksum mismatch".into());
    }
    let format = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    let pack = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    let store_id = h[24..40].try_into().expect("16 bytes");
    Ok((format, pack, store_id))
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    pub offset: u64,
    pub stored_len: u32,
}

/// Appends records to one new pack file.
#[derive(Debug)]
pub struct PackWriter {
    path: PathBuf,
    /// Declared before `file`, so it drops (waiting for writes in flight) first.
    writer: uringio::WriteBehind,
    file: File,
    pub number: u64,
    /// Bytes durably handed to the file so far (always a multiple of 4096).
    flushed: u64,
    buf: AlignedBuf,
    /// Logical end of the data: `flushed + buf.len()`.
    records: u32,
    /// Record bytes (header and payload) of deferred chunks appended so far.
    deferred: u64,
    direct: bool,
}

impl PackWriter {
    /// Create `path` (which must not exist) as pack `number` of a store of format `format`.
    pub fn create(path: &Path, number: u64, store_id: &[u8; 16], created: u64, format: u32) -> Result<PackWriter> {
        let (file, direct) = uringio::open_direct(path, true).map_err(|e| StoreError::io(path, e))?;
        let mut writer =
            uringio::WriteBehind::new(&file, WRITE_BUF, WRITES_IN_FLIGHT).map_err(|e| StoreError::io(path, e))?;
        let mut buf = writer.take_buffer().map_err(|f| StoreError::io(path, f.error))?;
        buf.extend_from_slice(&encode_pack_header(number, store_id, created, format));
        Ok(PackWriter {
            path: path.to_path_buf(),
            writer,
            file,
            number,
            flushed: 0,
            buf,
            records: 0,
            deferred: 0,
            direct,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Logical size: where the next record starts.
    pub fn len(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn records(&self) -> u32 {
        self.records
    }

    /// Record bytes of the chunks appended [`deferred`](EncodedChunk::deferred), for the
    /// pack's [`PackInfo::deferred_bytes`](crate::PackInfo).
    pub fn deferred_bytes(&self) -> u64 {
        self.deferred
    }

    /// Append one record.
    pub fn append(&mut self, chunk: &EncodedChunk) -> Result<RecordLocation> {
        let offset = self.len();
        let mut header = chunk.header();
        let pre = header.encode();
        header.crc = RecordHeader::compute_crc(&pre, &chunk.payload);
        self.put(&header.encode())?;
        self.put(&chunk.payload)?;
        self.records += 1;
        if chunk.deferred {
            self.deferred += RECORD_HEADER_LEN as u64 + chunk.payload.len() as u64;
        }
        Ok(RecordLocation { offset, stored_len: header.stored_len })
    }

    fn put(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = self.buf.extend_from_slice(data);
            data = &data[n..];
            if self.buf.spare() == 0 {
                self.flush_full()?;
            }
        }
        Ok(())
    }

    /// Hand the full buffer to the background writer and continue in a fresh one.
    fn flush_full(&mut self) -> Result<()> {
        let next = self.writer.take_buffer().map_err(|f| StoreError::io(&self.path, f.error))?;
        let full = std::mem::replace(&mut self.buf, next);
        let len = full.len() as u64;
        self.writer.submit(self.flushed, full).map_err(|f| StoreError::io(&self.path, f.error))?;
        self.flushed += len;
        Ok(())
    }

    /// Write the tail (zero-padded to 4 KiB) and make the whole file durable. Returns where
    /// it is and its pack-table entry (its length is the end of the last record).
    pub fn seal(mut self) -> Result<SealedPack> {
        let logical = self.len();
        if !self.buf.is_empty() {
            self.buf.pad_to_alignment();
            let tail = std::mem::replace(&mut self.buf, AlignedBuf::with_capacity(0));
            self.writer.submit(self.flushed, tail).map_err(|f| StoreError::io(&self.path, f.error))?;
        }
        // Every write must have completed before the fsync that makes them durable.
        self.writer.finish().map_err(|f| StoreError::io(&self.path, f.error))?;
        self.file.sync_all().map_err(|e| StoreError::io(&self.path, e))?;
        let info = PackInfo {
            number: self.number,
            len: logical,
            records: self.records,
            sealed_unix: crate::now_unix(),
            deferred_bytes: self.deferred,
        };
        Ok(SealedPack { path: self.path, info })
    }
}

/// A pack made durable by [`PackWriter::seal`], still at its temporary path.
#[derive(Debug)]
pub struct SealedPack {
    pub path: PathBuf,
    pub info: PackInfo,
}

/// Read and check the record at `offset` of `file` (whose path is for messages), decoding its
/// payload into `out` (opening it with `keys` if it is sealed). `scratch` is reused between
/// calls.
#[allow(clippy::too_many_arguments)]
pub fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    stored_len: u32,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
    check: ReadCheck,
    keys: &Keyring,
) -> Result<RecordHeader> {
    let header = read_record_stored(file, path, offset, stored_len, scratch)?;
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), offset, detail };
    let payload = &scratch[RECORD_HEADER_LEN..];
    if decode_any(keys, &header, payload, out, check).map_err(corrupt)?.is_none() {
        return Err(StoreError::ReplicaKeyRequired { digest: header.digest, tried: keys.replica_keys().len() });
    }
    Ok(header)
}

/// Read the record at `offset` into `scratch` (header then stored bytes) and check its
/// checksum, without decoding the payload.
pub fn read_record_stored(
    file: &File,
    path: &Path,
    offset: u64,
    stored_len: u32,
    scratch: &mut Vec<u8>,
) -> Result<RecordHeader> {
    let total = RECORD_HEADER_LEN + stored_len as usize;
    scratch.resize(total, 0);
    file.read_exact_at(scratch, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StoreError::Corrupt { path: path.to_path_buf(), offset, detail: "pack is truncated".into() }
        } else {
            StoreError::io(path, e)
        }
    })?;
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), offset, detail };
    let header = RecordHeader::decode(&scratch[..RECORD_HEADER_LEN])
        .map_err(corrupt)?
        .ok_or_else(|| corrupt("expected a record, found padding".into()))?;
    if header.stored_len != stored_len {
        return Err(corrupt(format!("record is {} bytes, index says {stored_len}", header.stored_len)));
    }
    if RecordHeader::compute_crc(&scratch[..RECORD_HEADER_LEN], &scratch[RECORD_HEADER_LEN..]) != header.crc {
        return Err(corrupt("record checksum mismatch".into()));
    }
    Ok(header)
}

/// One record found by [`scan_pack`].
#[derive(Debug, Clone, Copy)]
pub struct ScannedRecord {
    pub header: RecordHeader,
    pub offset: u64,
    /// Whether the payload passed its checksum (and, when content is checked, its digest).
    pub intact: bool,
    /// Intact, but a foreign record this store could check by its checksum only.
    pub checksum_only: bool,
}

/// A stretch of a pack [`scan_pack`] could not read as records: a damaged header, a record
/// cut short, garbage. Records that lay in it are lost (or at least unlocatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRange {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// What [`scan_pack`] found in one pack file.
#[derive(Debug, Clone, Default)]
pub struct PackScan {
    /// The pack number in the header; `None` when the header is damaged.
    pub number: Option<u64>,
    /// Why the 64-byte pack header is unusable, if it is.
    pub header_error: Option<String>,
    /// Every record found, in order, intact or not.
    pub records: Vec<ScannedRecord>,
    /// Stretches that are not records, in order (a damaged or truncated tail is the last).
    pub skipped: Vec<SkippedRange>,
    /// End of the last record found (`PACK_HEADER_LEN` when there is none).
    pub end: u64,
    /// Length of the file.
    pub len: u64,
}

impl PackScan {
    /// Whether `offset` lies in a skipped stretch.
    pub fn in_skipped(&self, offset: u64) -> Option<&SkippedRange> {
        self.skipped.iter().find(|r| offset >= r.offset && offset < r.offset + r.len)
    }

    /// Whether the pack needs no repair: header, every record and the tail are sound.
    pub fn is_clean(&self) -> bool {
        self.header_error.is_none() && self.skipped.is_empty() && self.records.iter().all(|r| r.intact)
    }
}

/// A window over a pack file read in large blocks, so that a sequential walk costs few reads
/// and a search for the next record can look back and forth.
struct Window<'f> {
    file: &'f File,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    const BLOCK: usize = 4 << 20;

    /// Bytes `[offset, offset + n)`; `None` past the end of the file.
    fn get(&mut self, offset: u64, n: usize) -> std::io::Result<Option<&[u8]>> {
        if offset + n as u64 > self.len {
            return Ok(None);
        }
        if offset < self.start || offset + n as u64 > self.start + self.buf.len() as u64 {
            let want = (n.max(Self::BLOCK) as u64).min(self.len - offset) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let s = (offset - self.start) as usize;
        Ok(Some(&self.buf[s..s + n]))
    }

    /// The header of a record at `offset` whose magic decodes and whose checksum over header
    /// and payload matches: proof that a record starts there.
    fn valid_record_at(&mut self, offset: u64) -> std::io::Result<Option<RecordHeader>> {
        let header = match self.get(offset, RECORD_HEADER_LEN)? {
            Some(h) => match RecordHeader::decode(h) {
                Ok(Some(h)) => h,
                _ => return Ok(None),
            },
            None => return Ok(None),
        };
        match self.get(offset, RECORD_HEADER_LEN + header.stored_len as usize)? {
            Some(b) if RecordHeader::compute_crc(b, &b[RECORD_HEADER_LEN..]) == header.crc => Ok(Some(header)),
            _ => Ok(None),
        }
    }

    /// Whether everything from `offset` to the end is the zero padding of a sealed pack.
    fn padding_at(&mut self, offset: u64) -> std::io::Result<bool> {
        let rest = self.len.saturating_sub(offset);
        if rest >= 4096 {
            return Ok(false);
        }
        Ok(self.get(offset, rest as usize)?.is_some_and(|b| b.iter().all(|&x| x == 0)))
    }

    /// The first offset at or after `from` where a checksummed record starts.
    fn next_record(&mut self, from: u64) -> std::io::Result<Option<u64>> {
        let mut p = from;
        while p + RECORD_HEADER_LEN as u64 <= self.len {
            let n = (Self::BLOCK as u64).min(self.len - p) as usize;
            let candidates: Vec<u64> = match self.get(p, n)? {
                Some(b) => b
                    .windows(RECORD_MAGIC.len())
                    .enumerate()
                    .filter(|(_, w)| *w == RECORD_MAGIC)
                    .map(|(i, _)| p + i as u64)
                    .collect(),
                None => break,
            };
            for c in candidates {
                if self.valid_record_at(c)?.is_some() {
                    return Ok(Some(c));
                }
            }
            // Overlap by the magic's length less one, so a magic across blocks is seen.
            p += (n - (RECORD_MAGIC.len() - 1)) as u64;
        }
        Ok(None)
    }
}

/// Walk every record of a pack in order. `check_content` also opens (with `keys`) and
/// decompresses each payload and checks its digest (verify); without it only checksums are
/// checked (index rebuild), which needs no key.
///
/// Damage does not end the walk. A damaged pack header is reported and the records are read
/// anyway (each is self-checking). After a header that does not decode, a record cut short,
/// or a record whose checksum fails and after which no record follows where its length says,
/// the scanner searches forward for the next offset where a record header decodes *and* its
/// checksum over header and payload matches, and continues there; the stretch in between is
/// reported in [`PackScan::skipped`]. A record whose checksum fails but which is followed by a
/// valid record (or the end) is listed with `intact: false`: its length, and so probably its
/// digest, are right. Errors only if the file cannot be opened.
pub fn scan_pack(path: &Path, check_content: bool, keys: &Keyring) -> Result<PackScan> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut w = Window { file: &file, len, start: 0, buf: Vec::new() };
    let mut scan = PackScan { end: PACK_HEADER_LEN, len, ..Default::default() };
    match w.get(0, PACK_HEADER_LEN as usize) {
        Ok(Some(head)) => match decode_pack_header(head) {
            Ok((_, number, _)) => scan.number = Some(number),
            Err(e) => scan.header_error = Some(e),
        },
        Ok(None) => scan.header_error = Some("file shorter than a pack header".into()),
        Err(e) => scan.header_error = Some(format!("read error: {e}")),
    }
    let mut out = Vec::new();
    let mut pos = PACK_HEADER_LEN;
    let result: std::io::Result<()> = (|| {
        while pos < len {
            let head: Option<[u8; RECORD_HEADER_LEN]> =
                w.get(pos, RECORD_HEADER_LEN)?.map(|b| b.try_into().expect("64 bytes"));
            let header = match head {
                None if w.padding_at(pos)? => break,
                None => Err("a fragment shorter than a record header (the pack is truncated)".to_string()),
                Some(h) => match RecordHeader::decode(&h) {
                    Ok(Some(h)) => Ok(h),
                    Ok(None) if w.padding_at(pos)? => break,
                    Ok(None) => Err("zeros where a record header should be".to_string()),
                    Err(e) => Err(format!("unreadable record header ({e})")),
                },
            };
            let why = match header {
                Err(why) => why,
                Ok(header) => {
                    let total = RECORD_HEADER_LEN + header.stored_len as usize;
                    let next = pos + total as u64;
                    let mut checksum_only = false;
                    let crc_ok = match w.get(pos, total)? {
                        Some(b) => {
                            let ok = RecordHeader::compute_crc(b, &b[RECORD_HEADER_LEN..]) == header.crc;
                            if ok && check_content {
                                let payload = &b[RECORD_HEADER_LEN..];
                                match crate::pack::check_content(keys, &header, payload, &mut out) {
                                    Ok(how) => {
                                        checksum_only = how == ContentCheck::ChecksumOnly;
                                        Some(true)
                                    }
                                    Err(_) => Some(false),
                                }
                            } else {
                                Some(ok)
                            }
                        }
                        None => None,
                    };
                    match crc_ok {
                        Some(true) => {
                            scan.records.push(ScannedRecord { header, offset: pos, intact: true, checksum_only });
                            pos = next;
                            scan.end = pos;
                            continue;
                        }
                        // A damaged payload: trust the length only if the next record (or
                        // the end of the pack) is where it says.
                        Some(false) if next == len || w.padding_at(next)? || w.valid_record_at(next)?.is_some() => {
                            scan.records.push(ScannedRecord {
                                header,
                                offset: pos,
                                intact: false,
                                checksum_only: false,
                            });
                            pos = next;
                            scan.end = pos;
                            continue;
                        }
                        Some(false) => "record fails its checksum and no record follows where its length says".into(),
                        None => format!("record of {total} bytes is cut short (the pack is truncated)"),
                    }
                }
            };
            match w.next_record(pos + 1)? {
                Some(n) => {
                    scan.skipped.push(SkippedRange {
                        offset: pos,
                        len: n - pos,
                        reason: format!("{why}; the scan resumed at the next intact record at byte offset {n}"),
                    });
                    pos = n;
                }
                None => {
                    scan.skipped.push(SkippedRange {
                        offset: pos,
                        len: len - pos,
                        reason: format!("{why}; no intact record follows"),
                    });
                    break;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        scan.skipped.push(SkippedRange {
            offset: pos,
            len: len.saturating_sub(pos),
            reason: format!("read error: {e}"),
        });
    }
    Ok(scan)
}

/// Splits the complete records at the front of `buf` (a stream of records as a pack holds
/// them, without the pack header: replication sends batches this way). Returns them and how
/// many bytes they took; a record still incomplete at the end is left for more bytes. Each
/// record's framing and CRC are checked; its content is not (see [`decode_payload`]).
pub fn split_records(buf: &[u8]) -> std::result::Result<(Vec<EncodedChunk>, usize), String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while buf.len() - at >= RECORD_HEADER_LEN {
        let h = &buf[at..at + RECORD_HEADER_LEN];
        let header =
            RecordHeader::decode(h)?.ok_or_else(|| "zero padding where a record header belongs".to_string())?;
        let len = RECORD_HEADER_LEN + header.stored_len as usize;
        if buf.len() - at < len {
            break;
        }
        let payload = &buf[at + RECORD_HEADER_LEN..at + len];
        if RecordHeader::compute_crc(h, payload) != header.crc {
            return Err(format!("record {} fails its checksum", header.digest));
        }
        // A raw chunk may be one the sender stored raw for later: the receiving store's
        // recompression pass tries it (the deferral is not in the record).
        out.push(EncodedChunk {
            deferred: maybe_deferred(&header),
            ..EncodedChunk::from_record(&header, payload.to_vec())
        });
        at += len;
    }
    Ok((out, at))
}

/// The wire form [`split_records`] reads: each record's 64-byte header (with its CRC) and
/// payload, back to back.
pub fn join_records(records: &[EncodedChunk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|c| RECORD_HEADER_LEN + c.payload.len()).sum());
    for c in records {
        let mut h = c.header();
        h.crc = RecordHeader::compute_crc(&h.encode(), &c.payload);
        out.extend_from_slice(&h.encode());
        out.extend_from_slice(&c.payload);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stream_split_anywhere_and_mutated_anywhere_never_panics_and_never_yields_a_bad_record() {
        let mut enc = ChunkEncoder::new(Some(1));
        let records: Vec<EncodedChunk> = (0u8..6)
            .map(|i| {
                let raw: Vec<u8> = (0..3000u32).map(|j| (j as u8).wrapping_mul(i + 1)).collect();
                enc.encode(Digest::of(&raw), RecordKind::Data, &raw)
            })
            .collect();
        let wire = join_records(&records);
        // Split at every length: only whole records come out, in order.
        for cut in 0..=wire.len() {
            let (got, used) = split_records(&wire[..cut]).unwrap();
            assert!(used <= cut);
            assert_eq!(
                got.iter().map(|c| c.digest).collect::<Vec<_>>(),
                records[..got.len()].iter().map(|c| c.digest).collect::<Vec<_>>()
            );
        }
        assert_eq!(split_records(&wire).unwrap().0.len(), 6);
        // One flipped bit anywhere: an error, or records that are all intact.
        let mut x = 0x9e37_79b9u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = wire.clone();
            let at = (x as usize) % m.len();
            m[at] ^= 1 << ((x >> 40) % 8);
            if let Ok((got, _)) = split_records(&m) {
                for c in got {
                    let mut out = Vec::new();
                    let intact = records.iter().any(|r| r.digest == c.digest && r.payload == c.payload);
                    assert!(intact || decode_payload(c.codec, &c.payload, c.raw_len, &c.digest, &mut out).is_err());
                }
            }
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let text: Vec<u8> = (0..262_144u32).map(|i| b"hello world, log line "[(i % 22) as usize]).collect();
        let mut enc = ChunkEncoder::new(Some(1));
        let d = Digest::of(&text);
        let c = enc.encode(d, RecordKind::Data, &text);
        assert_eq!(c.codec, Codec::Zstd);
        let mut out = Vec::new();
        decode_payload(c.codec, &c.payload, c.raw_len, &d, &mut out).unwrap();
        assert_eq!(out, text);
        // reuse of the output buffer
        decode_payload(c.codec, &c.payload, c.raw_len, &d, &mut out).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn random_chunks_skip_compression_text_does_not() {
        let mut random = vec![0u8; 262_144];
        blake3::Hasher::new().update(b"seed").finalize_xof().fill(&mut random);
        assert!(looks_incompressible(&random));
        let text: Vec<u8> = (0..262_144u32).map(|i| b"hello world, log line "[(i % 22) as usize]).collect();
        assert!(!looks_incompressible(&text));
        // random data with one text window in it is still tried
        let mut mixed = random.clone();
        mixed[..65_536].copy_from_slice(&text[..65_536]);
        assert!(!looks_incompressible(&mixed));
        let enc = ChunkEncoder::new(Some(1)).encode(Digest::of(&random), RecordKind::Data, &random);
        assert_eq!(enc.codec, Codec::Raw);
        assert_eq!(enc.payload, random);
    }
}
