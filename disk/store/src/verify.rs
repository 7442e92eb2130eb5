//! Verification and index rebuild.
//!
//! Invariant: a restore point verifies clean only if every chunk it references (data, tree
//! nodes, captured files) is reachable through an index entry that leads to an intact record,
//! and its catalog record passes its checksum (`blake3` of the record is an indexed manifest;
//! see [`catalog`](crate::catalog)). Anything else is reported as damage to the restore points
//! it touches, by byte range, or, for a catalog record, by its key `name@id`.
//!
//! Two ways to verify, both reporting damage as restore points and byte ranges:
//! - [`Store::verify_points`] re-reads every chunk the given restore points reference and
//!   checks its checksum and digest (parallel over chunks).
//! - [`Store::verify_store`] scans every pack once, sequentially, checking every record
//!   ([`pack::scan_pack`] reads past a damaged pack header and resynchronises after damaged
//!   records, so every intact record is seen and every lost stretch is named). Then it checks
//!   every index entry against the scan and the record header at its location (a `pread` of
//!   64 bytes: magic, digest, length and kind must match), which catches damage to the index
//!   itself and entries into lost stretches. Finally it walks every restore point's index
//!   tree against the entries found damaged. Each chunk is read once however many restore
//!   points share it. Unreadable catalog records are damaged points, the others are checked.
//!
//! Both record every damaged or missing chunk digest in the `damaged` database, so the next
//! backup stores a new copy, which replaces the damaged one for every restore point
//! (`verify_store` also forgets digests whose entry checks out again). A read-only store is
//! verified without recording anything.
//!
//! Every verify can be stopped: the `_with` forms take a `cancelled` probe, looked at per
//! pack and every few thousand chunks, and then return [`StoreError::Cancelled`] having
//! recorded nothing (a verify only reads, so nothing is left half-done). An incremental
//! verify stopped that way scans the same packs again next time.
//!
//! [`Store::reindex`] rebuilds the `chunks` and `packs` databases from the packs alone, and
//! restores catalog entries from the manifest records in the packs. It salvages every intact
//! record of a pack, also behind a damaged pack header or a damaged record.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::catalog::{pack_key, point_key, ChunkLoc};
use crate::error::{Result, StoreError};
use crate::pack::{self, RecordKind};

/// How many chunks a verify walks between two looks at its cancel probe.
const CANCEL_EVERY: u64 = 1024;
use crate::{now_unix, Digest, DiskIndex, PackInfo, RestorePoint, Store};

/// A damaged stretch of one disk of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedRange {
    pub disk: String,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// A captured configuration file that cannot be read back, as a damaged range.
fn file_damage(file: &crate::PointFile, reason: String) -> DamagedRange {
    DamagedRange { disk: format!("file {}", file.name), offset: 0, len: file.size, reason }
}

/// Damage found in one restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointDamage {
    pub point: String,
    pub ranges: Vec<DamagedRange>,
}

/// What an incremental verify of the whole store scans (see [`Store::verify_store_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Leave out packs scanned clean less than this many seconds ago.
    pub skip_verified_within_s: Option<u64>,
    /// Scan at most this many packs (oldest first); the next run continues.
    pub max_packs: Option<u64>,
}

/// The outcome of a verify run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub restore_points_checked: u64,
    pub chunks_checked: u64,
    /// Of `chunks_checked`, the chunks of replicas held without their key: sealed with a key
    /// this appliance lacks, so checked by their checksum only (see `pack`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_checksum_only: u64,
    pub bytes_checked: u64,
    pub packs_scanned: u64,
    /// Packs an incremental verify left out: scanned clean within its window.
    pub packs_skipped_recent: u64,
    /// Packs an incremental verify left for its next run (`max_packs`).
    pub packs_left_for_later: u64,
    /// Damaged records found by scanning packs (pack path and byte offset).
    pub damaged_records: Vec<String>,
    pub damaged_points: Vec<PointDamage>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_records.is_empty() && self.damaged_points.is_empty()
    }
}

/// The outcome of an index rebuild.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReindexReport {
    pub packs: u64,
    pub chunks: u64,
    /// Restore points found in pack manifests but missing from the catalog.
    pub restore_points_recovered: u64,
    pub damaged_records: Vec<String>,
}

/// What a scan of one pack found, kept for checking index entries (not the records).
#[derive(Debug, Clone, Default)]
pub(crate) struct PackSummary {
    pub missing: bool,
    pub header_error: Option<String>,
    pub skipped: Vec<pack::SkippedRange>,
    /// Offsets of records that fail their checksum or digest.
    pub bad: HashSet<u64>,
    /// End of the last record found.
    pub end: u64,
    /// The length the pack table records.
    pub info_len: u64,
}

impl PackSummary {
    /// Whether the pack has damage that [`Store::repair`] rewrites away.
    pub fn needs_repair(&self) -> bool {
        self.missing
            || self.header_error.is_some()
            || !self.skipped.is_empty()
            || !self.bad.is_empty()
            || self.end < self.info_len
    }
}

/// What a scan of every pack found.
#[derive(Debug, Default)]
pub(crate) struct StoreScan {
    pub packs: HashMap<u64, PackSummary>,
    pub damaged_records: Vec<String>,
    pub chunks_checked: u64,
    pub chunks_checksum_only: u64,
    pub bytes_checked: u64,
}

/// Why an index entry leads to no intact record.
#[derive(Debug)]
pub(crate) enum EntryFault {
    /// The record it names is damaged or gone (damage of the pack).
    Lost(String),
    /// The entry itself is wrong: the pack holds something else there (damage of the index).
    Wrong(String),
    /// A fault of the appliance itself (EMFILE...): stops the verify.
    Local(StoreError),
}

/// What [`Store::check_index`] found.
#[derive(Debug, Default)]
pub(crate) struct IndexCheck {
    /// Digests whose entry leads to no intact record, with the reason.
    pub damaged: HashMap<Digest, String>,
    /// Those of them whose entry itself is wrong.
    pub wrong: HashSet<Digest>,
    /// Report lines for the wrong entries.
    pub lines: Vec<String>,
    /// Digests recorded in `damaged` whose entry checks out now.
    pub sound: Vec<Digest>,
}

/// Collects damaged chunk indices of one disk and merges them into byte ranges.
struct DamageCollector<'a> {
    disk: &'a DiskIndex,
    ranges: Vec<DamagedRange>,
}

impl<'a> DamageCollector<'a> {
    fn new(disk: &'a DiskIndex) -> Self {
        DamageCollector { disk, ranges: Vec::new() }
    }

    fn chunk_span(&self, index: u64, count: u64) -> (u64, u64) {
        let cs = self.disk.chunk_size as u64;
        let start = index * cs;
        let end = ((index + count) * cs).min(self.disk.size);
        (start, end.saturating_sub(start))
    }

    fn add(&mut self, index: u64, count: u64, reason: String) {
        let (offset, len) = self.chunk_span(index, count);
        if let Some(last) = self.ranges.last_mut() {
            if last.offset + last.len == offset && last.reason == reason {
                last.len += len;
                return;
            }
        }
        self.ranges.push(DamagedRange { disk: self.disk.label.clone(), offset, len, reason });
    }
}

impl Store {
    /// Re-read and check every chunk of `points`. `progress` receives bytes checked.
    pub fn verify_points(
        &self,
        points: &[RestorePoint],
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<VerifyReport> {
        self.verify_points_with(points, threads, progress, &|| false)
    }

    /// [`Store::verify_points`], stopping with [`StoreError::Cancelled`] once `cancelled`
    /// says so.
    pub fn verify_points_with(
        &self,
        points: &[RestorePoint],
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for point in points {
            let mut ranges = Vec::new();
            for disk in &point.disks {
                let damage = self.verify_disk(disk, threads, progress, cancelled, &mut report)?;
                ranges.extend(damage);
            }
            for file in &point.files {
                match self.read_point_file(file) {
                    Ok(content) => {
                        report.chunks_checked += 1;
                        report.bytes_checked += content.len() as u64;
                    }
                    Err(e) if e.is_local_fault() => return Err(e),
                    Err(e) => {
                        self.note_damage(&[(file.digest, e.to_string())], &[])?;
                        ranges.push(file_damage(file, e.to_string()));
                    }
                }
            }
            report.restore_points_checked += 1;
            if !ranges.is_empty() {
                report.damaged_points.push(PointDamage { point: point.spec(), ranges });
            }
        }
        Ok(report)
    }

    fn verify_disk(
        &self,
        disk: &DiskIndex,
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
        report: &mut VerifyReport,
    ) -> Result<Vec<DamagedRange>> {
        let damaged: Mutex<Vec<(u64, Digest, String)>> = Mutex::new(Vec::new());
        let checked = AtomicU64::new(0);
        let checksum_only = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let (tx, rx) = crossbeam_channel::bounded::<(u64, Digest)>(1024);
        let mut walk_failure: Option<(u64, String)> = None;
        let mut stopped = false;
        // A fault of our own (EMFILE, ENOMEM...) stops the verify: it says nothing of the data.
        let local_fault: Mutex<Option<StoreError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                let rx = rx.clone();
                let (damaged, local_fault) = (&damaged, &local_fault);
                let (checked, bytes, checksum_only) = (&checked, &bytes, &checksum_only);
                s.spawn(move || {
                    let (mut scratch, mut out) = (Vec::new(), Vec::new());
                    for (index, digest) in rx {
                        match self.check_chunk(&digest, &mut scratch, &mut out) {
                            Ok((loc, how)) => {
                                checked.fetch_add(1, Ordering::Relaxed);
                                if how == pack::ContentCheck::ChecksumOnly {
                                    checksum_only.fetch_add(1, Ordering::Relaxed);
                                }
                                bytes.fetch_add(u64::from(loc.raw_len), Ordering::Relaxed);
                                progress(u64::from(loc.raw_len));
                            }
                            Err(e) if e.is_local_fault() => {
                                local_fault.lock().expect("fault slot").get_or_insert(e);
                                return;
                            }
                            Err(e) => damaged.lock().expect("damage list").push((index, digest, e.to_string())),
                        }
                    }
                });
            }
            drop(rx);
            let mut walker = self.walk(disk);
            let mut index = 0u64;
            loop {
                match walker.next_entry() {
                    Ok(Some(d)) => {
                        if index.is_multiple_of(CANCEL_EVERY) && cancelled() {
                            stopped = true;
                            break;
                        }
                        if !d.is_zero() && tx.send((index, d)).is_err() {
                            break;
                        }
                        index += 1;
                    }
                    Ok(None) => break,
                    Err(e) if e.is_local_fault() => {
                        local_fault.lock().expect("fault slot").get_or_insert(e);
                        break;
                    }
                    Err(e) => {
                        walk_failure = Some((index, format!("index tree unreadable: {e}")));
                        break;
                    }
                }
            }
            if !stopped && walk_failure.is_none() && index != disk.chunks {
                walk_failure =
                    Some((index, format!("index tree holds {index} chunks, the restore point says {}", disk.chunks)));
            }
            drop(tx);
        });
        if let Some(e) = local_fault.into_inner().expect("fault slot") {
            return Err(e);
        }
        if stopped {
            return Err(StoreError::Cancelled);
        }
        report.chunks_checked += checked.into_inner();
        report.chunks_checksum_only += checksum_only.into_inner();
        report.bytes_checked += bytes.into_inner();
        let mut list = damaged.into_inner().expect("damage list");
        list.sort_by_key(|(index, _, _)| *index);
        let mut collector = DamageCollector::new(disk);
        let mut noted = Vec::new();
        for (index, digest, reason) in list {
            collector.add(index, 1, reason.clone());
            noted.push((digest, reason));
        }
        self.note_damage(&noted, &[])?;
        if let Some((index, reason)) = walk_failure {
            let rest = disk.chunks.saturating_sub(index).max(1);
            collector.add(index, rest, reason);
        }
        Ok(collector.ranges)
    }

    pub(crate) fn pack_numbers(&self) -> Result<Vec<(u64, PackInfo)>> {
        let rtxn = self.catalog.read()?;
        let mut out = Vec::new();
        for item in self.catalog.packs.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
            let (k, v) = item.map_err(|e| self.catalog.err(e))?;
            let number = u64::from_be_bytes(k.try_into().unwrap_or([0; 8]));
            let info: PackInfo = serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
                path: self.catalog.path.clone(),
                offset: 0,
                detail: format!("unreadable pack record {number}: {e}"),
            })?;
            out.push((number, info));
        }
        Ok(out)
    }

    /// Scan every pack of the pack table (in parallel over packs), checking every record.
    pub(crate) fn scan_store(
        &self,
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
        only: Option<&HashSet<u64>>,
    ) -> Result<StoreScan> {
        let mut packs = self.pack_numbers()?;
        if let Some(only) = only {
            packs.retain(|(n, _)| only.contains(n));
        }
        let summaries: Mutex<HashMap<u64, PackSummary>> = Mutex::new(HashMap::new());
        let damaged_records: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let checked = AtomicU64::new(0);
        let checksum_only = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let next = AtomicU64::new(0);
        let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    if cancelled() {
                        first_error.lock().expect("error slot").get_or_insert(StoreError::Cancelled);
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((number, info)) = packs.get(i) else { break };
                    let path = self.pack_path(*number);
                    let mut lines = Vec::new();
                    let summary = match pack::scan_pack(&path, true, self.keyring()) {
                        Ok(scan) => {
                            let mut summary = PackSummary {
                                header_error: scan.header_error.clone(),
                                end: scan.end,
                                info_len: info.len,
                                ..Default::default()
                            };
                            if let Some(e) = &scan.header_error {
                                lines.push(format!(
                                    "{}: the 64-byte pack header is damaged ({e}); its records were checked anyway",
                                    path.display()
                                ));
                            }
                            for r in &scan.records {
                                if r.intact {
                                    checked.fetch_add(1, Ordering::Relaxed);
                                    if r.checksum_only {
                                        checksum_only.fetch_add(1, Ordering::Relaxed);
                                    }
                                    bytes.fetch_add(r.header.raw_len as u64, Ordering::Relaxed);
                                    // The total is the packs' size, so progress counts stored bytes.
                                    progress(pack::RECORD_HEADER_LEN as u64 + r.header.stored_len as u64);
                                } else {
                                    summary.bad.insert(r.offset);
                                    lines.push(format!(
                                        "{}: record at byte offset {} (chunk {}) fails its checksum or digest",
                                        path.display(),
                                        r.offset,
                                        r.header.digest
                                    ));
                                }
                            }
                            for r in &scan.skipped {
                                lines.push(format!(
                                    "{}: bytes {}..{} are not readable as records: {}",
                                    path.display(),
                                    r.offset,
                                    r.offset + r.len,
                                    r.reason
                                ));
                            }
                            let tail_skipped = scan.skipped.last().is_some_and(|r| r.offset + r.len >= scan.len);
                            if scan.end < info.len && !tail_skipped {
                                lines.push(format!(
                                    "{}: pack ends at byte {}, the index says {}",
                                    path.display(),
                                    scan.end,
                                    info.len
                                ));
                            }
                            summary.skipped = scan.skipped;
                            summary
                        }
                        Err(StoreError::Io { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
                            lines.push(format!("{}: pack file is missing", path.display()));
                            PackSummary { missing: true, info_len: info.len, ..Default::default() }
                        }
                        Err(e) => {
                            first_error.lock().expect("error slot").get_or_insert(e);
                            break;
                        }
                    };
                    damaged_records.lock().expect("list").extend(lines);
                    summaries.lock().expect("summaries").insert(*number, summary);
                });
            }
        });
        if let Some(e) = first_error.into_inner().expect("error slot") {
            return Err(e);
        }
        let mut damaged_records = damaged_records.into_inner().expect("list");
        damaged_records.sort();
        Ok(StoreScan {
            packs: summaries.into_inner().expect("summaries"),
            damaged_records,
            chunks_checked: checked.into_inner(),
            chunks_checksum_only: checksum_only.into_inner(),
            bytes_checked: bytes.into_inner(),
        })
    }

    /// Check every index entry against what the scan found and against the record header at
    /// its location (one `pread` each, on `threads` workers). Returns the digests whose entry
    /// leads to no intact record, with the reason, and lines for entries that are wrong while
    /// their pack is fine there (those are damage of the index itself).
    pub(crate) fn check_index(&self, rtxn: &heed::RoTxn<'_>, scan: &StoreScan, threads: usize) -> Result<IndexCheck> {
        let damaged: Mutex<HashMap<Digest, String>> = Mutex::new(HashMap::new());
        let wrong: Mutex<HashSet<Digest>> = Mutex::new(HashSet::new());
        let lines: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let sound: Mutex<Vec<Digest>> = Mutex::new(Vec::new());
        let noted = self.damaged_set(rtxn)?;
        let local_fault: Mutex<Option<StoreError>> = Mutex::new(None);
        let mut result = Ok(());
        std::thread::scope(|s| {
            let (tx, rx) = crossbeam_channel::bounded::<Vec<(Digest, Option<ChunkLoc>)>>(16);
            for _ in 0..threads.max(1) {
                let rx = rx.clone();
                let (damaged, wrong, lines, sound, noted) = (&damaged, &wrong, &lines, &sound, &noted);
                let local_fault = &local_fault;
                s.spawn(move || {
                    for batch in rx {
                        for (digest, loc) in batch {
                            let verdict = match loc {
                                None => Err(EntryFault::Wrong(
                                    "its index entry is malformed; `rackvault reindex` rebuilds it from the packs"
                                        .into(),
                                )),
                                Some(loc) => self.check_entry(&digest, &loc, scan),
                            };
                            match verdict {
                                Ok(()) => {
                                    if noted.contains(&digest) {
                                        sound.lock().expect("sound list").push(digest);
                                    }
                                }
                                Err(EntryFault::Wrong(reason)) => {
                                    lines
                                        .lock()
                                        .expect("lines")
                                        .push(format!("index entry of chunk {digest}: {reason}"));
                                    wrong.lock().expect("wrong set").insert(digest);
                                    damaged.lock().expect("damage map").insert(digest, reason);
                                }
                                Err(EntryFault::Lost(reason)) => {
                                    damaged.lock().expect("damage map").insert(digest, reason);
                                }
                                Err(EntryFault::Local(e)) => {
                                    local_fault.lock().expect("fault slot").get_or_insert(e);
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            drop(rx);
            result = (|| {
                let mut batch = Vec::with_capacity(1024);
                for item in self.catalog.chunks.iter(rtxn).map_err(|e| self.catalog.err(e))? {
                    let (k, v) = item.map_err(|e| self.catalog.err(e))?;
                    let Ok(key) = <[u8; 32]>::try_from(k) else { continue };
                    batch.push((Digest(key), ChunkLoc::decode(v)));
                    if batch.len() == 1024 && tx.send(std::mem::take(&mut batch)).is_err() {
                        break;
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
                Ok(())
            })();
            drop(tx);
        });
        result?;
        if let Some(e) = local_fault.into_inner().expect("fault slot") {
            return Err(e);
        }
        let mut lines = lines.into_inner().expect("lines");
        lines.sort();
        Ok(IndexCheck {
            damaged: damaged.into_inner().expect("damage map"),
            wrong: wrong.into_inner().expect("wrong set"),
            lines,
            sound: sound.into_inner().expect("sound list"),
        })
    }

    /// Whether the index entry `digest -> loc` leads to an intact record, as far as the scan
    /// and the record header at `loc` tell.
    pub(crate) fn check_entry(&self, digest: &Digest, loc: &ChunkLoc, scan: &StoreScan) -> Result<(), EntryFault> {
        use EntryFault::Lost;
        let path = self.pack_path(loc.pack);
        let shown = path.display();
        let record_end = loc.offset + pack::RECORD_HEADER_LEN as u64 + loc.stored_len as u64;
        if let Some(summary) = scan.packs.get(&loc.pack) {
            if summary.missing {
                return Err(Lost(format!("its pack {shown} is missing")));
            }
            if let Some(r) = summary.skipped.iter().find(|r| loc.offset >= r.offset && loc.offset < r.offset + r.len) {
                return Err(Lost(format!("its record at byte offset {} of {shown} is lost: {}", loc.offset, r.reason)));
            }
            if summary.bad.contains(&loc.offset) {
                return Err(Lost(format!("its record at byte offset {} of {shown} is damaged", loc.offset)));
            }
            if record_end > summary.end {
                return Err(Lost(format!(
                    "its record at byte offset {} lies beyond the last record of {shown} (byte {}): the pack lost its tail",
                    loc.offset, summary.end
                )));
            }
        }
        let mut h = [0u8; pack::RECORD_HEADER_LEN];
        let file = self.pack_file(loc.pack).map_err(|e| {
            if e.is_local_fault() {
                EntryFault::Local(e)
            } else {
                Lost(e.to_string())
            }
        })?;
        let read = file.read_exact_at(&mut h, loc.offset);
        let header = match read {
            Ok(()) => pack::RecordHeader::decode(&h),
            Err(e) => Err(e.to_string()),
        };
        let wrong = match header {
            Ok(Some(h)) if h.digest == *digest && h.stored_len == loc.stored_len && h.kind == loc.kind => return Ok(()),
            Ok(Some(h)) if h.digest != *digest => format!("the record there holds chunk {}", h.digest),
            Ok(Some(h)) => format!(
                "the record there is {} bytes of kind {:?}, the entry says {} bytes of kind {:?}",
                h.stored_len, h.kind, loc.stored_len, loc.kind
            ),
            Ok(None) => "there is padding there".into(),
            Err(e) => format!("no record header there ({e})"),
        };
        Err(EntryFault::Wrong(format!(
            "the index entry is wrong: it points at byte offset {} of {shown}, but {wrong}; `rackvault reindex` (or `rackvault repair`) rebuilds it from the packs",
            loc.offset
        )))
    }

    /// Every digest recorded in `damaged`.
    pub(crate) fn damaged_set(&self, rtxn: &heed::RoTxn<'_>) -> Result<HashSet<Digest>> {
        let mut out = HashSet::new();
        if let Some(db) = &self.catalog.damaged {
            for item in db.iter(rtxn).map_err(|e| self.catalog.err(e))? {
                let (k, _) = item.map_err(|e| self.catalog.err(e))?;
                if let Ok(key) = <[u8; 32]>::try_from(k) {
                    out.insert(Digest(key));
                }
            }
        }
        Ok(out)
    }

    /// Record `damaged` digests in the `damaged` database and forget `sound` ones, unless the
    /// store is read-only (then verify only reports).
    pub(crate) fn note_damage(&self, damaged: &[(Digest, String)], sound: &[Digest]) -> Result<()> {
        if self.read_only.is_some() || (damaged.is_empty() && sound.is_empty()) {
            return Ok(());
        }
        let mut wtxn = self.catalog.write()?;
        for d in sound {
            self.catalog.clear_damaged(&mut wtxn, d)?;
        }
        for (d, reason) in damaged {
            self.catalog.mark_damaged(&mut wtxn, d, reason)?;
        }
        wtxn.commit().map_err(|e| self.catalog.err(e))
    }

    /// Check every record of every pack, every index entry, every catalog record, then every
    /// restore point against what was found. Damaged and missing chunks are recorded in
    /// `damaged` (see [`catalog`](crate::catalog)), so the next backup stores them again.
    /// Holds `gc.lock` (waiting for a running GC), so no pack is rewritten under the scan.
    pub fn verify_store(&self, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
        self.verify_store_with(&VerifyOptions::default(), threads, progress, &|| false)
    }

    /// Which packs an incremental verify scans now: those not scanned clean within the window,
    /// oldest pack first, at most `max_packs`; and how many it skips and leaves for later.
    fn packs_to_scan(&self, opts: &VerifyOptions) -> Result<(Option<HashSet<u64>>, u64, u64)> {
        if opts.skip_verified_within_s.is_none() && opts.max_packs.is_none() {
            return Ok((None, 0, 0));
        }
        let now = now_unix();
        let rtxn = self.catalog.read()?;
        let (mut chosen, mut skipped, mut later) = (HashSet::new(), 0, 0);
        for (number, _) in self.pack_numbers()? {
            let last = match (&self.catalog.verified, opts.skip_verified_within_s) {
                (Some(db), Some(_)) => db
                    .get(&rtxn, &pack_key(number))
                    .map_err(|e| self.catalog.err(e))?
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map(u64::from_le_bytes),
                _ => None,
            };
            if let (Some(last), Some(window)) = (last, opts.skip_verified_within_s) {
                if now.saturating_sub(last) < window {
                    skipped += 1;
                    continue;
                }
            }
            if opts.max_packs.is_some_and(|m| chosen.len() as u64 >= m) {
                later += 1;
                continue;
            }
            chosen.insert(number);
        }
        Ok((Some(chosen), skipped, later))
    }

    /// Record when the packs of `scan` were scanned clean, and forget the rest.
    fn note_verified(&self, scan: &StoreScan) -> Result<()> {
        let Some(db) = &self.catalog.verified else { return Ok(()) };
        if self.read_only().is_some() {
            return Ok(());
        }
        let now = now_unix();
        let live: HashSet<u64> = self.pack_numbers()?.into_iter().map(|(n, _)| n).collect();
        let mut wtxn = self.catalog.write()?;
        let mut stale = Vec::new();
        for item in db.iter(&wtxn).map_err(|e| self.catalog.err(e))? {
            let (k, _) = item.map_err(|e| self.catalog.err(e))?;
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                if !live.contains(&u64::from_be_bytes(b)) {
                    stale.push(b);
                }
            }
        }
        for k in stale {
            db.delete(&mut wtxn, &k).map_err(|e| self.catalog.err(e))?;
        }
        for (number, summary) in &scan.packs {
            let clean = !summary.missing
                && summary.header_error.is_none()
                && summary.skipped.is_empty()
                && summary.bad.is_empty()
                && summary.end >= summary.info_len;
            if clean {
                db.put(&mut wtxn, &pack_key(*number), &now.to_le_bytes()).map_err(|e| self.catalog.err(e))?;
            } else {
                db.delete(&mut wtxn, &pack_key(*number)).map_err(|e| self.catalog.err(e))?;
            }
        }
        wtxn.commit().map_err(|e| self.catalog.err(e))
    }

    /// Verify the whole store, or with `opts` incrementally: scan only the packs not scanned
    /// clean within a window (and at most `max_packs` of them), so that a large store is
    /// verified a slice a night and a stopped verify resumes where it stopped. The index check
    /// and the point walk always cover everything: they are cheap (one 64-byte read per index
    /// entry, one lookup per chunk reference). Damage recorded by earlier runs (`damaged`)
    /// is reported again. The trade-off: a pack scanned clean within the window is trusted,
    /// so damage that happens to it meanwhile waits for its next scan (or a full verify).
    /// It stops with [`StoreError::Cancelled`] once `cancelled` says so.
    pub fn verify_store_with(
        &self,
        opts: &VerifyOptions,
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let _gc = self.gc_lock(true)?;
        let (only, skipped_recent, left_for_later) = self.packs_to_scan(opts)?;
        let incremental = only.is_some();
        let scan = self.scan_store(threads, progress, cancelled, only.as_ref())?;
        self.note_verified(&scan)?;
        // One snapshot for the index check and the points, so a point committed meanwhile by
        // a concurrent backup is not judged against an older index.
        let rtxn = self.catalog.read()?;
        let IndexCheck { damaged, lines: index_lines, sound, .. } = self.check_index(&rtxn, &scan, threads)?;
        let noted_before = if incremental { self.damaged_set(&rtxn)? } else { HashSet::new() };
        let mut report = VerifyReport {
            packs_scanned: scan.packs.len() as u64,
            packs_skipped_recent: skipped_recent,
            packs_left_for_later: left_for_later,
            chunks_checked: scan.chunks_checked,
            chunks_checksum_only: scan.chunks_checksum_only,
            bytes_checked: scan.bytes_checked,
            damaged_records: scan.damaged_records.clone(),
            ..Default::default()
        };
        report.damaged_records.extend(index_lines);
        let mut missing: Vec<(Digest, String)> = Vec::new();
        let mut judge = |d: &Digest| -> Result<Option<String>> {
            if let Some(reason) = damaged.get(d) {
                return Ok(Some(format!("chunk {d}: {reason}")));
            }
            if noted_before.contains(d) {
                return Ok(Some(format!("chunk {d} was found damaged by an earlier verify")));
            }
            if self.catalog.chunk(&rtxn, d)?.is_none() {
                let reason = format!("chunk {d} is missing from the index");
                missing.push((*d, reason.clone()));
                return Ok(Some(reason));
            }
            Ok(None)
        };
        let (points, unreadable) = self.list_in(&rtxn)?;
        for point in points {
            if cancelled() {
                return Err(StoreError::Cancelled);
            }
            let mut ranges = Vec::new();
            for disk in &point.disks {
                let mut collector = DamageCollector::new(disk);
                let mut walker = self.walk(disk);
                let mut index = 0u64;
                loop {
                    match walker.next_entry() {
                        Ok(Some(d)) => {
                            if !d.is_zero() {
                                if let Some(r) = judge(&d)? {
                                    collector.add(index, 1, r);
                                }
                            }
                            index += 1;
                        }
                        Ok(None) => break,
                        Err(e) if e.is_local_fault() => return Err(e),
                        Err(e) => {
                            collector.add(
                                index,
                                disk.chunks.saturating_sub(index).max(1),
                                format!("index tree unreadable: {e}"),
                            );
                            break;
                        }
                    }
                }
                ranges.extend(collector.ranges);
            }
            for file in &point.files {
                if let Some(r) = judge(&file.digest)? {
                    ranges.push(file_damage(file, r));
                }
            }
            report.restore_points_checked += 1;
            if !ranges.is_empty() {
                report.damaged_points.push(PointDamage { point: point.spec(), ranges });
            }
        }
        for bad in unreadable {
            report.restore_points_checked += 1;
            report.damaged_points.push(PointDamage {
                point: bad.spec(),
                ranges: vec![DamagedRange {
                    disk: "catalog record".into(),
                    offset: 0,
                    len: 0,
                    reason: format!("{}; `rackvault repair` restores it from its manifest in the packs", bad.reason),
                }],
            });
        }
        report.damaged_points.sort_by(|a, b| a.point.cmp(&b.point));
        drop(rtxn);
        let mut noted: Vec<(Digest, String)> = damaged.into_iter().collect();
        noted.extend(missing);
        // An incremental verify did not re-read every record, so it clears no earlier note.
        self.note_damage(&noted, if incremental { &[] } else { &sound })?;
        Ok(report)
    }

    /// Rebuild the chunk index and pack table by scanning every pack in `packs/`. Waits for
    /// running backups to finish (exclusive `writers.lock`).
    pub fn reindex(&self) -> Result<ReindexReport> {
        self.check_writable()?;
        let lock = self.writers_lock()?;
        lock.lock().map_err(|e| StoreError::io(self.root.join("writers.lock"), e))?;
        let _gc = self.gc_lock(true)?;
        self.finish_gc_deletions()?;
        let dir = self.root.join("packs");
        let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| StoreError::io(&dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_str()?.strip_suffix(".pack").and_then(|n| u64::from_str_radix(n, 16).ok())?;
                Some((n, e.path()))
            })
            .collect();
        files.sort();
        let report = self.index_packs(&files, true, true)?;
        for (number, _) in &files {
            self.forget_pack_file(*number);
        }
        Ok(report)
    }

    /// Add the records of the given packs to the index in one transaction (after clearing the
    /// index if `clear`), record the tombstones they hold, and, with `recover_points`, catalog
    /// entries for their manifests unless tombstoned. The caller holds `writers.lock`
    /// exclusively.
    pub(crate) fn index_packs(
        &self,
        files: &[(u64, std::path::PathBuf)],
        clear: bool,
        recover_points: bool,
    ) -> Result<ReindexReport> {
        let catalog = &self.catalog;
        let mut wtxn = catalog.write()?;
        if clear {
            catalog.chunks.clear(&mut wtxn).map_err(|e| catalog.err(e))?;
            catalog.packs.clear(&mut wtxn).map_err(|e| catalog.err(e))?;
            // Everything a GC had condemned is re-derived: unreferenced chunks are condemned
            // again by the next GC.
            catalog.condemned.clear(&mut wtxn).map_err(|e| catalog.err(e))?;
        }
        let mut report = ReindexReport::default();
        let mut max_pack = 0;
        let mut manifests: Vec<ChunkLoc> = Vec::new();
        let mut tombstones: Vec<ChunkLoc> = Vec::new();
        for (number, path) in files {
            let (number, path) = (*number, path.as_path());
            let scan = pack::scan_pack(path, false, self.keyring())?;
            if let Some(header_number) = scan.number.filter(|n| *n != number) {
                report.damaged_records.push(format!("{}: header says pack {header_number}; skipped", path.display()));
                continue;
            }
            if let Some(e) = &scan.header_error {
                // The records are self-checking: salvage them rather than lose the pack.
                report.damaged_records.push(format!(
                    "{}: the pack header is damaged ({e}); its records were salvaged by scanning",
                    path.display()
                ));
            }
            for r in &scan.skipped {
                report.damaged_records.push(format!(
                    "{}: bytes {}..{} are not readable as records: {}",
                    path.display(),
                    r.offset,
                    r.offset + r.len,
                    r.reason
                ));
            }
            let mut end = pack::PACK_HEADER_LEN;
            let mut intact = 0u32;
            let mut deferred = 0u64;
            for r in &scan.records {
                if !r.intact {
                    report.damaged_records.push(format!(
                        "{}: record at byte offset {} is damaged",
                        path.display(),
                        r.offset
                    ));
                    continue;
                }
                let loc = ChunkLoc::at(number, r.offset, &r.header);
                if catalog.index_chunk(&mut wtxn, &r.header.digest, &loc)? {
                    report.chunks += 1;
                }
                match r.header.kind {
                    RecordKind::Manifest => manifests.push(loc),
                    RecordKind::Tombstone => tombstones.push(loc),
                    RecordKind::Data | RecordKind::Tree => {}
                }
                intact += 1;
                end = r.offset + pack::RECORD_HEADER_LEN as u64 + r.header.stored_len as u64;
                // The deferral is not in the records: assume it, so the pass tries them once.
                if pack::maybe_deferred(&r.header) {
                    deferred += pack::RECORD_HEADER_LEN as u64 + r.header.stored_len as u64;
                }
            }
            let info =
                PackInfo { number, len: end, records: intact, sealed_unix: now_unix(), deferred_bytes: deferred };
            catalog
                .packs
                .put(&mut wtxn, &pack_key(number), &serde_json::to_vec(&info).expect("pack info serialises"))
                .map_err(|e| catalog.err(e))?;
            report.packs += 1;
            max_pack = max_pack.max(number);
        }
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let mut max_point = catalog.meta_u64(&wtxn, "next_point")?.unwrap_or(0);
        // Deleted points stay deleted: record every tombstone the packs hold.
        for loc in tombstones {
            let path = self.pack_path(loc.pack);
            let file = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
            let read = pack::read_record(
                &file,
                &path,
                loc.offset,
                loc.stored_len,
                &mut scratch,
                &mut out,
                pack::ReadCheck::Digest,
                self.keyring(),
            );
            let Some(t) = read.ok().and_then(|_| serde_json::from_slice::<crate::Tombstone>(&out).ok()) else {
                report.damaged_records.push(format!(
                    "{}: tombstone at byte offset {} unreadable",
                    path.display(),
                    loc.offset
                ));
                continue;
            };
            let key = point_key(&t.name, t.id);
            max_point = max_point.max(t.id);
            if catalog.pins.get(&wtxn, &key).map_err(|e| catalog.err(e))?.is_some() {
                // Pinned after the deletion was written but before it took effect: the pin wins.
                continue;
            }
            catalog.tombstones.put(&mut wtxn, &key, &out).map_err(|e| catalog.err(e))?;
            catalog.points.delete(&mut wtxn, &key).map_err(|e| catalog.err(e))?;
        }
        // Bring back restore points whose catalog entry is missing (a lost or deleted index).
        for loc in manifests {
            let path = self.pack_path(loc.pack);
            let file = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
            if pack::read_record(
                &file,
                &path,
                loc.offset,
                loc.stored_len,
                &mut scratch,
                &mut out,
                pack::ReadCheck::Digest,
                self.keyring(),
            )
            .is_err()
            {
                report.damaged_records.push(format!(
                    "{}: manifest at byte offset {} unreadable",
                    path.display(),
                    loc.offset
                ));
                continue;
            }
            let Ok(point) = serde_json::from_slice::<RestorePoint>(&out) else {
                report.damaged_records.push(format!(
                    "{}: manifest at byte offset {} malformed",
                    path.display(),
                    loc.offset
                ));
                continue;
            };
            let key = point_key(&point.name, point.id);
            max_point = max_point.max(point.id);
            if !recover_points || catalog.tombstones.get(&wtxn, &key).map_err(|e| catalog.err(e))?.is_some() {
                continue;
            }
            if catalog.points.get(&wtxn, &key).map_err(|e| catalog.err(e))?.is_none() {
                catalog.points.put(&mut wtxn, &key, &out).map_err(|e| catalog.err(e))?;
                report.restore_points_recovered += 1;
            }
        }
        catalog.meta.put(&mut wtxn, b"next_point", &max_point.to_le_bytes()).map_err(|e| catalog.err(e))?;
        // Never hand out a pack number that exists on disk.
        let cur = catalog.meta_u64(&wtxn, "next_pack")?.unwrap_or(0);
        if max_pack > cur {
            catalog.meta.put(&mut wtxn, b"next_pack", &max_pack.to_le_bytes()).map_err(|e| catalog.err(e))?;
        }
        wtxn.commit().map_err(|e| catalog.err(e))?;
        Ok(report)
    }
}
