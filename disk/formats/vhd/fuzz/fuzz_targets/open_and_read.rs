//! Treat the fuzz input as the raw bytes of a VHD file: opening, mapping and reading it must
//! never panic, hang or allocate without bound, whatever the bytes are.
//!
//! A VHD has metadata at both ends (the footer copy and dynamic header at the start, the
//! footer at the end), so the input is tried as it is, and also with its first 512 bytes
//! repeated at its end, which turns any valid-looking footer copy into a matching footer.
#![no_main]

use blocksource::mem::MemSource;
use blocksource::{BlockSource, ReadRequest};
use libfuzzer_sys::fuzz_target;
use vhd::VhdSource;

fuzz_target!(|data: &[u8]| {
    let mut mirrored = data.to_vec();
    mirrored.extend_from_slice(&data[..data.len().min(512)]);
    for bytes in [data.to_vec(), mirrored] {
        let Ok(src) = VhdSource::open(Box::new(MemSource::new("fuzz-input", bytes))) else {
            continue;
        };
        let size = src.size();
        let _ = src.allocation(0, size.min(1 << 30));
        let n = size.min(4 << 20) as usize;
        let mut buf = vec![0u8; n];
        let mut reqs: Vec<ReadRequest<'_>> = buf
            .chunks_mut(256 << 10)
            .enumerate()
            .map(|(i, b)| ReadRequest { offset: (i as u64) << 18, buf: b })
            .collect();
        let _ = src.read_many(&mut reqs);
        if size > 0 {
            let len = size.min(70_000);
            let mut tail = vec![0u8; len as usize];
            let _ = src.read_at(size - len, &mut tail);
        }
    }
});
