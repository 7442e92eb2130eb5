//! The tape catalog: media inventory, pools, media sets, and where every chunk and restore
//! point is on tape. It is a cache of what the tapes say about themselves: everything in it
//! can be rebuilt by scanning the cartridges ([`super::rebuild_catalog`]).
//!
//! ## Databases (an LMDB environment, `store::kv`)
//! | database | key | value |
//! |---|---|---|
//! | `pools`    | pool name | [`PoolPolicy`] JSON |
//! | `media`    | barcode | [`MediumRecord`] JSON |
//! | `sets`     | set id (hex) | [`SetRecord`] JSON |
//! | `archives` | barcode, 0x00, file number (u64 BE) | [`ArchiveEntry`] JSON (with its chunk list) |
//! | `chunks`   | set id (16 bytes), digest (32) | seq u32, file u64, block u64 (LE) |
//! | `points`   | "name@id", 0x00, set id (16) | [`PointCopy`] JSON |
//!
//! Updates that describe one cartridge's new content are applied in one transaction
//! ([`CatalogUpdate`]), after that content is on tape behind a filemark: the catalog never
//! names data the tape does not hold.

use std::path::Path;

use serde::{Deserialize, Serialize};
use store::kv::{heed, KvDb, KvEnv};
use store::{Digest, RestorePoint};

use super::format::{hex, ArchiveEntry};
use super::TapeError;

/// When a destage may continue the pool's current media set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocation {
    /// Append to the current set until it is closed.
    Continue,
    /// Every destage job starts a new set.
    PerJob,
    /// A new set each calendar day (UTC).
    Daily,
    /// A new set each ISO week (UTC).
    Weekly,
}

impl std::str::FromStr for Allocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "continue" => Allocation::Continue,
            "per-job" => Allocation::PerJob,
            "daily" => Allocation::Daily,
            "weekly" => Allocation::Weekly,
            _ => return Err(format!("allocation {s:?}: use continue, per-job, daily or weekly")),
        })
    }
}

/// How a pool allocates and keeps media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPolicy {
    pub name: String,
    pub allocation: Allocation,
    /// A set's media may be overwritten this many days after the set was last written.
    pub retention_days: u64,
    /// Bound on how many cartridges restoring one restore point of this pool may need;
    /// `None`: unbounded (dedup against the whole set).
    pub max_restore_tapes: Option<u32>,
}

impl PoolPolicy {
    pub fn default_for(name: &str) -> PoolPolicy {
        PoolPolicy { name: name.into(), allocation: Allocation::Continue, retention_days: 30, max_restore_tapes: None }
    }
}

/// Where a cartridge physically is, as of the last inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediumLocation {
    Slot(u16),
    Drive(u16),
    MailSlot(u16),
    /// Not in the library (vaulted, offsite).
    Offline,
}

/// A labelled cartridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediumRecord {
    pub barcode: String,
    pub medium_id: String,
    pub pool: String,
    pub labelled_unix: u64,
    pub worm: bool,
    /// (set id, place in the set) once a set took the cartridge.
    pub set: Option<(String, u32)>,
    /// Tape file number where the next archive goes.
    pub next_file: u64,
    /// Past early warning: the set continues on another cartridge.
    pub full: bool,
    pub bytes_written: u64,
    pub last_written_unix: u64,
    pub location: MediumLocation,
}

/// A media set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    pub set_id: String,
    pub pool: String,
    pub created_unix: u64,
    pub last_written_unix: u64,
    /// Barcodes in set order.
    pub media: Vec<String>,
}

/// A restore point's copy on a media set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointCopy {
    pub set_id: String,
    /// Cartridge and file of the point archive.
    pub barcode: String,
    pub file: u64,
    pub written_unix: u64,
    pub point: RestorePoint,
}

/// Where a chunk is within a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOnTape {
    pub seq: u32,
    pub file: u64,
    pub block: u64,
}

/// Changes applied together.
#[derive(Debug, Default)]
pub struct CatalogUpdate {
    pub media: Vec<MediumRecord>,
    pub sets: Vec<SetRecord>,
    /// (barcode, entry)
    pub archives: Vec<(String, ArchiveEntry)>,
    /// (set id, digest, location)
    pub chunks: Vec<([u8; 16], Digest, ChunkOnTape)>,
    pub points: Vec<PointCopy>,
}

/// The open catalog.
#[derive(Debug)]
pub struct TapeCatalog {
    env: KvEnv,
    pools: KvDb,
    media: KvDb,
    sets: KvDb,
    archives: KvDb,
    chunks: KvDb,
    points: KvDb,
}

fn archive_key(barcode: &str, file: u64) -> Vec<u8> {
    let mut k = barcode.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&file.to_be_bytes());
    k
}

fn chunk_key(set: &[u8; 16], d: &Digest) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(set);
    k[16..].copy_from_slice(&d.0);
    k
}

fn point_key(spec: &str, set: &str) -> Vec<u8> {
    let mut k = spec.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(set.as_bytes());
    k
}

impl TapeCatalog {
    pub fn open(dir: &Path) -> Result<TapeCatalog, TapeError> {
        let (env, dbs) = KvEnv::open(dir, &["pools", "media", "sets", "archives", "chunks", "points"])?;
        let [pools, media, sets, archives, chunks, points]: [KvDb; 6] = dbs.try_into().expect("one database per name");
        Ok(TapeCatalog { env, pools, media, sets, archives, chunks, points })
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, db: &KvDb, key: &[u8]) -> Result<Option<T>, TapeError> {
        let rtxn = self.env.read()?;
        match db.get(&rtxn, key).map_err(|e| self.env.err(e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v).map(Some).map_err(|e| self.corrupt(e)),
        }
    }

    fn all_json<T: for<'de> Deserialize<'de>>(&self, db: &KvDb) -> Result<Vec<T>, TapeError> {
        let rtxn = self.env.read()?;
        let mut out = Vec::new();
        for item in db.iter(&rtxn).map_err(|e| self.env.err(e))? {
            let (_, v) = item.map_err(|e| self.env.err(e))?;
            out.push(serde_json::from_slice(v).map_err(|e| self.corrupt(e))?);
        }
        Ok(out)
    }

    fn corrupt(&self, e: serde_json::Error) -> TapeError {
        TapeError::Catalog(format!(
            "tape catalog {} holds an unreadable entry ({e}); run `rackvault tape catalog --rebuild`",
            self.env.path().display()
        ))
    }

    fn put_json<T: Serialize>(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        db: &KvDb,
        key: &[u8],
        v: &T,
    ) -> Result<(), TapeError> {
        db.put(wtxn, key, &serde_json::to_vec(v).expect("catalog entries serialise")).map_err(|e| self.env.err(e))?;
        Ok(())
    }

    pub fn pool(&self, name: &str) -> Result<PoolPolicy, TapeError> {
        Ok(self.get_json(&self.pools, name.as_bytes())?.unwrap_or_else(|| PoolPolicy::default_for(name)))
    }

    pub fn pools(&self) -> Result<Vec<PoolPolicy>, TapeError> {
        self.all_json(&self.pools)
    }

    pub fn set_pool(&self, p: &PoolPolicy) -> Result<(), TapeError> {
        let mut wtxn = self.env.write()?;
        self.put_json(&mut wtxn, &self.pools, p.name.as_bytes(), p)?;
        wtxn.commit().map_err(|e| self.env.err(e))?;
        Ok(())
    }

    pub fn medium(&self, barcode: &str) -> Result<Option<MediumRecord>, TapeError> {
        self.get_json(&self.media, barcode.as_bytes())
    }

    pub fn media(&self) -> Result<Vec<MediumRecord>, TapeError> {
        self.all_json(&self.media)
    }

    pub fn set(&self, id: &str) -> Result<Option<SetRecord>, TapeError> {
        self.get_json(&self.sets, id.as_bytes())
    }

    pub fn sets(&self) -> Result<Vec<SetRecord>, TapeError> {
        self.all_json(&self.sets)
    }

    /// Archives recorded on `barcode`, in file order.
    pub fn archives(&self, barcode: &str) -> Result<Vec<ArchiveEntry>, TapeError> {
        let rtxn = self.env.read()?;
        let mut prefix = barcode.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.archives.prefix_iter(&rtxn, &prefix).map_err(|e| self.env.err(e))? {
            let (_, v) = item.map_err(|e| self.env.err(e))?;
            out.push(serde_json::from_slice(v).map_err(|e| self.corrupt(e))?);
        }
        Ok(out)
    }

    pub fn chunk(&self, set: &[u8; 16], d: &Digest) -> Result<Option<ChunkOnTape>, TapeError> {
        let rtxn = self.env.read()?;
        let v = self.chunks.get(&rtxn, &chunk_key(set, d)).map_err(|e| self.env.err(e))?;
        Ok(v.and_then(decode_loc))
    }

    /// Copies of the restore point `spec` ("name@id"), oldest first.
    pub fn point_copies(&self, spec: &str) -> Result<Vec<PointCopy>, TapeError> {
        let rtxn = self.env.read()?;
        let mut prefix = spec.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<PointCopy> = Vec::new();
        for item in self.points.prefix_iter(&rtxn, &prefix).map_err(|e| self.env.err(e))? {
            let (_, v) = item.map_err(|e| self.env.err(e))?;
            out.push(serde_json::from_slice(v).map_err(|e| self.corrupt(e))?);
        }
        out.sort_by_key(|c| c.written_unix);
        Ok(out)
    }

    pub fn all_points(&self) -> Result<Vec<PointCopy>, TapeError> {
        self.all_json(&self.points)
    }

    /// Applies `u` in one transaction.
    pub fn apply(&self, u: &CatalogUpdate) -> Result<(), TapeError> {
        let mut wtxn = self.env.write()?;
        for m in &u.media {
            self.put_json(&mut wtxn, &self.media, m.barcode.as_bytes(), m)?;
        }
        for s in &u.sets {
            self.put_json(&mut wtxn, &self.sets, s.set_id.as_bytes(), s)?;
        }
        for (barcode, a) in &u.archives {
            self.put_json(&mut wtxn, &self.archives, &archive_key(barcode, a.file), a)?;
        }
        for (set, d, loc) in &u.chunks {
            self.chunks.put(&mut wtxn, &chunk_key(set, d), &encode_loc(loc)).map_err(|e| self.env.err(e))?;
        }
        for p in &u.points {
            self.put_json(&mut wtxn, &self.points, &point_key(&p.point.spec(), &p.set_id), p)?;
        }
        wtxn.commit().map_err(|e| self.env.err(e))?;
        Ok(())
    }

    /// Forgets what the catalog knew about set `set_id`: its media are being reused.
    pub fn forget_set(&self, set_id: &str) -> Result<(), TapeError> {
        let Some(id) = super::format::unhex16(set_id) else { return Ok(()) };
        let set = self.set(set_id)?;
        let copies: Vec<PointCopy> = self.all_points()?.into_iter().filter(|p| p.set_id == set_id).collect();
        let mut wtxn = self.env.write()?;
        let keys: Vec<Vec<u8>> = self
            .chunks
            .prefix_iter(&wtxn, &id)
            .map_err(|e| self.env.err(e))?
            .filter_map(|r| r.ok().map(|(k, _)| k.to_vec()))
            .collect();
        for k in keys {
            self.chunks.delete(&mut wtxn, &k).map_err(|e| self.env.err(e))?;
        }
        for p in copies {
            self.points.delete(&mut wtxn, &point_key(&p.point.spec(), set_id)).map_err(|e| self.env.err(e))?;
        }
        if let Some(s) = set {
            for b in &s.media {
                let mut prefix = b.as_bytes().to_vec();
                prefix.push(0);
                let keys: Vec<Vec<u8>> = self
                    .archives
                    .prefix_iter(&wtxn, &prefix)
                    .map_err(|e| self.env.err(e))?
                    .filter_map(|r| r.ok().map(|(k, _)| k.to_vec()))
                    .collect();
                for k in keys {
                    self.archives.delete(&mut wtxn, &k).map_err(|e| self.env.err(e))?;
                }
            }
        }
        self.sets.delete(&mut wtxn, set_id.as_bytes()).map_err(|e| self.env.err(e))?;
        wtxn.commit().map_err(|e| self.env.err(e))?;
        Ok(())
    }

    /// Empties every database (before a rebuild from tapes). Pools are kept: they are
    /// configuration, not content.
    pub fn clear_content(&self) -> Result<(), TapeError> {
        let mut wtxn = self.env.write()?;
        for db in [&self.media, &self.sets, &self.archives, &self.chunks, &self.points] {
            db.clear(&mut wtxn).map_err(|e| self.env.err(e))?;
        }
        wtxn.commit().map_err(|e| self.env.err(e))?;
        Ok(())
    }

    pub fn set_hex(id: &[u8; 16]) -> String {
        hex(id)
    }
}

fn encode_loc(l: &ChunkOnTape) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..4].copy_from_slice(&l.seq.to_le_bytes());
    v[4..12].copy_from_slice(&l.file.to_le_bytes());
    v[12..].copy_from_slice(&l.block.to_le_bytes());
    v
}

fn decode_loc(v: &[u8]) -> Option<ChunkOnTape> {
    if v.len() != 20 {
        return None;
    }
    Some(ChunkOnTape {
        seq: u32::from_le_bytes(v[..4].try_into().ok()?),
        file: u64::from_le_bytes(v[4..12].try_into().ok()?),
        block: u64::from_le_bytes(v[12..].try_into().ok()?),
    })
}
