//! The on-tape format: self-describing cartridges that can be read with no database.
//!
//! ## Layout of a cartridge
//! ```text
//!  file 0   medium label     one block: MediumLabel (JSON)        written by `tape label`
//!  file 1   media-set label  one block: SetLabel (JSON)           written when a set takes it
//!  file 2.. archives         each one tape file (ends in a filemark):
//!             chunk archive    records: store chunks (data and index-tree nodes) as stored
//!             point archive    records: index-tree nodes, files' contents, then the manifest
//!             catalog archive  one record: TapeCatalog (JSON) of every archive on this tape
//! ```
//! A destage job appends chunk archives, then one point archive per restore point, then a
//! catalog archive; a later job of the same media set appends after the last catalog, so the
//! last catalog on a tape describes everything before it. At early warning the current
//! archive ends after the record being written and continues as the next *part* (same archive
//! id) on the next cartridge of the set: a record never straddles two cartridges.
//!
//! ## Blocks
//! Every tape block (at most [`MAX_BLOCK`], variable length) starts with a 64-byte header:
//! ```text
//!   0  magic "RVTB"          4  version u8 (1)     5  kind u8 (ArchiveKind)
//!   6  flags u8 (bit 0: last block of this archive part)              7  reserved
//!   8  archive id [16]      24  block sequence u64 (from 0, counted across parts)
//!  32  payload length u32   36  first record offset u32 (into the payload; u32::MAX: none
//!                               starts in this block)
//!  40  part u32             44  reserved u32
//!  48  digest [16]: blake3 of bytes 0..48 and the payload, truncated
//! ```
//! The payload is a slice of the archive's record stream. Because every block says where
//! its first record starts, a reader that meets a damaged block loses only the records that
//! touch it and resynchronises at the next good block.
//!
//! ## Records (in the stream)
//! ```text
//!   0  magic "RVTR"   4  kind u8 (RecordKind: 1 data, 2 tree, 3 manifest, 16 file, 17 catalog)
//!   5  codec u8 (store Codec)   6  reserved [2]   8  raw length u32   12  stored length u32
//!  16  digest [32]: blake3 of the raw (decoded) content, the store's chunk digest
//!  48  stored bytes
//! ```
//! Every record carries its digest; readers decode and re-hash before using a record.

use serde::{Deserialize, Serialize};
use store::{Codec, Digest};

/// Largest block this format writes or accepts.
pub const MAX_BLOCK: usize = 1 << 20;
/// Smallest block size a destage accepts (a drive that cannot take 256 KiB blocks would not
/// stream).
pub const MIN_STREAM_BLOCK: usize = 256 << 10;
pub const BLOCK_HEADER: usize = 64;
pub const RECORD_HEADER: usize = 48;
const BLOCK_MAGIC: &[u8; 4] = b"RVTB";
const RECORD_MAGIC: &[u8; 4] = b"RVTR";
const VERSION: u8 = 1;
const FLAG_LAST: u8 = 1;
const NO_RECORD: u32 = u32::MAX;
/// Largest record payload accepted (a store record is at most 16 MiB + 1/16).
pub const MAX_RECORD: u32 = 18 << 20;
/// Format name written into labels.
pub const FORMAT: &str = "rackvault-tape-1";

/// Tape file numbers of the two labels.
pub const LABEL_FILE: u64 = 0;
pub const SET_LABEL_FILE: u64 = 1;
pub const FIRST_ARCHIVE_FILE: u64 = 2;

/// What a tape file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveKind {
    Label = 1,
    SetLabel = 2,
    Chunks = 3,
    Point = 4,
    Catalog = 5,
}

impl ArchiveKind {
    fn from_u8(v: u8) -> Option<ArchiveKind> {
        Some(match v {
            1 => ArchiveKind::Label,
            2 => ArchiveKind::SetLabel,
            3 => ArchiveKind::Chunks,
            4 => ArchiveKind::Point,
            5 => ArchiveKind::Catalog,
            _ => return None,
        })
    }
}

/// What a record holds. Values 1-3 are the store's record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapeRecordKind {
    Data = 1,
    Tree = 2,
    Manifest = 3,
    File = 16,
    Catalog = 17,
}

impl TapeRecordKind {
    fn from_u8(v: u8) -> Option<TapeRecordKind> {
        Some(match v {
            1 => TapeRecordKind::Data,
            2 => TapeRecordKind::Tree,
            3 => TapeRecordKind::Manifest,
            16 => TapeRecordKind::File,
            17 => TapeRecordKind::Catalog,
            _ => return None,
        })
    }
}

/// The first file of every cartridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediumLabel {
    pub format: String,
    /// Random id, hex; survives relabelling of the barcode sticker.
    pub medium_id: String,
    pub barcode: String,
    pub pool: String,
    pub labelled_unix: u64,
}

/// The second file: which media set the cartridge belongs to, and its place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLabel {
    pub format: String,
    pub set_id: String,
    pub pool: String,
    /// 0 for the first cartridge of the set.
    pub seq: u32,
    pub set_created_unix: u64,
    pub medium_id: String,
}

/// One archive (part) on a cartridge, as the catalog archive lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    pub file: u64,
    pub kind: ArchiveKind,
    pub archive_id: String,
    pub part: u32,
    pub bytes: u64,
    /// Chunk archives: `(digest hex, block sequence where the record starts)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<(String, u64)>,
    /// Point archives: the restore point spec ("name@id") and its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<store::RestorePoint>,
}

/// The content list a catalog archive carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TapeCatalog {
    pub format: String,
    pub medium_id: String,
    pub barcode: String,
    pub set: SetLabel,
    pub written_unix: u64,
    pub archives: Vec<ArchiveEntry>,
}

/// Format errors: the bytes read are not what this format writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a rackvault tape block ({0})")]
    NotOurs(String),
    #[error("damaged tape block: {0}")]
    Damaged(String),
    #[error("bad record in archive stream: {0}")]
    BadRecord(String),
}

/// A parsed block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub kind: ArchiveKind,
    pub last: bool,
    pub archive_id: [u8; 16],
    pub seq: u64,
    pub payload_len: u32,
    pub first_record: Option<u32>,
    pub part: u32,
}

fn block_digest(header48: &[u8], payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(header48);
    h.update(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// Writes one block: header then payload, into `out` (cleared first).
pub fn encode_block(h: &BlockHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(BLOCK_HEADER, 0);
    out[0..4].copy_from_slice(BLOCK_MAGIC);
    out[4] = VERSION;
    out[5] = h.kind as u8;
    out[6] = if h.last { FLAG_LAST } else { 0 };
    out[8..24].copy_from_slice(&h.archive_id);
    out[24..32].copy_from_slice(&h.seq.to_le_bytes());
    out[32..36].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[36..40].copy_from_slice(&h.first_record.unwrap_or(NO_RECORD).to_le_bytes());
    out[40..44].copy_from_slice(&h.part.to_le_bytes());
    let d = block_digest(&out[..48], payload);
    out[48..64].copy_from_slice(&d);
    out.extend_from_slice(payload);
}

/// Parses and checks a block read from tape; returns the header and the payload.
pub fn decode_block(b: &[u8]) -> Result<(BlockHeader, &[u8]), FormatError> {
    if b.len() < BLOCK_HEADER || &b[0..4] != BLOCK_MAGIC {
        return Err(FormatError::NotOurs(format!("{} bytes without the RVTB magic", b.len())));
    }
    if b[4] != VERSION {
        return Err(FormatError::NotOurs(format!(
            "format version {} (this firmware reads version {VERSION}); upgrade the firmware",
            b[4]
        )));
    }
    let kind =
        ArchiveKind::from_u8(b[5]).ok_or_else(|| FormatError::Damaged(format!("unknown archive kind {}", b[5])))?;
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let payload_len = u32_at(32);
    if payload_len as usize != b.len() - BLOCK_HEADER {
        return Err(FormatError::Damaged(format!(
            "header says {payload_len} payload bytes, block has {}",
            b.len() - BLOCK_HEADER
        )));
    }
    let payload = &b[BLOCK_HEADER..];
    if block_digest(&b[..48], payload) != b[48..64] {
        return Err(FormatError::Damaged("block digest mismatch".into()));
    }
    let first = u32_at(36);
    let first_record = if first == NO_RECORD { None } else { Some(first) };
    if let Some(f) = first_record {
        if f > payload_len {
            return Err(FormatError::Damaged(format!("first record offset {f} past payload of {payload_len}")));
        }
    }
    Ok((
        BlockHeader {
            kind,
            last: b[6] & FLAG_LAST != 0,
            archive_id: b[8..24].try_into().expect("16 bytes"),
            seq: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
            payload_len,
            first_record,
            part: u32_at(40),
        },
        payload,
    ))
}

/// A record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: TapeRecordKind,
    pub codec: Codec,
    pub raw_len: u32,
    pub stored_len: u32,
    pub digest: Digest,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER] {
        let mut h = [0u8; RECORD_HEADER];
        h[0..4].copy_from_slice(RECORD_MAGIC);
        h[4] = self.kind as u8;
        h[5] = self.codec as u8;
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..48].copy_from_slice(&self.digest.0);
        h
    }

    pub fn decode(h: &[u8]) -> Result<RecordHeader, FormatError> {
        if h.len() < RECORD_HEADER || &h[0..4] != RECORD_MAGIC {
            return Err(FormatError::BadRecord("missing RVTR magic".into()));
        }
        let kind =
            TapeRecordKind::from_u8(h[4]).ok_or_else(|| FormatError::BadRecord(format!("unknown kind {}", h[4])))?;
        let codec = Codec::from_u8(h[5]).ok_or_else(|| FormatError::BadRecord(format!("unknown codec {}", h[5])))?;
        let raw_len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        if raw_len > MAX_RECORD || stored_len > MAX_RECORD {
            return Err(FormatError::BadRecord(format!("absurd lengths raw={raw_len} stored={stored_len}")));
        }
        Ok(RecordHeader { kind, codec, raw_len, stored_len, digest: Digest(h[16..48].try_into().expect("32 bytes")) })
    }
}

/// A record taken out of the stream: header, stored bytes, and the block sequence number of
/// the block where it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
    pub start_seq: u64,
}

impl Record {
    /// Decodes the payload and checks it against the record's digest.
    pub fn decode_checked(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        store::pack::decode_payload(self.header.codec, &self.payload, self.header.raw_len, &self.header.digest, out)
            .map_err(|e| FormatError::BadRecord(format!("record {}: {e}", self.header.digest)))
    }
}

/// Reassembles records from the payloads of consecutive blocks of one archive. Fed block by
/// block; a gap (a damaged or unreadable block) drops the partial record and resynchronises
/// at the next block's first record.
#[derive(Debug, Default)]
pub struct RecordAssembler {
    buf: Vec<u8>,
    /// Block sequence where `buf`'s first byte was read; `None`: not synchronised.
    start_seq: Option<u64>,
    expect_seq: Option<u64>,
}

/// What [`RecordAssembler::push`] found.
#[derive(Debug, Default)]
pub struct Pushed {
    pub records: Vec<Record>,
    /// Records whose bytes were lost with a gap, as (digest when its header survived,
    /// start block sequence).
    pub lost: Vec<(Option<Digest>, u64)>,
    /// Malformed record data found (the stream was resynchronised after it).
    pub errors: Vec<FormatError>,
}

impl RecordAssembler {
    pub fn new() -> RecordAssembler {
        RecordAssembler::default()
    }

    /// Notes that the block with sequence `seq` could not be read.
    pub fn gap(&mut self, seq: u64, out: &mut Pushed) {
        if let Some(start) = self.start_seq.take().filter(|_| !self.buf.is_empty()) {
            let digest = (self.buf.len() >= RECORD_HEADER)
                .then(|| RecordHeader::decode(&self.buf[..RECORD_HEADER]).ok().map(|h| h.digest))
                .flatten();
            out.lost.push((digest, start));
        }
        self.buf.clear();
        self.expect_seq = Some(seq + 1);
    }

    /// Feeds one good block of the archive.
    pub fn push(&mut self, h: &BlockHeader, payload: &[u8]) -> Pushed {
        let mut out = Pushed::default();
        if let Some(e) = self.expect_seq {
            if h.seq != e {
                // Blocks went missing without a reported gap.
                for s in e..h.seq {
                    self.gap(s, &mut out);
                }
            }
        }
        self.expect_seq = Some(h.seq + 1);
        let mut data = payload;
        if self.start_seq.is_none() {
            match h.first_record {
                Some(f) => {
                    data = &payload[f as usize..];
                    self.start_seq = Some(h.seq);
                    self.buf.clear();
                }
                None => return out,
            }
        } else if self.buf.is_empty() {
            self.start_seq = Some(h.seq);
        }
        self.buf.extend_from_slice(data);
        self.drain(h.seq, &mut out);
        out
    }

    fn drain(&mut self, seq: u64, out: &mut Pushed) {
        let mut at = 0;
        let start = self.start_seq.unwrap_or(seq);
        let mut cur_start = start;
        loop {
            let rest = &self.buf[at..];
            if rest.len() < RECORD_HEADER {
                break;
            }
            let header = match RecordHeader::decode(&rest[..RECORD_HEADER]) {
                Ok(h) => h,
                Err(e) => {
                    out.errors.push(e);
                    // Unsynchronised until a block names its first record.
                    self.buf.clear();
                    self.start_seq = None;
                    return;
                }
            };
            let total = RECORD_HEADER + header.stored_len as usize;
            if rest.len() < total {
                break;
            }
            out.records.push(Record { header, payload: rest[RECORD_HEADER..total].to_vec(), start_seq: cur_start });
            at += total;
            // The next record starts in the block being pushed unless it is also complete
            // in earlier bytes (then it started in this block anyway: all earlier bytes
            // belonged to the record just taken).
            cur_start = seq;
        }
        self.buf.drain(..at);
        // Empty: the next block's payload starts a new record at its offset 0.
        self.start_seq = Some(if self.buf.is_empty() { seq + 1 } else { cur_start });
    }

    /// At the end of the archive: whether bytes of an incomplete record are left over.
    pub fn finish(&mut self) -> Option<FormatError> {
        (!self.buf.is_empty()).then(|| {
            let n = self.buf.len();
            self.buf.clear();
            FormatError::BadRecord(format!("archive ends inside a record ({n} bytes left over)"))
        })
    }
}

/// Splits a record stream into blocks; the writer side of [`RecordAssembler`].
#[derive(Debug)]
pub struct BlockPacker {
    pub kind: ArchiveKind,
    pub archive_id: [u8; 16],
    pub part: u32,
    pub next_seq: u64,
    payload_max: usize,
    buf: Vec<u8>,
    first_record: Option<u32>,
}

impl BlockPacker {
    pub fn new(kind: ArchiveKind, archive_id: [u8; 16], block_size: usize) -> BlockPacker {
        BlockPacker {
            kind,
            archive_id,
            part: 0,
            next_seq: 0,
            payload_max: block_size - BLOCK_HEADER,
            buf: Vec::with_capacity(block_size),
            first_record: None,
        }
    }

    /// Sequence number of the block the next record will start in.
    pub fn next_record_seq(&self) -> u64 {
        if self.buf.len() >= self.payload_max {
            self.next_seq + 1
        } else {
            self.next_seq
        }
    }

    /// Appends one record; calls `emit` with each block that fills up.
    pub fn push_record<E>(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
        emit: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let hdr = header.encode();
        let mut first = true;
        for part in [&hdr[..], payload] {
            let mut rest = part;
            loop {
                if self.buf.len() == self.payload_max {
                    self.flush(false, emit)?;
                }
                if first {
                    if self.first_record.is_none() {
                        self.first_record = Some(self.buf.len() as u32);
                    }
                    first = false;
                }
                if rest.is_empty() {
                    break;
                }
                let n = rest.len().min(self.payload_max - self.buf.len());
                self.buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
        Ok(())
    }

    /// Writes the block being filled (if any bytes are in it), marked last when `last`.
    pub fn flush<E>(&mut self, last: bool, emit: &mut dyn FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if self.buf.is_empty() && !last {
            return Ok(());
        }
        let h = BlockHeader {
            kind: self.kind,
            last,
            archive_id: self.archive_id,
            seq: self.next_seq,
            payload_len: self.buf.len() as u32,
            first_record: self.first_record,
            part: self.part,
        };
        let mut block = Vec::with_capacity(BLOCK_HEADER + self.buf.len());
        encode_block(&h, &self.buf, &mut block);
        emit(&block)?;
        self.next_seq += 1;
        self.buf.clear();
        self.first_record = None;
        Ok(())
    }
}

/// A one-block file: a label or set label (JSON).
pub fn encode_single(kind: ArchiveKind, id: [u8; 16], json: &[u8]) -> Vec<u8> {
    let h = BlockHeader {
        kind,
        last: true,
        archive_id: id,
        seq: 0,
        payload_len: json.len() as u32,
        first_record: Some(0),
        part: 0,
    };
    let mut out = Vec::new();
    encode_block(&h, json, &mut out);
    out
}

/// Random 16 bytes (archive and medium ids).
pub fn random_id() -> [u8; 16] {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return b;
        }
    }
    // No /dev/urandom: time and pid are unique enough for ids (not secrets).
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    b[..16].copy_from_slice(&(t ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
    b
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, o) in b.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, len: usize) -> (RecordHeader, Vec<u8>) {
        let payload = vec![n; len];
        let h = RecordHeader {
            kind: TapeRecordKind::Data,
            codec: Codec::Raw,
            raw_len: len as u32,
            stored_len: len as u32,
            digest: Digest::of(&payload),
        };
        (h, payload)
    }

    fn pack(records: &[(RecordHeader, Vec<u8>)], block: usize) -> Vec<Vec<u8>> {
        let mut p = BlockPacker::new(ArchiveKind::Chunks, [7; 16], block);
        let mut blocks = Vec::new();
        let mut emit = |b: &[u8]| -> Result<(), ()> {
            blocks.push(b.to_vec());
            Ok(())
        };
        for (h, d) in records {
            p.push_record(h, d, &mut emit).unwrap();
        }
        p.flush(true, &mut emit).unwrap();
        blocks
    }

    #[test]
    fn records_round_trip_through_blocks_of_any_size() {
        let records: Vec<_> = (0..40u8).map(|i| rec(i, (i as usize * 977) % 5000 + 1)).collect();
        for block in [BLOCK_HEADER + 1, BLOCK_HEADER + 47, 200, 1024, 4096, 1 << 20] {
            let blocks = pack(&records, block);
            assert!(decode_block(blocks.last().unwrap()).unwrap().0.last);
            let mut a = RecordAssembler::new();
            let mut got = Vec::new();
            for b in &blocks {
                let (h, p) = decode_block(b).unwrap();
                let pushed = a.push(&h, p);
                assert!(pushed.errors.is_empty() && pushed.lost.is_empty());
                got.extend(pushed.records);
            }
            assert!(a.finish().is_none());
            assert_eq!(got.len(), records.len(), "block {block}");
            for (g, (h, d)) in got.iter().zip(&records) {
                assert_eq!(&g.header, h);
                assert_eq!(&g.payload, d);
                let (bh, _) = decode_block(&blocks[g.start_seq as usize]).unwrap();
                assert!(bh.first_record.is_some() || g.start_seq == 0, "record start block has a record start");
            }
        }
    }

    #[test]
    fn a_lost_block_loses_only_the_records_touching_it() {
        let records: Vec<_> = (0..30u8).map(|i| rec(i, 700)).collect();
        let blocks = pack(&records, 2048);
        let bad = 4usize;
        let mut a = RecordAssembler::new();
        let mut got = Vec::new();
        let mut lost = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let (h, p) = decode_block(b).unwrap();
            let mut pushed = Pushed::default();
            if i == bad {
                a.gap(h.seq, &mut pushed);
            } else {
                pushed = a.push(&h, p);
            }
            got.extend(pushed.records);
            lost.extend(pushed.lost);
        }
        assert!(!lost.is_empty());
        // At most the records overlapping block `bad` plus the one in flight are gone.
        assert!(got.len() >= records.len() - 4, "got {}", got.len());
        for g in &got {
            let mut out = Vec::new();
            g.decode_checked(&mut out).unwrap();
        }
    }

    #[test]
    fn damaged_blocks_are_detected() {
        let blocks = pack(&[rec(1, 100)], 4096);
        let mut b = blocks[0].clone();
        b[BLOCK_HEADER + 3] ^= 1;
        assert!(matches!(decode_block(&b), Err(FormatError::Damaged(_))));
        assert!(matches!(decode_block(b"hello"), Err(FormatError::NotOurs(_))));
        let mut t = blocks[0].clone();
        t.truncate(t.len() - 1);
        assert!(decode_block(&t).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..400usize {
            let mut b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if len >= 4 {
                b[..4].copy_from_slice(BLOCK_MAGIC);
            }
            let _ = decode_block(&b);
            let _ = RecordHeader::decode(&b);
        }
    }
}
