//! Mutation test of the READ ELEMENT STATUS parser: real answers recorded from tgt's changer
//! (`fixtures/res-type{1..4}.bin`: picker, slots, mail slots, drives with DVCID; recorded by
//! `RV_DUMP_RES=<dir>` on the tgt_vtl test), each mutated thousands of times. The parser must
//! never panic, never report more elements than bytes allow, and decode the originals.

use scsi::cdb::smc::{parse_element_status, ElementType};

const ANSWERS: [&[u8]; 4] = [
    include_bytes!("fixtures/res-type1.bin"),
    include_bytes!("fixtures/res-type2.bin"),
    include_bytes!("fixtures/res-type3.bin"),
    include_bytes!("fixtures/res-type4.bin"),
];

#[test]
fn recorded_answers_decode() {
    let picker = parse_element_status(ANSWERS[0]).unwrap();
    assert_eq!(picker.len(), 1);
    assert_eq!((picker[0].etype, picker[0].address), (ElementType::Transport, 1));
    // tgt cuts the last 8 bytes of every answer.
    assert!(picker[0].truncated);
    let slots = parse_element_status(ANSWERS[1]).unwrap();
    assert_eq!(slots.len(), 10);
    assert_eq!(slots[0].barcode.as_deref(), Some("TST001L6"));
    assert!(slots[0].full && !slots[1].full);
    assert_eq!(slots[5].barcode.as_deref(), Some("CLN001L1"));
    let drives = parse_element_status(ANSWERS[3]).unwrap();
    assert_eq!(drives.len(), 2);
    assert!(drives[0].full && drives[0].source == Some(1001));
    assert_eq!(drives[0].barcode.as_deref(), Some("TST002L6"));
    assert!(drives[0].identifier.as_deref().unwrap().ends_with("DRV00001"));
    assert!(!drives[0].truncated && drives[1].truncated);
}

#[test]
fn mutated_answers_never_panic() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut decoded = 0usize;
    for a in ANSWERS {
        for round in 0..10_000 {
            let mut m = a.to_vec();
            for _ in 0..1 + next() % 6 {
                let i = (next() as usize) % m.len();
                m[i] = match round % 3 {
                    0 => next() as u8,
                    1 => 0xff,
                    _ => m[i] ^ (1 << (next() % 8)),
                };
            }
            if next() % 5 == 0 {
                m.truncate((next() as usize) % (m.len() + 1));
            }
            if next() % 7 == 0 {
                m.extend((0..next() % 64).map(|_| next() as u8));
            }
            if let Ok(e) = parse_element_status(&m) {
                assert!(e.len() * 12 <= m.len());
                decoded += 1;
            }
        }
    }
    assert!(decoded > 0);
}
