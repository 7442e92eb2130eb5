//! The HTTPS API end to end: a real server on 127.0.0.1:0 with a temp-dir appliance, spoken
//! to over TLS by a minimal client that trusts the appliance's own certificate.

mod common;

use common::{plain, Browser, TestServer, ADMIN, PASSWORD};
use serde_json::json;

#[tokio::test]
async fn setup_login_session_logout() {
    let s = TestServer::start().await;
    let r = s.req("GET", "/api/v1/setup", &[], b"").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["needs_setup"], true);
    assert_eq!(v["appliance"]["fingerprint_sha256"], s.fingerprint.as_str());
    let fp_file = webserver::ensure_certificate(&webserver::CertPaths {
        cert: s.dir.path().join("tls/cert.pem"),
        key: s.dir.path().join("tls/key.pem"),
    })
    .unwrap();
    assert_eq!(fp_file, s.fingerprint);
    // Security headers on every answer.
    assert_eq!(
        r.header("content-security-policy").map(|c| c.starts_with("default-src 'self'; frame-ancestors 'none'")),
        Some(true)
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(r.header("strict-transport-security").unwrap().contains("max-age="));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // A short password is refused with the service's message.
    let short = json!({"user": ADMIN, "password": "short", "setup_code": s.setup_code()}).to_string();
    let r = s.req("POST", "/api/v1/setup", &[("Content-Type", "application/json")], short.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "invalid");

    let admin = s.admin().await;
    let r = s.req("GET", "/api/v1/setup", &[], b"").await;
    assert_eq!(r.json()["needs_setup"], false);
    // Setup only once.
    let again = json!({"user": "mallory", "password": "0123456789ab", "setup_code": "AAAA-BBBB"}).to_string();
    let r = s.req("POST", "/api/v1/setup", &[("Content-Type", "application/json")], again.as_bytes()).await;
    assert_eq!(r.status, 409, "{}", r.text());

    // Cookie attributes.
    let r = s.login(ADMIN, PASSWORD).await;
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("rv_session="), "{cookie}");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|a| a == attr), "{attr} missing in {cookie}");
    }
    let v = r.json();
    assert_eq!(v["user"], ADMIN);
    assert_eq!(v["role"], "admin");
    assert!(v["csrf"].as_str().unwrap().len() >= 16);
    assert!(v["expires_unix"].as_u64().is_some());

    let r = s.get("/api/v1/session", &admin).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["csrf"], admin.csrf.as_str());

    let r = s.send("POST", "/api/v1/logout", &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = s.get("/api/v1/session", &admin).await;
    assert_eq!(r.status, 401);

    // Wrong password.
    let r = s.login(ADMIN, "not the password").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["code"], "unauthenticated");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn unauthenticated_and_roles() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    for path in ["/api/v1/tasks", "/api/v1/dashboard", "/api/v1/points", "/api/v1/session"] {
        let r = s.req("GET", path, &[], b"").await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.json()["code"], "unauthenticated");
    }
    let r = s.req("GET", "/api/v1/tasks", &[("Cookie", "rv_session=forged")], b"").await;
    assert_eq!(r.status, 401);

    let auditor = s.user(&admin, "ann", "auditor").await;
    let r = s.get("/api/v1/tasks", &auditor).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.send("POST", "/api/v1/backups", &auditor, &json!({"source": "x"})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "forbidden");
    let r = s.get("/api/v1/users", &auditor).await;
    assert_eq!(r.status, 403);

    let operator = s.user(&admin, "otto", "operator").await;
    let r = s.send("POST", "/api/v1/sources", &operator, &json!({"name": "a", "url": "/nope"})).await;
    assert_eq!(r.status, 403);
    let r = s.send("POST", "/api/v1/backups", &operator, &json!({"source": "nosuch"})).await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Users listed, deleted.
    let r = s.get("/api/v1/users", &admin).await;
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    let r = s.send("DELETE", "/api/v1/users/ann", &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 204, "{}", r.text());
    // The audit log saw it.
    let r = s.get("/api/v1/audit?limit=5", &admin).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("delete user"), "{}", r.text());
    let r = s.get("/api/v1/audit?limit=x", &admin).await;
    assert_eq!(r.status, 400);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn csrf_and_cross_site() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "vm1", "url": "/srv/vm1.raw"}).to_string();
    let ct = ("Content-Type", "application/json");
    let cookie = ("Cookie", admin.cookie.as_str());
    let r = s.req("POST", "/api/v1/sources", &[cookie, ct], body.as_bytes()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("X-CSRF-Token"));
    let r = s.req("POST", "/api/v1/sources", &[cookie, ct, ("X-CSRF-Token", "wrong")], body.as_bytes()).await;
    assert_eq!(r.status, 403);
    let csrf = ("X-CSRF-Token", admin.csrf.as_str());
    let r = s
        .req("POST", "/api/v1/sources", &[cookie, ct, csrf, ("Origin", "https://evil.example")], body.as_bytes())
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("cross-origin"));
    let r = s
        .req("POST", "/api/v1/sources", &[cookie, ct, csrf, ("Referer", "https://evil.example/x")], body.as_bytes())
        .await;
    assert_eq!(r.status, 403);
    let r =
        s.req("POST", "/api/v1/sources", &[cookie, ct, csrf, ("Sec-Fetch-Site", "cross-site")], body.as_bytes()).await;
    assert_eq!(r.status, 403);
    let r = s.req("GET", "/api/v1/sources", &[cookie, ("Sec-Fetch-Site", "cross-site")], b"").await;
    assert_eq!(r.status, 403);
    // Login from another site is refused too (login CSRF).
    let cred = json!({"user": ADMIN, "password": PASSWORD}).to_string();
    let r = s.req("POST", "/api/v1/login", &[ct, ("Origin", "https://evil.example")], cred.as_bytes()).await;
    assert_eq!(r.status, 403);
    // Nothing was created.
    let r = s.get("/api/v1/sources", &admin).await;
    assert_eq!(r.json(), json!([]));
    // The right token and our own origin pass.
    let origin = format!("https://{}", s.host());
    let r = s.req("POST", "/api/v1/sources", &[cookie, ct, csrf, ("Origin", &origin)], body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let src = r.json();
    assert_eq!(src["name"], "vm1");
    assert_eq!(src["host"], "local");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn bearer_tokens() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let r = s.send("POST", "/api/v1/tokens", &admin, &json!({"name": "ci", "role": "operator"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    let secret = t["token"].as_str().unwrap().to_string();
    let id = t["id"].as_str().unwrap().to_string();
    let r = s.get("/api/v1/tokens", &admin).await;
    assert!(!r.text().contains(&secret), "the secret is shown once only");
    let bearer = format!("Bearer {secret}");
    let auth = ("Authorization", bearer.as_str());
    // No CSRF token needed; the role applies.
    let r = s
        .req("POST", "/api/v1/backups", &[auth, ("Content-Type", "application/json")], br#"{"source":"nosuch"}"#)
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.req("GET", "/api/v1/tasks", &[auth], b"").await;
    assert_eq!(r.status, 200);
    let r = s.req("GET", "/api/v1/users", &[auth], b"").await;
    assert_eq!(r.status, 403);
    let r = s.req("GET", "/api/v1/session", &[auth], b"").await;
    assert_eq!(r.json()["role"], "operator");
    let r = s.req("GET", "/api/v1/tasks", &[("Authorization", "Bearer rvt_wrong")], b"").await;
    assert_eq!(r.status, 401);
    let r = s.req("GET", "/api/v1/tasks", &[("Authorization", "Basic YTpi")], b"").await;
    assert_eq!(r.status, 401);
    let r = s.send("DELETE", &format!("/api/v1/tokens/{id}"), &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 204);
    let r = s.req("GET", "/api/v1/tasks", &[auth], b"").await;
    assert_eq!(r.status, 401, "a deleted token stops working");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_bodies() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let origin = format!("https://{}", s.host());
    let h = [
        ("Cookie", admin.cookie.as_str()),
        ("X-CSRF-Token", admin.csrf.as_str()),
        ("Origin", origin.as_str()),
        ("Content-Type", "application/json"),
    ];
    // Declared too large.
    let big = vec![b' '; (1 << 20) + 1];
    let r = s.req("POST", "/api/v1/sources", &h, &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], "too_large");
    // Streamed too large (chunked, no Content-Length).
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 64 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut hc = h.to_vec();
    hc.push(("Transfer-Encoding", "chunked"));
    let r = s.req("POST", "/api/v1/sources", &hc, &chunked).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // Deep nesting, checked before parsing.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let r = s.req("POST", "/api/v1/sources", &h, deep.as_bytes()).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("deeper than 32"), "{}", r.text());
    let ok_depth = format!("{{\"name\":\"a\",\"url\":\"/x\",\"chap_user\":{}1{}}}", "[".repeat(31), "]".repeat(31));
    let r = s.req("POST", "/api/v1/sources", &h, ok_depth.as_bytes()).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("malformed JSON"), "{}", r.text());
    // Malformed.
    let r = s.req("POST", "/api/v1/sources", &h, b"{\"name\": ").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().starts_with("malformed JSON body"), "{}", r.text());
    let r = s.req("POST", "/api/v1/sources", &h, br#"{"name":"a","url":"/x","evil":1}"#).await;
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.text());
    // Not JSON.
    let mut ht = h.to_vec();
    ht[3] = ("Content-Type", "text/plain");
    let r = s.req("POST", "/api/v1/sources", &ht, br#"{"name":"a","url":"/x"}"#).await;
    assert_eq!(r.status, 415);
    // Empty body where one is needed.
    let r = s.req("POST", "/api/v1/backups", &h, b"").await;
    assert_eq!(r.status, 400);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn login_lockout_gives_429() {
    let s = TestServer::start().await;
    let _admin = s.admin().await;
    let mut last = None;
    for _ in 0..8 {
        let r = s.login(ADMIN, "wrong password!").await;
        if r.status == 429 {
            last = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = last.expect("locked out after repeated failures");
    assert_eq!(r.json()["code"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Even the right password is refused while locked.
    assert_eq!(s.login(ADMIN, PASSWORD).await.status, 429);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn redirect_listener_and_tls_versions() {
    let s = TestServer::start().await;
    let r = plain(s.http, b"GET /jobs?x=1 HTTP/1.1\r\nHost: box.example:8080\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some(format!("https://box.example:{}/jobs?x=1", s.https.port()).as_str()));
    let r = plain(s.http, b"GET / HTTP/1.1\r\nHost: a\r\nb\r\n\r\n").await;
    assert_eq!(r.status, 400);

    for (v, want) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let cfg = s.client_config(&[v]);
        let raw = format!("GET /api/v1/setup HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", s.host());
        let r = s.raw(cfg, raw.as_bytes()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.tls_version, Some(want));
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn ui_metrics_and_unknown_routes() {
    let s = TestServer::start().await;
    let r = s.req("GET", "/", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(r.text().contains("<html"));
    let index = r.body;
    let r = s.req("GET", "/jobs/42", &[], b"").await;
    assert_eq!(r.body, index, "UI routes get index.html");
    let r = s.req("GET", "/app.js", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    let r = s.req("GET", "/style.css", &[], b"").await;
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(s.req("GET", "/nope.js", &[], b"").await.status, 404);
    assert_eq!(s.req("POST", "/", &[], b"").await.status, 405);
    assert!(webserver::embedded_files().any(|f| f == "/index.html"));

    // Metrics need a token (or a session); a metrics token may read nothing else.
    assert_eq!(s.req("GET", "/metrics", &[], b"").await.status, 401);
    let admin = s.admin().await;
    let bearer = s.metrics_bearer(&admin).await;
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(s.req("GET", "/api/v1/dashboard", &auth, b"").await.status, 403);
    let r = s.req("GET", "/metrics", &auth, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(r.text().contains("rackvault_tasks_running"), "{}", r.text());

    let r = s.req("GET", "/api/v1/nothing", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");
    let r = s.req("PATCH", "/api/v1/tasks", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn certificate_upload_applies_to_new_connections() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    // A key that does not fit is refused and changes nothing.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let r = s
        .send(
            "PUT",
            "/api/v1/settings/certificate",
            &admin,
            &json!({"cert_pem": cert_pem, "key_pem": other.serialize_pem()}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r =
        s.send("PUT", "/api/v1/settings/certificate", &admin, &json!({"cert_pem": cert_pem, "key_pem": key_pem})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let fp = r.json()["tls_fingerprint_sha256"].as_str().unwrap().to_string();
    assert_ne!(fp, s.fingerprint);
    assert_eq!(fp, webserver::fingerprint_sha256(cert.der()));
    // cert.pem in the data dir is now the new one, and new connections present it.
    assert_eq!(s.cert_pem(), cert_pem.as_bytes());
    let r = s.get("/api/v1/settings", &admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tls_fingerprint_sha256"], fp.as_str());
    assert!(r.json()["data_dir"].is_string());
    s.stop().await.unwrap();
}

async fn wait_task(s: &TestServer, b: &Browser, id: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let r = s.get(&format!("/api/v1/tasks/{id}"), b).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.json();
        let state = t["state"].as_str().unwrap().to_string();
        if !matches!(state.as_str(), "queued" | "running") {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "task {id} still {state}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn backup_restore_verify_through_the_api() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let image = s.dir.path().join("vm1.raw");
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data.iter_mut().enumerate().take(3 << 20) {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    std::fs::write(&image, &data).unwrap();
    let r =
        s.send("POST", "/api/v1/sources", &admin, &json!({"name": "vm1", "url": image.display().to_string()})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let src = r.json()["id"].as_str().unwrap().to_string();
    let r = s.send("POST", &format!("/api/v1/sources/{src}/test"), &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ok"], true, "{}", r.text());

    let r = s.send("POST", "/api/v1/backups", &admin, &json!({"source": src})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let task = r.json();
    assert_eq!(task["kind"], "backup");
    let t = wait_task(&s, &admin, task["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let r = s.get(&format!("/api/v1/tasks/{}/log?from=0", t["id"]), &admin).await;
    let log = r.json();
    assert!(log["lines"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("backup complete")), "{log}");
    assert!(log["next"].as_u64().unwrap() > 0);
    assert_eq!(s.get("/api/v1/tasks/99999/log", &admin).await.status, 404, "an unknown task has no log");
    let r = s.get("/api/v1/tasks", &admin).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);

    let r = s.get("/api/v1/points", &admin).await;
    let points = r.json();
    assert_eq!(points.as_array().unwrap().len(), 1, "{points}");
    let spec = format!("{}@{}", points[0]["name"].as_str().unwrap(), points[0]["id"].as_u64().unwrap());

    let r = s.send("POST", "/api/v1/restores", &admin, &json!({"point": spec, "target": "back"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = wait_task(&s, &admin, r.json()["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let restored: Vec<_> = std::fs::read_dir(s.dir.path().join("restores/back")).unwrap().flatten().collect();
    assert_eq!(restored.len(), 1);
    assert_eq!(std::fs::read(restored[0].path()).unwrap(), data);

    let r = s.send("POST", "/api/v1/verifications", &admin, &json!({"point": spec})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = wait_task(&s, &admin, r.json()["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");

    let r = s.get("/api/v1/dashboard", &admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["usage"]["bytes_stored"].as_u64().unwrap() > 0);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn tape_library_through_the_api() {
    let s = TestServer::start_dev().await;
    let admin = s.admin().await;
    let operator = s.user(&admin, "op", "operator").await;
    let auditor = s.user(&admin, "aud", "auditor").await;

    let r = s.get("/api/v1/tape/inventory", &auditor).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let inv = r.json();
    let drives: Vec<_> = inv["elements"].as_array().unwrap().iter().filter(|e| e["element"] == "drive").collect();
    assert!(!drives.is_empty(), "{inv}");
    assert!(drives.iter().all(|d| d["drive_index"].is_u64()), "{inv}");
    let r = s.get("/api/v1/tape/pools", &auditor).await;
    assert_eq!(r.json()[0]["name"], "default", "{}", r.text());

    // Roles: labelling and pools are the admin's; load/unload the operator's; auditors read.
    let label = json!({"barcode": "RVT001L9", "pool": "default"});
    assert_eq!(s.send("POST", "/api/v1/tape/label", &operator, &label).await.status, 403);
    assert_eq!(s.send("POST", "/api/v1/tape/load", &auditor, &json!({"barcode": "RVT001L9"})).await.status, 403);
    let pool = json!({"allocation": "per-job", "retention_days": 14, "max_restore_tapes": null});
    assert_eq!(s.send("PUT", "/api/v1/tape/pools/weekly", &operator, &pool).await.status, 403);
    let r = s.send("PUT", "/api/v1/tape/pools/weekly", &admin, &pool).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["allocation"], "per-job");
    let r =
        s.send("PUT", "/api/v1/tape/pools/weekly", &admin, &json!({"allocation": "hourly", "retention_days": 1})).await;
    assert_eq!(r.status, 400, "{}", r.text());

    let r = s.send("POST", "/api/v1/tape/label", &admin, &label).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pool"], "default");
    let r = s.send("POST", "/api/v1/tape/label", &admin, &label).await;
    assert_eq!(r.status, 409, "relabelling a cartridge with data needs force: {}", r.text());
    let r = s.send("POST", "/api/v1/tape/label", &admin, &json!({"barcode": "NOPE01L9", "pool": "default"})).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("not in library"), "{}", r.text());

    let r = s.send("POST", "/api/v1/tape/load", &operator, &json!({"barcode": "RVT003L9"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let drive = r.json()["drive"].as_u64().unwrap();
    let r = s.send("POST", "/api/v1/tape/unload", &operator, &json!({"drive": drive})).await;
    assert_eq!((r.status, r.json()["barcode"].as_str()), (200, Some("RVT003L9")), "{}", r.text());

    // Back up the sample, destage it, restore it from tape, verify the cartridge.
    let src = s.get("/api/v1/sources", &admin).await.json()[0]["id"].as_str().unwrap().to_string();
    let r = s.send("POST", "/api/v1/backups", &operator, &json!({"source": src})).await;
    assert_eq!(wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await["state"], "succeeded");
    let r = s.send("POST", "/api/v1/tape/destages", &operator, &json!({"point": "sample-vm", "pool": "default"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let copies = s.get("/api/v1/tape/copies", &auditor).await.json();
    assert_eq!(copies[0]["point"]["name"], "sample-vm", "{copies}");
    assert_eq!(copies[0]["barcode"], "RVT001L9", "{copies}");

    let r = s.send("POST", "/api/v1/tape/restores", &operator, &json!({"point": "sample-vm", "target": "tape1"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["kind"], "tape-restore");
    let sample = std::fs::read(s.dir.path().join("samples/sample-vm.raw")).unwrap();
    let restored = std::fs::read_dir(s.dir.path().join("restores/tape1"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "raw"))
        .unwrap();
    assert!(std::fs::read(restored.path()).unwrap() == sample, "the disk restored from tape differs");

    let r = s.send("POST", "/api/v1/tape/verifications", &operator, &json!({"barcode": "RVT001L9"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");

    // The drive gauge in /metrics.
    let m = s.get("/metrics", &admin).await.text();
    assert!(m.contains("rackvault_tape_drive_loaded{drive="), "{m}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn notifications_through_the_api() {
    use std::io::{Read, Write};
    let s = TestServer::start().await;
    let admin = s.admin().await;
    let op = s.user(&admin, "olga", "operator").await;
    for (m, p) in [
        ("GET", "/api/v1/settings/notifications"),
        ("PUT", "/api/v1/settings/notifications"),
        ("POST", "/api/v1/notifications/test"),
    ] {
        let r = s.send(m, p, &op, &json!({})).await;
        assert_eq!(r.status, 403, "{m} {p}: {}", r.text());
    }
    // Nothing configured: the test says so.
    let r = s.send("POST", "/api/v1/notifications/test", &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Credentials without TLS are refused.
    let plain = json!({"smtp": {"host": "mail.example.test", "tls": "none", "user": "u", "password": "p",
                                "from": "rv@example.test", "to": ["ops@example.test"]}});
    let r = s.send("PUT", "/api/v1/settings/notifications", &admin, &plain).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("without TLS"), "{}", r.text());

    // A receiver on loopback answers one request.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).contains("\"version\"") || !buf.ends_with(b"}") {
            let n = c.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        c.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        String::from_utf8(buf).unwrap()
    });
    let hook = json!({"webhook": {"url": format!("http://127.0.0.1:{port}/rv"), "secret": "s3cret"}});
    let r = s.send("PUT", "/api/v1/settings/notifications", &admin, &hook).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.get("/api/v1/settings/notifications", &admin).await;
    assert_eq!(r.json()["webhook"]["has_secret"], true);
    assert!(!r.text().contains("s3cret"), "{}", r.text());
    let r = s.send("POST", "/api/v1/notifications/test", &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!([{"channel": "webhook", "target": format!("http://127.0.0.1:{port}"), "ok": true,
                                 "error": null, "error_kind": null}])
    );
    let request = got.join().unwrap();
    assert!(request.starts_with("POST /rv HTTP/1.1\r\n"), "{request}");
    assert!(request.contains("X-Rackvault-Event: test\r\n") && request.contains("X-Rackvault-Signature: sha256="));
    let r = s.get("/api/v1/audit", &admin).await;
    assert!(r.text().contains("notification sent"), "{}", r.text());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn retention_pin_delete_and_gc_follow_the_roles_and_the_stores_refusals() {
    let s = TestServer::start_dev().await;
    let admin = s.admin().await;
    let operator = s.user(&admin, "op", "operator").await;
    let auditor = s.user(&admin, "aud", "auditor").await;
    let src = s.get("/api/v1/sources", &admin).await.json()[0]["id"].as_str().unwrap().to_string();

    // A job that keeps one point, each immutable for a day.
    let job = json!({"name": "keep-one", "source": src, "schedule": "daily", "enabled": false,
                     "retention": {"keep_last": 1}, "immutable_days": 1});
    let r = s.send("POST", "/api/v1/jobs", &admin, &job).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["retention"]["keep_last"].as_u64(), r.json()["immutable_days"].as_u64()), (Some(1), Some(1)));
    let job_id = r.json()["id"].as_str().unwrap().to_string();
    // A rule of 0 is refused rather than read as "keep none".
    let zero =
        json!({"name": "zero", "source": src, "schedule": "daily", "retention": {"keep_last": 0, "keep_daily": 3}});
    assert_eq!(s.send("POST", "/api/v1/jobs", &admin, &zero).await.status, 400);

    // Two manual backups (no immutability), then the job's run prunes them: one point left.
    for _ in 0..2 {
        let r = s.send("POST", "/api/v1/backups", &operator, &json!({"source": src})).await;
        assert_eq!(wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await["state"], "succeeded");
    }
    // The auditor may preview the prune, not do it.
    let r = s.send("POST", "/api/v1/prune", &auditor, &json!({"job": job_id, "dry_run": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let preview = r.json();
    assert_eq!(
        (preview["dry_run"].as_bool(), preview["kept"].as_u64(), preview["pruned"].as_u64()),
        (Some(true), Some(1), Some(1)),
        "{preview}"
    );
    assert_eq!(preview["items"][1]["action"], "prune", "{preview}");
    assert!(!preview["items"][1]["why"].as_str().unwrap().is_empty(), "{preview}");
    assert_eq!(
        s.get("/api/v1/points", &auditor).await.json().as_array().unwrap().len(),
        2,
        "a dry run deletes nothing"
    );
    let r = s.send("POST", "/api/v1/prune", &auditor, &json!({"job": job_id, "dry_run": false})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = s.send("POST", "/api/v1/prune", &operator, &json!({"job": job_id})).await;
    assert_eq!(r.status, 403, "a real prune is the admin's: {}", r.text());
    let r = s.send("POST", "/api/v1/prune", &admin, &json!({"job": "nosuch", "dry_run": true})).await;
    assert_eq!(r.status, 404, "{}", r.text());

    let r = s.send("POST", &format!("/api/v1/jobs/{job_id}/run"), &operator, &serde_json::Value::Null).await;
    let t = wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let points = s.get("/api/v1/points", &auditor).await.json();
    assert_eq!(points.as_array().unwrap().len(), 1, "keep_last 1 after the job's backup: {points}");
    let p = &points[0];
    assert_eq!(
        (p["immutable"].as_bool(), p["pinned"].as_bool(), p["tape_only"].as_bool()),
        (Some(true), Some(false), Some(false)),
        "{p}"
    );
    assert!(p["immutable_until_unix"].as_u64().is_some(), "{p}");
    let immutable = format!("sample-vm@{}", p["id"]);

    // Delete: not the auditor's or operator's; refused by the store for an immutable point,
    // even for the admin, with its reason.
    for who in [&auditor, &operator] {
        let r = s.send("DELETE", &format!("/api/v1/points/{immutable}"), who, &serde_json::Value::Null).await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let r = s.send("DELETE", &format!("/api/v1/points/{immutable}"), &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "conflict");
    assert!(r.json()["error"].as_str().unwrap().contains("immutable until"), "{}", r.text());
    let r = s.send("DELETE", "/api/v1/points/sample-vm", &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 400, "a spec without an id: {}", r.text());

    // Pin: the admin's (204); a pinned point cannot be deleted until unpinned.
    let r = s.send("POST", "/api/v1/backups", &operator, &json!({"source": src})).await;
    let t = wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await;
    let plain = format!("sample-vm@{}", t["result"]["id"]);
    let pin = format!("/api/v1/points/{}/pin", plain.replace('@', "%40"));
    assert_eq!(s.send("PUT", &pin, &auditor, &json!({"pinned": true})).await.status, 403);
    assert_eq!(s.send("PUT", &pin, &operator, &json!({"pinned": true})).await.status, 403);
    let r = s.send("PUT", &pin, &admin, &json!({"pinned": true})).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let points = s.get("/api/v1/points", &auditor).await.json();
    assert!(points.as_array().unwrap().iter().any(|p| p["id"] == t["result"]["id"] && p["pinned"] == true), "{points}");
    let r = s.send("DELETE", &format!("/api/v1/points/{plain}"), &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("pinned"), "{}", r.text());
    assert_eq!(s.send("PUT", &pin, &admin, &json!({"pinned": false})).await.status, 204);
    let r = s.send("DELETE", &format!("/api/v1/points/{plain}"), &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s.send("PUT", "/api/v1/points/sample-vm@999/pin", &admin, &json!({"pinned": true})).await.status, 404);

    // GC: the operator starts it (the auditor may not); it runs as a task with a report.
    assert_eq!(s.send("POST", "/api/v1/gc", &auditor, &serde_json::Value::Null).await.status, 403);
    let r = s.send("POST", "/api/v1/gc", &operator, &serde_json::Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["kind"], "gc");
    let t = wait_task(&s, &operator, r.json()["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert!(t["result"]["gc"]["bytes_freed"].is_u64() && t["result"]["gc"]["dry_run"] == false, "{t}");
    let r = s.send("POST", "/api/v1/gc", &operator, &json!({"dry_run": true, "extra": 1})).await;
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.text());

    // Capacity: the auditor reads it; the dashboard carries it too.
    let r = s.get("/api/v1/capacity", &auditor).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert!(c["total_bytes"].as_u64().unwrap() > 0 && c["used_pct"].as_f64().is_some(), "{c}");
    assert_eq!((c["high_pct"].as_u64(), c["low_pct"].as_u64()), (Some(90), Some(80)), "{c}");
    assert_eq!(s.get("/api/v1/dashboard", &auditor).await.json()["capacity"]["high_pct"], 90);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn public_routes_take_at_most_16_kib_of_body() {
    let s = TestServer::start().await;
    let big = json!({"user": "x".repeat(20_000), "password": "0123456789ab"}).to_string();
    let r = s.req("POST", "/api/v1/login", &[("Content-Type", "application/json")], big.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let small = json!({"user": "x".repeat(10_000), "password": "0123456789ab"}).to_string();
    let r = s.req("POST", "/api/v1/login", &[("Content-Type", "application/json")], small.as_bytes()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    for path in ["/api/v1/setup", "/", "/app.js"] {
        let get = s.req("GET", path, &[], b"").await;
        let head = s.req("HEAD", path, &[], b"").await;
        assert_eq!((head.status, get.status), (200, 200), "{path}");
        assert!(head.body.is_empty(), "{path}: HEAD sent a body");
        assert_eq!(head.header("content-type"), get.header("content-type"), "{path}");
        assert_eq!(head.header("content-length"), Some(get.body.len().to_string().as_str()), "{path}");
    }
    let cookie = [("Cookie", admin.cookie.as_str())];
    let head = s.req("HEAD", "/api/v1/tasks", &cookie, b"").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(s.req("HEAD", "/api/v1/tasks", &[], b"").await.status, 401, "HEAD needs the same sign-in as GET");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn limit_zero_and_non_numbers_are_refused() {
    let s = TestServer::start().await;
    let admin = s.admin().await;
    for q in ["limit=0", "limit=-1", "limit=ten", "limit=1001", "before=x"] {
        let r = s.get(&format!("/api/v1/audit?{q}"), &admin).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.json()["code"], "invalid");
    }
    assert_eq!(s.get("/api/v1/audit?limit=1", &admin).await.json().as_array().map(Vec::len), Some(1));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_recovery_key_is_exported_to_admins_only_and_audited() {
    let s = TestServer::start_with(service::ApplianceOptions { encrypt_store: true, ..Default::default() }).await;
    let admin = s.admin().await;
    let operator = s.user(&admin, "olga", "operator").await;
    let r = s.send("POST", "/api/v1/settings/recovery-key", &operator, &serde_json::Value::Null).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = s.req("POST", "/api/v1/settings/recovery-key", &[], b"").await;
    assert_eq!(r.status, 401);
    let r = s.send("POST", "/api/v1/settings/recovery-key", &admin, &serde_json::Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["printable"].as_str().unwrap().starts_with("RVK1-"), "{v}");
    assert_eq!(v["file"]["kind"], "rackvault-recovery-key");
    assert_eq!(v["printable"].as_str().unwrap().replace('\n', "-"), v["file"]["key"].as_str().unwrap());
    assert_eq!(r.header("cache-control"), Some("no-store"), "a key must not be cached");
    let log = s.get("/api/v1/audit?limit=20", &admin).await.json();
    let text = log.to_string();
    assert!(text.contains("export recovery key"), "{text}");
    assert!(!text.contains(v["file"]["key"].as_str().unwrap()), "the key itself is never audited");
    s.stop().await.unwrap();
}
