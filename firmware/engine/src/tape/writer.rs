//! Appends archives to a media set, one cartridge at a time.
//!
//! A [`SetWriter`] owns the cartridge being written. Records go through a
//! [`BlockPacker`](super::format::BlockPacker) into tape blocks. When a block write reports
//! early warning, the record in progress is finished on the same cartridge, the archive
//! part is closed (no `last` flag: it continues), the cartridge gets its catalog archive,
//! the catalog database is updated for it, and the archive continues as the next part on
//! the set's next cartridge. Zero records ever straddle cartridges.
//!
//! Invariant: the catalog database learns about a cartridge's archives only in
//! [`SetWriter::close_tape`], after the catalog archive and its filemark are written.

use std::time::Duration;

use store::Digest;

use super::catalog::{
    Allocation, CatalogUpdate, ChunkOnTape, MediumRecord, PointCopy, PoolPolicy, SetRecord, TapeCatalog,
};
use super::format::{
    self, ArchiveEntry, ArchiveKind, BlockPacker, RecordHeader, SetLabel, TapeCatalog as TapeCatalogArchive,
    TapeRecordKind, FORMAT,
};
use super::library::{Library, LoadedTape};
use super::{now_unix, read_identity, TapeError, TapeIdentity};

/// The cartridge being written.
struct Current {
    tape: LoadedTape,
    medium: MediumRecord,
    seq: u32,
    /// Archives written on this cartridge by this job.
    archives: Vec<ArchiveEntry>,
    chunks: Vec<(Digest, ChunkOnTape)>,
    points: Vec<PointCopy>,
    past_early_warning: bool,
}

impl Current {
    /// Writes one block, counting it for the job, the archive part and the cartridge, and
    /// noting early warning.
    fn write_block(&mut self, block: &[u8], stats: &mut WriterStats, entry_bytes: &mut u64) -> Result<(), TapeError> {
        let t = std::time::Instant::now();
        let ew = self.tape.drive.write_block(block)?;
        stats.write_time += t.elapsed();
        stats.bytes += block.len() as u64;
        stats.blocks += 1;
        *entry_bytes += block.len() as u64;
        self.medium.bytes_written += block.len() as u64;
        self.past_early_warning |= ew;
        Ok(())
    }
}

/// An archive being written.
pub struct OpenArchive {
    packer: BlockPacker,
    entry: ArchiveEntry,
    /// Block sequence of the first block of the current part (blocks in the tape file
    /// count from there).
    part_first_seq: u64,
    /// Cartridge and file of part 0.
    first: (String, u64),
}

/// Figures of a writer, for the job report.
#[derive(Debug, Default, Clone)]
pub struct WriterStats {
    pub bytes: u64,
    pub blocks: u64,
    pub tapes: Vec<String>,
    pub cleanings: Vec<String>,
    pub write_time: Duration,
}

pub struct SetWriter<'a> {
    cat: &'a TapeCatalog,
    lib: &'a mut Library,
    pool: PoolPolicy,
    set: SetRecord,
    set_id: [u8; 16],
    block_size: usize,
    current: Option<Current>,
    pub stats: WriterStats,
    log: &'a (dyn Fn(String) + Sync),
}

fn period(unix: u64, a: Allocation) -> Option<u64> {
    let day = unix / 86400;
    match a {
        Allocation::Daily => Some(day),
        // 1970-01-01 was a Thursday; ISO weeks start on Monday.
        Allocation::Weekly => Some((day + 3) / 7),
        _ => None,
    }
}

impl<'a> SetWriter<'a> {
    /// Chooses the media set to write (continuing the pool's newest set when its allocation
    /// allows) and prepares to write it.
    pub fn open(
        cat: &'a TapeCatalog,
        lib: &'a mut Library,
        pool: PoolPolicy,
        block_size: usize,
        log: &'a (dyn Fn(String) + Sync),
    ) -> Result<SetWriter<'a>, TapeError> {
        let now = now_unix();
        let newest = cat.sets()?.into_iter().filter(|s| s.pool == pool.name).max_by_key(|s| s.created_unix);
        let reuse = newest.filter(|s| match pool.allocation {
            Allocation::Continue => true,
            Allocation::PerJob => false,
            a => period(s.created_unix, a) == period(now, a),
        });
        let set = match reuse {
            Some(s) => {
                log(format!("continuing media set {} of pool {} ({} cartridges)", s.set_id, pool.name, s.media.len()));
                s
            }
            None => {
                let id = format::hex(&format::random_id());
                log(format!("starting media set {id} in pool {}", pool.name));
                SetRecord {
                    set_id: id,
                    pool: pool.name.clone(),
                    created_unix: now,
                    last_written_unix: now,
                    media: Vec::new(),
                }
            }
        };
        let set_id =
            format::unhex16(&set.set_id).ok_or_else(|| TapeError::Catalog(format!("bad set id {}", set.set_id)))?;
        Ok(SetWriter { cat, lib, pool, set, set_id, block_size, current: None, stats: WriterStats::default(), log })
    }

    /// Makes sure a cartridge is loaded and positioned at its next archive file.
    fn ensure_tape(&mut self) -> Result<(), TapeError> {
        if self.current.as_ref().is_some_and(|c| !c.past_early_warning) {
            return Ok(());
        }
        if self.current.is_some() {
            self.close_tape(true)?;
        }
        // Continue the set's last cartridge when it has room.
        if let Some(last) = self.set.media.last().cloned() {
            if let Some(m) = self.cat.medium(&last)?.filter(|m| !m.full) {
                let seq = (self.set.media.len() - 1) as u32;
                let tape = self.load_checked(&m)?;
                return self.start_tape(tape, m, seq, false);
            }
        }
        let m = self.allocate()?;
        let seq = self.set.media.len() as u32;
        let tape = self.load_checked(&m)?;
        self.start_tape(tape, m, seq, true)
    }

    /// A cartridge for the set's next place: labelled for the pool, in the library, and
    /// either never used by a set or belonging to a set whose retention has passed.
    fn allocate(&mut self) -> Result<MediumRecord, TapeError> {
        let now = now_unix();
        let inv = self.lib.inventory()?;
        let sets = self.cat.sets()?;
        let mut candidates: Vec<MediumRecord> = Vec::new();
        let mut refused = Vec::new();
        for m in self.cat.media()?.into_iter().filter(|m| m.pool == self.pool.name) {
            if self.set.media.contains(&m.barcode) {
                continue;
            }
            let Some(el) = inv.find_barcode(&m.barcode) else {
                refused.push(format!("{} is not in the library", m.barcode));
                continue;
            };
            if el.kind == changer::ElementKind::MailSlot {
                refused.push(format!("{} is in a mail slot", m.barcode));
                continue;
            }
            match &m.set {
                None => candidates.push(m),
                Some((sid, _)) => {
                    let expired = sets.iter().find(|s| &s.set_id == sid).is_none_or(|s| {
                        s.last_written_unix + self.pool.retention_days * 86400 <= now && s.set_id != self.set.set_id
                    });
                    if m.worm {
                        refused.push(format!("{} is WORM and used", m.barcode));
                    } else if expired {
                        candidates.push(m);
                    } else {
                        refused.push(format!(
                            "{} is in media set {sid}, kept for {} days",
                            m.barcode, self.pool.retention_days
                        ));
                    }
                }
            }
        }
        // Never-used cartridges first, then in barcode order.
        candidates.sort_by(|a, b| (a.set.is_some(), &a.barcode).cmp(&(b.set.is_some(), &b.barcode)));
        let Some(m) = candidates.into_iter().next() else {
            return Err(TapeError::NoMedia {
                pool: self.pool.name.clone(),
                detail: format!(
                    "{}; label more cartridges with `rackvault tape label --pool {}`",
                    if refused.is_empty() { "no cartridge is labelled for it".to_string() } else { refused.join(", ") },
                    self.pool.name
                ),
            });
        };
        if let Some((old, _)) = &m.set {
            (self.log)(format!("reusing {} from expired media set {old}", m.barcode));
            self.cat.forget_set(old)?;
        }
        Ok(m)
    }

    /// Loads `m` and checks its label is the one the catalog knows.
    fn load_checked(&mut self, m: &MediumRecord) -> Result<LoadedTape, TapeError> {
        let mut tape = self.lib.load(&m.barcode)?;
        match read_identity(&mut tape)? {
            TapeIdentity::Ours(l) if l.medium_id == m.medium_id => {}
            other => {
                let _ = self.lib.release(tape);
                return Err(TapeError::Medium {
                    barcode: m.barcode.clone(),
                    detail: format!(
                        "its label does not match the catalog (found {other:?}, catalog has medium {}); \
                         run `rackvault tape catalog --rebuild` or relabel it",
                        m.medium_id
                    ),
                });
            }
        }
        if tape.state == drive::MediaState::WriteProtected {
            let _ = self.lib.release(tape);
            return Err(TapeError::Medium { barcode: m.barcode.clone(), detail: "is write-protected".into() });
        }
        Ok(tape)
    }

    fn start_tape(
        &mut self,
        mut tape: LoadedTape,
        mut m: MediumRecord,
        seq: u32,
        new_in_set: bool,
    ) -> Result<(), TapeError> {
        if new_in_set {
            let label = SetLabel {
                format: FORMAT.into(),
                set_id: self.set.set_id.clone(),
                pool: self.pool.name.clone(),
                seq,
                set_created_unix: self.set.created_unix,
                medium_id: m.medium_id.clone(),
            };
            tape.drive.locate(format::SET_LABEL_FILE, 0)?;
            let block = format::encode_single(
                ArchiveKind::SetLabel,
                format::random_id(),
                &serde_json::to_vec(&label).expect("set label serialises"),
            );
            tape.drive.write_block(&block)?;
            tape.drive.write_filemarks(1)?;
            m.set = Some((self.set.set_id.clone(), seq));
            m.next_file = format::FIRST_ARCHIVE_FILE;
            m.full = false;
            m.bytes_written = 0;
            self.set.media.push(m.barcode.clone());
            (self.log)(format!("cartridge {} joins media set {} as number {}", m.barcode, self.set.set_id, seq + 1));
        } else {
            tape.drive.locate(m.next_file, 0)?;
            (self.log)(format!("appending to cartridge {} at file {}", m.barcode, m.next_file));
        }
        if !self.stats.tapes.contains(&m.barcode) {
            self.stats.tapes.push(m.barcode.clone());
        }
        self.current = Some(Current {
            tape,
            medium: m,
            seq,
            archives: Vec::new(),
            chunks: Vec::new(),
            points: Vec::new(),
            past_early_warning: false,
        });
        Ok(())
    }

    /// Starts an archive of `kind` at the head of the current (or a fresh) cartridge.
    pub fn begin(&mut self, kind: ArchiveKind) -> Result<OpenArchive, TapeError> {
        self.ensure_tape()?;
        let cur = self.current.as_ref().expect("ensure_tape loaded one");
        let id = format::random_id();
        Ok(OpenArchive {
            packer: BlockPacker::new(kind, id, self.block_size),
            entry: ArchiveEntry {
                file: cur.medium.next_file,
                kind,
                archive_id: format::hex(&id),
                part: 0,
                bytes: 0,
                chunks: Vec::new(),
                point: None,
            },
            part_first_seq: 0,
            first: (cur.medium.barcode.clone(), cur.medium.next_file),
        })
    }

    /// Appends a record; `chunk` records are entered into the archive's chunk list.
    pub fn write_record(
        &mut self,
        a: &mut OpenArchive,
        header: &RecordHeader,
        payload: &[u8],
        chunk: bool,
    ) -> Result<(), TapeError> {
        let start = a.packer.next_record_seq() - a.part_first_seq;
        let cur = self.current.as_mut().expect("an archive is open only with a cartridge loaded");
        if chunk {
            a.entry.chunks.push((header.digest.to_hex(), start));
            cur.chunks.push((header.digest, ChunkOnTape { seq: cur.seq, file: a.entry.file, block: start }));
        }
        let stats = &mut self.stats;
        let entry_bytes = &mut a.entry.bytes;
        let mut emit = |block: &[u8]| cur.write_block(block, stats, entry_bytes);
        a.packer.push_record(header, payload, &mut emit)?;
        if cur.past_early_warning {
            self.continue_on_next_tape(a)?;
        }
        Ok(())
    }

    /// Closes the current part and continues `a` on the set's next cartridge.
    fn continue_on_next_tape(&mut self, a: &mut OpenArchive) -> Result<(), TapeError> {
        self.flush_part(a, false)?;
        (self.log)(format!(
            "early warning on cartridge {}: archive {} continues on the next cartridge",
            self.current.as_ref().map(|c| c.medium.barcode.as_str()).unwrap_or("?"),
            a.entry.archive_id
        ));
        self.ensure_tape()?;
        let cur = self.current.as_ref().expect("loaded");
        a.packer.part += 1;
        a.part_first_seq = a.packer.next_seq;
        a.entry = ArchiveEntry {
            file: cur.medium.next_file,
            kind: a.entry.kind,
            archive_id: a.entry.archive_id.clone(),
            part: a.packer.part,
            bytes: 0,
            chunks: Vec::new(),
            point: a.entry.point.clone(),
        };
        Ok(())
    }

    /// Writes the last block of the part (marked last when the archive ends) and its
    /// filemark, and files the part under the current cartridge.
    fn flush_part(&mut self, a: &mut OpenArchive, last: bool) -> Result<(), TapeError> {
        let cur = self.current.as_mut().expect("loaded");
        let stats = &mut self.stats;
        let entry_bytes = &mut a.entry.bytes;
        let mut emit = |block: &[u8]| cur.write_block(block, stats, entry_bytes);
        a.packer.flush(last, &mut emit)?;
        cur.past_early_warning |= cur.tape.drive.write_filemarks(1)?;
        cur.medium.next_file += 1;
        cur.archives.push(a.entry.clone());
        Ok(())
    }

    /// Ends archive `a`; returns the cartridge and file where it starts.
    pub fn end(&mut self, mut a: OpenArchive) -> Result<(String, u64), TapeError> {
        self.flush_part(&mut a, true)?;
        Ok(a.first)
    }

    /// Records that the point archive just ended (starting at `copy.barcode`/`copy.file`)
    /// holds `copy`'s point; its last part's catalog entry carries the manifest.
    pub fn note_point(&mut self, copy: PointCopy) {
        let cur = self.current.as_mut().expect("loaded");
        if let Some(e) = cur.archives.last_mut() {
            e.point = Some(copy.point.clone());
        }
        cur.points.push(copy);
    }

    /// Writes the cartridge's catalog archive and records the cartridge's new content in
    /// the catalog database; unloads it when `release`.
    fn close_tape(&mut self, release: bool) -> Result<(), TapeError> {
        let Some(mut cur) = self.current.take() else { return Ok(()) };
        let now = now_unix();
        let mut all = self.cat.archives(&cur.medium.barcode)?;
        all.retain(|e| e.file < cur.archives.first().map(|a| a.file).unwrap_or(u64::MAX));
        all.extend(cur.archives.iter().cloned());
        let set_label = SetLabel {
            format: FORMAT.into(),
            set_id: self.set.set_id.clone(),
            pool: self.pool.name.clone(),
            seq: cur.seq,
            set_created_unix: self.set.created_unix,
            medium_id: cur.medium.medium_id.clone(),
        };
        let catalog = TapeCatalogArchive {
            format: FORMAT.into(),
            medium_id: cur.medium.medium_id.clone(),
            barcode: cur.medium.barcode.clone(),
            set: set_label,
            written_unix: now,
            archives: all,
        };
        let json = serde_json::to_vec(&catalog).expect("catalog serialises");
        let id = format::random_id();
        let mut packer = BlockPacker::new(ArchiveKind::Catalog, id, self.block_size);
        let header = RecordHeader {
            kind: TapeRecordKind::Catalog,
            codec: store::Codec::Raw,
            raw_len: json.len() as u32,
            stored_len: json.len() as u32,
            digest: Digest::of(&json),
        };
        let drive = &mut cur.tape.drive;
        let mut written = 0u64;
        let mut emit = |b: &[u8]| -> Result<(), TapeError> {
            // Early warning is ignored here: the catalog is small and must complete.
            drive.write_block(b)?;
            written += b.len() as u64;
            Ok(())
        };
        packer.push_record(&header, &json, &mut emit)?;
        packer.flush(true, &mut emit)?;
        let ew = drive.write_filemarks(1)?;
        cur.medium.next_file += 1;
        cur.medium.bytes_written += written;
        cur.medium.full = cur.past_early_warning || ew || drive.early_warning();
        cur.medium.last_written_unix = now;
        self.set.last_written_unix = now;
        let mut update = CatalogUpdate {
            media: vec![cur.medium.clone()],
            sets: vec![self.set.clone()],
            archives: cur.archives.iter().map(|a| (cur.medium.barcode.clone(), a.clone())).collect(),
            chunks: cur.chunks.iter().map(|(d, l)| (self.set_id, *d, *l)).collect(),
            points: std::mem::take(&mut cur.points),
        };
        update.points.iter_mut().for_each(|p| p.set_id = self.set.set_id.clone());
        self.cat.apply(&update)?;
        (self.log)(format!(
            "cartridge {}: catalog written at file {}, {} archive(s) this job{}",
            cur.medium.barcode,
            cur.medium.next_file - 1,
            cur.archives.len(),
            if cur.medium.full { ", cartridge full" } else { "" }
        ));
        if release {
            let barcode = cur.medium.barcode.clone();
            if let Some(cln) = self.lib.release(cur.tape)? {
                (self.log)(format!("drive asked for cleaning after {barcode}: cleaned with {cln}"));
                self.stats.cleanings.push(cln);
            }
        }
        Ok(())
    }

    /// Finishes the job: catalog archive on the last cartridge, catalog updated, unloaded.
    pub fn finish(mut self) -> Result<(SetRecord, WriterStats), TapeError> {
        self.close_tape(true)?;
        Ok((self.set, self.stats))
    }

    /// Gives up after an error: unloads the cartridge without writing its catalog archive.
    /// The catalog database still describes only what earlier cartridges completed; the
    /// next job of the set overwrites the partial archive.
    pub fn abort(mut self) {
        if let Some(cur) = self.current.take() {
            let _ = self.lib.release(cur.tape);
        }
    }

    /// Which set cartridge (by place) the chunk is on, when the set already holds it.
    pub fn existing(&self, d: &Digest) -> Result<Option<ChunkOnTape>, TapeError> {
        self.cat.chunk(&self.set_id, d)
    }
}
