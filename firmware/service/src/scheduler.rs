//! The scheduler: starts jobs when due (within their window), pulls from pull remotes on
//! their schedules, and the store's upkeep.

use std::sync::Arc;
use std::time::Duration;

use crate::schedule::CalendarEvent;
use crate::{lock, now_unix, Appliance, Principal, Role};

impl Appliance {
    // ---- scheduler ---------------------------------------------------------------------------------

    /// Starts the scheduler thread: every few seconds it starts the jobs that are due
    /// (within their backup window), with the job's retries. It stops when the appliance is
    /// dropped.
    pub fn start_scheduler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new().name("scheduler".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            let Some(app) = weak.upgrade() else { return };
            app.tick(now_unix());
        });
    }

    /// Starts due jobs as of `now`, and the store's upkeep (see `lifecycle`). Once the
    /// appliance is shutting down it starts nothing.
    pub fn tick(&self, now: u64) {
        self.flush_refused_sign_ins(false);
        if self.is_shutting_down() {
            return;
        }
        self.lifecycle_tick(now);
        let jobs = lock(&self.config).jobs.clone();
        for j in jobs.iter().filter(|j| j.enabled) {
            let Ok(ev) = CalendarEvent::parse(&j.schedule) else { continue };
            let due = {
                let mut next = lock(&self.next_runs);
                let planned = *next.entry(j.id.clone()).or_insert_with(|| ev.next_after(now).unwrap_or(u64::MAX));
                if planned > now {
                    continue;
                }
                next.insert(j.id.clone(), ev.next_after(now).unwrap_or(u64::MAX));
                planned
            };
            let window = u64::from(j.window_hours.unwrap_or(24)) * 3600;
            let system = Principal::new("scheduler", Role::Operator);
            if now > due + window {
                self.audit(&system, "skip job", &format!("{}: missed its window", j.name));
                continue;
            }
            match self.backup_task("scheduler", &j.source, Some(j)) {
                Ok(t) => {
                    lock(&self.last_tasks).insert(j.id.clone(), t.id);
                }
                Err(e) => self.audit(&system, "job failed to start", &format!("{}: {e}", j.name)),
            }
        }
        // Pull remotes on their own schedule: every point the source has that is not here.
        let remotes = lock(&self.config).remotes.clone();
        for r in remotes.iter().filter(|r| r.pull) {
            let Some(ev) = r.schedule.as_deref().and_then(|s| CalendarEvent::parse(s).ok()) else { continue };
            {
                let mut next = lock(&self.next_runs);
                let key = format!("remote:{}", r.id);
                let planned = *next.entry(key.clone()).or_insert_with(|| ev.next_after(now).unwrap_or(u64::MAX));
                if planned > now {
                    continue;
                }
                next.insert(key, ev.next_after(now).unwrap_or(u64::MAX));
            }
            let system = Principal::new("scheduler", Role::Operator);
            if let Err(e) = self.start_pull_new(&system, &r.id) {
                self.audit(&system, "pull failed to start", &format!("{}: {e}", r.name));
            }
        }
    }
}
