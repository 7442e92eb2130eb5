//! SBC-4 block commands.

use super::op;

/// READ CAPACITY(10): 8 bytes of answer (last LBA, block length).
pub fn read_capacity10() -> [u8; 10] {
    [op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// READ CAPACITY(16) (SERVICE ACTION IN 0x10), up to `alloc` bytes (32 is the full answer).
pub fn read_capacity16(alloc: u32) -> [u8; 16] {
    let a = alloc.to_be_bytes();
    [op::SERVICE_ACTION_IN_16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
}

/// READ(10) of `blocks` blocks at `lba` (a 32-bit LBA; `blocks` 0 means no transfer).
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [op::READ_10, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

/// READ(16) of `blocks` blocks at `lba`. `fua` forces the read from the medium.
pub fn read16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    rw16(op::READ_16, lba, blocks, fua)
}

/// WRITE(16) of `blocks` blocks at `lba`. `fua` makes the write durable before GOOD.
pub fn write16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    rw16(op::WRITE_16, lba, blocks, fua)
}

fn rw16(opc: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opc;
    c[1] = if fua { 0x08 } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// GET LBA STATUS(16) (SERVICE ACTION IN 0x12) starting at `lba`, up to `alloc` bytes
/// (8-byte header + 16 bytes per descriptor).
pub fn get_lba_status(lba: u64, alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::SERVICE_ACTION_IN_16;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(read_capacity10(), [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_capacity16(32), [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        assert_eq!(read10(0x01020304, 0x0506), [0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]);
        assert_eq!(
            read16(0x0102030405060708, 0x0a0b0c0d, false),
            [0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0]
        );
        assert_eq!(write16(7, 1, true), [0x8a, 0x08, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0]);
        assert_eq!(get_lba_status(0x100, 4096), [0x9e, 0x12, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x10, 0, 0, 0]);
        assert_eq!(super::super::name(&read16(0, 1, false)), "READ(16)");
        assert_eq!(super::super::name(&get_lba_status(0, 8)), "GET LBA STATUS");
        assert_eq!(super::super::name(&[0xc1]), "opcode 0xc1");
    }
}
