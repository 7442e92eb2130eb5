//! Pulling restore points into this appliance: from an S3 bucket (restore from the offsite
//! copy, disaster recovery on a new appliance) or from another appliance (the offsite box
//! fetching on its own schedule, so a compromised source holds no credential to the offsite
//! copies), and the source side of the latter.
//!
//! ## Trust
//! - A *pull remote* is an appliance this one fetches from: its address, its certificate
//!   pinned by fingerprint, and a token with the role `pull` made there, sealed here. Points
//!   arrive as `<namespace>.<name>@<id>`, the namespace being the remote's here.
//! - On the source side, a token with the role `pull` may list the appliance's own restore
//!   points (not ones replicated into it) and read their records by digest, and nothing else.
//!   It cannot delete, change or add anything.
//! - Everything pulled is checked as a pushed record is (`engine::replicate::check_record`);
//!   a point is committed only complete.

use serde::{Deserialize, Serialize};

use engine::replicate::pull::{self, HttpSource, PullReport, RemotePoint, ReplicaSource};
use engine::replicate::s3::{S3Layout, S3Source};
use engine::replicate::wire::SourcePoints;
use engine::replicate::{self, ReplicateError};
use store::{PointOrigin, RecordKind};

use crate::replication::{RemoteConfig, Windowed};
use crate::replication_s3::replicate_error;
use crate::tasks::{self, Live, TaskKind};
use crate::{lock, Appliance, Principal, PullResult, Role, ServiceError, TaskInfo, TaskResult};

/// A point a remote holds, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemotePointInfo {
    /// `name@id` as the source appliance named it.
    pub point: String,
    pub name: String,
    pub created_unix: u64,
    /// Logical size of its disks.
    pub bytes_logical: u64,
    pub disks: usize,
    /// The namespace it was replicated under.
    pub namespace: String,
    /// Until when (unix seconds) its objects are under object lock, if they are.
    pub locked_until_unix: Option<u64>,
    /// What this appliance has it as, when it has pulled it (or is its source).
    pub here: Option<String>,
}

/// Which points a pull task fetches.
#[derive(Debug, Clone)]
enum Wanted {
    /// One point: `name@id` as the source named it, or a name for its newest.
    One(String),
    /// Every point the remote holds that is not here yet.
    New,
}

impl Appliance {
    /// The points remote `id` offers to pull: an S3 bucket's (under this appliance's
    /// namespace), or a pull remote's own.
    pub fn remote_points(&self, actor: &Principal, id: &str) -> Result<Vec<RemotePointInfo>, ServiceError> {
        actor.require(Role::Auditor)?;
        let r = self.remote(id)?;
        let (points, locks) = match &r.s3 {
            Some(c) => {
                let s3 = self.s3_client(&r, c)?;
                let layout = S3Layout::new(&c.prefix, &r.namespace).map_err(replicate_error)?;
                let src = match S3Source::open(&s3, layout) {
                    Ok(s) => s,
                    // Nothing replicated there yet.
                    Err(ReplicateError::Invalid(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(replicate_error(e)),
                };
                let idx = src.point_indexes().map_err(replicate_error)?;
                let locks = idx.iter().map(|p| p.retain_until_unix).collect();
                (
                    idx.into_iter()
                        .map(|p| RemotePoint { point: p.point, origin: p.origin, sealed_by: None })
                        .collect(),
                    locks,
                )
            }
            None if r.pull => {
                let points = self.http_source(&r)?.points().map_err(replicate_error)?;
                let n = points.len();
                (points, vec![None; n])
            }
            None => {
                return Err(ServiceError::Invalid(format!(
                    "remote {} is an appliance this one pushes to; its points are listed on that appliance",
                    r.name
                )))
            }
        };
        let here = self.store.list()?;
        let own = self.store.store_id();
        Ok(points
            .into_iter()
            .zip(locks)
            .map(|(p, locked)| {
                let local = here.iter().find(|h| {
                    h.origin.as_ref().is_some_and(|o| o.point == p.origin.point && o.store_id == p.origin.store_id)
                        || (p.origin.store_id == own && h.origin.is_none() && h.spec() == p.origin.point)
                });
                RemotePointInfo {
                    point: p.origin.point.clone(),
                    name: p.point.name.clone(),
                    created_unix: p.point.created_unix,
                    bytes_logical: p.point.disks.iter().map(|d| d.size).sum(),
                    disks: p.point.disks.len(),
                    namespace: r.namespace.clone(),
                    locked_until_unix: locked,
                    here: local.map(|h| h.spec()),
                }
            })
            .collect())
    }

    fn http_source(&self, r: &RemoteConfig) -> Result<HttpSource, ServiceError> {
        let token = self.sealer.open_sealed(&r.token)?;
        let client = pinhttp::Client::new(&r.url, &r.fingerprint, Some(token))
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        Ok(HttpSource::new(client))
    }

    /// Starts a task that pulls point `spec` (`name@id` as the source named it, or a name for
    /// its newest) from remote `id` into this store, where it can then be restored.
    pub fn start_pull(&self, actor: &Principal, id: &str, spec: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.pull_task(&actor.user, id, Wanted::One(spec.to_string()))?;
        self.audit(actor, "start pull", &format!("{spec} from {id}"));
        Ok(t)
    }

    /// Starts a task that pulls every point remote `id` holds that is not here yet (what a
    /// pull remote's schedule runs).
    pub fn start_pull_new(&self, actor: &Principal, id: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.pull_task(&actor.user, id, Wanted::New)?;
        self.audit(actor, "start pull", &format!("new points from {id}"));
        Ok(t)
    }

    fn pull_task(&self, user: &str, id: &str, wanted: Wanted) -> Result<TaskInfo, ServiceError> {
        let r = self.remote(id)?;
        let store = self.store.clone();
        let guard = self.remote_lock(&r.id);
        let subject = match &wanted {
            Wanted::One(spec) => format!("{spec} from {}", r.name),
            Wanted::New => format!("new points from {}", r.name),
        };
        let host = crate::source_host(&r.url);
        let (name, ns, window) = (r.name.clone(), r.namespace.clone(), r.window.clone());
        let job: tasks::Job = match r.s3.clone() {
            Some(c) => {
                let s3 = self.s3_client(&r, &c)?;
                let layout = S3Layout::new(&c.prefix, &r.namespace).map_err(replicate_error)?;
                Box::new(move |live: &Live| {
                    let live = &Windowed::new(live, window.as_deref());
                    live.wait_open();
                    let _held = lock(&guard);
                    let mut src = S3Source::open(&s3, layout.clone())?;
                    src.check_store(&store)?;
                    live.log(&format!("pulling from bucket {} under {}/", c.bucket, layout.base()));
                    pull_points(&mut src, &store, &wanted, &ns, &name, live)
                })
            }
            None if r.pull => {
                let mut src = self.http_source(&r)?;
                let url = r.url.clone();
                Box::new(move |live: &Live| {
                    let live = &Windowed::new(live, window.as_deref());
                    live.wait_open();
                    let _held = lock(&guard);
                    live.log(&format!("pulling from {url}"));
                    pull_points(&mut src, &store, &wanted, &ns, &name, live)
                })
            }
            None => {
                return Err(ServiceError::Invalid(format!(
                    "remote {} is an appliance this one pushes to; to pull from an appliance, add it as a pull remote \
                     with a token of the role pull made there",
                    r.name
                )))
            }
        };
        self.tasks.spawn(TaskKind::Pull, &subject, user, (&host, "replication"), job)
    }

    // ---- the source side -----------------------------------------------------------------

    /// Refuses anyone but a token with the role `pull`.
    fn pull_token(actor: &Principal) -> Result<(), ServiceError> {
        match (&actor.role, &actor.token) {
            (Role::Pull, Some(_)) => Ok(()),
            _ => Err(ServiceError::Forbidden(
                "only a token with the role pull may read restore points for another appliance; create one under Tokens"
                    .into(),
            )),
        }
    }

    /// This appliance's own restore points (not ones replicated into it), for a puller.
    pub fn replica_source_points(&self, actor: &Principal) -> Result<SourcePoints, ServiceError> {
        Self::pull_token(actor)?;
        let store_id = self.store.store_id();
        let sealed_by = replicate::sealed_by(&self.store);
        let points = self
            .store
            .list()?
            .into_iter()
            .filter(|p| p.origin.is_none())
            .map(|p| RemotePoint {
                origin: PointOrigin {
                    namespace: actor.token.clone().unwrap_or_default(),
                    store_id: store_id.clone(),
                    point: p.spec(),
                    created_unix: p.created_unix,
                    without_key: false,
                },
                point: p,
                sealed_by: sealed_by.clone(),
            })
            .collect();
        Ok(SourcePoints { points })
    }

    /// The data and index records `digests` (hex) name, as the store holds them, in the wire
    /// form of a batch; as many as fit in one batch, in the order asked (the puller asks again
    /// for the rest). Unknown digests are left out. With `open_trees`, index-tree nodes go
    /// opened, for a puller that keeps the points without this store's key (see
    /// `engine::replicate`).
    pub fn replica_source_records(
        &self,
        actor: &Principal,
        digests: &[String],
        open_trees: bool,
    ) -> Result<Vec<u8>, ServiceError> {
        Self::pull_token(actor)?;
        let ds = replicate::parse_digests(digests).map_err(replicate_error)?;
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut scratch = Vec::new();
        for d in ds {
            if !self.store.contains(&d)? {
                continue;
            }
            let c = replicate::record_to_send(&self.store, &d, open_trees, &mut scratch)?;
            if !matches!(c.kind, RecordKind::Data | RecordKind::Tree) {
                continue;
            }
            if total + c.payload.len() > replicate::MAX_BATCH_BYTES && !out.is_empty() {
                break;
            }
            total += c.payload.len();
            out.push(c);
        }
        Ok(store::pack::join_records(&out))
    }
}

/// Pulls what `wanted` names from `src` into `store`, under namespace `ns`.
fn pull_points(
    src: &mut dyn ReplicaSource,
    store: &store::Store,
    wanted: &Wanted,
    ns: &str,
    remote: &str,
    live: &Windowed<'_>,
) -> Result<TaskResult, tasks::TaskError> {
    let mut points = src.points()?;
    // The remote's namespace here, whatever the source calls it.
    for p in &mut points {
        p.origin.namespace = ns.to_string();
    }
    let chosen: Vec<RemotePoint> = match wanted {
        Wanted::One(spec) => vec![pull::find_remote(&points, spec)?],
        Wanted::New => {
            // One listing of this store, not one per offered point.
            let here: std::collections::HashSet<(String, String, String)> = store
                .list()
                .map_err(ReplicateError::from)?
                .into_iter()
                .filter_map(|p| p.origin.map(|o| (o.namespace, o.store_id, o.point)))
                .collect();
            let new: Vec<RemotePoint> = points
                .into_iter()
                .filter(|p| {
                    let o = &p.origin;
                    !here.contains(&(o.namespace.clone(), o.store_id.clone(), o.point.clone()))
                })
                .collect();
            live.log(&format!("{} point(s) there are not here yet", new.len()));
            new
        }
    };
    let mut total = PullReport::default();
    let mut pulled = Vec::new();
    for rp in &chosen {
        live.log(&format!(
            "pulling {} ({} bytes of disks)",
            rp.spec(),
            rp.point.disks.iter().map(|d| d.size).sum::<u64>()
        ));
        let r = pull::pull(src, store, rp, live)?;
        if r.already_there {
            live.log(&format!("this appliance has it already as {}: nothing fetched", r.delivered_as));
        } else {
            live.log(&format!(
                "restorable here as {}: {} chunk(s) and {} index node(s) fetched ({} bytes in {} request(s)), each checked",
                r.delivered_as, r.chunks_fetched, r.nodes_fetched, r.bytes_fetched, r.requests
            ));
        }
        pulled.push(r.delivered_as.clone());
        total = PullReport {
            point: if chosen.len() == 1 { r.point.clone() } else { format!("{} point(s)", chosen.len()) },
            delivered_as: if chosen.len() == 1 { r.delivered_as.clone() } else { pulled.join(", ") },
            already_there: total.already_there || chosen.len() == 1 && r.already_there,
            nodes_fetched: total.nodes_fetched + r.nodes_fetched,
            chunks_fetched: total.chunks_fetched + r.chunks_fetched,
            bytes_fetched: total.bytes_fetched + r.bytes_fetched,
            bytes_logical: total.bytes_logical + r.bytes_logical,
            requests: total.requests + r.requests,
            seconds: total.seconds + r.seconds,
        };
    }
    Ok(TaskResult::Pull(PullResult { report: total, remote: remote.to_string(), pulled }))
}
