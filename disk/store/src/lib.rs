//! `store`: the disk staging store. Content-addressed chunks in append-only packs, a chunk
//! index and a restore-point catalog in LMDB.
//!
//! ## Layout of a store directory
//! ```text
//! rackvault-store.json   marker: {"format": 2, "store_id": hex, "created_unix": n}
//!                        (format 3 adds "encryption": {"v": 1, "cipher": name, "key_check": hex})
//! writers.lock           flock: shared by every backup session and a running GC, exclusive for cleanup/reindex/repair
//! gc.lock                flock: exclusive while a GC, reindex or repair runs (one at a time)
//! sessions/*.lock        one per running backup session, flocked by it, holding the GC generation it started in
//! index/                 LMDB environment (see `catalog` for its databases)
//! packs/<016x>.pack      sealed packs, immutable (see `pack` for the format)
//! tmp/<016x>.pack        packs being written; never referenced by the index
//! ```
//!
//! ## Model
//! A *chunk* is a fixed-size piece of a disk image, identified by the blake3 digest of its
//! bytes (keyed blake3 in an encrypted store, see below). All-zero chunks are never stored:
//! the index tree records them as `Digest::ZERO`.
//! A *restore point* names one or more disks; each disk is an index tree (see `tree`) over
//! its chunk digests. Every restore point is therefore a full image by reference, and a new
//! backup stores only chunks (data and tree nodes) the store lacks.
//!
//! ## Durability: the order of writes in a backup
//! 1. Records are appended to `tmp/N.pack` (N allocated by an LMDB commit of `next_pack`);
//!    in an encrypted store they are sealed first (see "Format versions"), which changes
//!    nothing in the order below.
//! 2. When the pack reaches its target size, or the backup ends, the tail is written and the
//!    file is `fsync`ed.
//! 3. The pack is renamed to `packs/N.pack` and `packs/` is `fsync`ed, so the name is durable.
//! 4. One LMDB transaction inserts the pack's chunks into `chunks` (an existing entry is kept:
//!    the first durable copy wins, unless verify recorded that chunk in `damaged`: then the
//!    new copy replaces it and the digest leaves `damaged`) and the pack into `packs`; the
//!    commit `fsync`s.
//! 5. Steps 1-4 repeat for the index-tree nodes, which are chunks too, and finally for the
//!    restore point's manifest record (its JSON), so packs alone describe every restore point.
//! 6. One LMDB transaction inserts the restore point into `points`. Only now is it visible.
//!
//! So a visible restore point references only chunks that are durable and indexed. A crash
//! (`kill -9`) before step 6 leaves no restore point; before step 4 it leaves a pack file the
//! index does not name: the next open deletes `tmp/*` (never sealed) and adopts sealed
//! `packs/*` the index lacks (indexes their records), so no sealed data is ever deleted. Packs indexed in step 4 of an interrupted backup stay: their chunks are valid and
//! make the retried backup cheaper. A crash between steps 5 and 6 leaves a manifest in a sealed
//! pack but no catalog entry. The open adopts such packs' chunks but never brings their restore
//! points back (a backup that failed must commit nothing, or a retry would make a duplicate);
//! only when the whole index was lost does the open, like `reindex`, rebuild the catalog from
//! the manifests in packs. Unreferenced chunks left by failed backups are reclaimed by the
//! garbage collector (see `gc`).
//!
//! ## Deleting a restore point
//! 1. Refused while the point is pinned, or inside its immutability window as judged by the
//!    store's trusted clock (`clock`): this is enforced here, below every API.
//! 2. A [`Tombstone`] record per point is appended to a new pack, sealed and indexed as in
//!    steps 1-4 above, so the deletion is durable in the packs themselves.
//! 3. One LMDB transaction removes the points from `points` (and `pins`) and adds them to
//!    `tombstones`. `reindex` and the recovery at open never recover a tombstoned point.
//!
//! Deleting frees nothing by itself; the next GC does.
//!
//! ## Format versions
//! Format 2 adds tombstone records (kind 4) and the GC databases. A format-1 store is upgraded
//! in place at its first writable open (nothing is rewritten: format 1 is a subset); a
//! rackvault that only knows format 1 then refuses it, rather than misread a tombstone.
//!
//! Format 3 is an *encrypted* store; unencrypted stores stay at format 2 (and are still
//! created as format 2), so an older rackvault keeps reading them. Only a store created with
//! a key is format 3, from its creation: an older rackvault refuses it rather than misread a
//! sealed record. What format 3 changes:
//! 1. The marker holds `encryption` ([`EncryptionInfo`]): the cipher new records are sealed
//!    with and a *key check value* derived from the key, so a wrong key (or none) is refused
//!    at open before the index or any pack is read ([`StoreError::WrongKey`],
//!    [`StoreError::KeyRequired`]).
//! 2. Chunk ids are keyed: `blake3::keyed_hash(id key, plaintext)` with a key derived from
//!    the store key, in the index, in tree nodes and in record headers.
//! 3. Every record (data, tree nodes, files, manifests, tombstones) is sealed with an AEAD:
//!    the record header's byte 6 names it (see `pack`; the nonce argument is in `crypto`).
//!    Record headers (kind, lengths, id) stay readable, so index rebuild, GC and a checksum
//!    verify work on ciphertext; a record is valid in any pack of any store with the key.
//! 4. The LMDB index is *not* encrypted: it is this appliance's cache and holds restore
//!    points' names and sources in clear (the packs hold them sealed). What leaves the
//!    appliance is packs and records, never the index.
//!
//! Encryption is chosen when a store is created and covers all of it; a plain store is not
//! converted in place.
//!
//! ## Damage
//! Verify records every damaged or missing chunk in `damaged`; [`Store::contains`] (backup
//! dedup) treats those as absent, so the next backup of the same data stores them again and
//! step 4 heals every restore point that references them. [`Store::repair`] rewrites damaged
//! packs keeping their intact records (same durability order, see `repair`). A restore
//! point's catalog record is byte-identical to its manifest record, which makes `blake3` of
//! the record its checksum: [`Store::find`] refuses a record that fails it, [`Store::list`]
//! leaves it out and [`Store::list_checked`] names it.
//!
//! ## Compression off the critical path
//! A backup may store data chunks raw ([`ChunkEncoder::deferring`]); each pack's
//! [`PackInfo::deferred_bytes`] counts those that may compress (not the records: any
//! rackvault reads them as plain raw records). [`Store::recompress`] later rewrites those
//! packs with the chunks compressed, in the GC's repack order (see `recompress`). A pack
//! table rebuilt from packs (reindex, adoption at open) assumes every raw data chunk of the
//! store's own deferred, so the pass tries each once.
//!
//! ## Read-only stores
//! A store opened with [`StoreOptions::read_only`], or on a read-only filesystem, writes
//! nothing: no cleanup at open, no format stamp, no `damaged` notes, no lock files on a
//! read-only filesystem. Listing, verifying and restoring work; writers fail with
//! [`StoreError::ReadOnly`].
//!
//! ## Locking
//! | what | lock | why |
//! |---|---|---|
//! | a backup session | `writers.lock` shared, for its lifetime | cleanup must not delete its `tmp/` pack |
//! | cleanup at open, `reindex`, `repair` | `writers.lock` exclusive, non-blocking for cleanup | they delete or rewrite what writers use |
//! | a GC, a recompression pass | `gc.lock` exclusive (non-blocking: a second is refused), `writers.lock` shared | one repacker at a time; cleanup at open must not delete its repack pack in `tmp/` |
//! | `reindex`, `repair` | `gc.lock` exclusive too | they rewrite the index the GC reads |
//! | a backup session's registration | its own `sessions/*.lock`, exclusive | the GC learns which sessions run, and since which GC generation (see `gc`) |
//! | LMDB write transactions | LMDB's own writer lock, across processes | one writer at a time |
//! | pack file handle cache | `Mutex` in [`Store`], bounded LRU | readers share open handles; at most [`PACK_FILES_OPEN`] stay open |
//!
//! Two backups into one store at once each write their own packs; if both store the same new
//! chunk, both copies are durable and the index keeps the first (step 4), so no chunk is lost.

pub mod catalog;
pub mod clock;
pub mod crypto;
mod delete;
mod digest;
pub mod error;
mod gc;
pub mod kv;
pub mod pack;
mod readahead;
mod recompress;
pub mod recovery;
mod repair;
pub mod retention;
pub mod tree;
mod verify;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use catalog::{ChunkLoc, PackInfo};
pub use clock::ClockReading;
pub use crypto::{ChunkIds, Cipher, Keyring, StoreKey};
pub use digest::{is_all_zero, Digest};
pub use error::{ErrorKind, Result, StoreError};
pub use gc::{GcOptions, GcProgress, GcReport, DEFAULT_REPACK_THRESHOLD};
pub use pack::{ChunkEncoder, Codec, EncodedChunk, RecordKind};
pub use readahead::Readahead;
pub use recompress::{RecompressOptions, RecompressReport};
pub use repair::{DroppedRecord, IncompletePoint, RepairReport, RewrittenPack};
pub use tree::{TreeBuilder, TreeWalker};
pub use verify::{DamagedRange, PointDamage, ReindexReport, VerifyOptions, VerifyReport};

use catalog::{pack_key, point_key, Access, Catalog};
use pack::PackWriter;

/// The newest on-disk format this build reads and writes: 3 for encrypted stores.
pub const FORMAT_VERSION: u32 = 3;
/// The format of unencrypted stores, which this build still writes (see "Format versions").
pub const PLAIN_FORMAT_VERSION: u32 = 2;
const MARKER: &str = "rackvault-store.json";
/// Default size at which a pack is sealed and a new one started.
pub const DEFAULT_PACK_TARGET: u64 = 256 << 20;
/// Chunk sizes a disk index may use.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
pub const MAX_CHUNK_SIZE: u32 = 8 << 20;
/// Pack files a store keeps open for reading at most (least recently used are closed); fewer
/// under a low open-files limit: a quarter of it, so sockets, LMDB and restores' targets keep
/// room.
pub const PACK_FILES_OPEN: usize = 64;

/// [`PACK_FILES_OPEN`], or a quarter of the soft `RLIMIT_NOFILE` when that is lower.
fn pack_files_cap() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => PACK_FILES_OPEN.min((soft / 4) as usize).max(2),
        Err(_) => PACK_FILES_OPEN,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    store_id: String,
    created_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<EncryptionInfo>,
}

/// How a store is encrypted: the marker's `encryption` section (format 3), versioned on its
/// own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// Version of this section: 1.
    pub v: u32,
    /// The cipher new records are sealed with ([`Cipher::name`]).
    pub cipher: String,
    /// [`StoreKey::check_value`] in hex: recognises the key without revealing it.
    pub key_check: String,
}

/// What the cleanup at open removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Unsealed packs of interrupted backups.
    pub tmp_packs_removed: u64,
    /// Sealed packs the index did not know (crash between steps 3 and 4, or a lost index),
    /// now indexed.
    pub orphan_packs_adopted: u64,
    /// Restore points brought back from manifests in adopted packs (only when the whole index
    /// was lost; see the crate docs).
    pub restore_points_recovered: u64,
    /// Packs whose deletion a GC had committed but not finished, now deleted.
    pub gc_deletions_finished: u64,
    pub bytes_freed: u64,
    /// False when another process held the store, so cleanup was left for later.
    pub ran: bool,
}

/// One disk of a restore point: where its index tree is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIndex {
    /// Label within the restore point ("disk0", or the disk's file name).
    pub label: String,
    /// Where it was read from (never contains secrets).
    pub source: String,
    /// Image format it was decoded from ("raw", "qcow2", ...).
    pub format: String,
    /// Guest-visible size in bytes.
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: u64,
    #[serde(with = "digest_hex")]
    pub root: Digest,
    pub height: u8,
}

/// A small file captured with a restore point: a VM's configuration (`.vmx`, libvirt XML),
/// so that the whole VM can be recreated. Its content is one deduplicated data record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointFile {
    /// File name as found next to the disks (no directory part).
    pub name: String,
    pub size: u64,
    #[serde(with = "digest_hex")]
    pub digest: Digest,
}

/// Largest file [`BackupSession::add_file`] accepts: one record.
pub const MAX_POINT_FILE: usize = MAX_CHUNK_SIZE as usize;

/// Figures recorded with a restore point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointStats {
    pub bytes_logical: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
    pub chunks_zero: u64,
    pub duration_s: f64,
}

/// A committed restore point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub name: String,
    pub id: u64,
    pub created_unix: u64,
    pub disks: Vec<DiskIndex>,
    /// Configuration files captured with the disks (absent in older manifests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PointFile>,
    pub stats: PointStats,
    /// Until when (unix seconds, by the store's trusted clock) no one may delete or prune it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_until_unix: Option<u64>,
    /// Where a replicated point came from (absent for a point backed up here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<PointOrigin>,
}

/// The source of a replicated restore point: which appliance's namespace, which store and
/// which point there. Replication finds a point it already delivered by this, so a transfer
/// that is run again after its commit does not make a second copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointOrigin {
    /// The namespace the source replicates into (its appliance's name on this side).
    pub namespace: String,
    /// The source store's id (hex).
    pub store_id: String,
    /// The point's `name@id` on the source.
    pub point: String,
    /// When the source made it.
    pub created_unix: u64,
    /// Kept here without the source store's key: its records are foreign (see `pack`) and
    /// it restores only with that store's recovery key (`StoreOptions::replica_keys`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_key: bool,
}

/// A deleted restore point (format 2): kept in `tombstones` and as a record in a pack, so the
/// point is never recovered from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub v: u32,
    pub name: String,
    pub id: u64,
    pub deleted_unix: u64,
    /// Why: "deleted by alice", "pruned by job nightly: not among the last 7 ...".
    pub reason: String,
}

impl RestorePoint {
    pub fn spec(&self) -> String {
        format!("{}@{}", self.name, self.id)
    }

    /// The id of its catalog record, which is also its manifest record's id, under the
    /// store's chunk ids.
    pub fn manifest_digest(&self, ids: ChunkIds) -> Digest {
        ids.of(&serde_json::to_vec(self).expect("restore point serialises"))
    }
}

mod digest_hex {
    use super::Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad digest"))
    }
}

/// Check a restore-point name: 1-128 characters of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "restore point name {name:?}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

/// The name and id a `points` key holds (see [`catalog::point_key`]).
pub(crate) fn split_point_key(k: &[u8]) -> (String, u64) {
    match k.len().checked_sub(9) {
        Some(n) if k[n] == 0 => {
            (String::from_utf8_lossy(&k[..n]).into_owned(), u64::from_be_bytes(k[n + 1..].try_into().expect("8 bytes")))
        }
        _ => (String::from_utf8_lossy(k).into_owned(), 0),
    }
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(path, e))
}

fn random_id() -> [u8; 16] {
    // Unique enough to tell stores apart: time, pid and a hash of both.
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = blake3::hash(&[t.to_le_bytes().as_slice(), &std::process::id().to_le_bytes()].concat());
    h.as_bytes()[..16].try_into().expect("16 bytes")
}

/// Tunables of an open store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Create the store if the directory is missing or empty.
    pub create: bool,
    /// Seal packs at about this size.
    pub pack_target: u64,
    /// Open without writing anything: no cleanup, no format stamp, no backups. Also chosen
    /// automatically when the store's filesystem is mounted read-only.
    pub read_only: bool,
    /// Give every sealed pack the immutable attribute (`chattr +i`), so that not even root
    /// can change or delete it by hand; the GC clears it before it deletes a pack. Where the
    /// filesystem or the process's capabilities do not allow it, [`Store::pack_protection`]
    /// says why and the store carries on.
    pub immutable_packs: bool,
    /// The key of an encrypted store, needed to open one. With `create` on a new store, the
    /// store is created encrypted under this key.
    pub key: Option<StoreKey>,
    /// The cipher a new encrypted store seals records with; `None`: [`Cipher::preferred`].
    pub cipher: Option<Cipher>,
    /// Recovery keys of the stores this one holds replicas of without their key: with them,
    /// those replicas restore (their foreign records open: see `pack`).
    pub replica_keys: Vec<StoreKey>,
}

/// How sealed packs are protected on disk (see [`StoreOptions::immutable_packs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackProtection {
    pub requested: bool,
    /// Why the immutable attribute could not be set, when it could not.
    pub unavailable: Option<String>,
    /// Packs given the attribute since the store was opened.
    pub packs_protected: u64,
}

/// Test-only fault injection: named points in the write path that fail with an I/O error when
/// listed in the `RACKVAULT_FAILPOINTS` environment variable (comma-separated) or set with
/// [`Store::set_failpoints`]. Names: `seal.fsync_dir`, `commit.points`.
#[derive(Debug, Default)]
struct Failpoints(RwLock<HashSet<String>>);

impl Failpoints {
    fn from_env() -> Failpoints {
        let names = std::env::var("RACKVAULT_FAILPOINTS").unwrap_or_default();
        Failpoints(RwLock::new(names.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect()))
    }

    fn check(&self, name: &str, path: &Path) -> Result<()> {
        if self.0.read().map(|set| set.contains(name)).unwrap_or(false) {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("injected failure at failpoint {name}")),
            });
        }
        Ok(())
    }
}

/// A bounded LRU of open pack files.
#[derive(Debug, Default)]
struct PackFiles {
    open: HashMap<u64, (Arc<File>, u64)>,
    tick: u64,
    cap: usize,
}

impl PackFiles {
    fn get(&mut self, number: u64) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        self.open.get_mut(&number).map(|(f, used)| {
            *used = tick;
            f.clone()
        })
    }

    fn insert(&mut self, number: u64, file: Arc<File>) {
        if self.open.len() >= self.cap.max(1) && !self.open.contains_key(&number) {
            if let Some(oldest) = self.open.iter().min_by_key(|(_, (_, used))| *used).map(|(n, _)| *n) {
                self.open.remove(&oldest);
            }
        }
        self.tick += 1;
        self.open.insert(number, (file, self.tick));
    }

    fn forget(&mut self, number: u64) {
        self.open.remove(&number);
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            create: false,
            pack_target: DEFAULT_PACK_TARGET,
            read_only: false,
            immutable_packs: false,
            key: None,
            cipher: None,
            replica_keys: Vec::new(),
        }
    }
}

/// A restore-point catalog record that cannot be used: unparsable, or failing its checksum
/// (see [`catalog`]). Its key still names the point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadablePoint {
    pub name: String,
    pub id: u64,
    pub reason: String,
}

impl UnreadablePoint {
    pub fn spec(&self) -> String {
        format!("{}@{}", self.name, self.id)
    }
}

/// Whether the filesystem holding `path` is mounted read-only.
fn on_read_only_fs(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path).is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// An open store. `Sync`: readers and one or more backup sessions may use it from many threads.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    catalog: Catalog,
    store_id: [u8; 16],
    pack_target: u64,
    pack_files: Mutex<PackFiles>,
    cleanup: CleanupReport,
    failpoints: Failpoints,
    protection: Mutex<PackProtection>,
    /// Why the store is open read-only, if it is.
    read_only: Option<String>,
    /// Chunk ids and record sealing ([`Keyring::plain`] for an unencrypted store).
    keyring: Keyring,
    /// The store's format: [`FORMAT_VERSION`] if encrypted, else [`PLAIN_FORMAT_VERSION`].
    format: u32,
    encryption: Option<EncryptionInfo>,
}

impl Store {
    /// Open (or with `opts.create`, create) the store at `root`, then clean up what
    /// interrupted backups left behind if no other process is using the store.
    ///
    /// With `opts.read_only`, or when the filesystem is mounted read-only (or refuses writes
    /// with `EROFS`), the store is opened read-only: LMDB without write transactions (and
    /// without its lock file on a read-only filesystem, where no writer can exist), no
    /// cleanup. It can be listed, verified and restored from; writers fail with
    /// [`StoreError::ReadOnly`].
    pub fn open(root: &Path, opts: &StoreOptions) -> Result<Store> {
        let marker_path = root.join(MARKER);
        let fs_read_only = on_read_only_fs(root);
        let mut read_only = if fs_read_only {
            Some(format!("the filesystem holding {} is mounted read-only", root.display()))
        } else if opts.read_only {
            Some("read-only was asked for".to_string())
        } else {
            None
        };
        if !marker_path.exists() {
            if !opts.create || read_only.is_some() {
                return Err(StoreError::NotAStore { path: root.to_path_buf(), marker: MARKER });
            }
            Self::init(root, opts)?;
        }
        let text = std::fs::read_to_string(&marker_path).map_err(|e| StoreError::io(&marker_path, e))?;
        let marker: Marker = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: marker_path.clone(),
            offset: 0,
            detail: format!("unreadable store marker: {e}"),
        })?;
        // Refuse a newer format before touching anything.
        if marker.format > FORMAT_VERSION {
            return Err(StoreError::NewerFormat {
                path: root.to_path_buf(),
                found: marker.format,
                supported: FORMAT_VERSION,
            });
        }
        // Then a missing or wrong key, before the index or any pack is read.
        let keyring = Self::keyring_for(root, &marker, opts)?.with_replica_keys(&opts.replica_keys);
        let store_format = if marker.encryption.is_some() { FORMAT_VERSION } else { PLAIN_FORMAT_VERSION };
        let mut store_id = [0u8; 16];
        for (i, b) in store_id.iter_mut().enumerate() {
            *b = marker.store_id.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
        }
        let mut index_lost = false;
        let index = root.join("index");
        let access = match &read_only {
            None => Access::ReadWrite,
            Some(_) if fs_read_only => Access::ReadOnlyNoLock,
            Some(_) => Access::ReadOnly,
        };
        let catalog = match Catalog::open(&index, access) {
            Err(StoreError::Index { source: heed::Error::Io(e), .. }) if e.raw_os_error() == Some(libc::EROFS) => {
                read_only = Some(format!("the filesystem holding {} refuses writes (EROFS)", root.display()));
                Catalog::open(&index, Access::ReadOnlyNoLock)?
            }
            Err(StoreError::Io { source, .. }) if source.raw_os_error() == Some(libc::EROFS) => {
                read_only = Some(format!("the filesystem holding {} refuses writes (EROFS)", root.display()));
                Catalog::open(&index, Access::ReadOnlyNoLock)?
            }
            r => r?,
        };
        if read_only.is_some() {
            let rtxn = catalog.read()?;
            if let Some(f) = catalog.meta.get(&rtxn, b"format").map_err(|e| catalog.err(e))? {
                let f = f.try_into().map(u32::from_le_bytes).unwrap_or(0);
                if f > FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        path: root.to_path_buf(),
                        found: f,
                        supported: FORMAT_VERSION,
                    });
                }
            }
        } else {
            let mut wtxn = catalog.write()?;
            let found = catalog
                .meta
                .get(&wtxn, b"format")
                .map_err(|e| catalog.err(e))?
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            match found {
                Some(f) if f > FORMAT_VERSION => {
                    return Err(StoreError::NewerFormat {
                        path: root.to_path_buf(),
                        found: f,
                        supported: FORMAT_VERSION,
                    })
                }
                Some(f) if f >= store_format => {
                    index_lost = false;
                    wtxn.abort()
                }
                found => {
                    // A new index (new store, or a lost `index/`), or a format-1 store to
                    // upgrade: record the format in the index, then in the marker.
                    index_lost = found.is_none();
                    catalog.meta.put(&mut wtxn, b"format", &store_format.to_le_bytes()).map_err(|e| catalog.err(e))?;
                    wtxn.commit().map_err(|e| catalog.err(e))?;
                }
            }
            if marker.format < store_format {
                Self::write_marker(
                    root,
                    &Marker { format: store_format, encryption: marker.encryption.clone(), ..marker },
                )?;
            }
        }
        let mut store = Store {
            root: root.to_path_buf(),
            catalog,
            store_id,
            pack_target: opts.pack_target.max(1 << 20),
            pack_files: Mutex::new(PackFiles { cap: pack_files_cap(), ..Default::default() }),
            cleanup: CleanupReport::default(),
            failpoints: Failpoints::from_env(),
            protection: Mutex::new(PackProtection { requested: opts.immutable_packs, ..Default::default() }),
            read_only,
            keyring,
            format: store_format,
            encryption: marker.encryption,
        };
        if store.read_only.is_none() {
            store.cleanup = store.cleanup_leftovers(index_lost)?;
        }
        Ok(store)
    }

    /// Create a store in `root`, which must be missing, empty, or hold only the skeleton of
    /// an earlier creation that was interrupted. Creators serialise on `writers.lock`, so two
    /// processes creating the same store at once both succeed. The marker is written last
    /// (atomically), so until it exists the directory is still only a skeleton. With
    /// `opts.key`, the store is encrypted under it (format 3).
    fn init(root: &Path, opts: &StoreOptions) -> Result<()> {
        // Refuse someone else's directory before writing anything into it.
        if root.exists() {
            Self::check_skeleton(root, false)?;
        }
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
        let lock_path = root.join("writers.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        lock.lock().map_err(|e| StoreError::io(&lock_path, e))?;
        if root.join(MARKER).exists() {
            return Ok(()); // another process created it while we waited
        }
        Self::check_skeleton(root, true)?;
        for d in ["index", "packs", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, e))?;
        }
        let id = random_id();
        let encryption = opts.key.as_ref().map(|key| EncryptionInfo {
            v: 1,
            cipher: opts.cipher.filter(|c| *c != Cipher::None).unwrap_or_else(Cipher::preferred).name().to_string(),
            key_check: key.check_value().iter().map(|b| format!("{b:02x}")).collect(),
        });
        let marker = Marker {
            format: if encryption.is_some() { FORMAT_VERSION } else { PLAIN_FORMAT_VERSION },
            store_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            created_unix: now_unix(),
            encryption,
        };
        Self::write_marker(root, &marker)
    }

    /// Replace the marker atomically (temp file, fsync, rename, fsync of the directory).
    fn write_marker(root: &Path, marker: &Marker) -> Result<()> {
        let tmp = root.join(format!(".rackvault-store.json.tmp.{}", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        f.write_all(serde_json::to_string_pretty(marker).expect("marker serialises").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::io(&tmp, e))?;
        std::fs::rename(&tmp, root.join(MARKER)).map_err(|e| StoreError::io(root, e))?;
        fsync_dir(root)
    }

    /// Check that `root` holds nothing but the skeleton of an unfinished creation (empty
    /// `packs/`); with `remove_temps`, delete stale marker temp files.
    fn check_skeleton(root: &Path, remove_temps: bool) -> Result<()> {
        let skeleton = ["index", "packs", "tmp", "writers.lock"];
        for entry in std::fs::read_dir(root).map_err(|e| StoreError::io(root, e))? {
            let entry = entry.map_err(|e| StoreError::io(root, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let temp = name.starts_with(".rackvault-store.json.tmp");
            let ours = temp || skeleton.contains(&name.as_ref());
            let empty_packs =
                name != "packs" || std::fs::read_dir(entry.path()).map(|mut d| d.next().is_none()).unwrap_or(false);
            if name == MARKER {
                continue; // created by a concurrent creator
            }
            if !ours || !empty_packs {
                return Err(StoreError::NotAStore { path: root.to_path_buf(), marker: MARKER });
            }
            if temp && remove_temps {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// This store's id (hex), as its marker file records it.
    pub fn store_id(&self) -> String {
        self.store_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The restore point replicated here from `origin`, if one was committed.
    pub fn find_origin(&self, origin: &PointOrigin) -> Result<Option<RestorePoint>> {
        Ok(self.list()?.into_iter().find(|p| {
            p.origin.as_ref().is_some_and(|o| {
                o.namespace == origin.namespace && o.store_id == origin.store_id && o.point == origin.point
            })
        }))
    }

    /// The keyring of the store `marker` describes, checking `opts.key` against it.
    fn keyring_for(root: &Path, marker: &Marker, opts: &StoreOptions) -> Result<Keyring> {
        match (&marker.encryption, &opts.key) {
            (None, None) => Ok(Keyring::plain()),
            (None, Some(_)) => Err(StoreError::NotEncrypted { path: root.to_path_buf() }),
            (Some(_), None) => Err(StoreError::KeyRequired { path: root.to_path_buf() }),
            (Some(enc), Some(key)) => {
                let corrupt = |detail: String| StoreError::Corrupt { path: root.join(MARKER), offset: 0, detail };
                if enc.v != 1 {
                    return Err(StoreError::NewerFormat {
                        path: root.to_path_buf(),
                        found: marker.format,
                        supported: FORMAT_VERSION,
                    });
                }
                let cipher = Cipher::from_name(&enc.cipher)
                    .filter(|c| *c != Cipher::None)
                    .ok_or_else(|| corrupt(format!("unknown cipher {:?} in the store marker", enc.cipher)))?;
                let want: String = key.check_value().iter().map(|b| format!("{b:02x}")).collect();
                if want != enc.key_check.to_ascii_lowercase() {
                    return Err(StoreError::WrongKey { path: root.to_path_buf() });
                }
                Ok(Keyring::new(key, cipher))
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How this store names and seals its records. Backups hash chunks with
    /// [`Keyring::digest`] and encode them with [`ChunkEncoder::encode_for`].
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The store's encryption, `None` for an unencrypted store.
    pub fn encryption(&self) -> Option<&EncryptionInfo> {
        self.encryption.as_ref()
    }

    /// The store id (hex), which a recovery key file names.
    pub fn store_id_hex(&self) -> String {
        self.store_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The on-disk format of this store.
    pub fn format(&self) -> u32 {
        self.format
    }

    /// A tree builder naming nodes with this store's chunk ids.
    pub fn tree_builder(&self) -> TreeBuilder {
        TreeBuilder::with_ids(self.keyring.ids())
    }

    /// What the cleanup at open removed.
    pub fn cleanup_report(&self) -> &CleanupReport {
        &self.cleanup
    }

    /// Fail the named write steps with an injected I/O error (tests of the durability order).
    #[doc(hidden)]
    pub fn set_failpoints(&self, names: &[&str]) {
        if let Ok(mut set) = self.failpoints.0.write() {
            *set = names.iter().map(|n| n.to_string()).collect();
        }
    }

    /// Why the store is open read-only, or `None` when it is writable.
    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Refuse a write to a read-only store, saying why it is read-only.
    pub(crate) fn check_writable(&self) -> Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some(why) => Err(StoreError::ReadOnly { path: self.root.clone(), why: why.clone() }),
        }
    }

    /// The I/O path pack writes take.
    pub fn io_backend(&self) -> uringio::Backend {
        uringio::backend()
    }

    pub(crate) fn writers_lock(&self) -> Result<File> {
        let p = self.root.join("writers.lock");
        File::options().create(true).truncate(false).write(true).open(&p).map_err(|e| StoreError::io(&p, e))
    }

    pub(crate) fn pack_path(&self, number: u64) -> PathBuf {
        self.root.join("packs").join(format!("{number:016x}.pack"))
    }

    fn tmp_pack_path(&self, number: u64) -> PathBuf {
        self.root.join("tmp").join(format!("{number:016x}.pack"))
    }

    /// Remove unsealed and unindexed packs, if no backup is running.
    fn cleanup_leftovers(&self, index_lost: bool) -> Result<CleanupReport> {
        let lock = self.writers_lock()?;
        if lock.try_lock().is_err() {
            return Ok(CleanupReport { ran: false, ..Default::default() });
        }
        let mut report = CleanupReport { ran: true, ..Default::default() };
        // Packs a GC dropped from the index but had not yet deleted: finish the deletion.
        report.gc_deletions_finished = self.finish_gc_deletions()?;
        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))? {
            let entry = entry.map_err(|e| StoreError::io(&tmp, e))?;
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(entry.path()).map_err(|e| StoreError::io(entry.path(), e))?;
            report.tmp_packs_removed += 1;
            report.bytes_freed += len;
        }
        // A sealed pack the index does not know (crash between steps 3 and 4, or a lost
        // index) is intact and fsynced: adopt it rather than delete data.
        let packs_dir = self.root.join("packs");
        let rtxn = self.catalog.read()?;
        let mut unknown = Vec::new();
        for entry in std::fs::read_dir(&packs_dir).map_err(|e| StoreError::io(&packs_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&packs_dir, e))?;
            let name = entry.file_name();
            let Some(number) =
                name.to_str().and_then(|n| n.strip_suffix(".pack")).and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            if self.catalog.packs.get(&rtxn, &pack_key(number)).map_err(|e| self.catalog.err(e))?.is_none() {
                unknown.push((number, entry.path()));
            }
        }
        drop(rtxn);
        if !unknown.is_empty() {
            unknown.sort();
            let adopted = self.index_packs(&unknown, false, index_lost)?;
            report.orphan_packs_adopted = adopted.packs;
            report.restore_points_recovered = adopted.restore_points_recovered;
        }
        Ok(report)
    }

    /// Whether the index holds a usable copy of `digest` of this store's own: indexed, not
    /// recorded as damaged (so a backup stores a new copy of a chunk verify found damaged or
    /// missing), and not foreign (a replica's record this store cannot check is never
    /// deduplicated against: see `pack`).
    pub fn contains(&self, digest: &Digest) -> Result<bool> {
        let rtxn = self.catalog.read()?;
        Ok(self.catalog.chunk(&rtxn, digest)?.is_some_and(|l| !l.foreign) && !self.catalog.is_damaged(&rtxn, digest)?)
    }

    /// Whether the index holds a usable copy of `digest`, its own or foreign: what a replica
    /// held without its key may reference.
    pub fn holds(&self, digest: &Digest) -> Result<bool> {
        let rtxn = self.catalog.read()?;
        Ok(self.catalog.chunk(&rtxn, digest)?.is_some() && !self.catalog.is_damaged(&rtxn, digest)?)
    }

    /// Where `digest` is stored.
    pub fn locate(&self, digest: &Digest) -> Result<Option<ChunkLoc>> {
        let rtxn = self.catalog.read()?;
        self.catalog.chunk(&rtxn, digest)
    }

    fn pack_file(&self, number: u64) -> Result<Arc<File>> {
        if let Some(f) = self.pack_files.lock().expect("pack cache lock").get(number) {
            return Ok(f);
        }
        let path = self.pack_path(number);
        let f = Arc::new(File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::Corrupt { path: path.clone(), offset: 0, detail: "pack file is missing".into() }
            } else {
                StoreError::io(&path, e)
            }
        })?);
        self.pack_files.lock().expect("pack cache lock").insert(number, f.clone());
        Ok(f)
    }

    /// Locate `digest` and open its pack. A GC may repack the chunk between the lookup and the
    /// open (the old pack is then gone); the chunk is then looked up again, once.
    fn locate_open(&self, digest: &Digest) -> Result<(ChunkLoc, Arc<File>)> {
        let loc = self.locate(digest)?.ok_or(StoreError::MissingChunk { digest: *digest })?;
        match self.pack_file(loc.pack) {
            Ok(file) => Ok((loc, file)),
            Err(e @ StoreError::Corrupt { .. }) => {
                let again = self.locate(digest)?.ok_or(StoreError::MissingChunk { digest: *digest })?;
                if again.pack == loc.pack {
                    return Err(e);
                }
                Ok((again, self.pack_file(again.pack)?))
            }
            Err(e) => Err(e),
        }
    }

    /// Turn the immutable attribute of newly sealed packs on or off (see
    /// [`StoreOptions::immutable_packs`]); packs sealed before keep theirs.
    pub fn set_immutable_packs(&self, on: bool) {
        if let Ok(mut p) = self.protection.lock() {
            p.requested = on;
        }
    }

    /// How sealed packs are protected on disk.
    pub fn pack_protection(&self) -> PackProtection {
        self.protection.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Give a sealed pack the immutable attribute, if asked to; a failure is recorded in
    /// [`Store::pack_protection`], not returned: the pack is durable either way.
    pub(crate) fn protect_pack(&self, path: &Path) {
        let Ok(mut p) = self.protection.lock() else { return };
        if !p.requested || p.unavailable.is_some() {
            return;
        }
        let r = File::open(path).and_then(|f| uringio::set_immutable(&f, true));
        match r {
            Ok(()) => p.packs_protected += 1,
            Err(e) => {
                p.unavailable = Some(match e.raw_os_error() {
                    Some(libc::EPERM) => {
                        "the appliance lacks the CAP_LINUX_IMMUTABLE capability (run the service with it)".into()
                    }
                    Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) => {
                        "the filesystem holding the store has no immutable attribute (use ext4 or XFS)".into()
                    }
                    _ => format!("setting the immutable attribute failed: {e}"),
                })
            }
        }
    }

    /// Delete a pack file, clearing its immutable attribute first. A missing file is fine.
    pub(crate) fn remove_pack_file(&self, path: &Path) -> Result<()> {
        match File::open(path) {
            Ok(f) => match uringio::set_immutable(&f, false) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP)) => {}
                Err(e) if uringio::is_immutable(&f).unwrap_or(true) => {
                    return Err(StoreError::Io {
                        path: path.to_path_buf(),
                        source: std::io::Error::new(
                            e.kind(),
                            format!("cannot clear the pack's immutable attribute to delete it ({e}); run the service with CAP_LINUX_IMMUTABLE"),
                        ),
                    })
                }
                Err(_) => {}
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(path, e)),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    /// Close a cached pack handle (the pack was rewritten or deleted).
    pub(crate) fn forget_pack_file(&self, number: u64) {
        self.pack_files.lock().expect("pack cache lock").forget(number);
    }

    /// Read chunk `digest` into `out`, checking its checksum and re-hashing its content.
    /// `scratch` is reused between calls to avoid allocations.
    pub fn read_chunk(&self, digest: &Digest, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<ChunkLoc> {
        self.read_chunk_checked(digest, scratch, out, pack::ReadCheck::Digest)
    }

    /// Read chunk `digest` with the given level of checking: restores use
    /// [`ReadCheck::Checksum`](pack::ReadCheck) (the record checksum and the digest in its
    /// header), `verify` the full re-hash.
    pub fn read_chunk_checked(
        &self,
        digest: &Digest,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
        check: pack::ReadCheck,
    ) -> Result<ChunkLoc> {
        let (loc, file) = self.locate_open(digest)?;
        let header = pack::read_record(
            &file,
            &self.pack_path(loc.pack),
            loc.offset,
            loc.stored_len,
            scratch,
            out,
            check,
            &self.keyring,
        )?;
        if header.digest != *digest {
            return Err(StoreError::Corrupt {
                path: self.pack_path(loc.pack),
                offset: loc.offset,
                detail: format!("index says chunk {digest} is here, the record holds {}", header.digest),
            });
        }
        Ok(loc)
    }

    /// Check chunk `digest` as far as this store can (see [`pack::check_content`]): its
    /// checksum, then its content against its id, unless it is a replica's record sealed with
    /// a key this store lacks. `out` receives the content where it could be decoded.
    pub fn check_chunk(
        &self,
        digest: &Digest,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(ChunkLoc, pack::ContentCheck)> {
        let (loc, file) = self.locate_open(digest)?;
        let path = self.pack_path(loc.pack);
        let header = pack::read_record_stored(&file, &path, loc.offset, loc.stored_len, scratch)?;
        let corrupt = |detail: String| StoreError::Corrupt { path: path.clone(), offset: loc.offset, detail };
        if header.digest != *digest {
            return Err(corrupt(format!("index says chunk {digest} is here, the record holds {}", header.digest)));
        }
        let how =
            pack::check_content(&self.keyring, &header, &scratch[pack::RECORD_HEADER_LEN..], out).map_err(corrupt)?;
        Ok((loc, how))
    }

    /// Chunk `digest` as stored (still compressed), with its record checksum checked: what
    /// the tape tier copies, so that destaging never recompresses.
    pub fn read_encoded(&self, digest: &Digest, scratch: &mut Vec<u8>) -> Result<EncodedChunk> {
        let (loc, file) = self.locate_open(digest)?;
        let path = self.pack_path(loc.pack);
        let header = pack::read_record_stored(&file, &path, loc.offset, loc.stored_len, scratch)?;
        if header.digest != *digest {
            return Err(StoreError::Corrupt {
                path,
                offset: loc.offset,
                detail: format!("index says chunk {digest} is here, the record holds {}", header.digest),
            });
        }
        Ok(EncodedChunk::from_record(&header, scratch[pack::RECORD_HEADER_LEN..].to_vec()))
    }

    /// The content of a file captured with a restore point, checked against its digest.
    pub fn read_point_file(&self, file: &PointFile) -> Result<Vec<u8>> {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        self.read_chunk_checked(&file.digest, &mut scratch, &mut out, pack::ReadCheck::Digest)?;
        Ok(out)
    }

    /// A walker over the chunk digests of one disk, in disk order.
    pub fn walk(&self, disk: &DiskIndex) -> TreeWalker<'_> {
        let mut scratch = Vec::new();
        TreeWalker::new(disk.root, disk.height, move |d| {
            let mut out = Vec::new();
            self.read_chunk(d, &mut scratch, &mut out)?;
            Ok(out)
        })
    }

    /// Start a backup session.
    pub fn begin_backup(&self) -> Result<BackupSession<'_>> {
        self.check_writable()?;
        let lock = self.writers_lock()?;
        lock.lock_shared().map_err(|e| StoreError::io(self.root.join("writers.lock"), e))?;
        let registration = gc::Registration::register(self)?;
        Ok(BackupSession {
            store: self,
            _lock: lock,
            registration,
            pack: None,
            pending: HashMap::new(),
            files: Vec::new(),
            stats: SessionStats::default(),
            immutable_for_s: None,
            origin: None,
        })
    }

    /// All readable restore points, ordered by name then id. Records that cannot be read
    /// are left out; [`list_checked`](Store::list_checked) names them.
    pub fn list(&self) -> Result<Vec<RestorePoint>> {
        Ok(self.list_checked()?.0)
    }

    /// All restore points, and the catalog records that cannot be read or fail their checksum.
    pub fn list_checked(&self) -> Result<(Vec<RestorePoint>, Vec<UnreadablePoint>)> {
        let rtxn = self.catalog.read()?;
        self.list_in(&rtxn)
    }

    /// All restore points as of the snapshot `rtxn`, and the unreadable records.
    pub(crate) fn list_in(&self, rtxn: &heed::RoTxn<'_>) -> Result<(Vec<RestorePoint>, Vec<UnreadablePoint>)> {
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for item in self.catalog.points.iter(rtxn).map_err(|e| self.catalog.err(e))? {
            let (k, v) = item.map_err(|e| self.catalog.err(e))?;
            match self.decode_point(rtxn, k, v) {
                Ok(p) => out.push(p),
                Err(StoreError::DamagedPoint { detail, .. }) => {
                    let (name, id) = split_point_key(k);
                    bad.push(UnreadablePoint { name, id, reason: detail });
                }
                Err(e) => return Err(e),
            }
        }
        Ok((out, bad))
    }

    /// Decode the catalog record `v` stored under key `k`, checking it: its blake3 must be the
    /// digest of an indexed manifest record (which holds the same bytes), or of one recorded
    /// as damaged, and it must name the point its key names.
    pub(crate) fn decode_point(&self, rtxn: &heed::RoTxn<'_>, k: &[u8], v: &[u8]) -> Result<RestorePoint> {
        let (name, id) = split_point_key(k);
        let damaged = |detail: String| StoreError::DamagedPoint { point: format!("{name}@{id}"), detail };
        let digest = self.keyring.digest(v);
        let authentic = match self.catalog.chunk(rtxn, &digest)? {
            Some(loc) => loc.kind == RecordKind::Manifest,
            None => self.catalog.is_damaged(rtxn, &digest)?,
        };
        if !authentic {
            return Err(damaged("its checksum does not match any manifest in the store".into()));
        }
        let point: RestorePoint =
            serde_json::from_slice(v).map_err(|e| damaged(format!("unreadable restore point record: {e}")))?;
        if point.name != name || point.id != id {
            return Err(damaged(format!("the record describes {}", point.spec())));
        }
        Ok(point)
    }

    /// Find `NAME` (its newest restore point) or `NAME@ID`.
    pub fn find(&self, spec: &str) -> Result<RestorePoint> {
        let (name, id) = match spec.rsplit_once('@') {
            Some((n, i)) => {
                let id = i.parse::<u64>().map_err(|_| {
                    StoreError::Invalid(format!("{spec:?}: the part after '@' must be a restore point id"))
                })?;
                (n, Some(id))
            }
            None => (spec, None),
        };
        validate_name(name)?;
        let rtxn = self.catalog.read()?;
        let found = match id {
            Some(id) => {
                let key = point_key(name, id);
                self.catalog.points.get(&rtxn, &key).map_err(|e| self.catalog.err(e))?.map(|v| (key, v))
            }
            None => {
                let mut prefix = name.as_bytes().to_vec();
                prefix.push(0);
                let mut last = None;
                for item in self.catalog.points.prefix_iter(&rtxn, &prefix).map_err(|e| self.catalog.err(e))? {
                    let (k, v) = item.map_err(|e| self.catalog.err(e))?;
                    last = Some((k.to_vec(), v));
                }
                last
            }
        };
        match found {
            Some((k, v)) => self.decode_point(&rtxn, &k, v),
            None => Err(StoreError::NoSuchPoint(spec.to_string())),
        }
    }

    /// The size and fill of the filesystem holding the store (statvfs).
    pub fn capacity(&self) -> Result<Capacity> {
        let s = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| StoreError::io(&self.root, std::io::Error::from_raw_os_error(e as i32)))?;
        let frag = s.fragment_size().max(1);
        // As `df` counts: blocks reserved for root are neither used nor available to us.
        let used = s.blocks().saturating_sub(s.blocks_free()) * frag;
        let free = s.blocks_available() * frag;
        Ok(Capacity { total_bytes: used + free, used_bytes: used, free_bytes: free })
    }

    /// Size of the store on disk and what it holds.
    pub fn usage(&self) -> Result<StoreUsage> {
        let rtxn = self.catalog.read()?;
        let chunks = self.catalog.chunks.len(&rtxn).map_err(|e| self.catalog.err(e))?;
        let table = self.pack_table_in(&rtxn)?;
        let pack_bytes = table.iter().map(|p| p.len).sum();
        let deferred_bytes = table.iter().map(|p| p.deferred_bytes).sum();
        let packs = table.len() as u64;
        let index_bytes = std::fs::metadata(self.catalog.path.join("data.mdb")).map(|m| m.len()).unwrap_or(0);
        let points = self.catalog.points.len(&rtxn).map_err(|e| self.catalog.err(e))?;
        Ok(StoreUsage { chunks, packs, pack_bytes, deferred_bytes, index_bytes, restore_points: points })
    }
}

/// How full the filesystem holding the store is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Used plus available: what the store could ever fill (`df`'s size less root's reserve).
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Available to us.
    pub free_bytes: u64,
}

impl Capacity {
    pub fn used_pct(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        self.used_bytes as f64 * 100.0 / self.total_bytes as f64
    }
}

/// Size and contents of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreUsage {
    pub chunks: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    /// Of `pack_bytes`, data backups stored raw that the recompression pass has yet to
    /// compress.
    pub deferred_bytes: u64,
    pub index_bytes: u64,
    pub restore_points: u64,
}

/// Counters of one backup session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// New data chunks stored.
    pub chunks_new: u64,
    /// New index-tree nodes stored.
    pub tree_nodes_new: u64,
    /// Bytes appended to packs (headers and payloads).
    pub bytes_written: u64,
    /// Of those, the bytes of data chunks stored raw for the recompression pass.
    pub bytes_deferred: u64,
    pub packs_sealed: u64,
    /// Whether pack files were opened with `O_DIRECT` (false where the filesystem refuses
    /// it, e.g. tmpfs); `None` before the first pack.
    pub direct_io: Option<bool>,
}

/// A backup in progress: appends new chunks to its own packs and finally commits a restore
/// point. Dropping it without [`commit`](BackupSession::commit) abandons its unsealed pack
/// (already indexed packs stay, see the crate docs).
#[derive(Debug)]
pub struct BackupSession<'s> {
    store: &'s Store,
    _lock: File,
    /// Tells a concurrent GC that this session runs, and since which GC generation.
    registration: gc::Registration,
    pack: Option<PackWriter>,
    /// Chunks in the unsealed pack, not yet in the index.
    pending: HashMap<Digest, ChunkLoc>,
    /// Files added with [`BackupSession::add_file`], published by `commit`.
    files: Vec<PointFile>,
    stats: SessionStats,
    /// The immutability window of the point `commit` makes.
    immutable_for_s: Option<u64>,
    /// Set for a replicated point: recorded in its manifest.
    origin: Option<PointOrigin>,
}

impl<'s> BackupSession<'s> {
    /// Make the committed point immutable for `seconds` after its creation.
    pub fn set_immutable_for(&mut self, seconds: Option<u64>) {
        self.immutable_for_s = seconds.filter(|s| *s > 0);
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Record in the committed point where it was replicated from.
    pub fn set_origin(&mut self, origin: PointOrigin) {
        self.origin = Some(origin);
    }

    /// Make everything inserted so far durable and indexed now (steps 2-4 for the open pack),
    /// without publishing a point: replication calls it at the end of every batch, so that a
    /// cut link or a crash never makes it send those records again.
    pub fn flush(&mut self) -> Result<()> {
        self.seal()
    }

    /// The store's keyring: chunk ids for this session's data come from
    /// [`Keyring::digest`], encoded records from [`ChunkEncoder::encode_for`].
    pub fn keyring(&self) -> &Keyring {
        &self.store.keyring
    }

    /// Whether the store or this session already holds a copy of its own of `digest`.
    pub fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.pending.get(digest).is_some_and(|l| !l.foreign) || self.store.contains(digest)?)
    }

    /// Store `chunk` unless it is already present. Returns whether it was new.
    ///
    /// In an encrypted store an unsealed record is sealed here (tree nodes, manifests,
    /// files); data chunks arrive sealed from [`ChunkEncoder::encode_for`] on the worker
    /// threads. Its id must be the store's ([`Keyring::digest`]). A sealed record is stored
    /// as it is, so records copied from a store with the same key keep their bytes; a plain
    /// store refuses sealed records.
    ///
    /// A foreign record (a replica's, held without its key: see `pack`) is stored as it is,
    /// unless the store holds that digest already (its own or foreign); a record of the
    /// store's own is stored even where a foreign one has its digest, and replaces it.
    pub fn insert(&mut self, chunk: &EncodedChunk) -> Result<bool> {
        if chunk.foreign {
            if self.pending.contains_key(&chunk.digest) || self.store.holds(&chunk.digest)? {
                return Ok(false);
            }
        } else if self.contains(&chunk.digest)? {
            return Ok(false);
        }
        if chunk.cipher != crypto::Cipher::None && !chunk.foreign && !self.store.keyring.is_encrypted() {
            return Err(StoreError::Invalid(format!(
                "chunk {} is encrypted and this store is not; copy encrypted records only into a store opened                  with their key",
                chunk.digest
            )));
        }
        let sealed;
        let chunk = if chunk.cipher == crypto::Cipher::None && !chunk.foreign && self.store.keyring.is_encrypted() {
            sealed = chunk.clone().sealed_for(&self.store.keyring)?;
            &sealed
        } else {
            chunk
        };
        if self.pack.is_none() {
            let catalog = &self.store.catalog;
            let mut wtxn = catalog.write()?;
            let number = catalog.next_counter(&mut wtxn, "next_pack")?;
            wtxn.commit().map_err(|e| catalog.err(e))?;
            let path = self.store.tmp_pack_path(number);
            let writer = PackWriter::create(&path, number, &self.store.store_id, now_unix(), self.store.format)?;
            self.stats.direct_io = Some(writer.is_direct());
            self.pack = Some(writer);
        }
        let pack = self.pack.as_mut().expect("pack opened above");
        let loc = pack.append(chunk)?;
        self.pending.insert(
            chunk.digest,
            ChunkLoc {
                pack: pack.number,
                offset: loc.offset,
                stored_len: loc.stored_len,
                raw_len: chunk.raw_len,
                kind: chunk.kind,
                codec: chunk.codec,
                foreign: chunk.foreign,
            },
        );
        match chunk.kind {
            RecordKind::Data => self.stats.chunks_new += 1,
            RecordKind::Tree => self.stats.tree_nodes_new += 1,
            RecordKind::Manifest | RecordKind::Tombstone => {}
        }
        self.stats.bytes_written += (pack::RECORD_HEADER_LEN + chunk.payload.len()) as u64;
        if chunk.deferred {
            self.stats.bytes_deferred += (pack::RECORD_HEADER_LEN + chunk.payload.len()) as u64;
        }
        if pack.len() >= self.store.pack_target {
            self.seal()?;
        }
        Ok(true)
    }

    /// Steps 2-4 of the durability order for the current pack.
    pub(crate) fn seal(&mut self) -> Result<()> {
        let Some(pack) = self.pack.take() else { return Ok(()) };
        let number = pack.number;
        let sealed = pack.seal()?;
        let final_path = self.store.pack_path(number);
        std::fs::rename(&sealed.path, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
        self.store.failpoints.check("seal.fsync_dir", &final_path)?;
        fsync_dir(&self.store.root.join("packs"))?;
        self.store.protect_pack(&final_path);
        let catalog = &self.store.catalog;
        let mut wtxn = catalog.write()?;
        for (digest, loc) in self.pending.drain() {
            catalog.index_chunk(&mut wtxn, &digest, &loc)?;
        }
        catalog
            .packs
            .put(&mut wtxn, &pack_key(number), &serde_json::to_vec(&sealed.info).expect("pack info serialises"))
            .map_err(|e| catalog.err(e))?;
        wtxn.commit().map_err(|e| catalog.err(e))?;
        self.stats.packs_sealed += 1;
        Ok(())
    }

    /// Store a small file (a VM's configuration) to be published with the restore point.
    pub fn add_file(&mut self, name: &str, content: &[u8]) -> Result<PointFile> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) || name.len() > 255 {
            return Err(StoreError::Invalid(format!("file name {name:?}: use a plain file name of 1-255 bytes")));
        }
        if content.len() > MAX_POINT_FILE {
            return Err(StoreError::Invalid(format!(
                "file {name:?} is {} bytes; configuration files larger than {} bytes are not captured",
                content.len(),
                MAX_POINT_FILE
            )));
        }
        let digest = self.store.keyring.digest(content);
        if !self.contains(&digest)? {
            let encoded =
                pack::ChunkEncoder::new(Some(3)).encode_for(&self.store.keyring, digest, RecordKind::Data, content)?;
            self.insert(&encoded)?;
        }
        let file = PointFile { name: name.to_string(), size: content.len() as u64, digest };
        self.files.push(file.clone());
        Ok(file)
    }

    /// Publish a file whose content record was already inserted (a restore point imported
    /// from tape brings its files' records with its chunks).
    pub fn add_file_record(&mut self, file: PointFile) -> Result<()> {
        if !self.contains(&file.digest)? {
            return Err(StoreError::MissingChunk { digest: file.digest });
        }
        self.files.push(file);
        Ok(())
    }

    /// Write the manifest, seal the last pack and make the restore point visible (steps 5-6).
    pub fn commit(mut self, name: &str, disks: Vec<DiskIndex>, stats: PointStats) -> Result<RestorePoint> {
        validate_name(name)?;
        let catalog = &self.store.catalog;
        let id = {
            let mut wtxn = catalog.write()?;
            let id = catalog.next_counter(&mut wtxn, "next_point")?;
            wtxn.commit().map_err(|e| catalog.err(e))?;
            id
        };
        let files = std::mem::take(&mut self.files);
        let created_unix = now_unix();
        let immutable_until_unix = self.immutable_for_s.map(|s| created_unix.saturating_add(s));
        let origin = self.origin.take();
        let point = RestorePoint {
            name: name.to_string(),
            id,
            created_unix,
            disks,
            files,
            stats,
            immutable_until_unix,
            origin,
        };
        // The manifest goes into the last pack, after every chunk it references, so a catalog
        // rebuilt from packs only finds manifests whose data is durable.
        let manifest_bytes = serde_json::to_vec(&point).expect("restore point serialises");
        let record = EncodedChunk::plain(
            self.store.keyring.digest(&manifest_bytes),
            RecordKind::Manifest,
            pack::Codec::Raw,
            manifest_bytes.len() as u32,
            manifest_bytes.clone(),
        );
        self.insert(&record)?;
        self.seal()?;
        // A GC that ran since this session started may have condemned chunks the session
        // deduplicated against; bring them back in the transaction that publishes the point
        // (see `gc`, "Backups alongside a GC").
        let mut attempts = 0;
        loop {
            attempts += 1;
            let generation = self.store.gc_generation()?;
            let rescue = if generation != self.registration.start_generation() {
                self.store.condemned_references(&point)?
            } else {
                Vec::new()
            };
            let mut wtxn = catalog.write()?;
            if catalog.meta_u64(&wtxn, "gc_generation")?.unwrap_or(0) != generation {
                // Another GC condemned more meanwhile: look again.
                wtxn.abort();
                if attempts < 8 {
                    continue;
                }
                return Err(StoreError::Invalid(
                    "the garbage collector kept condemning chunks while this backup committed; run the backup again"
                        .into(),
                ));
            }
            for digest in &rescue {
                // Where it is *now*: a GC may have moved it into a new pack since the walk.
                if let Some((loc, _)) = catalog.condemned_chunk(&wtxn, digest)? {
                    if catalog.chunks.get(&wtxn, &digest.0).map_err(|e| catalog.err(e))?.is_none() {
                        catalog.chunks.put(&mut wtxn, &digest.0, &loc.encode()).map_err(|e| catalog.err(e))?;
                    }
                    catalog.condemned.delete(&mut wtxn, &digest.0).map_err(|e| catalog.err(e))?;
                }
            }
            // Every referenced root must be indexed now; a bug here would publish a broken point.
            for d in &point.disks {
                if d.height > 0 && catalog.chunk(&wtxn, &d.root)?.is_none() {
                    return Err(StoreError::MissingChunk { digest: d.root });
                }
            }
            for f in &point.files {
                if catalog.chunk(&wtxn, &f.digest)?.is_none() {
                    return Err(StoreError::MissingChunk { digest: f.digest });
                }
            }
            self.store.failpoints.check("commit.points", &catalog.path)?;
            catalog.points.put(&mut wtxn, &point_key(name, id), &manifest_bytes).map_err(|e| catalog.err(e))?;
            wtxn.commit().map_err(|e| catalog.err(e))?;
            return Ok(point);
        }
    }
}

impl Drop for BackupSession<'_> {
    fn drop(&mut self) {
        if let Some(pack) = self.pack.take() {
            // An abandoned backup: its unsealed pack is garbage. Removing it now saves the
            // next open the work; if this fails, that cleanup removes it.
            let path = pack.path().to_path_buf();
            drop(pack);
            let _ = std::fs::remove_file(path);
        }
    }
}
