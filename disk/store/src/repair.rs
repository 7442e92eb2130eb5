//! Repair: rewrite damaged packs keeping what the index still needs, drop what is lost, and
//! restore damaged restore-point catalog records from their manifests.
//!
//! Invariants:
//! - Repair never deletes an intact record the index points at: such records are copied into
//!   a new pack, which is durable (same order as a backup: `tmp/`, `fsync`, rename into
//!   `packs/`, `fsync` of `packs/`) and indexed (one LMDB transaction repointing the entries
//!   and replacing the pack-table entry) before the old pack file is deleted.
//! - An index entry that leads to no intact record is removed and its digest recorded in
//!   `damaged`, so the next backup of that data stores it again and heals every restore point
//!   that references it. An entry that is merely wrong (its record is intact elsewhere in the
//!   packs) is repointed at that record.
//! - A catalog record failing its checksum is replaced by the manifest record of the same
//!   `name@id` (the manifest holds the same bytes); a sound catalog record whose manifest
//!   record was lost is written again as a manifest record, so packs alone still describe it.
//! - Repair holds `writers.lock` exclusively, like `reindex`: no backup runs meanwhile; and
//!   `gc.lock`, so no GC rewrites packs under it.
//!
//! After a repair, a store whose every restore point has been healed (by backing up the same
//! data again) or deleted verifies clean. [`RepairReport`] says what was dropped and which
//! restore points are still incomplete.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::catalog::{pack_key, point_key, ChunkLoc, PackInfo};
use crate::error::{Result, StoreError};
use crate::pack::{self, EncodedChunk, PackWriter, RecordKind};
use crate::verify::IndexCheck;
use crate::{fsync_dir, now_unix, Digest, RestorePoint, Store, UnreadablePoint};

/// A pack repair rewrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewrittenPack {
    /// The damaged pack, now deleted.
    pub old_pack: u64,
    /// The pack holding its surviving records, if any survived.
    pub new_pack: Option<u64>,
    pub records_kept: u64,
    pub records_dropped: u64,
    /// What was wrong with the old pack.
    pub reason: String,
}

/// An index entry repair removed because its record is damaged or lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedRecord {
    /// The chunk's digest (hex).
    pub digest: String,
    pub pack: u64,
    pub offset: u64,
    pub reason: String,
}

/// A restore point that still references chunks that are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncompletePoint {
    pub point: String,
    /// Chunks (data, tree nodes, captured files) it references that the store lacks.
    pub chunks_missing: u64,
    pub advice: String,
}

/// What [`Store::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    pub packs_rewritten: Vec<RewrittenPack>,
    pub records_dropped: Vec<DroppedRecord>,
    /// Wrong index entries pointed at an intact copy of their record.
    pub index_entries_repointed: u64,
    /// Catalog records replaced by their manifest (`name@id`).
    pub points_restored_from_manifest: Vec<String>,
    /// Manifest records written again from a sound catalog record (`name@id`).
    pub manifests_rewritten: Vec<String>,
    /// Catalog records that are damaged and have no manifest to restore them from.
    pub points_unrepairable: Vec<UnreadablePoint>,
    /// Restore points whose data is still incomplete.
    pub points_incomplete: Vec<IncompletePoint>,
}

impl RepairReport {
    /// Whether every restore point is complete after the repair.
    pub fn all_points_complete(&self) -> bool {
        self.points_unrepairable.is_empty() && self.points_incomplete.is_empty()
    }
}

impl Store {
    /// Rewrite every pack with damaged records, a damaged header or a lost tail, keeping the
    /// intact records the index points at; drop index entries of lost records (recording
    /// their digests in `damaged`); restore damaged catalog records from their manifests.
    /// Waits for running backups to finish (exclusive `writers.lock`).
    pub fn repair(&self) -> Result<RepairReport> {
        self.check_writable()?;
        let lock = self.writers_lock()?;
        lock.lock().map_err(|e| StoreError::io(self.root.join("writers.lock"), e))?;
        let _gc = self.gc_lock(true)?;
        self.finish_gc_deletions()?;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
        let mut report = RepairReport::default();

        let scan = self.scan_store(threads, &|_| {}, &|| false, None)?;
        let IndexCheck { mut damaged, wrong, .. } = {
            let rtxn = self.catalog.read()?;
            self.check_index(&rtxn, &scan, threads)?
        };
        if !wrong.is_empty() {
            report.index_entries_repointed = self.repoint_wrong_entries(&wrong, &scan, &mut damaged)?;
        }

        // The index entries of every pack to rewrite, and damaged entries elsewhere.
        let to_rewrite: BTreeSet<u64> = scan.packs.iter().filter(|(_, s)| s.needs_repair()).map(|(n, _)| *n).collect();
        let mut entries: BTreeMap<u64, Vec<(Digest, ChunkLoc)>> = BTreeMap::new();
        let mut stray: Vec<(Digest, ChunkLoc, String)> = Vec::new();
        {
            let rtxn = self.catalog.read()?;
            for item in self.catalog.chunks.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
                let (k, v) = item.map_err(|e| self.catalog.err(e))?;
                let (Ok(key), Some(loc)) = (<[u8; 32]>::try_from(k), ChunkLoc::decode(v)) else { continue };
                let digest = Digest(key);
                if to_rewrite.contains(&loc.pack) {
                    entries.entry(loc.pack).or_default().push((digest, loc));
                } else if let Some(reason) = damaged.get(&digest) {
                    stray.push((digest, loc, reason.clone()));
                }
            }
        }
        for number in &to_rewrite {
            let mut list = entries.remove(number).unwrap_or_default();
            list.sort_by_key(|(_, loc)| loc.offset);
            let summary = &scan.packs[number];
            let reason = if summary.missing {
                "the pack file is missing".to_string()
            } else if let Some(e) = &summary.header_error {
                format!("its header is damaged ({e})")
            } else if !summary.bad.is_empty() || !summary.skipped.is_empty() {
                "it holds damaged records".to_string()
            } else {
                format!("it ends at byte {}, the index says {}", summary.end, summary.info_len)
            };
            let rewritten = self.rewrite_pack(*number, &list, &damaged, summary.missing, reason, &mut report)?;
            report.packs_rewritten.push(rewritten);
        }
        if !stray.is_empty() {
            let mut wtxn = self.catalog.write()?;
            for (digest, loc, reason) in stray {
                self.catalog.chunks.delete(&mut wtxn, &digest.0).map_err(|e| self.catalog.err(e))?;
                self.catalog.mark_damaged(&mut wtxn, &digest, &reason)?;
                report.records_dropped.push(DroppedRecord {
                    digest: digest.to_hex(),
                    pack: loc.pack,
                    offset: loc.offset,
                    reason,
                });
            }
            wtxn.commit().map_err(|e| self.catalog.err(e))?;
        }
        self.repair_catalog(&mut report)?;
        report.points_incomplete = self.incomplete_points()?;
        Ok(report)
    }

    /// Find an intact record for each digest whose index entry is wrong and point the entry
    /// at it (removing the digest from `damaged`). Returns how many were repointed.
    fn repoint_wrong_entries(
        &self,
        wrong: &HashSet<Digest>,
        scan: &crate::verify::StoreScan,
        damaged: &mut HashMap<Digest, String>,
    ) -> Result<u64> {
        let mut found: HashMap<Digest, ChunkLoc> = HashMap::new();
        let mut numbers: Vec<u64> = scan.packs.iter().filter(|(_, s)| !s.missing).map(|(n, _)| *n).collect();
        numbers.sort();
        for number in numbers {
            let pack_scan = pack::scan_pack(&self.pack_path(number), true, self.keyring())?;
            for r in pack_scan.records.iter().filter(|r| r.intact && wrong.contains(&r.header.digest)) {
                found.entry(r.header.digest).or_insert(ChunkLoc::at(number, r.offset, &r.header));
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        let mut wtxn = self.catalog.write()?;
        for (digest, loc) in &found {
            self.catalog.chunks.put(&mut wtxn, &digest.0, &loc.encode()).map_err(|e| self.catalog.err(e))?;
            self.catalog.clear_damaged(&mut wtxn, digest)?;
            damaged.remove(digest);
        }
        wtxn.commit().map_err(|e| self.catalog.err(e))?;
        Ok(found.len() as u64)
    }

    /// Start a new pack in `tmp/`.
    fn start_pack(&self) -> Result<PackWriter> {
        let mut wtxn = self.catalog.write()?;
        let number = self.catalog.next_counter(&mut wtxn, "next_pack")?;
        wtxn.commit().map_err(|e| self.catalog.err(e))?;
        PackWriter::create(&self.tmp_pack_path(number), number, &self.store_id, now_unix(), self.format())
    }

    /// Steps 2-3 of the durability order: seal, rename into `packs/`, `fsync` the directory.
    fn finish_pack(&self, writer: PackWriter) -> Result<PackInfo> {
        let number = writer.number;
        let sealed = writer.seal()?;
        let final_path = self.pack_path(number);
        std::fs::rename(&sealed.path, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
        fsync_dir(&self.root.join("packs"))?;
        self.protect_pack(&final_path);
        Ok(sealed.info)
    }

    /// Copy the intact records `entries` of pack `number` into a new pack, then in one
    /// transaction repoint them, drop the rest and replace the pack-table entry; then delete
    /// the old pack file.
    fn rewrite_pack(
        &self,
        number: u64,
        entries: &[(Digest, ChunkLoc)],
        damaged: &HashMap<Digest, String>,
        missing: bool,
        reason: String,
        report: &mut RepairReport,
    ) -> Result<RewrittenPack> {
        let path = self.pack_path(number);
        let mut writer: Option<PackWriter> = None;
        let mut kept: Vec<(Digest, ChunkLoc)> = Vec::new();
        let mut dropped: Vec<(Digest, ChunkLoc, String)> = Vec::new();
        let file = if missing { None } else { Some(self.pack_file(number)?) };
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        for (digest, loc) in entries {
            if let Some(reason) = damaged.get(digest) {
                dropped.push((*digest, *loc, reason.clone()));
                continue;
            }
            let Some(file) = &file else {
                dropped.push((*digest, *loc, "its pack file is missing".into()));
                continue;
            };
            // Check again while copying: checksum and digest.
            let header = match pack::read_record_stored(file, &path, loc.offset, loc.stored_len, &mut scratch) {
                Ok(h) if h.digest == *digest => h,
                Ok(h) => {
                    dropped.push((*digest, *loc, format!("the record there holds chunk {}", h.digest)));
                    continue;
                }
                Err(e) => {
                    dropped.push((*digest, *loc, e.to_string()));
                    continue;
                }
            };
            let payload = &scratch[pack::RECORD_HEADER_LEN..];
            if let Err(e) = pack::check_content(self.keyring(), &header, payload, &mut out) {
                dropped.push((*digest, *loc, e));
                continue;
            }
            let w = match &mut writer {
                Some(w) => w,
                None => writer.insert(self.start_pack()?),
            };
            // A raw chunk may have been deferred (the source's PackInfo says only how much):
            // the copy stays eligible for the recompression pass.
            let chunk = EncodedChunk {
                digest: *digest,
                deferred: pack::maybe_deferred(&header),
                ..EncodedChunk::from_record(&header, payload.to_vec())
            };
            let at = w.append(&chunk)?;
            kept.push((*digest, ChunkLoc::at(w.number, at.offset, &chunk.header())));
        }
        let info = match writer {
            Some(w) => Some(self.finish_pack(w)?),
            None => None,
        };
        let catalog = &self.catalog;
        let mut wtxn = catalog.write()?;
        for (digest, loc) in &kept {
            catalog.chunks.put(&mut wtxn, &digest.0, &loc.encode()).map_err(|e| catalog.err(e))?;
        }
        for (digest, _, reason) in &dropped {
            catalog.chunks.delete(&mut wtxn, &digest.0).map_err(|e| catalog.err(e))?;
            catalog.mark_damaged(&mut wtxn, digest, reason)?;
        }
        catalog.packs.delete(&mut wtxn, &pack_key(number)).map_err(|e| catalog.err(e))?;
        if let Some(info) = &info {
            let value = serde_json::to_vec(info).expect("pack info serialises");
            catalog.packs.put(&mut wtxn, &pack_key(info.number), &value).map_err(|e| catalog.err(e))?;
        }
        wtxn.commit().map_err(|e| catalog.err(e))?;
        // Only now, with the survivors durable and indexed, may the old pack go.
        self.forget_pack_file(number);
        drop(file);
        self.remove_pack_file(&path)?;
        fsync_dir(&self.root.join("packs"))?;
        report.records_dropped.extend(dropped.iter().map(|(digest, loc, reason)| DroppedRecord {
            digest: digest.to_hex(),
            pack: loc.pack,
            offset: loc.offset,
            reason: reason.clone(),
        }));
        Ok(RewrittenPack {
            old_pack: number,
            new_pack: info.map(|i| i.number),
            records_kept: kept.len() as u64,
            records_dropped: dropped.len() as u64,
            reason,
        })
    }

    /// Restore damaged catalog records from their manifests, and write again the manifests
    /// of sound catalog records whose manifest record was lost.
    fn repair_catalog(&self, report: &mut RepairReport) -> Result<()> {
        let rtxn = self.catalog.read()?;
        let (points, unreadable) = self.list_in(&rtxn)?;
        // Sound records whose manifest is not indexed (it is in `damaged`): rewrite it.
        let mut lost_manifests: Vec<(String, Vec<u8>)> = Vec::new();
        for p in &points {
            let key = point_key(&p.name, p.id);
            if let Some(v) = self.catalog.points.get(&rtxn, &key).map_err(|e| self.catalog.err(e))? {
                if self.catalog.chunk(&rtxn, &self.keyring().digest(v))?.is_none() {
                    lost_manifests.push((p.spec(), v.to_vec()));
                }
            }
        }
        // Manifests for the damaged records, found by scanning the indexed manifests.
        let wanted: HashSet<(String, u64)> = unreadable.iter().map(|u| (u.name.clone(), u.id)).collect();
        let mut found: HashMap<(String, u64), Vec<u8>> = HashMap::new();
        if !wanted.is_empty() {
            let (mut scratch, mut out) = (Vec::new(), Vec::new());
            for item in self.catalog.chunks.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
                let (k, v) = item.map_err(|e| self.catalog.err(e))?;
                let (Ok(key), Some(loc)) = (<[u8; 32]>::try_from(k), ChunkLoc::decode(v)) else { continue };
                if loc.kind != RecordKind::Manifest {
                    continue;
                }
                let Ok(file) = self.pack_file(loc.pack) else { continue };
                let path = self.pack_path(loc.pack);
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
                match read {
                    Ok(h) if h.digest == Digest(key) => {}
                    _ => continue,
                }
                if let Ok(p) = serde_json::from_slice::<RestorePoint>(&out) {
                    let id = (p.name, p.id);
                    if wanted.contains(&id) {
                        found.insert(id, out.clone());
                    }
                }
            }
        }
        drop(rtxn);
        if !lost_manifests.is_empty() {
            let mut writer = self.start_pack()?;
            let mut locs = Vec::new();
            for (_, bytes) in &lost_manifests {
                let chunk = EncodedChunk::plain(
                    self.keyring().digest(bytes),
                    RecordKind::Manifest,
                    pack::Codec::Raw,
                    bytes.len() as u32,
                    bytes.clone(),
                )
                .sealed_for(self.keyring())?;
                let at = writer.append(&chunk)?;
                locs.push((
                    chunk.digest,
                    ChunkLoc {
                        pack: writer.number,
                        offset: at.offset,
                        stored_len: at.stored_len,
                        raw_len: chunk.raw_len,
                        kind: RecordKind::Manifest,
                        codec: pack::Codec::Raw,
                        foreign: false,
                    },
                ));
            }
            let info = self.finish_pack(writer)?;
            let mut wtxn = self.catalog.write()?;
            for (digest, loc) in &locs {
                self.catalog.chunks.put(&mut wtxn, &digest.0, &loc.encode()).map_err(|e| self.catalog.err(e))?;
                self.catalog.clear_damaged(&mut wtxn, digest)?;
            }
            let value = serde_json::to_vec(&info).expect("pack info serialises");
            self.catalog.packs.put(&mut wtxn, &pack_key(info.number), &value).map_err(|e| self.catalog.err(e))?;
            wtxn.commit().map_err(|e| self.catalog.err(e))?;
            report.manifests_rewritten = lost_manifests.into_iter().map(|(spec, _)| spec).collect();
        }
        let mut wtxn = self.catalog.write()?;
        for u in unreadable {
            match found.get(&(u.name.clone(), u.id)) {
                Some(bytes) => {
                    self.catalog
                        .points
                        .put(&mut wtxn, &point_key(&u.name, u.id), bytes)
                        .map_err(|e| self.catalog.err(e))?;
                    report.points_restored_from_manifest.push(u.spec());
                }
                None => report.points_unrepairable.push(UnreadablePoint {
                    reason: format!(
                        "{}; no manifest of it is left in the packs: back up again, or delete the point",
                        u.reason
                    ),
                    ..u
                }),
            }
        }
        wtxn.commit().map_err(|e| self.catalog.err(e))
    }

    /// Restore points referencing chunks that are not indexed or recorded as damaged.
    fn incomplete_points(&self) -> Result<Vec<IncompletePoint>> {
        let rtxn = self.catalog.read()?;
        let (points, _) = self.list_in(&rtxn)?;
        let usable = |d: &Digest| -> Result<bool> {
            Ok(self.catalog.chunk(&rtxn, d)?.is_some() && !self.catalog.is_damaged(&rtxn, d)?)
        };
        let mut out = Vec::new();
        for point in points {
            let mut missing = 0u64;
            for disk in &point.disks {
                if disk.height > 0 && !usable(&disk.root)? {
                    missing += 1;
                    continue;
                }
                let mut walker = self.walk(disk);
                let mut index = 0u64;
                loop {
                    match walker.next_entry() {
                        Ok(Some(d)) => {
                            if !d.is_zero() && !usable(&d)? {
                                missing += 1;
                            }
                            index += 1;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            missing += disk.chunks.saturating_sub(index).max(1);
                            break;
                        }
                    }
                }
            }
            for file in &point.files {
                if !usable(&file.digest)? {
                    missing += 1;
                }
            }
            if missing > 0 {
                out.push(IncompletePoint {
                    point: point.spec(),
                    chunks_missing: missing,
                    advice: format!(
                        "back up the same source again (its chunks are stored anew and heal {}), or delete the point",
                        point.spec()
                    ),
                });
            }
        }
        Ok(out)
    }
}
