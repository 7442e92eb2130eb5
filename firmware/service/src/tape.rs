//! The tape library: quick actions (inventory, load, unload, label) that hold the library
//! for one request, and tape tasks (destage, restore from tape, verify a cartridge) that
//! hold it for their whole run.

use serde::Deserialize;

use crate::operations::discard_on_error;
use crate::tasks::{self, Live, TaskError, TaskKind};
use crate::{
    lock, plain_name, Appliance, Principal, RestoreRequest, Role, ServiceError, TapeElement, TapeInventory, TapeLoaded,
    TapeRestoreResult, TapeUnloaded, TaskInfo, TaskResult,
};

/// A tape pool's policy as the API receives it (the name is in the path).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolInput {
    pub allocation: engine::tape::Allocation,
    pub retention_days: u64,
    #[serde(default)]
    pub max_restore_tapes: Option<u32>,
}

impl Appliance {
    // ---- tape ------------------------------------------------------------------------------------

    /// Holds the library for one quick action; `Conflict` while a tape task runs.
    pub(crate) fn tape_quick(&self) -> Result<std::sync::MutexGuard<'_, ()>, ServiceError> {
        match self.tape_lock.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(ServiceError::Conflict(
                "the tape library is busy with a tape task (destage, restore or verify); try again when it ends".into(),
            )),
        }
    }

    /// The tape library's inventory; `NotFound` when no library is configured.
    pub fn tape_inventory(&self, actor: &Principal) -> Result<TapeInventory, ServiceError> {
        actor.require(Role::Auditor)?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let lib = engine::tape::Library::open(&changer)?;
        let cat = &*self.tape_catalog;
        let serials = lib.drive_serials();
        // Drive rows carry the index that `tape_unload` takes.
        let inv = engine::tape::inventory(cat, &lib)?;
        let drives = inv
            .iter()
            .filter(|r| r.element == "drive")
            .map(|r| (r.drive_serial.clone().unwrap_or_else(|| format!("element {}", r.address)), r.full))
            .collect();
        *lock(&self.tape_seen) = Some(crate::metrics::TapeSeen { drives, unix: crate::now_unix() });
        let elements = inv
            .into_iter()
            .map(|row| {
                let drive_index = serials.iter().position(|(a, _)| row.element == "drive" && *a == row.address);
                TapeElement { row, drive_index }
            })
            .collect();
        Ok(TapeInventory { library: lib.describe().to_string(), elements })
    }

    pub(crate) fn tape_changer(&self) -> Result<String, ServiceError> {
        lock(&self.config).tape_changer.clone().ok_or_else(|| {
            ServiceError::NotFound("no tape library is configured; set tape_changer in the settings".into())
        })
    }

    /// Moves cartridge `barcode` into a drive (a free one, else the first after unloading
    /// it) and waits until the drive is ready.
    pub fn tape_load(&self, actor: &Principal, barcode: &str) -> Result<TapeLoaded, ServiceError> {
        actor.require(Role::Operator)?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let mut lib = engine::tape::Library::open(&changer)?;
        let tape = lib.load(barcode)?;
        let serial = lib.drive_serials().get(tape.drive_index).map(|(_, s)| s.clone());
        let loaded = TapeLoaded {
            barcode: tape.barcode.clone(),
            drive: tape.drive_index,
            drive_serial: serial,
            state: tape.state.into(),
        };
        drop(tape);
        self.audit(actor, "load cartridge", &format!("{barcode} into drive {}", loaded.drive));
        Ok(loaded)
    }

    /// Moves the cartridge in drive `drive` (an index into the library's drives) back to its
    /// home slot. An empty drive is not an error: there is nothing to do.
    pub fn tape_unload(&self, actor: &Principal, drive: usize) -> Result<TapeUnloaded, ServiceError> {
        actor.require(Role::Operator)?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let mut lib = engine::tape::Library::open(&changer)?;
        let drives = lib.drive_serials();
        let Some((element, _)) = drives.get(drive).cloned() else {
            return Err(ServiceError::NotFound(format!(
                "drive {drive} does not exist: the library has {} drive(s), numbered from 0",
                drives.len()
            )));
        };
        let barcode = lib.inventory()?.element(element).filter(|e| e.full).and_then(|e| e.barcode.clone());
        lib.unload(drive)?;
        self.audit(actor, "unload drive", &format!("drive {drive} ({})", barcode.as_deref().unwrap_or("empty")));
        Ok(TapeUnloaded { drive, barcode })
    }

    /// Labels a cartridge for a pool (refused when it holds data unless `force`).
    pub fn tape_label(
        &self,
        actor: &Principal,
        barcode: &str,
        pool: &str,
        force: bool,
    ) -> Result<engine::tape::LabelReport, ServiceError> {
        actor.require(Role::Admin)?;
        plain_name(pool, "pool")?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let mut lib = engine::tape::Library::open(&changer)?;
        let cat = &*self.tape_catalog;
        let r = engine::tape::label(cat, &mut lib, barcode, pool, force)?;
        self.audit(
            actor,
            "label cartridge",
            &format!("{barcode} for pool {pool}{}", if force { " (forced)" } else { "" }),
        );
        Ok(r)
    }

    /// The pools: the configured ones, plus the default policy of any pool a cartridge was
    /// labelled for.
    pub fn tape_pools(&self, actor: &Principal) -> Result<Vec<engine::tape::PoolPolicy>, ServiceError> {
        actor.require(Role::Auditor)?;
        let cat = &*self.tape_catalog;
        let mut pools = cat.pools()?;
        for m in cat.media()? {
            if !pools.iter().any(|p| p.name == m.pool) {
                pools.push(cat.pool(&m.pool)?);
            }
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// Creates or changes a pool's policy.
    pub fn put_tape_pool(
        &self,
        actor: &Principal,
        name: &str,
        input: PoolInput,
    ) -> Result<engine::tape::PoolPolicy, ServiceError> {
        actor.require(Role::Admin)?;
        plain_name(name, "pool")?;
        if input.max_restore_tapes == Some(0) {
            return Err(ServiceError::Invalid("max_restore_tapes must be at least 1 (or null for no bound)".into()));
        }
        let policy = engine::tape::PoolPolicy {
            name: name.into(),
            allocation: input.allocation,
            retention_days: input.retention_days,
            max_restore_tapes: input.max_restore_tapes,
        };
        self.tape_catalog.set_pool(&policy)?;
        self.audit(
            actor,
            "set pool",
            &format!(
                "{name}: {}, retention {} days, restore bound {}",
                serde_json::to_value(policy.allocation)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                policy.retention_days,
                policy.max_restore_tapes.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
            ),
        );
        Ok(policy)
    }

    /// Every restore point copy the tape catalog knows, newest first.
    pub fn tape_copies(&self, actor: &Principal) -> Result<Vec<engine::tape::PointCopy>, ServiceError> {
        actor.require(Role::Auditor)?;
        let mut v = self.tape_catalog.all_points()?;
        v.sort_by_key(|c| std::cmp::Reverse(c.written_unix));
        Ok(v)
    }

    /// Runs `work` as a tape task holding the library for its whole run.
    fn spawn_tape_task(
        &self,
        kind: TaskKind,
        subject: &str,
        user: &str,
        work: impl FnOnce(&Live, &engine::tape::TapeCatalog, &mut engine::tape::Library) -> Result<TaskResult, TaskError>
            + Send
            + 'static,
    ) -> Result<TaskInfo, ServiceError> {
        let changer = self.tape_changer()?;
        let catalog = self.tape_catalog.clone();
        let tape_lock = self.tape_lock.clone();
        let job: tasks::Job = Box::new(move |live: &Live| {
            let _library = lock(&tape_lock);
            let cat = &*catalog;
            let mut lib = engine::tape::Library::open(&changer)?;
            live.log(&format!("library {}", lib.describe()));
            work(live, cat, &mut lib)
        });
        // The "tape" datastore key queues tape tasks one behind another.
        self.tasks.spawn(kind, subject, user, ("tape", "tape"), job)
    }

    /// Destages a restore point to a pool's media set, as a task.
    pub fn start_destage(&self, actor: &Principal, point: &str, pool: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.destage_task(&actor.user, point, pool)?;
        self.audit(actor, "start destage", &t.subject);
        Ok(t)
    }

    pub(crate) fn destage_task(&self, user: &str, point: &str, pool: &str) -> Result<TaskInfo, ServiceError> {
        plain_name(pool, "pool")?;
        let p = self.store.find(point)?;
        let store = self.store.clone();
        let pool = pool.to_string();
        let subject = format!("{} to pool {pool}", p.spec());
        self.spawn_tape_task(TaskKind::Destage, &subject, user, move |live, cat, lib| {
            let r = engine::tape::destage(&store, cat, lib, &[p], &engine::tape::DestageOptions::new(&pool), live)?;
            for l in &r.log {
                live.log(l);
            }
            live.log(&format!(
                "destage complete: {} bytes to {} at {:.0} MB/s; the drive waited {} time(s)",
                r.bytes_to_tape,
                r.tapes.join(", "),
                r.mb_per_s,
                r.drive_waits
            ));
            Ok(TaskResult::Destage(r))
        })
    }

    /// Restores a restore point straight from tape into `<data>/restores/<target>/`, as a
    /// task. The point need not be in the store any more; the tape catalog must know it.
    pub fn start_tape_restore(&self, actor: &Principal, req: RestoreRequest) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let (dir, partial) = self.restore_dirs(&req.target)?;
        // The catalog's answer decides what the task will restore; refuse now what it cannot.
        engine::tape::find_copy(&self.tape_catalog, &req.point).map_err(|e| match e {
            engine::tape::TapeError::Catalog(m) => ServiceError::NotFound(m),
            other => other.into(),
        })?;
        let spec = req.point.clone();
        let disk = req.disk.clone();
        let target_name = req.target.clone();
        let subject = format!("{spec} from tape to {}", req.target);
        let t = self.spawn_tape_task(TaskKind::TapeRestore, &subject, &actor.user, move |live, cat, lib| {
            let mut run = || -> Result<TaskResult, TaskError> {
                crate::private_dir(&partial).map_err(|e| TaskError::io(&partial, e))?;
                let target = match &disk {
                    Some(d) => engine::tape::TapeRestoreTarget::Disk {
                        disk: d.clone(),
                        path: partial.join(format!("{}.raw", engine::disk_file_name(d))),
                    },
                    None => engine::tape::TapeRestoreTarget::Directory(partial.clone()),
                };
                let r = engine::tape::restore_from_tape(cat, lib, &spec, target, live)?;
                for p in &r.problems {
                    live.log(&format!("problem: {p}"));
                }
                if !r.damaged.is_empty() {
                    // What could be read is worth keeping, under a name that says it is incomplete.
                    let kept = dir.with_file_name(format!("{}.incomplete", engine::disk_file_name(&target_name)));
                    for d in &r.damaged {
                        live.log(&format!("unreadable: {d:?}"));
                    }
                    std::fs::rename(&partial, &kept).map_err(|e| TaskError::io(&kept, e))?;
                    // Unreadable blocks stay unreadable: reading the cartridge again as it is
                    // will not help (clean the drive or use another copy).
                    return Err(TaskError::permanent(format!(
                        "{} range(s) could not be read from tape; the incomplete restore is kept in {} (see the log \
                     for the ranges)",
                        r.damaged.len(),
                        kept.display()
                    )));
                }
                std::fs::rename(&partial, &dir).map_err(|e| TaskError::io(&dir, e))?;
                live.log(&format!(
                    "restore from tape complete: {} bytes from {} into {}",
                    r.bytes_restored,
                    r.tapes.join(", "),
                    dir.display()
                ));
                // The engine wrote into the partial directory, which is now `dir`.
                let mut report = r;
                for o in &mut report.outputs {
                    if let Ok(rel) = std::path::Path::new(o.as_str()).strip_prefix(&partial) {
                        *o = dir.join(rel).display().to_string();
                    }
                }
                Ok(TaskResult::TapeRestore(TapeRestoreResult { report, directory: dir.display().to_string() }))
            };
            discard_on_error(&partial, run())
        })?;
        self.audit(actor, "start restore from tape", &subject);
        Ok(t)
    }

    /// Reads a whole cartridge back and checks every block and record, as a task.
    pub fn start_tape_verify(&self, actor: &Principal, barcode: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        if barcode.is_empty() || barcode.len() > 32 || !barcode.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ServiceError::Invalid(format!("barcode {barcode:?}: expected up to 32 printable characters")));
        }
        let barcode = barcode.to_string();
        let subject = format!("cartridge {barcode}");
        let t = self.spawn_tape_task(TaskKind::TapeVerify, &subject, &actor.user, move |live, _cat, lib| {
            let r = engine::tape::verify_tape(lib, &barcode, live)?;
            for p in &r.problems {
                live.log(&format!("problem: {p}"));
            }
            if !r.problems.is_empty() {
                return Err(TaskError::permanent(format!(
                    "cartridge {barcode}: {} problem(s) found (see the log); restores that need the damaged \
                     ranges will report them",
                    r.problems.len()
                )));
            }
            live.log(&format!(
                "verify of {barcode} complete: {} tape file(s), {} record(s), {} bytes, all intact",
                r.files, r.records, r.bytes
            ));
            Ok(TaskResult::TapeVerify(r))
        })?;
        self.audit(actor, "start tape verify", &subject);
        Ok(t)
    }
}
