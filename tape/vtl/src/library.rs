//! An emulated tape library: a picker, mail slots, [`EmulatedDrive`]s and storage slots behind
//! an SMC media changer ([`EmulatedChanger`], a [`ScsiTransport`]), with its inventory on disk.
//! For fast tests of the changer and drive layers without tgt, and for the appliance's dev
//! mode (which keeps its library across restarts).
//!
//! # Element map
//! The same as our tgt VTL (`tests/peers/start-tgt-vtl.sh`), so tests and the dev mode see
//! the addresses a real setup shows:
//! ```text
//!   picker 1 | mail slots 10.. | drives 500.. (drive i = 500 + i) | storage slots 1000..
//! ```
//! [`LibraryConfig`] bounds the counts so the ranges never overlap (at most 490 mail slots,
//! 500 drives, 64536 slots).
//!
//! # Directory
//! ```text
//!   <dir>/library.json      the inventory (below); replaced atomically (tmp, fsync, rename)
//!   <dir>/library.lock      locked exclusively while an EmulatedLibrary has the directory open
//!   <dir>/media/<barcode>   one cartridge file per barcode (see the crate docs)
//! ```
//! `library.json` (pretty-printed; `source` and `imported` may be omitted):
//! ```text
//! { "format": 1,
//!   "serial": "RVL3A9F1",                                   changer serial (VPD 0x80)
//!   "config": { "drives": 2, "slots": 10, "mail_slots": 2, "early_warning": 8388608 },
//!   "drive_serials": ["RVL3A9F1D01", "RVL3A9F1D02"],         drive i = element 500 + i
//!   "cartridges": [
//!     { "barcode": "TST001L6", "element": 500, "source": 1000, "imported": false }, ... ] }
//! ```
//! `source` is the slot or mail slot the cartridge last left (reported with SVALID): the
//! slot it was created in, at first. `imported` marks a cartridge an operator put into a mail
//! slot (IMPEXP). A newer `format` is refused.
//!
//! # Invariants
//! - An element holds at most one cartridge and a barcode is in at most one element.
//! - `library.json` is rewritten after every change of the inventory and before the command
//!   or operator action reports success; when the write fails the change is undone. Whatever
//!   happens to the process, reopening finds the last inventory reported to anyone.
//! - A data cartridge recorded in drive element 500 + i is loaded in drive i (or ejected in
//!   its throat by LOAD UNLOAD), and [`EmulatedLibrary::open`] loads it again. Cleaning
//!   cartridges (barcode prefix `CLN`) are never loaded: moving one into a drive cleans the
//!   drive at once ([`EmulatedDrive::clean`]) and the drive ejects it; it stays in the drive
//!   element until moved away, as on a real library.
//! - Media files outlive the inventory: a cartridge removed from a mail slot or pulled from a
//!   drive keeps its file, and inserting the same barcode again brings its data back.
//! - Lock order: the library's state, then a drive's; a drive never calls into the library.
//!
//! # SCSI behaviour of the changer
//! INQUIRY (type 0x08, VPD 0x00 and 0x80), TEST UNIT READY, REQUEST SENSE, MODE SENSE(6/10)
//! pages 0x1d (element address assignment), 0x1e, 0x1f and 0x3f, READ ELEMENT STATUS
//! (VOLTAG barcodes, FULL, ACCESS, IMPEXP, SVALID + source, medium type, DVCID identifiers
//! `"<vendor(8)><product(16)><serial>"` of the drives as the `changer` crate parses them; any
//! element type including 0 = all, one page per run of one type in address order; starting
//! addresses need not name an element), MOVE MEDIUM, INITIALIZE ELEMENT STATUS (a no-op: the
//! inventory is always known), PREVENT ALLOW MEDIUM REMOVAL (locks the mail slots against
//! the operator actions). MOVE MEDIUM errors: ILLEGAL REQUEST 3b/0e (source empty), 3b/0d
//! (destination full), 21/01 (no such element), 53/02 (the source drive has PREVENT MEDIUM
//! REMOVAL in force and cannot eject), HARDWARE ERROR 53/00 (the destination drive could not
//! load the cartridge file) and 44/00 (`library.json` could not be written). A drive
//! holding a cartridge is unloaded by the move itself (auto-unload, as most libraries do).
//!
//! UNIT ATTENTION: each changer transport reports 28/01 (import or export element accessed)
//! once after an operator used a mail slot, and 28/00 after a cartridge was pulled from a
//! drive; a drive reports 28/00 after every load.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use scsi::cdb::op;
use scsi::{Command, Completion, DataDir, Residual, ScsiTransport, Sense, Status, TransportError};
use serde::{Deserialize, Serialize};

use crate::{
    check, create_medium, fill, medium_options, Answer, EmulatedDrive, MediumOptions, DRIVE_PRODUCT, DRIVE_VENDOR,
};

/// Element address of the picker (medium transport element).
pub const PICKER_ADDRESS: u16 = 1;
/// First mail slot (import/export element).
pub const MAIL_SLOT_BASE: u16 = 10;
/// First drive (data transfer element): drive i is `DRIVE_BASE + i`.
pub const DRIVE_BASE: u16 = 500;
/// First storage slot.
pub const SLOT_BASE: u16 = 1000;

const FORMAT: u32 = 1;
const INVENTORY: &str = "library.json";
const INVENTORY_TMP: &str = "library.json.tmp";
const LOCK: &str = "library.lock";
const MEDIA: &str = "media";
const VENDOR: &str = "RVEMU";
const PRODUCT: &str = "EMULATED-LIBRARY";

/// Shape of a new library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryConfig {
    /// Tape drives, elements 500.. (at most 500).
    pub drives: usize,
    /// Storage slots, elements 1000.. (at most 64536).
    pub slots: usize,
    /// Mail slots, elements 10.. (at most 490).
    pub mail_slots: usize,
    /// Bytes before a cartridge's end at which its drive signals early warning.
    pub early_warning: u64,
}

impl LibraryConfig {
    fn check(&self) -> Result<(), String> {
        if self.mail_slots > usize::from(DRIVE_BASE - MAIL_SLOT_BASE) {
            return Err(format!(
                "{} mail slots; at most {} fit at addresses 10..500",
                self.mail_slots,
                DRIVE_BASE - 10
            ));
        }
        if self.drives > usize::from(SLOT_BASE - DRIVE_BASE) {
            return Err(format!(
                "{} drives; at most {} fit at addresses 500..1000",
                self.drives,
                SLOT_BASE - DRIVE_BASE
            ));
        }
        let max_slots = 0x1_0000 - usize::from(SLOT_BASE);
        if self.slots > max_slots {
            return Err(format!("{} slots; at most {max_slots} fit at addresses 1000..=65535", self.slots));
        }
        Ok(())
    }
}

/// A cartridge of a new library. Barcodes starting with `CLN` are cleaning cartridges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartridgeSpec {
    /// 1 to 32 ASCII letters, digits, `-` or `_` (it is also the media file's name).
    pub barcode: String,
    /// Usable bytes (see [`MediumOptions::capacity`]).
    pub capacity: u64,
    pub worm: bool,
}

/// Errors of the emulated library; each message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("emulated library {dir}: {detail}; choose a smaller library")]
    InvalidConfig { dir: PathBuf, detail: String },
    #[error("barcode {barcode:?} cannot be used: {reason}; use 1 to 32 ASCII letters, digits, '-' or '_' (e.g. TST001L6, CLN001L1)")]
    InvalidBarcode { barcode: String, reason: &'static str },
    #[error("cartridge {barcode} is already in the library ({kind} {address}); barcodes must be unique")]
    DuplicateBarcode { barcode: String, kind: &'static str, address: u16 },
    #[error("{dir} already holds an emulated library; open it instead, or choose an empty directory")]
    AlreadyExists { dir: PathBuf },
    #[error("cartridge file {path} already exists; remove it or choose an empty directory")]
    MediaExists { path: PathBuf },
    #[error("{dir} holds no emulated library ({INVENTORY} is missing); create one first")]
    NotFound { dir: PathBuf },
    #[error("emulated library {dir} is already open (in this process or another); close it first")]
    InUse { dir: PathBuf },
    #[error("emulated library {path}: {detail}; fix or restore the file, or create a new library")]
    Corrupt { path: PathBuf, detail: String },
    #[error("emulated library: {what} {path} failed: {source}; check the directory is writable and has space")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no empty mail slot (the library has {count}); remove a cartridge from a mail slot first")]
    MailSlotsFull { count: usize },
    #[error("element {address} is not a mail slot (this library's are {})", mail_range(*first, *count))]
    NotAMailSlot { address: u16, first: u16, count: usize },
    #[error("mail slot {address} is empty: nothing to remove")]
    MailSlotEmpty { address: u16 },
    #[error("the mail slots are locked (PREVENT MEDIUM REMOVAL sent to the changer); allow medium removal first")]
    MailSlotsLocked,
    #[error("drive {index} does not exist; the library has {count} drive(s), numbered from 0")]
    NoSuchDrive { index: usize, count: usize },
    #[error("drive {index} (element {address}) holds no cartridge: nothing to pull")]
    DriveEmpty { index: usize, address: u16 },
    #[error("cartridge {barcode} is not in the library; insert it first")]
    NotInLibrary { barcode: String },
    #[error("cartridge {barcode} is in drive element {address}; move it to a slot first")]
    InDrive { barcode: String, address: u16 },
}

fn mail_range(first: u16, count: usize) -> String {
    match count {
        0 => "none".to_string(),
        n => format!("{first}..={}", usize::from(first) + n - 1),
    }
}

impl From<LibraryError> for io::Error {
    fn from(e: LibraryError) -> io::Error {
        let kind = match &e {
            LibraryError::Io { source, .. } => source.kind(),
            LibraryError::AlreadyExists { .. } | LibraryError::MediaExists { .. } => io::ErrorKind::AlreadyExists,
            LibraryError::NotFound { .. } => io::ErrorKind::NotFound,
            LibraryError::InUse { .. } => io::ErrorKind::ResourceBusy,
            LibraryError::Corrupt { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// Whether a barcode names a cleaning cartridge (`CLN` prefix, as LTO labels do).
fn is_cleaning(barcode: &str) -> bool {
    barcode.as_bytes().get(..3).is_some_and(|p| p.eq_ignore_ascii_case(b"CLN"))
}

fn check_barcode(b: &str) -> Result<(), LibraryError> {
    let reason = if b.is_empty() {
        "it is empty"
    } else if b.len() > 32 {
        "it is longer than a volume tag's 32 characters"
    } else if !b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
        "it holds characters other than letters, digits, '-' and '_'"
    } else {
        return Ok(());
    };
    Err(LibraryError::InvalidBarcode { barcode: b.to_string(), reason })
}

/// Where an element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Picker,
    MailSlot,
    Drive(usize),
    Slot,
}

impl Place {
    /// SMC element type code.
    fn type_code(self) -> u8 {
        match self {
            Place::Picker => 1,
            Place::Slot => 2,
            Place::MailSlot => 3,
            Place::Drive(_) => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Place::Picker => "picker",
            Place::Slot => "slot",
            Place::MailSlot => "mail slot",
            Place::Drive(_) => "drive",
        }
    }
}

fn place(cfg: &LibraryConfig, a: u16) -> Option<Place> {
    let within = |base: u16, n: usize| a >= base && usize::from(a - base) < n;
    if a == PICKER_ADDRESS {
        Some(Place::Picker)
    } else if within(MAIL_SLOT_BASE, cfg.mail_slots) {
        Some(Place::MailSlot)
    } else if within(DRIVE_BASE, cfg.drives) {
        Some(Place::Drive(usize::from(a - DRIVE_BASE)))
    } else if within(SLOT_BASE, cfg.slots) {
        Some(Place::Slot)
    } else {
        None
    }
}

/// Every element in address order (the bases ascend and the ranges never overlap).
fn elements(cfg: &LibraryConfig) -> impl Iterator<Item = (u16, Place)> {
    let range = |base: u16, n: usize| (0..n).map(move |i| base + i as u16);
    std::iter::once((PICKER_ADDRESS, Place::Picker))
        .chain(range(MAIL_SLOT_BASE, cfg.mail_slots).map(|a| (a, Place::MailSlot)))
        .chain(range(DRIVE_BASE, cfg.drives).map(|a| (a, Place::Drive(usize::from(a - DRIVE_BASE)))))
        .chain(range(SLOT_BASE, cfg.slots).map(|a| (a, Place::Slot)))
}

/// `library.json`.
#[derive(Debug, Serialize, Deserialize)]
struct LibraryFile {
    format: u32,
    serial: String,
    config: LibraryConfig,
    drive_serials: Vec<String>,
    cartridges: Vec<CartridgeRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CartridgeRecord {
    barcode: String,
    element: u16,
    #[serde(default)]
    source: Option<u16>,
    #[serde(default)]
    imported: bool,
}

#[derive(Debug, Clone)]
struct Cartridge {
    barcode: String,
    /// The slot or mail slot it last left (SVALID).
    source: Option<u16>,
    /// Put into a mail slot by an operator (IMPEXP).
    imported: bool,
    /// From the media file's header, for the descriptor's medium type.
    worm: bool,
}

#[derive(Debug, Default)]
struct LibState {
    /// Cartridges by element address.
    at: BTreeMap<u16, Cartridge>,
    /// PREVENT MEDIUM REMOVAL from the mail slots.
    prevent: bool,
    /// Operator actions so far; a changer transport that has seen fewer reports
    /// `last_event` as UNIT ATTENTION once.
    events: u64,
    last_event: (u8, u8),
}

/// An emulated tape library; see the module docs.
#[derive(Debug)]
pub struct EmulatedLibrary {
    dir: PathBuf,
    serial: String,
    config: LibraryConfig,
    drives: Vec<Arc<EmulatedDrive>>,
    state: Mutex<LibState>,
    /// Holds the exclusive lock on `library.lock` while the library is open.
    _lock: File,
}

/// A changer serial that differs between libraries: two emulated libraries of one appliance
/// must not show the same drive serials, which map drives to drive elements.
fn new_serial() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let x = (t ^ u64::from(std::process::id()).rotate_left(32) ^ COUNTER.fetch_add(1, Ordering::Relaxed) << 48)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("RVL{:05X}", x >> 44)
}

/// Maps an I/O error of `what` on `path`.
fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LibraryError {
    let path = path.to_path_buf();
    move |source| LibraryError::Io { what, path, source }
}

fn lock_dir(dir: &Path) -> Result<File, LibraryError> {
    let path = dir.join(LOCK);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LibraryError::Io { what: "opening", path: path.clone(), source })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(TryLockError::WouldBlock) => Err(LibraryError::InUse { dir: dir.to_path_buf() }),
        Err(TryLockError::Error(source)) => Err(LibraryError::Io { what: "locking", path, source }),
    }
}

impl EmulatedLibrary {
    /// Creates a library in `dir` (created if missing; must not hold a library): a media
    /// file per cartridge in `dir/media/`, placed in slots 1000.. in order.
    pub fn create(
        dir: impl AsRef<Path>,
        config: &LibraryConfig,
        cartridges: &[CartridgeSpec],
    ) -> io::Result<Arc<EmulatedLibrary>> {
        Ok(Self::create_inner(dir.as_ref(), config, cartridges)?)
    }

    fn create_inner(
        dir: &Path,
        config: &LibraryConfig,
        cartridges: &[CartridgeSpec],
    ) -> Result<Arc<EmulatedLibrary>, LibraryError> {
        let invalid = |detail: String| LibraryError::InvalidConfig { dir: dir.to_path_buf(), detail };
        config.check().map_err(invalid)?;
        if cartridges.len() > config.slots {
            return Err(invalid(format!("{} cartridges but only {} slots", cartridges.len(), config.slots)));
        }
        let mut at = BTreeMap::new();
        for (i, c) in cartridges.iter().enumerate() {
            check_barcode(&c.barcode)?;
            let slot = SLOT_BASE + i as u16;
            if let Some(j) = cartridges[..i].iter().position(|o| o.barcode == c.barcode) {
                let address = SLOT_BASE + j as u16;
                return Err(LibraryError::DuplicateBarcode { barcode: c.barcode.clone(), kind: "slot", address });
            }
            let cart = Cartridge { barcode: c.barcode.clone(), source: Some(slot), imported: false, worm: c.worm };
            at.insert(slot, cart);
        }
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let lock = lock_dir(dir)?;
        if dir.join(INVENTORY).exists() {
            return Err(LibraryError::AlreadyExists { dir: dir.to_path_buf() });
        }
        let media = dir.join(MEDIA);
        fs::create_dir_all(&media).map_err(io_err("creating", &media))?;
        // Check every file before creating any, so a refused create leaves nothing behind.
        if let Some(path) = cartridges.iter().map(|c| media.join(&c.barcode)).find(|p| p.exists()) {
            return Err(LibraryError::MediaExists { path });
        }
        for c in cartridges {
            let path = media.join(&c.barcode);
            create_medium(
                &path,
                MediumOptions { capacity: c.capacity, worm: c.worm, write_protected: false, discard: false },
            )
            .map_err(io_err("creating cartridge file", &path))?;
        }
        let serial = new_serial();
        let drive_serials = (1..=config.drives).map(|i| format!("{serial}D{i:02}")).collect();
        let lib = Self::assemble(dir, serial, *config, drive_serials, at, lock);
        lib.persist(&lib.lock())?;
        Ok(Arc::new(lib))
    }

    /// Opens the library in `dir` as it was last left; cartridges recorded in drives are
    /// loaded into them again.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Arc<EmulatedLibrary>> {
        Ok(Self::open_inner(dir.as_ref())?)
    }

    fn open_inner(dir: &Path) -> Result<Arc<EmulatedLibrary>, LibraryError> {
        let path = dir.join(INVENTORY);
        if !path.exists() {
            return Err(LibraryError::NotFound { dir: dir.to_path_buf() });
        }
        let lock = lock_dir(dir)?;
        let corrupt = |detail: String| LibraryError::Corrupt { path: path.clone(), detail };
        let bytes =
            fs::read(&path).map_err(|source| LibraryError::Io { what: "reading", path: path.clone(), source })?;
        let f: LibraryFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a library inventory: {e}")))?;
        if f.format != FORMAT {
            return Err(corrupt(format!(
                "format {} (this build reads format {FORMAT}); a newer rackvault wrote it",
                f.format
            )));
        }
        f.config.check().map_err(&corrupt)?;
        if f.drive_serials.len() != f.config.drives {
            return Err(corrupt(format!("{} drive serials for {} drives", f.drive_serials.len(), f.config.drives)));
        }
        let printable = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_graphic());
        if let Some(s) = std::iter::once(&f.serial).chain(&f.drive_serials).find(|s| !printable(s)) {
            return Err(corrupt(format!("serial {s:?} is not 1 to 64 printable ASCII characters")));
        }
        let mut at: BTreeMap<u16, Cartridge> = BTreeMap::new();
        for r in f.cartridges {
            check_barcode(&r.barcode).map_err(|e| corrupt(e.to_string()))?;
            if place(&f.config, r.element).is_none() {
                return Err(corrupt(format!(
                    "cartridge {} is at element {}, which the library lacks",
                    r.barcode, r.element
                )));
            }
            if let Some(other) = at.get(&r.element) {
                return Err(corrupt(format!("element {} holds both {} and {}", r.element, other.barcode, r.barcode)));
            }
            if let Some((a, _)) = at.iter().find(|(_, c)| c.barcode == r.barcode) {
                return Err(corrupt(format!("cartridge {} is at both element {a} and {}", r.barcode, r.element)));
            }
            let media = dir.join(MEDIA).join(&r.barcode);
            let opts = medium_options(&media).map_err(|e| {
                corrupt(format!("cartridge file {} of {} is unusable: {e}", media.display(), r.barcode))
            })?;
            let cart = Cartridge { barcode: r.barcode, source: r.source, imported: r.imported, worm: opts.worm };
            at.insert(r.element, cart);
        }
        let lib = Self::assemble(dir, f.serial, f.config, f.drive_serials, at, lock);
        {
            let st = lib.lock();
            for (&a, c) in &st.at {
                if let (Some(Place::Drive(i)), false) = (place(&lib.config, a), is_cleaning(&c.barcode)) {
                    let path = lib.media_path(&c.barcode);
                    lib.drives[i].load_medium(&path).map_err(|source| LibraryError::Io {
                        what: "loading cartridge file",
                        path,
                        source,
                    })?;
                }
            }
        }
        Ok(Arc::new(lib))
    }

    fn assemble(
        dir: &Path,
        serial: String,
        config: LibraryConfig,
        drive_serials: Vec<String>,
        at: BTreeMap<u16, Cartridge>,
        lock: File,
    ) -> EmulatedLibrary {
        EmulatedLibrary {
            dir: dir.to_path_buf(),
            serial,
            drives: drive_serials.iter().map(|s| Arc::new(EmulatedDrive::new(s, config.early_warning))).collect(),
            config,
            state: Mutex::new(LibState { at, ..LibState::default() }),
            _lock: lock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LibState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `library.json`: a temporary file, fsync, rename, fsync of the directory.
    fn persist(&self, st: &LibState) -> Result<(), LibraryError> {
        let f = LibraryFile {
            format: FORMAT,
            serial: self.serial.clone(),
            config: self.config,
            drive_serials: self.drives.iter().map(|d| d.serial().to_string()).collect(),
            cartridges: st
                .at
                .iter()
                .map(|(&element, c)| CartridgeRecord {
                    barcode: c.barcode.clone(),
                    element,
                    source: c.source,
                    imported: c.imported,
                })
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&f).map_err(|e| LibraryError::Io {
            what: "encoding",
            path: self.dir.join(INVENTORY),
            source: e.into(),
        })?;
        json.push(b'\n');
        let tmp = self.dir.join(INVENTORY_TMP);
        let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        file.write_all(&json).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(file);
        let path = self.dir.join(INVENTORY);
        fs::rename(&tmp, &path).map_err(io_err("renaming onto", &path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", &self.dir))
    }

    /// The library's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The changer's serial number (INQUIRY VPD 0x80); drive serials extend it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn config(&self) -> &LibraryConfig {
        &self.config
    }

    pub fn drive_count(&self) -> usize {
        self.drives.len()
    }

    /// The media file of the cartridge `barcode` (whether in the library or not).
    pub fn media_path(&self, barcode: &str) -> PathBuf {
        self.dir.join(MEDIA).join(barcode)
    }

    /// The element holding `barcode`, if it is in the library.
    pub fn location(&self, barcode: &str) -> Option<u16> {
        self.lock().at.iter().find(|(_, c)| c.barcode == barcode).map(|(&a, _)| a)
    }

    /// A new SCSI path to the changer (one I_T nexus: its own UNIT ATTENTIONs).
    pub fn changer_transport(self: &Arc<Self>) -> Arc<dyn ScsiTransport> {
        Arc::new(self.changer())
    }

    /// The changer as its concrete type.
    pub fn changer(self: &Arc<Self>) -> EmulatedChanger {
        let seen = self.lock().events;
        EmulatedChanger { lib: self.clone(), seen: AtomicU64::new(seen) }
    }

    /// Drive `i` (element 500 + i) as a SCSI path.
    ///
    /// # Panics
    /// When `i` is not below [`drive_count`](Self::drive_count).
    pub fn drive_transport(&self, i: usize) -> Arc<dyn ScsiTransport> {
        self.drive(i)
    }

    /// Drive `i` (element 500 + i), for fault injection.
    ///
    /// # Panics
    /// When `i` is not below [`drive_count`](Self::drive_count).
    pub fn drive(&self, i: usize) -> Arc<EmulatedDrive> {
        match self.drives.get(i) {
            Some(d) => d.clone(),
            None => panic!("emulated library {} has {} drives, no drive {i}", self.serial, self.drives.len()),
        }
    }

    /// Records an operator action: every changer transport reports (asc, ascq) once.
    fn event(st: &mut LibState, asc: u8, ascq: u8) {
        st.events += 1;
        st.last_event = (asc, ascq);
    }

    /// Benchmarks only: makes cartridge `barcode` discarding (or not) from its next load on;
    /// see the crate docs. It must be in a slot or mail slot, not in a drive; cleaning
    /// cartridges are left alone (they hold no data).
    pub fn set_discard(&self, barcode: &str, discard: bool) -> Result<(), LibraryError> {
        let st = self.lock();
        let Some((&address, _)) = st.at.iter().find(|(_, c)| c.barcode == barcode) else {
            return Err(LibraryError::NotInLibrary { barcode: barcode.to_string() });
        };
        if let Some(Place::Drive(_)) = place(&self.config, address) {
            return Err(LibraryError::InDrive { barcode: barcode.to_string(), address });
        }
        if is_cleaning(barcode) {
            return Ok(());
        }
        let path = self.media_path(barcode);
        crate::set_medium_discard(&path, discard).map_err(io_err("rewriting the header of", &path))
    }

    /// An operator puts the cartridge `barcode` into the first empty mail slot, whose
    /// address is returned. A new barcode gets a new media file of `capacity` bytes; a
    /// barcode whose file exists (a cartridge that left the library) comes back with its
    /// data, and `capacity` is ignored.
    pub fn insert_into_mail_slot(&self, barcode: &str, capacity: u64) -> Result<u16, LibraryError> {
        check_barcode(barcode)?;
        let mut st = self.lock();
        if st.prevent {
            return Err(LibraryError::MailSlotsLocked);
        }
        if let Some((&address, _)) = st.at.iter().find(|(_, c)| c.barcode == barcode) {
            let kind = place(&self.config, address).map_or("element", Place::name);
            return Err(LibraryError::DuplicateBarcode { barcode: barcode.to_string(), kind, address });
        }
        let address = elements(&self.config)
            .find(|(a, p)| *p == Place::MailSlot && !st.at.contains_key(a))
            .map(|(a, _)| a)
            .ok_or(LibraryError::MailSlotsFull { count: self.config.mail_slots })?;
        let path = self.media_path(barcode);
        if !path.exists() {
            create_medium(&path, MediumOptions { capacity, worm: false, write_protected: false, discard: false })
                .map_err(io_err("creating cartridge file", &path))?;
        }
        let worm = medium_options(&path).map_err(io_err("reading cartridge file", &path))?.worm;
        st.at.insert(address, Cartridge { barcode: barcode.to_string(), source: None, imported: true, worm });
        if let Err(e) = self.persist(&st) {
            st.at.remove(&address);
            return Err(e);
        }
        Self::event(&mut st, 0x28, 0x01);
        Ok(address)
    }

    /// An operator takes the cartridge out of mail slot `address`; returns its barcode. Its
    /// media file stays (it can be inserted again).
    pub fn remove_from_mail_slot(&self, address: u16) -> Result<String, LibraryError> {
        if place(&self.config, address) != Some(Place::MailSlot) {
            return Err(LibraryError::NotAMailSlot { address, first: MAIL_SLOT_BASE, count: self.config.mail_slots });
        }
        let mut st = self.lock();
        if st.prevent {
            return Err(LibraryError::MailSlotsLocked);
        }
        let cart = st.at.remove(&address).ok_or(LibraryError::MailSlotEmpty { address })?;
        if let Err(e) = self.persist(&st) {
            st.at.insert(address, cart);
            return Err(e);
        }
        Self::event(&mut st, 0x28, 0x01);
        Ok(cart.barcode)
    }

    /// Fault injection: an operator yanks the cartridge out of drive `i` (mid-job, PREVENT
    /// or not). The drive answers NOT READY 3a/00, the drive element is empty and the
    /// cartridge is gone from the library (its media file stays). Returns its barcode.
    pub fn pull_from_drive(&self, i: usize) -> Result<String, LibraryError> {
        if i >= self.drives.len() {
            return Err(LibraryError::NoSuchDrive { index: i, count: self.drives.len() });
        }
        let address = DRIVE_BASE + i as u16;
        let mut st = self.lock();
        let cart = st.at.remove(&address).ok_or(LibraryError::DriveEmpty { index: i, address })?;
        if let Err(e) = self.persist(&st) {
            st.at.insert(address, cart);
            return Err(e);
        }
        self.drives[i].pull_medium();
        Self::event(&mut st, 0x28, 0x00);
        Ok(cart.barcode)
    }

    /// MOVE MEDIUM with the state locked.
    fn move_medium(&self, st: &mut LibState, picker: u16, from: u16, to: u16) -> Answer {
        if picker != 0 && picker != PICKER_ADDRESS {
            return check(0x05, 0x21, 0x01);
        }
        let (Some(src), Some(dst)) = (place(&self.config, from), place(&self.config, to)) else {
            return check(0x05, 0x21, 0x01);
        };
        let Some(cart) = st.at.get(&from).cloned() else { return check(0x05, 0x3b, 0x0e) };
        if from == to {
            return (Status::Good, None, 0);
        }
        if st.at.contains_key(&to) {
            return check(0x05, 0x3b, 0x0d);
        }
        let data = !is_cleaning(&cart.barcode);
        let path = self.media_path(&cart.barcode);
        if let (Place::Drive(i), true) = (src, data) {
            // The drive must eject first; it refuses under PREVENT MEDIUM REMOVAL.
            if self.drives[i].unload_medium().is_err() {
                return check(0x05, 0x53, 0x02);
            }
        }
        if let Place::Drive(j) = dst {
            if !data {
                self.drives[j].clean();
            } else if self.drives[j].load_medium(&path).is_err() {
                if let Place::Drive(i) = src {
                    let _ = self.drives[i].load_medium(&path);
                }
                return check(0x04, 0x53, 0x00); // media load or eject failed
            }
        }
        let mut moved = cart.clone();
        if matches!(src, Place::Slot | Place::MailSlot) {
            moved.source = Some(from);
        }
        moved.imported = false;
        st.at.remove(&from);
        st.at.insert(to, moved);
        if self.persist(st).is_err() {
            st.at.remove(&to);
            st.at.insert(from, cart);
            if let (Place::Drive(j), true) = (dst, data) {
                self.drives[j].pull_medium();
            }
            if let (Place::Drive(i), true) = (src, data) {
                let _ = self.drives[i].load_medium(&path);
            }
            return check(0x04, 0x44, 0x00); // internal target failure
        }
        (Status::Good, None, 0)
    }

    /// The DVCID identifier of drive `i`: "<vendor(8)><product(16)><serial>".
    fn drive_identifier(&self, i: usize) -> String {
        format!("{DRIVE_VENDOR:<8}{DRIVE_PRODUCT:<16}{}", self.drives[i].serial())
    }

    /// READ ELEMENT STATUS data (before clipping to the allocation length).
    fn element_status(&self, st: &LibState, etype: u8, voltag: bool, start: u16, count: u16, dvcid: bool) -> Vec<u8> {
        let picked: Vec<(u16, Place)> = elements(&self.config)
            .filter(|(a, p)| (etype == 0 || p.type_code() == etype) && *a >= start)
            .take(usize::from(count))
            .collect();
        let mut pages = Vec::new();
        // One page per run of elements of one type.
        for group in picked.chunk_by(|a, b| a.1.type_code() == b.1.type_code()) {
            let ids: Vec<Option<String>> = group
                .iter()
                .map(|(_, p)| match p {
                    Place::Drive(i) if dvcid => Some(self.drive_identifier(*i)),
                    _ => None,
                })
                .collect();
            let id_len = ids.iter().flatten().map(String::len).max().unwrap_or(0).min(255);
            let dlen = 12 + if voltag { 36 } else { 0 } + if dvcid { 4 + id_len } else { 0 };
            let body = (dlen * group.len()) as u32;
            let d = (dlen as u16).to_be_bytes();
            let b = body.to_be_bytes();
            pages.extend_from_slice(&[group[0].1.type_code(), if voltag { 0x80 } else { 0 }, d[0], d[1], 0]);
            pages.extend_from_slice(&b[1..]);
            for ((addr, p), id) in group.iter().zip(&ids) {
                let mut d = vec![0u8; dlen];
                d[0..2].copy_from_slice(&addr.to_be_bytes());
                let c = st.at.get(addr);
                let mut flags = u8::from(c.is_some());
                match p {
                    Place::Picker => {}
                    Place::Slot | Place::Drive(_) => flags |= 0x08, // ACCESS
                    Place::MailSlot => {
                        // ACCESS, INENAB, EXENAB; IMPEXP when an operator put it in.
                        flags |= 0x08 | 0x20 | 0x10;
                        if c.is_some_and(|c| c.imported) {
                            flags |= 0x02;
                        }
                    }
                }
                d[2] = flags;
                if let Some(c) = c {
                    // SVALID, and the medium type: 1 data, 2 cleaning, 4 WORM.
                    let medium = if is_cleaning(&c.barcode) {
                        2
                    } else if c.worm {
                        4
                    } else {
                        1
                    };
                    d[9] = medium | if c.source.is_some() { 0x80 } else { 0 };
                    d[10..12].copy_from_slice(&c.source.unwrap_or(0).to_be_bytes());
                }
                let mut k = 12;
                if voltag {
                    if let Some(c) = c {
                        d[k..k + 32].fill(b' ');
                        d[k..k + c.barcode.len()].copy_from_slice(c.barcode.as_bytes());
                    }
                    k += 36;
                }
                if dvcid {
                    if let Some(id) = id {
                        let n = id.len().min(id_len);
                        // Code set 2 (ASCII), identifier type 1 (T10 vendor identification).
                        d[k..k + 4].copy_from_slice(&[2, 1, 0, n as u8]);
                        d[k + 4..k + 4 + n].copy_from_slice(&id.as_bytes()[..n]);
                    }
                }
                pages.extend_from_slice(&d);
            }
        }
        let first = picked.first().map_or(0, |(a, _)| *a).to_be_bytes();
        let n = (picked.len() as u16).to_be_bytes();
        let total = (pages.len() as u32).min(0xff_ffff).to_be_bytes();
        let mut out = vec![first[0], first[1], n[0], n[1], 0, total[1], total[2], total[3]];
        out.extend_from_slice(&pages);
        out
    }

    /// MODE SENSE pages 0x1d, 0x1e, 0x1f (0x3f: all), without the mode header.
    fn mode_pages(&self, page: u8, changeable: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let count = |n: usize| n as u16;
        if page == 0x1d || page == 0x3f {
            // Element address assignment: first address and count per element type.
            let mut p = vec![0x1d, 0x12];
            for (first, n) in [
                (PICKER_ADDRESS, 1),
                (SLOT_BASE, count(self.config.slots)),
                (MAIL_SLOT_BASE, count(self.config.mail_slots)),
                (DRIVE_BASE, count(self.config.drives)),
            ] {
                let (first, n) = if changeable { (0, 0) } else { (first, n) };
                p.extend_from_slice(&first.to_be_bytes());
                p.extend_from_slice(&n.to_be_bytes());
            }
            p.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p);
        }
        if page == 0x1e || page == 0x3f {
            // Transport geometry: one picker, cannot rotate (single-sided media).
            out.extend_from_slice(&[0x1e, 0x02, 0, 0]);
        }
        if page == 0x1f || page == 0x3f {
            // Device capabilities: every element type stores media and every move is
            // possible; no EXCHANGE MEDIUM.
            let mut p = vec![0u8; 20];
            p[0] = 0x1f;
            p[1] = 0x12;
            if !changeable {
                p[2] = 0x0f;
                p[4..8].fill(0x0f);
            }
            out.extend_from_slice(&p);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// The SMC changer of an [`EmulatedLibrary`], as a [`ScsiTransport`]. Each value is one
/// I_T nexus with its own UNIT ATTENTION state.
#[derive(Debug)]
pub struct EmulatedChanger {
    lib: Arc<EmulatedLibrary>,
    /// Library events this nexus has been told about.
    seen: AtomicU64,
}

/// Copies `src` clipped to the CDB's allocation length and the buffer.
fn fill_alloc(data: &mut DataDir<'_>, src: &[u8], alloc: usize) -> Answer {
    fill(data, &src[..src.len().min(alloc)])
}

impl EmulatedChanger {
    fn run(&self, cdb: &[u8], data: &mut DataDir<'_>) -> Answer {
        let opc = cdb.first().copied().unwrap_or(0xff);
        if cdb.len() < 6 {
            return check(0x05, 0x20, 0x00);
        }
        let be16 = |i: usize| u16::from_be_bytes([cdb[i], cdb[i + 1]]);
        let lib = &self.lib;
        let mut st = lib.lock();
        let pending = (st.events > self.seen.load(Ordering::Relaxed)).then_some(st.last_event);
        if !matches!(opc, op::INQUIRY | op::REQUEST_SENSE) {
            if let Some((asc, ascq)) = pending {
                self.seen.store(st.events, Ordering::Relaxed);
                return check(0x06, asc, ascq);
            }
        }
        match opc {
            op::INQUIRY => self.inquiry(cdb, data),
            op::REQUEST_SENSE => {
                let (key, (asc, ascq)) = match pending {
                    Some(ua) => {
                        self.seen.store(st.events, Ordering::Relaxed);
                        (0x06, ua)
                    }
                    None => (0, (0, 0)),
                };
                fill_alloc(data, &crate::sense_bytes(key, asc, ascq, 0, None), usize::from(cdb[4]))
            }
            op::TEST_UNIT_READY | op::INITIALIZE_ELEMENT_STATUS => (Status::Good, None, 0),
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                st.prevent = cdb[4] & 0x01 != 0;
                (Status::Good, None, 0)
            }
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
                let ten = opc == op::MODE_SENSE_10;
                if ten && cdb.len() < 10 {
                    return check(0x05, 0x24, 0x00);
                }
                if !matches!(cdb[3], 0 | 0xff) {
                    return check(0x05, 0x24, 0x00); // subpages
                }
                let Some(pages) = lib.mode_pages(cdb[2] & 0x3f, cdb[2] >> 6 == 1) else {
                    return check(0x05, 0x24, 0x00);
                };
                // No block descriptors: a changer has none.
                let mut b = if ten {
                    let l = ((6 + pages.len()) as u16).to_be_bytes();
                    vec![l[0], l[1], 0, 0, 0, 0, 0, 0]
                } else {
                    vec![(3 + pages.len()).min(255) as u8, 0, 0, 0]
                };
                b.extend_from_slice(&pages);
                let alloc = if ten { usize::from(be16(7)) } else { usize::from(cdb[4]) };
                fill_alloc(data, &b, alloc)
            }
            op::READ_ELEMENT_STATUS => {
                if cdb.len() < 12 {
                    return check(0x05, 0x24, 0x00);
                }
                let etype = cdb[1] & 0x0f;
                if etype > 4 {
                    return check(0x05, 0x24, 0x00);
                }
                let voltag = cdb[1] & 0x10 != 0;
                let dvcid = cdb[6] & 0x02 != 0;
                let alloc = u32::from_be_bytes([0, cdb[7], cdb[8], cdb[9]]) as usize;
                let b = lib.element_status(&st, etype, voltag, be16(2), be16(4), dvcid);
                fill_alloc(data, &b, alloc)
            }
            op::MOVE_MEDIUM => {
                if cdb.len() < 12 {
                    return check(0x05, 0x24, 0x00);
                }
                if cdb[10] & 0x01 != 0 {
                    return check(0x05, 0x24, 0x00); // INVERT: single-sided media
                }
                lib.move_medium(&mut st, be16(2), be16(4), be16(6))
            }
            _ => check(0x05, 0x20, 0x00),
        }
    }

    fn inquiry(&self, cdb: &[u8], data: &mut DataDir<'_>) -> Answer {
        let alloc = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
        if cdb[1] & 1 != 0 {
            let serial = self.lib.serial.as_bytes();
            return match cdb[2] {
                0x00 => fill_alloc(data, &[0x08, 0x00, 0, 2, 0x00, 0x80], alloc),
                0x80 => {
                    let mut b = vec![0x08, 0x80, 0, serial.len() as u8];
                    b.extend_from_slice(serial);
                    fill_alloc(data, &b, alloc)
                }
                _ => check(0x05, 0x24, 0x00),
            };
        }
        if cdb[2] != 0 {
            return check(0x05, 0x24, 0x00);
        }
        let mut b = vec![0u8; 36];
        b[0] = 0x08; // medium changer
        b[2] = 0x06; // SPC-4
        b[3] = 0x02;
        b[4] = 31;
        b[8..16].copy_from_slice(format!("{VENDOR:<8}").as_bytes());
        b[16..32].copy_from_slice(format!("{PRODUCT:<16}").as_bytes());
        b[32..36].copy_from_slice(b"0001");
        fill_alloc(data, &b, alloc)
    }
}

impl ScsiTransport for EmulatedChanger {
    fn execute(&self, cmd: &mut Command<'_>) -> Result<Completion, TransportError> {
        let (status, sense, transferred) = self.run(cmd.cdb, &mut cmd.data);
        let len = cmd.data.len();
        let residual = if transferred < len { Residual::Under(len - transferred) } else { Residual::None };
        Ok(Completion { status, sense: sense.and_then(|b| Sense::parse(&b)), residual, transferred })
    }

    fn describe(&self) -> String {
        format!("emulated library {} changer", self.lib.serial)
    }
}
