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
//! - later `ssc` (tape: READ(6)/WRITE(6), SPACE, LOCATE, READ POSITION, ...) and `smc`
//!   (changers: READ ELEMENT STATUS, MOVE MEDIUM) beside them.

pub mod sbc;
pub mod spc;

/// Operation codes this crate builds, for naming commands in messages.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
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
        op::REQUEST_SENSE => "REQUEST SENSE",
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
