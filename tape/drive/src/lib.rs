//! `drive`: one tape drive, driven through the [`scsi::ScsiTransport`] seam. Mechanism only:
//! no labels, pools or media sets (those are the engine's).
//!
//! [`TapeDrive`] opens a sequential-access logical unit and offers the operations a backup
//! writer and reader need: media state ([`TapeDrive::test_unit_ready`]), variable-block
//! [`write_block`](TapeDrive::write_block) / [`read_block`](TapeDrive::read_block), filemarks,
//! spacing, and positioning ([`TapeDrive::position`], [`TapeDrive::locate`]).
//!
//! # Command sets used
//! SPC: INQUIRY (peripheral type must be 0x01, sequential access), VPD 0x80 (serial), TEST
//! UNIT READY, MODE SENSE(6). SSC: READ(6)/WRITE(6) variable mode, WRITE FILEMARKS(6),
//! SPACE(6) blocks/filemarks/end of data, REWIND, LOAD UNLOAD, READ BLOCK LIMITS,
//! MODE SELECT(6) (block descriptor), READ POSITION short/long, LOCATE(16), LOG SENSE page
//! 0x2e (TapeAlert) and PREVENT ALLOW MEDIUM REMOVAL where the drive supports them.
//!
//! # Drives that do not implement everything (tgt's emulation)
//! - READ POSITION answering GOOD with BYCU/LOLU set, or an all-zero long form without BOP,
//!   means "position unknown": the drive is marked as having no hardware position and
//!   the tracked position is used from then on. LOCATE rejected with ILLEGAL REQUEST 20/00
//!   (or 24/00) marks LOCATE unsupported; [`TapeDrive::locate`] then uses REWIND + SPACE.
//! - The iSCSI residual of a READ that met a shorter or longer block is wrong on tgt: the
//!   block length is learnt only from the sense INFORMATION field with ILI
//!   (requested - actual, signed).
//!   tgt also *sends* only "requested - block length" bytes, so when the block is more than
//!   half the buffer its tail is missing: when the transport delivered fewer bytes than the
//!   block holds, the drive spaces back one block and reads it again with an exact-length
//!   buffer. Readers that know their block size should pass exactly that buffer.
//! - End of data is BLANK CHECK (tgt: with EOM, ASC 00/00) or NO SENSE 00/05: both are
//!   [`ReadOutcome::EndOfData`].
//! - SPACE -N filemarks lands one block too far on tgt: this crate never spaces backwards over
//!   filemarks; it rewinds and spaces forward from BOT.
//! - Early warning (NO SENSE + EOM on WRITE) is returned to the caller as `true`; the write
//!   succeeded. tgt signals it on WRITE only, not on WRITE FILEMARKS. tgt never reports a hard end (VOLUME OVERFLOW); real drives and the emulated
//!   drive do: [`DriveError::EndOfMedium`].
//! - tgt raises UNIT ATTENTION 29/00 on the first command after login (INQUIRY excepted):
//!   every command is repeated after a UNIT ATTENTION (at most 3 times), and the tracked
//!   position is forgotten.
//! - WORM: MODE SENSE medium type 0x01 (LTO WORM). tgt sets the WORMM bit of the medium
//!   configuration page (0x1d) for every cartridge with medium type 0, so that bit counts
//!   only with a non-zero medium type. WORM cartridges are never written by
//!   [`TapeDrive::write_block`], [`TapeDrive::write_filemarks`] or [`TapeDrive::erase`].
//! - LOAD/UNLOAD and PREVENT ALLOW MEDIUM REMOVAL are no-ops on tgt; nothing here depends on
//!   them having an effect.
//!
//! # Position tracking invariants
//! The tracked position is `(file, block)`: `file` = filemarks between BOT and the head,
//! `block` = data blocks between the last of them (or BOT) and the head. It is *known* after
//! open-with-rewind, REWIND and LOAD (0, 0), and stays known across every operation whose
//! outcome fixes the head position exactly: a block read or written (+1 block), a filemark
//! read or written (+1 file, block 0), SPACE that completed with GOOD. It becomes *unknown*
//! after any error, an unload, SPACE to end of data, a SPACE that stopped early, and an
//! ILI read of a block longer than the buffer on drives that do not say where they stopped.
//! [`TapeDrive::locate`] always ends at a known position or fails. When the drive reports a
//! trustworthy READ POSITION, [`TapeDrive::position`] returns the drive's logical object
//! number beside the tracked values and records where each file starts (object number minus
//! block in file); [`TapeDrive::locate`] then issues one LOCATE(16) to a known file start plus
//! the block, and a position lost by LOCATE or SPACE to end of data is recovered from the long
//! form's file number. File starts are forgotten on a medium change (UNIT ATTENTION, no
//! medium, load, unload) and past the head on every write.
//!
//! SG_IO (`/dev/sg*`) is not implemented here: it is a [`scsi::ScsiTransport`] of its own, the
//! `sgio` crate's `SgDevice`, which a `TapeDrive` takes like any other transport.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use scsi::cdb::{spc, ssc};
use scsi::{Command, Completion, ScsiTransport, Sense, SenseKey, Status, TransportError};

/// Long timeout for commands that move tape (rewind, space, locate, load).
const MOTION_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// Largest block length a 6-byte READ/WRITE can express.
const MAX_CDB_BLOCK: usize = 0x00ff_ffff;

/// Errors of the tape drive layer; each message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The path to the drive failed.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The logical unit is not a tape drive.
    #[error(
        "{device}: logical unit is device type 0x{device_type:02x}, not a tape drive (0x01); pick the drive's LUN"
    )]
    NotATapeDrive { device: String, device_type: u8 },
    /// No cartridge is loaded.
    #[error("no cartridge in drive {device}: load one with the changer")]
    NoMedium { device: String },
    /// The drive is still loading or calibrating.
    #[error("drive {device} is becoming ready: wait a few seconds and retry")]
    BecomingReady { device: String },
    /// The cartridge's write-protect switch is set (or the drive refused writing).
    #[error("the cartridge in drive {device} is write-protected: slide its switch or use another cartridge")]
    WriteProtected { device: String },
    /// WORM media never get overwritten by this layer.
    #[error("the cartridge in drive {device} is WORM (write once): refusing to write at {at}; append only after its end of data or use another cartridge")]
    Worm { device: String, at: String },
    /// Physical end of medium: the block was not written.
    #[error("end of medium on drive {device}: the block was not written; continue on the next cartridge")]
    EndOfMedium { device: String },
    /// A block on tape is larger than the read buffer; the drive is past it.
    #[error("drive {device}: the block on tape has {block_len} bytes but the buffer holds {buffer}; the head is past the block, space back one block and read with a larger buffer")]
    BlockTooLarge { device: String, block_len: usize, buffer: usize },
    /// A block length the drive cannot take.
    #[error("drive {device}: block of {len} bytes is outside the drive's limits {min}..={max}")]
    BadBlockLength { device: String, len: usize, min: usize, max: usize },
    /// The drive is in fixed-block mode; this layer reads and writes variable blocks.
    #[error("drive {device} is in fixed-block mode ({block_len} bytes): call set_variable_block_mode first")]
    FixedMode { device: String, block_len: u32 },
    /// SPACE stopped before the count (end of data, BOT or a filemark in the way).
    #[error("drive {device}: SPACE stopped early ({sense}); the tape holds fewer blocks or files than asked")]
    SpaceStopped { device: String, sense: Sense },
    /// The drive does not implement the command.
    #[error("drive {device} does not support {command}")]
    Unsupported { device: String, command: String },
    /// A medium error (unreadable or unwritable area).
    #[error("drive {device}: {command} failed with a medium error: {sense}; the cartridge may be damaged, clean the drive and retry or use another cartridge")]
    Medium { device: String, command: String, sense: Sense },
    /// The drive needs cleaning.
    #[error("drive {device} asks for cleaning: load a cleaning cartridge (CLN barcode)")]
    NeedsCleaning { device: String },
    /// Any other CHECK CONDITION.
    #[error("drive {device}: {command} failed: {sense}")]
    Check { device: String, command: String, sense: Sense },
    /// A status other than GOOD / CHECK CONDITION.
    #[error("drive {device}: {command} ended with status {status}; retry later")]
    Status { device: String, command: String, status: Status },
    /// The drive's answer could not be decoded.
    #[error("drive {device}: malformed answer to {command}; the drive or target misbehaves")]
    Malformed { device: String, command: String },
}

/// What kind of failure, for control flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Trying again (maybe after a pause) may help.
    Retryable,
    /// An operator must act (load, clean, replace a cartridge).
    NeedsOperator,
    /// End of medium: the caller continues on another cartridge.
    EndOfMedium,
    /// Retrying will not help.
    Permanent,
}

impl DriveError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DriveError::Transport(t) if t.is_transient() => ErrorKind::Retryable,
            DriveError::BecomingReady { .. } | DriveError::Status { .. } => ErrorKind::Retryable,
            DriveError::NoMedium { .. }
            | DriveError::WriteProtected { .. }
            | DriveError::Worm { .. }
            | DriveError::NeedsCleaning { .. }
            | DriveError::Medium { .. } => ErrorKind::NeedsOperator,
            DriveError::EndOfMedium { .. } => ErrorKind::EndOfMedium,
            _ => ErrorKind::Permanent,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DriveError>;

/// Media state from TEST UNIT READY (and MODE SENSE when ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaState {
    NoMedium,
    BecomingReady,
    Ready,
    /// Ready, but writes will be refused.
    WriteProtected,
    /// Ready, write-once medium.
    Worm,
}

/// Outcome of [`TapeDrive::read_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A block of this many bytes is in the buffer's head.
    Data(usize),
    /// A filemark was read; the head is past it (at block 0 of the next file).
    Filemark,
    /// No more data was recorded; the head stays at end of data.
    EndOfData,
}

/// Identification of the drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveInfo {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Unit serial number (VPD 0x80), e.g. "DRV00001"; empty when the drive has none.
    pub serial: String,
}

/// Where the head is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapePosition {
    /// Filemarks from BOT.
    pub file: u64,
    /// Blocks since the last filemark (or BOT).
    pub block: u64,
    /// Logical object number (blocks + filemarks from BOT) as the drive reported it, when it
    /// reports positions.
    pub object: Option<u64>,
}

/// A sequential-access device over any [`ScsiTransport`]. Not `Sync` by design: one owner
/// drives the tape.
#[derive(Debug)]
pub struct TapeDrive {
    t: Arc<dyn ScsiTransport>,
    name: String,
    info: DriveInfo,
    limits: Option<ssc::BlockLimits>,
    /// Tracked position; `None` when unknown.
    pos: Option<(u64, u64)>,
    /// `Some(false)` once READ POSITION proved useless.
    hw_position: Option<bool>,
    /// `Some(false)` once LOCATE was rejected.
    hw_locate: Option<bool>,
    worm: bool,
    write_protected: bool,
    fixed_block_len: u32,
    early_warning: bool,
    /// Drives with READ POSITION: logical object number of each file's first block, learnt
    /// whenever the tracked position and the drive's position were both known. Forgotten on
    /// a medium change; entries past a write are dropped (the write set a new end of data).
    file_starts: BTreeMap<u64, u64>,
}

fn is_unsupported(s: &Sense) -> bool {
    s.key == SenseKey::IllegalRequest && matches!(s.asc, 0x20 | 0x24)
}

impl TapeDrive {
    /// Opens the drive: INQUIRY (must be a tape drive), serial, block limits. Does not move
    /// the tape and does not require a cartridge; the position is unknown until
    /// [`rewind`](Self::rewind) or [`load`](Self::load).
    pub fn open(transport: Arc<dyn ScsiTransport>) -> Result<TapeDrive> {
        let mut d = TapeDrive {
            name: transport.describe(),
            t: transport,
            info: DriveInfo {
                vendor: String::new(),
                product: String::new(),
                revision: String::new(),
                serial: String::new(),
            },
            limits: None,
            pos: None,
            hw_position: None,
            hw_locate: None,
            worm: false,
            write_protected: false,
            fixed_block_len: 0,
            early_warning: false,
            file_starts: BTreeMap::new(),
        };
        let mut buf = [0u8; 96];
        let n = d.data_in(&spc::inquiry(96), &mut buf, None)?;
        let inq = scsi::parse::inquiry(&buf[..n])
            .map_err(|_| DriveError::Malformed { device: d.name.clone(), command: "INQUIRY".into() })?;
        if inq.qualifier != 0 || inq.device_type != 0x01 {
            return Err(DriveError::NotATapeDrive { device: d.name, device_type: inq.device_type });
        }
        d.info.vendor = inq.vendor;
        d.info.product = inq.product;
        d.info.revision = inq.revision;
        let mut vpd = [0u8; 255];
        if let Ok(n) = d.data_in(&spc::inquiry_vpd(spc::vpd::UNIT_SERIAL, 255), &mut vpd, None) {
            if let Ok(s) = scsi::parse::vpd_serial(&vpd[..n]) {
                d.info.serial = s.trim().to_string();
            }
        }
        if !d.info.serial.is_empty() {
            d.name = d.info.serial.clone();
        }
        let mut bl = [0u8; 6];
        if let Ok(n) = d.data_in(&ssc::read_block_limits(), &mut bl, None) {
            d.limits = ssc::block_limits(&bl[..n]);
        }
        Ok(d)
    }

    /// The name used in messages: the serial number, or the transport's description.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> &DriveInfo {
        &self.info
    }

    /// READ BLOCK LIMITS as read at open (`None` when the drive did not answer).
    pub fn block_limits(&self) -> Option<ssc::BlockLimits> {
        self.limits
    }

    /// Whether the last write (since the last rewind/load) passed early warning.
    pub fn early_warning(&self) -> bool {
        self.early_warning
    }

    /// TEST UNIT READY, then (when ready) MODE SENSE for write protection and WORM.
    pub fn test_unit_ready(&mut self) -> Result<MediaState> {
        let c = self.exec(&mut Command::none(&spc::test_unit_ready()))?;
        if c.status == Status::CheckCondition {
            let s = c.sense.unwrap_or_else(empty_sense);
            return match (s.key, s.asc, s.ascq) {
                (SenseKey::NotReady, 0x3a, _) => {
                    self.pos = None;
                    self.file_starts.clear();
                    Ok(MediaState::NoMedium)
                }
                (SenseKey::NotReady, 0x04, 0x01) => Ok(MediaState::BecomingReady),
                (SenseKey::NotReady, _, _) => Ok(MediaState::BecomingReady),
                _ => Err(self.check_error("TEST UNIT READY", s)),
            };
        }
        self.status_ok("TEST UNIT READY", &c)?;
        self.refresh_mode()?;
        Ok(if self.worm {
            MediaState::Worm
        } else if self.write_protected {
            MediaState::WriteProtected
        } else {
            MediaState::Ready
        })
    }

    /// Reads the mode header (write protect, block length) and the medium configuration page
    /// (WORM bit), when the drive has it.
    fn refresh_mode(&mut self) -> Result<()> {
        let mut b = [0u8; 255];
        let n = self.data_in(&spc::mode_sense6(0x00, 0, spc::PageControl::Current, false, 255), &mut b, None)?;
        let h = ssc::mode_header6(&b[..n])
            .ok_or_else(|| DriveError::Malformed { device: self.name.clone(), command: "MODE SENSE(6)".into() })?;
        self.write_protected = h.write_protected();
        self.fixed_block_len = h.block_len.unwrap_or(0);
        let cmd = spc::mode_sense6(ssc::MEDIUM_CONFIGURATION_PAGE, 0, spc::PageControl::Current, true, 255);
        let wormm = match self.data_in(&cmd, &mut b, None) {
            Ok(n) => ssc::mode_worm(&b[..n]).unwrap_or(false),
            Err(_) => false,
        };
        // Medium type 0x01 is a WORM cartridge on LTO drives (IBM, HP). The WORMM bit of
        // page 0x1d is believed only with a non-data medium type: tgt sets it for every
        // cartridge while reporting medium type 0.
        self.worm = h.medium_type == 0x01 || (wormm && h.medium_type != 0x00);
        Ok(())
    }

    /// Whether the loaded cartridge is write-once (as of the last [`test_unit_ready`](Self::test_unit_ready)).
    pub fn is_worm(&self) -> bool {
        self.worm
    }

    /// Sets variable-block mode (block length 0) with MODE SELECT(6).
    pub fn set_variable_block_mode(&mut self) -> Result<()> {
        self.set_block_len(0)
    }

    /// Sets the block length (0 = variable) with MODE SELECT(6), keeping the default density.
    pub fn set_block_len(&mut self, len: u32) -> Result<()> {
        let p = ssc::mode_select6_block_descriptor(0, len);
        self.run("MODE SELECT(6)", &mut Command::write(&ssc::mode_select6(p.len() as u8), &p))?;
        self.fixed_block_len = len;
        Ok(())
    }

    /// REWIND to BOT; the tracked position becomes (0, 0).
    pub fn rewind(&mut self) -> Result<()> {
        self.pos = None;
        self.motion("REWIND", &ssc::rewind(false))?;
        self.pos = Some((0, 0));
        self.early_warning = false;
        Ok(())
    }

    /// LOAD: threads the cartridge and positions at BOT.
    pub fn load(&mut self) -> Result<()> {
        self.pos = None;
        self.file_starts.clear();
        self.motion("LOAD UNLOAD", &ssc::load_unload(true, false))?;
        self.pos = Some((0, 0));
        self.early_warning = false;
        self.refresh_mode()
    }

    /// UNLOAD: rewinds and ejects, so the changer can take the cartridge.
    pub fn unload(&mut self) -> Result<()> {
        self.pos = None;
        self.file_starts.clear();
        self.motion("LOAD UNLOAD", &ssc::load_unload(false, false))
    }

    /// PREVENT (true) or ALLOW medium removal. Not enforced by every drive (tgt).
    pub fn prevent_removal(&mut self, prevent: bool) -> Result<()> {
        self.run("PREVENT ALLOW MEDIUM REMOVAL", &mut Command::none(&ssc::prevent_allow_medium_removal(prevent)))
            .map(|_| ())
    }

    fn check_writable(&self) -> Result<()> {
        if self.worm {
            let at = match self.pos {
                Some((f, b)) => format!("file {f} block {b}"),
                None => "an unknown position".into(),
            };
            return Err(DriveError::Worm { device: self.name.clone(), at });
        }
        if self.write_protected {
            return Err(DriveError::WriteProtected { device: self.name.clone() });
        }
        if self.fixed_block_len != 0 {
            return Err(DriveError::FixedMode { device: self.name.clone(), block_len: self.fixed_block_len });
        }
        Ok(())
    }

    /// Writes one variable-length block. `Ok(true)`: written, and the drive is past early
    /// warning (finish the current record set and continue on the next cartridge soon).
    pub fn write_block(&mut self, data: &[u8]) -> Result<bool> {
        self.check_writable()?;
        let (min, max) = match self.limits {
            Some(l) if l.max > 0 => (l.min as usize, (l.max as usize).min(MAX_CDB_BLOCK)),
            Some(l) => (l.min as usize, MAX_CDB_BLOCK),
            None => (1, MAX_CDB_BLOCK),
        };
        if data.len() < min.max(1) || data.len() > max {
            return Err(DriveError::BadBlockLength {
                device: self.name.clone(),
                len: data.len(),
                min: min.max(1),
                max,
            });
        }
        self.forget_files_after_head();
        let cdb = ssc::write6_variable(data.len() as u32);
        let ew = self.write_like("WRITE(6)", &cdb, data)?;
        if let Some((f, b)) = self.pos {
            self.pos = Some((f, b + 1));
        }
        Ok(ew)
    }

    /// Writes `n` filemarks (0 only flushes the drive's buffer). `Ok(true)`: past early
    /// warning.
    pub fn write_filemarks(&mut self, n: u32) -> Result<bool> {
        if n > 0 {
            self.check_writable()?;
        }
        if n > 0 {
            self.forget_files_after_head();
        }
        let ew = self.write_like("WRITE FILEMARKS(6)", &ssc::write_filemarks6(n, false), &[])?;
        if n > 0 {
            if let Some((f, _)) = self.pos {
                self.pos = Some((f + u64::from(n), 0));
            }
        }
        Ok(ew)
    }

    /// A write at the head sets a new end of data: files after the head's file are gone.
    fn forget_files_after_head(&mut self) {
        match self.pos {
            Some((f, _)) => {
                self.file_starts.split_off(&(f + 1));
            }
            None => self.file_starts.clear(),
        }
    }

    fn write_like(&mut self, what: &str, cdb: &[u8], data: &[u8]) -> Result<bool> {
        let mut cmd = if data.is_empty() { Command::none(cdb) } else { Command::write(cdb, data) };
        cmd.timeout = Some(MOTION_TIMEOUT);
        let c = self.exec(&mut cmd)?;
        if c.status == Status::Good {
            return Ok(false);
        }
        if c.status != Status::CheckCondition {
            self.pos = None;
            return Err(DriveError::Status { device: self.name.clone(), command: what.into(), status: c.status });
        }
        let s = c.sense.unwrap_or_else(empty_sense);
        match s.key {
            SenseKey::NoSense | SenseKey::RecoveredError if s.eom => {
                self.early_warning = true;
                Ok(true)
            }
            SenseKey::NoSense | SenseKey::RecoveredError => Ok(false),
            SenseKey::VolumeOverflow => {
                self.pos = None;
                Err(DriveError::EndOfMedium { device: self.name.clone() })
            }
            _ => {
                self.pos = None;
                Err(self.check_error(what, s))
            }
        }
    }

    /// Reads the next block into `buf` (variable mode). The block's true length comes from
    /// the sense INFORMATION field when the drive reports an incorrect length, never from
    /// the transport's residual.
    pub fn read_block(&mut self, buf: &mut [u8]) -> Result<ReadOutcome> {
        if self.fixed_block_len != 0 {
            return Err(DriveError::FixedMode { device: self.name.clone(), block_len: self.fixed_block_len });
        }
        let want = buf.len().min(MAX_CDB_BLOCK);
        let cdb = ssc::read6_variable(want as u32, false);
        let mut cmd = Command::read(&cdb, &mut buf[..want]);
        cmd.timeout = Some(MOTION_TIMEOUT);
        let c = self.exec(&mut cmd)?;
        let advance = |pos: &mut Option<(u64, u64)>| {
            if let Some((f, b)) = *pos {
                *pos = Some((f, b + 1));
            }
        };
        match c.status {
            Status::Good => {
                advance(&mut self.pos);
                return Ok(ReadOutcome::Data(want));
            }
            Status::CheckCondition => {}
            status => {
                self.pos = None;
                return Err(DriveError::Status { device: self.name.clone(), command: "READ(6)".into(), status });
            }
        }
        let s = c.sense.unwrap_or_else(empty_sense);
        if s.filemark {
            if let Some((f, _)) = self.pos {
                self.pos = Some((f + 1, 0));
            }
            return Ok(ReadOutcome::Filemark);
        }
        if s.key == SenseKey::BlankCheck || (s.asc, s.ascq) == (0x00, 0x05) {
            return Ok(ReadOutcome::EndOfData);
        }
        if s.ili && matches!(s.key, SenseKey::NoSense | SenseKey::RecoveredError) {
            // INFORMATION = requested - actual, a signed 32-bit value.
            let residue = s.information.map(|i| i as u32 as i32 as i64);
            let Some(residue) = residue else {
                self.pos = None;
                return Err(DriveError::Malformed {
                    device: self.name.clone(),
                    command: "READ(6) (ILI without INFORMATION)".into(),
                });
            };
            let actual = want as i64 - residue;
            advance(&mut self.pos);
            if residue >= 0 {
                let actual = actual.max(0) as usize;
                if c.transferred < actual {
                    // The transport delivered less than the block (tgt sends only
                    // "requested - block length" bytes): read the block again, exactly.
                    return self.reread_exact(buf, actual);
                }
                return Ok(ReadOutcome::Data(actual));
            }
            return Err(DriveError::BlockTooLarge {
                device: self.name.clone(),
                block_len: actual as usize,
                buffer: want,
            });
        }
        if matches!(s.key, SenseKey::NoSense | SenseKey::RecoveredError) {
            // Early warning on read, or a recovered error: the block was read whole.
            advance(&mut self.pos);
            return Ok(ReadOutcome::Data(want));
        }
        self.pos = None;
        Err(self.check_error("READ(6)", s))
    }

    /// Spaces back over the block just read and reads it again with a buffer of exactly
    /// its length, which needs no ILI and makes every transport deliver all of it.
    fn reread_exact(&mut self, buf: &mut [u8], len: usize) -> Result<ReadOutcome> {
        self.space_blocks(-1)?;
        let cdb = ssc::read6_variable(len as u32, false);
        let mut cmd = Command::read(&cdb, &mut buf[..len]);
        cmd.timeout = Some(MOTION_TIMEOUT);
        let c = self.exec(&mut cmd)?;
        if c.status == Status::Good && c.transferred >= len {
            if let Some((f, b)) = self.pos {
                self.pos = Some((f, b + 1));
            }
            return Ok(ReadOutcome::Data(len));
        }
        self.pos = None;
        match c.sense {
            Some(s) if c.status == Status::CheckCondition => Err(self.check_error("READ(6)", s)),
            _ => Err(DriveError::Malformed {
                device: self.name.clone(),
                command: format!("READ(6) of {len} bytes (re-read delivered {} bytes)", c.transferred),
            }),
        }
    }

    /// SPACE over `n` blocks (negative: towards BOT, within the current file).
    pub fn space_blocks(&mut self, n: i32) -> Result<()> {
        let before = self.pos;
        self.space(ssc::SpaceCode::Blocks, n)?;
        self.pos = before.and_then(|(f, b)| {
            let nb = b as i64 + i64::from(n);
            (nb >= 0).then_some((f, nb as u64))
        });
        Ok(())
    }

    /// SPACE forward over `n` filemarks; the head ends just past the last one. Backward
    /// spacing over filemarks is deliberately not offered (tgt lands one block off); use
    /// [`locate`](Self::locate).
    pub fn space_filemarks(&mut self, n: u32) -> Result<()> {
        let before = self.pos;
        self.space(ssc::SpaceCode::Filemarks, n as i32)?;
        self.pos = before.map(|(f, _)| (f + u64::from(n), 0));
        Ok(())
    }

    /// SPACE to end of data (to append). The tracked position becomes unknown unless the
    /// drive reports positions.
    pub fn space_to_eod(&mut self) -> Result<()> {
        self.space(ssc::SpaceCode::EndOfData, 0)?;
        self.pos = None;
        Ok(())
    }

    fn space(&mut self, code: ssc::SpaceCode, n: i32) -> Result<()> {
        let cdb = ssc::space6(code, n);
        let saved = self.pos;
        self.pos = None;
        let mut cmd = Command::none(&cdb);
        cmd.timeout = Some(MOTION_TIMEOUT);
        let c = self.exec(&mut cmd)?;
        match c.status {
            Status::Good => {
                self.pos = saved;
                Ok(())
            }
            Status::CheckCondition => {
                let s = c.sense.unwrap_or_else(empty_sense);
                if matches!(s.key, SenseKey::NoSense | SenseKey::BlankCheck) || s.filemark || s.eom {
                    Err(DriveError::SpaceStopped { device: self.name.clone(), sense: s })
                } else {
                    Err(self.check_error("SPACE(6)", s))
                }
            }
            status => Err(DriveError::Status { device: self.name.clone(), command: "SPACE(6)".into(), status }),
        }
    }

    /// The drive's own position, when it reports a trustworthy one. Probes once; a drive
    /// answering "position unknown" (tgt) is not asked again until reopened.
    fn hw_read_position(&mut self) -> Result<Option<ssc::Position>> {
        if self.hw_position == Some(false) {
            return Ok(None);
        }
        let mut b = [0u8; 20];
        let short = match self.data_in(&ssc::read_position(ssc::read_position_sa::SHORT), &mut b, None) {
            Ok(n) => ssc::position_short(&b[..n]),
            Err(DriveError::Check { ref sense, .. }) if is_unsupported(sense) => None,
            Err(DriveError::Unsupported { .. }) => None,
            Err(e) => return Err(e),
        };
        let Some(short) = short.filter(|p| p.known()) else {
            self.hw_position = Some(false);
            return Ok(None);
        };
        self.hw_position = Some(true);
        let mut l = [0u8; 32];
        if let Ok(n) = self.data_in(&ssc::read_position(ssc::read_position_sa::LONG), &mut l, None) {
            if let Some(p) = ssc::position_long(&l[..n]) {
                // An all-zero long form without BOP is not a position.
                if p.known() && (p.bop || p.block != 0) && p.block == short.block {
                    return Ok(Some(p));
                }
            }
        }
        Ok(Some(short))
    }

    /// Where the head is: the tracked (file, block), plus the drive's logical object number
    /// when it reports one. `None` when neither is known (after an error or SPACE to EOD on a
    /// drive without READ POSITION): [`rewind`](Self::rewind) or [`locate`](Self::locate).
    ///
    /// On drives with READ POSITION this also learns where each file starts, which lets
    /// [`locate`](Self::locate) use LOCATE, and recovers the tracked position after a
    /// [`locate_object`](Self::locate_object) or SPACE to end of data into a known file.
    pub fn position(&mut self) -> Result<Option<TapePosition>> {
        let hw = self.hw_read_position()?;
        if let Some(p) = hw {
            match self.pos {
                Some((f, b)) if p.block >= b => {
                    self.file_starts.insert(f, p.block - b);
                }
                Some(_) => {}
                None => {
                    let start = match p.file {
                        Some(0) => Some(0),
                        Some(f) => self.file_starts.get(&f).copied(),
                        None => None,
                    };
                    if let (Some(f), Some(s)) = (p.file, start) {
                        if p.block >= s {
                            self.pos = Some((f, p.block - s));
                        }
                    }
                }
            }
        }
        Ok(self.pos.map(|(file, block)| TapePosition { file, block, object: hw.map(|p| p.block) }))
    }

    /// Whether the drive reports positions (READ POSITION with a block address); `None` until
    /// probed by [`position`](Self::position) or [`locate`](Self::locate).
    pub fn reports_position(&self) -> Option<bool> {
        self.hw_position
    }

    /// LOCATE(16) to a logical object number (as reported in [`TapePosition::object`]).
    /// [`DriveError::Unsupported`] when the drive has no LOCATE.
    pub fn locate_object(&mut self, object: u64) -> Result<()> {
        if self.hw_locate == Some(false) {
            return Err(DriveError::Unsupported { device: self.name.clone(), command: "LOCATE".into() });
        }
        self.pos = None;
        let cdb = ssc::locate16(object, None);
        let mut cmd = Command::none(&cdb);
        cmd.timeout = Some(MOTION_TIMEOUT);
        let c = self.exec(&mut cmd)?;
        if c.status == Status::CheckCondition {
            let s = c.sense.unwrap_or_else(empty_sense);
            if is_unsupported(&s) {
                self.hw_locate = Some(false);
                return Err(DriveError::Unsupported { device: self.name.clone(), command: "LOCATE".into() });
            }
            return Err(self.check_error("LOCATE(16)", s));
        }
        self.status_ok("LOCATE(16)", &c)?;
        self.hw_locate = Some(true);
        Ok(())
    }

    /// Positions the head before block `block` of file `file` (file 0 starts at BOT).
    ///
    /// On a drive with READ POSITION and LOCATE whose file start is known (learnt by
    /// [`position`](Self::position)), one LOCATE(16). Otherwise forward SPACE blocks when
    /// already in that file before the target, else REWIND, SPACE `file` filemarks forward,
    /// SPACE `block` blocks: always spacing forward from a known point (tgt's backward
    /// SPACE over filemarks is off by one block). Ends with a known tracked position, or an
    /// error.
    pub fn locate(&mut self, file: u64, block: u64) -> Result<()> {
        let start = if file == 0 { Some(0) } else { self.file_starts.get(&file).copied() };
        if let (Some(true), Some(start), false) = (self.hw_position, start, self.hw_locate == Some(false)) {
            match self.locate_object(start + block) {
                Ok(()) => {
                    self.pos = Some((file, block));
                    return Ok(());
                }
                Err(DriveError::Unsupported { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if block >= 1 << 23 || file >= 1 << 23 {
            return Err(DriveError::Unsupported {
                device: self.name.clone(),
                command: "locating a file or block number of 2^23 or more (SPACE(6) count)".into(),
            });
        }
        match self.pos {
            Some((f, b)) if f == file && b <= block => {}
            _ => {
                self.rewind()?;
                if file > 0 {
                    self.space_filemarks(file as u32)?;
                }
            }
        }
        let (_, b) = self.pos.unwrap_or((file, 0));
        if block > b {
            self.space_blocks((block - b) as i32)?;
        }
        self.pos = Some((file, block));
        Ok(())
    }

    /// Active TapeAlert flags (LOG SENSE page 0x2e); empty when the drive has no TapeAlert.
    pub fn tape_alerts(&mut self) -> Result<Vec<u8>> {
        let mut b = [0u8; 512];
        match self.data_in(&ssc::log_sense(ssc::TAPE_ALERT_PAGE, 512), &mut b, None) {
            Ok(n) => Ok(ssc::tape_alerts(&b[..n])),
            Err(DriveError::Unsupported { .. }) => Ok(Vec::new()),
            Err(DriveError::Check { ref sense, .. }) if is_unsupported(sense) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Whether the drive asks for cleaning (TapeAlert 20/21); false when it cannot tell.
    pub fn needs_cleaning(&mut self) -> Result<bool> {
        let a = self.tape_alerts()?;
        Ok(a.contains(&ssc::TAPE_ALERT_CLEAN_NOW) || a.contains(&ssc::TAPE_ALERT_CLEAN_PERIODIC))
    }

    /// ERASE from the head to the end (short: writes end of data). Refused on WORM media.
    pub fn erase(&mut self, long: bool) -> Result<()> {
        self.check_writable()?;
        let saved = self.pos;
        self.motion("ERASE(6)", &ssc::erase6(long, false))?;
        self.pos = saved;
        Ok(())
    }

    // ---- plumbing -------------------------------------------------------------------------

    /// Runs a command, repeating it (at most 3 times) after a UNIT ATTENTION, which did not
    /// execute it (tgt raises 29/00 once after login). A UNIT ATTENTION means a reset or a
    /// medium change: the tracked position is forgotten.
    fn exec(&mut self, cmd: &mut Command<'_>) -> Result<Completion> {
        let mut c = self.t.execute(cmd)?;
        for _ in 0..3 {
            if !c.sense.as_ref().is_some_and(|s| s.is_unit_attention()) {
                break;
            }
            self.pos = None;
            self.file_starts.clear();
            c = self.t.execute(cmd)?;
        }
        Ok(c)
    }

    fn motion(&mut self, what: &str, cdb: &[u8]) -> Result<()> {
        let mut cmd = Command::none(cdb);
        cmd.timeout = Some(MOTION_TIMEOUT);
        self.run(what, &mut cmd).map(|_| ())
    }

    fn run(&mut self, what: &str, cmd: &mut Command<'_>) -> Result<Completion> {
        let c = self.exec(cmd)?;
        self.status_ok(what, &c)?;
        Ok(c)
    }

    fn data_in(&mut self, cdb: &[u8], buf: &mut [u8], timeout: Option<Duration>) -> Result<usize> {
        let what = scsi::cdb::name(cdb);
        let mut cmd = Command::read(cdb, buf);
        cmd.timeout = timeout;
        let c = self.exec(&mut cmd)?;
        self.status_ok(&what, &c)?;
        Ok(c.transferred)
    }

    fn status_ok(&self, what: &str, c: &Completion) -> Result<()> {
        match c.status {
            Status::Good | Status::ConditionMet => Ok(()),
            Status::CheckCondition => {
                let s = c.sense.clone().unwrap_or_else(empty_sense);
                // Recovered errors and plain NO SENSE completed the command.
                if matches!(s.key, SenseKey::RecoveredError)
                    || (s.key == SenseKey::NoSense && !s.filemark && !s.eom && !s.ili)
                {
                    return Ok(());
                }
                Err(self.check_error(what, s))
            }
            status => Err(DriveError::Status { device: self.name.clone(), command: what.into(), status }),
        }
    }

    fn check_error(&self, what: &str, s: Sense) -> DriveError {
        let device = self.name.clone();
        match (s.key, s.asc, s.ascq) {
            (SenseKey::NotReady, 0x3a, _) => DriveError::NoMedium { device },
            (SenseKey::NotReady, 0x04, 0x01) => DriveError::BecomingReady { device },
            (SenseKey::NotReady, 0x30, 0x03) | (_, 0x82, 0x82) => DriveError::NeedsCleaning { device },
            (SenseKey::DataProtect, 0x30, 0x0c)
            | (SenseKey::DataProtect, 0x30, 0x0d)
            | (SenseKey::DataProtect, 0x2c, _) => DriveError::Worm { device, at: "the current position".into() },
            (SenseKey::DataProtect, _, _) => DriveError::WriteProtected { device },
            (SenseKey::VolumeOverflow, _, _) => DriveError::EndOfMedium { device },
            (SenseKey::MediumError, _, _) => DriveError::Medium { device, command: what.into(), sense: s },
            (SenseKey::IllegalRequest, 0x20, 0x00) => DriveError::Unsupported { device, command: what.into() },
            _ => DriveError::Check { device, command: what.into(), sense: s },
        }
    }
}

fn empty_sense() -> Sense {
    Sense {
        response_code: 0x70,
        deferred: false,
        key: SenseKey::NoSense,
        asc: 0,
        ascq: 0,
        filemark: false,
        eom: false,
        ili: false,
        information: None,
        command_specific: None,
        key_specific: None,
    }
}
