//! `changer`: a tape library's robot (SCSI media changer), driven through the
//! [`scsi::ScsiTransport`] seam. Mechanism only: it knows slots, drives, mail slots and
//! barcodes, not pools or media sets.
//!
//! [`MediaChanger::inventory`] reads every element with its barcode, fullness and source
//! address; [`MediaChanger::move_medium`] moves a cartridge, with errors that name the
//! element and say what to do.
//!
//! # Command sets used
//! SPC: INQUIRY (peripheral type 0x08), VPD 0x80, MODE SENSE(6) page 0x1d (element address
//! assignment: first address and count per element type). SMC: READ ELEMENT STATUS with
//! VOLTAG (barcodes) and, for drives, DVCID (device identifiers), MOVE MEDIUM, INITIALIZE
//! ELEMENT STATUS.
//!
//! # Quirks handled (tgt's SMC emulation, and real libraries)
//! - READ ELEMENT STATUS is issued **one element type at a time**: tgt answers type 0 (all)
//!   with overlapping pages. The header's "first element address" is ignored (tgt reports
//!   it wrong for the picker); addresses come from the descriptors.
//! - The allocation length is never larger than the answer: a first READ ELEMENT STATUS with
//!   a 16-byte allocation reads the header's byte count, the second asks for exactly that
//!   (tgt rejects an allocation larger than its transfer with 24/00).
//! - Drive elements map to drives through the DVCID identifier, "<vendor><product><serial>"
//!   (tgt with default names: "IET VIRTUAL-TAPE <serial>"): the serial is the identifier's
//!   last word. tgt takes DVCID from the CURDATA bit; the builder sets both.
//! - tgt transfers 8 bytes fewer than its READ ELEMENT STATUS answer holds: the last
//!   element's descriptor is cut inside its device identifier. Such elements are kept with
//!   `identifier_truncated`; [`Inventory::drive_for`] still maps the drive by elimination.
//! - tgt raises UNIT ATTENTION 29/00 (power on / reset) on the first command after login
//!   other than INQUIRY; every command is repeated (at most 3 times) after a UNIT ATTENTION.
//! - MOVE MEDIUM sense 3b/0e (source empty), 3b/0d (destination full), 21/01 or 24/00 (bad
//!   address) become [`ChangerError::SourceEmpty`], [`ChangerError::DestinationFull`],
//!   [`ChangerError::BadAddress`].
//! - A cartridge whose barcode starts with `CLN` is a cleaning cartridge
//!   ([`Element::is_cleaning`]).

use std::sync::Arc;
use std::time::Duration;

use scsi::cdb::smc::{self, ElementType};
use scsi::cdb::spc;
use scsi::{Command, Completion, ScsiTransport, Sense, SenseKey, Status, TransportError};

/// Moves can take minutes on large libraries.
const MOVE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Errors of the changer layer; each message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ChangerError {
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error(
        "{device}: logical unit is device type 0x{device_type:02x}, not a media changer (0x08); pick the changer's LUN"
    )]
    NotAChanger { device: String, device_type: u8 },
    /// MOVE MEDIUM: nothing at the source.
    #[error(
        "changer {device}: {kind} {from} is empty, nothing to move; run an inventory to see where the cartridge is"
    )]
    SourceEmpty { device: String, from: u16, kind: &'static str },
    /// MOVE MEDIUM: the destination holds a cartridge.
    #[error("changer {device}: {kind} {to} already holds a cartridge; move it away first or choose an empty element")]
    DestinationFull { device: String, to: u16, kind: &'static str },
    /// An element address the library does not have.
    #[error("changer {device}: element address {address} does not exist in this library (MOVE MEDIUM {from} -> {to}); run an inventory for valid addresses")]
    BadAddress { device: String, address: u16, from: u16, to: u16 },
    /// The library could not load the cartridge's medium (tgt: media file missing).
    #[error("changer {device}: moving {from} -> {to} failed with a hardware error: {sense}; check the library")]
    Hardware { device: String, from: u16, to: u16, sense: Sense },
    #[error("changer {device}: {command} failed: {sense}")]
    Check { device: String, command: String, sense: Sense },
    #[error("changer {device}: {command} ended with status {status}; retry later")]
    Status { device: String, command: String, status: Status },
    #[error("changer {device}: {detail}; the library or target misbehaves")]
    Malformed { device: String, detail: String },
}

pub type Result<T> = std::result::Result<T, ChangerError>;

/// What an element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementKind {
    Picker,
    Slot,
    MailSlot,
    Drive,
}

impl ElementKind {
    fn scsi(self) -> ElementType {
        match self {
            ElementKind::Picker => ElementType::Transport,
            ElementKind::Slot => ElementType::Storage,
            ElementKind::MailSlot => ElementType::ImportExport,
            ElementKind::Drive => ElementType::DataTransfer,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.scsi().as_str()
    }
}

/// One element of the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub kind: ElementKind,
    pub address: u16,
    /// A cartridge is in the element.
    pub full: bool,
    /// The cartridge's barcode (primary volume tag); may be stale on an empty element (tgt).
    pub barcode: Option<String>,
    /// Where the cartridge came from (its home slot, normally), when the library knows.
    pub source: Option<u16>,
    /// Abnormal state reported by the library (ASC, ASCQ).
    pub exception: Option<(u8, u8)>,
    /// Drives: the DVCID device identifier as reported.
    pub identifier: Option<String>,
    /// Drives: the serial number taken from the identifier (its last word); `None` when the
    /// identifier is missing or cut short.
    pub drive_serial: Option<String>,
    /// The descriptor was cut short (tgt: the last element of every answer loses 8 bytes), so
    /// `identifier` (or the barcode) may be partial.
    pub identifier_truncated: bool,
}

impl Element {
    /// The element holds a cleaning cartridge (barcode prefix `CLN`).
    pub fn is_cleaning(&self) -> bool {
        self.full && self.barcode.as_deref().is_some_and(is_cleaning_barcode)
    }
}

/// Whether a barcode names a cleaning cartridge (`CLN` prefix, as LTO labels do).
pub fn is_cleaning_barcode(b: &str) -> bool {
    b.as_bytes().get(..3).is_some_and(|p| p.eq_ignore_ascii_case(b"CLN"))
}

/// The whole library at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    pub pickers: Vec<Element>,
    pub slots: Vec<Element>,
    pub mail_slots: Vec<Element>,
    pub drives: Vec<Element>,
}

impl Inventory {
    /// Every element.
    pub fn all(&self) -> impl Iterator<Item = &Element> {
        self.pickers.iter().chain(&self.slots).chain(&self.mail_slots).chain(&self.drives)
    }
    /// The element holding the cartridge `barcode` (full elements only).
    pub fn find_barcode(&self, barcode: &str) -> Option<&Element> {
        self.all().find(|e| e.full && e.barcode.as_deref() == Some(barcode))
    }
    pub fn element(&self, address: u16) -> Option<&Element> {
        self.all().find(|e| e.address == address)
    }
    /// The drive element whose device identifier names `serial`.
    pub fn drive_by_serial(&self, serial: &str) -> Option<&Element> {
        self.drives.iter().find(|e| e.drive_serial.as_deref() == Some(serial))
    }

    /// The drive element of the drive with this INQUIRY identity: by serial, or, when the
    /// library cut the identifier short (tgt cuts the last drive's), the only drive element
    /// whose partial identifier is a prefix of "<vendor(8)><product(16)><serial>" while no
    /// element names `serial` in full.
    pub fn drive_for(&self, vendor: &str, product: &str, serial: &str) -> Option<&Element> {
        if let Some(e) = self.drive_by_serial(serial) {
            return Some(e);
        }
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let want = squash(&format!("{vendor:<8}{product:<16}{serial}"));
        let mut cands = self.drives.iter().filter(|e| {
            e.identifier_truncated
                && e.identifier.as_deref().is_some_and(|i| !i.is_empty() && want.starts_with(&squash(i)))
        });
        let first = cands.next()?;
        cands.next().is_none().then_some(first)
    }
    /// Empty storage slots.
    pub fn empty_slots(&self) -> impl Iterator<Item = &Element> {
        self.slots.iter().filter(|e| !e.full)
    }
    /// Full elements holding cleaning cartridges.
    pub fn cleaning_cartridges(&self) -> impl Iterator<Item = &Element> {
        self.all().filter(|e| e.is_cleaning())
    }
}

/// A media changer over any [`ScsiTransport`].
#[derive(Debug)]
pub struct MediaChanger {
    t: Arc<dyn ScsiTransport>,
    name: String,
    vendor: String,
    product: String,
    serial: String,
    addrs: Option<smc::ElementAddresses>,
}

impl MediaChanger {
    /// Opens the changer: INQUIRY (must be a media changer), serial, element address page.
    pub fn open(transport: Arc<dyn ScsiTransport>) -> Result<MediaChanger> {
        let mut c = MediaChanger {
            name: transport.describe(),
            t: transport,
            vendor: String::new(),
            product: String::new(),
            serial: String::new(),
            addrs: None,
        };
        let mut buf = [0u8; 96];
        let n = c.data_in(&spc::inquiry(96), &mut buf)?;
        let inq = scsi::parse::inquiry(&buf[..n]).map_err(|e| ChangerError::Malformed {
            device: c.name.clone(),
            detail: format!("INQUIRY: {}", e.detail),
        })?;
        if inq.qualifier != 0 || inq.device_type != 0x08 {
            return Err(ChangerError::NotAChanger { device: c.name, device_type: inq.device_type });
        }
        c.vendor = inq.vendor;
        c.product = inq.product;
        let mut vpd = [0u8; 255];
        if let Ok(n) = c.data_in(&spc::inquiry_vpd(spc::vpd::UNIT_SERIAL, 255), &mut vpd) {
            if let Ok(s) = scsi::parse::vpd_serial(&vpd[..n]) {
                c.serial = s.trim().to_string();
            }
        }
        if !c.serial.is_empty() {
            c.name = c.serial.clone();
        }
        let mut m = [0u8; 255];
        let cdb = spc::mode_sense6(smc::ELEMENT_ADDRESS_PAGE, 0, spc::PageControl::Current, true, 255);
        if let Ok(n) = c.data_in(&cdb, &mut m) {
            c.addrs = smc::element_addresses_mode6(&m[..n]);
        }
        Ok(c)
    }

    /// The name used in messages: the serial, or the transport's description.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Vendor, product and serial from INQUIRY.
    pub fn identity(&self) -> (&str, &str, &str) {
        (&self.vendor, &self.product, &self.serial)
    }

    /// First address and count per element type, when the library reports them.
    pub fn element_addresses(&self) -> Option<smc::ElementAddresses> {
        self.addrs
    }

    /// Reads every element, one element type at a time, with barcodes; drives with their
    /// device identifiers.
    pub fn inventory(&self) -> Result<Inventory> {
        Ok(Inventory {
            pickers: self.read_elements(ElementKind::Picker)?,
            slots: self.read_elements(ElementKind::Slot)?,
            mail_slots: self.read_elements(ElementKind::MailSlot)?,
            drives: self.read_elements(ElementKind::Drive)?,
        })
    }

    /// READ ELEMENT STATUS for one element type.
    pub fn read_elements(&self, kind: ElementKind) -> Result<Vec<Element>> {
        let (start, count) = match (self.addrs, kind) {
            (Some(a), ElementKind::Picker) => a.transport,
            (Some(a), ElementKind::Slot) => a.storage,
            (Some(a), ElementKind::MailSlot) => a.import_export,
            (Some(a), ElementKind::Drive) => a.data_transfer,
            (None, _) => (0, 0xffff),
        };
        if count == 0 {
            return Ok(Vec::new());
        }
        let dvcid = kind == ElementKind::Drive;
        let et = kind.scsi();
        // 1: header only, for the byte count; 2: exactly that many bytes.
        let mut head = [0u8; 16];
        let n = self.data_in(&smc::read_element_status(et, true, start, count, dvcid, 16), &mut head)?;
        if n < 8 {
            return Err(self.malformed(format!("READ ELEMENT STATUS returned {n} bytes, not even a header")));
        }
        let total = 8 + u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        // Bound the allocation by what the element count can need (hostile byte counts).
        let total = total.min(16 + usize::from(count) * 1024).min(0xff_ffff);
        let data = if total <= n {
            head[..n].to_vec()
        } else {
            let mut buf = vec![0u8; total];
            let n = self.data_in(&smc::read_element_status(et, true, start, count, dvcid, total as u32), &mut buf)?;
            buf.truncate(n);
            buf
        };
        let parsed = smc::parse_element_status(&data).map_err(|e| self.malformed(e.to_string()))?;
        Ok(parsed
            .into_iter()
            .filter(|e| e.etype == et)
            .map(|e| {
                let drive_serial = if e.truncated {
                    None
                } else {
                    e.identifier.as_deref().and_then(|i| i.split_whitespace().last()).map(str::to_string)
                };
                Element {
                    kind,
                    address: e.address,
                    full: e.full,
                    barcode: e.barcode,
                    source: e.source,
                    exception: e.except.then_some((e.asc, e.ascq)),
                    identifier: e.identifier,
                    identifier_truncated: e.truncated,
                    drive_serial,
                }
            })
            .collect())
    }

    /// MOVE MEDIUM from element `from` to element `to` with the default picker.
    pub fn move_medium(&self, from: u16, to: u16) -> Result<()> {
        let cdb = smc::move_medium(0, from, to);
        let mut cmd = Command::none(&cdb);
        cmd.timeout = Some(MOVE_TIMEOUT);
        let c = self.exec(&mut cmd)?;
        match c.status {
            Status::Good | Status::ConditionMet => Ok(()),
            Status::CheckCondition => {
                let s = c.sense.unwrap_or_else(empty_sense);
                let device = self.name.clone();
                Err(match (s.key, s.asc, s.ascq) {
                    (_, 0x3b, 0x0e) => ChangerError::SourceEmpty { device, from, kind: self.kind_of(from) },
                    (_, 0x3b, 0x0d) => ChangerError::DestinationFull { device, to, kind: self.kind_of(to) },
                    (SenseKey::IllegalRequest, 0x21, 0x01) | (SenseKey::IllegalRequest, 0x24, 0x00) => {
                        let address = if self.address_known(from) { to } else { from };
                        ChangerError::BadAddress { device, address, from, to }
                    }
                    (SenseKey::HardwareError, _, _) => ChangerError::Hardware { device, from, to, sense: s },
                    _ => ChangerError::Check { device, command: "MOVE MEDIUM".into(), sense: s },
                })
            }
            status => Err(ChangerError::Status { device: self.name.clone(), command: "MOVE MEDIUM".into(), status }),
        }
    }

    /// INITIALIZE ELEMENT STATUS: the library re-scans its elements (barcodes).
    pub fn initialize_element_status(&self) -> Result<()> {
        let cdb = smc::initialize_element_status();
        let mut cmd = Command::none(&cdb);
        cmd.timeout = Some(MOVE_TIMEOUT);
        let c = self.exec(&mut cmd)?;
        self.status_ok("INITIALIZE ELEMENT STATUS", &c)
    }

    fn ranges(&self) -> Vec<(ElementKind, (u16, u16))> {
        match self.addrs {
            Some(a) => vec![
                (ElementKind::Picker, a.transport),
                (ElementKind::Slot, a.storage),
                (ElementKind::MailSlot, a.import_export),
                (ElementKind::Drive, a.data_transfer),
            ],
            None => Vec::new(),
        }
    }

    fn kind_of(&self, addr: u16) -> &'static str {
        self.ranges()
            .into_iter()
            .find(|(_, (s, n))| addr >= *s && u32::from(addr) < u32::from(*s) + u32::from(*n))
            .map(|(k, _)| k.as_str())
            .unwrap_or("element")
    }

    fn address_known(&self, addr: u16) -> bool {
        self.kind_of(addr) != "element"
    }

    fn malformed(&self, detail: String) -> ChangerError {
        ChangerError::Malformed { device: self.name.clone(), detail }
    }

    /// Runs a command, repeating it (at most 3 times) after a UNIT ATTENTION: it reports a
    /// reset or an inventory change once and did not execute the command.
    fn exec(&self, cmd: &mut Command<'_>) -> Result<Completion> {
        let mut c = self.t.execute(cmd)?;
        for _ in 0..3 {
            if !c.sense.as_ref().is_some_and(|s| s.is_unit_attention()) {
                break;
            }
            c = self.t.execute(cmd)?;
        }
        Ok(c)
    }

    fn data_in(&self, cdb: &[u8], buf: &mut [u8]) -> Result<usize> {
        let c = self.exec(&mut Command::read(cdb, buf))?;
        self.status_ok(&scsi::cdb::name(cdb), &c)?;
        Ok(c.transferred)
    }

    fn status_ok(&self, what: &str, c: &Completion) -> Result<()> {
        match c.status {
            Status::Good | Status::ConditionMet => Ok(()),
            Status::CheckCondition => {
                let s = c.sense.clone().unwrap_or_else(empty_sense);
                if matches!(s.key, SenseKey::RecoveredError) {
                    return Ok(());
                }
                Err(ChangerError::Check { device: self.name.clone(), command: what.into(), sense: s })
            }
            status => Err(ChangerError::Status { device: self.name.clone(), command: what.into(), status }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_barcodes() {
        assert!(is_cleaning_barcode("CLN001L1"));
        assert!(is_cleaning_barcode("cln9"));
        assert!(!is_cleaning_barcode("TST001L6"));
        assert!(!is_cleaning_barcode("CL"));
        assert!(!is_cleaning_barcode("éCLN"));
        assert!(!is_cleaning_barcode("Cé"));
    }
}
