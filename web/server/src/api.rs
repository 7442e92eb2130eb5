//! The route table of `web/API.md` and its handlers. A handler runs on the blocking pool with
//! a [`Ctx`] the pipeline (`http.rs`) has already authenticated, CSRF-checked and role-checked,
//! and calls the service, which checks the role again.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use service::{Appliance, JobInput, Principal, RestoreRequest, Role, ServiceError, Session, SourceInput};

use crate::http::{ApiError, Reply};
use crate::server::Shared;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user or token.
    Any,
    /// At least this role.
    Role(Role),
}

/// Whether a route reads a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Json,
    /// A batch of replicated records (`engine::replicate::BATCH_MEDIA_TYPE`), up to
    /// `engine::replicate::MAX_BATCH_BYTES` plus the records' headers.
    Records,
    /// An update bundle of the appliance image ([`BUNDLE_MEDIA_TYPE`]), up to
    /// [`MAX_BUNDLE_BYTES`], streamed to the data partition.
    Bundle,
}

/// The value of `name` in a query string (`a=1&b=2`), as sent.
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The media type of an update bundle upload.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.rackvault.bundle";
/// Largest update bundle accepted: a root slot (1 GiB) and its kernel and initrd.
pub const MAX_BUNDLE_BYTES: usize = 1280 << 20;

impl Body {
    /// The media type of a streamed body (records, bundles); `None` for JSON or none.
    pub(crate) fn streamed(self) -> Option<&'static str> {
        match self {
            Body::Records => Some(service::replica_wire::BATCH_MEDIA_TYPE),
            Body::Bundle => Some(BUNDLE_MEDIA_TYPE),
            Body::None | Body::Json => None,
        }
    }
}

type Handler = fn(&Ctx) -> Result<Reply, ApiError>;

/// One route: method, path pattern (`{name}` matches one segment), access, body, handler.
pub(crate) struct Route {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) access: Access,
    pub(crate) body: Body,
    pub(crate) handler: Handler,
}

use Access::{Any, Public};
use Body::{Bundle, Json, None as NoBody, Records};
const REPLICATION: Access = Access::Role(Role::Replication);
const PULL: Access = Access::Role(Role::Pull);
const ADMIN: Access = Access::Role(Role::Admin);
const OPERATOR: Access = Access::Role(Role::Operator);
const AUDITOR: Access = Access::Role(Role::Auditor);
const METRICS: Access = Access::Role(Role::Metrics);

macro_rules! route {
    ($m:literal, $p:literal, $a:expr, $b:expr, $h:expr) => {
        Route { method: $m, path: $p, access: $a, body: $b, handler: $h }
    };
}

/// Every route of the API; `web/API.md` and `web/openapi.json` list the same set (a test
/// checks it).
pub(crate) static ROUTES: &[Route] = &[
    route!("GET", "/api/v1/setup", Public, NoBody, get_setup),
    route!("POST", "/api/v1/setup", Public, Json, post_setup),
    route!("POST", "/api/v1/login", Public, Json, login),
    route!("POST", "/api/v1/logout", Any, NoBody, logout),
    route!("GET", "/api/v1/session", Any, NoBody, session),
    route!("GET", "/api/v1/dashboard", AUDITOR, NoBody, |c| c.ok(c.app.dashboard(c.actor()?))),
    route!("GET", "/api/v1/sources", AUDITOR, NoBody, |c| c.ok(c.app.sources(c.actor()?))),
    route!("POST", "/api/v1/sources", ADMIN, Json, |c| c.ok(c.app.put_source(
        c.actor()?,
        None,
        c.json::<SourceInput>()?
    ))),
    route!("PUT", "/api/v1/sources/{id}", ADMIN, Json, |c| c.ok(c.app.put_source(
        c.actor()?,
        Some(c.param(0)),
        c.json::<SourceInput>()?
    ))),
    route!("DELETE", "/api/v1/sources/{id}", ADMIN, NoBody, |c| c.empty(c.app.delete_source(c.actor()?, c.param(0)))),
    route!("POST", "/api/v1/sources/{id}/test", OPERATOR, NoBody, test_source),
    route!("GET", "/api/v1/jobs", AUDITOR, NoBody, |c| c.ok(c.app.jobs(c.actor()?))),
    route!("POST", "/api/v1/jobs", ADMIN, Json, |c| c.ok(c.app.put_job(c.actor()?, None, c.json::<JobInput>()?))),
    route!("PUT", "/api/v1/jobs/{id}", ADMIN, Json, |c| c.ok(c.app.put_job(
        c.actor()?,
        Some(c.param(0)),
        c.json::<JobInput>()?
    ))),
    route!("DELETE", "/api/v1/jobs/{id}", ADMIN, NoBody, |c| c.empty(c.app.delete_job(c.actor()?, c.param(0)))),
    route!("POST", "/api/v1/jobs/{id}/run", OPERATOR, NoBody, |c| c.ok(c.app.run_job(c.actor()?, c.param(0)))),
    route!("GET", "/api/v1/points", AUDITOR, NoBody, |c| c.ok(c.app.points(c.actor()?))),
    route!("DELETE", "/api/v1/points/{spec}", ADMIN, NoBody, |c| c.empty(c.app.delete_point(c.actor()?, c.param(0)))),
    route!("PUT", "/api/v1/points/{spec}/pin", ADMIN, Json, |c| c.empty(c.app.pin_point(
        c.actor()?,
        c.param(0),
        c.json::<service::PinRequest>()?
    ))),
    route!("POST", "/api/v1/prune", AUDITOR, Json, |c| c
        .ok(c.app.prune_job(c.actor()?, c.json::<service::PruneRequest>()?))),
    route!("POST", "/api/v1/gc", OPERATOR, Json, gc),
    route!("GET", "/api/v1/capacity", AUDITOR, NoBody, |c| c.ok(c.app.capacity(c.actor()?))),
    route!("POST", "/api/v1/backups", OPERATOR, Json, backup),
    route!("POST", "/api/v1/restores", OPERATOR, Json, |c| c
        .ok(c.app.start_restore(c.actor()?, c.json::<RestoreRequest>()?))),
    route!("POST", "/api/v1/verifications", OPERATOR, Json, verify),
    route!("GET", "/api/v1/tasks", AUDITOR, NoBody, |c| c.ok(c.app.tasks(c.actor()?))),
    route!("GET", "/api/v1/tasks/{id}", AUDITOR, NoBody, |c| c.ok(c.app.task(c.actor()?, c.task_id()?))),
    route!("GET", "/api/v1/tasks/{id}/log", AUDITOR, NoBody, task_log),
    route!("POST", "/api/v1/tasks/{id}/cancel", OPERATOR, NoBody, |c| c
        .ok(c.app.cancel_task(c.actor()?, c.task_id()?))),
    route!("GET", "/api/v1/tape/inventory", AUDITOR, NoBody, |c| c.ok(c.app.tape_inventory(c.actor()?))),
    route!("POST", "/api/v1/tape/load", OPERATOR, Json, tape_load),
    route!("POST", "/api/v1/tape/unload", OPERATOR, Json, tape_unload),
    route!("POST", "/api/v1/tape/label", ADMIN, Json, tape_label),
    route!("GET", "/api/v1/tape/pools", AUDITOR, NoBody, |c| c.ok(c.app.tape_pools(c.actor()?))),
    route!("PUT", "/api/v1/tape/pools/{name}", ADMIN, Json, |c| c.ok(c.app.put_tape_pool(
        c.actor()?,
        c.param(0),
        c.json::<service::PoolInput>()?
    ))),
    route!("GET", "/api/v1/tape/copies", AUDITOR, NoBody, |c| c.ok(c.app.tape_copies(c.actor()?))),
    route!("POST", "/api/v1/tape/destages", OPERATOR, Json, tape_destage),
    route!("POST", "/api/v1/tape/restores", OPERATOR, Json, |c| c
        .ok(c.app.start_tape_restore(c.actor()?, c.json::<RestoreRequest>()?))),
    route!("POST", "/api/v1/tape/verifications", OPERATOR, Json, tape_verify),
    route!("GET", "/api/v1/users", ADMIN, NoBody, |c| c.ok(c.app.users(c.actor()?))),
    route!("POST", "/api/v1/users", ADMIN, Json, add_user),
    route!("DELETE", "/api/v1/users/{name}", ADMIN, NoBody, |c| c.empty(c.app.delete_user(c.actor()?, c.param(0)))),
    route!("GET", "/api/v1/remotes", AUDITOR, NoBody, |c| c.ok(c.app.remotes(c.actor()?))),
    route!("POST", "/api/v1/remotes", ADMIN, Json, |c| c.ok(c.app.put_remote(c.actor()?, None, c.json()?))),
    route!("PUT", "/api/v1/remotes/{id}", ADMIN, Json, |c| c.ok(c.app.put_remote(
        c.actor()?,
        Some(c.param(0)),
        c.json()?
    ))),
    route!("DELETE", "/api/v1/remotes/{id}", ADMIN, NoBody, |c| c.empty(c.app.delete_remote(c.actor()?, c.param(0)))),
    route!("POST", "/api/v1/remotes/fingerprint", ADMIN, Json, remote_fingerprint),
    route!("POST", "/api/v1/remotes/{id}/test", OPERATOR, NoBody, |c| {
        c.ok(c.app.test_remote(c.actor()?, c.param(0)).map(|message| json!({ "message": message })))
    }),
    route!("GET", "/api/v1/remotes/{id}/points", AUDITOR, NoBody, |c| c
        .ok(c.app.remote_points(c.actor()?, c.param(0)))),
    route!("DELETE", "/api/v1/remotes/{id}/points/{spec}", ADMIN, NoBody, |c| {
        c.empty(c.app.delete_remote_point(c.actor()?, c.param(0), c.param(1)))
    }),
    route!("POST", "/api/v1/remotes/{id}/points/{spec}/pull", OPERATOR, NoBody, |c| {
        c.ok(c.app.start_pull(c.actor()?, c.param(0), c.param(1)))
    }),
    route!("POST", "/api/v1/remotes/{id}/pull", OPERATOR, NoBody, |c| c
        .ok(c.app.start_pull_new(c.actor()?, c.param(0)))),
    route!("GET", "/api/v1/replica/source/points", PULL, NoBody, |c| c.ok(c.app.replica_source_points(c.actor()?))),
    route!("POST", "/api/v1/replica/source/records", PULL, Json, |c| {
        let r: service::replica_wire::Digests = c.json()?;
        let body = c.app.replica_source_records(c.actor()?, &r.digests, r.open_trees)?;
        Ok(Reply::bytes(service::replica_wire::BATCH_MEDIA_TYPE, body))
    }),
    route!("POST", "/api/v1/points/{spec}/replicate", OPERATOR, Json, replicate_point),
    route!("POST", "/api/v1/replica/find", REPLICATION, Json, |c| {
        let r: service::replica_wire::FindRequest = c.json()?;
        c.ok(c.app.replica_find(c.actor()?, &r.origin, r.sealed_by.as_deref()))
    }),
    route!("POST", "/api/v1/replica/lacking", REPLICATION, Json, |c| {
        let r: service::replica_wire::Digests = c.json()?;
        c.ok(c
            .app
            .replica_lacking(c.actor()?, &r.digests, r.sealed_by.as_deref())
            .map(service::replica_wire::Digests::answer))
    }),
    // Streamed by `http.rs` (`receive_records`) and never reaches this handler.
    route!("POST", "/api/v1/replica/records", REPLICATION, Records, |_| {
        Err(ApiError::internal("records are received by the streaming path".to_string()))
    }),
    route!("GET", "/api/v1/system", AUDITOR, NoBody, |c| c.ok(c.app.system_info(c.actor()?))),
    // Streamed by `http.rs` (`receive_bundle`) and never reaches this handler.
    route!("POST", "/api/v1/system/update", ADMIN, Bundle, |_| {
        Err(ApiError::internal("bundles are received by the streaming path".to_string()))
    }),
    route!("POST", "/api/v1/system/reboot", ADMIN, NoBody, |c| c.empty(c.app.request_reboot(c.actor()?))),
    route!("GET", "/api/v1/system/network", AUDITOR, NoBody, |c| c.ok(c.app.network(c.actor()?))),
    route!("PUT", "/api/v1/system/network", ADMIN, Json, |c| c.ok(c.app.put_network(c.actor()?, c.json()?))),
    route!("POST", "/api/v1/replica/commit", REPLICATION, Json, |c| {
        let r: service::replica_wire::CommitRequest = c.json()?;
        c.ok(c.app.replica_commit(c.actor()?, &r.point, &r.origin, r.sealed_by.as_deref()))
    }),
    route!("GET", "/api/v1/tokens", ADMIN, NoBody, |c| c.ok(c.app.api_tokens(c.actor()?))),
    route!("POST", "/api/v1/tokens", ADMIN, Json, create_token),
    route!("DELETE", "/api/v1/tokens/{id}", ADMIN, NoBody, |c| c.empty(c.app.delete_api_token(c.actor()?, c.param(0)))),
    route!("GET", "/api/v1/audit", AUDITOR, NoBody, audit),
    route!("GET", "/api/v1/settings", AUDITOR, NoBody, settings),
    route!("PUT", "/api/v1/settings", ADMIN, Json, put_settings),
    route!("PUT", "/api/v1/settings/certificate", ADMIN, Json, put_certificate),
    route!("POST", "/api/v1/settings/recovery-key", ADMIN, NoBody, |c| c.ok(c.app.recovery_key(c.actor()?))),
    route!("GET", "/api/v1/settings/notifications", ADMIN, NoBody, |c| c.ok(c.app.notification_settings(c.actor()?))),
    route!("PUT", "/api/v1/settings/notifications", ADMIN, Json, |c| c
        .ok(c.app.put_notification_settings(c.actor()?, c.json::<service::NotificationsInput>()?))),
    route!("POST", "/api/v1/notifications/test", ADMIN, NoBody, |c| c.ok(c.app.test_notifications(c.actor()?))),
    route!("GET", "/metrics", METRICS, NoBody, |c| Ok(Reply::text(
        "text/plain; version=0.0.4; charset=utf-8",
        c.app.metrics(c.actor()?)?
    ))),
];

/// What the OpenAPI document must say of one route: a test compares `web/openapi.json`
/// with this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: &'static str,
    /// Path pattern; `{name}` matches one segment.
    pub path: &'static str,
    /// `public`, `any` (any signed-in user or token), or the least role: `metrics`,
    /// `auditor`, `operator`, `admin`.
    pub access: &'static str,
    /// Whether the route reads a JSON body.
    pub json_body: bool,
    /// Reads a streamed binary body of this media type instead (replicated records, update
    /// bundles).
    pub streamed_body: Option<&'static str>,
}

/// Every API route, in table order.
pub fn routes() -> impl Iterator<Item = RouteInfo> {
    ROUTES.iter().map(|r| RouteInfo {
        method: r.method,
        path: r.path,
        access: match r.access {
            Access::Public => "public",
            Access::Any => "any",
            Access::Role(Role::Metrics) => "metrics",
            Access::Role(Role::Auditor) => "auditor",
            Access::Role(Role::Operator) => "operator",
            Access::Role(Role::Admin) => "admin",
            Access::Role(Role::Replication) => "replication",
            Access::Role(Role::Pull) => "pull",
        },
        json_body: r.body == Body::Json,
        streamed_body: r.body.streamed(),
    })
}

/// Matches `path` against `pattern`; returns the `{param}` values in order.
pub(crate) fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(g)) if p.starts_with('{') && p.ends_with('}') => {
                if g.is_empty() {
                    return None;
                }
                params.push(percent_decode(g)?);
            }
            (Some(p), Some(g)) if p == g => {}
            _ => return None,
        }
    }
}

/// Decodes `%XX` escapes of a path segment; `None` for bad escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a handler gets.
pub(crate) struct Ctx {
    pub(crate) app: Arc<Appliance>,
    pub(crate) web: Arc<Shared>,
    pub(crate) principal: Option<Principal>,
    /// The cookie session, when the request came with one.
    pub(crate) session: Option<Session>,
    pub(crate) params: Vec<String>,
    pub(crate) query: String,
    pub(crate) body: hyper::body::Bytes,
    /// The client's address, for login throttling and the audit log.
    pub(crate) client: String,
}

impl Ctx {
    fn actor(&self) -> Result<&Principal, ApiError> {
        self.principal.as_ref().ok_or_else(ApiError::unauthenticated)
    }

    fn param(&self, i: usize) -> &str {
        self.params.get(i).map(String::as_str).unwrap_or("")
    }

    fn task_id(&self) -> Result<u64, ApiError> {
        self.param(0)
            .parse()
            .map_err(|_| ApiError::not_found(format!("no task {:?}: task ids are numbers", self.param(0))))
    }

    fn query(&self, name: &str) -> Option<&str> {
        query_param(&self.query, name)
    }

    fn query_u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.query(name) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::invalid(format!("query parameter {name}={v:?}: expected a non-negative integer"))
            }),
        }
    }

    /// The body parsed as `T` (its nesting depth was checked before).
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::invalid("the request needs a JSON body".to_string()));
        }
        serde_json::from_slice(&self.body).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
    }

    fn ok<T: serde::Serialize>(&self, r: Result<T, ServiceError>) -> Result<Reply, ApiError> {
        Reply::json(hyper::StatusCode::OK, &r?)
    }

    fn empty(&self, r: Result<(), ServiceError>) -> Result<Reply, ApiError> {
        r?;
        Ok(Reply::no_content())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    user: String,
    password: String,
}

fn get_setup(c: &Ctx) -> Result<Reply, ApiError> {
    Reply::json(
        hyper::StatusCode::OK,
        &json!({
            "needs_setup": c.app.needs_setup(),
            "appliance": { "version": c.web.cfg.version, "fingerprint_sha256": c.web.fingerprint() },
        }),
    )
}

/// First-run setup: the first administrator, and the code the appliance printed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupRequest {
    user: String,
    password: String,
    setup_code: String,
}

fn post_setup(c: &Ctx) -> Result<Reply, ApiError> {
    let req: SetupRequest = c.json()?;
    c.app.setup(&req.user, &req.password, &req.setup_code, &c.client)?;
    Ok(Reply::no_content())
}

/// The cookie that carries a session.
pub(crate) const SESSION_COOKIE: &str = "rv_session";

fn session_json(s: &Session) -> Value {
    json!({ "user": s.principal.user, "role": s.principal.role, "csrf": s.csrf, "expires_unix": s.expires_unix })
}

fn login(c: &Ctx) -> Result<Reply, ApiError> {
    let cred: Credentials = c.json()?;
    let s = c.app.login(&cred.user, &cred.password, &c.client)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let max_age = s.expires_unix.saturating_sub(now).max(1);
    let mut reply = Reply::json(hyper::StatusCode::OK, &session_json(&s))?;
    reply.headers.push((
        hyper::header::SET_COOKIE,
        format!("{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict", s.token),
    ));
    Ok(reply)
}

fn logout(c: &Ctx) -> Result<Reply, ApiError> {
    if let Some(s) = &c.session {
        c.app.logout(&s.token);
    }
    let mut reply = Reply::no_content();
    reply.headers.push((
        hyper::header::SET_COOKIE,
        format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"),
    ));
    Ok(reply)
}

fn session(c: &Ctx) -> Result<Reply, ApiError> {
    match &c.session {
        Some(s) => Reply::json(hyper::StatusCode::OK, &session_json(s)),
        // A bearer token: there is no session and no CSRF token to hand out.
        None => {
            let p = c.actor()?;
            Reply::json(
                hyper::StatusCode::OK,
                &json!({ "user": p.user, "role": p.role, "csrf": null, "expires_unix": null }),
            )
        }
    }
}

fn test_source(c: &Ctx) -> Result<Reply, ApiError> {
    let v = match c.app.test_source(c.actor()?, c.param(0)) {
        Ok(report) => json!({ "ok": true, "report": report }),
        // A source that does not exist is the caller's mistake; a probe that fails is the
        // answer to "test connection".
        Err(e) if matches!(e.kind(), service::ServiceErrorKind::NotFound | service::ServiceErrorKind::Forbidden) => {
            return Err(e.into())
        }
        Err(e) => json!({ "ok": false, "report": null, "error": e.to_string() }),
    };
    Reply::json(hyper::StatusCode::OK, &v)
}

fn backup(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B {
        source: String,
    }
    let b: B = c.json()?;
    c.ok(c.app.start_backup(c.actor()?, &b.source))
}

fn verify(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct V {
        #[serde(default)]
        point: Option<String>,
    }
    let v: V = if c.body.is_empty() { V::default() } else { c.json()? };
    c.ok(c.app.start_verify(c.actor()?, v.point))
}

fn gc(c: &Ctx) -> Result<Reply, ApiError> {
    let req: service::GcRequest = if c.body.is_empty() { service::GcRequest::default() } else { c.json()? };
    c.ok(c.app.start_gc(c.actor()?, req))
}

fn task_log(c: &Ctx) -> Result<Reply, ApiError> {
    let from = c.query_u64("from")?.unwrap_or(0);
    let (lines, next) = c.app.task_log(c.actor()?, c.task_id()?, from)?;
    Reply::json(hyper::StatusCode::OK, &json!({ "lines": lines, "next": next }))
}

fn tape_load(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct L {
        barcode: String,
    }
    let l: L = c.json()?;
    c.ok(c.app.tape_load(c.actor()?, &l.barcode))
}

fn tape_unload(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct U {
        drive: usize,
    }
    let u: U = c.json()?;
    c.ok(c.app.tape_unload(c.actor()?, u.drive))
}

fn tape_label(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct L {
        barcode: String,
        pool: String,
        #[serde(default)]
        force: bool,
    }
    let l: L = c.json()?;
    c.ok(c.app.tape_label(c.actor()?, &l.barcode, &l.pool, l.force))
}

fn tape_destage(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct D {
        point: String,
        pool: String,
    }
    let d: D = c.json()?;
    c.ok(c.app.start_destage(c.actor()?, &d.point, &d.pool))
}

fn tape_verify(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct V {
        barcode: String,
    }
    let v: V = c.json()?;
    c.ok(c.app.start_tape_verify(c.actor()?, &v.barcode))
}

fn add_user(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct U {
        name: String,
        password: String,
        role: Role,
    }
    let u: U = c.json()?;
    c.ok(c.app.add_user(c.actor()?, &u.name, &u.password, u.role))
}

fn create_token(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        name: String,
        role: Role,
    }
    let t: T = c.json()?;
    let (info, secret) = c.app.create_api_token(c.actor()?, &t.name, t.role)?;
    Reply::json(
        hyper::StatusCode::OK,
        &json!({
            "id": info.id,
            "name": info.name,
            "role": info.role,
            "user": info.user,
            "created_unix": info.created_unix,
            "token": secret
        }),
    )
}

fn audit(c: &Ctx) -> Result<Reply, ApiError> {
    let limit = c.query_u64("limit")?.unwrap_or(200);
    let before = c.query_u64("before")?;
    c.ok(c.app.audit_log(c.actor()?, usize::try_from(limit).unwrap_or(usize::MAX), before))
}

/// The settings as `GET`/`PUT /api/v1/settings` answer them: the service's view, plus the
/// fingerprint of the certificate this server presents.
#[derive(Serialize)]
struct SettingsAnswer {
    #[serde(flatten)]
    view: service::SettingsView,
    tls_fingerprint_sha256: String,
}

fn settings(c: &Ctx) -> Result<Reply, ApiError> {
    let view = c.app.settings(c.actor()?)?;
    Reply::json(hyper::StatusCode::OK, &SettingsAnswer { view, tls_fingerprint_sha256: c.web.fingerprint() })
}

fn put_settings(c: &Ctx) -> Result<Reply, ApiError> {
    let view = c.app.put_settings(c.actor()?, c.json::<service::SettingsInput>()?)?;
    Reply::json(hyper::StatusCode::OK, &SettingsAnswer { view, tls_fingerprint_sha256: c.web.fingerprint() })
}

fn put_certificate(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CertUpload {
        cert_pem: String,
        key_pem: String,
    }
    let actor = c.actor()?;
    let up: CertUpload = c.json()?;
    // Check before storing: a pair the server cannot use must never replace a working one.
    let id = crate::tls::parse_identity(up.cert_pem.as_bytes(), up.key_pem.as_bytes()).map_err(ApiError::invalid)?;
    let config = crate::tls::build_server_config(&id).map_err(ApiError::invalid)?;
    let fingerprint = crate::tls::fingerprint_sha256(&id.certs[0]);
    c.app.set_certificate(actor, &up.cert_pem, &up.key_pem)?;
    c.web.install(config, fingerprint.clone());
    Reply::json(hyper::StatusCode::OK, &json!({ "tls_fingerprint_sha256": fingerprint }))
}

fn remote_fingerprint(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        url: String,
    }
    let r: Req = c.json()?;
    c.ok(c
        .app
        .remote_fingerprint(c.actor()?, &r.url)
        .map(|fingerprint| json!({ "url": r.url, "fingerprint": fingerprint })))
}

fn replicate_point(c: &Ctx) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        remote: String,
    }
    let r: Req = c.json()?;
    c.ok(c.app.start_replication(c.actor()?, c.param(0), &r.remote))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        assert_eq!(match_path("/api/v1/tasks/{id}/log", "/api/v1/tasks/7/log"), Some(vec!["7".to_string()]));
        assert_eq!(match_path("/api/v1/tasks/{id}", "/api/v1/tasks/7/log"), None);
        assert_eq!(match_path("/api/v1/tasks/{id}", "/api/v1/tasks/"), None);
        assert_eq!(match_path("/api/v1/users/{name}", "/api/v1/users/a%40b"), Some(vec!["a@b".to_string()]));
        assert_eq!(match_path("/api/v1/users/{name}", "/api/v1/users/%zz"), None);
        assert_eq!(match_path("/api/v1/tasks", "/api/v1/tasks"), Some(vec![]));
    }

    #[test]
    fn routes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "duplicate route {} {}", r.method, r.path);
        }
    }
}
