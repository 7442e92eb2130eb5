//! The VHDX file's own bytes as the reader sees them: the container, with the sectors a log
//! replay rewrote laid over it in memory (the container is never written).

use std::collections::BTreeMap;

use blocksource::{BlockSource, ReadRequest, SourceError};

/// Sector granularity of log writes.
pub(crate) const LOG_SECTOR: u64 = 4096;

/// File bytes rewritten by a log replay: whole 4 KiB sectors of data, and zeroed ranges.
/// The two maps never overlap: a later write removes what an earlier one left there, so the
/// result is the file as it would be after replaying the entries in order.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// 4 KiB-aligned file offset -> the 4 KiB written there.
    data: BTreeMap<u64, Box<[u8]>>,
    /// Start -> end of zeroed ranges, disjoint.
    zeros: BTreeMap<u64, u64>,
    /// File size after the replay: at least the container size (a replay may extend the file).
    pub size: u64,
    /// Log entries replayed, for diagnostics.
    pub entries: usize,
}

impl Overlay {
    /// Remove `[s, e)` from the zero ranges.
    fn punch_zeros(&mut self, s: u64, e: u64) {
        let hit: Vec<(u64, u64)> =
            self.zeros.range(..e).rev().take_while(|(_, &end)| end > s).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in hit {
            self.zeros.remove(&a);
            if a < s {
                self.zeros.insert(a, s);
            }
            if b > e {
                self.zeros.insert(e, b);
            }
        }
    }

    /// A data descriptor: `sector` (4 KiB) now lives at `offset` (4 KiB-aligned).
    pub(crate) fn write_sector(&mut self, offset: u64, sector: Box<[u8]>) {
        debug_assert_eq!(sector.len() as u64, LOG_SECTOR);
        self.punch_zeros(offset, offset + LOG_SECTOR);
        self.data.insert(offset, sector);
    }

    /// A zero descriptor: `[offset, offset + len)` now reads as zeros.
    pub(crate) fn zero(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = offset + len;
        let keys: Vec<u64> = self.data.range(offset..end).map(|(&k, _)| k).collect();
        for k in keys {
            self.data.remove(&k);
        }
        self.punch_zeros(offset, end);
        self.zeros.insert(offset, end);
    }

    /// Lay the overlay over `buf`, which holds the file bytes at `offset`.
    fn apply(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (&s, &e) in self.zeros.range(..end).rev().take_while(|(_, &e)| e > offset) {
            let a = s.max(offset);
            let b = e.min(end);
            buf[(a - offset) as usize..(b - offset) as usize].fill(0);
        }
        let first = offset.saturating_sub(LOG_SECTOR - 1);
        for (&s, sector) in self.data.range(first..end) {
            let a = s.max(offset);
            let b = (s + LOG_SECTOR).min(end);
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&sector[(a - s) as usize..(b - s) as usize]);
            }
        }
    }
}

/// The container plus an optional replay overlay.
#[derive(Debug)]
pub(crate) struct Host {
    pub container: Box<dyn BlockSource>,
    /// Container size at open time: every host offset we use was validated against `size()`.
    container_size: u64,
    overlay: Option<Overlay>,
}

impl Host {
    pub(crate) fn new(container: Box<dyn BlockSource>) -> Host {
        Host { container_size: container.size(), container, overlay: None }
    }

    pub(crate) fn set_overlay(&mut self, overlay: Overlay) {
        self.overlay = Some(overlay);
    }

    pub(crate) fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// The file size, after any log replay.
    pub(crate) fn size(&self) -> u64 {
        self.overlay.as_ref().map_or(self.container_size, |o| o.size.max(self.container_size))
    }

    /// Read file bytes; callers keep every request inside `size()`.
    pub(crate) fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        let Some(overlay) = &self.overlay else {
            return self.container.read_many(reqs);
        };
        {
            // Bytes past the container's end exist only because the replay extended the
            // file: they read as zeros (then the overlay).
            let mut inner: Vec<ReadRequest<'_>> = Vec::with_capacity(reqs.len());
            for r in reqs.iter_mut() {
                let inside = self.container_size.saturating_sub(r.offset).min(r.buf.len() as u64) as usize;
                let (head, tail) = r.buf.split_at_mut(inside);
                tail.fill(0);
                if !head.is_empty() {
                    inner.push(ReadRequest { offset: r.offset, buf: head });
                }
            }
            if !inner.is_empty() {
                self.container.read_many(&mut inner)?;
            }
        }
        for r in reqs.iter_mut() {
            overlay.apply(r.offset, r.buf);
        }
        Ok(())
    }

    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.read_many(&mut [ReadRequest { offset, buf }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(v: u8) -> Box<[u8]> {
        vec![v; LOG_SECTOR as usize].into_boxed_slice()
    }

    #[test]
    fn later_writes_win() {
        let mut o = Overlay::default();
        o.write_sector(8192, sector(1));
        o.zero(4096, 3 * 4096); // removes the data sector
        o.write_sector(12288, sector(2)); // punches the zero range
        let mut buf = vec![9u8; 5 * 4096];
        o.apply(0, &mut buf);
        assert!(buf[..4096].iter().all(|&b| b == 9));
        assert!(buf[4096..12288].iter().all(|&b| b == 0));
        assert!(buf[12288..16384].iter().all(|&b| b == 2));
        assert!(buf[16384..].iter().all(|&b| b == 9));
        // Unaligned window.
        let mut w = vec![9u8; 100];
        o.apply(12288 - 50, &mut w);
        assert!(w[..50].iter().all(|&b| b == 0) && w[50..].iter().all(|&b| b == 2));
    }
}
