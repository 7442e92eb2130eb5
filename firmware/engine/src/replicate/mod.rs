//! Replication of restore points from this store to another one: deduplicated, tree-aware,
//! batched, resumable and verified on receipt.
//!
//! ## The exchange
//! The sender drives; the receiver ([`ReplicaTarget`]) answers three questions, whatever
//! carries them (a store in this process, or another appliance over HTTPS):
//! 1. **Is the point already there?** ([`ReplicaTarget::find`]) A point is known on the
//!    receiver by its [`PointOrigin`] (namespace, source store, `name@id`), so running a
//!    replication again after it committed sends nothing and makes no second copy.
//! 2. **What do you lack?** ([`ReplicaTarget::lacking`]) The sender offers each disk's
//!    index tree top down, one level at a time, every level in batches of at most
//!    [`ReplicateOptions::query_batch`] digests. A node the receiver holds is skipped with
//!    everything under it in one step (see the invariant below); only the children of lacking
//!    nodes are offered next. Data chunks are offered under lacking leaves only.
//! 3. **Take these.** ([`ReplicaTarget::put_records`]) The lacking records travel as the
//!    store holds them (still compressed, and encrypted where the store is), in batches of
//!    about [`ReplicateOptions::batch_bytes`], never one request per chunk. The receiver
//!    checks every record (its kind, its lengths, its content against its digest) before it
//!    writes any of the batch, and returns only when the batch is durable.
//! 4. **Publish it.** ([`ReplicaTarget::commit`]) The receiver checks that everything the
//!    point references is durable and commits it with the same durability order as a backup.
//!
//! ## The invariant that makes the tree skip and resume safe
//! On a receiver, *a tree node is durable only after every chunk under it is*. The sender
//! guarantees it by sending in post-order: all data chunks first, then the leaves, then each
//! level up, the root last; and a receiver makes a batch durable before it acknowledges it
//! (`BackupSession::flush`), in order. A backup builds its trees the same way. So a node the
//! receiver has stands for its whole subtree, and after a cut link or a crash of either side
//! the next run's questions find exactly what is durable: nothing durable is sent again, and
//! at most one unacknowledged batch is.
//!
//! ## Receiving without the key
//! A receiver keeps what it is sent in one of two ways ([`Keeping`]), chosen from the key
//! check value the sender declares (never the key itself):
//! - **Verified**: neither store is encrypted, or both hold the same key. Every record's
//!   content is checked against its id (and its tag) before it is written, as above.
//! - **Without the key**: the sender's store is encrypted under a key this receiver lacks
//!   (an offsite box that must not be able to read what it keeps). The receiver says so in
//!   its answer to [`ReplicaTarget::find`], and the sender then sends its index-tree nodes
//!   *opened*: a node holds only chunk ids, keyed under the sender's key, so it tells the
//!   receiver nothing of the content beyond which chunks repeat and which are zero, which
//!   the exchange shows anyway. Data chunks stay sealed. The receiver keeps both as
//!   *foreign* records (see `store::pack`): it checks their framing and checksum, a node's
//!   structure, and that data is sealed; it walks the opened nodes for its completeness
//!   check, its GC and its verify, which checks data by checksum. Foreign records are never
//!   deduplicated against by the receiver's own backups. The point restores on the receiver
//!   with the sender's recovery key (`StoreOptions::replica_keys`), which then checks every
//!   tag and id.
//!
//! ## Hostile or broken peers
//! A receiver refuses a batch with a record of a kind other than data or tree node, a
//! record whose payload does not decode to its length or does not match its digest, or more
//! than the batch limit; nothing of that batch is written. A commit whose point references a
//! chunk that is not durable is refused and names the first missing chunk, and the sender
//! then asks again what is lacking (a receiver's GC may have reclaimed chunks of an earlier,
//! unfinished attempt).

use std::collections::HashSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use store::{Digest, EncodedChunk, PointOrigin, RecordKind, RestorePoint, Store, StoreError};

use crate::{EngineError, ErrorKind, Progress};

pub mod pull;
pub mod s3;

/// Largest batch of records a receiver accepts in one [`ReplicaTarget::put_records`].
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most digests a receiver answers in one [`ReplicaTarget::lacking`].
pub const MAX_QUERY: usize = 8192;

/// Why a replication step failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The receiver refused what was sent (a bad record, a point with missing chunks): the
    /// text is the receiver's.
    #[error("the receiver refused it: {0}")]
    Refused(String),
    /// The receiver's commit found chunks missing; asking again what it lacks fixes it.
    #[error("the receiver lacks chunks the point references: {0}")]
    Incomplete(String),
    /// The link failed (a transport's own error, with its kind).
    #[error("{message}")]
    Link { message: String, kind: ErrorKind },
    /// An object store failed after its client's own retries (see the `s3` crate): never
    /// retried again here; a later run resumes.
    #[error("{message}")]
    Offsite { message: String, kind: ErrorKind },
    #[error("cancelled: the replication was stopped; what the receiver acknowledged is kept and is not sent again")]
    Cancelled,
    #[error("{0}")]
    Invalid(String),
}

impl ReplicateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplicateError::Store(e) => crate::store_error_kind(e),
            ReplicateError::Link { kind, .. } | ReplicateError::Offsite { kind, .. } => *kind,
            ReplicateError::Incomplete(_) => ErrorKind::Transient,
            ReplicateError::Cancelled => ErrorKind::Cancelled,
            ReplicateError::Refused(_) | ReplicateError::Invalid(_) => ErrorKind::Permanent,
        }
    }
}

impl From<ReplicateError> for EngineError {
    fn from(e: ReplicateError) -> EngineError {
        match e {
            ReplicateError::Store(e) => EngineError::Store(e),
            ReplicateError::Cancelled => EngineError::Cancelled,
            other => EngineError::Invalid(other.to_string()),
        }
    }
}

/// What a point is published as on the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// `name@id` on the receiver.
    pub point: String,
    /// It was there already (nothing was committed by this run).
    pub already_there: bool,
}

/// How a receiver keeps what a sender sends (see "Receiving without the key" above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeping {
    /// Every record's content is checked against its id before it is written.
    Verified,
    /// The sender's store is encrypted under a key the receiver lacks: its sealed data and
    /// opened tree nodes are kept as foreign records.
    WithoutKey,
}

impl Keeping {
    /// How `store` keeps records from a sender whose store key has the check value
    /// `sealed_by` (hex; `None`: the sender's store is not encrypted).
    pub fn for_sender(store: &Store, sealed_by: Option<&str>) -> Keeping {
        match (sealed_by, store.encryption()) {
            (None, _) => Keeping::Verified,
            (Some(theirs), Some(ours)) if theirs.eq_ignore_ascii_case(&ours.key_check) => Keeping::Verified,
            (Some(_), _) => Keeping::WithoutKey,
        }
    }
}

/// The check value of `store`'s key (hex), which a sender declares so that the receiver
/// knows whether it holds the same key; `None` for an unencrypted store.
pub fn sealed_by(store: &Store) -> Option<String> {
    store.encryption().map(|e| e.key_check.to_ascii_lowercase())
}

/// The receiving side of a replication.
pub trait ReplicaTarget {
    /// Tells the receiver the check value of the sender's store key ([`sealed_by`]), before
    /// [`ReplicaTarget::find`]; a receiver that decides nothing from it ignores it.
    fn introduce(&mut self, _sealed_by: Option<&str>) {}
    /// After [`ReplicaTarget::find`]: whether the receiver keeps this sender's records
    /// without its key ([`Keeping::WithoutKey`]), so tree nodes must travel opened.
    fn keeps_without_key(&self) -> bool {
        false
    }
    /// The point replicated from `origin`, if the receiver has committed it.
    fn find(&mut self, origin: &PointOrigin) -> Result<Option<String>, ReplicateError>;
    /// Which of `digests` (at most [`MAX_QUERY`]) the receiver lacks, in the order given.
    fn lacking(&mut self, digests: &[Digest]) -> Result<Vec<Digest>, ReplicateError>;
    /// Checks and stores `records` (at most [`MAX_BATCH_BYTES`] of payload); returns once
    /// they are durable, or, for a target that uploads in the background (S3), once
    /// accepted: then [`ReplicaTarget::barrier`] waits until they are durable.
    fn put_records(&mut self, records: &[EncodedChunk]) -> Result<(), ReplicateError>;
    /// Returns once every batch put so far is durable. The sender calls it after each group
    /// (the data, then each level of the tree), so a node never becomes durable before what
    /// it references.
    fn barrier(&mut self) -> Result<(), ReplicateError> {
        Ok(())
    }
    /// Publishes `point` (as the sender has it) with `origin` once everything it references is
    /// durable; [`ReplicateError::Incomplete`] otherwise.
    fn commit(&mut self, point: &RestorePoint, origin: &PointOrigin) -> Result<Delivered, ReplicateError>;
}

/// Settings of a replication.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// The sender's namespace on the receiver: 1-32 of `[a-z0-9-]`.
    pub namespace: String,
    /// Payload bytes per batch of records.
    pub batch_bytes: usize,
    /// Digests per "what do you lack" question.
    pub query_batch: usize,
    /// Bytes per second at most (records sent); `None`: as fast as the link goes. A limited
    /// transfer also sends batches of at most one second's worth (at least 1 MiB), so the
    /// pacing is smooth on slow links.
    pub max_bytes_per_s: Option<u64>,
}

impl ReplicateOptions {
    pub fn new(namespace: &str) -> ReplicateOptions {
        ReplicateOptions {
            namespace: namespace.into(),
            batch_bytes: 32 << 20,
            query_batch: 4096,
            max_bytes_per_s: None,
        }
    }
}

/// What a replication did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicateReport {
    /// The point replicated, `name@id` here.
    pub point: String,
    /// What it is on the receiver.
    pub delivered_as: String,
    /// The receiver had it already: nothing was sent.
    pub already_there: bool,
    /// Tree nodes offered, and how many the receiver lacked.
    pub nodes_offered: u64,
    pub nodes_sent: u64,
    /// Data chunks offered (under lacking leaves), and how many the receiver lacked.
    pub chunks_offered: u64,
    pub chunks_sent: u64,
    /// Stored bytes of the records sent (payloads, as the store holds them).
    pub bytes_sent: u64,
    /// Logical size of the point's disks.
    pub bytes_logical: u64,
    pub batches: u64,
    pub questions: u64,
    pub seconds: f64,
    /// The receiver keeps this point without the key (tree nodes were sent opened).
    #[serde(default)]
    pub without_key: bool,
}

/// Checks a namespace: 1-32 of `[a-z0-9-]`, not starting with '-'.
pub fn validate_namespace(ns: &str) -> Result<(), ReplicateError> {
    let ok = !ns.is_empty()
        && ns.len() <= 32
        && !ns.starts_with('-')
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReplicateError::Invalid(format!(
            "namespace {ns:?}: use 1-32 lower-case letters, digits or '-', not starting with '-'"
        )))
    }
}

/// The name a replicated point gets on the receiver: `<namespace>.<name>`, so that it never
/// mixes with the receiver's own points (nor with their retention).
pub fn replica_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// Replicates `point` of `store` to `target`.
pub fn replicate(
    store: &Store,
    point: &RestorePoint,
    target: &mut dyn ReplicaTarget,
    opts: &ReplicateOptions,
    progress: &dyn Progress,
) -> Result<ReplicateReport, ReplicateError> {
    validate_namespace(&opts.namespace)?;
    let started = Instant::now();
    let origin = PointOrigin {
        namespace: opts.namespace.clone(),
        store_id: store.store_id(),
        point: point.spec(),
        created_unix: point.created_unix,
        without_key: false,
    };
    let mut report = ReplicateReport {
        point: point.spec(),
        bytes_logical: point.disks.iter().map(|d| d.size).sum(),
        ..Default::default()
    };
    target.introduce(sealed_by(store).as_deref());
    if let Some(there) = retry(progress, |_| target.find(&origin))? {
        report.delivered_as = there;
        report.already_there = true;
        return Ok(report);
    }
    let open_trees = target.keeps_without_key() && store.keyring().is_encrypted();
    report.without_key = open_trees;
    // A commit can find chunks gone that an earlier run delivered (the receiver's GC took
    // them while no point referenced them): ask again, once or twice.
    for attempt in 0..3 {
        let plan = plan(store, point, target, opts, &mut report, progress)?;
        send(store, &plan, open_trees, target, opts, &mut report, progress)?;
        match retry(progress, |_| target.commit(point, &origin)) {
            Ok(d) => {
                report.delivered_as = d.point;
                report.already_there = d.already_there;
                report.seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
            Err(ReplicateError::Incomplete(_)) if attempt < 2 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ReplicateError::Invalid("the receiver kept lacking chunks after three attempts".into()))
}

/// What the receiver lacks, in the order it must be sent: data first, then tree nodes from
/// the leaves up (post-order by level).
struct Plan {
    data: Vec<Digest>,
    /// Per level, leaves (level 0) first.
    nodes: Vec<Vec<Digest>>,
}

/// The one retry helper of this layer: `op` again after a transient failure, at most
/// [`RETRIES`] times more, waiting 0.2, 0.4, 0.8, 1.6 s. A permanent failure, a cancel and
/// the last transient failure are returned; the caller (a task) may run the whole replication
/// again later, which resumes where it stopped.
fn retry<T>(
    progress: &dyn Progress,
    mut op: impl FnMut(u32) -> Result<T, ReplicateError>,
) -> Result<T, ReplicateError> {
    let mut attempt = 0;
    loop {
        check_cancel(progress)?;
        match op(attempt) {
            Err(e)
                if e.kind() == ErrorKind::Transient
                    && attempt < RETRIES
                    && !matches!(e, ReplicateError::Offsite { .. }) =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
            }
            other => return other,
        }
    }
}

/// How many times a transient failure of one exchange is retried.
const RETRIES: u32 = 4;

fn check_cancel(progress: &dyn Progress) -> Result<(), ReplicateError> {
    if progress.cancelled() {
        Err(ReplicateError::Cancelled)
    } else {
        Ok(())
    }
}

/// Asks the receiver, batch by batch, which of `digests` it lacks.
fn ask(
    target: &mut dyn ReplicaTarget,
    digests: &[Digest],
    opts: &ReplicateOptions,
    report: &mut ReplicateReport,
    progress: &dyn Progress,
) -> Result<Vec<Digest>, ReplicateError> {
    let mut out = Vec::new();
    for batch in digests.chunks(opts.query_batch.clamp(1, MAX_QUERY)) {
        report.questions += 1;
        let lacking = retry(progress, |_| target.lacking(batch))?;
        // A receiver may only name digests it was asked about.
        let asked: HashSet<&Digest> = batch.iter().collect();
        if let Some(bad) = lacking.iter().find(|d| !asked.contains(d)) {
            return Err(ReplicateError::Refused(format!(
                "it claims to lack chunk {bad}, which it was not asked about"
            )));
        }
        out.extend(lacking);
    }
    Ok(out)
}

fn plan(
    store: &Store,
    point: &RestorePoint,
    target: &mut dyn ReplicaTarget,
    opts: &ReplicateOptions,
    report: &mut ReplicateReport,
    progress: &dyn Progress,
) -> Result<Plan, ReplicateError> {
    let mut plan = Plan { data: Vec::new(), nodes: Vec::new() };
    let mut seen: HashSet<Digest> = HashSet::new();
    let (mut scratch, mut raw) = (Vec::new(), Vec::new());
    let mut data_offer: Vec<Digest> = Vec::new();
    for disk in &point.disks {
        if disk.height == 0 {
            continue;
        }
        // Level by level from the root: the nodes the receiver lacks, and their children.
        let mut level = disk.height - 1;
        let mut frontier = vec![disk.root];
        loop {
            frontier.retain(|d| seen.insert(*d));
            report.nodes_offered += frontier.len() as u64;
            let lacking = ask(target, &frontier, opts, report, progress)?;
            let mut children = Vec::new();
            for node in &lacking {
                store.read_chunk(node, &mut scratch, &mut raw)?;
                let entries = store::tree::decode_node(&raw, level, node)?;
                children.extend(entries.into_iter().filter(|d| !d.is_zero()));
            }
            while plan.nodes.len() <= level as usize {
                plan.nodes.push(Vec::new());
            }
            plan.nodes[level as usize].extend(lacking);
            if level == 0 {
                data_offer.extend(children.into_iter().filter(|d| seen.insert(*d)));
                break;
            }
            frontier = children;
            level -= 1;
        }
    }
    for f in &point.files {
        if seen.insert(f.digest) {
            data_offer.push(f.digest);
        }
    }
    report.chunks_offered += data_offer.len() as u64;
    plan.data = ask(target, &data_offer, opts, report, progress)?;
    Ok(plan)
}

fn send(
    store: &Store,
    plan: &Plan,
    open_trees: bool,
    target: &mut dyn ReplicaTarget,
    opts: &ReplicateOptions,
    report: &mut ReplicateReport,
    progress: &dyn Progress,
) -> Result<(), ReplicateError> {
    let mut total = 0u64;
    for d in plan.data.iter().chain(plan.nodes.iter().flatten()) {
        total += store.locate(d)?.map(|l| u64::from(l.stored_len)).unwrap_or(0);
    }
    progress.start("replicate", total);
    let limiter = opts.max_bytes_per_s.filter(|r| *r > 0).map(blocksource::RateLimiter::new);
    let mut limit = opts.batch_bytes.clamp(1, MAX_BATCH_BYTES);
    if let Some(l) = &limiter {
        limit = limit.min((l.bytes_per_s() as usize).max(1 << 20));
    }
    let payload = |batch: &[EncodedChunk]| batch.iter().map(|c| c.payload.len()).sum::<usize>();
    let flush = |target: &mut dyn ReplicaTarget,
                 batch: &mut Vec<EncodedChunk>,
                 report: &mut ReplicateReport|
     -> Result<(), ReplicateError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(l) = &limiter {
            l.acquire(payload(batch) as u64);
        }
        // A cut link keeps the records the receiver got whole: before sending again, ask
        // what is still lacking and send only that.
        retry(progress, |attempt| {
            if attempt > 0 {
                let digests: Vec<Digest> = batch.iter().map(|c| c.digest).collect();
                let lacking: HashSet<Digest> = target.lacking(&digests)?.into_iter().collect();
                batch.retain(|c| lacking.contains(&c.digest));
                if batch.is_empty() {
                    return Ok(());
                }
            }
            target.put_records(batch)
        })?;
        report.batches += 1;
        for c in batch.iter() {
            match c.kind {
                RecordKind::Tree => report.nodes_sent += 1,
                _ => report.chunks_sent += 1,
            }
        }
        let bytes = payload(batch) as u64;
        report.bytes_sent += bytes;
        progress.advance(bytes);
        batch.clear();
        Ok(())
    };
    // Data first, then the nodes leaves-up: see the invariant in the module docs. A level is
    // sent completely before the level above it starts, so a batch boundary never puts a node
    // before a chunk it references.
    let mut batch: Vec<EncodedChunk> = Vec::new();
    let mut scratch = Vec::new();
    for group in std::iter::once(&plan.data).chain(plan.nodes.iter()) {
        for d in group {
            let c = record_to_send(store, d, open_trees, &mut scratch)?;
            if payload(&batch) + c.payload.len() > limit && !batch.is_empty() {
                flush(&mut *target, &mut batch, report)?;
            }
            batch.push(c);
        }
        flush(&mut *target, &mut batch, report)?;
        retry(progress, |_| target.barrier())?;
    }
    progress.finish();
    Ok(())
}

/// Record `digest` of `store` as it travels: as the store holds it, except that with
/// `open_trees` an index-tree node of an encrypted store goes opened (for a receiver that
/// keeps it without the key; see the module docs).
pub fn record_to_send(
    store: &Store,
    digest: &Digest,
    open_trees: bool,
    scratch: &mut Vec<u8>,
) -> Result<EncodedChunk, StoreError> {
    let c = store.read_encoded(digest, scratch)?;
    if !open_trees || c.kind != RecordKind::Tree || c.cipher == store::Cipher::None {
        return Ok(c);
    }
    let mut raw = Vec::new();
    store.read_chunk(digest, scratch, &mut raw)?;
    Ok(EncodedChunk::plain(*digest, RecordKind::Tree, store::Codec::Raw, raw.len() as u32, raw))
}

/// A receiver in this process: another store.
pub struct StoreTarget<'a> {
    store: &'a Store,
    keeping: Keeping,
}

impl std::fmt::Debug for StoreTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTarget").field("store", &self.store.root()).finish()
    }
}

impl<'a> StoreTarget<'a> {
    pub fn new(store: &'a Store) -> StoreTarget<'a> {
        StoreTarget { store, keeping: Keeping::Verified }
    }

    /// A receiver keeping what it gets as `keeping` says (the receiving web server decides
    /// it per request from what the sender declares).
    pub fn keeping(store: &'a Store, keeping: Keeping) -> StoreTarget<'a> {
        StoreTarget { store, keeping }
    }
}

/// Checks one record as a receiver must before writing it: its kind, and its content
/// against its digest under the receiving store's `keys` (a sealed record is opened, so its
/// tag is checked too). `raw` is scratch for the decoded content. The text says what is wrong.
pub fn check_record(keys: &store::Keyring, c: &EncodedChunk, raw: &mut Vec<u8>) -> Result<(), ReplicateError> {
    if !matches!(c.kind, RecordKind::Data | RecordKind::Tree) {
        return Err(ReplicateError::Refused(format!(
            "record {} is of kind {:?}; only data chunks and index-tree nodes are replicated",
            c.digest, c.kind
        )));
    }
    if c.digest.is_zero() {
        return Err(ReplicateError::Refused("a record has the all-zero digest, which is never stored".into()));
    }
    if c.cipher != store::Cipher::None && !keys.is_encrypted() {
        return Err(ReplicateError::Refused(format!(
            "record {} is encrypted and this store has no key: replicating an encrypted store needs a \
             receiving store with the same key (receiving without the key is not supported yet)",
            c.digest
        )));
    }
    if c.cipher == store::Cipher::None && keys.is_encrypted() {
        return Err(ReplicateError::Refused(format!(
            "record {} is not encrypted and this store is: an unencrypted store replicates into an unencrypted \
             store only",
            c.digest
        )));
    }
    let bad = |e: String| ReplicateError::Refused(format!("record {}: {e}", c.digest));
    let header = store::pack::RecordHeader { foreign: false, ..c.header() };
    store::pack::decode_record(keys, &header, &c.payload, raw, store::pack::ReadCheck::Digest).map_err(bad)?;
    if c.kind == RecordKind::Tree {
        let level = raw.get(4).copied().unwrap_or(u8::MAX);
        store::tree::decode_node(raw, level, &c.digest).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// Checks one record as a receiver keeping it without the key must ([`Keeping::WithoutKey`]):
/// its kind; a data chunk must be sealed (the sender's store is encrypted, so its data never
/// travels in the clear); a tree node must come opened and be a well-formed node, which
/// `raw` receives. Its id cannot be checked here (it is keyed under the sender's key).
pub fn check_foreign_record(c: &EncodedChunk, raw: &mut Vec<u8>) -> Result<(), ReplicateError> {
    if c.digest.is_zero() {
        return Err(ReplicateError::Refused("a record has the all-zero digest, which is never stored".into()));
    }
    let bad = |e: String| ReplicateError::Refused(format!("record {}: {e}", c.digest));
    match c.kind {
        RecordKind::Data if c.cipher == store::Cipher::None => {
            Err(bad("a data chunk from an encrypted store arrived unencrypted; its sender must send records as its \
             store holds them"
                .into()))
        }
        RecordKind::Data if c.payload.len() < store::crypto::SEAL_OVERHEAD => {
            Err(bad(format!("a sealed record of {} bytes is shorter than its salt and tag", c.payload.len())))
        }
        RecordKind::Data => Ok(()),
        RecordKind::Tree if c.cipher != store::Cipher::None => Err(bad(
            "an index-tree node arrived sealed; a receiver without the key needs the nodes opened (update the \
             sending appliance)"
                .into(),
        )),
        RecordKind::Tree => {
            store::pack::decompress_payload(c.codec, &c.payload, c.raw_len, raw).map_err(bad)?;
            let level = raw.get(4).copied().unwrap_or(u8::MAX);
            store::tree::decode_node(raw, level, &c.digest).map_err(|e| bad(e.to_string()))?;
            Ok(())
        }
        other => Err(bad(format!("it is of kind {other:?}; only data chunks and index-tree nodes are replicated"))),
    }
}

/// Checks a received record as `keeping` says and marks it as it is to be stored: foreign
/// when kept without the key, else not (whatever the sender's header said).
pub fn accept_record(
    keys: &store::Keyring,
    keeping: Keeping,
    mut c: EncodedChunk,
    raw: &mut Vec<u8>,
) -> Result<EncodedChunk, ReplicateError> {
    match keeping {
        Keeping::Verified => check_record(keys, &c, raw)?,
        Keeping::WithoutKey => check_foreign_record(&c, raw)?,
    }
    c.foreign = keeping == Keeping::WithoutKey;
    Ok(c)
}

/// Calls `visit` once for every record `point` references (its files, and each disk's tree
/// nodes and data chunks), reading the trees from `store`. `visit` answers whether to go on
/// below a node (a node that is not there has nothing to read below it).
pub fn for_each_reference<E: From<StoreError>>(
    store: &Store,
    point: &RestorePoint,
    visit: &mut dyn FnMut(&Digest) -> Result<bool, E>,
) -> Result<(), E> {
    let mut seen = HashSet::new();
    for f in &point.files {
        if seen.insert(f.digest) {
            visit(&f.digest)?;
        }
    }
    let (mut scratch, mut raw) = (Vec::new(), Vec::new());
    for disk in &point.disks {
        if disk.height == 0 {
            continue;
        }
        let mut frontier = vec![disk.root];
        let mut level = disk.height - 1;
        loop {
            let mut children = Vec::new();
            for node in frontier {
                if !seen.insert(node) || !visit(&node)? {
                    continue;
                }
                store.read_chunk(&node, &mut scratch, &mut raw)?;
                children.extend(store::tree::decode_node(&raw, level, &node)?.into_iter().filter(|d| !d.is_zero()));
            }
            if level == 0 {
                for d in children {
                    if seen.insert(d) {
                        visit(&d)?;
                    }
                }
                break;
            }
            frontier = children;
            level -= 1;
        }
    }
    Ok(())
}

/// Checks that everything `point` references is in `store` (walking each disk's tree), so a
/// point is published only complete. Returns the missing chunks (at most `limit`). A point
/// kept without the key may reference foreign records; any other only the store's own.
pub fn missing_references(
    store: &Store,
    point: &RestorePoint,
    keeping: Keeping,
    limit: usize,
) -> Result<Vec<Digest>, StoreError> {
    let mut missing = Vec::new();
    for_each_reference(store, point, &mut |d| -> Result<bool, StoreError> {
        let there = match keeping {
            Keeping::Verified => store.contains(d)?,
            Keeping::WithoutKey => store.holds(d)?,
        };
        if there {
            return Ok(true);
        }
        if missing.len() < limit {
            missing.push(*d);
        }
        Ok(false)
    })?;
    Ok(missing)
}

/// Commits a replicated point into `store` under its namespace, once complete; a point from
/// the same origin that is already there is returned instead.
pub fn receive_commit(
    store: &Store,
    point: &RestorePoint,
    origin: &PointOrigin,
    keeping: Keeping,
) -> Result<Delivered, ReplicateError> {
    validate_namespace(&origin.namespace)?;
    if let Some(p) = store.find_origin(origin)? {
        return Ok(Delivered { point: p.spec(), already_there: true });
    }
    let missing = missing_references(store, point, keeping, 1000)?;
    if let Some(first) = missing.first() {
        return Err(ReplicateError::Incomplete(format!("lacks chunk {first} and {} more", missing.len() - 1)));
    }
    let mut session = store.begin_backup()?;
    for f in &point.files {
        session.add_file_record(f.clone())?;
    }
    session.set_origin(PointOrigin { without_key: keeping == Keeping::WithoutKey, ..origin.clone() });
    let name = replica_name(&origin.namespace, &point.name);
    let stats = store::PointStats { bytes_logical: point.stats.bytes_logical, ..Default::default() };
    let p = session.commit(&name, point.disks.clone(), stats)?;
    Ok(Delivered { point: p.spec(), already_there: false })
}

/// Which of `digests` `store` lacks, for a sender whose records it keeps as `keeping` says.
pub fn lacking_in(store: &Store, keeping: Keeping, digests: &[Digest]) -> Result<Vec<Digest>, ReplicateError> {
    let mut out = Vec::new();
    for d in digests {
        let there = match keeping {
            Keeping::Verified => store.contains(d)?,
            Keeping::WithoutKey => store.holds(d)?,
        };
        if !there {
            out.push(*d);
        }
    }
    Ok(out)
}

impl ReplicaTarget for StoreTarget<'_> {
    fn introduce(&mut self, sealed_by: Option<&str>) {
        self.keeping = Keeping::for_sender(self.store, sealed_by);
    }

    fn keeps_without_key(&self) -> bool {
        self.keeping == Keeping::WithoutKey
    }

    fn find(&mut self, origin: &PointOrigin) -> Result<Option<String>, ReplicateError> {
        Ok(self.store.find_origin(origin)?.map(|p| p.spec()))
    }

    fn lacking(&mut self, digests: &[Digest]) -> Result<Vec<Digest>, ReplicateError> {
        lacking_in(self.store, self.keeping, digests)
    }

    fn put_records(&mut self, records: &[EncodedChunk]) -> Result<(), ReplicateError> {
        // The receiving path of the web server, with the whole batch as one piece.
        let mut piece = Some(store::pack::join_records(records));
        receive_stream(self.store, self.keeping, &mut || piece.take().ok_or(StreamEnd::Complete)).map(|_| ())
    }

    fn commit(&mut self, point: &RestorePoint, origin: &PointOrigin) -> Result<Delivered, ReplicateError> {
        receive_commit(self.store, point, origin, self.keeping)
    }
}

/// The media type of a batch of records on the wire.
pub const BATCH_MEDIA_TYPE: &str = "application/vnd.rackvault.records";

/// The JSON bodies of the replication routes (`/api/v1/replica/...`), shared by the sender
/// ([`HttpTarget`]) and the receiving web server.
pub mod wire {
    use serde::{Deserialize, Serialize};
    use store::{PointOrigin, RestorePoint};

    /// `sealed_by` in every request: the check value of the sender's store key (hex),
    /// absent for an unencrypted store (see `Keeping`).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct FindRequest {
        pub origin: PointOrigin,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sealed_by: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct FindAnswer {
        pub point: Option<String>,
        /// The receiver keeps this sender's records without its key: send tree nodes opened.
        #[serde(default)]
        pub without_key: bool,
    }

    /// Digests as hex.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Digests {
        pub digests: Vec<String>,
        /// In a question to a receiver: the sender's key check value (see [`FindRequest`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sealed_by: Option<String>,
        /// In a pull for records: send index-tree nodes opened (the puller keeps them without
        /// the key).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub open_trees: bool,
    }

    impl Digests {
        pub fn answer(digests: Vec<String>) -> Digests {
            Digests { digests, sealed_by: None, open_trees: false }
        }
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct CommitRequest {
        pub point: RestorePoint,
        pub origin: PointOrigin,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sealed_by: Option<String>,
    }

    /// The query parameter of the records route that carries the sender's key check value.
    pub const SEALED_BY_PARAM: &str = "sealed_by";

    /// The error `code` of a commit refused (409) because the point is incomplete on the
    /// receiver; the sender then asks again what is lacking.
    pub const INCOMPLETE: &str = "incomplete";

    /// What a source appliance offers to pull (`GET /api/v1/replica/source/points`).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SourcePoints {
        pub points: Vec<super::pull::RemotePoint>,
    }
}

/// Parses digests sent as hex.
pub fn parse_digests(hex: &[String]) -> Result<Vec<Digest>, ReplicateError> {
    if hex.len() > MAX_QUERY {
        return Err(ReplicateError::Refused(format!("{} digests in one question; at most {MAX_QUERY}", hex.len())));
    }
    hex.iter()
        .map(|h| Digest::from_hex(h).ok_or_else(|| ReplicateError::Refused(format!("{h:?} is not a digest"))))
        .collect()
}

fn to_hex(ds: &[Digest]) -> Vec<String> {
    ds.iter().map(Digest::to_hex).collect()
}

/// A receiver on another appliance, reached over HTTPS with a replication token.
#[derive(Debug)]
pub struct HttpTarget {
    client: pinhttp::Client,
    sealed_by: Option<String>,
    without_key: bool,
}

impl HttpTarget {
    pub fn new(client: pinhttp::Client) -> HttpTarget {
        HttpTarget { client, sealed_by: None, without_key: false }
    }

    fn call(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<pinhttp::Response, ReplicateError> {
        http_call(&mut self.client, "POST", path, content_type, body)
    }

    fn json<T: Serialize, A: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        body: &T,
    ) -> Result<A, ReplicateError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| ReplicateError::Invalid(format!("encoding a request: {e}")))?;
        let r = self.call(path, "application/json", &bytes)?;
        serde_json::from_slice(&r.body).map_err(|e| ReplicateError::Link {
            message: format!("{} answered {path} with something unexpected: {e}", self.client.addr()),
            kind: ErrorKind::Permanent,
        })
    }
}

impl ReplicaTarget for HttpTarget {
    fn introduce(&mut self, sealed_by: Option<&str>) {
        self.sealed_by = sealed_by.map(str::to_string);
    }

    fn keeps_without_key(&self) -> bool {
        self.without_key
    }

    fn find(&mut self, origin: &PointOrigin) -> Result<Option<String>, ReplicateError> {
        let req = wire::FindRequest { origin: origin.clone(), sealed_by: self.sealed_by.clone() };
        let a: wire::FindAnswer = self.json("/api/v1/replica/find", &req)?;
        self.without_key = a.without_key;
        Ok(a.point)
    }

    fn lacking(&mut self, digests: &[Digest]) -> Result<Vec<Digest>, ReplicateError> {
        let req = wire::Digests { digests: to_hex(digests), sealed_by: self.sealed_by.clone(), open_trees: false };
        let a: wire::Digests = self.json("/api/v1/replica/lacking", &req)?;
        parse_digests(&a.digests)
    }

    fn put_records(&mut self, records: &[EncodedChunk]) -> Result<(), ReplicateError> {
        let path = match &self.sealed_by {
            Some(check) => format!("/api/v1/replica/records?{}={check}", wire::SEALED_BY_PARAM),
            None => "/api/v1/replica/records".to_string(),
        };
        self.call(&path, BATCH_MEDIA_TYPE, &store::pack::join_records(records))?;
        Ok(())
    }

    fn commit(&mut self, point: &RestorePoint, origin: &PointOrigin) -> Result<Delivered, ReplicateError> {
        let req =
            wire::CommitRequest { point: point.clone(), origin: origin.clone(), sealed_by: self.sealed_by.clone() };
        self.json("/api/v1/replica/commit", &req)
    }
}

/// One exchange with another appliance, its refusals mapped to what the sender does next.
/// No retries here: `replicate`'s (and `pull`'s) one retry helper retries every exchange, and
/// asks what is still lacking before sending a batch again.
pub(crate) fn http_call(
    client: &mut pinhttp::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<pinhttp::Response, ReplicateError> {
    let r = client.request(method, path, content_type, body).map_err(|e| ReplicateError::Link {
        kind: if e.is_transient() { ErrorKind::Transient } else { ErrorKind::Permanent },
        message: e.to_string(),
    })?;
    if (200..300).contains(&r.status) {
        return Ok(r);
    }
    #[derive(Deserialize)]
    struct ApiError {
        error: String,
        #[serde(default)]
        code: String,
    }
    let e: Option<ApiError> = serde_json::from_slice(&r.body).ok();
    let (msg, code) = e.map(|e| (e.error, e.code)).unwrap_or_else(|| (format!("HTTP {}", r.status), String::new()));
    let addr = client.addr().to_string();
    Err(match r.status {
        409 if code == wire::INCOMPLETE => ReplicateError::Incomplete(msg),
        401 | 403 => ReplicateError::Refused(format!(
            "{addr} refused the token ({msg}); make a token with the right role on the remote (replication to \
             push there, pull to pull from it) and update the remote here"
        )),
        429 | 500..=599 => ReplicateError::Link { message: format!("{addr}: {msg}"), kind: ErrorKind::Transient },
        _ => ReplicateError::Refused(format!("{addr}: {msg}")),
    })
}

/// How a streamed batch ended, as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every byte arrived.
    Complete,
    /// The link broke (or the sender stopped) before the end: the reason.
    Cut(String),
}

/// What [`receive_stream`] kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Received {
    /// Records checked and made durable.
    pub records: u64,
    /// Bytes of a record the cut left incomplete (dropped).
    pub dropped_bytes: u64,
}

/// Receives a batch as it streams in, `next` giving its pieces: `Some(bytes)`, then `None`
/// with how it ended. Each record is checked as soon as it is complete and written to a
/// session. A complete batch, and the complete records before a cut, are made durable
/// (a cut link costs at most the record it cut, which the sender's next question finds
/// lacking); a malformed or wrong record refuses the whole batch, and nothing of it is kept.
pub fn receive_stream(
    store: &Store,
    keeping: Keeping,
    next: &mut dyn FnMut() -> Result<Vec<u8>, StreamEnd>,
) -> Result<Received, ReplicateError> {
    let mut session = store.begin_backup()?;
    let mut buf: Vec<u8> = Vec::new();
    let mut received = Received::default();
    let mut payload_total = 0usize;
    let mut raw = Vec::new();
    let end = loop {
        let piece = match next() {
            Ok(p) => p,
            Err(end) => break end,
        };
        buf.extend_from_slice(&piece);
        let (records, used) = store::pack::split_records(&buf).map_err(|what| {
            ReplicateError::Refused(format!("the batch is malformed after {} records: {what}", received.records))
        })?;
        for c in records {
            payload_total += c.payload.len();
            if payload_total > MAX_BATCH_BYTES {
                return Err(ReplicateError::Refused(format!(
                    "more than {MAX_BATCH_BYTES} bytes of records in one batch; send smaller batches"
                )));
            }
            let c = accept_record(store.keyring(), keeping, c, &mut raw)?;
            session.insert(&c)?;
            received.records += 1;
        }
        buf.drain(..used);
    };
    received.dropped_bytes = buf.len() as u64;
    // Complete or cut: what was checked is made durable. (A refused batch returned above,
    // dropping the session: its unsealed pack is never indexed and is removed at next open.)
    session.flush()?;
    match end {
        StreamEnd::Complete if buf.is_empty() => Ok(received),
        StreamEnd::Complete => Err(ReplicateError::Refused(format!(
            "the batch ends inside a record ({} bytes left over); {} complete records were kept",
            buf.len(),
            received.records
        ))),
        StreamEnd::Cut(why) => Err(ReplicateError::Link {
            message: format!(
                "the batch was cut off ({why}); the {} complete records before the cut were kept",
                received.records
            ),
            kind: ErrorKind::Transient,
        }),
    }
}
