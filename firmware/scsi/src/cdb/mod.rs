//! CDB builders, one module per command set.
//!
//! Every builder returns the CDB as a fixed-size array (the command's length is in its type),
//! with all multi-byte fields big-endian as SPC requires. Builders never fail: arguments that do
//! not fit a field are the caller's bug and are rejected by the type (e.g. `u16` for a 16-bit
//! allocation length); 32-bit fields of 10-byte CDBs take `u32`.
//!
//! - [`spc`]: commands every device type understands (INQUIRY, TEST UNIT READY, REPORT LUNS,
//!   REQUEST SENSE, MODE SENSE, REPORT SUPPORTED OPERATION CODES).
//! - [`sbc`]: block commands (READ CAPACITY, READ, WRITE, GET LBA STATUS).
//! - [`ssc`]: tape commands (READ(6)/WRITE(6), WRITE FILEMARKS, SPACE, LOCATE, READ POSITION,
//!   REWIND, LOAD UNLOAD, READ BLOCK LIMITS, MODE SELECT, LOG SENSE, ERASE) and decoders of
//!   their answers.
//! - [`smc`]: changer commands (READ ELEMENT STATUS, MOVE MEDIUM, INITIALIZE ELEMENT STATUS)
//!   and the READ ELEMENT STATUS decoder.

pub mod sbc;
pub mod smc;
pub mod spc;
pub mod ssc;

/// Operation codes this crate builds, for naming commands in messages.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REWIND: u8 = 0x01;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_BLOCK_LIMITS: u8 = 0x05;
    pub const INITIALIZE_ELEMENT_STATUS: u8 = 0x07;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const WRITE_FILEMARKS_6: u8 = 0x10;
    pub const SPACE_6: u8 = 0x11;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const ERASE_6: u8 = 0x19;
    pub const LOAD_UNLOAD: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const LOCATE_10: u8 = 0x2b;
    pub const READ_POSITION: u8 = 0x34;
    pub const LOG_SENSE: u8 = 0x4d;
    pub const LOCATE_16: u8 = 0x92;
    pub const MOVE_MEDIUM: u8 = 0xa5;
    pub const READ_ELEMENT_STATUS: u8 = 0xb8;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    /// SERVICE ACTION IN(16): READ CAPACITY(16) (0x10), GET LBA STATUS (0x12).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES (0x0c).
    pub const MAINTENANCE_IN: u8 = 0xa3;
}

/// A readable name for a CDB's command, for error messages ("READ(16)", "opcode 0xc1").
pub fn name(cdb: &[u8]) -> String {
    let Some(&opc) = cdb.first() else { return "empty CDB".to_string() };
    let sa = cdb.get(1).map(|b| b & 0x1f).unwrap_or(0);
    let s = match opc {
        op::TEST_UNIT_READY => "TEST UNIT READY",
        op::REWIND => "REWIND",
        op::REQUEST_SENSE => "REQUEST SENSE",
        op::READ_BLOCK_LIMITS => "READ BLOCK LIMITS",
        op::INITIALIZE_ELEMENT_STATUS => "INITIALIZE ELEMENT STATUS",
        op::READ_6 => "READ(6)",
        op::WRITE_6 => "WRITE(6)",
        op::WRITE_FILEMARKS_6 => "WRITE FILEMARKS(6)",
        op::SPACE_6 => "SPACE(6)",
        op::MODE_SELECT_6 => "MODE SELECT(6)",
        op::ERASE_6 => "ERASE(6)",
        op::LOAD_UNLOAD => "LOAD UNLOAD",
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => "PREVENT ALLOW MEDIUM REMOVAL",
        op::LOCATE_10 => "LOCATE(10)",
        op::READ_POSITION => "READ POSITION",
        op::LOG_SENSE => "LOG SENSE",
        op::LOCATE_16 => "LOCATE(16)",
        op::MOVE_MEDIUM => "MOVE MEDIUM",
        op::READ_ELEMENT_STATUS => "READ ELEMENT STATUS",
        op::INQUIRY => "INQUIRY",
        op::MODE_SENSE_6 => "MODE SENSE(6)",
        op::READ_CAPACITY_10 => "READ CAPACITY(10)",
        op::READ_10 => "READ(10)",
        op::WRITE_10 => "WRITE(10)",
        op::MODE_SENSE_10 => "MODE SENSE(10)",
        op::READ_16 => "READ(16)",
        op::WRITE_16 => "WRITE(16)",
        op::SERVICE_ACTION_IN_16 if sa == 0x10 => "READ CAPACITY(16)",
        op::SERVICE_ACTION_IN_16 if sa == 0x12 => "GET LBA STATUS",
        op::REPORT_LUNS => "REPORT LUNS",
        op::MAINTENANCE_IN if sa == 0x0c => "REPORT SUPPORTED OPERATION CODES",
        other => return format!("opcode 0x{other:02x}"),
    };
    s.to_string()
}
