//! Treat the fuzz input as a set of VMDK files: opening, mapping and reading them must never
//! panic, hang or allocate without bound, whatever the bytes are.
//!
//! The input is split at each `\n@@\n` separator: the first part is the file the user named
//! (`d.vmdk`: a descriptor or a sparse file), the following ones are the files `f1`, `f2`, ...
//! that descriptors may name as extents or parents. Any other name is refused, so the fuzzer
//! never opens host files.
#![no_main]

use blocksource::{BlockSource, Extent, ExtentKind, ReadRequest, SourceError};
use libfuzzer_sys::fuzz_target;
use vmdk::{BackingOpener, VmdkSource};

/// One file as a container.
#[derive(Debug)]
struct Mem(Vec<u8>, String);

impl BlockSource for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn describe(&self) -> String {
        self.1.clone()
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

/// Serves the other parts of the input as `f1`, `f2`, ... (and `d.vmdk` itself).
struct Parts(Vec<Vec<u8>>);

impl BackingOpener for Parts {
    fn open_backing(&self, name: &str, child: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        let idx = if name == "d.vmdk" { Some(0) } else { name.strip_prefix('f').and_then(|n| n.parse::<usize>().ok()) };
        match idx.and_then(|i| self.0.get(i)) {
            Some(d) => Ok((Box::new(Mem(d.clone(), name.to_string())), name.to_string())),
            None => Err(SourceError::Unsupported { what: child.to_string(), detail: format!("fuzzing: no file {name:?}") }),
        }
    }
}

fn split(data: &[u8]) -> Vec<Vec<u8>> {
    const SEP: &[u8] = b"\n@@\n";
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(rest[..i].to_vec());
        rest = &rest[i + SEP.len()..];
    }
    parts.push(rest.to_vec());
    parts
}

fuzz_target!(|data: &[u8]| {
    let parts = Parts(split(data));
    let top = Mem(parts.0[0].clone(), "d.vmdk".to_string());
    let Ok(src) = VmdkSource::open(Box::new(top), &parts) else {
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
        let _ = src.allocation(size - len, len);
    }
});
