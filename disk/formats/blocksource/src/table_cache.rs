//! [`TableCache`]: a bounded LRU cache of decoded metadata tables (qcow2 L2 tables, VMDK
//! grain tables), shared by all images of one chain.
//!
//! Tables are stored as `Arc<[T]>` (entries already decoded to integers and validated), so a
//! lookup only clones an `Arc` under the lock. The lock is never held across I/O: a reader
//! that misses reads the table without the lock and inserts it afterwards, so two threads
//! may occasionally read the same table twice, which is harmless (tables are immutable while
//! an image is read).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// (which image or extent of the chain, byte offset of the table in its file).
pub type TableKey = (u32, u64);

/// A bounded LRU cache of decoded tables with entries of type `T`; the budget counts
/// `size_of::<T>()` bytes per entry.
pub struct TableCache<T> {
    capacity_bytes: usize,
    inner: Mutex<Lru<T>>,
}

struct Lru<T> {
    /// key -> (last-use tick, table)
    map: HashMap<TableKey, (u64, Arc<[T]>)>,
    /// last-use tick -> key, oldest first: the eviction order.
    order: BTreeMap<u64, TableKey>,
    tick: u64,
    bytes: usize,
}

impl<T> Default for Lru<T> {
    fn default() -> Self {
        Lru { map: HashMap::new(), order: BTreeMap::new(), tick: 0, bytes: 0 }
    }
}

impl<T> fmt::Debug for TableCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("TableCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("tables", &inner.map.len())
            .field("bytes", &inner.bytes)
            .finish()
    }
}

impl<T> TableCache<T> {
    const ENTRY: usize = std::mem::size_of::<T>();

    pub fn new(capacity_bytes: usize) -> TableCache<T> {
        TableCache { capacity_bytes, inner: Mutex::new(Lru::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<T>> {
        // A panic elsewhere while holding the lock cannot leave a table half-written (they are
        // immutable), at worst the byte count is off; keep serving rather than propagate.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: TableKey) -> Option<Arc<[T]>> {
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

    pub fn insert(&self, key: TableKey, table: Arc<[T]>) {
        let table_bytes = table.len() * Self::ENTRY;
        let mut lru = self.lock();
        let lru = &mut *lru;
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((old_tick, old)) = lru.map.insert(key, (tick, table)) {
            lru.order.remove(&old_tick);
            lru.bytes -= old.len() * Self::ENTRY;
        }
        lru.order.insert(tick, key);
        lru.bytes += table_bytes;
        // Evict oldest first, but always keep the table just inserted, even if it alone is
        // over the budget (the caller holds its own Arc for the current batch anyway).
        while lru.bytes > self.capacity_bytes && lru.order.len() > 1 {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some((_, t)) = lru.map.remove(&victim) {
                lru.bytes -= t.len() * Self::ENTRY;
            }
        }
    }

    /// Bytes of tables held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let c = TableCache::<u64>::new(3 * 64 * 8);
        let t = |v: u64| -> Arc<[u64]> { vec![v; 64].into() };
        c.insert((0, 1), t(1));
        c.insert((0, 2), t(2));
        c.insert((0, 3), t(3));
        assert!(c.get((0, 1)).is_some()); // 1 is now the most recent
        c.insert((1, 4), t(4)); // evicts 2
        assert!(c.get((0, 2)).is_none());
        assert_eq!(c.get((0, 1)).unwrap()[0], 1);
        assert_eq!(c.get((0, 3)).unwrap()[0], 3);
        assert_eq!(c.get((1, 4)).unwrap()[0], 4);
        assert_eq!(c.bytes(), 3 * 64 * 8);
        // Re-inserting a key replaces it without double counting.
        c.insert((1, 4), t(5));
        assert_eq!(c.bytes(), 3 * 64 * 8);
        assert_eq!(c.get((1, 4)).unwrap()[0], 5);
    }

    #[test]
    fn keeps_one_oversized_table() {
        let c = TableCache::<u64>::new(8);
        c.insert((0, 1), vec![0u64; 100].into());
        assert!(c.get((0, 1)).is_some());
        c.insert((0, 2), vec![0u64; 100].into());
        assert!(c.get((0, 1)).is_none());
        assert!(c.get((0, 2)).is_some());
    }
}
