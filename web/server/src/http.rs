//! The request pipeline: routing, cross-site refusal, authentication, CSRF, roles, body limits
//! and JSON checks, then the handler on the blocking pool; errors as `{"error","code"}`;
//! security headers on every response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use service::{Principal, ServiceError, ServiceErrorKind, Session};

use crate::api::{self, Access, Body, Ctx, ROUTES, SESSION_COOKIE};
use crate::server::Shared;

/// An error as the API reports it: `{"error": message, "code": code}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    allow: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None, allow: None }
    }
    pub(crate) fn invalid(message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    pub(crate) fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in first (or send an API token as Authorization: Bearer)",
        )
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub(crate) fn not_found(message: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    fn too_large(max: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {max} bytes"),
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let message = e.to_string();
        match e.kind() {
            ServiceErrorKind::Invalid => ApiError::new(StatusCode::BAD_REQUEST, "invalid", message),
            ServiceErrorKind::Unauthenticated => ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message),
            ServiceErrorKind::Forbidden => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            ServiceErrorKind::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ServiceErrorKind::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ServiceErrorKind::Incomplete => ApiError::new(StatusCode::CONFLICT, "incomplete", message),
            ServiceErrorKind::RateLimited { retry_after_s } => ApiError {
                retry_after: Some(retry_after_s.max(1)),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            },
            ServiceErrorKind::Busy { retry_after_s } => ApiError {
                retry_after: Some(retry_after_s.max(1)),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
            },
            ServiceErrorKind::Internal => ApiError::internal(message),
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    pub(crate) headers: Vec<(HeaderName, String)>,
}

impl Reply {
    pub(crate) fn json<T: serde::Serialize + ?Sized>(status: StatusCode, v: &T) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(v).map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
        Ok(Reply { status, content_type: "application/json", body: body.into(), headers: Vec::new() })
    }
    pub(crate) fn no_content() -> Reply {
        Reply { status: StatusCode::NO_CONTENT, content_type: "", body: Bytes::new(), headers: Vec::new() }
    }
    pub(crate) fn text(content_type: &'static str, text: String) -> Reply {
        Reply { status: StatusCode::OK, content_type, body: text.into(), headers: Vec::new() }
    }
    pub(crate) fn bytes(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply { status: StatusCode::OK, content_type, body: body.into(), headers: Vec::new() }
    }
}

fn set(h: &mut HeaderMap, name: HeaderName, value: &'static str) {
    h.insert(name, HeaderValue::from_static(value));
}

/// The headers every response carries.
fn security_headers(h: &mut HeaderMap) {
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    set(h, HeaderName::from_static("cross-origin-resource-policy"), "same-origin");
}

fn respond(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if !content_type.is_empty() {
        if let Ok(v) = HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
    }
    security_headers(resp.headers_mut());
    resp
}

fn error_response(e: ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": e.message, "code": e.code })).unwrap_or_default();
    let mut resp = respond(e.status, "application/json", body.into());
    set(resp.headers_mut(), header::CACHE_CONTROL, "no-store");
    if let Some(s) = e.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(allow) = e.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    resp
}

fn reply_response(r: Reply) -> Response<Full<Bytes>> {
    let mut resp = respond(r.status, r.content_type, r.body);
    set(resp.headers_mut(), header::CACHE_CONTROL, "no-store");
    for (name, value) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().append(name, v);
        }
    }
    resp
}

/// Serves one request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/api" || path.starts_with("/api/") || path == "/metrics" {
        match api_request(shared, req, peer).await {
            Ok(r) => reply_response(r),
            Err(e) => error_response(e),
        }
    } else {
        ui_request(&req)
    }
}

fn ui_request(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"method not allowed\n"),
        );
        set(resp.headers_mut(), header::ALLOW, "GET, HEAD");
        return resp;
    }
    match crate::ui::file(req.uri().path()) {
        Some((ct, bytes)) => {
            let mut resp = respond(StatusCode::OK, ct, Bytes::from_static(bytes));
            set(resp.headers_mut(), header::CACHE_CONTROL, "no-cache");
            resp
        }
        None => respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", Bytes::from_static(b"not found\n")),
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn is_state_changing(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses requests a browser made on behalf of another site.
fn check_same_origin(method: &Method, h: &HeaderMap) -> Result<(), ApiError> {
    if header_str(h, &HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return Err(ApiError::forbidden("cross-site request refused"));
    }
    if !is_state_changing(method) {
        return Ok(());
    }
    let host = header_str(h, &header::HOST).unwrap_or("");
    let own = format!("https://{host}");
    if let Some(origin) = header_str(h, &header::ORIGIN) {
        if host.is_empty() || !origin.eq_ignore_ascii_case(&own) {
            return Err(ApiError::forbidden(format!("cross-origin request refused: Origin {origin} is not {own}")));
        }
    }
    if let Some(referer) = header_str(h, &header::REFERER) {
        let same = referer.len() >= own.len()
            && referer[..own.len()].eq_ignore_ascii_case(&own)
            && matches!(referer.as_bytes().get(own.len()), None | Some(b'/'));
        if host.is_empty() || !same {
            return Err(ApiError::forbidden(format!("cross-origin request refused: Referer is not on {own}")));
        }
    }
    Ok(())
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("the request handler failed: {e}")))
}

/// Who is calling: a cookie session, an API token, or nobody.
async fn authenticate(shared: &Arc<Shared>, h: &HeaderMap) -> Result<(Option<Principal>, Option<Session>), ApiError> {
    if let Some(authz) = header_str(h, &header::AUTHORIZATION) {
        let token = match authz.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().to_string(),
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "unsupported Authorization header: send Authorization: Bearer <API token>",
                ))
            }
        };
        let app = shared.app.clone();
        return match blocking(move || app.authenticate_token(&token)).await? {
            Some(p) => Ok((Some(p), None)),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the API token is not valid (revoked or mistyped)",
            )),
        };
    }
    if let Some(token) = cookie(h, SESSION_COOKIE) {
        return match shared.app.session(token) {
            Some(s) => Ok((Some(s.principal.clone()), Some(s))),
            None => {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "the session has ended; sign in again"))
            }
        };
    }
    Err(ApiError::unauthenticated())
}

/// Whether `content-type` is JSON (`application/json`, parameters allowed).
fn is_json(h: &HeaderMap) -> bool {
    header_str(h, &header::CONTENT_TYPE)
        .map(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

/// Checks that JSON text nests no deeper than `max` arrays/objects, without parsing it (so
/// serde_json's own recursion never sees a hostile depth).
pub(crate) fn check_depth(bytes: &[u8], max: usize) -> Result<(), ApiError> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in bytes {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(ApiError::invalid(format!("the JSON body nests deeper than {max} levels")));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Largest body of a public route (setup, sign-in).
const PUBLIC_MAX_BODY: usize = 16 << 10;

async fn read_body(body: Incoming, max: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(deadline, Limited::new(body, max).collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::too_large(max)),
        Ok(Err(e)) => Err(ApiError::invalid(format!("could not read the request body: {e}"))),
        Err(_) => {
            Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "invalid", "the request body took too long to arrive"))
        }
    }
}

async fn api_request(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Result<Reply, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let mut allowed = Vec::new();
    let mut found = None;
    // HEAD is GET without the body (hyper sends the headers, Content-Length included, and
    // leaves the body out).
    let method = if parts.method == Method::HEAD { "GET" } else { parts.method.as_str() };
    for r in ROUTES {
        if let Some(params) = api::match_path(r.path, path) {
            if r.method == method {
                found = Some((r, params));
                break;
            }
            allowed.push(r.method);
            if r.method == "GET" {
                allowed.push("HEAD");
            }
        }
    }
    let Some((route, params)) = found else {
        if allowed.is_empty() {
            return Err(ApiError::not_found(format!("no API route {path}; see /api/v1 in web/API.md")));
        }
        return Err(ApiError {
            allow: Some(allowed.join(", ")),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid",
                format!("{} is not allowed on {path}", parts.method),
            )
        });
    };
    let h = &parts.headers;
    check_same_origin(&parts.method, h)?;
    // Unauthenticated bodies (setup, sign-in) are a user name and a password: 16 KiB is plenty,
    // and a flood of megabyte bodies waiting for a password check cannot pile up in memory.
    let max = if matches!(route.access, Access::Public) {
        shared.cfg.max_body.min(PUBLIC_MAX_BODY)
    } else if route.body == Body::Records {
        service::replica_wire::MAX_BATCH_BYTES + (service::replica_wire::MAX_BATCH_BYTES >> 6)
    } else if route.body == Body::Bundle {
        crate::api::MAX_BUNDLE_BYTES
    } else {
        shared.cfg.max_body
    };
    if let Some(len) = header_str(h, &header::CONTENT_LENGTH) {
        if len.trim().parse::<u64>().map_or(true, |n| n > max as u64) {
            return Err(ApiError::too_large(max));
        }
    }
    let (principal, session) = match route.access {
        Access::Public => (None, None),
        Access::Any | Access::Role(_) => authenticate(&shared, h).await?,
    };
    if let Some(s) = &session {
        if is_state_changing(&parts.method) {
            let sent = header_str(h, &HeaderName::from_static("x-csrf-token")).unwrap_or("");
            if !ct_eq(sent.as_bytes(), s.csrf.as_bytes()) {
                return Err(ApiError::forbidden(if sent.is_empty() {
                    "missing X-CSRF-Token header: reload the page and try again"
                } else {
                    "wrong X-CSRF-Token header: reload the page and try again"
                }));
            }
        }
    }
    if let (Access::Role(needed), Some(p)) = (route.access, &principal) {
        if !p.role.allows(needed) {
            return Err(ApiError::forbidden(format!(
                "{} has the {} role; this needs {}",
                p.user,
                role_name(p.role),
                role_name(needed)
            )));
        }
    }
    if let Some(media) = route.body.streamed() {
        if header_str(h, &header::CONTENT_TYPE).is_none_or(|t| t.trim() != media) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send the body with Content-Type: {media}"),
            ));
        }
    }
    if route.body == Body::Bundle {
        let actor = principal.ok_or_else(ApiError::unauthenticated)?;
        let force = crate::api::query_param(parts.uri.query().unwrap_or(""), "force") == Some("true");
        let app = shared.app.clone();
        return stream_body(&shared, body, move |next| app.receive_update(&actor, force, next)).await;
    }
    if route.body == Body::Records {
        let actor = principal.ok_or_else(ApiError::unauthenticated)?;
        // The sender's key check value (hex), when its store is encrypted.
        let sealed_by =
            crate::api::query_param(parts.uri.query().unwrap_or(""), service::replica_wire::SEALED_BY_PARAM)
                .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_string);
        return receive_records(shared, actor, sealed_by, body).await;
    }
    let body = if is_state_changing(&parts.method) {
        read_body(body, max, shared.cfg.timeouts.body).await?
    } else {
        Bytes::new()
    };
    if route.body == Body::Json && !body.is_empty() {
        if !is_json(h) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        check_depth(&body, shared.cfg.max_json_depth)?;
    }
    let ctx = Ctx {
        app: shared.app.clone(),
        web: shared.clone(),
        principal,
        session,
        params,
        query: parts.uri.query().unwrap_or("").to_string(),
        body,
        client: peer.ip().to_string(),
    };
    let handler = route.handler;
    blocking(move || handler(&ctx)).await?
}

/// Streams a batch of replicated records into the service as it arrives: a cut connection
/// keeps every complete record before the cut (see `engine::replicate`).
async fn receive_records(
    shared: Arc<Shared>,
    actor: Principal,
    sealed_by: Option<String>,
    body: Incoming,
) -> Result<Reply, ApiError> {
    let app = shared.app.clone();
    stream_body(&shared, body, move |next| app.replica_receive(&actor, sealed_by.as_deref(), next)).await
}

/// Streams a request body into `consume` as it arrives: the body's pieces go over a small
/// channel to a blocking thread, then how the body ended. Each piece must arrive within the
/// body deadline. The answer is what `consume` returns, as JSON.
async fn stream_body<T: serde::Serialize + Send + 'static>(
    shared: &Arc<Shared>,
    mut body: Incoming,
    consume: impl FnOnce(
            &mut dyn FnMut() -> Result<Vec<u8>, service::replica_wire::StreamEnd>,
        ) -> Result<T, service::ServiceError>
        + Send
        + 'static,
) -> Result<Reply, ApiError> {
    use service::replica_wire::StreamEnd;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, StreamEnd>>(16);
    let worker = tokio::task::spawn_blocking(move || {
        let mut next = || rx.blocking_recv().unwrap_or(Err(StreamEnd::Cut("the receiver stopped reading".into())));
        consume(&mut next)
    });
    let deadline = shared.cfg.timeouts.body;
    let end = loop {
        match tokio::time::timeout(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if tx.send(Ok(data.to_vec())).await.is_err() {
                        break None; // the worker refused the batch and stopped
                    }
                }
            }
            Ok(None) => break Some(StreamEnd::Complete),
            Ok(Some(Err(e))) => break Some(StreamEnd::Cut(format!("the connection broke: {e}"))),
            Err(_) => break Some(StreamEnd::Cut(format!("no data for {} s", deadline.as_secs()))),
        }
    };
    if let Some(end) = end {
        let _ = tx.send(Err(end)).await;
    }
    drop(tx);
    let received = worker.await.map_err(|e| ApiError::internal(format!("the request handler failed: {e}")))??;
    Reply::json(StatusCode::OK, &received)
}

fn role_name(r: service::Role) -> &'static str {
    r.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_only_structure() {
        assert!(check_depth(br#"{"a":[1,{"b":2}]}"#, 3).is_ok());
        assert!(check_depth(br#"{"a":[1,{"b":[]}]}"#, 3).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[[[\"[[[["}"#, 1).is_ok());
        let deep = "[".repeat(100_000);
        assert!(check_depth(deep.as_bytes(), 32).is_err());
    }

    #[test]
    fn origin_and_fetch_site() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("box:8443"));
        assert!(check_same_origin(&Method::POST, &h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("https://box:8443"));
        assert!(check_same_origin(&Method::POST, &h).is_ok());
        h.insert(header::REFERER, HeaderValue::from_static("https://box:8443/jobs"));
        assert!(check_same_origin(&Method::POST, &h).is_ok());
        h.insert(header::REFERER, HeaderValue::from_static("https://box:84431/"));
        assert!(check_same_origin(&Method::POST, &h).is_err());
        h.remove(header::REFERER);
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(check_same_origin(&Method::POST, &h).is_err());
        assert!(check_same_origin(&Method::GET, &h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_same_origin(&Method::GET, &h).is_err());
    }

    #[test]
    fn cookies_are_found() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; rv_session=abc; b=2"));
        assert_eq!(cookie(&h, "rv_session"), Some("abc"));
        assert_eq!(cookie(&h, "rv"), None);
    }
}
