//! What the service answers besides its records: the result of each kind of task
//! ([`TaskResult`]), and the answers of the quick actions (settings, tape inventory, load,
//! unload).
//!
//! These are the service's typed seam to the web layer: no `serde_json::Value` crosses it.
//! Each type serializes to exactly the JSON the API documents (`web/openapi.json`), which is
//! the form the engine's and the store's report types already had: a result wraps its
//! report and adds its own fields beside the report's (`#[serde(flatten)]`).
//!
//! Task results are persisted with their task (the `tasks` database). A record is read
//! through its task's kind ([`TaskResult::from_record`]), so a restore's result is never
//! taken for a tape restore's; a result recorded in a form this version does not read (an
//! older report with a field since added) is kept as it was recorded
//! ([`TaskResult::Recorded`]), so the API still shows it.

use serde::{Deserialize, Serialize};

use crate::tasks::TaskKind;

/// What a task that succeeded reports; one variant per kind of result. Serialized as the
/// variant's own fields, with no tag (the task's `kind` says which it is).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskResult {
    /// A backup (`backup`): the engine's report, and the destage it queued.
    Backup(BackupResult),
    /// A restore from tape (`tape-restore`). Before `Restore`: its fields include a
    /// restore's, so without the kind this variant must be tried first.
    TapeRestore(TapeRestoreResult),
    /// A restore from the store (`restore`).
    Restore(RestoreResult),
    /// A verify of the store or of one point (`verify`).
    Verify(store::VerifyReport),
    /// A destage to tape (`destage`).
    Destage(engine::tape::DestageReport),
    /// A read-back of a whole cartridge (`tape-verify`).
    TapeVerify(engine::tape::VerifyTapeReport),
    /// A garbage collection (`gc`) or the scheduled maintenance (`maintenance`).
    Upkeep(UpkeepResult),
    /// A replication to another appliance or a bucket (`replicate`).
    Replicate(ReplicateResult),
    /// A point pulled from a remote (`pull`).
    Pull(PullResult),
    /// A result recorded in a form this version does not read, kept as it was recorded.
    Recorded(RecordedResult),
}

impl TaskResult {
    /// Reads a persisted result as the result of a task of `kind`; one this version does not
    /// read is kept as recorded.
    pub(crate) fn from_record(kind: TaskKind, v: serde_json::Value) -> TaskResult {
        fn typed<T: serde::de::DeserializeOwned>(
            v: &serde_json::Value,
            wrap: impl FnOnce(T) -> TaskResult,
        ) -> Option<TaskResult> {
            T::deserialize(v).ok().map(wrap)
        }
        let r = match kind {
            TaskKind::Backup => typed(&v, TaskResult::Backup),
            TaskKind::Restore => typed(&v, TaskResult::Restore),
            TaskKind::Verify => typed(&v, TaskResult::Verify),
            TaskKind::Destage => typed(&v, TaskResult::Destage),
            TaskKind::TapeRestore => typed(&v, TaskResult::TapeRestore),
            TaskKind::TapeVerify => typed(&v, TaskResult::TapeVerify),
            TaskKind::Gc | TaskKind::Maintenance => typed(&v, TaskResult::Upkeep),
            TaskKind::Replicate => typed(&v, TaskResult::Replicate),
            TaskKind::Pull => typed(&v, TaskResult::Pull),
        };
        r.unwrap_or(TaskResult::Recorded(RecordedResult(v)))
    }

    /// Bytes read from the source, for a backup's result (0 for any other).
    pub fn bytes_read(&self) -> u64 {
        match self {
            TaskResult::Backup(b) => b.report.bytes_read,
            TaskResult::Recorded(r) => r.0.get("bytes_read").and_then(serde_json::Value::as_u64).unwrap_or(0),
            _ => 0,
        }
    }
}

/// What a backup did: the engine's report, plus the destage task a job that destages queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupResult {
    #[serde(flatten)]
    pub report: engine::BackupReport,
    /// The destage of the new point to the job's pool, queued as this task; absent when the
    /// job does not destage (or the destage could not be queued: the log says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destage_task: Option<u64>,
    /// The replication of the new point to the job's remote, queued as this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_task: Option<u64>,
}

/// What a restore from the store wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreResult {
    /// The restore point restored (`name@id`).
    pub point: String,
    /// The files written: one per disk (`<label>.raw`) and per configuration file.
    pub outputs: Vec<String>,
}

/// What a restore from tape did, and where it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TapeRestoreResult {
    #[serde(flatten)]
    pub report: engine::tape::TapeRestoreReport,
    /// The directory the restore went to (`<data>/restores/<target>`).
    pub directory: String,
}

/// What a replication did, and to which remote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateResult {
    #[serde(flatten)]
    pub report: engine::replicate::ReplicateReport,
    /// The remote's name.
    pub remote: String,
    /// Points deleted from a bucket by the remote's retention (`keep_last`) after the push.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// The bucket's garbage collection after the push (S3 remotes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<engine::replicate::s3::S3GcReport>,
}

/// What a pull from a remote did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullResult {
    #[serde(flatten)]
    pub report: engine::replicate::pull::PullReport,
    /// The remote's name.
    pub remote: String,
    /// The points now here, as they are named here (one for a pull of one point; every new
    /// point for a scheduled pull).
    #[serde(default)]
    pub pulled: Vec<String>,
}

/// What a garbage collection, or the maintenance, did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpkeepResult {
    /// Maintenance only: points pruned by the jobs' retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<u64>,
    /// Maintenance only: what relieving the capacity freed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relief: Option<engine::prune::ReliefReport>,
    /// The garbage collection's report.
    pub gc: store::GcReport,
    /// Maintenance only: the recompression of what backups stored raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recompress: Option<Box<store::RecompressReport>>,
}

/// A result as it was recorded, in a form this version does not read. It can only be shown
/// (serialized as it was), not inspected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordedResult(serde_json::Value);

/// The settings as the API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsView {
    /// The appliance's data directory.
    pub data_dir: String,
    /// Task limits, time zone, capacity watermarks, maintenance and verify schedules.
    pub settings: crate::Settings,
    /// The tape library's address; `None` when none is configured.
    pub tape_changer: Option<String>,
    /// The staging store's usage.
    pub store: crate::Usage,
}

/// The tape library's inventory.
#[derive(Debug, Clone, Serialize)]
pub struct TapeInventory {
    /// The library (vendor and model, or the emulated library's directory).
    pub library: String,
    pub elements: Vec<TapeElement>,
}

/// One element of the library, with the catalog's knowledge of its cartridge.
#[derive(Debug, Clone, Serialize)]
pub struct TapeElement {
    #[serde(flatten)]
    pub row: engine::tape::InventoryRow,
    /// Drive elements: the index [`crate::Appliance::tape_unload`] takes; `None` for others.
    pub drive_index: Option<usize>,
}

/// A drive's media state, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriveMediaState {
    NoMedium,
    BecomingReady,
    Ready,
    WriteProtected,
    Worm,
}

impl From<engine::tape::MediaState> for DriveMediaState {
    fn from(s: engine::tape::MediaState) -> DriveMediaState {
        match s {
            engine::tape::MediaState::NoMedium => DriveMediaState::NoMedium,
            engine::tape::MediaState::BecomingReady => DriveMediaState::BecomingReady,
            engine::tape::MediaState::Ready => DriveMediaState::Ready,
            engine::tape::MediaState::WriteProtected => DriveMediaState::WriteProtected,
            engine::tape::MediaState::Worm => DriveMediaState::Worm,
        }
    }
}

/// A cartridge loaded into a drive.
#[derive(Debug, Clone, Serialize)]
pub struct TapeLoaded {
    pub barcode: String,
    /// The index of the drive it is in.
    pub drive: usize,
    /// That drive's serial number.
    pub drive_serial: Option<String>,
    /// The drive's media state after loading.
    pub state: DriveMediaState,
}

/// A drive unloaded.
#[derive(Debug, Clone, Serialize)]
pub struct TapeUnloaded {
    pub drive: usize,
    /// The cartridge moved back to its slot; `None` when the drive was empty.
    pub barcode: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tape_restore() -> serde_json::Value {
        serde_json::json!({
            "point": "vm@4", "media_set": "s1", "tapes": ["RVT001L9"], "bytes_restored": 4096,
            "outputs": ["/data/restores/t/disk0.raw"], "damaged": [], "imported_as": null, "problems": [],
            "directory": "/data/restores/t",
        })
    }

    #[test]
    fn without_its_kind_a_tape_restore_is_not_taken_for_a_restore() {
        let r: TaskResult = serde_json::from_value(tape_restore()).unwrap();
        assert!(matches!(r, TaskResult::TapeRestore(_)), "{r:?}");
        let plain = serde_json::json!({"point": "vm@4", "outputs": []});
        let r: TaskResult = serde_json::from_value(plain).unwrap();
        assert!(matches!(r, TaskResult::Restore(_)), "{r:?}");
    }

    #[test]
    fn a_result_that_does_not_fit_its_kind_is_kept_as_recorded() {
        let v = tape_restore();
        let r = TaskResult::from_record(TaskKind::TapeVerify, v.clone());
        assert!(matches!(r, TaskResult::Recorded(_)), "{r:?}");
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        assert!(matches!(TaskResult::from_record(TaskKind::TapeRestore, v), TaskResult::TapeRestore(_)));
    }
}
