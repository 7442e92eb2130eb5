//! A tape library as the policy layer sees it: one changer and its drives, however they are
//! attached. Loads cartridges by barcode, unloads them home, and cleans a drive that asks.
//!
//! Attachments (`--changer`):
//! - `iscsi://[user%secret@]host[:port]/<iqn>/<changer lun>`: the drives are the other
//!   sequential-access LUNs of the same target (REPORT LUNS), matched to drive elements by
//!   serial number (DVCID).
//! - `emulated:<dir>`: the in-process emulated library of the `vtl` crate, created with the
//!   dev-mode defaults when `dir` holds none.
//! - `/dev/sgN`: SCSI generic; the drives are the other sg tape devices of the host.
//!
//! Invariants: a [`LoadedTape`] borrows the library mutably, so at most one cartridge is
//! being worked on per `Library` value; every cartridge this module moves into a drive goes
//! back to its home slot (the SVALID source) or the first free slot on `unload`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use changer::{ElementKind, Inventory, MediaChanger};
use drive::{MediaState, TapeDrive};
use scsi::ScsiTransport;

use super::TapeError;
use crate::source::{IscsiSpec, SourceSecrets};

/// How long a drive may take to become ready after a load.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// One drive of the library.
#[derive(Debug)]
struct LibraryDrive {
    /// Data transfer element address.
    element: u16,
    transport: Arc<dyn ScsiTransport>,
    serial: String,
}

/// A changer with its drives.
#[derive(Debug)]
pub struct Library {
    changer: MediaChanger,
    drives: Vec<LibraryDrive>,
    description: String,
    /// Keeps an emulated library alive.
    emulated: Option<Arc<vtl::EmulatedLibrary>>,
}

/// A cartridge loaded in a drive, positioned at BOT in variable-block mode.
#[derive(Debug)]
pub struct LoadedTape {
    pub barcode: String,
    pub drive_index: usize,
    pub drive: TapeDrive,
    pub state: MediaState,
}

/// Default layout of a newly created emulated library (the dev mode's).
pub fn default_emulated_cartridges(capacity: u64) -> Vec<vtl::CartridgeSpec> {
    let mut v: Vec<vtl::CartridgeSpec> =
        (1..=6).map(|i| vtl::CartridgeSpec { barcode: format!("RVT{i:03}L9"), capacity, worm: false }).collect();
    v.push(vtl::CartridgeSpec { barcode: "CLN001L1".into(), capacity: 1 << 20, worm: false });
    v
}

impl Library {
    /// Opens the library named by `spec` (see the module doc).
    pub fn open(spec: &str) -> Result<Library, TapeError> {
        if let Some(dir) = spec.strip_prefix("emulated:") {
            return Library::open_emulated(Path::new(dir));
        }
        if spec.starts_with("iscsi://") {
            return Library::open_iscsi(spec);
        }
        if spec.starts_with("/dev/") {
            return Library::open_sg(Path::new(spec));
        }
        Err(TapeError::Invalid(format!(
            "library {spec:?}: give iscsi://host[:port]/<iqn>/<changer lun>, /dev/sgN or emulated:<dir>"
        )))
    }

    fn open_emulated(dir: &Path) -> Result<Library, TapeError> {
        let lib = if dir.join("library.json").exists() {
            vtl::EmulatedLibrary::open(dir)
        } else {
            let cfg = vtl::LibraryConfig { drives: 2, slots: 10, mail_slots: 2, early_warning: 8 << 20 };
            vtl::EmulatedLibrary::create(dir, &cfg, &default_emulated_cartridges(4 << 30))
        }
        .map_err(|e| TapeError::Library {
            library: format!("emulated:{}", dir.display()),
            detail: format!("{e}; check that the directory is writable"),
        })?;
        let changer = MediaChanger::open(lib.changer_transport())?;
        let mut drives = Vec::new();
        for i in 0..lib.drive_count() {
            let t = lib.drive_transport(i);
            let d = TapeDrive::open(t.clone())?;
            drives.push((d.info().clone(), t));
        }
        let mut l = Library::assemble(changer, drives, format!("emulated:{}", dir.display()))?;
        l.emulated = Some(lib);
        Ok(l)
    }

    fn open_iscsi(spec: &str) -> Result<Library, TapeError> {
        let s = IscsiSpec::parse(spec)?;
        let session = iscsi::Session::login(s.session_config(&SourceSecrets::default())).map_err(|e| match e {
            iscsi::IscsiError::Connect { source, .. } => TapeError::Unreachable { library: s.url(), source },
            e => TapeError::Library { library: s.url(), detail: e.to_string() },
        })?;
        let changer = MediaChanger::open(Arc::new(session.lun(s.lun)))?;
        let luns = session
            .report_luns()
            .map_err(|e| TapeError::Library { library: s.url(), detail: format!("REPORT LUNS failed: {e}") })?;
        let mut drives = Vec::new();
        for lun in luns.into_iter().filter(|l| *l != s.lun) {
            let t: Arc<dyn ScsiTransport> = Arc::new(session.lun(lun));
            // Only sequential-access LUNs are drives; others (disks, the changer) are skipped.
            if let Ok(d) = TapeDrive::open(t.clone()) {
                drives.push((d.info().clone(), t));
            }
        }
        Library::assemble(changer, drives, s.url())
    }

    fn open_sg(path: &Path) -> Result<Library, TapeError> {
        let t: Arc<dyn ScsiTransport> = Arc::new(
            sgio::SgDevice::open(path)
                .map_err(|e| TapeError::Library { library: path.display().to_string(), detail: e.to_string() })?,
        );
        let changer = MediaChanger::open(t)?;
        let mut drives = Vec::new();
        for dev in sgio::list_devices().into_iter().filter(|d| d.peripheral_type == 1) {
            let Ok(sg) = sgio::SgDevice::open(&dev.path) else { continue };
            let t: Arc<dyn ScsiTransport> = Arc::new(sg);
            if let Ok(d) = TapeDrive::open(t.clone()) {
                drives.push((d.info().clone(), t));
            }
        }
        Library::assemble(changer, drives, path.display().to_string())
    }

    /// Matches drives to the changer's drive elements by identity.
    fn assemble(
        changer: MediaChanger,
        found: Vec<(drive::DriveInfo, Arc<dyn ScsiTransport>)>,
        description: String,
    ) -> Result<Library, TapeError> {
        let inv = changer.inventory()?;
        let elements: Vec<_> = inv.all().filter(|e| e.kind == ElementKind::Drive).cloned().collect();
        let mut drives = Vec::new();
        for (info, transport) in found {
            let matched = inv
                .drive_for(&info.vendor, &info.product, &info.serial)
                .or_else(|| inv.drive_by_serial(&info.serial))
                .map(|e| e.address);
            // Without identifiers from the changer, drives are taken in element order.
            let element = matched.or_else(|| (elements.len() == 1 && drives.is_empty()).then(|| elements[0].address));
            if let Some(element) = element {
                drives.push(LibraryDrive { element, transport, serial: info.serial.clone() });
            }
        }
        if drives.is_empty() {
            return Err(TapeError::Library {
                library: description,
                detail: "no tape drive of this library was found (or none could be matched to the changer's drive \
                         elements by serial number); check the drives are attached to this host or target"
                    .into(),
            });
        }
        drives.sort_by_key(|d| d.element);
        Ok(Library { changer, drives, description, emulated: None })
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    pub fn drive_serials(&self) -> Vec<(u16, String)> {
        self.drives.iter().map(|d| (d.element, d.serial.clone())).collect()
    }

    pub fn inventory(&self) -> Result<Inventory, TapeError> {
        Ok(self.changer.inventory()?)
    }

    /// The emulated library behind this one, for fault injection in tests and the dev mode.
    pub fn emulated(&self) -> Option<&Arc<vtl::EmulatedLibrary>> {
        self.emulated.as_ref()
    }

    /// Loads the cartridge `barcode` into a drive (the one it is in, else a free one, else
    /// the first drive after unloading it), waits until ready, rewinds, sets variable-block
    /// mode.
    pub fn load(&mut self, barcode: &str) -> Result<LoadedTape, TapeError> {
        let inv = self.inventory()?;
        let el = inv.find_barcode(barcode).cloned().ok_or_else(|| TapeError::NotInLibrary {
            barcode: barcode.to_string(),
            library: self.description.clone(),
        })?;
        let drive_index = if el.kind == ElementKind::Drive {
            self.drive_index(el.address)?
        } else {
            let free = self.drives.iter().position(|d| inv.element(d.element).is_some_and(|e| !e.full));
            let idx = match free {
                Some(i) => i,
                None => {
                    self.unload(0)?;
                    0
                }
            };
            self.changer.move_medium(el.address, self.drives[idx].element)?;
            idx
        };
        let mut drive = TapeDrive::open(self.drives[drive_index].transport.clone())?;
        let started = Instant::now();
        let state = loop {
            match drive.test_unit_ready()? {
                MediaState::BecomingReady | MediaState::NoMedium if started.elapsed() < READY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                MediaState::BecomingReady | MediaState::NoMedium => {
                    return Err(TapeError::Library {
                        library: self.description.clone(),
                        detail: format!(
                            "cartridge {barcode} was moved into drive {} but the drive did not become ready in \
                             {} s; check the drive",
                            self.drives[drive_index].serial,
                            READY_TIMEOUT.as_secs()
                        ),
                    })
                }
                s => break s,
            }
        };
        drive.set_variable_block_mode()?;
        drive.rewind()?;
        Ok(LoadedTape { barcode: barcode.to_string(), drive_index, drive, state })
    }

    fn drive_index(&self, element: u16) -> Result<usize, TapeError> {
        self.drives.iter().position(|d| d.element == element).ok_or_else(|| TapeError::Library {
            library: self.description.clone(),
            detail: format!("drive element {element} has no drive this host can reach"),
        })
    }

    /// Moves the cartridge in drive `index` back home (its source slot when that is free,
    /// else the first free slot). Does nothing when the drive is empty.
    pub fn unload(&mut self, index: usize) -> Result<(), TapeError> {
        let inv = self.inventory()?;
        let element = self.drives[index].element;
        let Some(el) = inv.element(element).cloned() else { return Ok(()) };
        if !el.full {
            return Ok(());
        }
        if let Ok(mut d) = TapeDrive::open(self.drives[index].transport.clone()) {
            // Real drives must eject before the picker can take the cartridge; a no-op on tgt.
            let _ = d.prevent_removal(false);
            let _ = d.unload();
        }
        let home = el
            .source
            .filter(|s| inv.element(*s).is_some_and(|e| !e.full && e.kind == ElementKind::Slot))
            .or_else(|| inv.empty_slots().next().map(|e| e.address))
            .ok_or_else(|| TapeError::Library {
                library: self.description.clone(),
                detail: "no free storage slot to put the cartridge back; remove a cartridge from the library".into(),
            })?;
        self.changer.move_medium(element, home)?;
        Ok(())
    }

    /// Unloads `tape` and, when its drive asked for cleaning, cleans the drive with a `CLN`
    /// cartridge. Returns the cleaning cartridge used, if any.
    pub fn release(&mut self, mut tape: LoadedTape) -> Result<Option<String>, TapeError> {
        let wants_cleaning = tape.drive.needs_cleaning().unwrap_or(false);
        let index = tape.drive_index;
        drop(tape);
        self.unload(index)?;
        if !wants_cleaning {
            return Ok(None);
        }
        self.clean(index).map(Some)
    }

    /// Cleans drive `index` with the first cleaning cartridge in the library.
    pub fn clean(&mut self, index: usize) -> Result<String, TapeError> {
        let inv = self.inventory()?;
        let cln = inv.cleaning_cartridges().find(|e| e.kind == ElementKind::Slot).cloned().ok_or_else(|| {
            TapeError::Library {
                library: self.description.clone(),
                detail: format!(
                    "drive {} asks for cleaning but the library holds no cleaning cartridge (CLN barcode); \
                     insert one",
                    self.drives[index].serial
                ),
            }
        })?;
        let barcode = cln.barcode.clone().unwrap_or_default();
        self.unload(index)?;
        let element = self.drives[index].element;
        self.changer.move_medium(cln.address, element)?;
        // A real drive runs its cleaning cycle and then ejects; give it the time it takes.
        let started = Instant::now();
        if let Ok(mut d) = TapeDrive::open(self.drives[index].transport.clone()) {
            while started.elapsed() < READY_TIMEOUT {
                match d.needs_cleaning() {
                    Ok(false) | Err(_) => break,
                    Ok(true) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
        self.changer.move_medium(element, cln.address)?;
        Ok(barcode)
    }

    /// Where the library keeps an emulated library's media, if it is one.
    pub fn emulated_dir(&self) -> Option<PathBuf> {
        self.description.strip_prefix("emulated:").map(PathBuf::from)
    }
}
