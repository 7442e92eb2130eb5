//! Prometheus metrics.

use std::collections::HashMap;

use crate::{lock, Appliance, TaskState};

impl Appliance {
    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let tasks = self.tasks.list(10_000).unwrap_or_default();
        let mut by: HashMap<(String, String), u64> = HashMap::new();
        let mut ingested = 0u64;
        let mut last_tput = 0.0;
        for t in &tasks {
            *by.entry((t.kind.clone(), format!("{:?}", t.state).to_lowercase())).or_default() += 1;
            if t.kind == "backup" && t.state == TaskState::Succeeded {
                ingested += t.result.as_ref().and_then(|r| r["bytes_read"].as_u64()).unwrap_or(0);
                if last_tput == 0.0 {
                    last_tput = t.throughput_bps;
                }
            }
        }
        out.push_str("# HELP rackvault_tasks Tasks by kind and state.\n# TYPE rackvault_tasks gauge\n");
        let mut keys: Vec<_> = by.into_iter().collect();
        keys.sort();
        for ((kind, state), n) in keys {
            out.push_str(&format!("rackvault_tasks{{kind=\"{kind}\",state=\"{state}\"}} {n}\n"));
        }
        out.push_str(&format!(
            "# HELP rackvault_tasks_running Tasks running now.\n# TYPE rackvault_tasks_running gauge\nrackvault_tasks_running {}\n",
            self.tasks.running()
        ));
        out.push_str(&format!(
            "# HELP rackvault_bytes_ingested_total Bytes read from sources by successful backups.\n# TYPE rackvault_bytes_ingested_total counter\nrackvault_bytes_ingested_total {ingested}\n"
        ));
        out.push_str(&format!(
            "# HELP rackvault_backup_throughput_bytes_per_second Throughput of the newest successful backup.\n# TYPE rackvault_backup_throughput_bytes_per_second gauge\nrackvault_backup_throughput_bytes_per_second {last_tput}\n"
        ));
        if let Ok((stored, logical, points)) = self.usage_now() {
            out.push_str(&format!(
                "# HELP rackvault_store_bytes Bytes in the store's packs.\n# TYPE rackvault_store_bytes gauge\nrackvault_store_bytes {stored}\n\
                 # HELP rackvault_store_logical_bytes Bytes the restore points represent.\n# TYPE rackvault_store_logical_bytes gauge\nrackvault_store_logical_bytes {logical}\n\
                 # HELP rackvault_store_dedup_ratio Logical bytes over stored bytes.\n# TYPE rackvault_store_dedup_ratio gauge\nrackvault_store_dedup_ratio {}\n\
                 # HELP rackvault_restore_points Restore points in the store.\n# TYPE rackvault_restore_points gauge\nrackvault_restore_points {points}\n",
                if stored > 0 { logical as f64 / stored as f64 } else { 0.0 }
            ));
        }
        self.capacity_metrics(&mut out);
        let changer = lock(&self.config).tape_changer.clone();
        if let Some(changer) = changer {
            if let Ok(_one) = self.tape_lock.try_lock() {
                if let Ok(lib) = engine::tape::Library::open(&changer) {
                    if let Ok(inv) = lib.inventory() {
                        out.push_str("# HELP rackvault_tape_drive_loaded Whether a tape drive holds a cartridge.\n# TYPE rackvault_tape_drive_loaded gauge\n");
                        for (addr, serial) in lib.drive_serials() {
                            let full = inv.element(addr).is_some_and(|e| e.full);
                            out.push_str(&format!(
                                "rackvault_tape_drive_loaded{{drive=\"{serial}\"}} {}\n",
                                u8::from(full)
                            ));
                        }
                    }
                }
            }
        }
        out
    }
}
