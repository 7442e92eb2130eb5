//! Checks every disk-image reader's tests make on a [`BlockSource`] (the `image` feature):
//! read it all, compare random reads, check its allocation map, and exercise a corrupted
//! image in a [`flip_loop`](crate::mutate::flip_loop).
//!
//! blocksource does not use testkit, so depending on it here makes no cycle; the feature keeps
//! it (and its io_uring dependency) out of the crates that need none of this.

use std::fmt::Debug;

use blocksource::{BlockSource, Extent, ExtentKind, ReadRequest, SourceError};

use crate::mutate::Tally;
use crate::Rng;

/// Read the whole disk in batches shaped like the ingest pipeline's (16 x 256 KiB); panics
/// on the first error.
pub fn read_all(src: &dyn BlockSource) -> Vec<u8> {
    const REQ: usize = 256 << 10;
    let size = usize::try_from(src.size()).expect("disk fits in memory");
    let mut out = vec![0u8; size];
    for (bi, buf) in out.chunks_mut(16 * REQ).enumerate() {
        let base = (bi * 16 * REQ) as u64;
        let mut reqs: Vec<ReadRequest<'_>> = buf
            .chunks_mut(REQ)
            .enumerate()
            .map(|(i, b)| ReadRequest { offset: base + (i * REQ) as u64, buf: b })
            .collect();
        src.read_many(&mut reqs).unwrap_or_else(|e| panic!("read_many at {base} failed: {e}"));
    }
    out
}

/// Map and read the whole disk (in 1 MiB reads, into one buffer); the first error.
pub fn try_read_all(src: &dyn BlockSource) -> Result<(), SourceError> {
    src.allocation(0, src.size())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < src.size() {
        let n = (src.size() - off).min(buf.len() as u64) as usize;
        src.read_many(&mut [ReadRequest { offset: off, buf: &mut buf[..n] }])?;
        off += n as u64;
    }
    Ok(())
}

/// `rounds` batches of 1 to 8 random unaligned reads of 1 to `max_len` bytes, each compared
/// with `expected` (the whole disk).
pub fn check_random_reads(src: &dyn BlockSource, expected: &[u8], seed: u64, rounds: usize, max_len: u64) {
    let mut rng = Rng::new(seed);
    let size = expected.len() as u64;
    for _ in 0..rounds {
        let n = 1 + rng.below(8) as usize;
        let mut bufs: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|_| {
                let len = 1 + rng.below(max_len.min(size));
                let off = rng.below(size - len + 1);
                (off, vec![0xEEu8; len as usize])
            })
            .collect();
        let mut reqs: Vec<ReadRequest<'_>> =
            bufs.iter_mut().map(|(o, b)| ReadRequest { offset: *o, buf: b.as_mut_slice() }).collect();
        src.read_many(&mut reqs).unwrap_or_else(|e| panic!("batch of {n} random reads failed: {e}"));
        for (o, b) in &bufs {
            let o = *o as usize;
            assert!(b[..] == expected[o..o + b.len()], "mismatch in read of {} bytes at {o}", b.len());
        }
    }
}

/// The allocation map of the whole disk, after checking that it is a well-formed cover (in
/// order, no gaps, overlaps or empty extents), that every Zero extent holds only zeros in
/// `expected`, and that the map of a sub-range is clipped to it.
pub fn check_extents(src: &dyn BlockSource, expected: &[u8]) -> Vec<Extent> {
    let size = src.size();
    let ext = src.allocation(0, size).unwrap_or_else(|e| panic!("allocation map of the disk failed: {e}"));
    let mut pos = 0;
    for e in &ext {
        assert_eq!(e.offset, pos, "allocation map has a gap or overlap: {ext:?}");
        assert!(e.len > 0, "allocation map has an empty extent: {ext:?}");
        pos = e.end();
        if e.kind == ExtentKind::Zero {
            assert!(
                expected[e.offset as usize..e.end() as usize].iter().all(|&b| b == 0),
                "extent {e:?} reported Zero but holds data"
            );
        }
    }
    assert_eq!(pos, size, "allocation map does not cover the disk");
    if size > 3 {
        let sub =
            src.allocation(1, size - 2).unwrap_or_else(|e| panic!("allocation map of 1..{} failed: {e}", size - 1));
        assert_eq!(sub.first().map(|e| e.offset), Some(1), "sub-range map does not start at 1: {sub:?}");
        assert_eq!(sub.last().map(|e| e.end()), Some(size - 1), "sub-range map does not end at {}: {sub:?}", size - 1);
    }
    ext
}

/// [`check_extents`], and the bytes it reports as Zero.
pub fn check_allocation(src: &dyn BlockSource, expected: &[u8]) -> u64 {
    zero_bytes(&check_extents(src, expected))
}

/// Bytes the extents report as Zero.
pub fn zero_bytes(ext: &[Extent]) -> u64 {
    ext.iter().filter(|e| e.kind == ExtentKind::Zero).map(|e| e.len).sum()
}

/// The error of opening an image that must be refused; panics if it opened.
pub fn refused<S: Debug>(opened: Result<S, SourceError>) -> SourceError {
    match opened {
        Ok(src) => panic!("image with bad metadata opened: {src:?}"),
        Err(e) => e,
    }
}

/// `e` must be Corrupt, about `what` (also in its message), with `words` in its detail.
pub fn assert_corrupt(e: &SourceError, what: &str, words: &str) {
    match e {
        SourceError::Corrupt { what: w, detail, .. } => {
            assert_eq!(w, what);
            assert!(detail.contains(words), "expected {words:?} in: {e}");
            assert!(e.to_string().contains(what), "error does not name {what}: {e}");
        }
        other => panic!("expected Corrupt({words}), got {other}"),
    }
}

/// `e` must be Unsupported, with `words` in its message.
pub fn assert_unsupported(e: &SourceError, words: &str) {
    assert!(matches!(e, SourceError::Unsupported { .. }), "expected Unsupported, got {e}");
    assert!(e.to_string().contains(words), "expected {words:?} in: {e}");
}

/// The exercise of a corrupted image in a [`flip_loop`](crate::mutate::flip_loop): if it
/// `opened`, map it, read its first 4 MiB in pipeline-shaped batches, then make four random
/// reads and maps; every error is fine, and counted in `tally`.
pub fn exercise<S: BlockSource, E>(opened: Result<S, E>, rng: &mut Rng, tally: &mut Tally) {
    let Ok(src) = opened else { return };
    tally.opened += 1;
    let size = src.size();
    tally.mapped += usize::from(src.allocation(0, size.min(1 << 30)).is_ok());
    let mut buf = vec![0u8; 4 << 20];
    let n = size.min(buf.len() as u64) as usize;
    let mut reqs: Vec<ReadRequest<'_>> = buf[..n]
        .chunks_mut(256 << 10)
        .enumerate()
        .map(|(i, b)| ReadRequest { offset: (i as u64) << 18, buf: b })
        .collect();
    tally.read += usize::from(src.read_many(&mut reqs).is_ok());
    for _ in 0..4 {
        if size == 0 {
            break;
        }
        let len = 1 + rng.below(size.min(200_000));
        let off = rng.below(size - len + 1);
        let _ = src.read_at(off, &mut buf[..len as usize]);
        let _ = src.allocation(off, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocksource::mem::MemSource;

    #[test]
    fn the_checks_pass_on_a_memory_disk() {
        let mut data = vec![0u8; 5 << 20];
        Rng::new(1).fill(&mut data[100..300_000]);
        let src = MemSource { data: data.clone(), name: "mem".into() };
        assert_eq!(read_all(&src), data);
        try_read_all(&src).unwrap();
        check_random_reads(&src, &data, 2, 20, 300_000);
        let ext = check_extents(&src, &data);
        assert!(zero_bytes(&ext) <= data.len() as u64);
        let mut tally = Tally::default();
        exercise(Ok::<_, SourceError>(src), &mut Rng::new(3), &mut tally);
        assert_eq!(tally, Tally { opened: 1, mapped: 1, read: 1 });
    }
}
