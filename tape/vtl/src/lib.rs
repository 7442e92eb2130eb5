//! `vtl`: an in-process emulated tape drive implementing [`scsi::ScsiTransport`] with the SSC
//! semantics tgt lacks: READ POSITION with real block addresses, LOCATE(10/16), a hard end
//! of medium (VOLUME OVERFLOW) after early warning, WORM media, write protection, TapeAlert.
//! For fast tests of the drive layer and for a demo/dev mode. [`EmulatedLibrary`] (module
//! [`library`]) puts drives, slots, mail slots and a picker around them with full SMC
//! semantics.
//!
//! # Media files
//! A cartridge is one file on disk, written by this crate only:
//! ```text
//!   header  "RVTAPE01" | capacity u64 LE | flags u8 (1 = WORM, 2 = write-protected,
//!           4 = discarding)
//!   records kind u8 (0 = block, 1 = filemark, 2 = discarded block) | length u32 LE |
//!           data (kind 0 only)
//! ```
//! The record index is rebuilt from the file when a cartridge is loaded (a torn last record
//! is dropped: it never completed). Writing at a position before end of data truncates the
//! file there first (tape semantics: a write sets a new end of data).
//!
//! # Discarding cartridges (benchmarks only)
//! A cartridge created with [`MediumOptions::discard`] (or switched with
//! [`set_medium_discard`]) is a sink: every WRITE is accepted, positioned and counted
//! against capacity and early warning exactly as on any cartridge, but the data of a block
//! longer than [`DISCARD_KEEP`] bytes is dropped and only its length is kept (a kind 2
//! record). Shorter blocks (labels: what software reads back to identify a cartridge) are
//! stored as usual. READ of a discarded block fails with MEDIUM ERROR 11/00 (unrecovered
//! read error) and moves the head past it, as an injected medium error does. It lets a
//! benchmark measure a writer without the emulator's own disk writes. Files without the
//! flag and without kind 2 records are the format as before; a build that predates the
//! flag would stop reading a discarding cartridge at its first discarded block.
//!
//! # Semantics
//! The position is a logical object number: blocks and filemarks from BOT. `capacity` counts
//! block bytes plus 8 bytes per record; early warning starts at `capacity - early_warning`.
//! A WRITE past early warning succeeds with NO SENSE + EOM; one that would pass `capacity`
//! fails with VOLUME OVERFLOW + EOM and writes nothing. READ of a filemark: NO SENSE +
//! FILEMARK; at end of data: BLANK CHECK 00/05 + EOM; a block of another length than asked:
//! NO SENSE + ILI with INFORMATION = requested - actual (signed). SPACE -N filemarks stops on
//! the BOT side of the filemark (correctly, unlike tgt).
//!
//! Like a real drive: loading a cartridge raises UNIT ATTENTION 28/00 (medium may have
//! changed) once, on the next command other than INQUIRY and REQUEST SENSE. LOAD UNLOAD
//! (unload) ejects the cartridge to the drive's throat: the drive is NOT READY 3a/00, a LOAD
//! threads it again, and a changer (or [`EmulatedDrive::unload_medium`]) takes it away.
//!
//! # Fault injection
//! - [`EmulatedDrive::inject_medium_error`]: every READ of the block at a logical object
//!   number fails with MEDIUM ERROR 11/00 (fixed sense, VALID, INFORMATION = the requested
//!   length, as SSC asks for variable-block reads) and transfers nothing. The head moves
//!   *past* the bad block. That is our choice (where the head ends after an unrecovered
//!   read error differs between drives): a reader that skips damaged blocks goes on with
//!   the next one, and READ POSITION tells where the head is.
//! - [`EmulatedDrive::pull_medium`]: an operator yanks the cartridge, PREVENT or not.
//! - [`EmulatedDrive::set_needs_cleaning`]: TapeAlert 20 (clean now); [`EmulatedDrive::clean`]
//!   (a cleaning cartridge, see [`library`]) clears 20 and 21.

pub mod library;

pub use library::{CartridgeSpec, EmulatedChanger, EmulatedLibrary, LibraryConfig, LibraryError};

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use scsi::cdb::op;
use scsi::cdb::ssc::{TAPE_ALERT_CLEAN_NOW, TAPE_ALERT_CLEAN_PERIODIC};
use scsi::{Command, Completion, DataDir, Residual, ScsiTransport, Sense, Status, TransportError};

const MAGIC: &[u8; 8] = b"RVTAPE01";
const HEADER: u64 = 17;
const REC_OVERHEAD: u64 = 8;
const FLAG_WORM: u8 = 1;
const FLAG_WRITE_PROTECTED: u8 = 2;
const FLAG_DISCARD: u8 = 4;
/// On a discarding cartridge, blocks up to this length are still stored (labels stay
/// readable); the data of longer ones is dropped.
pub const DISCARD_KEEP: usize = 64 << 10;
/// Largest block the emulated drive takes (as LTO drives: 8 MiB).
pub const MAX_BLOCK: u32 = 8 << 20;
/// INQUIRY vendor and product of the emulated drive (a changer's DVCID identifier repeats them).
pub(crate) const DRIVE_VENDOR: &str = "RVEMU";
pub(crate) const DRIVE_PRODUCT: &str = "EMULATED-TAPE";

/// Options of a new cartridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediumOptions {
    /// Usable bytes (block data plus 8 bytes per record).
    pub capacity: u64,
    pub worm: bool,
    pub write_protected: bool,
    /// A discarding cartridge (benchmarks only; see the crate docs): the data of blocks
    /// longer than [`DISCARD_KEEP`] is dropped, their lengths are kept.
    pub discard: bool,
}

/// Creates an empty cartridge file (fails if it exists).
pub fn create_medium(path: &Path, opts: MediumOptions) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut h = Vec::with_capacity(HEADER as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&opts.capacity.to_le_bytes());
    h.push(flags_of(&opts));
    f.write_all(&h)?;
    f.sync_all()
}

fn flags_of(opts: &MediumOptions) -> u8 {
    let bit = |on: bool, flag: u8| if on { flag } else { 0 };
    bit(opts.worm, FLAG_WORM) | bit(opts.write_protected, FLAG_WRITE_PROTECTED) | bit(opts.discard, FLAG_DISCARD)
}

fn options_of(h: &[u8; HEADER as usize]) -> MediumOptions {
    MediumOptions {
        capacity: u64::from_le_bytes(h[8..16].try_into().unwrap_or_default()),
        worm: h[16] & FLAG_WORM != 0,
        write_protected: h[16] & FLAG_WRITE_PROTECTED != 0,
        discard: h[16] & FLAG_DISCARD != 0,
    }
}

fn not_a_cartridge() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "not an emulated tape cartridge")
}

/// Makes the cartridge file at `path` discarding (or not) from its next load on (see the
/// crate docs); what it holds stays as it is. Must not be called while a drive has it
/// loaded (the drive keeps the options it read at load).
pub fn set_medium_discard(path: &Path, discard: bool) -> std::io::Result<()> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut h = [0u8; HEADER as usize];
    f.read_exact(&mut h)?;
    if &h[..8] != MAGIC {
        return Err(not_a_cartridge());
    }
    let opts = MediumOptions { discard, ..options_of(&h) };
    f.seek(SeekFrom::Start(16))?;
    f.write_all(&[flags_of(&opts)])?;
    f.sync_all()
}

/// Reads a cartridge file's header: its options (fails when it is not a cartridge file).
pub fn medium_options(path: &Path) -> std::io::Result<MediumOptions> {
    let mut h = [0u8; HEADER as usize];
    File::open(path)?.read_exact(&mut h)?;
    if &h[..8] != MAGIC {
        return Err(not_a_cartridge());
    }
    Ok(options_of(&h))
}

/// A record of the cartridge; `Discarded`: a block written to a discarding cartridge, of
/// which only the length was kept.
#[derive(Debug, Clone, Copy)]
enum Rec {
    Block { off: u64, len: u32 },
    Filemark { off: u64 },
    Discarded { off: u64, len: u32 },
}

impl Rec {
    fn off(&self) -> u64 {
        match *self {
            Rec::Block { off, .. } | Rec::Filemark { off } | Rec::Discarded { off, .. } => off,
        }
    }
}

/// Capacity used by records: their data (discarded or not) plus [`REC_OVERHEAD`] each.
fn used_by(recs: &[Rec]) -> u64 {
    recs.iter()
        .map(|r| {
            REC_OVERHEAD
                + match *r {
                    Rec::Block { len, .. } | Rec::Discarded { len, .. } => u64::from(len),
                    Rec::Filemark { .. } => 0,
                }
        })
        .sum()
}

#[derive(Debug)]
struct Loaded {
    path: PathBuf,
    file: File,
    capacity: u64,
    worm: bool,
    write_protected: bool,
    discard: bool,
    recs: Vec<Rec>,
    /// Logical object number of the head.
    pos: usize,
    /// Bytes used (file length minus header).
    used: u64,
}

impl Loaded {
    fn open(path: &Path) -> std::io::Result<Loaded> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut h = [0u8; HEADER as usize];
        file.read_exact(&mut h)?;
        if &h[..8] != MAGIC {
            return Err(not_a_cartridge());
        }
        let opts = options_of(&h);
        let len = file.metadata()?.len();
        let mut recs = Vec::new();
        let mut off = HEADER;
        let mut r = std::io::BufReader::new(&mut file);
        r.seek(SeekFrom::Start(HEADER))?;
        while off + 5 <= len {
            let mut rh = [0u8; 5];
            r.read_exact(&mut rh)?;
            let n = u32::from_le_bytes([rh[1], rh[2], rh[3], rh[4]]);
            match rh[0] {
                0 if off + 5 + u64::from(n) <= len => {
                    recs.push(Rec::Block { off, len: n });
                    r.seek_relative(i64::from(n))?;
                    off += 5 + u64::from(n);
                }
                1 => {
                    recs.push(Rec::Filemark { off });
                    off += 5;
                }
                2 => {
                    recs.push(Rec::Discarded { off, len: n });
                    off += 5;
                }
                _ => break,
            }
        }
        drop(r);
        file.set_len(off)?;
        let used = used_by(&recs);
        Ok(Loaded {
            path: path.to_path_buf(),
            file,
            capacity: opts.capacity,
            worm: opts.worm,
            write_protected: opts.write_protected,
            discard: opts.discard,
            recs,
            pos: 0,
            used,
        })
    }

    fn files_before(&self, pos: usize) -> u64 {
        self.recs[..pos.min(self.recs.len())].iter().filter(|r| matches!(r, Rec::Filemark { .. })).count() as u64
    }

    /// Truncates at the head (a write sets a new end of data).
    fn truncate_here(&mut self) -> std::io::Result<()> {
        if self.pos < self.recs.len() {
            let off = self.recs[self.pos].off();
            self.recs.truncate(self.pos);
            self.file.set_len(off)?;
            self.used = used_by(&self.recs);
        }
        Ok(())
    }

    /// Appends a block (`Some`) or a filemark (`None`) at end of data.
    fn append(&mut self, block: Option<&[u8]>) -> std::io::Result<()> {
        let off = self.file.seek(SeekFrom::End(0))?;
        let len = block.map_or(0, <[u8]>::len);
        let (kind, rec, data) = match block {
            None => (1, Rec::Filemark { off }, &[][..]),
            Some(_) if self.discard && len > DISCARD_KEEP => (2, Rec::Discarded { off, len: len as u32 }, &[][..]),
            Some(d) => (0, Rec::Block { off, len: len as u32 }, d),
        };
        let mut bytes = Vec::with_capacity(5 + data.len());
        bytes.push(kind);
        bytes.extend_from_slice(&(len as u32).to_le_bytes());
        bytes.extend_from_slice(data);
        self.file.write_all(&bytes)?;
        self.recs.push(rec);
        self.used += REC_OVERHEAD + len as u64;
        self.pos = self.recs.len();
        Ok(())
    }
}

#[derive(Debug, Default)]
struct State {
    medium: Option<Loaded>,
    /// A cartridge ejected by LOAD UNLOAD, still in the drive's throat: LOAD threads it
    /// again, a changer takes it away.
    ejected: Option<PathBuf>,
    block_len: u32,
    prevent: bool,
    /// TapeAlert flags to report (1..=64).
    alerts: Vec<u8>,
    /// UNIT ATTENTION (ASC, ASCQ) to report on the next command.
    unit_attention: Option<(u8, u8)>,
    /// Logical object numbers whose READ fails with MEDIUM ERROR.
    bad_objects: BTreeSet<u64>,
}

/// An emulated tape drive.
#[derive(Debug)]
pub struct EmulatedDrive {
    serial: String,
    /// Commands executed, per operation code.
    counts: Mutex<Vec<u64>>,
    early_warning: u64,
    state: Mutex<State>,
}

/// Status, sense bytes, bytes transferred.
pub(crate) type Answer = (Status, Option<Vec<u8>>, usize);

pub(crate) fn sense_bytes(key: u8, asc: u8, ascq: u8, bits: u8, info: Option<i64>) -> Vec<u8> {
    let mut b = vec![0u8; 18];
    b[0] = 0x70;
    b[2] = key | bits;
    if let Some(i) = info {
        b[0] |= 0x80;
        b[3..7].copy_from_slice(&(i as i32).to_be_bytes());
    }
    b[7] = 10;
    b[12] = asc;
    b[13] = ascq;
    b
}

const FM: u8 = 0x80;
const EOM: u8 = 0x40;
const ILI: u8 = 0x20;

pub(crate) fn check(key: u8, asc: u8, ascq: u8) -> Answer {
    (Status::CheckCondition, Some(sense_bytes(key, asc, ascq, 0, None)), 0)
}

fn io_error(_: std::io::Error) -> Answer {
    check(0x03, 0x0c, 0x00)
}

impl EmulatedDrive {
    /// A drive with no cartridge; `early_warning` bytes before a cartridge's end signal EOM.
    pub fn new(serial: &str, early_warning: u64) -> EmulatedDrive {
        EmulatedDrive {
            serial: serial.to_string(),
            counts: Mutex::new(vec![0; 256]),
            early_warning,
            state: Mutex::new(State::default()),
        }
    }

    /// How many commands with operation code `opcode` were executed (for tests).
    pub fn commands_seen(&self, opcode: u8) -> u64 {
        self.counts.lock().map(|c| c[usize::from(opcode)]).unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The drive's serial number (INQUIRY VPD 0x80).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Loads the cartridge file at `path` (as a changer would); the head is at BOT and the
    /// next command (INQUIRY and REQUEST SENSE excepted) gets UNIT ATTENTION 28/00. A
    /// cartridge left ejected in the throat is taken away first.
    pub fn load_medium(&self, path: &Path) -> std::io::Result<()> {
        let mut s = self.lock();
        if let Some(m) = &s.medium {
            return Err(std::io::Error::other(format!(
                "drive {}: cartridge {} is already loaded; unload it first",
                self.serial,
                m.path.display()
            )));
        }
        s.medium = Some(Loaded::open(path)?);
        s.ejected = None;
        s.unit_attention = Some((0x28, 0x00));
        Ok(())
    }

    /// Takes the cartridge out (loaded or ejected), returning its file's path; `None` when
    /// the drive is empty. Refused while PREVENT MEDIUM REMOVAL is in force and the
    /// cartridge is loaded.
    pub fn unload_medium(&self) -> std::io::Result<Option<PathBuf>> {
        let mut s = self.lock();
        if s.prevent && s.medium.is_some() {
            return Err(std::io::Error::other(format!(
                "drive {}: medium removal prevented (PREVENT ALLOW MEDIUM REMOVAL); allow removal first",
                self.serial
            )));
        }
        Ok(Self::take_medium(&mut s))
    }

    /// An operator pulls the cartridge out, PREVENT or not (fault injection): the drive
    /// answers NOT READY 3a/00 from then on. Returns the cartridge's file's path.
    pub fn pull_medium(&self) -> Option<PathBuf> {
        Self::take_medium(&mut self.lock())
    }

    fn take_medium(s: &mut State) -> Option<PathBuf> {
        match s.medium.take() {
            Some(m) => {
                // Data written so far reaches the disk, as it would have reached the tape.
                let _ = m.file.sync_all();
                Some(m.path)
            }
            None => s.ejected.take(),
        }
    }

    /// The file of the cartridge in the drive (loaded or ejected), if any.
    pub fn medium_path(&self) -> Option<PathBuf> {
        let s = self.lock();
        s.medium.as_ref().map(|m| m.path.clone()).or_else(|| s.ejected.clone())
    }

    /// Sets the TapeAlert flags the drive reports (e.g. 20 = clean now).
    pub fn set_tape_alerts(&self, flags: &[u8]) {
        self.lock().alerts = flags.to_vec();
    }

    /// The TapeAlert flags the drive reports.
    pub fn tape_alerts(&self) -> Vec<u8> {
        self.lock().alerts.clone()
    }

    /// Raises (true) or clears (false) TapeAlert 20, "clean now".
    pub fn set_needs_cleaning(&self, on: bool) {
        let mut s = self.lock();
        s.alerts.retain(|&f| f != TAPE_ALERT_CLEAN_NOW);
        if on {
            s.alerts.push(TAPE_ALERT_CLEAN_NOW);
        }
    }

    /// A cleaning cycle ran: clears TapeAlert 20 and 21 (clean now, clean periodic).
    pub fn clean(&self) {
        self.lock().alerts.retain(|&f| f != TAPE_ALERT_CLEAN_NOW && f != TAPE_ALERT_CLEAN_PERIODIC);
    }

    /// From now on, every READ of the block at logical object number `object` (blocks and
    /// filemarks from BOT) fails with MEDIUM ERROR 11/00, whichever cartridge is loaded; the
    /// head moves past the block (see the crate docs).
    pub fn inject_medium_error(&self, object: u64) {
        self.lock().bad_objects.insert(object);
    }

    /// Removes every injected medium error.
    pub fn clear_medium_errors(&self) {
        self.lock().bad_objects.clear();
    }

    fn run(&self, cdb: &[u8], data: &mut DataDir<'_>) -> Answer {
        let mut s = self.lock();
        let opc = cdb.first().copied().unwrap_or(0xff);
        let be24 = |i: usize| u32::from_be_bytes([0, cdb[i], cdb[i + 1], cdb[i + 2]]);
        if cdb.len() < 6 {
            return check(0x05, 0x20, 0x00);
        }
        // A UNIT ATTENTION is reported once, instead of executing the command.
        if !matches!(opc, op::INQUIRY | op::REQUEST_SENSE) {
            if let Some((asc, ascq)) = s.unit_attention.take() {
                return check(0x06, asc, ascq);
            }
        }
        // Commands that work without a cartridge.
        match opc {
            op::INQUIRY => return self.inquiry(cdb, data),
            op::REQUEST_SENSE => {
                let (key, (asc, ascq)) = match s.unit_attention.take() {
                    Some(ua) => (0x06, ua),
                    None => (0, (0, 0)),
                };
                return fill(data, &sense_bytes(key, asc, ascq, 0, None));
            }
            op::READ_BLOCK_LIMITS => {
                let m = MAX_BLOCK.to_be_bytes();
                return fill(data, &[0, m[1], m[2], m[3], 0, 1]);
            }
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                s.prevent = cdb[4] & 1 != 0;
                return (Status::Good, None, 0);
            }
            op::LOG_SENSE => {
                if cdb[2] & 0x3f != 0x2e {
                    return check(0x05, 0x24, 0x00);
                }
                let mut p = vec![0x2e, 0, 0, 0];
                for code in 1u16..=64 {
                    p.extend_from_slice(&code.to_be_bytes());
                    p.extend_from_slice(&[0x03, 1, u8::from(s.alerts.contains(&(code as u8)))]);
                }
                let l = (p.len() - 4) as u16;
                p[2..4].copy_from_slice(&l.to_be_bytes());
                return fill(data, &p);
            }
            _ => {}
        }
        if opc == op::LOAD_UNLOAD && cdb[4] & 1 != 0 && s.medium.is_none() {
            // LOAD of a cartridge left in the throat by an unload: thread it again.
            let Some(path) = s.ejected.take() else { return check(0x02, 0x3a, 0x00) };
            return match Loaded::open(&path) {
                Ok(m) => {
                    s.medium = Some(m);
                    (Status::Good, None, 0)
                }
                Err(_) => {
                    s.ejected = Some(path);
                    check(0x03, 0x30, 0x00) // incompatible medium installed
                }
            };
        }
        if s.medium.is_none() {
            return check(0x02, 0x3a, 0x00);
        }
        match opc {
            op::LOAD_UNLOAD => {
                if cdb[4] & 1 == 0 {
                    if s.prevent {
                        return check(0x05, 0x53, 0x02);
                    }
                    if let Some(m) = s.medium.take() {
                        let _ = m.file.sync_all();
                        s.ejected = Some(m.path);
                    }
                } else if let Some(m) = s.medium.as_mut() {
                    m.pos = 0;
                }
                return (Status::Good, None, 0);
            }
            op::MODE_SELECT_6 => {
                let DataDir::Out(p) = data else { return check(0x05, 0x24, 0x00) };
                if p.len() >= 12 && p[3] >= 8 {
                    s.block_len = u32::from_be_bytes([0, p[9], p[10], p[11]]);
                }
                return (Status::Good, None, 0);
            }
            _ => {}
        }
        let ew = self.early_warning;
        let block_len = s.block_len;
        let s = &mut *s;
        let bad_objects = &s.bad_objects;
        let Some(m) = s.medium.as_mut() else { return check(0x02, 0x3a, 0x00) };
        match opc {
            op::TEST_UNIT_READY => (Status::Good, None, 0),
            op::REWIND => {
                m.pos = 0;
                (Status::Good, None, 0)
            }
            op::MODE_SENSE_6 => {
                let page = cdb[2] & 0x3f;
                let dbd = cdb[1] & 0x08 != 0;
                let mut b = vec![0, u8::from(m.worm), 0x10 | if m.write_protected { 0x80 } else { 0 }, 0];
                if !dbd {
                    b[3] = 8;
                    let l = block_len.to_be_bytes();
                    b.extend_from_slice(&[0x58, 0, 0, 0, 0, l[1], l[2], l[3]]);
                }
                if page == 0x1d || page == 0x3f {
                    let mut p = vec![0u8; 32];
                    p[0] = 0x1d;
                    p[1] = 30;
                    p[2] = u8::from(m.worm);
                    b.extend_from_slice(&p);
                }
                b[0] = (b.len() - 1) as u8;
                fill(data, &b)
            }
            op::READ_6 => {
                if cdb[1] & 1 != 0 {
                    return check(0x05, 0x24, 0x00); // fixed mode not emulated
                }
                let want = be24(2) as usize;
                let DataDir::In(buf) = data else { return check(0x05, 0x24, 0x00) };
                let want = want.min(buf.len());
                match m.recs.get(m.pos).copied() {
                    None => (Status::CheckCondition, Some(sense_bytes(0x08, 0x00, 0x05, EOM, Some(want as i64))), 0),
                    Some(Rec::Filemark { .. }) => {
                        m.pos += 1;
                        (Status::CheckCondition, Some(sense_bytes(0x00, 0x00, 0x01, FM, Some(want as i64))), 0)
                    }
                    Some(Rec::Discarded { .. }) => {
                        // Its data was never kept: an unrecovered read error, as below.
                        m.pos += 1;
                        (Status::CheckCondition, Some(sense_bytes(0x03, 0x11, 0x00, 0, Some(want as i64))), 0)
                    }
                    Some(Rec::Block { .. }) if bad_objects.contains(&(m.pos as u64)) => {
                        // Unrecovered read error: nothing transferred, the head past the block.
                        m.pos += 1;
                        (Status::CheckCondition, Some(sense_bytes(0x03, 0x11, 0x00, 0, Some(want as i64))), 0)
                    }
                    Some(Rec::Block { off, len }) => {
                        let n = want.min(len as usize);
                        if m.file.seek(SeekFrom::Start(off + 5)).and_then(|_| m.file.read_exact(&mut buf[..n])).is_err()
                        {
                            return check(0x03, 0x11, 0x00);
                        }
                        m.pos += 1;
                        if len as usize == want {
                            (Status::Good, None, n)
                        } else {
                            let info = want as i64 - i64::from(len);
                            (Status::CheckCondition, Some(sense_bytes(0x00, 0, 0, ILI, Some(info))), n)
                        }
                    }
                }
            }
            op::WRITE_6 | op::WRITE_FILEMARKS_6 => {
                if opc == op::WRITE_6 && cdb[1] & 1 != 0 {
                    return check(0x05, 0x24, 0x00);
                }
                let payload: &[u8] = match (opc, &*data) {
                    (op::WRITE_6, DataDir::Out(b)) => &b[..(be24(2) as usize).min(b.len())],
                    (op::WRITE_6, _) => return check(0x05, 0x24, 0x00),
                    _ => &[],
                };
                let count = if opc == op::WRITE_6 { 1 } else { be24(2) as usize };
                if opc == op::WRITE_6 && payload.len() > MAX_BLOCK as usize {
                    return check(0x05, 0x24, 0x00);
                }
                if count == 0 {
                    return (Status::Good, None, 0);
                }
                if m.write_protected {
                    return check(0x07, 0x27, 0x00);
                }
                if m.worm && m.pos < m.recs.len() {
                    return check(0x07, 0x30, 0x0c); // WORM medium, overwrite attempted
                }
                if let Err(e) = m.truncate_here() {
                    return io_error(e);
                }
                let need = (REC_OVERHEAD + payload.len() as u64) * count as u64;
                if m.used + need > m.capacity {
                    return (Status::CheckCondition, Some(sense_bytes(0x0d, 0x00, 0x02, EOM, Some(count as i64))), 0);
                }
                for _ in 0..count {
                    let r = m.append((opc == op::WRITE_6).then_some(payload));
                    if let Err(e) = r {
                        return io_error(e);
                    }
                }
                if m.used > m.capacity.saturating_sub(ew) {
                    (Status::CheckCondition, Some(sense_bytes(0x00, 0x00, 0x02, EOM, Some(0))), payload.len())
                } else {
                    (Status::Good, None, payload.len())
                }
            }
            op::SPACE_6 => {
                let n = i32::from_be_bytes([if cdb[2] & 0x80 != 0 { 0xff } else { 0 }, cdb[2], cdb[3], cdb[4]]);
                space(m, cdb[1] & 0x0f, n)
            }
            op::ERASE_6 => {
                if m.worm || m.write_protected {
                    return check(0x07, 0x27, 0x00);
                }
                match m.truncate_here() {
                    Ok(()) => (Status::Good, None, 0),
                    Err(e) => io_error(e),
                }
            }
            op::LOCATE_10 | op::LOCATE_16 => {
                let target = if opc == op::LOCATE_10 {
                    u64::from(u32::from_be_bytes([cdb[3], cdb[4], cdb[5], cdb[6]]))
                } else if cdb.len() >= 12 {
                    u64::from_be_bytes(cdb[4..12].try_into().unwrap_or_default())
                } else {
                    return check(0x05, 0x24, 0x00);
                };
                if target as usize > m.recs.len() {
                    m.pos = m.recs.len();
                    return (Status::CheckCondition, Some(sense_bytes(0x08, 0x00, 0x05, EOM, None)), 0);
                }
                m.pos = target as usize;
                (Status::Good, None, 0)
            }
            op::READ_POSITION => {
                let sa = cdb[1] & 0x1f;
                let bop = m.pos == 0;
                let eop = m.used > m.capacity.saturating_sub(ew) && m.pos == m.recs.len();
                let flags = (u8::from(bop) << 7) | (u8::from(eop) << 6);
                match sa {
                    0 | 1 => {
                        let mut b = vec![0u8; 20];
                        b[0] = flags;
                        b[4..8].copy_from_slice(&(m.pos as u32).to_be_bytes());
                        b[8..12].copy_from_slice(&(m.pos as u32).to_be_bytes());
                        fill(data, &b)
                    }
                    6 => {
                        let mut b = vec![0u8; 32];
                        b[0] = flags;
                        b[8..16].copy_from_slice(&(m.pos as u64).to_be_bytes());
                        b[16..24].copy_from_slice(&m.files_before(m.pos).to_be_bytes());
                        fill(data, &b)
                    }
                    _ => check(0x05, 0x24, 0x00),
                }
            }
            _ => check(0x05, 0x20, 0x00),
        }
    }

    fn inquiry(&self, cdb: &[u8], data: &mut DataDir<'_>) -> Answer {
        if cdb[1] & 1 != 0 {
            return match cdb[2] {
                0x00 => fill(data, &[1, 0, 0, 0, 2, 0x00, 0x80]),
                0x80 => {
                    let mut b = vec![1, 0x80, 0, self.serial.len() as u8];
                    b.extend_from_slice(self.serial.as_bytes());
                    fill(data, &b)
                }
                _ => check(0x05, 0x24, 0x00),
            };
        }
        let mut b = vec![0u8; 36];
        b[0] = 0x01;
        b[1] = 0x80;
        b[2] = 0x06;
        b[3] = 0x02;
        b[4] = 31;
        b[8..16].copy_from_slice(format!("{DRIVE_VENDOR:<8}").as_bytes());
        b[16..32].copy_from_slice(format!("{DRIVE_PRODUCT:<16}").as_bytes());
        b[32..36].copy_from_slice(b"0001");
        fill(data, &b)
    }
}

fn space(m: &mut Loaded, code: u8, n: i32) -> Answer {
    let eod = m.recs.len();
    match code {
        0 => {
            // Blocks: stop at a filemark (FILEMARK sense, positioned past it going forward,
            // before it going backward) or at BOT/EOD.
            let mut left = n.unsigned_abs() as usize;
            while left > 0 {
                if n > 0 {
                    match m.recs.get(m.pos) {
                        None => {
                            return (
                                Status::CheckCondition,
                                Some(sense_bytes(0x08, 0x00, 0x05, EOM, Some(left as i64))),
                                0,
                            )
                        }
                        Some(Rec::Filemark { .. }) => {
                            m.pos += 1;
                            return (
                                Status::CheckCondition,
                                Some(sense_bytes(0x00, 0x00, 0x01, FM, Some(left as i64))),
                                0,
                            );
                        }
                        Some(_) => m.pos += 1,
                    }
                } else {
                    if m.pos == 0 {
                        return (
                            Status::CheckCondition,
                            Some(sense_bytes(0x00, 0x00, 0x04, EOM, Some(left as i64))),
                            0,
                        );
                    }
                    if let Rec::Filemark { .. } = m.recs[m.pos - 1] {
                        return (Status::CheckCondition, Some(sense_bytes(0x00, 0x00, 0x01, FM, Some(left as i64))), 0);
                    }
                    m.pos -= 1;
                }
                left -= 1;
            }
            (Status::Good, None, 0)
        }
        1 => {
            let mut left = n.unsigned_abs() as usize;
            while left > 0 {
                if n > 0 {
                    let Some(i) = (m.pos..eod).find(|&i| matches!(m.recs[i], Rec::Filemark { .. })) else {
                        m.pos = eod;
                        return (
                            Status::CheckCondition,
                            Some(sense_bytes(0x08, 0x00, 0x05, EOM, Some(left as i64))),
                            0,
                        );
                    };
                    m.pos = i + 1;
                } else {
                    let Some(i) = (0..m.pos).rev().find(|&i| matches!(m.recs[i], Rec::Filemark { .. })) else {
                        m.pos = 0;
                        return (
                            Status::CheckCondition,
                            Some(sense_bytes(0x00, 0x00, 0x04, EOM, Some(left as i64))),
                            0,
                        );
                    };
                    m.pos = i; // on the BOT side of the filemark
                }
                left -= 1;
            }
            (Status::Good, None, 0)
        }
        3 => {
            m.pos = eod;
            (Status::Good, None, 0)
        }
        _ => check(0x05, 0x24, 0x00),
    }
}

pub(crate) fn fill(data: &mut DataDir<'_>, src: &[u8]) -> Answer {
    match data {
        DataDir::In(b) => {
            let n = b.len().min(src.len());
            b[..n].copy_from_slice(&src[..n]);
            (Status::Good, None, n)
        }
        _ => (Status::Good, None, 0),
    }
}

impl ScsiTransport for EmulatedDrive {
    fn execute(&self, cmd: &mut Command<'_>) -> Result<Completion, TransportError> {
        if let (Ok(mut c), Some(&o)) = (self.counts.lock(), cmd.cdb.first()) {
            c[usize::from(o)] += 1;
        }
        let (status, sense, transferred) = self.run(cmd.cdb, &mut cmd.data);
        let len = cmd.data.len();
        let residual = if transferred < len { Residual::Under(len - transferred) } else { Residual::None };
        Ok(Completion { status, sense: sense.and_then(|b| Sense::parse(&b)), residual, transferred })
    }

    fn describe(&self) -> String {
        format!("emulated tape drive {}", self.serial)
    }
}
