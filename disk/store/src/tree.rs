//! The index tree of a disk image: the ordered list of its chunk digests, cut into nodes that
//! are stored as chunks themselves, so an unchanged stretch of the disk costs nothing in the
//! next restore point.
//!
//! ## Node format (the raw bytes of a `Tree` record)
//! ```text
//!   0  magic  b"RVTN"
//!   4  level  u8  (0 = leaf: entries are chunk digests, Digest::ZERO for an all-zero chunk;
//!                  n > 0: entries are digests of level n-1 nodes)
//!   5  reserved [u8; 3]
//!   8  count  u32  (1..=FANOUT)
//!  12  reserved u32
//!  16  count × 32-byte digests
//! ```
//! A tree of height `h` has its root at level `h - 1`. Every node but the last of its level
//! is full, so entry `i` of the disk sits at a position computable from `i` alone.
//!
//! Why 64 entries: a node covers 64 chunks (16 MiB of disk at 256 KiB chunks). A localised
//! change rewrites one leaf and its path to the root; 1% of chunks changed uniformly at
//! random rewrites about half the leaves, still far less than the data it describes.

use crate::crypto::ChunkIds;
use crate::error::{Result, StoreError};
use crate::pack::{Codec, EncodedChunk, RecordKind};
use crate::Digest;

/// Entries per node.
pub const FANOUT: usize = 64;
const NODE_MAGIC: &[u8; 4] = b"RVTN";
const NODE_HEADER: usize = 16;

fn encode_node(level: u8, entries: &[Digest]) -> Vec<u8> {
    let mut v = Vec::with_capacity(NODE_HEADER + entries.len() * 32);
    v.extend_from_slice(NODE_MAGIC);
    v.push(level);
    v.extend_from_slice(&[0; 3]);
    v.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    for d in entries {
        v.extend_from_slice(&d.0);
    }
    v
}

/// Parse a node, checking that it is at `want_level`.
pub fn decode_node(raw: &[u8], want_level: u8, digest: &Digest) -> Result<Vec<Digest>> {
    let bad =
        |detail: String| StoreError::Corrupt { path: format!("index-tree node {digest}").into(), offset: 0, detail };
    if raw.len() < NODE_HEADER || &raw[0..4] != NODE_MAGIC {
        return Err(bad("not an index-tree node".into()));
    }
    if raw[4] != want_level {
        return Err(bad(format!("node is at level {}, expected {want_level}", raw[4])));
    }
    let count = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")) as usize;
    if count == 0 || count > FANOUT || raw.len() != NODE_HEADER + count * 32 {
        return Err(bad(format!("node claims {count} entries in {} bytes", raw.len())));
    }
    Ok(raw[NODE_HEADER..].chunks_exact(32).map(|c| Digest(c.try_into().expect("32 bytes"))).collect())
}

/// Encode a finished node as a chunk (stored raw: digests do not compress; an encrypted
/// store seals it when it is inserted).
fn node_chunk(ids: &ChunkIds, level: u8, entries: &[Digest]) -> EncodedChunk {
    let raw = encode_node(level, entries);
    let digest = ids.of(&raw);
    EncodedChunk::plain(digest, RecordKind::Tree, Codec::Raw, raw.len() as u32, raw)
}

/// Builds a tree from digests pushed in disk order. Holds one partial node per level, so its
/// memory is `height × FANOUT × 32` bytes whatever the disk size.
#[derive(Debug)]
pub struct TreeBuilder {
    levels: Vec<Vec<Digest>>,
    entries: u64,
    ids: ChunkIds,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        TreeBuilder::new()
    }
}

impl TreeBuilder {
    /// A builder for an unencrypted store (plain blake3 node ids); [`Store::tree_builder`]
    /// gives the right one for any store.
    ///
    /// [`Store::tree_builder`]: crate::Store::tree_builder
    pub fn new() -> TreeBuilder {
        TreeBuilder::with_ids(ChunkIds::PLAIN)
    }

    /// A builder naming nodes with `ids`.
    pub fn with_ids(ids: ChunkIds) -> TreeBuilder {
        TreeBuilder { levels: Vec::new(), entries: 0, ids }
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Add the next chunk's digest. Full nodes are handed to `emit` to be stored.
    pub fn push(&mut self, digest: Digest, emit: &mut dyn FnMut(EncodedChunk) -> Result<()>) -> Result<()> {
        self.entries += 1;
        self.push_at(0, digest, emit)
    }

    fn push_at(
        &mut self,
        level: usize,
        digest: Digest,
        emit: &mut dyn FnMut(EncodedChunk) -> Result<()>,
    ) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push(Vec::with_capacity(FANOUT));
        }
        self.levels[level].push(digest);
        if self.levels[level].len() == FANOUT {
            let node = node_chunk(&self.ids, level as u8, &self.levels[level]);
            self.levels[level].clear();
            let d = node.digest;
            emit(node)?;
            self.push_at(level + 1, d, emit)?;
        }
        Ok(())
    }

    /// Close every partial node and return (root digest, height). An empty disk (no chunks)
    /// has height 0 and root `Digest::ZERO`.
    pub fn finish(mut self, emit: &mut dyn FnMut(EncodedChunk) -> Result<()>) -> Result<(Digest, u8)> {
        if self.entries == 0 {
            return Ok((Digest::ZERO, 0));
        }
        let mut level = 0;
        loop {
            let top_level = level + 1 == self.levels.len();
            let pending = std::mem::take(&mut self.levels[level]);
            if top_level && pending.len() == 1 && level > 0 {
                // The single entry of the top partial level is the root.
                return Ok((pending[0], level as u8));
            }
            if !pending.is_empty() {
                let node = node_chunk(&self.ids, level as u8, &pending);
                let d = node.digest;
                emit(node)?;
                if top_level {
                    return Ok((d, level as u8 + 1));
                }
                // This may fill the level above and cascade; the loop closes it next.
                self.push_at(level + 1, d, emit)?;
            }
            // The top level is never empty (it only exists once something was pushed to it
            // and is only emptied when full, which creates a level above), so the loop
            // returns before running past it.
            level += 1;
        }
    }
}

/// Loads the raw bytes of a node by digest.
type NodeFetcher<'a> = Box<dyn FnMut(&Digest) -> Result<Vec<u8>> + 'a>;

/// Walks a tree in disk order, yielding leaf entries. `fetch` loads a node's raw bytes.
/// Memory: one node per level.
pub struct TreeWalker<'a> {
    fetch: NodeFetcher<'a>,
    /// Per level from the root down: the node's entries and the next position.
    stack: Vec<(Vec<Digest>, usize)>,
    height: u8,
    root: Digest,
    started: bool,
}

impl std::fmt::Debug for TreeWalker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWalker").field("root", &self.root).field("height", &self.height).finish()
    }
}

impl<'a> TreeWalker<'a> {
    pub fn new(root: Digest, height: u8, fetch: impl FnMut(&Digest) -> Result<Vec<u8>> + 'a) -> TreeWalker<'a> {
        TreeWalker { fetch: Box::new(fetch), stack: Vec::new(), height, root, started: false }
    }

    fn load(&mut self, digest: &Digest, level: u8) -> Result<Vec<Digest>> {
        let raw = (self.fetch)(digest)?;
        decode_node(&raw, level, digest)
    }

    /// The next leaf entry, or `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Digest>> {
        if !self.started {
            self.started = true;
            if self.height == 0 {
                return Ok(None);
            }
            let root = self.root;
            let entries = self.load(&root, self.height - 1)?;
            self.stack.push((entries, 0));
        }
        loop {
            let depth = self.stack.len();
            let Some((entries, pos)) = self.stack.last_mut() else { return Ok(None) };
            if *pos >= entries.len() {
                self.stack.pop();
                continue;
            }
            let d = entries[*pos];
            *pos += 1;
            let level = self.height as usize - depth;
            if level == 0 {
                return Ok(Some(d));
            }
            let child = self.load(&d, level as u8 - 1)?;
            self.stack.push((child, 0));
        }
    }
}

impl Iterator for TreeWalker<'_> {
    type Item = Result<Digest>;
    fn next(&mut self) -> Option<Result<Digest>> {
        self.next_entry().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(n: usize) -> (Digest, u8, HashMap<Digest, Vec<u8>>, Vec<Digest>) {
        let mut nodes = HashMap::new();
        let mut b = TreeBuilder::new();
        let leaves: Vec<Digest> =
            (0..n).map(|i| if i % 7 == 3 { Digest::ZERO } else { Digest::of(&i.to_le_bytes()) }).collect();
        let mut emit = |c: EncodedChunk| {
            nodes.insert(c.digest, c.payload);
            Ok(())
        };
        for d in &leaves {
            b.push(*d, &mut emit).unwrap();
        }
        let (root, h) = b.finish(&mut emit).unwrap();
        (root, h, nodes, leaves)
    }

    #[test]
    fn round_trips_at_every_shape() {
        for n in [0, 1, 2, 63, 64, 65, 127, 128, 129, 4095, 4096, 4097, 64 * 64 * 64 + 5] {
            let (root, h, nodes, leaves) = build(n);
            let walker = TreeWalker::new(root, h, |d| Ok(nodes[d].clone()));
            let got: Vec<Digest> = walker.map(|r| r.unwrap()).collect();
            assert_eq!(got.len(), leaves.len(), "n={n}");
            assert_eq!(got, leaves, "n={n}");
        }
    }

    #[test]
    fn unchanged_subtrees_share_nodes() {
        let (_, _, a, _) = build(64 * 64 * 2);
        let mut nodes = HashMap::new();
        let mut b = TreeBuilder::new();
        let mut emit = |c: EncodedChunk| {
            nodes.insert(c.digest, c.payload);
            Ok(())
        };
        for i in 0..64 * 64 * 2usize {
            let d = if i == 100 {
                Digest::of(b"changed")
            } else if i % 7 == 3 {
                Digest::ZERO
            } else {
                Digest::of(&i.to_le_bytes())
            };
            b.push(d, &mut emit).unwrap();
        }
        b.finish(&mut emit).unwrap();
        let new_nodes = nodes.keys().filter(|k| !a.contains_key(k)).count();
        // the changed leaf, its parent and the root
        assert_eq!(new_nodes, 3);
    }
}
