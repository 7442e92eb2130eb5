//! Reading tapes back: restore a restore point (to files, one disk to a file or block
//! device, or into the staging store), verify a cartridge, rebuild the catalog from the
//! cartridges alone.
//!
//! Restore reads the point archive (index-tree nodes and manifest), works out which chunks
//! each disk needs, then reads the chunk archives cartridge by cartridge in set order,
//! jumping to the first needed block of each file, and writes every chunk wherever the
//! disks use it. Every record is decoded and re-hashed before it is used. A block that
//! cannot be read (medium error, damaged block) loses only the chunks whose records touch
//! it: they are reported as damaged byte ranges and everything else is restored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use drive::{ReadOutcome, TapeDrive};
use serde::{Deserialize, Serialize};
use store::{Digest, DiskIndex, EncodedChunk, PointFile, PointStats, RecordKind, RestorePoint, Store, TreeWalker};

use super::catalog::{CatalogUpdate, ChunkOnTape, MediumLocation, MediumRecord, PointCopy, SetRecord, TapeCatalog};
use super::format::{
    self, ArchiveEntry, ArchiveKind, BlockHeader, Record, RecordAssembler, SetLabel, TapeCatalog as TapeCatalogArchive,
    TapeRecordKind,
};
use super::library::Library;
use super::{read_identity, TapeError, TapeIdentity};
use crate::Progress;

/// Unreadable blocks in a row after which a file is given up.
const MAX_BAD_BLOCKS_IN_A_ROW: u32 = 16;

/// How one tape file ended.
#[derive(Debug, Default)]
struct FileEnd {
    /// The archive's last block was seen (else it continues on the next cartridge).
    saw_last: bool,
    /// Ended at end of data instead of a filemark (an interrupted write).
    at_end_of_data: bool,
    /// The reader asked to stop early.
    stopped: bool,
    /// Problems met (unreadable or damaged blocks, malformed records).
    problems: Vec<String>,
    /// Sequence of the first block read in this file.
    first_seq: Option<u64>,
    kind: Option<ArchiveKind>,
    archive_id: Option<[u8; 16]>,
    part: u32,
}

/// Reads the rest of the tape file at the head, handing each complete record (with the
/// block, counted in the file, where it starts) to `on_record`; `on_record` returns false to
/// stop reading.
fn read_file(
    drive: &mut TapeDrive,
    first_block_in_file: u64,
    on_record: &mut dyn FnMut(Record, u64) -> Result<bool, TapeError>,
) -> Result<FileEnd, TapeError> {
    let mut buf = vec![0u8; format::MAX_BLOCK];
    let mut asm = RecordAssembler::new();
    let mut end = FileEnd::default();
    let mut next_seq: Option<u64> = None;
    let mut bad_in_a_row = 0u32;
    let mut block_in_file = first_block_in_file;
    loop {
        let outcome = match drive.read_block(&mut buf) {
            Ok(o) => o,
            Err(e @ (drive::DriveError::Medium { .. } | drive::DriveError::BlockTooLarge { .. })) => {
                end.problems.push(format!("block {block_in_file} of the file is unreadable: {e}"));
                let mut pushed = format::Pushed::default();
                asm.gap(next_seq.unwrap_or(0), &mut pushed);
                next_seq = next_seq.map(|s| s + 1);
                block_in_file += 1;
                bad_in_a_row += 1;
                if bad_in_a_row >= MAX_BAD_BLOCKS_IN_A_ROW {
                    end.problems
                        .push(format!("{bad_in_a_row} unreadable blocks in a row: the rest of this file was skipped"));
                    end.stopped = true;
                    return Ok(end);
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match outcome {
            ReadOutcome::Filemark => break,
            ReadOutcome::EndOfData => {
                end.at_end_of_data = true;
                break;
            }
            ReadOutcome::Data(n) => {
                let (h, payload): (BlockHeader, &[u8]) = match format::decode_block(&buf[..n]) {
                    Ok(v) => v,
                    Err(e) => {
                        end.problems.push(format!("block {block_in_file} of the file: {e}"));
                        let mut pushed = format::Pushed::default();
                        asm.gap(next_seq.unwrap_or(0), &mut pushed);
                        next_seq = next_seq.map(|s| s + 1);
                        block_in_file += 1;
                        continue;
                    }
                };
                bad_in_a_row = 0;
                if end.first_seq.is_none() {
                    end.first_seq = Some(h.seq - (block_in_file - first_block_in_file).min(h.seq));
                    end.kind = Some(h.kind);
                    end.archive_id = Some(h.archive_id);
                    end.part = h.part;
                }
                let base = h.seq - block_in_file.min(h.seq);
                next_seq = Some(h.seq + 1);
                block_in_file += 1;
                if matches!(h.kind, ArchiveKind::Label | ArchiveKind::SetLabel) {
                    // One-block JSON files, not record streams: the block digest checked them.
                    end.saw_last |= h.last;
                    continue;
                }
                let pushed = asm.push(&h, payload);
                for e in pushed.errors {
                    end.problems.push(e.to_string());
                }
                for r in pushed.records {
                    let at = r.start_seq - base.min(r.start_seq);
                    if !on_record(r, at)? {
                        end.stopped = true;
                        return Ok(end);
                    }
                }
                if h.last {
                    end.saw_last = true;
                }
            }
        }
    }
    if let Some(e) = asm.finish() {
        end.problems.push(e.to_string());
    }
    Ok(end)
}

/// A byte range of a restored disk (or a file) that could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedExtent {
    pub disk: String,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// Where a tape restore writes.
#[derive(Debug)]
pub enum TapeRestoreTarget<'a> {
    /// Every disk as `<dir>/<label>.raw`, plus the point's configuration files.
    Directory(PathBuf),
    /// One disk (label or index) into a file or block device.
    Disk { disk: String, path: PathBuf },
    /// Back into the staging store, as a new restore point of the same name.
    Import(&'a Store),
}

/// What a tape restore did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TapeRestoreReport {
    pub point: String,
    pub media_set: String,
    pub tapes: Vec<String>,
    pub bytes_restored: u64,
    pub outputs: Vec<String>,
    pub damaged: Vec<DamagedExtent>,
    /// For an import: the new restore point in the store.
    pub imported_as: Option<String>,
    pub problems: Vec<String>,
}

/// Finds the copy to restore for `spec` ("name@id", or "name" for the newest).
pub fn find_copy(cat: &TapeCatalog, spec: &str) -> Result<PointCopy, TapeError> {
    let copies: Vec<PointCopy> = match spec.split_once('@') {
        Some(_) => cat.point_copies(spec)?,
        None => {
            let all: Vec<PointCopy> = cat.all_points()?.into_iter().filter(|p| p.point.name == spec).collect();
            let newest = all.iter().map(|p| p.point.id).max();
            all.into_iter().filter(|p| Some(p.point.id) == newest).collect()
        }
    };
    copies.into_iter().max_by_key(|c| c.written_unix).ok_or_else(|| {
        TapeError::Catalog(format!(
            "no copy of restore point {spec} is on tape according to the catalog; list what is with \
             `rackvault tape catalog`, or rebuild the catalog from the cartridges with `rackvault tape catalog --rebuild`"
        ))
    })
}

enum Sink<'a> {
    Files { disks: Vec<Option<(File, bool)>> },
    Import { session: Box<store::BackupSession<'a>> },
}

/// Restores `spec` from tape.
pub fn restore_from_tape(
    cat: &TapeCatalog,
    lib: &mut Library,
    spec: &str,
    target: TapeRestoreTarget<'_>,
    progress: &dyn Progress,
) -> Result<TapeRestoreReport, TapeError> {
    if let TapeRestoreTarget::Import(store) = &target {
        if store.keyring().is_encrypted() {
            return Err(TapeError::Invalid(
                "importing from tape into an encrypted store is not supported yet (tape records carry plain chunk \
                 ids); restore to files, or import into an unencrypted store"
                    .into(),
            ));
        }
    }
    let copy = find_copy(cat, spec)?;
    let set = cat
        .set(&copy.set_id)?
        .ok_or_else(|| TapeError::Catalog(format!("media set {} is not in the catalog; rebuild it", copy.set_id)))?;
    let set_id = format::unhex16(&set.set_id).ok_or_else(|| TapeError::Catalog("bad set id".into()))?;
    let point = copy.point.clone();
    let mut report = TapeRestoreReport {
        point: point.spec(),
        media_set: set.set_id.clone(),
        tapes: Vec::new(),
        bytes_restored: 0,
        outputs: Vec::new(),
        damaged: Vec::new(),
        imported_as: None,
        problems: Vec::new(),
    };

    // 1. The point archive: index-tree nodes and the manifest.
    let mut nodes: HashMap<Digest, Record> = HashMap::new();
    let mut manifest: Option<RestorePoint> = None;
    let mut barcode = copy.barcode.clone();
    let mut file = copy.file;
    loop {
        let mut tape = lib.load(&barcode)?;
        report.tapes.push(barcode.clone());
        tape.drive.locate(file, 0)?;
        let mut on_record = |r: Record, _at: u64| -> Result<bool, TapeError> {
            let mut raw = Vec::new();
            if let Err(e) = r.decode_checked(&mut raw) {
                return Err(TapeError::Medium { barcode: barcode.clone(), detail: e.to_string() });
            }
            match r.header.kind {
                TapeRecordKind::Tree => {
                    nodes.insert(r.header.digest, r);
                }
                TapeRecordKind::Manifest => {
                    manifest = Some(serde_json::from_slice(&raw).map_err(|e| TapeError::Medium {
                        barcode: barcode.clone(),
                        detail: format!("the restore point manifest on tape does not parse: {e}"),
                    })?);
                }
                _ => {}
            }
            Ok(true)
        };
        let end = read_file(&mut tape.drive, 0, &mut on_record)?;
        lib.release(tape)?;
        report.problems.extend(end.problems.iter().map(|p| format!("{barcode} file {file}: {p}")));
        if end.saw_last || manifest.is_some() {
            break;
        }
        // The archive continues as the first archive of the set's next cartridge.
        let seq = set.media.iter().position(|b| *b == barcode).map(|i| i + 1);
        match seq.and_then(|s| set.media.get(s)) {
            Some(b) => {
                barcode = b.clone();
                file = format::FIRST_ARCHIVE_FILE;
            }
            None => break,
        }
    }
    let manifest = manifest.ok_or_else(|| TapeError::Medium {
        barcode: copy.barcode.clone(),
        detail: format!("the point archive of {} at file {} has no readable manifest", point.spec(), copy.file),
    })?;
    if manifest.spec() != point.spec() {
        return Err(TapeError::Catalog(format!(
            "the catalog says {} is at {} file {}, but the tape holds {}; rebuild the catalog",
            point.spec(),
            copy.barcode,
            copy.file,
            manifest.spec()
        )));
    }

    // 2. Which chunk goes where.
    let mut uses: HashMap<Digest, Vec<(usize, u64)>> = HashMap::new();
    let mut zero_chunks: Vec<(usize, u64)> = Vec::new();
    let disk_filter: Option<usize> = match &target {
        TapeRestoreTarget::Disk { disk, .. } => Some(pick_disk(&manifest, disk)?),
        _ => None,
    };
    for (di, disk) in manifest.disks.iter().enumerate() {
        if disk_filter.is_some_and(|f| f != di) {
            continue;
        }
        let walker = TreeWalker::new(disk.root, disk.height, |d| {
            let r = nodes.get(d).ok_or(store::StoreError::MissingChunk { digest: *d })?;
            let mut raw = Vec::new();
            r.decode_checked(&mut raw).map_err(|e| store::StoreError::Invalid(e.to_string()))?;
            Ok(raw)
        });
        for (i, leaf) in walker.enumerate() {
            let leaf = leaf.map_err(|e| TapeError::Medium {
                barcode: copy.barcode.clone(),
                detail: format!("index of disk {} is incomplete on tape: {e}", disk.label),
            })?;
            if leaf.is_zero() {
                zero_chunks.push((di, i as u64));
            } else {
                uses.entry(leaf).or_default().push((di, i as u64));
            }
        }
    }
    let file_index_base = manifest.disks.len();
    if disk_filter.is_none() {
        for (fi, f) in manifest.files.iter().enumerate() {
            uses.entry(f.digest).or_default().push((file_index_base + fi, 0));
        }
    }

    // 3. Where each chunk is on tape.
    let mut by_file: BTreeMap<(u32, u64), Vec<(u64, Digest)>> = BTreeMap::new();
    let mut missing: Vec<(Digest, String)> = Vec::new();
    for d in uses.keys() {
        match cat.chunk(&set_id, d)? {
            Some(ChunkOnTape { seq, file, block }) => by_file.entry((seq, file)).or_default().push((block, *d)),
            None => missing.push((*d, "the catalog has no tape location for this chunk".into())),
        }
    }
    let total: u64 = manifest
        .disks
        .iter()
        .enumerate()
        .filter(|(i, _)| disk_filter.is_none_or(|f| f == *i))
        .map(|(_, d)| d.size)
        .sum();
    progress.start("restore from tape", total);

    // 4. Outputs.
    let mut sink = match &target {
        TapeRestoreTarget::Directory(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| TapeError::Io { path: dir.display().to_string(), source: e })?;
            let mut disks = Vec::new();
            for d in &manifest.disks {
                let path = dir.join(format!("{}.raw", crate::disk_file_name(&d.label)));
                disks.push(Some(open_output(&path, d.size)?));
                report.outputs.push(path.display().to_string());
            }
            Sink::Files { disks }
        }
        TapeRestoreTarget::Disk { path, .. } => {
            let di = disk_filter.expect("set for Disk");
            let mut disks: Vec<Option<(File, bool)>> = manifest.disks.iter().map(|_| None).collect();
            disks[di] = Some(open_output(path, manifest.disks[di].size)?);
            report.outputs.push(path.display().to_string());
            Sink::Files { disks }
        }
        TapeRestoreTarget::Import(store) => {
            let mut session = store.begin_backup()?;
            for r in nodes.values() {
                session.insert(&EncodedChunk {
                    digest: r.header.digest,
                    kind: RecordKind::Tree,
                    codec: r.header.codec,
                    cipher: store::Cipher::None,
                    raw_len: r.header.raw_len,
                    payload: r.payload.clone(),
                    foreign: false,
                    deferred: false,
                })?;
            }
            Sink::Import { session: Box::new(session) }
        }
    };
    let mut file_contents: HashMap<Digest, Vec<u8>> = HashMap::new();
    let zeros = vec![0u8; manifest.disks.iter().map(|d| d.chunk_size as usize).max().unwrap_or(0)];
    if let Sink::Files { disks } = &sink {
        // Zero chunks are holes in a new file, but must be written on a device or an
        // existing file that may hold old data.
        for (di, i) in &zero_chunks {
            if let Some((f, true)) = &disks[*di] {
                let d = &manifest.disks[*di];
                let off = i * u64::from(d.chunk_size);
                let len = (u64::from(d.chunk_size)).min(d.size - off) as usize;
                f.write_all_at(&zeros[..len], off).map_err(|e| TapeError::Io { path: d.label.clone(), source: e })?;
            }
        }
    }

    // 5. Chunk archives, cartridge by cartridge.
    // Cartridge place in the set -> (file, [(block, chunk)]).
    type FilesWanted = Vec<(u64, Vec<(u64, Digest)>)>;
    let mut by_seq: BTreeMap<u32, FilesWanted> = BTreeMap::new();
    for ((seq, file), mut v) in by_file {
        v.sort();
        by_seq.entry(seq).or_default().push((file, v));
    }
    let mut raw = Vec::new();
    for (seq, files) in by_seq {
        let Some(barcode) = set.media.get(seq as usize).cloned() else {
            for (_, v) in files {
                missing.extend(v.into_iter().map(|(_, d)| (d, format!("cartridge {} of the set is unknown", seq + 1))));
            }
            continue;
        };
        let mut tape = match lib.load(&barcode) {
            Ok(t) => t,
            Err(e) => {
                for (_, v) in files {
                    missing.extend(
                        v.into_iter().map(|(_, d)| (d, format!("cartridge {barcode} could not be loaded: {e}"))),
                    );
                }
                continue;
            }
        };
        if !report.tapes.contains(&barcode) {
            report.tapes.push(barcode.clone());
        }
        for (file, wanted) in files {
            let mut pending: HashSet<Digest> = wanted.iter().map(|(_, d)| *d).collect();
            let first_block = wanted.first().map(|(b, _)| *b).unwrap_or(0);
            if let Err(e) = tape.drive.locate(file, first_block) {
                missing.extend(pending.drain().map(|d| (d, format!("{barcode} file {file}: could not position: {e}"))));
                continue;
            }
            let mut on_record = |r: Record, _at: u64| -> Result<bool, TapeError> {
                if progress.cancelled() {
                    return Err(crate::EngineError::Cancelled.into());
                }
                if !pending.remove(&r.header.digest) {
                    return Ok(true);
                }
                if let Err(e) = r.decode_checked(&mut raw) {
                    missing.push((r.header.digest, format!("{barcode} file {file}: {e}")));
                    return Ok(!pending.is_empty());
                }
                let targets = &uses[&r.header.digest];
                match &mut sink {
                    Sink::Files { disks } => {
                        for (idx, chunk_no) in targets {
                            if *idx >= file_index_base {
                                file_contents.insert(r.header.digest, raw.clone());
                                continue;
                            }
                            let Some((f, _)) = &disks[*idx] else { continue };
                            let d = &manifest.disks[*idx];
                            let off = chunk_no * u64::from(d.chunk_size);
                            let len = raw.len().min((d.size - off) as usize);
                            f.write_all_at(&raw[..len], off)
                                .map_err(|e| TapeError::Io { path: d.label.clone(), source: e })?;
                            progress.advance(len as u64);
                            report.bytes_restored += len as u64;
                        }
                    }
                    Sink::Import { session } => {
                        session.insert(&EncodedChunk {
                            digest: r.header.digest,
                            kind: RecordKind::Data,
                            codec: r.header.codec,
                            cipher: store::Cipher::None,
                            raw_len: r.header.raw_len,
                            payload: r.payload,
                            foreign: false,
                            deferred: false,
                        })?;
                        let n = raw.len() as u64 * targets.len() as u64;
                        progress.advance(n);
                        report.bytes_restored += n;
                    }
                }
                Ok(!pending.is_empty())
            };
            let end = read_file(&mut tape.drive, first_block, &mut on_record)?;
            report.problems.extend(end.problems.iter().map(|p| format!("{barcode} file {file}: {p}")));
            let why = if end.problems.is_empty() {
                format!("{barcode} file {file}: the chunk is not in the archive where the catalog says")
            } else {
                format!("{barcode} file {file}: unreadable ({})", end.problems[0])
            };
            missing.extend(pending.drain().map(|d| (d, why.clone())));
        }
        lib.release(tape)?;
    }
    progress.finish();

    // 6. Damage report, by byte range.
    for (d, reason) in &missing {
        for (idx, chunk_no) in uses.get(d).into_iter().flatten() {
            if *idx >= file_index_base {
                let f = &manifest.files[idx - file_index_base];
                report.damaged.push(DamagedExtent {
                    disk: f.name.clone(),
                    offset: 0,
                    len: f.size,
                    reason: reason.clone(),
                });
                continue;
            }
            let disk = &manifest.disks[*idx];
            let off = chunk_no * u64::from(disk.chunk_size);
            let len = u64::from(disk.chunk_size).min(disk.size - off);
            report.damaged.push(DamagedExtent { disk: disk.label.clone(), offset: off, len, reason: reason.clone() });
        }
    }
    report.damaged.sort_by(|a, b| (&a.disk, a.offset).cmp(&(&b.disk, b.offset)));
    merge_extents(&mut report.damaged);

    // 7. Finish the output.
    match sink {
        Sink::Files { disks } => {
            for (f, _) in disks.into_iter().flatten() {
                f.sync_all().map_err(|e| TapeError::Io { path: "restored disk".into(), source: e })?;
            }
            if let TapeRestoreTarget::Directory(dir) = &target {
                for f in &manifest.files {
                    if let Some(c) = file_contents.get(&f.digest) {
                        let path = dir.join(&f.name);
                        std::fs::write(&path, c)
                            .map_err(|e| TapeError::Io { path: path.display().to_string(), source: e })?;
                        report.outputs.push(path.display().to_string());
                    }
                }
            }
        }
        Sink::Import { mut session } => {
            if !report.damaged.is_empty() {
                return Err(TapeError::Medium {
                    barcode: report.tapes.join(","),
                    detail: format!(
                        "{} range(s) of {} could not be read from tape, so it was not imported (nothing was \
                         changed in the store); first: {} at {} ({})",
                        report.damaged.len(),
                        manifest.spec(),
                        report.damaged[0].disk,
                        report.damaged[0].offset,
                        report.damaged[0].reason
                    ),
                });
            }
            for f in &manifest.files {
                session.add_file_record(PointFile { name: f.name.clone(), size: f.size, digest: f.digest })?;
            }
            let disks: Vec<DiskIndex> = manifest.disks.clone();
            let stats = PointStats { bytes_logical: manifest.stats.bytes_logical, ..Default::default() };
            let p = session.commit(&manifest.name, disks, stats)?;
            report.imported_as = Some(p.spec());
        }
    }
    Ok(report)
}

fn pick_disk(p: &RestorePoint, disk: &str) -> Result<usize, TapeError> {
    if let Some(i) = p.disks.iter().position(|d| d.label == disk) {
        return Ok(i);
    }
    if let Ok(i) = disk.parse::<usize>() {
        if i < p.disks.len() {
            return Ok(i);
        }
    }
    Err(TapeError::Invalid(format!(
        "restore point {} has no disk {disk:?}; its disks are: {}",
        p.spec(),
        p.disks.iter().map(|d| d.label.as_str()).collect::<Vec<_>>().join(", ")
    )))
}

/// Opens a restore output. Returns the file and whether zero chunks must be written
/// (a block device or a file that already had content).
fn open_output(path: &Path, size: u64) -> Result<(File, bool), TapeError> {
    let io = |e| TapeError::Io { path: path.display().to_string(), source: e };
    let meta = std::fs::metadata(path).ok();
    if meta.as_ref().is_some_and(|m| m.file_type().is_block_device()) {
        let f = OpenOptions::new().write(true).open(path).map_err(io)?;
        return Ok((f, true));
    }
    // A restored disk holds the guest's data: readable by the restoring user only.
    let f = std::os::unix::fs::OpenOptionsExt::mode(OpenOptions::new().write(true).create(true).truncate(true), 0o600)
        .open(path)
        .map_err(io)?;
    f.set_len(size).map_err(io)?;
    Ok((f, false))
}

fn merge_extents(v: &mut Vec<DamagedExtent>) {
    let mut out: Vec<DamagedExtent> = Vec::with_capacity(v.len());
    for e in v.drain(..) {
        if let Some(last) = out.last_mut() {
            if last.disk == e.disk && last.offset + last.len == e.offset && last.reason == e.reason {
                last.len += e.len;
                continue;
            }
        }
        out.push(e);
    }
    *v = out;
}

/// What `verify_tape` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyTapeReport {
    pub barcode: String,
    pub files: u64,
    pub records: u64,
    pub bytes: u64,
    pub problems: Vec<String>,
}

/// Reads cartridge `barcode` end to end, checking every block's and every record's digest.
pub fn verify_tape(lib: &mut Library, barcode: &str, progress: &dyn Progress) -> Result<VerifyTapeReport, TapeError> {
    let mut tape = lib.load(barcode)?;
    let mut report = VerifyTapeReport { barcode: barcode.into(), files: 0, records: 0, bytes: 0, problems: Vec::new() };
    let result = (|| -> Result<(), TapeError> {
        match read_identity(&mut tape)? {
            TapeIdentity::Ours(_) => {}
            other => {
                return Err(TapeError::Medium {
                    barcode: barcode.into(),
                    detail: format!("holds no rackvault label ({other:?}); nothing to verify"),
                })
            }
        }
        tape.drive.rewind()?;
        progress.start("verify tape", 0);
        let mut raw = Vec::new();
        for file in 0.. {
            let mut problems = Vec::new();
            let mut on_record = |r: Record, _at: u64| -> Result<bool, TapeError> {
                if progress.cancelled() {
                    return Err(crate::EngineError::Cancelled.into());
                }
                report.records += 1;
                report.bytes += r.payload.len() as u64;
                progress.advance(r.payload.len() as u64);
                if let Err(e) = r.decode_checked(&mut raw) {
                    problems.push(e.to_string());
                }
                Ok(true)
            };
            let end = read_file(&mut tape.drive, 0, &mut on_record)?;
            report.problems.extend(problems.into_iter().chain(end.problems).map(|p| format!("file {file}: {p}")));
            if end.at_end_of_data {
                if end.first_seq.is_some() {
                    report.problems.push(format!("file {file}: ends without a filemark (an interrupted write)"));
                }
                break;
            }
            report.files += 1;
        }
        progress.finish();
        Ok(())
    })();
    let released = lib.release(tape);
    result?;
    released?;
    Ok(report)
}

/// What `rebuild_catalog` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub cartridges_scanned: Vec<String>,
    pub labelled: Vec<String>,
    pub blank_or_foreign: Vec<String>,
    pub media_sets: usize,
    pub restore_points: Vec<String>,
    pub chunks: u64,
    /// Archives after the last catalog archive of a cartridge, read record by record.
    pub archives_scanned_in_full: u64,
    pub problems: Vec<String>,
}

/// One cartridge's content as read back.
struct ScannedTape {
    medium: MediumRecord,
    set: Option<SetLabel>,
    archives: Vec<ArchiveEntry>,
    written_unix: u64,
}

/// Rebuilds the catalog's content by reading every labelled cartridge in the library
/// (`only`: just these barcodes). The catalog's media, sets and locations are replaced;
/// pools are kept.
pub fn rebuild_catalog(
    cat: &TapeCatalog,
    lib: &mut Library,
    only: Option<&[String]>,
    progress: &dyn Progress,
) -> Result<RebuildReport, TapeError> {
    let inv = lib.inventory()?;
    let mut report = RebuildReport::default();
    let mut scanned = Vec::new();
    let barcodes: Vec<(String, MediumLocation)> = inv
        .all()
        .filter(|e| !e.is_cleaning())
        .filter_map(|e| {
            let b = e.barcode.clone()?;
            let loc = match e.kind {
                changer::ElementKind::Slot => MediumLocation::Slot(e.address),
                changer::ElementKind::Drive => MediumLocation::Drive(e.address),
                changer::ElementKind::MailSlot => MediumLocation::MailSlot(e.address),
                _ => return None,
            };
            Some((b, loc))
        })
        .filter(|(b, _)| only.is_none_or(|o| o.contains(b)))
        .collect();
    progress.start("scan cartridges", barcodes.len() as u64);
    for (barcode, location) in barcodes {
        if progress.cancelled() {
            return Err(crate::EngineError::Cancelled.into());
        }
        report.cartridges_scanned.push(barcode.clone());
        match scan_tape(lib, &barcode, location, &mut report) {
            Ok(Some(t)) => {
                report.labelled.push(barcode.clone());
                scanned.push(t);
            }
            Ok(None) => report.blank_or_foreign.push(barcode.clone()),
            Err(e) => report.problems.push(format!("{barcode}: {e}")),
        }
        progress.advance(1);
    }
    progress.finish();

    // Assemble sets and locations.
    let mut update = CatalogUpdate::default();
    let mut sets: BTreeMap<String, SetRecord> = BTreeMap::new();
    let mut seqs: HashMap<String, Vec<(u32, String)>> = HashMap::new();
    for t in &scanned {
        if let Some(s) = &t.set {
            let e = sets.entry(s.set_id.clone()).or_insert_with(|| SetRecord {
                set_id: s.set_id.clone(),
                pool: s.pool.clone(),
                created_unix: s.set_created_unix,
                last_written_unix: t.written_unix,
                media: Vec::new(),
            });
            e.last_written_unix = e.last_written_unix.max(t.written_unix);
            seqs.entry(s.set_id.clone()).or_default().push((s.seq, t.medium.barcode.clone()));
        }
    }
    for (id, mut v) in seqs {
        v.sort();
        let set = sets.get_mut(&id).expect("inserted above");
        for (i, (seq, b)) in v.iter().enumerate() {
            if *seq as usize != i {
                report.problems.push(format!(
                    "media set {id}: cartridge number {} is missing from the library (found {b} as number {})",
                    i + 1,
                    seq + 1
                ));
                break;
            }
            set.media.push(b.clone());
        }
    }
    // Part 0 of every archive, for point archives that span cartridges.
    let mut starts: HashMap<String, (String, u64)> = HashMap::new();
    for t in &scanned {
        for a in t.archives.iter().filter(|a| a.part == 0) {
            starts.insert(a.archive_id.clone(), (t.medium.barcode.clone(), a.file));
        }
    }
    for t in scanned {
        let mut medium = t.medium;
        if let Some(s) = &t.set {
            let set = &sets[&s.set_id];
            medium.full = set.media.iter().position(|b| *b == medium.barcode).is_some_and(|i| i + 1 < set.media.len());
            let set_id = format::unhex16(&s.set_id).unwrap_or_default();
            for a in &t.archives {
                for (hex, block) in &a.chunks {
                    if let Some(d) = Digest::from_hex(hex) {
                        update.chunks.push((set_id, d, ChunkOnTape { seq: s.seq, file: a.file, block: *block }));
                        report.chunks += 1;
                    }
                }
                if let Some(p) = &a.point {
                    let (barcode, file) =
                        starts.get(&a.archive_id).cloned().unwrap_or((medium.barcode.clone(), a.file));
                    report.restore_points.push(p.spec());
                    update.points.push(PointCopy {
                        set_id: s.set_id.clone(),
                        barcode,
                        file,
                        written_unix: t.written_unix,
                        point: p.clone(),
                    });
                }
            }
        }
        update.archives.extend(t.archives.into_iter().map(|a| (medium.barcode.clone(), a)));
        update.media.push(medium);
    }
    report.media_sets = sets.len();
    update.sets = sets.into_values().collect();
    cat.clear_content()?;
    cat.apply(&update)?;
    Ok(report)
}

/// Reads one cartridge's labels and archives. `None`: not a rackvault cartridge.
fn scan_tape(
    lib: &mut Library,
    barcode: &str,
    location: MediumLocation,
    report: &mut RebuildReport,
) -> Result<Option<ScannedTape>, TapeError> {
    let mut tape = lib.load(barcode)?;
    let result = (|| -> Result<Option<ScannedTape>, TapeError> {
        let label = match read_identity(&mut tape)? {
            TapeIdentity::Ours(l) => l,
            _ => return Ok(None),
        };
        let mut t = ScannedTape {
            medium: MediumRecord {
                barcode: barcode.into(),
                medium_id: label.medium_id.clone(),
                pool: label.pool.clone(),
                labelled_unix: label.labelled_unix,
                worm: tape.drive.is_worm(),
                set: None,
                next_file: format::SET_LABEL_FILE,
                full: false,
                bytes_written: 0,
                last_written_unix: label.labelled_unix,
                location,
            },
            set: None,
            archives: Vec::new(),
            written_unix: label.labelled_unix,
        };
        // Head is after the label block; the next read is its filemark.
        let mut buf = vec![0u8; format::MAX_BLOCK];
        if tape.drive.read_block(&mut buf)? != ReadOutcome::Filemark {
            report.problems.push(format!("{barcode}: the label file holds more than the label"));
            tape.drive.locate(format::SET_LABEL_FILE, 0)?;
        }
        // File 1: the set label.
        match tape.drive.read_block(&mut buf)? {
            ReadOutcome::Data(n) => {
                let (h, p) = format::decode_block(&buf[..n])
                    .map_err(|e| TapeError::Medium { barcode: barcode.into(), detail: format!("set label: {e}") })?;
                if h.kind != ArchiveKind::SetLabel {
                    return Err(TapeError::Medium {
                        barcode: barcode.into(),
                        detail: "file 1 is not a set label".into(),
                    });
                }
                let s: SetLabel = serde_json::from_slice(p)
                    .map_err(|e| TapeError::Medium { barcode: barcode.into(), detail: format!("set label: {e}") })?;
                if s.medium_id != label.medium_id {
                    // Relabelled after the set took it: the set label is stale.
                    return Ok(Some(t));
                }
                t.medium.set = Some((s.set_id.clone(), s.seq));
                t.medium.next_file = format::FIRST_ARCHIVE_FILE;
                t.set = Some(s);
                if tape.drive.read_block(&mut buf)? != ReadOutcome::Filemark {
                    tape.drive.locate(format::FIRST_ARCHIVE_FILE, 0)?;
                }
            }
            _ => return Ok(Some(t)),
        }
        // Files 2..: a first pass reads each file's first block only, and catalogs in full.
        let mut last_catalog: Option<(u64, TapeCatalogArchive)> = None;
        let mut complete_files = Vec::new();
        let mut file = format::FIRST_ARCHIVE_FILE;
        loop {
            match tape.drive.read_block(&mut buf)? {
                ReadOutcome::EndOfData => break,
                ReadOutcome::Filemark => {
                    file += 1;
                    continue;
                }
                ReadOutcome::Data(n) => {
                    let kind = format::decode_block(&buf[..n]).map(|(h, _)| h.kind).ok();
                    if kind == Some(ArchiveKind::Catalog) {
                        tape.drive.locate(file, 0)?;
                        let mut found: Option<TapeCatalogArchive> = None;
                        let mut on_record = |r: Record, _| -> Result<bool, TapeError> {
                            let mut raw = Vec::new();
                            if r.decode_checked(&mut raw).is_ok() {
                                found = serde_json::from_slice(&raw).ok();
                            }
                            Ok(true)
                        };
                        let end = read_file(&mut tape.drive, 0, &mut on_record)?;
                        if end.at_end_of_data {
                            break;
                        }
                        if let Some(c) = found {
                            last_catalog = Some((file, c));
                        }
                        complete_files.push(file);
                        file += 1;
                    } else {
                        // Past the rest of the file (its filemark included).
                        match tape.drive.space_filemarks(1) {
                            Ok(()) => {
                                complete_files.push(file);
                                file += 1;
                            }
                            // No filemark before end of data: an interrupted archive.
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        let covered_until = match &last_catalog {
            Some((f, c)) => {
                t.archives = c.archives.clone();
                t.written_unix = c.written_unix;
                f + 1
            }
            None => format::FIRST_ARCHIVE_FILE,
        };
        // Archives after the last catalog (a job that did not finish): read them in full.
        for f in complete_files.into_iter().filter(|f| *f >= covered_until) {
            tape.drive.locate(f, 0)?;
            let mut chunks = Vec::new();
            let mut point = None;
            let mut on_record = |r: Record, at: u64| -> Result<bool, TapeError> {
                match r.header.kind {
                    TapeRecordKind::Data | TapeRecordKind::Tree => chunks.push((r.header.digest.to_hex(), at)),
                    TapeRecordKind::Manifest => {
                        let mut raw = Vec::new();
                        if r.decode_checked(&mut raw).is_ok() {
                            point = serde_json::from_slice::<RestorePoint>(&raw).ok();
                        }
                    }
                    _ => {}
                }
                Ok(true)
            };
            let end = read_file(&mut tape.drive, 0, &mut on_record)?;
            report.archives_scanned_in_full += 1;
            report.problems.extend(end.problems.iter().map(|p| format!("{barcode} file {f}: {p}")));
            let Some(kind) = end.kind else { continue };
            if kind == ArchiveKind::Catalog {
                continue;
            }
            t.archives.push(ArchiveEntry {
                file: f,
                kind,
                archive_id: format::hex(&end.archive_id.unwrap_or_default()),
                part: end.part,
                bytes: 0,
                // Point archives' tree nodes are not chunks of the chunk table.
                chunks: if kind == ArchiveKind::Chunks { chunks } else { Vec::new() },
                point,
            });
        }
        t.medium.next_file = file.max(covered_until);
        Ok(Some(t))
    })();
    let released = lib.release(tape);
    let t = result?;
    released?;
    Ok(t)
}
