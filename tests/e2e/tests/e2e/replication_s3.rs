//! Replication to a real S3 server (SeaweedFS, tests/peers/start-s3.sh) between real daemons:
//! an encrypted appliance's job backs up and replicates to a bucket on its own; the point is
//! deleted here and pulled back; a brand-new appliance given only the bucket, its credentials
//! and the recovery key restores it byte for byte; another key is refused; and the bucket
//! itself refuses deleting a point under object lock.

use std::path::Path;

use e2e::{rv, scratch};
use serde_json::{json, Value};

use crate::daemon::{free_port, start_with, Client, Daemon};

struct Appliance {
    _d: Daemon,
    c: Client,
}

fn appliance(dir: &Path, name: &str) -> Appliance {
    let data = dir.join(name);
    let d = start_with(&data, &dir.join(format!("{name}.log")), free_port(), &["--encrypt-store"]);
    let mut c = Client::new(&data, d.port);
    c.set_up(&data);
    c.sign_in();
    Appliance { _d: d, c }
}

fn wait_task(c: &Client, id: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let t = c.ok("GET", &format!("/api/v1/tasks/{id}"), None);
        if !matches!(t["state"].as_str(), Some("queued" | "running")) {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "task {id} did not end: {t}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[track_caller]
fn succeeded(c: &Client, id: u64) -> Value {
    let t = wait_task(c, id);
    assert_eq!(t["state"], "succeeded", "{t}");
    t
}

fn restore_sha(c: &Client, point: &str, target: &str) -> String {
    let t = c.ok("POST", "/api/v1/restores", Some(&json!({ "point": point, "target": target })));
    let t = succeeded(c, t["id"].as_u64().unwrap());
    let out = t["result"]["outputs"][0].as_str().expect("an output file").to_string();
    blake3::hash(&std::fs::read(out).expect("the restored disk")).to_hex().to_string()
}

fn add_bucket(c: &Client, env: &testkit::peers::S3Env, bucket: &str, lock: &str) -> String {
    let r = c.ok(
        "POST",
        "/api/v1/remotes",
        Some(&json!({
            "name": "cloud",
            "url": env.endpoint,
            "namespace": "site-a",
            "s3": { "bucket": bucket, "region": env.region, "access_key": env.access, "secret_key": env.secret, "lock": lock }
        })),
    );
    assert_eq!(r["kind"], "s3");
    assert!(!r.to_string().contains(&env.secret), "the secret key is never shown: {r}");
    r["id"].as_str().unwrap().to_string()
}

fn remote_points(c: &Client, remote: &str) -> Vec<Value> {
    c.ok("GET", &format!("/api/v1/remotes/{remote}/points"), None).as_array().unwrap().clone()
}

fn pull(c: &Client, remote: &str, point: &str) -> Value {
    let t = c.ok("POST", &format!("/api/v1/remotes/{remote}/points/{point}/pull"), None);
    assert_eq!(t["kind"], "pull");
    wait_task(c, t["id"].as_u64().unwrap())
}

#[test]
fn an_encrypted_job_replicates_to_s3_on_its_own_and_a_new_appliance_restores_it_with_only_the_recovery_key() {
    let Some(env) = testkit::peers::s3() else { return };
    let bucket = e2e::s3_bucket(&env, true);
    let dir = scratch("replication-s3");
    let a = appliance(dir.path(), "a");
    let remote = add_bucket(&a.c, &env, &bucket, "governance");
    let t = a.c.ok("POST", &format!("/api/v1/remotes/{remote}/test"), None);
    assert!(t["message"].as_str().unwrap().contains("takes the credentials"), "{t}");

    // A job backs up, then replicates to the bucket on its own.
    let src = a.c.ok("GET", "/api/v1/sources", None)[0].clone();
    let (src_id, disk) = (src["id"].as_str().unwrap().to_string(), src["url"].as_str().unwrap().to_string());
    let original = blake3::hash(&std::fs::read(&disk).unwrap()).to_hex().to_string();
    let job = a.c.ok(
        "POST",
        "/api/v1/jobs",
        Some(&json!({ "name": "nightly", "source": src_id, "schedule": "22:00", "replicate_to": "cloud" })),
    );
    let run = a.c.ok("POST", &format!("/api/v1/jobs/{}/run", job["id"].as_str().unwrap()), None);
    let run = succeeded(&a.c, run["id"].as_u64().unwrap());
    let spec = format!("{}@{}", run["result"]["name"].as_str().unwrap(), run["result"]["id"]);
    let rep = succeeded(&a.c, run["result"]["replicate_task"].as_u64().expect("the backup queued a replication"));
    assert_eq!(rep["kind"], "replicate");
    assert_eq!(rep["result"]["delivered_as"], format!("rackvault/site-a/{spec}"), "{rep}");
    assert!(rep["result"]["gc"].is_object(), "{rep}");
    // The point lists its copy in the bucket.
    let points = a.c.ok("GET", "/api/v1/points", None);
    let listed = points
        .as_array()
        .unwrap()
        .iter()
        .find(|p| format!("{}@{}", p["name"].as_str().unwrap(), p["id"]) == spec)
        .cloned();
    let copies = listed.expect("the point is listed")["remote_copies"].clone();
    assert_eq!(
        (copies[0]["remote"].as_str(), copies[0]["delivered_as"].as_str()),
        (Some("cloud"), Some(format!("rackvault/site-a/{spec}").as_str())),
        "{copies}"
    );
    let there = remote_points(&a.c, &remote);
    assert_eq!(
        (there.len(), there[0]["point"].as_str(), there[0]["here"].as_str()),
        (1, Some(spec.as_str()), Some(spec.as_str()))
    );

    // The local copy goes; the point comes back from the bucket and restores exactly.
    let (status, v) = a.c.call("DELETE", &format!("/api/v1/points/{spec}"), None);
    assert_eq!(status, 204, "{v}");
    let p = pull(&a.c, &remote, &spec);
    assert_eq!(p["state"], "succeeded", "{p}");
    let back = p["result"]["delivered_as"].as_str().unwrap().to_string();
    assert!(back.starts_with("site-a.sample-vm@"), "{p}");
    assert_eq!(restore_sha(&a.c, &back, "from-s3"), original, "restored from the bucket exactly");

    // Disaster: a new appliance with the recovery key, the bucket and its credentials only.
    let key = dir.path().join("recovery.key");
    rv!["key", "export", "--data-dir", dir.path().join("a"), "--out", &key].run().success();
    let b_data = dir.path().join("b");
    rv!["key", "restore", "--data-dir", &b_data, "--key-file", &key].run().success();
    let b = appliance(dir.path(), "b");
    let remote_b = add_bucket(&b.c, &env, &bucket, "");
    let listed = remote_points(&b.c, &remote_b);
    assert_eq!((listed.len(), listed[0]["here"].is_null()), (1, true), "{listed:?}");
    let p = pull(&b.c, &remote_b, &spec);
    assert_eq!(p["state"], "succeeded", "{p}");
    let on_b = p["result"]["delivered_as"].as_str().unwrap().to_string();
    assert_eq!(restore_sha(&b.c, &on_b, "dr"), original, "the new appliance restores byte for byte");

    // Another key: refused, saying what to do; nothing partial appears.
    let c = appliance(dir.path(), "c");
    let remote_c = add_bucket(&c.c, &env, &bucket, "");
    let p = pull(&c.c, &remote_c, &spec);
    assert_eq!((p["state"].as_str(), p["error_kind"].as_str()), (Some("failed"), Some("permanent")), "{p}");
    assert!(p["error"].as_str().unwrap().contains("rackvault key restore"), "{p}");
    assert!(c
        .c
        .ok("GET", "/api/v1/points", None)
        .as_array()
        .unwrap()
        .iter()
        .all(|x| !x["name"].as_str().unwrap().starts_with("site-a")));

    // Immutable for a day: the bucket itself refuses deleting it.
    a.c.ok(
        "PUT",
        &format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()),
        Some(&json!({ "name": "nightly", "source": src_id, "schedule": "22:00", "replicate_to": "cloud", "immutable_days": 1 })),
    );
    let run = a.c.ok("POST", &format!("/api/v1/jobs/{}/run", job["id"].as_str().unwrap()), None);
    let run = succeeded(&a.c, run["id"].as_u64().unwrap());
    let locked = format!("{}@{}", run["result"]["name"].as_str().unwrap(), run["result"]["id"]);
    succeeded(&a.c, run["result"]["replicate_task"].as_u64().unwrap());
    let listed = remote_points(&a.c, &remote);
    let entry = listed.iter().find(|p| p["point"] == locked.as_str()).expect("the locked point is listed");
    assert!(entry["locked_until_unix"].as_u64().is_some(), "{entry}");
    let (status, v) = a.c.call("DELETE", &format!("/api/v1/remotes/{remote}/points/{locked}"), None);
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("object lock"), "{v}");
}

#[test]
fn the_cli_replicates_an_encrypted_point_to_a_bucket_and_restores_it_from_there_into_a_new_store_with_the_key() {
    use e2e::{backup, hash_file, make_image, Profile, MIB};
    let Some(env) = testkit::peers::s3() else { return };
    let bucket = e2e::s3_bucket(&env, false);
    let dir = scratch("replication-s3-cli");
    let d = dir.path();
    let img = d.join("vm.raw");
    make_image(&img, 8 * MIB, 341, Profile::VM);
    let key = d.join("store.key");
    backup(&img, &d.join("a"), "vm", &["--encrypt", "--key-file", key.to_str().unwrap()]);
    let secret = d.join("s3.secret");
    std::fs::write(&secret, &env.secret).unwrap();
    let url = format!("s3://{bucket}/cli");
    let s3 = |v: Vec<std::ffi::OsString>| -> Vec<std::ffi::OsString> {
        let mut v = v;
        for a in ["--namespace", "site-a", "--endpoint", &env.endpoint, "--access-key", &env.access] {
            v.push(a.into());
        }
        v.push("--secret-file".into());
        v.push(secret.clone().into());
        v
    };
    let mut r = rv!["replicate", "vm", "--store", d.join("a"), "--to", &url, "--key-file", &key, "--json"];
    for a in s3(vec![]) {
        r = r.arg(a);
    }
    let sent = r.run().success().json();
    assert!(sent["bytes_sent"].as_u64().unwrap() > 0, "{sent}");
    // The bucket lists it; a new store with the recovery key restores it exactly.
    let mut l = rv!["pull", "--list", "--from", &url, "--json"];
    for a in s3(vec![]) {
        l = l.arg(a);
    }
    let listed = l.run().success().json();
    assert_eq!(listed[0]["point"]["name"], "vm", "{listed}");
    let to = d.join("back.raw");
    let mut rs = rv!["restore", "vm", "--store", d.join("b"), "--to", &to, "--from", &url, "--key-file", &key];
    for a in s3(vec![]) {
        rs = rs.arg(a);
    }
    rs.run().success();
    assert_eq!(hash_file(&to), hash_file(&img));
    // Another key: refused before anything is fetched, saying what to do.
    let other = d.join("other.key");
    backup(&img, &d.join("c"), "vm", &["--encrypt", "--key-file", other.to_str().unwrap()]);
    let mut rs =
        rv!["restore", "vm", "--store", d.join("c"), "--to", d.join("no.raw"), "--from", &url, "--key-file", &other];
    for a in s3(vec![]) {
        rs = rs.arg(a);
    }
    rs.run().failure().stderr_has(&["another key", "rackvault key restore"]);
}

#[test]
fn the_console_manages_remotes_while_the_daemon_is_stopped_and_never_prints_a_secret() {
    let dir = scratch("remote-cli");
    let data = dir.path().join("a");
    let d = start_with(&data, &dir.path().join("a.log"), free_port(), &[]);
    let secret = dir.path().join("s3.secret");
    std::fs::write(&secret, "very-secret-key-123").unwrap();
    let add = || {
        rv![
            "remote",
            "--data-dir",
            &data,
            "add",
            "cloud",
            "--url",
            "https://s3.example.com",
            "--namespace",
            "site-a",
            "--bucket",
            "backups",
            "--access-key",
            "AKIAEXAMPLE",
            "--secret-file",
            &secret,
            "--keep-last",
            "7"
        ]
    };
    // While the daemon runs its data directory is locked: use the UI or the API then.
    add().run().failure().stderr_has(&["another rackvault serve"]);
    drop(d);
    let out = add().run().success();
    assert!(out.stdout.contains("added remote cloud"), "{}", out.stdout);
    let listed = rv!["remote", "--data-dir", &data, "list", "--json"].run().success();
    let text = &listed.stdout;
    assert!(text.contains("backups") && !text.contains("very-secret-key-123"), "{text}");
    let config = std::fs::read_to_string(data.join("config.json")).unwrap();
    assert!(!config.contains("very-secret-key-123"), "the secret is sealed");
    rv!["remote", "--data-dir", &data, "delete", "cloud"].run().success();
    assert_eq!(rv!["remote", "--data-dir", &data, "list", "--json"].run().success().json(), serde_json::json!([]));
    rv!["remote", "--data-dir", dir.path().join("nothing"), "list"]
        .run()
        .failure()
        .stderr_has(&["not an appliance data directory"]);
}
