//! The LMDB environment: chunk index, pack table, restore-point catalog.
//!
//! ## Databases (keys and values are our own fixed encodings, little-endian unless noted)
//! | database | key | value |
//! |---|---|---|
//! | `chunks` | digest (32 bytes) | [`ChunkLoc`]: pack u64, offset u64, stored_len u32, raw_len u32, kind u8 (bit 7 set: a foreign record, see `pack`), codec u8 |
//! | `packs`  | pack number (u64 big-endian, so keys sort) | [`PackInfo`] as JSON |
//! | `points` | name, 0x00, id (u64 big-endian) | [`RestorePoint`](crate::RestorePoint) as JSON |
//! | `meta`   | utf-8 name | `format` (u32), `next_pack` (u64), `next_point` (u64), `gc_generation` (u64), `clock` ([`ClockRecord`](crate::clock::ClockRecord) JSON) |
//! | `condemned` | digest | [`ChunkLoc`] then the GC generation that condemned it (u64): chunks no restore point referenced at that GC, invisible to lookups, kept on disk until no backup that could have deduplicated against them is running (see `gc`) |
//! | `tombstones` | as `points` | [`Tombstone`](crate::Tombstone) as JSON: a deleted restore point, never to be recovered from its manifest |
//! | `pins` | as `points` | unix time it was pinned: a protected point, never pruned or deleted |
//! | `gc_deleting` | pack number (u64 big-endian) | empty: a pack the GC has dropped from the index and is deleting; an open or the next GC finishes the deletion instead of adopting it |
//! | `damaged` | digest (32 bytes) | [`DamageNote`]: unix time u64, then a utf-8 reason |
//! | `verified` | pack number (u64 big-endian) | unix time (u64) of the pack's last clean scan, for incremental verify |
//!
//! A digest in `damaged` is one whose stored copy verify found damaged or missing: backups do
//! not deduplicate against it (so they store a new copy), and sealing a pack with a new copy
//! repoints its `chunks` entry and removes it from `damaged`. Stores written before `damaged`
//! existed get it at their next read-write open; a read-only open treats it as empty.
//!
//! A `points` value is byte-identical to the restore point's manifest record, so
//! `blake3(value)` is the digest of an indexed `Manifest` chunk (or of one in `damaged`): that
//! is the record's checksum.
//!
//! LMDB gives one writer at a time across processes (its own lock file) and snapshot readers;
//! every commit is durable (`fsync`) before it returns. A read-only catalog (see
//! [`Catalog::open`]) has no writer and refuses write transactions.

use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::pack::{Codec, RecordKind};
use crate::Digest;

pub type Db = Database<'static, Bytes, Bytes>;

/// Where a chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: u64,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub kind: RecordKind,
    pub codec: Codec,
    /// A foreign record (a replica's, held without its key: see `pack`).
    pub foreign: bool,
}

impl ChunkLoc {
    const FOREIGN_BIT: u8 = 0x80;

    /// Where the record `header` describes lies: at `offset` in pack `pack`.
    pub fn at(pack: u64, offset: u64, header: &crate::pack::RecordHeader) -> ChunkLoc {
        ChunkLoc {
            pack,
            offset,
            stored_len: header.stored_len,
            raw_len: header.raw_len,
            kind: header.kind,
            codec: header.codec,
            foreign: header.foreign,
        }
    }

    pub const ENCODED_LEN: usize = 26;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut v = [0u8; Self::ENCODED_LEN];
        v[0..8].copy_from_slice(&self.pack.to_le_bytes());
        v[8..16].copy_from_slice(&self.offset.to_le_bytes());
        v[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        v[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        v[24] = self.kind as u8 | if self.foreign { Self::FOREIGN_BIT } else { 0 };
        v[25] = self.codec as u8;
        v
    }

    pub fn decode(v: &[u8]) -> Option<ChunkLoc> {
        if v.len() != Self::ENCODED_LEN {
            return None;
        }
        Some(ChunkLoc {
            pack: u64::from_le_bytes(v[0..8].try_into().ok()?),
            offset: u64::from_le_bytes(v[8..16].try_into().ok()?),
            stored_len: u32::from_le_bytes(v[16..20].try_into().ok()?),
            raw_len: u32::from_le_bytes(v[20..24].try_into().ok()?),
            kind: RecordKind::from_u8(v[24] & !Self::FOREIGN_BIT)?,
            codec: Codec::from_u8(v[25])?,
            foreign: v[24] & Self::FOREIGN_BIT != 0,
        })
    }
}

/// A sealed, indexed pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackInfo {
    pub number: u64,
    /// End of the last record.
    pub len: u64,
    pub records: u32,
    pub sealed_unix: u64,
    /// Record bytes of chunks stored raw for the recompression pass (see the crate docs,
    /// "Compression off the critical path"); 0 once it has rewritten the pack, and in packs
    /// written before it existed.
    #[serde(default)]
    pub deferred_bytes: u64,
}

/// Why a digest is in `damaged`, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageNote {
    pub since_unix: u64,
    pub reason: String,
}

impl DamageNote {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.since_unix.to_le_bytes().to_vec();
        v.extend_from_slice(self.reason.as_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> DamageNote {
        let since_unix = v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
        let reason = String::from_utf8_lossy(v.get(8..).unwrap_or_default()).into_owned();
        DamageNote { since_unix, reason }
    }
}

/// How to open the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Read-only; LMDB's lock file is still used, so a writer in another process is seen.
    ReadOnly,
    /// Read-only on a read-only filesystem: no lock file (no writer can exist).
    ReadOnlyNoLock,
}

#[derive(Debug)]
pub struct Catalog {
    pub env: Env<WithoutTls>,
    pub path: PathBuf,
    pub chunks: Db,
    pub packs: Db,
    pub points: Db,
    pub meta: Db,
    pub condemned: Db,
    pub tombstones: Db,
    pub pins: Db,
    pub gc_deleting: Db,
    /// `None` only in a read-only catalog of a store written before `damaged` existed.
    pub damaged: Option<Db>,
    /// `None` only in a read-only catalog of a store written before `verified` existed.
    pub verified: Option<Db>,
    pub read_only: bool,
}

/// Virtual size of the LMDB map; the file grows only as data is written.
const MAP_SIZE: usize = 1 << 40;

impl Catalog {
    pub fn open(dir: &Path, access: Access) -> Result<Catalog> {
        if access == Access::ReadWrite {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(MAP_SIZE).max_dbs(16).max_readers(512);
        let flags = match access {
            Access::ReadWrite => EnvFlags::empty(),
            Access::ReadOnly => EnvFlags::READ_ONLY,
            Access::ReadOnlyNoLock => EnvFlags::READ_ONLY | EnvFlags::NO_LOCK,
        };
        // SAFETY: NO_LOCK is only used on a read-only filesystem, where no process can write
        // the environment, so there is no concurrent access to manage; READ_ONLY is safe.
        unsafe { opts.flags(flags) };
        // SAFETY: heed requires that the environment is not opened twice in one process and
        // that the files are not modified by anything but LMDB. A `Store` owns its catalog and
        // the store directory documents that nothing else writes `index/`.
        let env = unsafe { opts.open(dir) }.map_err(|e| StoreError::index(dir, e))?;
        if access != Access::ReadWrite {
            let rtxn = env.read_txn().map_err(|e| StoreError::index(dir, e))?;
            let dbs = env
                .open_databases_and_commit(rtxn, |dbo, rtxn| -> heed::Result<_> {
                    let open = |name| dbo.open_database::<Bytes, Bytes>(rtxn, Some(name));
                    Ok(CommitOrAbort::<_, ()>::Commit((
                        [open("chunks")?, open("packs")?, open("points")?, open("meta")?],
                        [open("damaged")?, open("verified")?],
                        [open("condemned")?, open("tombstones")?, open("pins")?, open("gc_deleting")?],
                    )))
                })
                .map_err(|e| StoreError::index(dir, e))?
                .unwrap_commit();
            let (
                [Some(chunks), Some(packs), Some(points), Some(meta)],
                [damaged, verified],
                [Some(condemned), Some(tombstones), Some(pins), Some(gc_deleting)],
            ) = dbs
            else {
                return Err(StoreError::Corrupt {
                    path: dir.to_path_buf(),
                    offset: 0,
                    detail: "the index lacks one of its databases and cannot be completed read-only; open the store read-write once (or run `rackvault reindex`)".into(),
                });
            };
            return Ok(Catalog {
                env,
                path: dir.to_path_buf(),
                chunks,
                packs,
                points,
                meta,
                condemned,
                tombstones,
                pins,
                gc_deleting,
                damaged,
                verified,
                read_only: true,
            });
        }
        let wtxn = env.write_txn().map_err(|e| StoreError::index(dir, e))?;
        let dbs = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
                let mut create = |name| dbo.create_database::<Bytes, Bytes>(wtxn, Some(name));
                let dbs = [
                    create("chunks")?,
                    create("packs")?,
                    create("points")?,
                    create("meta")?,
                    create("damaged")?,
                    create("verified")?,
                    create("condemned")?,
                    create("tombstones")?,
                    create("pins")?,
                    create("gc_deleting")?,
                ];
                Ok(CommitOrAbort::<_, ()>::Commit(dbs))
            })
            .map_err(|e| StoreError::index(dir, e))?
            .unwrap_commit();
        let [chunks, packs, points, meta, damaged, verified, condemned, tombstones, pins, gc_deleting] = dbs;
        Ok(Catalog {
            env,
            path: dir.to_path_buf(),
            chunks,
            packs,
            points,
            meta,
            condemned,
            tombstones,
            pins,
            gc_deleting,
            damaged: Some(damaged),
            verified: Some(verified),
            read_only: false,
        })
    }

    /// Whether `digest` is recorded as damaged.
    pub fn is_damaged(&self, txn: &RoTxn<'_>, digest: &Digest) -> Result<bool> {
        match &self.damaged {
            None => Ok(false),
            Some(db) => Ok(db.get(txn, &digest.0).map_err(|e| self.err(e))?.is_some()),
        }
    }

    /// Record `digest` as damaged (keeping the first note's time).
    pub fn mark_damaged(&self, txn: &mut RwTxn<'_>, digest: &Digest, reason: &str) -> Result<()> {
        let Some(db) = &self.damaged else { return Ok(()) };
        if db.get(txn, &digest.0).map_err(|e| self.err(e))?.is_some() {
            return Ok(());
        }
        let note = DamageNote { since_unix: crate::now_unix(), reason: reason.to_string() };
        db.put(txn, &digest.0, &note.encode()).map_err(|e| self.err(e))
    }

    /// Forget that `digest` was damaged (a good copy is indexed now).
    pub fn clear_damaged(&self, txn: &mut RwTxn<'_>, digest: &Digest) -> Result<()> {
        let Some(db) = &self.damaged else { return Ok(()) };
        db.delete(txn, &digest.0).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn err(&self, e: heed::Error) -> StoreError {
        StoreError::index(&self.path, e)
    }

    pub fn read(&self) -> Result<RoTxn<'_, WithoutTls>> {
        self.env.read_txn().map_err(|e| self.err(e))
    }

    /// A write transaction; refused on a read-only catalog (the caller names why).
    pub fn write(&self) -> Result<RwTxn<'_>> {
        if self.read_only {
            return Err(StoreError::ReadOnly { path: self.path.clone(), why: "the index was opened read-only".into() });
        }
        self.env.write_txn().map_err(|e| self.err(e))
    }

    pub fn chunk(&self, txn: &RoTxn<'_>, digest: &Digest) -> Result<Option<ChunkLoc>> {
        match self.chunks.get(txn, &digest.0).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => ChunkLoc::decode(v).map(Some).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                offset: 0,
                detail: format!("index entry for chunk {digest} is malformed; run `rackvault reindex`"),
            }),
        }
    }

    /// Index a durable record at `loc` under `digest`, by the rules every writer follows: a
    /// copy of a chunk recorded as damaged replaces the damaged one (healing every restore
    /// point referencing it); a record of this store's own replaces a foreign one (a
    /// replica's, unverifiable here: see `pack`); otherwise the first durable copy stays.
    /// Returns whether the digest was new to the index.
    pub fn index_chunk(&self, txn: &mut RwTxn<'_>, digest: &Digest, loc: &ChunkLoc) -> Result<bool> {
        let existing = self.chunk(txn, digest)?;
        let damaged = self.is_damaged(txn, digest)?;
        if existing.is_none() || damaged || existing.is_some_and(|old| old.foreign && !loc.foreign) {
            self.chunks.put(txn, &digest.0, &loc.encode()).map_err(|e| self.err(e))?;
        }
        if damaged {
            self.clear_damaged(txn, digest)?;
        }
        Ok(existing.is_none())
    }

    /// Where a condemned chunk is, and the GC generation that condemned it.
    pub fn condemned_chunk(&self, txn: &RoTxn<'_>, digest: &Digest) -> Result<Option<(ChunkLoc, u64)>> {
        match self.condemned.get(txn, &digest.0).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => decode_condemned(v).map(Some).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                offset: 0,
                detail: format!("condemned entry for chunk {digest} is malformed; run `rackvault reindex`"),
            }),
        }
    }

    pub fn meta_u64(&self, txn: &RoTxn<'_>, key: &str) -> Result<Option<u64>> {
        let v = self.meta.get(txn, key.as_bytes()).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes))
    }

    /// Take the next value of a counter in `meta` (starting at 1) within `txn`.
    pub fn next_counter(&self, txn: &mut RwTxn<'_>, key: &str) -> Result<u64> {
        let cur = self
            .meta
            .get(txn, key.as_bytes())
            .map_err(|e| self.err(e))?
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        let next = cur + 1;
        self.meta.put(txn, key.as_bytes(), &next.to_le_bytes()).map_err(|e| self.err(e))?;
        Ok(next)
    }
}

/// Key of a restore point in `points`.
pub fn point_key(name: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 9);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn pack_key(number: u64) -> [u8; 8] {
    number.to_be_bytes()
}

/// Value of a `condemned` entry: the location, then the generation.
pub fn encode_condemned(loc: &ChunkLoc, generation: u64) -> [u8; ChunkLoc::ENCODED_LEN + 8] {
    let mut v = [0u8; ChunkLoc::ENCODED_LEN + 8];
    v[..ChunkLoc::ENCODED_LEN].copy_from_slice(&loc.encode());
    v[ChunkLoc::ENCODED_LEN..].copy_from_slice(&generation.to_le_bytes());
    v
}

pub fn decode_condemned(v: &[u8]) -> Option<(ChunkLoc, u64)> {
    if v.len() != ChunkLoc::ENCODED_LEN + 8 {
        return None;
    }
    let loc = ChunkLoc::decode(&v[..ChunkLoc::ENCODED_LEN])?;
    let generation = u64::from_le_bytes(v[ChunkLoc::ENCODED_LEN..].try_into().ok()?);
    Some((loc, generation))
}
