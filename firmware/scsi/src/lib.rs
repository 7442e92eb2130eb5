//! `scsi`: rackvault's own SCSI command layer, independent of how commands reach a device.
//!
//! The crate has four parts:
//! - **The transport seam**, [`ScsiTransport`]: "run this CDB with this data buffer and tell me
//!   the status". iSCSI (crate `iscsi`) implements it today; SG_IO on a local `/dev/sg*` will
//!   implement it for tape drives and changers later. A transport reports its own failures
//!   (connection lost, timeout, login refused) as [`TransportError`]; a command that reached
//!   the device and failed there comes back as a [`Completion`] with a non-GOOD [`Status`] and,
//!   usually, [`Sense`] data. The two are deliberately distinct: the first is about the path,
//!   the second about the device.
//! - **CDB builders** ([`cdb`]), split by command set: [`cdb::spc`] (all device types),
//!   [`cdb::sbc`] (block devices). SSC (tape) and SMC (changer) builders will sit beside them as
//!   `cdb::ssc` and `cdb::smc`.
//! - **Parsers of device answers** ([`sense`], [`parse`]): fixed and descriptor sense, INQUIRY
//!   and its VPD pages, READ CAPACITY, GET LBA STATUS, REPORT LUNS. They take untrusted bytes
//!   and never panic or allocate more than the input's size (a fuzz target in `fuzz/` checks).
//! - **A block-device layer** ([`block::BlockDevice`]) over any transport: identification,
//!   capacity, thin-provisioning status, and batched reads that keep many READ(16) outstanding.
//!
//! Nothing here knows of chunks, images, backups or tape policy.
//!
//! # Shape of a command
//! ```text
//!   Command { cdb: &[u8], data: DataDir::{None | In(&mut [u8]) | Out(&[u8])}, timeout }
//!        │  ScsiTransport::execute / execute_many
//!        ▼
//!   Ok(Completion { status, sense, residual, transferred })   device answered (maybe CHECK CONDITION)
//!   Err(TransportError)                                        the path failed; no status exists
//! ```
//! The data buffer's length is the expected transfer length the transport announces to the
//! device. `transferred` counts bytes really moved; a transport never writes past the buffer.

pub mod block;
pub mod cdb;
pub mod error;
pub mod parse;
pub mod sense;

pub use block::{BlockDevice, DeviceInfo, LbaExtent};
pub use error::ScsiError;
pub use sense::{Sense, SenseKey};

use std::fmt;
use std::time::Duration;

/// Direction and buffer of a command's data phase.
#[derive(Debug)]
pub enum DataDir<'a> {
    /// No data phase.
    None,
    /// Device to initiator (READ, INQUIRY...): the buffer receives up to its length.
    In(&'a mut [u8]),
    /// Initiator to device (WRITE, MODE SELECT...): the whole buffer is offered.
    Out(&'a [u8]),
}

impl DataDir<'_> {
    /// The expected transfer length announced to the device.
    pub fn len(&self) -> usize {
        match self {
            DataDir::None => 0,
            DataDir::In(b) => b.len(),
            DataDir::Out(b) => b.len(),
        }
    }

    /// Whether there is no data phase at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One SCSI command to execute.
#[derive(Debug)]
pub struct Command<'a> {
    /// The command descriptor block (6 to 16 bytes).
    pub cdb: &'a [u8],
    /// The data phase.
    pub data: DataDir<'a>,
    /// How long to wait for this command before the transport gives up on it; `None` uses the
    /// transport's default.
    pub timeout: Option<Duration>,
}

impl<'a> Command<'a> {
    /// A command without data phase.
    pub fn none(cdb: &'a [u8]) -> Self {
        Command { cdb, data: DataDir::None, timeout: None }
    }
    /// A command that reads into `buf`.
    pub fn read(cdb: &'a [u8], buf: &'a mut [u8]) -> Self {
        Command { cdb, data: DataDir::In(buf), timeout: None }
    }
    /// A command that writes `buf`.
    pub fn write(cdb: &'a [u8], buf: &'a [u8]) -> Self {
        Command { cdb, data: DataDir::Out(buf), timeout: None }
    }
}

/// SCSI status byte (SAM-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Good,
    CheckCondition,
    ConditionMet,
    Busy,
    ReservationConflict,
    TaskSetFull,
    AcaActive,
    TaskAborted,
    Other(u8),
}

impl Status {
    pub fn from_byte(b: u8) -> Status {
        match b {
            0x00 => Status::Good,
            0x02 => Status::CheckCondition,
            0x04 => Status::ConditionMet,
            0x08 => Status::Busy,
            0x18 => Status::ReservationConflict,
            0x28 => Status::TaskSetFull,
            0x30 => Status::AcaActive,
            0x40 => Status::TaskAborted,
            other => Status::Other(other),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Status::Good => 0x00,
            Status::CheckCondition => 0x02,
            Status::ConditionMet => 0x04,
            Status::Busy => 0x08,
            Status::ReservationConflict => 0x18,
            Status::TaskSetFull => 0x28,
            Status::AcaActive => 0x30,
            Status::TaskAborted => 0x40,
            Status::Other(b) => b,
        }
    }

    /// Worth retrying the same command after a short pause (the device is momentarily busy).
    pub fn is_transient(self) -> bool {
        matches!(self, Status::Busy | Status::TaskSetFull | Status::TaskAborted)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Good => f.write_str("GOOD"),
            Status::CheckCondition => f.write_str("CHECK CONDITION"),
            Status::ConditionMet => f.write_str("CONDITION MET"),
            Status::Busy => f.write_str("BUSY"),
            Status::ReservationConflict => f.write_str("RESERVATION CONFLICT"),
            Status::TaskSetFull => f.write_str("TASK SET FULL"),
            Status::AcaActive => f.write_str("ACA ACTIVE"),
            Status::TaskAborted => f.write_str("TASK ABORTED"),
            Status::Other(b) => write!(f, "status 0x{b:02x}"),
        }
    }
}

/// The difference between the expected and the actual transfer length, as the transport
/// reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    /// Everything expected was transferred.
    #[default]
    None,
    /// The device moved `n` bytes fewer than the buffer's length.
    Under(usize),
    /// The device wanted to move `n` bytes more than the buffer's length (they were dropped).
    Over(usize),
}

/// The outcome of a command the device answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub status: Status,
    /// Decoded sense data, when the device returned any (normally with CHECK CONDITION).
    pub sense: Option<Sense>,
    pub residual: Residual,
    /// Bytes really moved in the data phase (never more than the buffer's length).
    pub transferred: usize,
}

impl Completion {
    /// A GOOD completion that moved `transferred` bytes.
    pub fn good(transferred: usize) -> Self {
        Completion { status: Status::Good, sense: None, residual: Residual::None, transferred }
    }
}

/// What kind of transport failure happened, for control flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The path to the device is gone and could not be restored in time.
    ConnectionLost,
    /// The command did not complete in time (and could not be recovered).
    Timeout,
    /// The device or target refused us (login, authentication, permissions).
    Refused,
    /// The other side broke the protocol (garbled or hostile messages).
    Protocol,
    /// The command cannot be expressed on this transport (CDB too long, buffer too large).
    Unsupported,
    /// Anything else.
    Other,
}

/// A failure of the path to the device: no SCSI status exists for the command.
///
/// The message comes from the transport (e.g. an `iscsi::IscsiError`) and already says what
/// happened and what to do; it never contains a secret.
#[derive(Debug)]
pub struct TransportError {
    pub kind: TransportErrorKind,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl TransportError {
    /// Wraps a transport's own error.
    pub fn new(
        kind: TransportErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        TransportError { kind, source: source.into() }
    }

    /// The transport's own error, for downcasting (e.g. to `iscsi::IscsiError`).
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Whether trying the whole operation again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, TransportErrorKind::ConnectionLost | TransportErrorKind::Timeout)
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

/// A way to run SCSI commands on one logical unit.
///
/// Implementations are `Send + Sync` and may be called from many threads at once. Object safe:
/// the block layer and the tape code hold an `Arc<dyn ScsiTransport>`.
pub trait ScsiTransport: Send + Sync + fmt::Debug {
    /// Runs one command and waits for its status.
    fn execute(&self, cmd: &mut Command<'_>) -> Result<Completion, TransportError>;

    /// Runs a batch of independent commands, keeping as many outstanding at once as the
    /// transport allows, and returns their completions in the same order. Commands may be
    /// executed in any order. A transport error fails the whole batch (the buffers' contents
    /// are then unspecified). The default runs them one after the other.
    fn execute_many(&self, cmds: &mut [Command<'_>]) -> Result<Vec<Completion>, TransportError> {
        cmds.iter_mut().map(|c| self.execute(c)).collect()
    }

    /// A description for logs ("iscsi://127.0.0.1:3260/iqn.../1"). Never contains a secret.
    fn describe(&self) -> String;
}

impl<T: ScsiTransport + ?Sized> ScsiTransport for std::sync::Arc<T> {
    fn execute(&self, cmd: &mut Command<'_>) -> Result<Completion, TransportError> {
        (**self).execute(cmd)
    }
    fn execute_many(&self, cmds: &mut [Command<'_>]) -> Result<Vec<Completion>, TransportError> {
        (**self).execute_many(cmds)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
