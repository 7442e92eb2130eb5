//! Verification and index rebuild.
//!
//! Two ways to verify, both reporting damage as restore points and byte ranges:
//! - [`Store::verify_points`] re-reads every chunk the given restore points reference and
//!   checks its checksum and digest (parallel over chunks).
//! - [`Store::verify_store`] scans every pack once, sequentially, checking every record, and
//!   then walks every restore point's index tree against the index and the set of damaged
//!   chunks. Each chunk is read once however many restore points share it.
//!
//! [`Store::reindex`] rebuilds the `chunks` and `packs` databases from the packs alone, and
//! restores catalog entries from the manifest records in the packs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use heed::PutFlags;
use serde::Serialize;

use crate::catalog::{pack_key, point_key, ChunkLoc};
use crate::error::{Result, StoreError};
use crate::pack::{self, RecordKind};
use crate::{now_unix, Digest, DiskIndex, PackInfo, RestorePoint, Store};

/// A damaged stretch of one disk of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointDamage {
    pub point: String,
    pub ranges: Vec<DamagedRange>,
}

/// The outcome of a verify run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub restore_points_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub packs_scanned: u64,
    /// Damaged records found by scanning packs (pack path and byte offset).
    pub damaged_records: Vec<String>,
    pub damaged_points: Vec<PointDamage>,
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
        let mut report = VerifyReport::default();
        for point in points {
            let mut ranges = Vec::new();
            for disk in &point.disks {
                let damage = self.verify_disk(disk, threads, progress, &mut report)?;
                ranges.extend(damage);
            }
            for file in &point.files {
                match self.read_point_file(file) {
                    Ok(content) => {
                        report.chunks_checked += 1;
                        report.bytes_checked += content.len() as u64;
                    }
                    Err(e) => ranges.push(file_damage(file, e.to_string())),
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
        report: &mut VerifyReport,
    ) -> Result<Vec<DamagedRange>> {
        let damaged: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
        let checked = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let (tx, rx) = crossbeam_channel::bounded::<(u64, Digest)>(1024);
        let mut walk_failure: Option<(u64, String)> = None;
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                let rx = rx.clone();
                let damaged = &damaged;
                let (checked, bytes) = (&checked, &bytes);
                s.spawn(move || {
                    let (mut scratch, mut out) = (Vec::new(), Vec::new());
                    for (index, digest) in rx {
                        match self.read_chunk(&digest, &mut scratch, &mut out) {
                            Ok(_) => {
                                checked.fetch_add(1, Ordering::Relaxed);
                                bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
                                progress(out.len() as u64);
                            }
                            Err(e) => damaged.lock().expect("damage list").push((index, e.to_string())),
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
                        if !d.is_zero() && tx.send((index, d)).is_err() {
                            break;
                        }
                        index += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        walk_failure = Some((index, format!("index tree unreadable: {e}")));
                        break;
                    }
                }
            }
            if walk_failure.is_none() && index != disk.chunks {
                walk_failure =
                    Some((index, format!("index tree holds {index} chunks, the restore point says {}", disk.chunks)));
            }
            drop(tx);
        });
        report.chunks_checked += checked.into_inner();
        report.bytes_checked += bytes.into_inner();
        let mut list = damaged.into_inner().expect("damage list");
        list.sort();
        let mut collector = DamageCollector::new(disk);
        for (index, reason) in list {
            collector.add(index, 1, reason);
        }
        if let Some((index, reason)) = walk_failure {
            let rest = disk.chunks.saturating_sub(index).max(1);
            collector.add(index, rest, reason);
        }
        Ok(collector.ranges)
    }

    fn pack_numbers(&self) -> Result<Vec<(u64, PackInfo)>> {
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

    /// Check every record of every pack, then every restore point against what was found.
    pub fn verify_store(&self, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
        let packs = self.pack_numbers()?;
        let bad: Mutex<HashSet<Digest>> = Mutex::new(HashSet::new());
        // Packs that could not be scanned at all (missing, or a damaged header).
        let unreadable: Mutex<HashSet<u64>> = Mutex::new(HashSet::new());
        let damaged_records: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let checked = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let next = AtomicU64::new(0);
        let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((number, info)) = packs.get(i) else { break };
                    let path = self.pack_path(*number);
                    match pack::scan_pack(&path, true) {
                        Ok((_, records, stop)) => {
                            let mut end = pack::PACK_HEADER_LEN;
                            for r in &records {
                                end = r.offset + (pack::RECORD_HEADER_LEN as u64) + r.header.stored_len as u64;
                                if r.intact {
                                    checked.fetch_add(1, Ordering::Relaxed);
                                    bytes.fetch_add(r.header.raw_len as u64, Ordering::Relaxed);
                                    // The total is the packs' size, so progress counts stored bytes.
                                    progress(pack::RECORD_HEADER_LEN as u64 + r.header.stored_len as u64);
                                } else {
                                    bad.lock().expect("bad set").insert(r.header.digest);
                                    damaged_records.lock().expect("list").push(format!(
                                        "{}: record at byte offset {} (chunk {}) fails its checksum or digest",
                                        path.display(),
                                        r.offset,
                                        r.header.digest
                                    ));
                                }
                            }
                            if let Some(why) = stop {
                                damaged_records.lock().expect("list").push(format!("{}: {why}", path.display()));
                            } else if end < info.len {
                                damaged_records.lock().expect("list").push(format!(
                                    "{}: pack ends at byte {end}, the index says {}",
                                    path.display(),
                                    info.len
                                ));
                            }
                        }
                        Err(StoreError::Corrupt { path, offset, detail }) => {
                            unreadable.lock().expect("unreadable set").insert(*number);
                            damaged_records
                                .lock()
                                .expect("list")
                                .push(format!("{}: at {offset}: {detail}", path.display()));
                        }
                        Err(StoreError::Io { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
                            unreadable.lock().expect("unreadable set").insert(*number);
                            damaged_records
                                .lock()
                                .expect("list")
                                .push(format!("{}: pack file is missing", path.display()));
                        }
                        Err(e) => {
                            first_error.lock().expect("error slot").get_or_insert(e);
                            break;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().expect("error slot") {
            return Err(e);
        }
        let bad = bad.into_inner().expect("bad set");
        let mut report = VerifyReport {
            packs_scanned: packs.len() as u64,
            chunks_checked: checked.into_inner(),
            bytes_checked: bytes.into_inner(),
            damaged_records: damaged_records.into_inner().expect("list"),
            ..Default::default()
        };
        report.damaged_records.sort();
        // Walk every restore point: each referenced chunk must be indexed, in a pack that
        // scanned clean, and not among the damaged records.
        let rtxn = self.catalog.read()?;
        let unreadable = unreadable.into_inner().expect("unreadable set");
        // Points from the same snapshot as the lookups, so a point committed meanwhile by a
        // concurrent backup is not judged against an older index.
        for point in self.list_in(&rtxn)? {
            let mut ranges = Vec::new();
            for disk in &point.disks {
                let mut collector = DamageCollector::new(disk);
                let mut walker = self.walk(disk);
                let mut index = 0u64;
                loop {
                    match walker.next_entry() {
                        Ok(Some(d)) => {
                            if !d.is_zero() {
                                let reason = match self.catalog.chunk(&rtxn, &d)? {
                                    None => Some(format!("chunk {d} is missing from the index")),
                                    Some(loc) if unreadable.contains(&loc.pack) => {
                                        Some(format!("chunk {d}: its pack is missing or unreadable"))
                                    }
                                    Some(_) if bad.contains(&d) => Some(format!("chunk {d} is damaged")),
                                    Some(_) => None,
                                };
                                if let Some(r) = reason {
                                    collector.add(index, 1, r);
                                }
                            }
                            index += 1;
                        }
                        Ok(None) => break,
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
                let reason = match self.catalog.chunk(&rtxn, &file.digest)? {
                    None => Some(format!("file content {} is missing from the index", file.digest)),
                    Some(loc) if unreadable.contains(&loc.pack) => Some("its pack is missing or unreadable".into()),
                    Some(_) if bad.contains(&file.digest) => Some("its record is damaged".into()),
                    Some(_) => None,
                };
                if let Some(r) = reason {
                    ranges.push(file_damage(file, r));
                }
            }
            report.restore_points_checked += 1;
            if !ranges.is_empty() {
                report.damaged_points.push(PointDamage { point: point.spec(), ranges });
            }
        }
        Ok(report)
    }

    /// Rebuild the chunk index and pack table by scanning every pack in `packs/`. Waits for
    /// running backups to finish (exclusive `writers.lock`).
    pub fn reindex(&self) -> Result<ReindexReport> {
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
            let (header_number, records, stop) = match pack::scan_pack(path, false) {
                Ok(r) => r,
                Err(StoreError::Corrupt { detail, .. }) => {
                    report.damaged_records.push(format!("{}: {detail}; skipped", path.display()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if header_number != number {
                report.damaged_records.push(format!("{}: header says pack {header_number}; skipped", path.display()));
                continue;
            }
            let mut end = pack::PACK_HEADER_LEN;
            let mut intact = 0u32;
            for r in &records {
                if !r.intact {
                    report.damaged_records.push(format!(
                        "{}: record at byte offset {} is damaged",
                        path.display(),
                        r.offset
                    ));
                    continue;
                }
                let loc = ChunkLoc {
                    pack: number,
                    offset: r.offset,
                    stored_len: r.header.stored_len,
                    raw_len: r.header.raw_len,
                    kind: r.header.kind,
                    codec: r.header.codec,
                };
                match catalog.chunks.put_with_flags(
                    &mut wtxn,
                    PutFlags::NO_OVERWRITE,
                    &r.header.digest.0,
                    &loc.encode(),
                ) {
                    Ok(()) => report.chunks += 1,
                    Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => {}
                    Err(e) => return Err(catalog.err(e)),
                }
                match r.header.kind {
                    RecordKind::Manifest => manifests.push(loc),
                    RecordKind::Tombstone => tombstones.push(loc),
                    RecordKind::Data | RecordKind::Tree => {}
                }
                intact += 1;
                end = r.offset + pack::RECORD_HEADER_LEN as u64 + r.header.stored_len as u64;
            }
            if let Some(why) = stop {
                report.damaged_records.push(format!("{}: {why}", path.display()));
            }
            let info = PackInfo { number, len: end, records: intact, sealed_unix: now_unix() };
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
