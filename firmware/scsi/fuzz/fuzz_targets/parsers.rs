//! Device answers are untrusted: every parser must return (Ok or Err) without panicking or
//! allocating more than the input, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scsi::parse;

fuzz_target!(|data: &[u8]| {
    if let Some(s) = scsi::Sense::parse(data) {
        let _ = s.to_string();
    }
    let _ = parse::inquiry(data);
    let _ = parse::vpd_supported_pages(data);
    let _ = parse::vpd_serial(data);
    if let Ok(d) = parse::vpd_device_id(data) {
        assert!(d.len() <= data.len() / 4 + 1);
        d.iter().for_each(|x| drop(x.text()));
    }
    let _ = parse::vpd_block_limits(data);
    let _ = parse::vpd_provisioning(data);
    let _ = parse::read_capacity10(data);
    let _ = parse::read_capacity16(data);
    if let Ok(d) = parse::get_lba_status(data) {
        assert!(d.len() <= data.len() / 16);
    }
    let _ = parse::report_luns(data);
    let _ = parse::supported_opcodes(data);
});
