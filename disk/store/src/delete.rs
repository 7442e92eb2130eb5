//! Deleting restore points, pins, and the trusted clock they are judged by.
//!
//! The rules (pinned points and immutability windows) are enforced here, in the store, so
//! that no caller above (CLI, service, web) can get around them. The order of writes is the
//! crate docs' "Deleting a restore point".

use std::collections::HashSet;

use crate::catalog::point_key;
use crate::clock::{self, ClockReading, ClockRecord};
use crate::error::{Result, StoreError};
use crate::pack::{Codec, EncodedChunk, RecordKind};
use crate::{now_unix, split_point_key, RestorePoint, Store, Tombstone};

impl Store {
    /// Read the trusted clock (see `clock`), persisting the new reading.
    pub fn observe_clock(&self) -> Result<ClockReading> {
        let catalog = &self.catalog;
        let obs = clock::Observation::now();
        let mut wtxn = catalog.write()?;
        let prev: Option<ClockRecord> =
            catalog.meta.get(&wtxn, b"clock").map_err(|e| catalog.err(e))?.and_then(|v| serde_json::from_slice(v).ok());
        let (record, reading) = clock::advance(prev.as_ref(), &obs);
        let bytes = serde_json::to_vec(&record).expect("clock record serialises");
        catalog.meta.put(&mut wtxn, b"clock", &bytes).map_err(|e| catalog.err(e))?;
        wtxn.commit().map_err(|e| catalog.err(e))?;
        Ok(reading)
    }

    /// Read the trusted clock without persisting the reading (for listings; deciding a
    /// delete uses [`Store::observe_clock`]).
    pub fn peek_clock(&self) -> Result<ClockReading> {
        let rtxn = self.catalog.read()?;
        let prev: Option<ClockRecord> = self
            .catalog
            .meta
            .get(&rtxn, b"clock")
            .map_err(|e| self.catalog.err(e))?
            .and_then(|v| serde_json::from_slice(v).ok());
        Ok(clock::advance(prev.as_ref(), &clock::Observation::now()).1)
    }

    /// Why `point` may not be deleted now, if it may not: pinned, or inside its immutability
    /// window by the trusted time `now`.
    pub fn check_deletable(&self, point: &RestorePoint, pinned: bool, now: &ClockReading) -> Result<()> {
        if pinned {
            return Err(StoreError::Pinned { point: point.spec() });
        }
        match point.immutable_until_unix {
            Some(until) if until > now.trusted_unix => {
                Err(StoreError::Immutable { point: point.spec(), until_unix: until })
            }
            _ => Ok(()),
        }
    }

    /// Delete restore points, all or none: each must exist, not be pinned and be outside its
    /// immutability window. `reason` is recorded in each tombstone.
    pub fn delete_points(&self, points: &[(String, u64)], reason: &str) -> Result<Vec<Tombstone>> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.observe_clock()?;
        let check_all = |txn: &heed::RoTxn<'_>| -> Result<()> {
            for (name, id) in points {
                let key = point_key(name, *id);
                let point = match self.catalog.points.get(txn, &key).map_err(|e| self.catalog.err(e))? {
                    Some(v) => self.decode_point(txn, &key, v)?,
                    None => return Err(StoreError::NoSuchPoint(format!("{name}@{id}"))),
                };
                let pinned = self.catalog.pins.get(txn, &key).map_err(|e| self.catalog.err(e))?.is_some();
                self.check_deletable(&point, pinned, &now)?;
            }
            Ok(())
        };
        {
            let rtxn = self.catalog.read()?;
            check_all(&rtxn)?;
        }
        // Step 2: the tombstones, durable in a pack of their own.
        let deleted_unix = now_unix();
        let tombstones: Vec<Tombstone> = points
            .iter()
            .map(|(name, id)| Tombstone { v: 1, name: name.clone(), id: *id, deleted_unix, reason: reason.to_string() })
            .collect();
        let mut session = self.begin_backup()?;
        for t in &tombstones {
            let bytes = serde_json::to_vec(t).expect("tombstone serialises");
            session.insert(&EncodedChunk::plain(
                self.keyring().digest(&bytes),
                RecordKind::Tombstone,
                Codec::Raw,
                bytes.len() as u32,
                bytes,
            ))?;
        }
        session.seal()?;
        drop(session);
        // Step 3: out of the catalog, into `tombstones`.
        let catalog = &self.catalog;
        let mut wtxn = catalog.write()?;
        check_all(&wtxn)?;
        for t in &tombstones {
            let key = point_key(&t.name, t.id);
            catalog.points.delete(&mut wtxn, &key).map_err(|e| catalog.err(e))?;
            let bytes = serde_json::to_vec(t).expect("tombstone serialises");
            catalog.tombstones.put(&mut wtxn, &key, &bytes).map_err(|e| catalog.err(e))?;
        }
        wtxn.commit().map_err(|e| catalog.err(e))?;
        Ok(tombstones)
    }

    /// Pin (protect) or unpin a restore point. A pinned point is never pruned or deleted.
    pub fn set_pinned(&self, name: &str, id: u64, pinned: bool) -> Result<()> {
        let catalog = &self.catalog;
        let key = point_key(name, id);
        let mut wtxn = catalog.write()?;
        if catalog.points.get(&wtxn, &key).map_err(|e| catalog.err(e))?.is_none() {
            return Err(StoreError::NoSuchPoint(format!("{name}@{id}")));
        }
        if pinned {
            catalog.pins.put(&mut wtxn, &key, &now_unix().to_le_bytes()).map_err(|e| catalog.err(e))?;
        } else {
            catalog.pins.delete(&mut wtxn, &key).map_err(|e| catalog.err(e))?;
        }
        wtxn.commit().map_err(|e| catalog.err(e))
    }

    /// The pinned restore points, as (name, id).
    pub fn pins(&self) -> Result<HashSet<(String, u64)>> {
        let rtxn = self.catalog.read()?;
        let mut out = HashSet::new();
        for item in self.catalog.pins.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
            let (k, _) = item.map_err(|e| self.catalog.err(e))?;
            out.insert(split_point_key(k));
        }
        Ok(out)
    }

    /// Every deleted restore point's tombstone, oldest deletion first.
    pub fn tombstones(&self) -> Result<Vec<Tombstone>> {
        let rtxn = self.catalog.read()?;
        let mut out = Vec::new();
        for item in self.catalog.tombstones.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
            let (_, v) = item.map_err(|e| self.catalog.err(e))?;
            if let Ok(t) = serde_json::from_slice::<Tombstone>(v) {
                out.push(t);
            }
        }
        out.sort_by_key(|t| (t.deleted_unix, t.id));
        Ok(out)
    }
}
