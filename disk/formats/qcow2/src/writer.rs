//! [`Qcow2Writer`]: write a standalone qcow2 v3 image from cluster writes in any order.
//!
//! Layout of the file it produces, in host clusters:
//!
//! ```text
//! [0] header | data clusters, in order of first write | L2 tables | L1 table |
//!     refcount table | refcount blocks
//! ```
//!
//! Data clusters are appended as they arrive, so the writer only needs the guest-cluster to
//! host-offset map in memory (8 bytes per guest cluster). All metadata is written by
//! [`Qcow2Writer::finish`]. Because every host cluster from 0 to the end of the file is used
//! exactly once, every refcount is 1 and the refcount blocks are trivial to generate.
//!
//! Crash safety: the header is written last, after everything else is on stable storage, so
//! an interrupted restore leaves a file with no qcow2 magic rather than a plausible image
//! pointing at missing metadata.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::header::MAX_L1_BYTES;
use crate::MAGIC;

/// Cluster sizes the writer offers: 64 KiB (QEMU's default) to 2 MiB.
const WRITER_MIN_CLUSTER_BITS: u32 = 16;
const WRITER_MAX_CLUSTER_BITS: u32 = 21;
/// Bit 63 of L1/L2 entries: refcount is exactly 1, so QEMU may write in place.
const OFLAG_COPIED: u64 = 1 << 63;
/// We write 16-bit refcounts (refcount_order 4), QEMU's default.
const REFCOUNT_ORDER: u32 = 4;
/// v3 header length including the compression type byte and padding.
const HEADER_LEN: usize = 112;
/// Clusters per L2 table batch written by `finish` (bounds its temporary buffer).
const FINISH_BATCH_BYTES: usize = 8 << 20;

/// Writes a new qcow2 v3 image (no backing file, no compression) to a file.
///
/// Writes must be whole clusters at cluster-aligned guest offsets, except for the last,
/// partial cluster of a disk whose size is not a multiple of the cluster size. Clusters that
/// are entirely zero are not allocated (they read as zeros). A cluster may be written more
/// than once; later writes win. Call [`finish`](Self::finish) to make the file a valid image.
pub struct Qcow2Writer {
    file: File,
    virtual_size: u64,
    cluster_bits: u32,
    /// Host offset of each guest cluster's data, 0 if not allocated (host cluster 0 is the
    /// header, so 0 is never a data offset).
    map: Vec<u64>,
    /// Where the next new data cluster goes (cluster-aligned).
    next_host: u64,
}

impl fmt::Debug for Qcow2Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("virtual_size", &self.virtual_size)
            .field("cluster_bits", &self.cluster_bits)
            .field("clusters", &self.map.len())
            .field("next_host", &self.next_host)
            .finish()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Whether `b` is all zeros; compares 16 bytes at a time so restores of sparse disks do not
/// spend their time here.
fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    let wide = chunks.by_ref().all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0);
    wide && chunks.remainder().iter().all(|&x| x == 0)
}

impl Qcow2Writer {
    /// Start a new image of `virtual_size` bytes with clusters of `2^cluster_bits` bytes
    /// (16..=21, i.e. 64 KiB..2 MiB; 16 is the usual choice) in `file`, which is truncated.
    ///
    /// QEMU only handles whole 512-byte sectors, so like `qemu-img convert` the image's size
    /// is `virtual_size` rounded up to a multiple of 512; the padding reads as zeros. Writes
    /// are still checked against `virtual_size` itself.
    pub fn create(file: File, virtual_size: u64, cluster_bits: u32) -> io::Result<Self> {
        if !(WRITER_MIN_CLUSTER_BITS..=WRITER_MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(invalid(format!(
                "qcow2 cluster_bits {cluster_bits} not supported: use {WRITER_MIN_CLUSTER_BITS}..={WRITER_MAX_CLUSTER_BITS} (64 KiB..2 MiB clusters)"
            )));
        }
        let cs = 1u64 << cluster_bits;
        let clusters = virtual_size.div_ceil(cs);
        let l1_entries = clusters.div_ceil(cs / 8);
        if l1_entries > MAX_L1_BYTES / 8 {
            return Err(invalid(format!(
                "virtual size {virtual_size} is too large for {cs}-byte clusters (L1 table over {} MiB); use larger clusters",
                MAX_L1_BYTES >> 20
            )));
        }
        let clusters =
            usize::try_from(clusters).map_err(|_| invalid(format!("virtual size {virtual_size} too large")))?;
        let mut map = Vec::new();
        map.try_reserve_exact(clusters).map_err(|_| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "cannot allocate the {} MiB cluster map for a {virtual_size}-byte qcow2 image",
                    (clusters * 8) >> 20
                ),
            )
        })?;
        map.resize(clusters, 0);
        // Start from an empty file: stale bytes must not survive in unwritten clusters.
        file.set_len(0)?;
        Ok(Qcow2Writer { file, virtual_size, cluster_bits, map, next_host: cs })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Write `data` at guest offset `guest_offset`: whole clusters, except that the write may
    /// end at the (unaligned) end of the disk. All-zero clusters that were never written are
    /// skipped; runs of clusters that are contiguous on the host go out as one write.
    pub fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> io::Result<()> {
        let cs = self.cluster_size();
        let end = guest_offset.checked_add(data.len() as u64).filter(|&e| e <= self.virtual_size).ok_or_else(|| {
            invalid(format!(
                "qcow2 write of {} bytes at {guest_offset} is past the end of the {}-byte disk",
                data.len(),
                self.virtual_size
            ))
        })?;
        if !guest_offset.is_multiple_of(cs) || (!(data.len() as u64).is_multiple_of(cs) && end != self.virtual_size) {
            return Err(invalid(format!(
                "qcow2 write of {} bytes at {guest_offset} is not cluster-aligned ({cs}-byte clusters) and does not end at the end of the disk",
                data.len()
            )));
        }

        // A pending contiguous host write: (host offset, start index in data, length).
        let mut pending: Option<(u64, usize, usize)> = None;
        let first_cluster = (guest_offset / cs) as usize;
        for (i, chunk) in data.chunks(cs as usize).enumerate() {
            let slot = first_cluster + i;
            let host = match self.map[slot] {
                // Overwrite in place, zeros included: the cluster stays allocated.
                h if h != 0 => h,
                _ if is_zero(chunk) => continue,
                _ => {
                    let h = self.next_host;
                    self.next_host += cs;
                    self.map[slot] = h;
                    h
                }
            };
            let start = i * cs as usize;
            pending = match pending {
                Some((h, s, l)) if h + l as u64 == host && s + l == start => Some((h, s, l + chunk.len())),
                other => {
                    if let Some((h, s, l)) = other {
                        self.file.write_all_at(&data[s..s + l], h)?;
                    }
                    Some((host, start, chunk.len()))
                }
            };
        }
        if let Some((h, s, l)) = pending {
            self.file.write_all_at(&data[s..s + l], h)?;
        }
        Ok(())
    }

    /// Write the L2 tables, L1 table, refcount table and blocks, sync, then write the header
    /// and sync again. Returns the file.
    pub fn finish(self) -> io::Result<File> {
        let cs = self.cluster_size();
        let csu = cs as usize;
        let l2_entries = csu / 8;
        let l1_entries = self.map.len().div_ceil(l2_entries);
        let mut next = self.next_host;

        // L2 tables, only for L1 ranges with at least one allocated cluster. Batched into
        // contiguous writes of up to FINISH_BATCH_BYTES.
        let mut l1 = vec![0u64; l1_entries];
        let mut batch: Vec<u8> = Vec::new();
        let mut batch_start = next;
        for (i, slots) in self.map.chunks(l2_entries).enumerate() {
            if slots.iter().all(|&h| h == 0) {
                continue;
            }
            l1[i] = next | OFLAG_COPIED;
            for &h in slots {
                let e = if h == 0 { 0 } else { h | OFLAG_COPIED };
                batch.extend_from_slice(&e.to_be_bytes());
            }
            batch.resize(batch.len().next_multiple_of(csu), 0);
            next += cs;
            if batch.len() >= FINISH_BATCH_BYTES {
                self.file.write_all_at(&batch, batch_start)?;
                batch.clear();
                batch_start = next;
            }
        }
        if !batch.is_empty() {
            self.file.write_all_at(&batch, batch_start)?;
        }

        // L1 table. An empty disk has none (offset 0, as QEMU writes it): a cluster reserved
        // for a zero-entry table would count as leaked.
        let l1_offset = if l1.is_empty() { 0 } else { next };
        if !l1.is_empty() {
            let mut l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
            l1_bytes.resize(l1_bytes.len().next_multiple_of(csu), 0);
            self.file.write_all_at(&l1_bytes, l1_offset)?;
            next += l1_bytes.len() as u64;
        }

        // Refcounts: every cluster of the finished file, header to last refcount block, has
        // refcount 1. Find how many refcount blocks (R) and table clusters (T) are needed to
        // also cover themselves: iterate to the fixed point (grows monotonically, converges
        // in a couple of rounds).
        let used = next / cs;
        let per_block = (cs * 8) >> REFCOUNT_ORDER; // entries per refcount block
        let per_table = cs / 8; // block offsets per refcount table cluster
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let total = used + blocks + table_clusters;
            let b = total.div_ceil(per_block);
            let t = b.div_ceil(per_table).max(1);
            if b == blocks && t == table_clusters {
                break;
            }
            (blocks, table_clusters) = (b, t);
        }
        let total = used + blocks + table_clusters;
        let table_offset = next;
        let blocks_offset = table_offset + table_clusters * cs;

        let mut table = vec![0u8; (table_clusters * cs) as usize];
        for (k, e) in table.chunks_exact_mut(8).take(blocks as usize).enumerate() {
            e.copy_from_slice(&(blocks_offset + k as u64 * cs).to_be_bytes());
        }
        self.file.write_all_at(&table, table_offset)?;
        let mut block = vec![0u8; csu];
        for k in 0..blocks {
            let first = k * per_block;
            let ones = total.saturating_sub(first).min(per_block) as usize;
            block.fill(0);
            for e in block.chunks_exact_mut(2).take(ones) {
                e.copy_from_slice(&1u16.to_be_bytes());
            }
            self.file.write_all_at(&block, blocks_offset + k * cs)?;
        }
        debug_assert_eq!(blocks_offset + blocks * cs, total * cs);

        // Everything the header points to must be durable before the header exists.
        self.file.sync_all()?;

        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
                                                      // 8..16 backing_file_offset, 16..20 backing_file_size: none
        h[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&self.virtual_size.next_multiple_of(512).to_be_bytes());
        // 32..36 crypt_method: none
        h[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
        h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&table_offset.to_be_bytes());
        h[56..60].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        // 60..64 nb_snapshots, 64..72 snapshots_offset, 72..96 feature bitmaps: all zero
        h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
        h[100..104].copy_from_slice(&(HEADER_LEN as u32).to_be_bytes());
        // 104 compression_type 0 (deflate, unused), 105..112 padding. The rest of cluster 0
        // is zeros, which reads as the end-of-extensions marker.
        self.file.write_all_at(&h, 0)?;
        self.file.sync_all()?;
        Ok(self.file)
    }
}
