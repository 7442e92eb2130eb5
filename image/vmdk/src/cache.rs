//! A bounded LRU cache of decoded grain tables, shared by all images of one snapshot chain.
//!
//! Tables are stored as `Arc<[u32]>` (little-endian entries decoded to integers), so a lookup
//! only clones an `Arc` under the lock. The lock is never held across I/O: a thread that
//! misses reads the table without the lock and inserts it afterwards, so two threads may
//! occasionally read the same table twice, which is harmless (tables are immutable while we
//! read the image).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// (sparse extent id, byte offset of the grain table in that extent's file).
pub(crate) type Key = (u32, u64);

pub(crate) struct GtCache {
    capacity_bytes: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// key -> (last-use tick, table)
    map: HashMap<Key, (u64, Arc<[u32]>)>,
    /// last-use tick -> key, oldest first: the eviction order.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

impl fmt::Debug for GtCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("GtCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("tables", &inner.map.len())
            .field("bytes", &inner.bytes)
            .finish()
    }
}

impl GtCache {
    pub(crate) fn new(capacity_bytes: usize) -> GtCache {
        GtCache { capacity_bytes, inner: Mutex::new(Lru::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // Tables are immutable, so a panic elsewhere while holding the lock leaves at worst
        // the byte count off; keep serving rather than propagate the poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, key: Key) -> Option<Arc<[u32]>> {
        let mut lru = self.lock();
        let lru = &mut *lru;
        lru.tick += 1;
        let tick = lru.tick;
        let (old_tick, table) = lru.map.get_mut(&key)?;
        lru.order.remove(old_tick);
        *old_tick = tick;
        lru.order.insert(tick, key);
        Some(table.clone())
    }

    pub(crate) fn insert(&self, key: Key, table: Arc<[u32]>) {
        let table_bytes = table.len() * 4;
        let mut lru = self.lock();
        let lru = &mut *lru;
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((old_tick, old)) = lru.map.insert(key, (tick, table)) {
            lru.order.remove(&old_tick);
            lru.bytes -= old.len() * 4;
        }
        lru.order.insert(tick, key);
        lru.bytes += table_bytes;
        // Evict oldest first, but always keep the table just inserted (the caller holds its
        // own Arc for the current batch anyway).
        while lru.bytes > self.capacity_bytes && lru.order.len() > 1 {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some((_, t)) = lru.map.remove(&victim) {
                lru.bytes -= t.len() * 4;
            }
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let c = GtCache::new(3 * 512 * 4);
        let t = |v: u32| -> Arc<[u32]> { vec![v; 512].into() };
        c.insert((0, 1), t(1));
        c.insert((0, 2), t(2));
        c.insert((0, 3), t(3));
        assert!(c.get((0, 1)).is_some()); // 1 is now the most recent
        c.insert((1, 4), t(4)); // evicts 2
        assert!(c.get((0, 2)).is_none());
        assert_eq!(c.get((0, 1)).unwrap()[0], 1);
        assert_eq!(c.get((0, 3)).unwrap()[0], 3);
        assert_eq!(c.get((1, 4)).unwrap()[0], 4);
        assert_eq!(c.bytes(), 3 * 512 * 4);
        c.insert((1, 4), t(5));
        assert_eq!(c.bytes(), 3 * 512 * 4);
        assert_eq!(c.get((1, 4)).unwrap()[0], 5);
    }

    #[test]
    fn keeps_one_oversized_table() {
        let c = GtCache::new(8);
        c.insert((0, 1), vec![0u32; 100].into());
        assert!(c.get((0, 1)).is_some());
        c.insert((0, 2), vec![0u32; 100].into());
        assert!(c.get((0, 1)).is_none());
        assert!(c.get((0, 2)).is_some());
    }
}
