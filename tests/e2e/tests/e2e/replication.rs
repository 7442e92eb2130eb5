//! Replication between two real daemons on loopback, each with its own data directory and
//! port: appliance A pushes restore points to appliance B over HTTPS, B's certificate pinned
//! by its fingerprint, with a replication token made on B. The point restores exactly on B,
//! a second run sends nothing, an incremental sends about the new chunks, and wrong tokens,
//! wrong fingerprints and sessions on the receiving routes are refused.

use std::path::Path;
use std::time::Duration;

use e2e::scratch;
use serde_json::{json, Value};

use crate::daemon::{free_port, start_on, start_with, Client, Daemon};

/// A daemon, set up and signed in.
struct Appliance {
    d: Daemon,
    c: Client,
    data: std::path::PathBuf,
}

fn appliance(dir: &Path, name: &str) -> Appliance {
    appliance_with(dir, name, &[])
}

/// An appliance started with more `serve` arguments (`--encrypt-store`).
fn appliance_with(dir: &Path, name: &str, extra: &[&str]) -> Appliance {
    let data = dir.join(name);
    let d = start_with(&data, &dir.join(format!("{name}.log")), free_port(), extra);
    let mut c = Client::new(&data, d.port);
    c.set_up(&data);
    c.sign_in();
    Appliance { d, c, data }
}

fn wait_task(c: &Client, id: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let t = c.ok("GET", &format!("/api/v1/tasks/{id}"), None);
        if !matches!(t["state"].as_str(), Some("queued" | "running")) {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "task {id} did not end: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[track_caller]
fn succeeded(c: &Client, t: &Value) -> Value {
    let t = wait_task(c, t["id"].as_u64().expect("a task id"));
    assert_eq!(t["state"], "succeeded", "{t}");
    t
}

fn backup(a: &Appliance, source: &str) -> Value {
    let t = a.c.ok("POST", "/api/v1/backups", Some(&json!({ "source": source })));
    succeeded(&a.c, &t)
}

fn restore_bytes(a: &Appliance, point: &str, target: &str) -> Vec<u8> {
    let t = a.c.ok("POST", "/api/v1/restores", Some(&json!({ "point": point, "target": target })));
    let t = succeeded(&a.c, &t);
    let out = t["result"]["outputs"][0].as_str().expect("an output file").to_string();
    std::fs::read(out).expect("the restored disk")
}

fn spec_of(p: &Value) -> String {
    format!("{}@{}", p["name"].as_str().unwrap_or(""), p["id"])
}

fn sha(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// Adds B as a remote of A with a new replication token for `namespace`; returns the token.
fn add_remote(a: &Appliance, b: &Appliance, name: &str, namespace: &str, url: &str) -> String {
    let tok = b.c.ok("POST", "/api/v1/tokens", Some(&json!({ "name": namespace, "role": "replication" })));
    let token = tok["token"].as_str().expect("the token's secret").to_string();
    // Trust on first use: A reads the fingerprint B presents; the admin compares it with B's.
    let fp = a.c.ok("POST", "/api/v1/remotes/fingerprint", Some(&json!({ "url": url })));
    let b_says = b.c.ok("GET", "/api/v1/settings", None)["tls_fingerprint_sha256"].clone();
    assert_eq!(fp["fingerprint"], b_says, "A sees the certificate B shows");
    a.c.ok(
        "POST",
        "/api/v1/remotes",
        Some(&json!({ "name": name, "url": url, "fingerprint": fp["fingerprint"], "token": token, "namespace": namespace })),
    );
    token
}

#[test]
fn a_point_pushed_to_a_second_appliance_restores_exactly_and_is_sent_only_once() {
    let dir = scratch("replication-push");
    let a = appliance(dir.path(), "a");
    let b = appliance(dir.path(), "b");
    let b_url = format!("https://127.0.0.1:{}", b.d.port);
    add_remote(&a, &b, "offsite", "site-a", &b_url);
    let remotes = a.c.ok("GET", "/api/v1/remotes", None);
    assert_eq!(remotes[0]["name"], "offsite");
    assert!(remotes[0].get("token").is_none(), "the token is never shown: {remotes}");

    let src = a.c.ok("GET", "/api/v1/sources", None)[0].clone();
    let (src_id, disk) = (src["id"].as_str().unwrap().to_string(), src["url"].as_str().unwrap().to_string());
    let first = backup(&a, &src_id);
    let spec = format!("{}@{}", first["result"]["name"].as_str().unwrap(), first["result"]["id"]);
    let t = a.c.ok("POST", &format!("/api/v1/points/{spec}/replicate"), Some(&json!({ "remote": "offsite" })));
    assert_eq!(t["kind"], "replicate");
    let r = succeeded(&a.c, &t)["result"].clone();
    let there = r["delivered_as"].as_str().expect("delivered").to_string();
    assert!(there.starts_with("site-a.sample-vm@"), "{r}");
    assert_eq!(r["already_there"], false);
    let points_b = b.c.ok("GET", "/api/v1/points", None);
    let on_b: Vec<&Value> = points_b.as_array().unwrap().iter().filter(|p| spec_of(p) == there).collect();
    assert_eq!(on_b.len(), 1, "B lists the replicated point: {points_b}");
    let original = std::fs::read(&disk).unwrap();
    assert_eq!(sha(&restore_bytes(&b, &there, "from-a")), sha(&original), "B restores A's disk exactly");

    let on_a = a.c.ok("GET", "/api/v1/points", None);
    let mine = on_a.as_array().unwrap().iter().find(|p| spec_of(p) == spec).expect("A lists its point");
    assert_eq!(
        (mine["remote_copies"][0]["remote"].as_str(), mine["remote_copies"][0]["delivered_as"].as_str()),
        (Some("offsite"), Some(there.as_str())),
        "{mine}"
    );

    // Again: nothing is sent.
    let t = a.c.ok("POST", &format!("/api/v1/points/{spec}/replicate"), Some(&json!({ "remote": "offsite" })));
    let again = succeeded(&a.c, &t)["result"].clone();
    assert_eq!((again["already_there"].as_bool(), again["bytes_sent"].as_u64()), (Some(true), Some(0)), "{again}");

    // An incremental after a 1% change sends at most 1.1x the new chunk bytes.
    let mut img = original.clone();
    let chunk = 256 << 10;
    for c in (0..img.len() / chunk).step_by(100) {
        for b in &mut img[c * chunk + 4096..c * chunk + 4096 + 512] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&disk, &img).unwrap();
    let second = backup(&a, &src_id);
    let new_bytes = second["result"]["bytes_written"].as_u64().unwrap();
    let spec2 = format!("{}@{}", second["result"]["name"].as_str().unwrap(), second["result"]["id"]);
    let t = a.c.ok("POST", &format!("/api/v1/points/{spec2}/replicate"), Some(&json!({ "remote": "offsite" })));
    let inc = succeeded(&a.c, &t)["result"].clone();
    let sent = inc["bytes_sent"].as_u64().unwrap();
    eprintln!("incremental: {sent} bytes sent for {new_bytes} new bytes on A");
    assert!(sent as f64 <= 1.1 * new_bytes as f64, "{sent} sent for {new_bytes} new: {inc}");
    let there2 = inc["delivered_as"].as_str().unwrap().to_string();
    assert_eq!(sha(&restore_bytes(&b, &there2, "from-a-2")), sha(&img));

    // A job that replicates after each backup: the backup queues the replication.
    let job = a.c.ok(
        "POST",
        "/api/v1/jobs",
        Some(&json!({ "name": "nightly", "source": src_id, "schedule": "22:00", "replicate_to": "offsite" })),
    );
    assert!(job["replicate_to"].is_string(), "{job}");
    let t = a.c.ok("POST", &format!("/api/v1/jobs/{}/run", job["id"].as_str().unwrap()), None);
    let run = succeeded(&a.c, &t);
    let chained = run["result"]["replicate_task"].as_u64().expect("the backup queued a replication");
    let rep = wait_task(&a.c, chained);
    assert_eq!((rep["state"].as_str(), rep["kind"].as_str()), (Some("succeeded"), Some("replicate")), "{rep}");
    let (status, v) = a.c.call("DELETE", &format!("/api/v1/remotes/{}", remotes[0]["id"].as_str().unwrap()), None);
    assert_eq!(status, 409, "a remote a job replicates to is not deleted: {v}");
    assert!(b.data.join("store").exists());
}

#[test]
fn wrong_tokens_wrong_fingerprints_and_sessions_on_the_receiving_routes_are_refused() {
    let dir = scratch("replication-refusals");
    let a = appliance(dir.path(), "a");
    let b = appliance(dir.path(), "b");
    let b_url = format!("https://127.0.0.1:{}", b.d.port);
    let token = add_remote(&a, &b, "offsite", "site-a", &b_url);
    let src = a.c.ok("GET", "/api/v1/sources", None)[0]["id"].as_str().unwrap().to_string();
    let p = backup(&a, &src);
    let spec = format!("{}@{}", p["result"]["name"].as_str().unwrap(), p["result"]["id"]);
    let remote_id = a.c.ok("GET", "/api/v1/remotes", None)[0]["id"].as_str().unwrap().to_string();
    let edit = |fields: Value| {
        let mut body = json!({ "name": "offsite", "url": b_url, "namespace": "site-a" });
        body["fingerprint"] = a.c.ok("GET", "/api/v1/remotes", None)[0]["fingerprint"].clone();
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        a.c.ok("PUT", &format!("/api/v1/remotes/{remote_id}"), Some(&body));
    };
    let fails = |what: &str| -> Value {
        let t = a.c.ok("POST", &format!("/api/v1/points/{spec}/replicate"), Some(&json!({ "remote": "offsite" })));
        let t = wait_task(&a.c, t["id"].as_u64().unwrap());
        assert_eq!(t["state"], "failed", "{what}: {t}");
        t
    };

    // A token B does not know.
    edit(json!({ "token": "rvt_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" }));
    let t = fails("wrong token");
    assert!(t["error"].as_str().unwrap().contains("refused the token"), "{t}");
    assert_eq!(t["error_kind"], "permanent", "{t}");

    // The right token, but a namespace it does not deliver into.
    edit(json!({ "token": token, "namespace": "site-b" }));
    let t = fails("wrong namespace");
    assert!(t["error"].as_str().unwrap().contains("namespace site-a, not site-b"), "{t}");

    // A pinned fingerprint that is not B's.
    let wrong = "AA:".repeat(31) + "AA";
    edit(json!({ "fingerprint": wrong, "namespace": "site-a" }));
    let t = fails("wrong fingerprint");
    let e = t["error"].as_str().unwrap();
    assert!(e.contains("fingerprint") && e.contains("not the pinned"), "{t}");
    assert_eq!(t["error_kind"], "permanent", "{t}");

    // Nothing arrived on B.
    assert!(b.c.ok("GET", "/api/v1/points", None).as_array().unwrap().iter().all(|p| !spec_of(p).starts_with("site-")));

    // An admin's session may not deliver points; a replication token may do nothing else.
    let (status, v) = b.c.call("POST", "/api/v1/replica/lacking", Some(&json!({ "digests": [] })));
    assert_eq!(status, 403, "{v}");
    let tok = json!({ "name": "m", "role": "replication" });
    let (status, v) = b.c.call(
        "POST",
        "/api/v1/users",
        Some(&json!({ "name": "r", "password": "0123456789ab", "role": "replication" })),
    );
    assert_eq!(status, 400, "a person cannot have the replication role: {v}");
    let (status, _) = b.c.call("POST", "/api/v1/tokens", Some(&tok));
    assert_eq!(status, 200);
    let (status, v) =
        b.c.call("POST", "/api/v1/tokens", Some(&json!({ "name": "Not A Namespace", "role": "replication" })));
    assert_eq!(status, 400, "a replication token is named as its namespace: {v}");
}

/// A TCP proxy on loopback in front of `to`: counts the bytes clients send through it, and
/// cuts the first `cuts` connections after a random number of those bytes.
struct CutProxy {
    port: u16,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn cut_proxy(to: u16, cuts: u64, seed: u64) -> CutProxy {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let rng = Arc::new(Mutex::new(e2e::Rng::new(seed)));
    let (sent2, cut2) = (sent.clone(), cut.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", to)) else { continue };
            // Cut after 64 KiB to 3 MiB of the client's bytes, while cuts remain.
            let budget = if cut2.load(Ordering::Relaxed) < cuts {
                Some((64 << 10) + rng.lock().unwrap().below(3 << 20))
            } else {
                None
            };
            let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = u2.read(&mut buf) {
                    if n == 0 || c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c2.shutdown(Shutdown::Both);
            });
            let (sent, cut) = (sent2.clone(), cut2.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                let mut through = 0u64;
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let n = match budget {
                        Some(b) if through + n as u64 >= b => {
                            let part = (b - through) as usize;
                            let _ = upstream.write_all(&buf[..part]);
                            sent.fetch_add(part as u64, Ordering::Relaxed);
                            cut.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        _ => n,
                    };
                    if upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    through += n as u64;
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = upstream.shutdown(Shutdown::Both);
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    CutProxy { port, sent, cut }
}

#[test]
fn a_replication_cut_20_times_by_a_proxy_resumes_and_sends_under_1_2_times_the_data() {
    use std::sync::atomic::Ordering;
    let dir = scratch("replication-cuts");
    let a = appliance(dir.path(), "a");
    let b = appliance(dir.path(), "b");
    let seed = std::env::var("CUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xc0ffee);
    let proxy = cut_proxy(b.d.port, 20, seed);
    add_remote(&a, &b, "offsite", "site-a", &format!("https://127.0.0.1:{}", proxy.port));
    let src = a.c.ok("GET", "/api/v1/sources", None)[0].clone();
    let disk = src["url"].as_str().unwrap().to_string();
    let p = backup(&a, src["id"].as_str().unwrap());
    let stored = p["result"]["bytes_written"].as_u64().unwrap();
    let spec = format!("{}@{}", p["result"]["name"].as_str().unwrap(), p["result"]["id"]);
    let mut runs = 0;
    let delivered = loop {
        runs += 1;
        assert!(runs <= 40, "no success after 40 runs ({} cuts)", proxy.cut.load(Ordering::Relaxed));
        let t = a.c.ok("POST", &format!("/api/v1/points/{spec}/replicate"), Some(&json!({ "remote": "offsite" })));
        let t = wait_task(&a.c, t["id"].as_u64().unwrap());
        match t["state"].as_str() {
            Some("succeeded") => break t["result"]["delivered_as"].as_str().unwrap().to_string(),
            _ => {
                assert_eq!(t["error_kind"], "transient", "a cut link is a transient failure: {t}");
                // No partial point is ever visible on B.
                let points = b.c.ok("GET", "/api/v1/points", None);
                assert!(points.as_array().unwrap().iter().all(|p| !spec_of(p).starts_with("site-a.")), "{points}");
            }
        }
    };
    let cuts = proxy.cut.load(Ordering::Relaxed);
    let sent = proxy.sent.load(Ordering::Relaxed);
    eprintln!(
        "{cuts} cuts over {runs} run(s): {sent} bytes through the proxy for {stored} stored bytes ({:.3}x)",
        sent as f64 / stored as f64
    );
    assert_eq!(cuts, 20, "the proxy cut 20 connections");
    assert!((sent as f64) < 1.2 * stored as f64, "{sent} bytes sent for {stored} stored");
    assert_eq!(sha(&restore_bytes(&b, &delivered, "after-cuts")), sha(&std::fs::read(&disk).unwrap()));
}

#[test]
fn kill_dash_nine_of_the_receiver_20_times_mid_transfer_leaves_its_store_consistent_and_the_transfer_resumes() {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("CRASH_SEED={seed}");
    let mut rng = e2e::Rng::new(seed);
    let dir = scratch("replication-kill");
    // A's store is encrypted and B holds no key of it: B keeps what it gets as foreign
    // records, the harder case (the cut-link test above covers unencrypted stores).
    let a = appliance_with(dir.path(), "a", &["--encrypt-store"]);
    let mut b = appliance(dir.path(), "b");
    let b_url = format!("https://127.0.0.1:{}", b.d.port);
    add_remote(&a, &b, "offsite", "site-a", &b_url);
    // 2 MB/s: the sample's ~65 MB take half a minute, so 20 kills a second or so into each
    // run land in the middle of the transfer.
    let remote_id = a.c.ok("GET", "/api/v1/remotes", None)[0]["id"].as_str().unwrap().to_string();
    let fp = a.c.ok("GET", "/api/v1/remotes", None)[0]["fingerprint"].clone();
    a.c.ok(
        "PUT",
        &format!("/api/v1/remotes/{remote_id}"),
        Some(&json!({ "name": "offsite", "url": b_url, "fingerprint": fp, "namespace": "site-a", "max_mbps": 2 })),
    );
    let src = a.c.ok("GET", "/api/v1/sources", None)[0].clone();
    let disk = src["url"].as_str().unwrap().to_string();
    let p = backup(&a, src["id"].as_str().unwrap());
    let spec = format!("{}@{}", p["result"]["name"].as_str().unwrap(), p["result"]["id"]);
    let b_log = dir.path().join("b.log");
    let mut kills = 0;
    let mut delivered = None;
    for round in 0..60 {
        let t = a.c.ok("POST", &format!("/api/v1/points/{spec}/replicate"), Some(&json!({ "remote": "offsite" })));
        let id = t["id"].as_u64().unwrap();
        if kills < 20 {
            std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
            let _ = b.d.child.kill(); // SIGKILL, by PID: our own child
            let _ = b.d.child.wait();
            kills += 1;
            // A's task gives up once its retries find B gone.
            let t = wait_task(&a.c, id);
            // Without its daemon, B's store is consistent: only complete points, no damage.
            e2e::verify_clean(&b.data.join("store"));
            let port = b.d.port;
            b.d = start_on(&b.data, &b_log, port);
            b.c.sign_in();
            let points = b.c.ok("GET", "/api/v1/points", None);
            let from_a = points.as_array().unwrap().iter().filter(|p| spec_of(p).starts_with("site-a.")).count();
            eprintln!("round {round}: killed B; A's task ended {}; {from_a} point(s) from A on B", t["state"]);
            if t["state"] == "succeeded" {
                assert_eq!(from_a, 1, "{points}");
                delivered = Some(t["result"]["delivered_as"].as_str().unwrap().to_string());
                break;
            }
            assert_eq!(t["error_kind"], "transient", "a vanished receiver is a transient failure: {t}");
            assert_eq!(from_a, 0, "no partial point is visible: {points}");
            if kills == 20 {
                // The rest at full speed.
                a.c.ok(
                    "PUT",
                    &format!("/api/v1/remotes/{remote_id}"),
                    Some(&json!({ "name": "offsite", "url": b_url, "fingerprint": fp, "namespace": "site-a" })),
                );
            }
            continue;
        }
        let t = wait_task(&a.c, id);
        assert_eq!(t["state"], "succeeded", "after the kills the replication completes: {t}");
        let r = &t["result"];
        eprintln!("the last run sent {} of {} chunks offered", r["chunks_sent"], r["chunks_offered"]);
        assert!(
            r["chunks_sent"].as_u64().unwrap() < r["chunks_offered"].as_u64().unwrap(),
            "what B kept across the kills is not sent again: {r}"
        );
        delivered = Some(t["result"]["delivered_as"].as_str().unwrap().to_string());
        break;
    }
    assert_eq!(kills, 20, "B was killed 20 times mid-transfer");
    let there = delivered.expect("delivered");
    // B restores it once given A's recovery key.
    let key = dir.path().join("a.rvkey");
    e2e::rv!["key", "export", "--data-dir", &a.data, "--out", &key].run().success();
    let port = b.d.port;
    let _ = b.d.child.kill();
    let _ = b.d.child.wait();
    e2e::rv!["key", "add-replica", "--data-dir", &b.data, "--key-file", &key].run().success();
    b.d = start_on(&b.data, &b_log, port);
    b.c.sign_in();
    assert_eq!(sha(&restore_bytes(&b, &there, "after-kills")), sha(&std::fs::read(&disk).unwrap()));
    let points = b.c.ok("GET", "/api/v1/points", None);
    let from_a = points.as_array().unwrap().iter().filter(|p| spec_of(p).starts_with("site-a.")).count();
    assert_eq!(from_a, 1, "one copy, however many runs: {points}");
}

#[test]
fn the_cli_replicates_a_store_point_to_an_appliance_and_refuses_a_wrong_fingerprint() {
    let dir = scratch("replication-cli");
    let b = appliance(dir.path(), "b");
    let url = format!("https://127.0.0.1:{}", b.d.port);
    let tok = b.c.ok("POST", "/api/v1/tokens", Some(&json!({ "name": "cli", "role": "replication" })));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, tok["token"].as_str().unwrap()).unwrap();
    // A store made by the CLI, from a small image.
    let img = dir.path().join("vm.raw");
    let mut rng = e2e::Rng::new(7);
    let mut bytes = vec![0u8; 8 << 20];
    rng.fill(&mut bytes[..6 << 20]);
    std::fs::write(&img, &bytes).unwrap();
    let store = dir.path().join("store");
    e2e::rv!["backup", &img, "--store", &store, "--name", "vm"].run().success();
    let fp = e2e::rv!["remote-fingerprint", &url].run().success();
    let fp = fp.stdout.trim().to_string();
    assert_eq!(json!(fp), b.c.ok("GET", "/api/v1/settings", None)["tls_fingerprint_sha256"]);
    let out = e2e::rv![
        "replicate",
        "vm",
        "--store",
        &store,
        "--to",
        &url,
        "--fingerprint",
        &fp,
        "--token-file",
        &token_file,
        "--namespace",
        "cli",
        "--json"
    ]
    .run()
    .success();
    let r = out.json();
    let there = r["delivered_as"].as_str().unwrap().to_string();
    assert!(there.starts_with("cli.vm@"), "{r}");
    assert_eq!(sha(&restore_bytes(&b, &there, "from-cli")), sha(&bytes));
    // A fingerprint that is not B's: refused before anything is sent.
    let wrong = "00:".repeat(31) + "00";
    e2e::rv![
        "replicate",
        "vm",
        "--store",
        &store,
        "--to",
        &url,
        "--fingerprint",
        &wrong,
        "--token-file",
        &token_file,
        "--namespace",
        "cli"
    ]
    .run()
    .failure()
    .stderr_has(&["not the pinned"]);
}

#[test]
fn an_offsite_appliance_pulls_new_points_with_a_pull_token_that_can_do_nothing_else() {
    let dir = scratch("replication-pull");
    let a = appliance(dir.path(), "a");
    let b = appliance(dir.path(), "b");
    // On the source, a token of the role pull for the offsite box; the source holds nothing
    // that reaches the offsite box.
    let tok = a.c.ok("POST", "/api/v1/tokens", Some(&json!({ "name": "offsite-b", "role": "pull" })));
    let token = tok["token"].as_str().unwrap().to_string();
    let a_url = format!("https://127.0.0.1:{}", a.d.port);
    let fp = b.c.ok("POST", "/api/v1/remotes/fingerprint", Some(&json!({ "url": a_url })));
    let remote = b.c.ok(
        "POST",
        "/api/v1/remotes",
        Some(&json!({ "name": "prod", "url": a_url, "fingerprint": fp["fingerprint"], "token": token,
                      "namespace": "site-a", "pull": true, "schedule": "03:00" })),
    );
    assert_eq!((remote["pull"].as_bool(), remote["schedule"].as_str()), (Some(true), Some("03:00")), "{remote}");
    let rid = remote["id"].as_str().unwrap().to_string();

    let src = a.c.ok("GET", "/api/v1/sources", None)[0].clone();
    let (src_id, disk) = (src["id"].as_str().unwrap().to_string(), src["url"].as_str().unwrap().to_string());
    let first = backup(&a, &src_id);
    let spec = format!("{}@{}", first["result"]["name"].as_str().unwrap(), first["result"]["id"]);
    let offered = b.c.ok("GET", &format!("/api/v1/remotes/{rid}/points"), None);
    assert_eq!((offered[0]["point"].as_str(), offered[0]["here"].is_null()), (Some(spec.as_str()), true), "{offered}");

    // What the schedule runs: every point not here yet.
    let t = b.c.ok("POST", &format!("/api/v1/remotes/{rid}/pull"), None);
    assert_eq!(t["kind"], "pull");
    let r = succeeded(&b.c, &t)["result"].clone();
    let pulled = r["pulled"][0].as_str().expect("one point pulled").to_string();
    assert!(pulled.starts_with("site-a.sample-vm@"), "{r}");
    let original = std::fs::read(&disk).unwrap();
    assert_eq!(sha(&restore_bytes(&b, &pulled, "pulled")), sha(&original), "B restores A's disk exactly");
    let offered = b.c.ok("GET", &format!("/api/v1/remotes/{rid}/points"), None);
    assert_eq!(offered[0]["here"].as_str(), Some(pulled.as_str()));
    // Again: nothing new, nothing fetched.
    let t = b.c.ok("POST", &format!("/api/v1/remotes/{rid}/pull"), None);
    let again = succeeded(&b.c, &t)["result"].clone();
    assert_eq!(
        (again["pulled"].as_array().map(Vec::len), again["bytes_fetched"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );

    // The pull token reads points and records, nothing else.
    let puller = Client::with_token(&a.data, a.d.port, &token);
    let (status, v) = puller.call("GET", "/api/v1/replica/source/points", None);
    assert_eq!(status, 200, "{v}");
    for (method, path) in [
        ("GET", "/api/v1/points".to_string()),
        ("DELETE", format!("/api/v1/points/{spec}")),
        ("GET", "/api/v1/settings".to_string()),
    ] {
        let (status, v) = puller.call(method, &path, None);
        assert_eq!(status, 403, "{method} {path} with a pull token: {v}");
    }
    let (status, v) = puller.call("POST", "/api/v1/replica/lacking", Some(&json!({ "digests": [] })));
    assert_eq!(status, 403, "a pull token delivers nothing: {v}");
    // Nor may a session read the source routes, and a pull remote is not pushed to.
    let (status, v) = a.c.call("GET", "/api/v1/replica/source/points", None);
    assert_eq!(status, 403, "{v}");
    let b_src = b.c.ok("GET", "/api/v1/sources", None)[0]["id"].as_str().unwrap().to_string();
    let mine = backup(&b, &b_src);
    let mine = format!("{}@{}", mine["result"]["name"].as_str().unwrap(), mine["result"]["id"]);
    let (status, v) = b.c.call("POST", &format!("/api/v1/points/{mine}/replicate"), Some(&json!({ "remote": "prod" })));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("pulls from"), "{v}");
}

#[test]
fn an_appliance_without_the_key_keeps_an_encrypted_appliances_points_verifies_them_and_restores_them_once_given_the_recovery_key(
) {
    let dir = scratch("replication-without-key");
    let a = appliance_with(dir.path(), "a", &["--encrypt-store"]);
    // B has no key of A's store (its own store is not even encrypted).
    let b = appliance(dir.path(), "b");
    let b_url = format!("https://127.0.0.1:{}", b.d.port);
    add_remote(&a, &b, "offsite", "site-a", &b_url);
    let src = a.c.ok("GET", "/api/v1/sources", None)[0].clone();
    let (src_id, disk) = (src["id"].as_str().unwrap().to_string(), src["url"].as_str().unwrap().to_string());
    let first = backup(&a, &src_id);
    let spec = format!("{}@{}", first["result"]["name"].as_str().unwrap(), first["result"]["id"]);

    // Pushed: B keeps it without the key.
    let t = a.c.ok("POST", &format!("/api/v1/points/{spec}/replicate"), Some(&json!({ "remote": "offsite" })));
    let r = succeeded(&a.c, &t)["result"].clone();
    assert_eq!(r["without_key"], true, "{r}");
    let pushed = r["delivered_as"].as_str().unwrap().to_string();
    // Pulled by B on its own schedule: kept without the key too (A hands out its tree nodes
    // opened, its data sealed).
    let tok = a.c.ok("POST", "/api/v1/tokens", Some(&json!({ "name": "offsite-b", "role": "pull" })));
    let a_url = format!("https://127.0.0.1:{}", a.d.port);
    let fp = b.c.ok("POST", "/api/v1/remotes/fingerprint", Some(&json!({ "url": a_url })));
    let remote = b.c.ok(
        "POST",
        "/api/v1/remotes",
        Some(&json!({ "name": "prod", "url": a_url, "fingerprint": fp["fingerprint"], "token": tok["token"],
                      "namespace": "site-p", "pull": true })),
    );
    let t = b.c.ok("POST", &format!("/api/v1/remotes/{}/pull", remote["id"].as_str().unwrap()), None);
    let pulled = succeeded(&b.c, &t)["result"]["pulled"][0].as_str().expect("one point pulled").to_string();

    // B verifies the ciphertext: clean, its chunks checked by checksum.
    let t = b.c.ok("POST", "/api/v1/verifications", Some(&json!({})));
    let v = succeeded(&b.c, &t)["result"].clone();
    assert!(v.to_string().contains("chunks_checksum_only"), "{v}");
    // It cannot restore them: the task says what it needs.
    for point in [&pushed, &pulled] {
        let t = b.c.ok("POST", "/api/v1/restores", Some(&json!({ "point": point, "target": "nokey" })));
        let t = wait_task(&b.c, t["id"].as_u64().unwrap());
        assert_eq!(t["state"], "failed", "{t}");
        assert!(t.to_string().contains("recovery key"), "{t}");
    }

    // Given A's recovery key (daemon stopped), B restores both exactly.
    let key = dir.path().join("a.rvkey");
    e2e::rv!["key", "export", "--data-dir", &a.data, "--out", &key].run().success();
    let Appliance { d: b_d, data: b_data, .. } = b;
    let port = b_d.port;
    drop(b_d);
    e2e::rv!["key", "add-replica", "--data-dir", &b_data, "--key-file", &key].run().success();
    let b_d = start_on(&b_data, &dir.path().join("b.log"), port);
    let mut b_c = Client::new(&b_data, b_d.port);
    b_c.sign_in();
    let b = Appliance { d: b_d, c: b_c, data: b_data };
    let original = sha(&std::fs::read(&disk).unwrap());
    assert_eq!(sha(&restore_bytes(&b, &pushed, "pushed")), original, "the pushed replica restores exactly");
    assert_eq!(sha(&restore_bytes(&b, &pulled, "pulled")), original, "the pulled replica restores exactly");
    // From A's console (its daemon stopped), the point goes to the remote named "offsite"
    // with that remote's settings and sealed token: it is there already.
    let Appliance { d: a_d, data: a_data, .. } = a;
    drop(a_d);
    let out = e2e::rv!["replicate", &spec, "--data-dir", &a_data, "--to", "offsite"].run().success();
    assert!(out.stdout.contains("to offsite as") && out.stdout.contains("there already"), "{}", out.context());
    e2e::rv!["replicate", &spec, "--data-dir", &a_data, "--to", "nowhere"].run().failure().stderr_has(&["nowhere"]);
    // The command line reads them with the key given for the run (the daemon stopped).
    let Appliance { d: b_d, data: b_data, .. } = b;
    drop(b_d);
    let out = dir.path().join("cli.raw");
    e2e::rv!["restore", &pushed, "--store", b_data.join("store"), "--to", &out, "--replica-key", &key].run().success();
    assert_eq!(sha(&std::fs::read(&out).unwrap()), original);
    e2e::rv!["restore", &pulled, "--store", b_data.join("store"), "--to", dir.path().join("cli2.raw")]
        .run()
        .failure()
        .stderr_has(&["recovery key"]);
}
