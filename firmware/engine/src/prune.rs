//! Prune: apply a job's retention policy to its restore points, and relieve a full staging
//! tier.
//!
//! The policy itself is pure (`store::retention::plan`); this module adds what only the
//! appliance knows, in this order, for every point the policy would prune:
//! 1. **Pinned** points are kept (the policy already keeps them).
//! 2. **Immutable** points (inside their job's immutability window by the store's trusted
//!    clock) are kept: [`PruneAction::KeepImmutable`]. The store refuses to delete them anyway;
//!    this only says so in advance.
//! 3. **D2D2T:** when the job destages to tape, a point is pruned from disk only once a complete
//!    tape copy exists: [`PruneAction::KeepAwaitingTape`] until then. Afterwards it is "on tape
//!    only".
//! 4. Everything else is [`PruneAction::Prune`]: deleted (with a tombstone) unless `dry_run`.
//!
//! Time is the store's trusted clock (`Store::observe_clock`): immutability by the trusted time
//! alone, retention by the later of trusted and wall time while the two agree.
//! Pruning frees no space by itself; the next GC does.

use serde::{Deserialize, Serialize};
use store::retention::{self, Candidate, RetentionPolicy, TimeZone};
use store::{ClockReading, RestorePoint, Store, StoreError};

use crate::EngineError;

/// What happens to one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneAction {
    Keep,
    Prune,
    /// The policy would prune it, but it is inside its immutability window.
    KeepImmutable,
    /// The policy would prune it, but its job destages to tape and no complete copy exists yet.
    KeepAwaitingTape,
}

/// One point's fate and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneItem {
    pub point: String,
    pub id: u64,
    pub created_unix: u64,
    pub action: PruneAction,
    pub why: String,
    /// A complete copy exists on tape.
    pub on_tape: bool,
}

/// The outcome of a prune (or, with `dry_run`, what it would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub name: String,
    pub dry_run: bool,
    pub trusted_unix: u64,
    pub kept: u64,
    pub pruned: u64,
    pub kept_immutable: u64,
    pub kept_awaiting_tape: u64,
    /// Newest first.
    pub items: Vec<PruneItem>,
}

/// What to prune.
#[derive(Debug)]
pub struct PruneRequest<'a> {
    /// The restore-point name (a job's source name) whose points the policy applies to.
    pub name: &'a str,
    pub policy: &'a RetentionPolicy,
    pub tz: &'a TimeZone,
    /// The job destages to tape: prune only points with a complete tape copy.
    pub require_tape_copy: bool,
    pub dry_run: bool,
    /// Recorded in each tombstone: who or what pruned ("job nightly", "alice").
    pub actor: &'a str,
}

/// Apply `req.policy` to the points named `req.name`. `on_tape` says whether a point has a
/// complete tape copy.
pub fn prune(
    store: &Store,
    req: &PruneRequest<'_>,
    on_tape: &dyn Fn(&RestorePoint) -> bool,
) -> Result<PruneReport, EngineError> {
    req.policy.validate()?;
    store::validate_name(req.name)?;
    let now = store.observe_clock()?;
    let pins = store.pins()?;
    let points: Vec<RestorePoint> = store.list()?.into_iter().filter(|p| p.name == req.name).collect();
    let candidates: Vec<Candidate> = points
        .iter()
        .map(|p| Candidate { id: p.id, created_unix: p.created_unix, pinned: pins.contains(&(p.name.clone(), p.id)) })
        .collect();
    // The trusted clock counts whole seconds of boot time and may trail the wall clock by
    // one; when the two agree (no suspicious jump), plan by the later, so the backup just
    // made is not taken for one from the future. Immutability is still judged by the
    // trusted time alone (`check_deletable`).
    let plan_now = match now.suspicious_jump_s {
        None => now.trusted_unix.max(now.wall_unix),
        Some(_) => now.trusted_unix,
    };
    let decisions = retention::plan(req.policy, &candidates, plan_now as i64, req.tz);
    let mut report = PruneReport {
        name: req.name.to_string(),
        dry_run: req.dry_run,
        trusted_unix: now.trusted_unix,
        kept: 0,
        pruned: 0,
        kept_immutable: 0,
        kept_awaiting_tape: 0,
        items: Vec::with_capacity(decisions.len()),
    };
    for d in decisions {
        let Some(point) = points.iter().find(|p| p.id == d.id) else { continue };
        let tape = on_tape(point);
        let (action, why) = judge(store, point, &d, tape, req.require_tape_copy, &now);
        match action {
            PruneAction::Keep => report.kept += 1,
            PruneAction::Prune => report.pruned += 1,
            PruneAction::KeepImmutable => report.kept_immutable += 1,
            PruneAction::KeepAwaitingTape => report.kept_awaiting_tape += 1,
        }
        report.items.push(PruneItem {
            point: point.spec(),
            id: point.id,
            created_unix: point.created_unix,
            action,
            why,
            on_tape: tape,
        });
    }
    if !req.dry_run {
        let victims: Vec<(String, u64)> = report
            .items
            .iter()
            .filter(|i| i.action == PruneAction::Prune)
            .map(|i| (req.name.to_string(), i.id))
            .collect();
        store.delete_points(&victims, &format!("pruned by {}", req.actor))?;
    }
    Ok(report)
}

fn judge(
    store: &Store,
    point: &RestorePoint,
    d: &retention::Decision,
    on_tape: bool,
    require_tape_copy: bool,
    now: &ClockReading,
) -> (PruneAction, String) {
    if d.keep {
        return (PruneAction::Keep, d.why.clone());
    }
    match store.check_deletable(point, false, now) {
        Err(StoreError::Immutable { until_unix, .. }) => {
            return (
                PruneAction::KeepImmutable,
                format!("{}; but it is immutable until {until_unix} (unix time)", d.why),
            )
        }
        Err(e) => return (PruneAction::Keep, format!("{}; but {e}", d.why)),
        Ok(()) => {}
    }
    if require_tape_copy && !on_tape {
        return (
            PruneAction::KeepAwaitingTape,
            format!("{}; kept on disk until a complete tape copy exists (the job destages to tape)", d.why),
        );
    }
    (PruneAction::Prune, d.why.clone())
}

/// What [`relieve`] freed, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliefReport {
    pub used_pct_before: f64,
    pub used_pct_after: f64,
    /// Points deleted from disk because a complete tape copy exists ("on tape only" now).
    pub deleted_on_tape: Vec<String>,
    pub gc: Option<store::GcReport>,
    /// Why nothing more could be freed, when still above the low watermark.
    pub stuck: Option<String>,
}

/// Above the high watermark, delete the oldest restore points that are safely on tape (not
/// pinned, not immutable, never the newest point of a name) and collect garbage, until the
/// filesystem is below the low watermark or nothing more can go. Retention has already been
/// applied by the jobs; this frees what only tape copies make safe to free.
pub fn relieve(
    store: &Store,
    high_pct: f64,
    low_pct: f64,
    on_tape: &dyn Fn(&RestorePoint) -> bool,
    cancelled: &dyn Fn() -> bool,
) -> Result<ReliefReport, EngineError> {
    let mut report = ReliefReport { used_pct_before: store.capacity()?.used_pct(), ..Default::default() };
    report.used_pct_after = report.used_pct_before;
    if report.used_pct_before < high_pct {
        return Ok(report);
    }
    let gc_opts = store::GcOptions::default();
    // First collect what is already garbage (pruned points, failed backups).
    report.gc = Some(store.gc(&gc_opts, &|_| {}, cancelled)?);
    loop {
        report.used_pct_after = store.capacity()?.used_pct();
        if report.used_pct_after < low_pct {
            return Ok(report);
        }
        let now = store.observe_clock()?;
        let pins = store.pins()?;
        let mut points = store.list()?;
        points.sort_by_key(|p| (p.created_unix, p.id));
        let newest: std::collections::HashMap<String, u64> =
            points.iter().map(|p| (p.name.clone(), p.id)).collect::<std::collections::HashMap<_, _>>();
        let victim = points.iter().find(|p| {
            newest.get(&p.name) != Some(&p.id)
                && !pins.contains(&(p.name.clone(), p.id))
                && store.check_deletable(p, false, &now).is_ok()
                && on_tape(p)
        });
        let Some(victim) = victim else {
            let immutable = points.iter().filter(|p| store.check_deletable(p, false, &now).is_err()).count();
            let not_on_tape = points.iter().filter(|p| !on_tape(p)).count();
            report.stuck = Some(format!(
                "the staging tier is {:.1}% full and nothing more can be freed: {} restore point(s) are pinned or immutable, {} have no complete tape copy; destage to tape, shorten retention, or add disk space",
                report.used_pct_after, immutable, not_on_tape
            ));
            return Ok(report);
        };
        store
            .delete_points(&[(victim.name.clone(), victim.id)], "deleted to free space: a complete tape copy exists")?;
        report.deleted_on_tape.push(victim.spec());
        if cancelled() {
            return Err(EngineError::Cancelled);
        }
        report.gc = Some(store.gc(&gc_opts, &|_| {}, cancelled)?);
    }
}
