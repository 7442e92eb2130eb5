//! Replication to S3 object storage: the bucket's layout, the target a push writes to
//! ([`S3Target`]), the source a pull reads from ([`S3Source`]: restore from the bucket and
//! disaster recovery), and the bucket's upkeep ([`s3_gc`], [`s3_delete_point`]).
//!
//! ## Layout, under `<prefix>/<namespace>/`
//! | key | holds | written |
//! |---|---|---|
//! | `store.json` | [`BucketMarker`]: the source store's id and encryption (cipher, key check) | once, before anything else |
//! | `packs/<id>.pack` | one batch of records in the replication wire form (`store::pack::join_records`); `id` is the blake3 of its bytes | one per batch |
//! | `packs/<id>.idx` | [`PackIndex`]: digest, kind, offset and length of each record in the pack | right after its pack |
//! | `points/<name>/<id>.json` | [`PointIndex`]: the point, its origin and the packs it references | last |
//!
//! Records travel and rest as the store holds them: compressed, and sealed where the store is
//! encrypted, so the bucket's owner reads nothing but point names, sizes and times. Never one
//! object per chunk: a pack object is a push batch (about 32 MiB, a multipart upload above
//! the client's threshold).
//!
//! ## Durability order
//! A pack before its index, every pack a point references before the point's index. Packs
//! upload [`UPLOADS_IN_FLIGHT`] at a time, but only within one group of the push (the data,
//! then each tree level): the sender's `barrier` waits for a group's uploads before the next
//! group starts, so a node is never in the bucket before what it references, the invariant
//! the tree skip rests on. An
//! index names only packs that exist; a pack without an index (a push cut between the two)
//! is invisible and is removed by [`s3_gc`]. The target learns what the bucket holds from
//! the pack indexes when it opens, so a push that was cut resumes: what was uploaded is not
//! sent again. Before it publishes a point the target checks (one listing) that each pack of an
//! earlier run that the point references still exists.
//!
//! ## Object lock
//! With a lock mode set, every object a push writes for a point with an immutability window
//! carries that window as its retention, set in the upload itself. A point that references
//! a pack from an earlier push extends that pack's retention (and its index's) to its own
//! window before the point is published. The server then refuses deleting any of them inside
//! the window, whatever asks it to.
//!
//! ## GC
//! [`s3_gc`] deletes a pack (index first, then pack) only when no point index references it,
//! it is older than a safety age, and its retention has ended; a locked pack is kept and
//! counted. On a versioned bucket (always with object lock) it deletes the versions
//! themselves, so the space is freed, not hidden behind a delete marker. GC must not run
//! while a push to the same namespace runs: the service serializes them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use store::{Digest, EncodedChunk, EncryptionInfo, PointOrigin, RecordKind, RestorePoint, Store};

use super::pull::{RemotePoint, ReplicaSource};
use super::{Delivered, ReplicaTarget, ReplicateError};
use crate::ErrorKind;

pub use ::s3::{BlockingS3, LockMode, Retention, S3Error};

/// Where a namespace lives in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Layout {
    base: String,
}

impl S3Layout {
    /// `prefix` (segments of `[A-Za-z0-9._-]` joined by '/', or empty) and a namespace.
    pub fn new(prefix: &str, namespace: &str) -> Result<S3Layout, ReplicateError> {
        super::validate_namespace(namespace)?;
        let prefix = prefix.trim_matches('/');
        let base = if prefix.is_empty() { namespace.to_string() } else { format!("{prefix}/{namespace}") };
        ::s3::validate_key(&base).map_err(|_| {
            ReplicateError::Invalid(format!(
                "bucket prefix {prefix:?}: use segments of letters, digits, '.', '_' or '-' separated by '/'"
            ))
        })?;
        Ok(S3Layout { base })
    }

    /// `<prefix>/<namespace>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn marker(&self) -> String {
        format!("{}/store.json", self.base)
    }

    fn packs(&self) -> String {
        format!("{}/packs/", self.base)
    }

    fn pack(&self, id: &str) -> String {
        format!("{}/packs/{id}.pack", self.base)
    }

    fn pack_index(&self, id: &str) -> String {
        format!("{}/packs/{id}.idx", self.base)
    }

    fn points(&self) -> String {
        format!("{}/points/", self.base)
    }

    /// The key of point `spec` (`name@id`).
    fn point(&self, spec: &str) -> Result<String, ReplicateError> {
        let (name, id) = spec
            .rsplit_once('@')
            .and_then(|(n, i)| Some((n, i.parse::<u64>().ok()?)))
            .ok_or_else(|| ReplicateError::Invalid(format!("{spec:?} is not name@id")))?;
        store::validate_name(name)?;
        Ok(format!("{}/points/{name}/{id}.json", self.base))
    }
}

/// `store.json`: whose points these are, and under which key their ids and records were made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketMarker {
    /// Version of this record: 1.
    pub v: u32,
    /// The store that first replicated into this namespace (hex).
    pub store_id: String,
    /// `None`: plain records and plain blake3 ids.
    pub encryption: Option<EncryptionInfo>,
}

/// `packs/<id>.idx`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackIndex {
    /// Version of this record: 1.
    pub v: u32,
    pub records: Vec<PackEntry>,
}

/// One record of a pack object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// The digest, hex.
    pub digest: String,
    /// "data" or "tree".
    pub kind: String,
    /// Where the record (header and payload) starts in the pack object, and its length.
    pub offset: u64,
    pub len: u32,
}

/// `points/<name>/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointIndex {
    /// Version of this record: 1.
    pub v: u32,
    pub origin: PointOrigin,
    pub point: RestorePoint,
    /// Ids of every pack holding a record the point references.
    pub packs: Vec<String>,
    /// The object lock retention its objects were given (unix seconds), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until_unix: Option<u64>,
}

const RECORD_V: u32 = 1;

/// An S3 client error as this layer reports it (never retried again here).
pub fn offsite(e: S3Error) -> ReplicateError {
    let kind = match e.kind() {
        ::s3::ErrorKind::Transient => ErrorKind::Transient,
        ::s3::ErrorKind::Permanent => ErrorKind::Permanent,
    };
    ReplicateError::Offsite { message: e.to_string(), kind }
}

fn is_not_found(e: &S3Error) -> bool {
    matches!(e.root(), S3Error::NotFound { .. })
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ReplicateError> {
    serde_json::from_slice(bytes).map_err(|e| ReplicateError::Offsite {
        message: format!(
            "object {key} is not what rackvault wrote there ({e}); the bucket was changed by something else"
        ),
        kind: ErrorKind::Permanent,
    })
}

fn encode<T: Serialize>(v: &T) -> Result<bytes::Bytes, ReplicateError> {
    serde_json::to_vec(v)
        .map(bytes::Bytes::from)
        .map_err(|e| ReplicateError::Invalid(format!("encoding an index object: {e}")))
}

/// Largest index object read (a point index lists its packs: about 40 bytes per 32 MiB of
/// stored data, so 64 MiB covers a point of tens of petabytes). A bigger one is refused,
/// never read whole: the bucket is not trusted to be what rackvault wrote.
pub const MAX_INDEX_OBJECT: u64 = 64 << 20;

fn get_json<T: serde::de::DeserializeOwned>(s3: &BlockingS3, key: &str) -> Result<Option<T>, ReplicateError> {
    // A ranged GET one byte past the limit: a longer object shows itself without being read.
    match s3.get_range(key, 0..MAX_INDEX_OBJECT + 1) {
        Ok(b) if b.len() as u64 > MAX_INDEX_OBJECT => Err(ReplicateError::Offsite {
            message: format!(
                "object {key} is larger than {MAX_INDEX_OBJECT} bytes, which no index rackvault writes is; \
                 the bucket was changed by something else"
            ),
            kind: ErrorKind::Permanent,
        }),
        Ok(b) => decode(key, &b).map(Some),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(offsite(e)),
    }
}

fn put(s3: &BlockingS3, key: &str, data: bytes::Bytes, retention: Option<Retention>) -> Result<(), ReplicateError> {
    match retention {
        Some(r) => s3.put_with_retention(key, data, r),
        None => s3.upload(key, data),
    }
    .map(|_| ())
    .map_err(offsite)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where a record is in the bucket.
#[derive(Debug, Clone, Copy)]
struct RecordAt {
    pack: u32,
    offset: u64,
    len: u32,
}

/// What the bucket's pack indexes say it holds.
#[derive(Debug, Default)]
struct Catalog {
    packs: Vec<String>,
    at: HashMap<Digest, RecordAt>,
}

impl Catalog {
    /// Reads every pack index of the namespace. A pack without an index (a push cut between
    /// the two) is left out, as is an index without its pack.
    fn load(s3: &BlockingS3, layout: &S3Layout) -> Result<Catalog, ReplicateError> {
        let objects = s3.list_all(&layout.packs()).map_err(offsite)?;
        let names: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        let mut cat = Catalog::default();
        for o in &objects {
            let Some(id) = o.key.strip_prefix(&layout.packs()).and_then(|k| k.strip_suffix(".idx")) else {
                continue;
            };
            if !names.contains(layout.pack(id).as_str()) {
                continue;
            }
            let Some(index) = get_json::<PackIndex>(s3, &o.key)? else { continue };
            cat.add(id, &index)?;
        }
        Ok(cat)
    }

    fn add(&mut self, id: &str, index: &PackIndex) -> Result<(), ReplicateError> {
        if index.v != RECORD_V {
            return Err(ReplicateError::Invalid(format!(
                "pack index {id} has version {}; this firmware reads version {RECORD_V}: update it",
                index.v
            )));
        }
        let pack = self.packs.len() as u32;
        self.packs.push(id.to_string());
        for e in &index.records {
            let d = Digest::from_hex(&e.digest).ok_or_else(|| {
                ReplicateError::Invalid(format!("pack index {id} names {:?}, not a digest", e.digest))
            })?;
            self.at.entry(d).or_insert(RecordAt { pack, offset: e.offset, len: e.len });
        }
        Ok(())
    }
}

fn check_marker(marker: &BucketMarker, store: &Store, layout: &S3Layout, bucket: &str) -> Result<(), ReplicateError> {
    if marker.v != RECORD_V {
        return Err(ReplicateError::Invalid(format!(
            "{}/store.json has version {}; this firmware reads version {RECORD_V}: update it",
            layout.base(),
            marker.v
        )));
    }
    let here = store.encryption().map(|e| e.key_check.to_ascii_lowercase());
    let there = marker.encryption.as_ref().map(|e| e.key_check.to_ascii_lowercase());
    if here == there {
        return Ok(());
    }
    Err(ReplicateError::Refused(match (&there, &here) {
        (Some(t), Some(h)) => format!(
            "the points under {}/ in bucket {bucket} were made under another key (key check {t}; this store's is {h}): \
             restore that appliance's recovery key into a new data directory (rackvault key restore), or use another namespace",
            layout.base()
        ),
        (Some(t), None) => format!(
            "the points under {}/ in bucket {bucket} are encrypted (key check {t}) and this store is not: \
             restore that appliance's recovery key into a new data directory (rackvault key restore) and pull there",
            layout.base()
        ),
        _ => format!(
            "the points under {}/ in bucket {bucket} are not encrypted and this store is: use another namespace \
             (or bucket prefix) for this store",
            layout.base()
        ),
    }))
}

/// Pack objects a push uploads at once (each a multipart upload with its own parts in
/// flight): a pipeline, so reading the next batch overlaps the uploads and one object's
/// round trips do not idle the link.
pub const UPLOADS_IN_FLIGHT: usize = 3;

/// A pack being uploaded (the pack, then its index) on a thread of its own.
struct Upload {
    id: String,
    index: PackIndex,
    done: std::thread::JoinHandle<Result<(), ReplicateError>>,
}

/// A push to a bucket.
pub struct S3Target<'a> {
    s3: &'a BlockingS3,
    layout: S3Layout,
    /// The sender's store: the point's trees are read from it at commit.
    store: &'a Store,
    retention: Option<Retention>,
    cat: Catalog,
    /// Packs written by this push (their retention is the one asked for).
    written: HashSet<u32>,
    /// Uploads not known finished yet, oldest first; their records join `cat` when they are.
    inflight: VecDeque<Upload>,
}

impl std::fmt::Debug for S3Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target").field("layout", &self.layout).field("packs", &self.cat.packs.len()).finish()
    }
}

impl<'a> S3Target<'a> {
    /// Opens `layout` in the bucket for a push from `store`: writes the namespace's marker on
    /// the first push, checks it otherwise (the same key), and reads what the bucket holds.
    /// `lock`: the object lock mode for points with an immutability window (`point`'s
    /// window decides the retention).
    pub fn open(
        s3: &'a BlockingS3,
        layout: S3Layout,
        store: &'a Store,
        point: &RestorePoint,
        lock: Option<LockMode>,
        now: SystemTime,
    ) -> Result<S3Target<'a>, ReplicateError> {
        let bucket = s3.client().config().bucket.clone();
        match get_json::<BucketMarker>(s3, &layout.marker())? {
            Some(m) => check_marker(&m, store, &layout, &bucket)?,
            None => {
                let m =
                    BucketMarker { v: RECORD_V, store_id: store.store_id(), encryption: store.encryption().cloned() };
                put(s3, &layout.marker(), encode(&m)?, None)?;
            }
        }
        let retention = match (lock, point.immutable_until_unix) {
            (Some(mode), Some(until)) if until > unix(now) => {
                Some(Retention { mode, retain_until: UNIX_EPOCH + Duration::from_secs(until) })
            }
            _ => None,
        };
        let cat = Catalog::load(s3, &layout)?;
        Ok(S3Target { s3, layout, store, retention, cat, written: HashSet::new(), inflight: VecDeque::new() })
    }

    /// Waits for the oldest upload; its records are then in the bucket's catalog.
    fn finish_one(&mut self) -> Result<(), ReplicateError> {
        let Some(u) = self.inflight.pop_front() else { return Ok(()) };
        u.done.join().map_err(|_| ReplicateError::Invalid("a pack upload thread panicked".into()))??;
        self.cat.add(&u.id, &u.index)?;
        self.written.insert(self.cat.packs.len() as u32 - 1);
        Ok(())
    }

    /// Packs the bucket holds (with an index).
    pub fn packs(&self) -> usize {
        self.cat.packs.len()
    }
}

impl Drop for S3Target<'_> {
    /// A push that failed or was dropped still waits for its uploads: none runs on unseen.
    fn drop(&mut self) {
        while let Some(u) = self.inflight.pop_front() {
            let _ = u.done.join();
        }
    }
}

impl ReplicaTarget for S3Target<'_> {
    fn find(&mut self, origin: &PointOrigin) -> Result<Option<String>, ReplicateError> {
        let key = self.layout.point(&origin.point)?;
        Ok(get_json::<PointIndex>(self.s3, &key)?
            .filter(|p| p.origin.store_id == origin.store_id)
            .map(|p| format!("{}/{}", self.layout.base(), p.origin.point)))
    }

    fn lacking(&mut self, digests: &[Digest]) -> Result<Vec<Digest>, ReplicateError> {
        Ok(digests.iter().filter(|d| !self.cat.at.contains_key(d)).copied().collect())
    }

    fn put_records(&mut self, records: &[EncodedChunk]) -> Result<(), ReplicateError> {
        let mut body = Vec::with_capacity(records.iter().map(|c| c.payload.len() + 64).sum());
        let mut entries = Vec::with_capacity(records.len());
        for c in records {
            let framed = store::pack::join_records(std::slice::from_ref(c));
            entries.push(PackEntry {
                digest: c.digest.to_hex(),
                kind: if c.kind == RecordKind::Tree { "tree".into() } else { "data".into() },
                offset: body.len() as u64,
                len: framed.len() as u32,
            });
            body.extend_from_slice(&framed);
        }
        let id = blake3::hash(&body).to_hex()[..32].to_string();
        let index = PackIndex { v: RECORD_V, records: entries };
        while self.inflight.len() >= UPLOADS_IN_FLIGHT {
            self.finish_one()?;
        }
        let (s3, retention) = (self.s3.clone(), self.retention);
        let (pack_key, index_key, index_body) = (self.layout.pack(&id), self.layout.pack_index(&id), encode(&index)?);
        let done = std::thread::Builder::new()
            .name("s3-pack".into())
            .spawn(move || {
                // The pack first, then its index: an index names only a pack that exists.
                put(&s3, &pack_key, bytes::Bytes::from(body), retention)?;
                put(&s3, &index_key, index_body, retention)
            })
            .map_err(|e| ReplicateError::Invalid(format!("cannot start a pack upload: {e}")))?;
        self.inflight.push_back(Upload { id, index, done });
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), ReplicateError> {
        while !self.inflight.is_empty() {
            self.finish_one()?;
        }
        Ok(())
    }

    fn commit(&mut self, point: &RestorePoint, origin: &PointOrigin) -> Result<Delivered, ReplicateError> {
        self.barrier()?;
        let mut packs: BTreeSet<u32> = BTreeSet::new();
        let mut missing: Vec<Digest> = Vec::new();
        super::for_each_reference(self.store, point, &mut |d| -> Result<bool, ReplicateError> {
            match self.cat.at.get(d) {
                Some(a) => {
                    packs.insert(a.pack);
                }
                None => missing.push(*d),
            }
            // The sender's own tree is read whole, so every pack it touches is found.
            Ok(true)
        })?;
        // Packs of earlier pushes: still there (a GC or a hand may have removed them since
        // the push opened: one listing, not a HEAD per pack), and locked at least as long as
        // this point.
        let old: Vec<u32> = packs.iter().filter(|p| !self.written.contains(p)).copied().collect();
        let listed: HashSet<String> = if old.is_empty() {
            HashSet::new()
        } else {
            self.s3.list_all(&self.layout.packs()).map_err(offsite)?.into_iter().map(|o| o.key).collect()
        };
        for p in old {
            let id = self.cat.packs[p as usize].clone();
            if !listed.contains(&self.layout.pack(&id)) {
                // Forget it: the sender's next question finds its records lacking.
                self.cat.at.retain(|_, a| a.pack != p);
                missing.push(Digest::ZERO);
                continue;
            }
            if let Some(want) = self.retention {
                for key in [self.layout.pack(&id), self.layout.pack_index(&id)] {
                    let has = self.s3.retention(&key, None).map_err(offsite)?;
                    if has.is_none_or(|h| h.retain_until < want.retain_until) {
                        self.s3.set_retention(&key, None, want).map_err(offsite)?;
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Err(ReplicateError::Incomplete(format!(
                "the bucket lacks {} record(s) the point references",
                missing.len()
            )));
        }
        let index = PointIndex {
            v: RECORD_V,
            origin: origin.clone(),
            point: point.clone(),
            packs: packs.iter().map(|p| self.cat.packs[*p as usize].clone()).collect(),
            retain_until_unix: self.retention.map(|r| unix(r.retain_until)),
        };
        put(self.s3, &self.layout.point(&origin.point)?, encode(&index)?, self.retention)?;
        Ok(Delivered { point: format!("{}/{}", self.layout.base(), origin.point), already_there: false })
    }
}

/// A pull from a bucket: restore from it, or rebuild a new appliance from it.
pub struct S3Source<'a> {
    s3: &'a BlockingS3,
    layout: S3Layout,
    marker: BucketMarker,
    cat: Option<Catalog>,
}

impl std::fmt::Debug for S3Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Source").field("layout", &self.layout).finish()
    }
}

impl<'a> S3Source<'a> {
    /// Opens `layout` for reading; refuses a namespace that holds no rackvault points.
    pub fn open(s3: &'a BlockingS3, layout: S3Layout) -> Result<S3Source<'a>, ReplicateError> {
        let bucket = s3.client().config().bucket.clone();
        let marker = get_json::<BucketMarker>(s3, &layout.marker())?.ok_or_else(|| {
            ReplicateError::Invalid(format!(
                "bucket {bucket} holds no rackvault points under {}/ (no store.json): check the bucket, the prefix and the namespace",
                layout.base()
            ))
        })?;
        Ok(S3Source { s3, layout, marker, cat: None })
    }

    pub fn marker(&self) -> &BucketMarker {
        &self.marker
    }

    /// Refuses, saying what to do, unless `store` reads these points (the same key, or both
    /// plain).
    pub fn check_store(&self, store: &Store) -> Result<(), ReplicateError> {
        check_marker(&self.marker, store, &self.layout, &self.s3.client().config().bucket)
    }

    /// The point indexes, oldest first.
    pub fn point_indexes(&self) -> Result<Vec<PointIndex>, ReplicateError> {
        point_indexes(self.s3, &self.layout)
    }
}

fn point_indexes(s3: &BlockingS3, layout: &S3Layout) -> Result<Vec<PointIndex>, ReplicateError> {
    let mut out = Vec::new();
    for o in s3.list_all(&layout.points()).map_err(offsite)? {
        if !o.key.ends_with(".json") {
            continue;
        }
        if let Some(p) = get_json::<PointIndex>(s3, &o.key)? {
            if p.v != RECORD_V {
                return Err(ReplicateError::Invalid(format!(
                    "point index {} has version {}; this firmware reads version {RECORD_V}: update it",
                    o.key, p.v
                )));
            }
            out.push(p);
        }
    }
    out.sort_by_key(|p| (p.point.created_unix, p.origin.point.clone()));
    Ok(out)
}

impl ReplicaSource for S3Source<'_> {
    fn points(&mut self) -> Result<Vec<RemotePoint>, ReplicateError> {
        Ok(self
            .point_indexes()?
            .into_iter()
            .map(|p| RemotePoint { point: p.point, origin: p.origin, sealed_by: None })
            .collect())
    }

    fn records(&mut self, digests: &[Digest]) -> Result<Vec<EncodedChunk>, ReplicateError> {
        if self.cat.is_none() {
            self.cat = Some(Catalog::load(self.s3, &self.layout)?);
        }
        let Some(cat) = self.cat.as_ref() else { return Ok(Vec::new()) };
        // By pack, in offset order; near records of a pack in one ranged GET.
        let mut by_pack: HashMap<u32, Vec<RecordAt>> = HashMap::new();
        for d in digests {
            if let Some(a) = cat.at.get(d) {
                by_pack.entry(a.pack).or_default().push(*a);
            }
        }
        let wanted: HashSet<&Digest> = digests.iter().collect();
        let mut out = Vec::new();
        for (pack, mut recs) in by_pack {
            recs.sort_by_key(|a| a.offset);
            let key = self.layout.pack(&cat.packs[pack as usize]);
            let mut i = 0;
            while i < recs.len() {
                let start = recs[i].offset;
                let mut end = start + u64::from(recs[i].len);
                let mut j = i + 1;
                while j < recs.len()
                    && recs[j].offset <= end + (1 << 20)
                    && recs[j].offset + u64::from(recs[j].len) - start <= 64 << 20
                {
                    end = end.max(recs[j].offset + u64::from(recs[j].len));
                    j += 1;
                }
                let bytes = self.s3.get_range(&key, start..end).map_err(offsite)?;
                let (records, _) = store::pack::split_records(&bytes).map_err(|what| {
                    ReplicateError::Refused(format!("pack object {key} is damaged at offset {start}: {what}"))
                })?;
                out.extend(records.into_iter().filter(|c| wanted.contains(&c.digest)));
                i = j;
            }
        }
        Ok(out)
    }
}

/// Deletes the index of point `spec` (`name@id` as the source named it) from the bucket; its
/// packs go at the next [`s3_gc`]. Refused by the server inside the point's lock.
pub fn s3_delete_point(s3: &BlockingS3, layout: &S3Layout, spec: &str) -> Result<(), ReplicateError> {
    let key = layout.point(spec)?;
    match s3.head(&key) {
        Err(e) if is_not_found(&e) => {
            Err(ReplicateError::Invalid(format!("the bucket holds no point {spec} under {}/", layout.base())))
        }
        Err(e) => Err(offsite(e)),
        Ok(_) => delete_object(s3, &key).map(|_| ()),
    }
}

/// Deletes `key` for good: its current version on a versioned bucket. Ok(false) when it was
/// gone already.
fn delete_object(s3: &BlockingS3, key: &str) -> Result<bool, ReplicateError> {
    let info = match s3.head(key) {
        Ok(i) => i,
        Err(e) if is_not_found(&e) => return Ok(false),
        Err(e) => return Err(offsite(e)),
    };
    match info.version.as_deref().filter(|v| *v != "null") {
        Some(v) => s3.delete_version(key, v),
        None => s3.delete(key),
    }
    .map(|_| true)
    .map_err(offsite)
}

/// What [`s3_gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3GcReport {
    pub points: u64,
    pub packs: u64,
    /// Unreferenced packs (with their indexes) deleted, and their bytes.
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    /// Unreferenced packs kept because their lock has not ended (deleted by a later GC).
    pub packs_locked: u64,
    /// Unreferenced packs kept because they are younger than the safety age.
    pub packs_young: u64,
}

/// Deletes the packs no point index references, older than `min_age` at `now`, whose lock
/// has ended. Must not run while a push to the same namespace runs.
pub fn s3_gc(
    s3: &BlockingS3,
    layout: &S3Layout,
    now: SystemTime,
    min_age: Duration,
) -> Result<S3GcReport, ReplicateError> {
    let points = point_indexes(s3, layout)?;
    let live: HashSet<&str> = points.iter().flat_map(|p| p.packs.iter().map(String::as_str)).collect();
    let mut report = S3GcReport { points: points.len() as u64, ..Default::default() };
    let objects = s3.list_all(&layout.packs()).map_err(offsite)?;
    // One entry per pack id: its pack object (if any) and index object (if any).
    let mut ids: HashMap<String, (Option<&::s3::ObjectInfo>, Option<&::s3::ObjectInfo>)> = HashMap::new();
    for o in &objects {
        let Some(rest) = o.key.strip_prefix(&layout.packs()) else { continue };
        if let Some(id) = rest.strip_suffix(".pack") {
            ids.entry(id.to_string()).or_default().0 = Some(o);
        } else if let Some(id) = rest.strip_suffix(".idx") {
            ids.entry(id.to_string()).or_default().1 = Some(o);
        }
    }
    report.packs = ids.values().filter(|(p, _)| p.is_some()).count() as u64;
    for (id, (pack, index)) in ids {
        if live.contains(id.as_str()) {
            continue;
        }
        let newest = pack.iter().chain(index.iter()).map(|o| o.last_modified).max().unwrap_or(UNIX_EPOCH);
        if now.duration_since(newest).unwrap_or_default() < min_age {
            report.packs_young += 1;
            continue;
        }
        let pack_key = layout.pack(&id);
        let locked = match s3.retention(&pack_key, None) {
            Ok(r) => r.is_some_and(|r| r.retain_until > now),
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(offsite(e)),
        };
        if locked {
            report.packs_locked += 1;
            continue;
        }
        // The index first: a pack without one is invisible, so a cut here leaves nothing
        // that a push could build on.
        delete_object(s3, &layout.pack_index(&id))?;
        if delete_object(s3, &pack_key)? {
            report.packs_deleted += 1;
            report.bytes_freed += pack.map(|o| o.size).unwrap_or(0);
        }
    }
    Ok(report)
}
