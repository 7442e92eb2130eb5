//! Tape policy: labels, pools, media sets, the destage job (disk to tape), restore and
//! verify from tape, and rebuilding the catalog from the cartridges alone. The mechanism
//! (SCSI drives and changers) is in `tape/`; this module decides what goes where.
//!
//! - [`format`]: the self-describing on-tape format (labels, archives, records, catalogs).
//! - [`catalog`]: the LMDB catalog of media, sets, pools and locations (a cache of the tapes).
//! - [`library`]: a changer and its drives, attached by iSCSI, SG_IO or emulated.
//! - [`writer`]: appends archives to a media set, spanning cartridges at early warning.
//! - [`destage`]: the destage job; [`read`]: restore, verify, catalog rebuild.
//!
//! Durability: the catalog is updated only after the archives it describes are on tape
//! behind a filemark, cartridge by cartridge. A job killed at any point leaves the catalog
//! describing complete archives only; the next job of the set overwrites whatever partial
//! archive follows the last recorded one.

pub mod catalog;
mod destage;
pub mod format;
pub mod library;
mod read;
mod writer;

use std::time::{SystemTime, UNIX_EPOCH};

pub use catalog::{Allocation, MediumLocation, MediumRecord, PointCopy, PoolPolicy, SetRecord, TapeCatalog};
pub use destage::{destage, DestageOptions, DestageReport};
pub use drive::MediaState;
pub use library::{Library, LoadedTape};
pub use read::{
    find_copy, rebuild_catalog, restore_from_tape, verify_tape, DamagedExtent, RebuildReport, TapeRestoreReport,
    TapeRestoreTarget, VerifyTapeReport,
};

use drive::ReadOutcome;
use format::{ArchiveKind, MediumLabel, FORMAT};

use crate::EngineError;

/// Errors of the tape tier; each says what happened and what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    #[error(transparent)]
    Drive(#[from] drive::DriveError),
    #[error(transparent)]
    Changer(#[from] changer::ChangerError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Engine(Box<EngineError>),
    #[error("{0}")]
    Invalid(String),
    #[error("tape library {library}: {detail}")]
    Library { library: String, detail: String },
    /// No connection to the library's portal (its socket error kept for callers).
    #[error(
        "tape library {library}: cannot connect: {source}; is the library running? check the address and any firewall"
    )]
    Unreachable {
        library: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cartridge {barcode} is not in library {library}; insert it through the mail slot or check the barcode")]
    NotInLibrary { barcode: String, library: String },
    #[error("cartridge {barcode} holds data ({detail}); labelling would destroy it. Label it with force (`--force`, or \"force\": true in the API) to overwrite it anyway")]
    HoldsData { barcode: String, detail: String },
    #[error("cartridge {barcode}: {detail}")]
    Medium { barcode: String, detail: String },
    /// The cartridge cannot be used for what was asked (cleaning, write-protected, WORM):
    /// the request is wrong, not the medium.
    #[error("cartridge {barcode} {reason}")]
    Refused { barcode: String, reason: String },
    #[error("pool {pool}: no cartridge can be written ({detail})")]
    NoMedia { pool: String, detail: String },
    #[error("{0}")]
    Catalog(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl TapeError {
    /// Transient, permanent or cancelled: a drive or changer that is busy, becoming ready
    /// or lost its connection is transient; a cartridge that needs an operator (none
    /// loaded, write-protected, WORM, needs cleaning, a medium error), a wrong request or a
    /// catalog that does not know the point is permanent.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            TapeError::Drive(e) => match e.kind() {
                drive::ErrorKind::Retryable => K::Transient,
                _ => K::Permanent,
            },
            TapeError::Changer(changer::ChangerError::Transport(t)) if t.is_transient() => K::Transient,
            TapeError::Changer(changer::ChangerError::Status { status, .. }) if status.is_transient() => K::Transient,
            TapeError::Changer(_) => K::Permanent,
            TapeError::Store(e) => crate::store_error_kind(e),
            TapeError::Engine(e) => e.kind(),
            TapeError::Io { source, .. } | TapeError::Unreachable { source, .. } => crate::io_error_kind(source),
            TapeError::Invalid(_)
            | TapeError::Library { .. }
            | TapeError::NotInLibrary { .. }
            | TapeError::HoldsData { .. }
            | TapeError::Medium { .. }
            | TapeError::Refused { .. }
            | TapeError::NoMedia { .. }
            | TapeError::Catalog(_) => K::Permanent,
        }
    }
}

impl From<EngineError> for TapeError {
    fn from(e: EngineError) -> TapeError {
        TapeError::Engine(Box::new(e))
    }
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What the first block of a cartridge says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapeIdentity {
    Blank,
    Ours(MediumLabel),
    /// Data not written by this format.
    Foreign(String),
}

/// Reads file 0 of the loaded cartridge (rewinding first).
pub fn read_identity(tape: &mut LoadedTape) -> Result<TapeIdentity, TapeError> {
    tape.drive.rewind()?;
    let mut buf = vec![0u8; format::MAX_BLOCK];
    Ok(match tape.drive.read_block(&mut buf)? {
        ReadOutcome::EndOfData => TapeIdentity::Blank,
        ReadOutcome::Filemark => TapeIdentity::Foreign("an empty first file".into()),
        ReadOutcome::Data(n) => match format::decode_block(&buf[..n]) {
            Ok((h, payload)) if h.kind == ArchiveKind::Label => match serde_json::from_slice::<MediumLabel>(payload) {
                Ok(l) => TapeIdentity::Ours(l),
                Err(e) => TapeIdentity::Foreign(format!("a damaged rackvault label: {e}")),
            },
            Ok((h, _)) => TapeIdentity::Foreign(format!("a rackvault {:?} block where the label belongs", h.kind)),
            Err(e) => TapeIdentity::Foreign(format!("a first block of {n} bytes, {e}")),
        },
    })
}

/// What `label` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabelReport {
    pub barcode: String,
    pub medium_id: String,
    pub pool: String,
    /// What was on the cartridge before ("blank", or what --force overwrote).
    pub previously: String,
}

/// Writes a label on cartridge `barcode` for `pool`. A cartridge that holds data (ours or
/// not) is refused unless `force`; WORM, write-protected and cleaning cartridges are always
/// refused ([`TapeError::Refused`]).
pub fn label(
    cat: &TapeCatalog,
    lib: &mut Library,
    barcode: &str,
    pool: &str,
    force: bool,
) -> Result<LabelReport, TapeError> {
    if changer::is_cleaning_barcode(barcode) {
        return Err(TapeError::Refused {
            barcode: barcode.into(),
            reason: "is a cleaning cartridge (CLN barcode) and cannot hold data".into(),
        });
    }
    store::validate_name(pool)
        .map_err(|_| TapeError::Invalid(format!("pool name {pool:?}: use letters, digits, '-', '_' and '.'")))?;
    let mut tape = lib.load(barcode)?;
    let result = label_loaded(cat, &mut tape, barcode, pool, force);
    let released = lib.release(tape);
    let report = result?;
    released?;
    Ok(report)
}

fn label_loaded(
    cat: &TapeCatalog,
    tape: &mut LoadedTape,
    barcode: &str,
    pool: &str,
    force: bool,
) -> Result<LabelReport, TapeError> {
    if tape.state == drive::MediaState::WriteProtected {
        return Err(TapeError::Refused {
            barcode: barcode.into(),
            reason: "is write-protected; slide its write-protect tab to label it".into(),
        });
    }
    let worm = tape.drive.is_worm();
    if worm {
        // Appending to WORM media needs end-of-data positioning this firmware does not do
        // yet; refusing keeps the promise that WORM data is never touched.
        return Err(TapeError::Refused {
            barcode: barcode.into(),
            reason: "is a WORM (write-once) cartridge; this firmware never writes WORM media: use a rewritable \
                     cartridge for this pool"
                .into(),
        });
    }
    let previously = match read_identity(tape)? {
        TapeIdentity::Blank => "blank".to_string(),
        other => {
            let detail = match &other {
                TapeIdentity::Ours(l) => {
                    let set = cat.medium(barcode)?.and_then(|m| m.set).map(|(s, _)| format!(", media set {s}"));
                    format!("rackvault label {} for pool {}{}", l.medium_id, l.pool, set.unwrap_or_default())
                }
                TapeIdentity::Foreign(d) => format!("data not written by rackvault: {d}"),
                TapeIdentity::Blank => unreachable!(),
            };
            if !force {
                return Err(TapeError::HoldsData { barcode: barcode.into(), detail });
            }
            detail
        }
    };
    let label = MediumLabel {
        format: FORMAT.into(),
        medium_id: format::hex(&format::random_id()),
        barcode: barcode.into(),
        pool: pool.into(),
        labelled_unix: now_unix(),
    };
    tape.drive.rewind()?;
    let block = format::encode_single(
        ArchiveKind::Label,
        format::random_id(),
        &serde_json::to_vec(&label).expect("label serialises"),
    );
    tape.drive.write_block(&block)?;
    tape.drive.write_filemarks(1)?;
    // The cartridge's old content is gone: forget its old set (only that cartridge's part is
    // really gone, but a set with a hole cannot be restored from completely either).
    if let Some((old_set, _)) = cat.medium(barcode)?.and_then(|m| m.set) {
        cat.forget_set(&old_set)?;
    }
    let record = MediumRecord {
        barcode: barcode.into(),
        medium_id: label.medium_id.clone(),
        pool: pool.into(),
        labelled_unix: label.labelled_unix,
        worm,
        set: None,
        next_file: format::SET_LABEL_FILE,
        full: false,
        bytes_written: block.len() as u64,
        last_written_unix: label.labelled_unix,
        location: MediumLocation::Drive(0),
    };
    cat.apply(&catalog::CatalogUpdate { media: vec![record], ..Default::default() })?;
    Ok(LabelReport { barcode: barcode.into(), medium_id: label.medium_id, pool: pool.into(), previously })
}

/// One row of `tape inventory`: the changer's view joined with the catalog's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InventoryRow {
    pub element: String,
    pub address: u16,
    pub full: bool,
    pub barcode: Option<String>,
    pub cleaning: bool,
    pub pool: Option<String>,
    pub medium_id: Option<String>,
    pub media_set: Option<String>,
    pub set_seq: Option<u32>,
    pub full_tape: bool,
    pub bytes_written: u64,
    /// Drive elements: the drive's serial number.
    pub drive_serial: Option<String>,
}

/// The library's elements with what the catalog knows of each cartridge.
pub fn inventory(cat: &TapeCatalog, lib: &Library) -> Result<Vec<InventoryRow>, TapeError> {
    let inv = lib.inventory()?;
    let serials = lib.drive_serials();
    let mut rows = Vec::new();
    for e in inv.all() {
        let m = match &e.barcode {
            Some(b) => cat.medium(b)?,
            None => None,
        };
        rows.push(InventoryRow {
            element: e.kind.as_str().to_string(),
            address: e.address,
            full: e.full,
            barcode: e.barcode.clone(),
            cleaning: e.is_cleaning(),
            pool: m.as_ref().map(|m| m.pool.clone()),
            medium_id: m.as_ref().map(|m| m.medium_id.clone()),
            media_set: m.as_ref().and_then(|m| m.set.as_ref().map(|s| s.0.clone())),
            set_seq: m.as_ref().and_then(|m| m.set.as_ref().map(|s| s.1)),
            full_tape: m.as_ref().is_some_and(|m| m.full),
            bytes_written: m.as_ref().map(|m| m.bytes_written).unwrap_or(0),
            drive_serial: serials.iter().find(|(a, _)| *a == e.address).map(|(_, s)| s.clone()),
        });
    }
    Ok(rows)
}
