//! Treat the fuzz input as the raw bytes of a VHDX file: opening, mapping and reading it must
//! never panic, hang or allocate without bound, whatever the bytes are.
//!
//! A valid VHDX is at least a few MiB (1 MiB header section, then regions), far more than a
//! fuzzer input, so the input is laid out over a sparse in-memory file: the first half of the
//! input at offset 0 (file type identifier, headers at 64 and 128 KiB are reachable through
//! the length), and every further 4 KiB slice of the input placed at MiB boundaries where the
//! log, metadata, BAT and blocks live in typical images.
#![no_main]

use blocksource::{BlockSource, Extent, ExtentKind, ReadRequest, SourceError};
use libfuzzer_sys::fuzz_target;
use vhdx::{BackingOpener, VhdxSource};

/// A sparse file: `chunks` of bytes at offsets, zeros elsewhere, `size` bytes long.
#[derive(Debug)]
struct Sparse {
    chunks: Vec<(u64, Vec<u8>)>,
    size: u64,
}

impl BlockSource for Sparse {
    fn size(&self) -> u64 {
        self.size
    }
    fn describe(&self) -> String {
        "fuzz-input".to_string()
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        let end = offset.saturating_add(len).min(self.size());
        Ok(vec![Extent { offset, len: end.saturating_sub(offset), kind: ExtentKind::Data }])
    }
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter_mut() {
            blocksource::check_range(&|| self.describe(), r.offset, r.buf.len() as u64, self.size())?;
            r.buf.fill(0);
            let end = r.offset + r.buf.len() as u64;
            for (at, bytes) in &self.chunks {
                let cend = at + bytes.len() as u64;
                let s = r.offset.max(*at);
                let e = end.min(cend);
                if s < e {
                    r.buf[(s - r.offset) as usize..(e - r.offset) as usize]
                        .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
                }
            }
        }
        Ok(())
    }
}

/// Parents named by the input are refused: the fuzzer must not open host files.
struct NoBacking;

impl BackingOpener for NoBacking {
    fn open_backing(&self, name: &str, child: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        Err(SourceError::Unsupported { what: child.to_string(), detail: format!("fuzzing: parent {name:?}") })
    }
}

/// Layout: input bytes [0, 4) = file size in MiB (1..=64); then the header section image up to
/// 320 KiB of input mapped at 0; the rest in 4 KiB slices at 1 MiB, 2 MiB, 3 MiB, ... and
/// 1 MiB + 64 KiB (metadata items), alternating.
fn layout(data: &[u8]) -> Sparse {
    if data.len() < 4 {
        return Sparse { chunks: vec![(0, data.to_vec())], size: data.len() as u64 };
    }
    let mib = 1u64 << 20;
    let size = (1 + u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]])) % 64) * mib;
    let rest = &data[4..];
    let head = rest.len().min(320 << 10);
    let mut chunks = vec![(0u64, rest[..head].to_vec())];
    for (i, slice) in rest[head..].chunks(4096).enumerate() {
        let i = i as u64;
        let at = (1 + i / 2) * mib + if i % 2 == 1 { 64 << 10 } else { 0 };
        if at + slice.len() as u64 <= size {
            chunks.push((at, slice.to_vec()));
        }
    }
    Sparse { chunks, size }
}

fuzz_target!(|data: &[u8]| {
    for container in [layout(data), Sparse { chunks: vec![(0, data.to_vec())], size: data.len() as u64 }] {
        let Ok(src) = VhdxSource::open(Box::new(container), &NoBacking) else {
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
