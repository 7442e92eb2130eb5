//! Prometheus metrics, for a scraper holding an API token (any role; the `metrics` role
//! allows nothing else).
//!
//! A scrape never touches a device or scans much: the text is rendered at most once per
//! [`METRICS_TTL`] and served from that cache in between, and the tape drives' state comes
//! from the last inventory a tape action read (`tape_seen`), never from opening the library.
//! Counters only go up: `rackvault_bytes_ingested_total` is kept in the `counters` database
//! (added to when a backup succeeds), the job's last success likewise; failed sign-ins count
//! from the daemon's start, as Prometheus counters may reset.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::{lock, Appliance, Principal, Role, ServiceError, TaskInfo, TaskKind, TaskResult, TaskState};

/// How long a rendered scrape is served again.
pub const METRICS_TTL: Duration = Duration::from_secs(5);

const INGESTED: &[u8] = b"bytes_ingested_total";

/// Drive states the last tape inventory showed: (drive serial, loaded), and when.
#[derive(Debug, Clone, Default)]
pub(crate) struct TapeSeen {
    pub drives: Vec<(String, bool)>,
    pub unix: u64,
}

impl Appliance {
    /// Prometheus text exposition.
    pub fn metrics(&self, actor: &Principal) -> Result<String, ServiceError> {
        actor.require(Role::Metrics)?;
        let mut cache = lock(&self.metrics_cache);
        if let Some((at, text)) = cache.as_ref() {
            if at.elapsed() < METRICS_TTL {
                return Ok(text.clone());
            }
        }
        let text = self.render_metrics();
        *cache = Some((Instant::now(), text.clone()));
        Ok(text)
    }

    /// A backup succeeded or failed: the counters behind the metrics.
    pub(crate) fn count_task(&self, t: &TaskInfo, job_id: Option<&str>) {
        if t.kind != TaskKind::Backup || t.state != TaskState::Succeeded {
            return;
        }
        let bytes = t.result.as_ref().map_or(0, TaskResult::bytes_read);
        let Ok(mut wtxn) = self.env.write() else { return };
        let get = |txn: &store::kv::heed::RwTxn<'_>, k: &[u8]| -> u64 {
            self.counters
                .get(txn, k)
                .ok()
                .flatten()
                .and_then(|v| v.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
        };
        let total = get(&wtxn, INGESTED).saturating_add(bytes);
        let mut ok = self.counters.put(&mut wtxn, INGESTED, &total.to_be_bytes()).is_ok();
        if let Some(job) = job_id {
            let key = format!("job_last_success:{job}");
            ok &= self.counters.put(&mut wtxn, key.as_bytes(), &t.finished_unix.unwrap_or(0).to_be_bytes()).is_ok();
        }
        if ok {
            let _ = wtxn.commit();
        }
    }

    fn counter(&self, key: &[u8]) -> u64 {
        let Ok(rtxn) = self.env.read() else { return 0 };
        self.counters
            .get(&rtxn, key)
            .ok()
            .flatten()
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    }

    fn render_metrics(&self) -> String {
        let mut out = String::new();
        let tasks = self.tasks.list(10_000).unwrap_or_default();
        let mut by: HashMap<(String, String), u64> = HashMap::new();
        let mut last_tput = 0.0;
        for t in &tasks {
            *by.entry((t.kind.to_string(), format!("{:?}", t.state).to_lowercase())).or_default() += 1;
            if t.kind == TaskKind::Backup && t.state == TaskState::Succeeded && last_tput == 0.0 {
                last_tput = t.throughput_bps;
            }
        }
        let _ = writeln!(
            out,
            "# HELP rackvault_tasks Tasks by kind and state (of the newest 10000).\n# TYPE rackvault_tasks gauge"
        );
        let mut keys: Vec<_> = by.into_iter().collect();
        keys.sort();
        for ((kind, state), n) in keys {
            let _ = writeln!(out, "rackvault_tasks{{kind=\"{kind}\",state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP rackvault_tasks_running Tasks running now.\n# TYPE rackvault_tasks_running gauge\nrackvault_tasks_running {}",
            self.tasks.running()
        );
        let _ = writeln!(
            out,
            "# HELP rackvault_bytes_ingested_total Bytes read from sources by successful backups.\n# TYPE rackvault_bytes_ingested_total counter\nrackvault_bytes_ingested_total {}",
            self.counter(INGESTED)
        );
        let _ = writeln!(
            out,
            "# HELP rackvault_backup_throughput_bytes_per_second Throughput of the newest successful backup.\n# TYPE rackvault_backup_throughput_bytes_per_second gauge\nrackvault_backup_throughput_bytes_per_second {last_tput}"
        );
        let _ = writeln!(
            out,
            "# HELP rackvault_failed_sign_ins_total Failed sign-ins since the daemon started.\n# TYPE rackvault_failed_sign_ins_total counter\nrackvault_failed_sign_ins_total {}",
            self.failed_sign_ins()
        );
        let jobs: Vec<(String, String)> =
            lock(&self.config).jobs.iter().map(|j| (j.id.clone(), j.name.clone())).collect();
        let _ = writeln!(
            out,
            "# HELP rackvault_job_last_success_timestamp_seconds When each job last backed up successfully (0: never).\n# TYPE rackvault_job_last_success_timestamp_seconds gauge"
        );
        for (id, name) in jobs {
            let at = self.counter(format!("job_last_success:{id}").as_bytes());
            let _ = writeln!(out, "rackvault_job_last_success_timestamp_seconds{{job=\"{}\"}} {at}", label(&name));
        }
        if let Ok(crate::points::UsageNow { stored, logical, points, .. }) = self.usage_now() {
            let _ = write!(
                out,
                "# HELP rackvault_store_bytes Bytes in the store's packs.\n# TYPE rackvault_store_bytes gauge\nrackvault_store_bytes {stored}\n\
                 # HELP rackvault_store_logical_bytes Bytes the restore points represent.\n# TYPE rackvault_store_logical_bytes gauge\nrackvault_store_logical_bytes {logical}\n\
                 # HELP rackvault_store_dedup_ratio Logical bytes over stored bytes.\n# TYPE rackvault_store_dedup_ratio gauge\nrackvault_store_dedup_ratio {}\n\
                 # HELP rackvault_restore_points Restore points in the store.\n# TYPE rackvault_restore_points gauge\nrackvault_restore_points {points}\n",
                if stored > 0 { logical as f64 / stored as f64 } else { 0.0 }
            );
        }
        self.capacity_metrics(&mut out);
        let seen = lock(&self.tape_seen).clone();
        if let Some(seen) = seen {
            let _ = writeln!(out, "# HELP rackvault_tape_drive_loaded Whether a tape drive held a cartridge at the last inventory.\n# TYPE rackvault_tape_drive_loaded gauge");
            for (serial, full) in &seen.drives {
                let _ = writeln!(out, "rackvault_tape_drive_loaded{{drive=\"{}\"}} {}", label(serial), u8::from(*full));
            }
            let _ = writeln!(out, "# HELP rackvault_tape_inventory_timestamp_seconds When the tape library's inventory was last read.\n# TYPE rackvault_tape_inventory_timestamp_seconds gauge\nrackvault_tape_inventory_timestamp_seconds {}", seen.unix);
        }
        out
    }
}

/// A label value escaped for the text exposition format.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
