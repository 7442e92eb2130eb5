//! Store usage, its history, and the dashboard.

use serde::{Deserialize, Serialize};
use store::kv::{KvDb, KvEnv};
use store::Store;

use crate::{lock, now_unix, Appliance, CapacityInfo, Principal, Role, ServiceError, TaskInfo, TaskState};

/// Store usage, now and over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    pub bytes_stored: u64,
    /// Of `bytes_stored`, data backups stored raw that the nightly maintenance has yet to
    /// compress.
    pub bytes_pending_compression: u64,
    pub bytes_logical: u64,
    pub dedup_ratio: f64,
    pub restore_points: u64,
    pub history: Vec<UsageSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageSample {
    pub unix: u64,
    pub bytes_stored: u64,
    pub bytes_logical: u64,
}

/// Something the operator should look at.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub level: String,
    pub message: String,
    pub unix: u64,
}

/// The dashboard's content.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub tasks: Vec<TaskInfo>,
    pub usage: Usage,
    /// The staging tier's filesystem; absent when it cannot be read.
    pub capacity: Option<CapacityInfo>,
    pub last_results: Vec<TaskInfo>,
    pub alerts: Vec<Alert>,
}

/// The store's size now: what the usage view, its samples and the metrics show.
pub(crate) struct UsageNow {
    pub(crate) stored: u64,
    pub(crate) pending_compression: u64,
    pub(crate) logical: u64,
    pub(crate) points: u64,
}

pub(crate) fn usage_now(store: &Store) -> Result<UsageNow, ServiceError> {
    let u = store.usage()?;
    let logical: u64 = store.list()?.iter().map(|p| p.stats.bytes_logical).sum();
    Ok(UsageNow { stored: u.pack_bytes, pending_compression: u.deferred_bytes, logical, points: u.restore_points })
}

/// Adds a usage sample (after every backup), for the dashboard's chart.
pub(crate) fn record_usage(store: &Store, env: &KvEnv, db: &KvDb) {
    let Ok(u) = usage_now(store) else { return };
    let s = UsageSample { unix: now_unix(), bytes_stored: u.stored, bytes_logical: u.logical };
    if let Ok(mut wtxn) = env.write() {
        if db.put(&mut wtxn, &s.unix.to_be_bytes(), &serde_json::to_vec(&s).expect("serialises")).is_ok() {
            let _ = wtxn.commit();
        }
    }
}

impl Appliance {
    // ---- restore points and usage -----------------------------------------------------------

    pub(crate) fn usage_now(&self) -> Result<UsageNow, ServiceError> {
        usage_now(&self.store)
    }

    pub fn usage(&self, actor: &Principal) -> Result<Usage, ServiceError> {
        actor.require(Role::Auditor)?;
        let UsageNow { stored, pending_compression, logical, points } = self.usage_now()?;
        let mut history = Vec::new();
        {
            let rtxn = self.env.read()?;
            for item in self.usage_db.rev_iter(&rtxn).map_err(|e| self.env.err(e))?.take(200) {
                let (_, v) = item.map_err(|e| self.env.err(e))?;
                if let Ok(s) = serde_json::from_slice::<UsageSample>(v) {
                    history.push(s);
                }
            }
        }
        history.reverse();
        Ok(Usage {
            bytes_stored: stored,
            bytes_pending_compression: pending_compression,
            bytes_logical: logical,
            dedup_ratio: if stored > 0 { logical as f64 / stored as f64 } else { 0.0 },
            restore_points: points,
            history,
        })
    }

    pub fn dashboard(&self, actor: &Principal) -> Result<Dashboard, ServiceError> {
        actor.require(Role::Auditor)?;
        let all = self.tasks.list(200)?;
        let running: Vec<TaskInfo> = all.iter().filter(|t| !t.state.is_finished()).cloned().collect();
        let finished: Vec<TaskInfo> = all.iter().filter(|t| t.state.is_finished()).take(8).cloned().collect();
        let now = now_unix();
        let mut alerts: Vec<Alert> = all
            .iter()
            .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Interrupted))
            .filter(|t| t.finished_unix.is_some_and(|f| f + 86400 > now))
            .take(5)
            .map(|t| Alert {
                level: "error".into(),
                message: format!("{} of {} {:?}: {}", t.kind, t.subject, t.state, t.error.clone().unwrap_or_default()),
                unix: t.finished_unix.unwrap_or(now),
            })
            .collect();
        let protection = self.store.pack_protection();
        if let (true, Some(why)) = (protection.requested, &protection.unavailable) {
            alerts.push(Alert {
                level: "warning".into(),
                message: format!(
                    "Sealed packs cannot be given the immutable attribute: {why}. Immutability windows are still enforced by the store, but someone with root on the appliance could delete pack files by hand"
                ),
                unix: now,
            });
        }
        if lock(&self.config).sources.is_empty() {
            alerts.push(Alert {
                level: "warning".into(),
                message: "No source yet: add one under Sources".into(),
                unix: now,
            });
        }
        let usage = self.usage(actor)?;
        let capacity = self.capacity_of(&usage).ok();
        if let Some(c) = capacity.as_ref().filter(|c| c.above_high) {
            alerts.push(Alert {
                level: "warning".into(),
                message: format!(
                    "The staging tier is {:.0}% full (high watermark {}%): the maintenance frees what retention and tape copies allow",
                    c.used_pct, c.high_pct
                ),
                unix: now,
            });
        }
        Ok(Dashboard { tasks: running, usage, capacity, last_results: finished, alerts })
    }
}
