//! Reading and patching integers in image bytes, for tests that damage headers and tables:
//! [`be`] for big-endian formats (qcow2, VHD), [`le`] for little-endian ones (VMDK, VHDX).
//! Every function panics if the field does not fit in the slice.

macro_rules! endian {
    ($name:ident, $to:ident, $from:ident, $doc:literal) => {
        #[doc = $doc]
        pub mod $name {
            pub fn put_u16(d: &mut [u8], at: usize, v: u16) {
                d[at..at + 2].copy_from_slice(&v.$to());
            }

            pub fn put_u32(d: &mut [u8], at: usize, v: u32) {
                d[at..at + 4].copy_from_slice(&v.$to());
            }

            pub fn put_u64(d: &mut [u8], at: usize, v: u64) {
                d[at..at + 8].copy_from_slice(&v.$to());
            }

            pub fn get_u16(d: &[u8], at: usize) -> u16 {
                u16::$from(d[at..at + 2].try_into().expect("two bytes"))
            }

            pub fn get_u32(d: &[u8], at: usize) -> u32 {
                u32::$from(d[at..at + 4].try_into().expect("four bytes"))
            }

            pub fn get_u64(d: &[u8], at: usize) -> u64 {
                u64::$from(d[at..at + 8].try_into().expect("eight bytes"))
            }
        }
    };
}

endian!(be, to_be_bytes, from_be_bytes, "Big-endian fields (qcow2, VHD).");
endian!(le, to_le_bytes, from_le_bytes, "Little-endian fields (VMDK, VHDX).");

#[cfg(test)]
mod tests {
    #[test]
    fn fields_round_trip_in_both_byte_orders() {
        let mut d = [0u8; 16];
        super::be::put_u32(&mut d, 1, 0x0102_0304);
        assert_eq!(d[1..5], [1, 2, 3, 4]);
        assert_eq!(super::be::get_u32(&d, 1), 0x0102_0304);
        super::le::put_u64(&mut d, 8, 0x0102_0304_0506_0708);
        assert_eq!(d[8], 8);
        assert_eq!(super::le::get_u64(&d, 8), 0x0102_0304_0506_0708);
        super::le::put_u16(&mut d, 0, 0xBEEF);
        assert_eq!(super::be::get_u16(&d, 0), 0xEFBE);
    }
}
