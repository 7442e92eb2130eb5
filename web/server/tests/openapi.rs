//! Keeps `web/openapi.json` honest. The document is written by hand, so nothing else stops it
//! from drifting away from the router and the service's serde types; these tests do:
//!
//! - `document_matches_the_router`: the document's (method, path) set equals
//!   `webserver::routes()` exactly, and for each route `x-rackvault-access` and the presence
//!   of a request body agree with the route table. It also checks the document's own
//!   consistency: every `$ref` resolves, every `{param}` of a path is declared `in: path` (and
//!   nothing else is), non-public operations document 401 and 403, body routes 400, 413 and
//!   415, errors use the `Error` schema, and the security requirements say what the pipeline
//!   does (no sign-in for public routes, the CSRF header with the cookie on POST/PUT/DELETE).
//! - `live_answers_match_the_documented_schemas`: a real server in dev mode (so the emulated
//!   tape library answers the tape routes) with some data in it; every GET route without path
//!   parameters, and the answers of the requests that create the data and exercise the store's
//!   life (retention, prune preview, pin, delete refused and done, GC tasks), are validated against
//!   the documented schemas by a small validator. The validator is stricter than JSON Schema
//!   on purpose: a field the server sends that an object schema with `properties` does not
//!   declare is an error, so a new field cannot go undocumented.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Browser, Resp, TestServer};
use serde_json::{json, Value};

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

fn load_document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid JSON: {e}"))
}

/// Resolves a local `$ref` (`#/a/b`, with JSON pointer escapes).
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

/// `v` itself, or what its `$ref` points to (one level: components never chain refs here,
/// and a chain would still be checked by `every_ref`).
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r).unwrap_or(v),
        None => v,
    }
}

/// (METHOD, path, operation, path item) for every operation of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (m, op) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&m.as_str()) {
                out.push((m.to_uppercase(), path.clone(), op, item));
            }
        }
    }
    out
}

/// The `{name}` segments of a path pattern.
fn path_params(path: &str) -> BTreeSet<String> {
    path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).map(String::from).collect()
}

/// Every `$ref` string anywhere in `v`, with where it is.
fn every_ref<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str() {
                        out.push((at.clone(), r));
                    }
                } else {
                    every_ref(x, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                every_ref(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn document_matches_the_router() {
    let doc = load_document();
    let mut fail: Vec<String> = Vec::new();

    let version = doc["openapi"].as_str().unwrap_or("");
    if !version.starts_with("3.1.") {
        fail.push(format!("openapi is {version:?}, expected 3.1.x"));
    }
    if doc["info"]["version"].as_str().is_none_or(str::is_empty) {
        fail.push("info.version is missing".into());
    }
    if doc["info"]["title"].as_str().is_none_or(str::is_empty) {
        fail.push("info.title is missing".into());
    }

    // The same routes, no more, no fewer.
    let routes: BTreeMap<(String, String), webserver::RouteInfo> =
        webserver::routes().map(|r| ((r.method.to_string(), r.path.to_string()), r)).collect();
    let ops = operations(&doc);
    let documented: BTreeSet<(String, String)> = ops.iter().map(|(m, p, _, _)| (m.clone(), p.clone())).collect();
    let missing: Vec<String> =
        routes.keys().filter(|k| !documented.contains(*k)).map(|(m, p)| format!("{m} {p}")).collect();
    let extra: Vec<String> =
        documented.iter().filter(|k| !routes.contains_key(*k)).map(|(m, p)| format!("{m} {p}")).collect();
    if !missing.is_empty() {
        fail.push(format!("routes missing from openapi.json: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        fail.push(format!("operations in openapi.json that the router does not have: {}", extra.join(", ")));
    }

    // Every reference resolves, and into components (a ref into paths would tie the document
    // to its own layout).
    let mut refs = Vec::new();
    every_ref(&doc, String::new(), &mut refs);
    for (at, r) in &refs {
        if !r.starts_with("#/components/") || resolve(&doc, r).is_none() {
            fail.push(format!("{at}: $ref {r} does not resolve to a components entry"));
        }
    }

    let schemes = doc["components"]["securitySchemes"].as_object().cloned().unwrap_or_default();
    for name in ["session", "csrfToken", "bearerToken"] {
        if !schemes.contains_key(name) {
            fail.push(format!("components.securitySchemes has no {name}"));
        }
    }
    if schemes.get("session").map(|s| (&s["in"], &s["name"])) != Some((&json!("cookie"), &json!("rv_session"))) {
        fail.push("the session scheme must be the rv_session cookie".into());
    }
    if schemes.get("csrfToken").map(|s| (&s["in"], &s["name"])) != Some((&json!("header"), &json!("X-CSRF-Token"))) {
        fail.push("the csrfToken scheme must be the X-CSRF-Token header".into());
    }

    let mut op_ids = BTreeSet::new();
    for (method, path, op, item) in &ops {
        let name = format!("{method} {path}");
        let Some(route) = routes.get(&(method.clone(), path.clone())) else { continue };

        for field in ["operationId", "summary", "description"] {
            if op[field].as_str().is_none_or(str::is_empty) {
                fail.push(format!("{name}: no {field}"));
            }
        }
        if let Some(id) = op["operationId"].as_str() {
            if !op_ids.insert(id.to_string()) {
                fail.push(format!("{name}: operationId {id} is used twice"));
            }
        }

        let access = op["x-rackvault-access"].as_str();
        if access != Some(route.access) {
            fail.push(format!("{name}: x-rackvault-access is {access:?}, the router says {:?}", route.access));
        }

        // A request body exactly when the route reads JSON, and then as a named schema.
        match (op.get("requestBody"), route.json_body) {
            (Some(b), false) if route.streamed_body.is_some() => {
                let media = route.streamed_body.unwrap_or_default();
                if deref(&doc, b)["content"][media].is_null() {
                    fail.push(format!("{name}: the route reads a streamed {media} body; document that media type"));
                }
            }
            (None, false) if route.streamed_body.is_some() => {
                fail.push(format!("{name}: the route reads a streamed body; document it"))
            }
            (Some(_), false) => fail.push(format!("{name}: documents a requestBody the route never reads")),
            (None, true) => fail.push(format!("{name}: the route reads a JSON body; document it")),
            (Some(b), true) => {
                let schema_ref = deref(&doc, b)["content"]["application/json"]["schema"]["$ref"].as_str();
                if !schema_ref.is_some_and(|r| r.starts_with("#/components/schemas/")) {
                    fail.push(format!("{name}: requestBody needs application/json with a components/schemas $ref"));
                }
            }
            (None, false) => {}
        }

        // Path parameters: declared on the operation or the path item, `in: path`, required.
        let mut declared = BTreeSet::new();
        for p in item["parameters"].as_array().into_iter().chain(op["parameters"].as_array()).flatten() {
            let p = deref(&doc, p);
            if p["in"] == "path" {
                let pname = p["name"].as_str().unwrap_or("").to_string();
                if p["required"] != true {
                    fail.push(format!("{name}: path parameter {pname} must be required"));
                }
                declared.insert(pname);
            }
        }
        let wanted = path_params(path);
        for p in wanted.difference(&declared) {
            fail.push(format!("{name}: path parameter {{{p}}} is not declared"));
        }
        for p in declared.difference(&wanted) {
            fail.push(format!("{name}: declares path parameter {p}, which the path does not have"));
        }

        // Responses: one success, the errors the pipeline can give, errors as `Error`.
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        let success: Vec<&String> = responses.keys().filter(|c| c.starts_with('2')).collect();
        if success.len() != 1 {
            fail.push(format!("{name}: expected exactly one 2xx response, found {success:?}"));
        }
        let mut needed: Vec<&str> = Vec::new();
        if route.access != "public" {
            needed.extend(["401", "403"]);
        }
        if route.json_body {
            needed.extend(["400", "413", "415"]);
        }
        for code in needed {
            if !responses.contains_key(code) {
                fail.push(format!("{name}: response {code} is not documented"));
            }
        }
        for (code, r) in &responses {
            let r = deref(&doc, r);
            if r["description"].as_str().is_none_or(str::is_empty) {
                fail.push(format!("{name}: response {code} has no description"));
            }
            if code.starts_with('4') || code.starts_with('5') {
                if r["content"]["application/json"]["schema"]["$ref"] != "#/components/schemas/Error" {
                    fail.push(format!("{name}: error response {code} must use the Error schema"));
                }
            } else if code == "204" && r.get("content").is_some() {
                fail.push(format!("{name}: 204 has no content"));
            } else if code == "200" && r["content"].as_object().is_none_or(|c| c.is_empty()) {
                fail.push(format!("{name}: 200 needs a content schema"));
            }
        }

        // Security: public routes need none; others the cookie or a token, and POST/PUT/DELETE
        // with the cookie also the CSRF header (http.rs refuses them without it).
        let security = op.get("security").or(doc.get("security")).and_then(Value::as_array);
        let reqs: Vec<&serde_json::Map<String, Value>> =
            security.into_iter().flatten().filter_map(Value::as_object).collect();
        if route.access == "public" {
            if !reqs.is_empty() {
                fail.push(format!("{name}: a public route must have security: []"));
            }
        } else {
            if reqs.is_empty() || reqs.iter().any(|r| r.is_empty()) {
                fail.push(format!("{name}: needs sign-in; its security must not allow anonymous calls"));
            }
            for r in &reqs {
                for scheme in r.keys() {
                    if !schemes.contains_key(scheme) {
                        fail.push(format!("{name}: unknown security scheme {scheme}"));
                    }
                }
                let state_changing = !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
                if state_changing && r.contains_key("session") && !r.contains_key("csrfToken") {
                    fail.push(format!("{name}: the cookie session needs csrfToken on {method}"));
                }
            }
            let alternatives: BTreeSet<&str> = reqs.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
            if !alternatives.contains("session") || !alternatives.contains("bearerToken") {
                fail.push(format!("{name}: must accept both the session cookie and bearer tokens"));
            }
        }
    }
    if doc["paths"]["/api/v1/login"]["post"]["responses"].get("429").is_none() {
        fail.push("POST /api/v1/login: 429 (sign-in lockout) is not documented".into());
    }

    assert!(fail.is_empty(), "web/openapi.json disagrees with the router:\n  {}", fail.join("\n  "));
}

// ---- the live check -----------------------------------------------------------------------

/// Checks `v` against `schema`; appends what is wrong, at `at`, to `errs`. Supports the
/// keywords the document uses: `$ref`, `type` (a name or a list), `enum`, `minimum`,
/// `required`, `properties`, `additionalProperties`, `items`, `oneOf`, `anyOf`.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match resolve(doc, r) {
            Some(s) => validate(doc, s, v, at, errs),
            None => errs.push(format!("{at}: unresolvable $ref {r}")),
        }
        return;
    }
    for (kw, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(alts) = schema.get(kw).and_then(Value::as_array) {
            let mut why = Vec::new();
            let ok = alts
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    validate(doc, s, v, at, &mut e);
                    why.extend(e.iter().cloned());
                    e.is_empty()
                })
                .count();
            if ok == 0 || (exactly_one && ok > 1) {
                errs.push(format!("{at}: {ok} of the {kw} alternatives match ({})", why.join("; ")));
            }
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let is = |t: &str| match t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        };
        if !types.iter().any(|t| is(t)) {
            errs.push(format!("{at}: expected {types:?}, got {v}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} is not one of {}", Value::Array(e.clone())));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errs.push(format!("{at}: {n} is below the minimum {min}"));
        }
    }
    if let Value::Object(m) = v {
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                errs.push(format!("{at}: required field {r} is missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, x) in m {
            let field = format!("{at}.{k}");
            match (props.and_then(|p| p.get(k)), schema.get("additionalProperties")) {
                (Some(s), _) => validate(doc, s, x, &field, errs),
                (None, Some(Value::Bool(true))) => {}
                (None, Some(s @ Value::Object(_))) => validate(doc, s, x, &field, errs),
                // Stricter than JSON Schema on purpose: an object schema that lists its
                // properties lists all of them, so an undocumented field fails the test.
                (None, _) if props.is_some() => errs.push(format!("{field}: the server sends it; document it")),
                (None, _) => {}
            }
        }
    }
    if let (Value::Array(a), Some(items)) = (v, schema.get("items")) {
        for (i, x) in a.iter().enumerate() {
            validate(doc, items, x, &format!("{at}[{i}]"), errs);
        }
    }
}

/// Checks an answer of `method pattern` against the document: its status must be
/// documented, and its body must match the documented content.
fn check(doc: &Value, method: &str, pattern: &str, r: &Resp, fail: &mut Vec<String>) {
    let name = format!("{method} {pattern} -> {}", r.status);
    let op = &doc["paths"][pattern][method.to_lowercase()];
    let Some(documented) = op["responses"].get(r.status.to_string()) else {
        fail.push(format!("{name}: status not documented ({})", r.text()));
        return;
    };
    let documented = deref(doc, documented);
    let content_type = r.header("content-type").unwrap_or("");
    match documented.get("content").and_then(Value::as_object) {
        None => {
            if !r.body.is_empty() {
                fail.push(format!("{name}: documented without content, but the body is {:?}", r.text()));
            }
        }
        Some(content) if content.contains_key("application/json") => {
            if !content_type.starts_with("application/json") {
                fail.push(format!("{name}: content type {content_type:?}, documented application/json"));
                return;
            }
            let body: Value = match serde_json::from_slice(&r.body) {
                Ok(v) => v,
                Err(e) => return fail.push(format!("{name}: not JSON ({e})")),
            };
            let mut errs = Vec::new();
            validate(doc, &content["application/json"]["schema"], &body, "$", &mut errs);
            fail.extend(errs.into_iter().map(|e| format!("{name}: {e}")));
        }
        Some(content) => {
            let want = content.keys().next().map(String::as_str).unwrap_or("");
            if !content_type.starts_with(want) {
                fail.push(format!("{name}: content type {content_type:?}, documented {want}"));
            }
        }
    }
}

/// Polls a task until it ends; returns its last state, checked against the document.
async fn wait_task(s: &TestServer, doc: &Value, b: &Browser, id: u64, fail: &mut Vec<String>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let r = s.get(&format!("/api/v1/tasks/{id}"), b).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.json();
        if !matches!(t["state"].as_str(), Some("queued" | "running")) {
            check(doc, "GET", "/api/v1/tasks/{id}", &r, fail);
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} did not end: {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn live_answers_match_the_documented_schemas() {
    // The walk is one long async fn whose poll frame, in a debug build, outgrows the 2 MiB
    // of a test thread; it runs on a thread of its own with room to spare.
    let walk = std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(walk_every_route_and_check_the_answers());
        })
        .expect("spawning the walk");
    if let Err(panic) = walk.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn walk_every_route_and_check_the_answers() {
    let doc = load_document();
    let mut fail: Vec<String> = Vec::new();
    // Dev mode: a sample source and an emulated tape library, so the tape routes answer
    // 200 with real content rather than 404 ("no tape library is configured").
    let s = TestServer::start_dev().await;
    let r = s.req("GET", "/api/v1/setup", &[], b"").await;
    check(&doc, "GET", "/api/v1/setup", &r, &mut fail);
    let admin = s.admin().await;

    // Errors have the documented shape too.
    let r = s.req("GET", "/api/v1/tasks", &[], b"").await;
    assert_eq!(r.status, 401);
    check(&doc, "GET", "/api/v1/tasks", &r, &mut fail);
    let r = s.get("/api/v1/tasks/999999", &admin).await;
    assert_eq!(r.status, 404);
    check(&doc, "GET", "/api/v1/tasks/{id}", &r, &mut fail);

    // Some of everything, so the lists are not empty; each answer is checked as well.
    let r = s
        .send("POST", "/api/v1/users", &admin, &json!({"name": "ann", "password": common::PASSWORD, "role": "auditor"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/users", &r, &mut fail);
    let r = s.send("POST", "/api/v1/tokens", &admin, &json!({"name": "monitoring", "role": "auditor"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/tokens", &r, &mut fail);
    let bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    // A bearer token's session answer has null csrf and expiry.
    let r = s.req("GET", "/api/v1/session", &[("Authorization", &bearer)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "GET", "/api/v1/session", &r, &mut fail);

    let src = s.get("/api/v1/sources", &admin).await.json()[0]["id"].as_str().unwrap().to_string();
    let r = s.send("POST", &format!("/api/v1/sources/{src}/test"), &admin, &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/sources/{id}/test", &r, &mut fail);

    let r = s.send("POST", "/api/v1/tape/label", &admin, &json!({"barcode": "RVT001L9", "pool": "default"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/tape/label", &r, &mut fail);
    // The settings, saved with the dev library's own address (opened and checked again).
    let current = s.get("/api/v1/settings", &admin).await.json();
    let settings = json!({
        "max_tasks": 3, "max_tasks_per_host": 2, "max_tasks_per_datastore": 1,
        "tape_changer": current["tape_changer"],
        "time_zone": "UTC", "capacity_high_pct": 97, "capacity_low_pct": 90, "maintenance_schedule": "04:30",
    });
    let r = s.send("PUT", "/api/v1/settings", &admin, &settings).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "PUT", "/api/v1/settings", &r, &mut fail);
    // Notifications: a webhook to a closed port and a mail server; the test answers per channel.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let notifications = json!({
        "webhook": {"url": format!("http://127.0.0.1:{closed}/hook"), "secret": "s3cret"},
        "smtp": {"host": "127.0.0.1", "port": closed, "tls": "starttls", "user": "alerts", "password": "pw",
                 "from": "rv@example.test", "to": ["ops@example.test"]},
        "capacity": false,
    });
    let r = s.send("PUT", "/api/v1/settings/notifications", &admin, &notifications).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "PUT", "/api/v1/settings/notifications", &r, &mut fail);
    assert!(!r.text().contains("s3cret"), "{}", r.text());
    let r = s.send("POST", "/api/v1/notifications/test", &admin, &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/notifications/test", &r, &mut fail);
    assert_eq!(r.json().as_array().map(Vec::len), Some(2), "{}", r.text());
    let pool = json!({"allocation": "weekly", "retention_days": 35, "max_restore_tapes": 2});
    let r = s.send("PUT", "/api/v1/tape/pools/offsite", &admin, &pool).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "PUT", "/api/v1/tape/pools/{name}", &r, &mut fail);
    let r = s.send("POST", "/api/v1/tape/load", &admin, &json!({"barcode": "RVT003L9"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/tape/load", &r, &mut fail);
    let drive = r.json()["drive"].clone();
    // The inventory with a loaded drive (barcode and serial filled in), then unload it again.
    let r = s.get("/api/v1/tape/inventory", &admin).await;
    check(&doc, "GET", "/api/v1/tape/inventory", &r, &mut fail);
    let r = s.send("POST", "/api/v1/tape/unload", &admin, &json!({"drive": drive})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/tape/unload", &r, &mut fail);

    // A job that destages: running it gives a backup, a restore point and a copy on tape.
    let job = json!({"name": "nightly", "source": src, "schedule": "daily", "destage_pool": "default"});
    let r = s.send("POST", "/api/v1/jobs", &admin, &job).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/jobs", &r, &mut fail);
    let job_id = r.json()["id"].as_str().unwrap().to_string();
    // A job without a destage pool: `destage_pool` is absent, not null.
    let r = s
        .send(
            "POST",
            "/api/v1/jobs",
            &admin,
            &json!({"name": "weekly", "source": src, "schedule": "Sun 03:00", "enabled": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/jobs", &r, &mut fail);
    let r = s.send("POST", &format!("/api/v1/jobs/{job_id}/run"), &admin, &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/jobs/{id}/run", &r, &mut fail);
    let backup = wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;
    assert_eq!(backup["state"], "succeeded", "{backup}");
    let destage = backup["result"]["destage_task"].as_u64().expect("the job's backup queued a destage");
    let t = wait_task(&s, &doc, &admin, destage, &mut fail).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let r = s.get(&format!("/api/v1/tasks/{destage}/log"), &admin).await;
    check(&doc, "GET", "/api/v1/tasks/{id}/log", &r, &mut fail);
    // A verify with no body at all: the body is optional there.
    let r = s.send("POST", "/api/v1/verifications", &admin, &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/verifications", &r, &mut fail);
    let t = wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    // A restore from the store, one from tape and a cartridge verify: each result is checked
    // against its documented shape (`TaskResult`).
    let point = format!("{}@{}", backup["result"]["name"].as_str().unwrap(), backup["result"]["id"]);
    for (path, body) in [
        ("/api/v1/restores", json!({"point": point, "target": "from-disk"})),
        ("/api/v1/tape/restores", json!({"point": point, "target": "from-tape"})),
        ("/api/v1/tape/verifications", json!({"barcode": "RVT001L9"})),
    ] {
        let r = s.send("POST", path, &admin, &body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        check(&doc, "POST", path, &r, &mut fail);
        let t = wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;
        assert_eq!(t["state"], "succeeded", "{path}: {t}");
    }
    let r = s.send("POST", &format!("/api/v1/tasks/{destage}/cancel"), &admin, &Value::Null).await;
    assert_eq!(r.status, 409, "{}", r.text());
    check(&doc, "POST", "/api/v1/tasks/{id}/cancel", &r, &mut fail);
    // A task that fails says whether running it again can help (`error_kind`).
    let gone = json!({"name": "gone", "url": "/nonexistent/rackvault-openapi-test.raw"});
    let r = s.send("POST", "/api/v1/sources", &admin, &gone).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.send("POST", "/api/v1/backups", &admin, &json!({"source": r.json()["id"]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;
    assert_eq!((&t["state"], &t["error_kind"]), (&json!("failed"), &json!("permanent")), "{t}");

    // The store's life: a job with retention and immutability, a prune preview, delete refused
    // for an immutable point and done for a plain one, pin and unpin, and GC tasks.
    let kept = json!({"name": "kept", "source": src, "schedule": "daily", "enabled": false,
                      "retention": {"keep_last": 1, "keep_daily": 7, "keep_within_s": null}, "immutable_days": 1});
    let r = s.send("POST", "/api/v1/jobs", &admin, &kept).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/jobs", &r, &mut fail);
    assert_eq!(r.json()["retention"], json!({"keep_last": 1, "keep_daily": 7}), "{}", r.text());
    let kept_id = r.json()["id"].as_str().unwrap().to_string();
    let misspelt = json!({"name": "typo", "source": src, "schedule": "daily", "retention": {"keep_lats": 1}});
    let r = s.send("POST", "/api/v1/jobs", &admin, &misspelt).await;
    assert_eq!(r.status, 400, "an unknown retention rule is refused: {}", r.text());
    check(&doc, "POST", "/api/v1/jobs", &r, &mut fail);
    let r = s.send("POST", "/api/v1/prune", &admin, &json!({"job": kept_id, "dry_run": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/prune", &r, &mut fail);
    assert!(r.json()["items"].as_array().is_some_and(|i| !i.is_empty()), "{}", r.text());
    // Running the job makes an immutable point and prunes the older one (on tape: tape only now).
    let r = s.send("POST", &format!("/api/v1/jobs/{kept_id}/run"), &admin, &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let points = s.get("/api/v1/points", &admin).await.json();
    let on_disk: Vec<&Value> = points.as_array().unwrap().iter().filter(|p| p["tape_only"] == false).collect();
    assert_eq!(on_disk.len(), 1, "keep_last 1 leaves one point on disk: {points}");
    assert_eq!(on_disk[0]["immutable"], true, "{points}");
    assert!(
        points.as_array().unwrap().iter().any(|p| p["tape_only"] == true),
        "the pruned point is on tape only: {points}"
    );
    let immutable = format!("sample-vm@{}", on_disk[0]["id"]);
    let r = s.send("DELETE", &format!("/api/v1/points/{immutable}"), &admin, &Value::Null).await;
    assert_eq!(r.status, 409, "{}", r.text());
    check(&doc, "DELETE", "/api/v1/points/{spec}", &r, &mut fail);
    // A manual backup has no immutability: pinned it is refused, unpinned it goes.
    let r = s.send("POST", "/api/v1/backups", &admin, &json!({"source": src})).await;
    let t = wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let plain = format!("{}@{}", t["result"]["name"].as_str().unwrap(), t["result"]["id"]);
    let r = s.send("PUT", &format!("/api/v1/points/{plain}/pin"), &admin, &json!({"pinned": true})).await;
    assert_eq!(r.status, 204, "{}", r.text());
    check(&doc, "PUT", "/api/v1/points/{spec}/pin", &r, &mut fail);
    let r = s.get("/api/v1/points", &admin).await;
    check(&doc, "GET", "/api/v1/points", &r, &mut fail);
    let r = s.send("DELETE", &format!("/api/v1/points/{plain}"), &admin, &Value::Null).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = s.send("PUT", &format!("/api/v1/points/{plain}/pin"), &admin, &json!({"pinned": false})).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = s.send("DELETE", &format!("/api/v1/points/{plain}"), &admin, &Value::Null).await;
    assert_eq!(r.status, 204, "{}", r.text());
    check(&doc, "DELETE", "/api/v1/points/{spec}", &r, &mut fail);
    let r = s.send("DELETE", &format!("/api/v1/points/{plain}"), &admin, &Value::Null).await;
    assert_eq!(r.status, 404, "{}", r.text());
    check(&doc, "DELETE", "/api/v1/points/{spec}", &r, &mut fail);
    // Garbage collection: with no body, and as a dry run.
    let r = s.send("POST", "/api/v1/gc", &admin, &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/gc", &r, &mut fail);
    let t = wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;
    assert_eq!((t["state"].as_str(), t["kind"].as_str()), (Some("succeeded"), Some("gc")), "{t}");
    assert_eq!(t["result"]["gc"]["complete"], true, "{t}");
    let r = s.send("POST", "/api/v1/gc", &admin, &json!({"dry_run": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&doc, "POST", "/api/v1/gc", &r, &mut fail);
    wait_task(&s, &doc, &admin, r.json()["id"].as_u64().unwrap(), &mut fail).await;

    // Every GET route without path parameters, as the admin (public ones anonymously, a pull
    // route with a pull token).
    let mut seen = 0;
    let puller = s.bearer(&admin, "offsite", "pull").await;
    for route in webserver::routes().filter(|r| r.method == "GET" && !r.path.contains('{')) {
        let r = if route.access == "public" {
            s.req("GET", route.path, &[], b"").await
        } else if route.access == "pull" {
            s.req("GET", route.path, &[("authorization", puller.as_str())], b"").await
        } else {
            s.get(route.path, &admin).await
        };
        if r.status != 200 {
            fail.push(format!("GET {}: {} {}", route.path, r.status, r.text()));
            continue;
        }
        check(&doc, "GET", route.path, &r, &mut fail);
        // An empty list validates trivially: these must have content by now.
        let filled = ["/api/v1/sources", "/api/v1/jobs", "/api/v1/points", "/api/v1/tasks", "/api/v1/tape/copies"];
        if filled.contains(&route.path) && r.json().as_array().is_none_or(|a| a.is_empty()) {
            fail.push(format!("GET {}: expected a non-empty list, got {}", route.path, r.text()));
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} GET routes were checked");
    s.stop().await.unwrap();

    assert!(fail.is_empty(), "live answers disagree with web/openapi.json:\n  {}", fail.join("\n  "));
}
