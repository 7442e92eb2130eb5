//! A hostile target's byte stream: the PDU reader (with and without digests) and the text and
//! CHAP value parsers must return errors, never panic or allocate past their limits.
#![no_main]

use iscsi::pdu::{Digests, PduReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut r = PduReader::new(rest, 8192);
    r.digests = Digests { header: mode & 1 != 0, data: mode & 2 != 0 };
    for _ in 0..64 {
        match r.read_pdu() {
            Ok(Some(p)) => {
                assert!(p.data.len() <= 8192);
                let _ = iscsi::text::parse(&p.data);
            }
            _ => break,
        }
    }
    let _ = iscsi::text::parse(rest);
    if let Ok(s) = std::str::from_utf8(rest) {
        let _ = iscsi::chap::decode_binary(s);
    }
});
