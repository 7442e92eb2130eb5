//! SPC-4 commands common to all device types.

use super::op;

/// TEST UNIT READY (6 bytes).
pub fn test_unit_ready() -> [u8; 6] {
    [op::TEST_UNIT_READY, 0, 0, 0, 0, 0]
}

/// Standard INQUIRY data, up to `alloc` bytes (96 is plenty; 36 is the mandatory minimum).
pub fn inquiry(alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [op::INQUIRY, 0, 0, a[0], a[1], 0]
}

/// VPD page names, for [`inquiry_vpd`].
pub mod vpd {
    pub const SUPPORTED_PAGES: u8 = 0x00;
    pub const UNIT_SERIAL: u8 = 0x80;
    pub const DEVICE_ID: u8 = 0x83;
    pub const BLOCK_LIMITS: u8 = 0xb0;
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xb2;
}

/// INQUIRY with EVPD=1 for `page`, up to `alloc` bytes.
pub fn inquiry_vpd(page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [op::INQUIRY, 0x01, page, a[0], a[1], 0]
}

/// REPORT LUNS (select report 0: all logical units), up to `alloc` bytes (at least 16).
pub fn report_luns(alloc: u32) -> [u8; 12] {
    let a = alloc.to_be_bytes();
    [op::REPORT_LUNS, 0, 0, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
}

/// REQUEST SENSE, fixed format (DESC=0), up to `alloc` bytes (252 is the maximum sense).
pub fn request_sense(alloc: u8) -> [u8; 6] {
    [op::REQUEST_SENSE, 0, 0, 0, alloc, 0]
}

/// Page control field of MODE SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current = 0,
    Changeable = 1,
    Default = 2,
    Saved = 3,
}

/// MODE SENSE(6) of `page`/`subpage` (page 0x3f = all pages); `dbd` disables block descriptors.
pub fn mode_sense6(page: u8, subpage: u8, pc: PageControl, dbd: bool, alloc: u8) -> [u8; 6] {
    [op::MODE_SENSE_6, if dbd { 0x08 } else { 0 }, ((pc as u8) << 6) | (page & 0x3f), subpage, alloc, 0]
}

/// MODE SENSE(10) of `page`/`subpage`; `llbaa` allows 16-byte block descriptors.
pub fn mode_sense10(page: u8, subpage: u8, pc: PageControl, dbd: bool, llbaa: bool, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    let b1 = if dbd { 0x08 } else { 0 } | if llbaa { 0x10 } else { 0 };
    [op::MODE_SENSE_10, b1, ((pc as u8) << 6) | (page & 0x3f), subpage, 0, 0, 0, a[0], a[1], 0]
}

/// REPORT SUPPORTED OPERATION CODES: all commands (reporting option 0), up to `alloc` bytes.
pub fn report_supported_opcodes_all(alloc: u32) -> [u8; 12] {
    let a = alloc.to_be_bytes();
    [op::MAINTENANCE_IN, 0x0c, 0, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
}

/// REPORT SUPPORTED OPERATION CODES for one `opcode` (reporting option 1; option 2 with a
/// service action when `service_action` is given).
pub fn report_supported_opcode(opcode: u8, service_action: Option<u16>, alloc: u32) -> [u8; 12] {
    let a = alloc.to_be_bytes();
    let (opt, sa) = match service_action {
        None => (1, [0, 0]),
        Some(s) => (2, s.to_be_bytes()),
    };
    [op::MAINTENANCE_IN, 0x0c, opt, opcode, sa[0], sa[1], a[0], a[1], a[2], a[3], 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(test_unit_ready(), [0; 6]);
        assert_eq!(inquiry(96), [0x12, 0, 0, 0, 96, 0]);
        assert_eq!(inquiry_vpd(vpd::BLOCK_LIMITS, 0x1234), [0x12, 1, 0xb0, 0x12, 0x34, 0]);
        assert_eq!(report_luns(0x10000), [0xa0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(request_sense(252), [0x03, 0, 0, 0, 252, 0]);
        assert_eq!(mode_sense6(0x3f, 0, PageControl::Current, true, 255), [0x1a, 0x08, 0x3f, 0, 255, 0]);
        assert_eq!(
            mode_sense10(0x0a, 0x01, PageControl::Changeable, false, true, 512),
            [0x5a, 0x10, 0x4a, 0x01, 0, 0, 0, 2, 0, 0]
        );
        assert_eq!(report_supported_opcodes_all(4096), [0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]);
        assert_eq!(report_supported_opcode(0x9e, Some(0x10), 20), [0xa3, 0x0c, 2, 0x9e, 0, 0x10, 0, 0, 0, 20, 0, 0]);
        assert_eq!(report_supported_opcode(0x28, None, 20)[2], 1);
    }
}
