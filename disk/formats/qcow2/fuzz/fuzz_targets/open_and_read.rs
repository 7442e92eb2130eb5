//! Treat the fuzz input as the raw bytes of a qcow2 file: opening, mapping and reading it
//! must never panic, hang or allocate without bound, whatever the bytes are.
#![no_main]

use blocksource::{BlockSource, Extent, ExtentKind, ReadRequest, SourceError};
use libfuzzer_sys::fuzz_target;
use qcow2::{BackingOpener, Qcow2Source};

/// The input as a container.
#[derive(Debug)]
struct Mem(Vec<u8>);

impl BlockSource for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
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
            let o = r.offset as usize;
            r.buf.copy_from_slice(&self.0[o..o + r.buf.len()]);
        }
        Ok(())
    }
}

/// Backing files named by the input are refused: the fuzzer must not open host files.
struct NoBacking;

impl BackingOpener for NoBacking {
    fn open_backing(&self, name: &str, child: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        Err(SourceError::Unsupported { what: child.to_string(), detail: format!("fuzzing: backing file {name:?}") })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = Qcow2Source::open(Box::new(Mem(data.to_vec())), &NoBacking) else {
        return;
    };
    let size = src.size();
    let _ = src.allocation(0, size.min(1 << 30));
    // The start of the disk in pipeline-shaped batches, plus a read at the very end.
    let n = size.min(4 << 20) as usize;
    let mut buf = vec![0u8; n];
    let mut reqs: Vec<ReadRequest<'_>> =
        buf.chunks_mut(256 << 10).enumerate().map(|(i, b)| ReadRequest { offset: (i as u64) << 18, buf: b }).collect();
    let _ = src.read_many(&mut reqs);
    if size > 0 {
        let len = size.min(70_000);
        let mut tail = vec![0u8; len as usize];
        let _ = src.read_at(size - len, &mut tail);
    }
});
