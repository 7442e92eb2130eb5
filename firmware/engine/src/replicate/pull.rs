//! Pulling a replicated point into this store: restore from a remote copy, and disaster
//! recovery onto a new appliance.
//!
//! The puller drives; the source ([`ReplicaSource`]) only lists its points and hands out
//! records by digest (an S3 bucket, see [`super::s3::S3Source`]). Everything it hands out
//! is checked here as a receiver checks a pushed record ([`super::check_record`]): its
//! framing, its kind, its content against its digest under this store's key. A source can
//! make a pull fail, never put a wrong record in the store.
//!
//! ## Order, and why a pull resumes
//! The same invariant as a push (see the parent module): a tree node becomes durable here
//! only after every chunk under it. The puller reads the lacking nodes top down (holding
//! them in memory: about 1/8000 of the disk's size), then fetches and writes the lacking
//! data chunks batch by batch, each batch durable before the next, then writes the held
//! nodes from the leaves up, and commits the point last. After a cut or a crash the next
//! pull finds what is durable by the same top-down questions: a node present stands for its
//! whole subtree, and a data chunk written is not fetched again.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use store::{Digest, EncodedChunk, PointOrigin, RestorePoint, Store};

use super::{
    check_cancel, receive_commit, retry, Keeping, ReplicaTarget, ReplicateError, StoreTarget, MAX_BATCH_BYTES,
};
use crate::Progress;

/// A point a source holds: as its own store had it, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemotePoint {
    pub point: RestorePoint,
    pub origin: PointOrigin,
    /// The check value of the source store's key (hex), when it is encrypted: a puller that
    /// does not hold that key keeps the point without it (see `Keeping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_by: Option<String>,
}

impl RemotePoint {
    /// `name@id` as the source appliance named it.
    pub fn spec(&self) -> String {
        self.origin.point.clone()
    }
}

/// Where a pull reads from.
pub trait ReplicaSource {
    /// The points the source holds, oldest first.
    fn points(&mut self) -> Result<Vec<RemotePoint>, ReplicateError>;
    /// The records `digests` name (at most [`PULL_GROUP`] at a time), in any order. A
    /// digest the source does not have is left out; the puller names it.
    fn records(&mut self, digests: &[Digest]) -> Result<Vec<EncodedChunk>, ReplicateError>;
    /// Hand out index-tree nodes opened from now on (for a puller that keeps the point
    /// without the key). A source that cannot ignores it; the puller then refuses the
    /// sealed nodes it gets.
    fn open_trees(&mut self, _open: bool) {}
}

/// Digests asked of a source at a time: with the default 256 KiB chunks, about 32 MiB of
/// records, the size of one pushed batch (one pack object on S3).
pub const PULL_GROUP: usize = 128;

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PullReport {
    /// The point as the source named it.
    pub point: String,
    /// What it is in this store.
    pub delivered_as: String,
    /// This store had it already: nothing was fetched.
    pub already_there: bool,
    pub nodes_fetched: u64,
    pub chunks_fetched: u64,
    /// Stored bytes of the records fetched (as the source holds them).
    pub bytes_fetched: u64,
    pub bytes_logical: u64,
    pub requests: u64,
    pub seconds: f64,
}

/// Finds `spec` (`name@id` as the source named it, or `name` for its newest point) among
/// the source's points.
pub fn find_remote(points: &[RemotePoint], spec: &str) -> Result<RemotePoint, ReplicateError> {
    let found = match spec.rsplit_once('@') {
        Some(_) => points.iter().find(|p| p.origin.point == spec),
        None => points.iter().filter(|p| p.point.name == spec).max_by_key(|p| (p.point.created_unix, p.point.id)),
    };
    found.cloned().ok_or_else(|| {
        let names: Vec<String> = points.iter().map(RemotePoint::spec).collect();
        ReplicateError::Invalid(format!(
            "the remote holds no point {spec}; it holds {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ))
    })
}

/// Pulls `rp` from `source` into `store`, checked record by record, and commits it under its
/// namespace (`<namespace>.<name>`), or finds it committed already.
pub fn pull(
    source: &mut dyn ReplicaSource,
    store: &Store,
    rp: &RemotePoint,
    progress: &dyn Progress,
) -> Result<PullReport, ReplicateError> {
    let started = Instant::now();
    let mut report = PullReport {
        point: rp.spec(),
        bytes_logical: rp.point.disks.iter().map(|d| d.size).sum(),
        ..Default::default()
    };
    if let Some(p) = store.find_origin(&rp.origin)? {
        report.delivered_as = p.spec();
        report.already_there = true;
        return Ok(report);
    }
    let keeping = Keeping::for_sender(store, rp.sealed_by.as_deref());
    source.open_trees(keeping == Keeping::WithoutKey);
    let mut fetch = |digests: &[Digest], report: &mut PullReport| -> Result<Vec<EncodedChunk>, ReplicateError> {
        let mut out = Vec::with_capacity(digests.len());
        for group in digests.chunks(PULL_GROUP) {
            // A source may answer part of a group (its answer size is bounded): ask again for
            // the rest, as long as each answer brings something.
            let mut by: HashMap<Digest, EncodedChunk> = HashMap::new();
            let mut asked: Vec<Digest> = group.to_vec();
            while !asked.is_empty() {
                check_cancel(progress)?;
                report.requests += 1;
                let wanted: HashSet<&Digest> = asked.iter().collect();
                let got: Vec<EncodedChunk> = retry(progress, |_| source.records(&asked))?
                    .into_iter()
                    .filter(|c| wanted.contains(&c.digest))
                    .collect();
                if got.is_empty() {
                    return Err(ReplicateError::Refused(format!(
                        "the remote copy lacks chunk {}, which point {} references: that copy is damaged; \
                         pull another point or another copy",
                        asked[0],
                        rp.spec()
                    )));
                }
                by.extend(got.into_iter().map(|c| (c.digest, c)));
                asked.retain(|d| !by.contains_key(d));
            }
            for d in group {
                let Some(c) = by.remove(d) else { continue };
                report.bytes_fetched += c.payload.len() as u64;
                progress.advance(c.payload.len() as u64);
                out.push(c);
            }
        }
        Ok(out)
    };
    let mut local = StoreTarget::keeping(store, keeping);
    progress.start("pull", 0);

    // Top down: the lacking nodes (held), and the data chunks under lacking leaves.
    let mut held: Vec<Vec<EncodedChunk>> = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut data: Vec<Digest> = Vec::new();
    let mut raw = Vec::new();
    for disk in &rp.point.disks {
        if disk.height == 0 {
            continue;
        }
        let mut level = disk.height - 1;
        let mut frontier = vec![disk.root];
        loop {
            frontier.retain(|d| seen.insert(*d));
            let lacking = local.lacking(&frontier)?;
            let nodes = fetch(&lacking, &mut report)?;
            let mut children = Vec::new();
            for c in &nodes {
                // Checked now, not only when written: the walk trusts what it decodes.
                match keeping {
                    Keeping::Verified => super::check_record(store.keyring(), c, &mut raw)?,
                    Keeping::WithoutKey => super::check_foreign_record(c, &mut raw)?,
                }
                children.extend(store::tree::decode_node(&raw, level, &c.digest)?.into_iter().filter(|d| !d.is_zero()));
            }
            report.nodes_fetched += nodes.len() as u64;
            while held.len() <= level as usize {
                held.push(Vec::new());
            }
            held[level as usize].extend(nodes);
            if level == 0 {
                data.extend(children.into_iter().filter(|d| seen.insert(*d)));
                break;
            }
            frontier = children;
            level -= 1;
        }
    }
    data.extend(rp.point.files.iter().map(|f| f.digest).filter(|d| seen.insert(*d)));
    let data = local.lacking(&data)?;

    // Data first, durable batch by batch; then the nodes leaves up.
    for group in data.chunks(PULL_GROUP) {
        let records = fetch(group, &mut report)?;
        report.chunks_fetched += records.len() as u64;
        put_all(&mut local, &records)?;
    }
    for level in &held {
        put_all(&mut local, level)?;
    }
    let d = receive_commit(store, &rp.point, &rp.origin, keeping)?;
    report.delivered_as = d.point;
    report.already_there = d.already_there;
    report.seconds = started.elapsed().as_secs_f64();
    progress.finish();
    Ok(report)
}

/// Writes `records` in batches the receiving path takes, each durable before the next.
fn put_all(local: &mut StoreTarget<'_>, records: &[EncodedChunk]) -> Result<(), ReplicateError> {
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, c) in records.iter().enumerate() {
        if bytes + c.payload.len() > MAX_BATCH_BYTES / 2 && i > start {
            local.put_records(&records[start..i])?;
            start = i;
            bytes = 0;
        }
        bytes += c.payload.len();
    }
    if start < records.len() {
        local.put_records(&records[start..])?;
    }
    Ok(())
}

/// A source on another appliance, reached over HTTPS with a token of the role `pull` made
/// there (`/api/v1/replica/source/...`).
#[derive(Debug)]
pub struct HttpSource {
    client: pinhttp::Client,
    open_trees: bool,
}

impl HttpSource {
    pub fn new(client: pinhttp::Client) -> HttpSource {
        HttpSource { client, open_trees: false }
    }
}

impl ReplicaSource for HttpSource {
    fn points(&mut self) -> Result<Vec<RemotePoint>, ReplicateError> {
        let r = super::http_call(&mut self.client, "GET", "/api/v1/replica/source/points", "", &[])?;
        let a: super::wire::SourcePoints = serde_json::from_slice(&r.body).map_err(|e| ReplicateError::Link {
            message: format!("{} answered its points with something unexpected: {e}", self.client.addr()),
            kind: crate::ErrorKind::Permanent,
        })?;
        Ok(a.points)
    }

    fn records(&mut self, digests: &[Digest]) -> Result<Vec<EncodedChunk>, ReplicateError> {
        let req = super::wire::Digests {
            digests: digests.iter().map(Digest::to_hex).collect(),
            sealed_by: None,
            open_trees: self.open_trees,
        };
        let body = serde_json::to_vec(&req).map_err(|e| ReplicateError::Invalid(format!("encoding a request: {e}")))?;
        let r =
            super::http_call(&mut self.client, "POST", "/api/v1/replica/source/records", "application/json", &body)?;
        let (records, used) = store::pack::split_records(&r.body).map_err(|what| {
            ReplicateError::Refused(format!("{} sent malformed records: {what}", self.client.addr()))
        })?;
        if used != r.body.len() {
            return Err(ReplicateError::Link {
                message: format!("{} sent a batch that ends inside a record", self.client.addr()),
                kind: crate::ErrorKind::Transient,
            });
        }
        Ok(records)
    }

    fn open_trees(&mut self, open: bool) {
        self.open_trees = open;
    }
}
