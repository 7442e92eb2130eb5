//! S3 and pull remotes: what their settings accept, and that their secrets never come back.

use super::*;

fn open(dir: &std::path::Path) -> std::sync::Arc<Appliance> {
    Appliance::open(dir, ApplianceOptions::default()).unwrap()
}

fn s3_input(url: &str, secret: Option<&str>) -> RemoteInput {
    RemoteInput {
        name: "cloud".into(),
        url: url.into(),
        fingerprint: String::new(),
        token: None,
        namespace: "site-a".into(),
        max_mbps: None,
        s3: Some(S3RemoteInput {
            bucket: "backups".into(),
            region: None,
            access_key: "AKIAEXAMPLE".into(),
            secret_key: secret.map(str::to_string),
            prefix: None,
            lock: Some("governance".into()),
            keep_last: Some(3),
        }),
        pull: false,
        schedule: None,
        window: None,
    }
}

#[test]
fn an_s3_remote_keeps_its_secret_sealed_and_never_shows_it() {
    let d = tempfile::tempdir().unwrap();
    let app = open(d.path());
    let r = app.put_remote(&admin(), None, s3_input("https://s3.example.com", Some("s3cr3t-value"))).unwrap();
    assert_eq!((r.kind.as_str(), r.fingerprint.as_str()), ("s3", ""));
    let s3 = r.s3.clone().unwrap();
    assert_eq!(
        (s3.region.as_str(), s3.prefix.as_str(), s3.lock.as_deref()),
        ("us-east-1", "rackvault", Some("governance"))
    );
    let shown = serde_json::to_string(&app.remotes(&admin()).unwrap()).unwrap();
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
    let stored = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    assert!(!stored.contains("s3cr3t-value"), "sealed in the configuration");
    let audit = serde_json::to_string(&app.audit_log(&admin(), 100, None).unwrap()).unwrap();
    assert!(!audit.contains("s3cr3t-value") && audit.contains("AKIAEXAMPLE"), "{audit}");
    // An edit without the secret keeps it.
    app.put_remote(&admin(), Some(&r.id), s3_input("https://s3.example.com", None)).unwrap();
    let c = lock(&app.config).remotes[0].s3.clone().unwrap();
    assert_eq!(app.sealer.open_sealed(&c.secret).unwrap(), "s3cr3t-value");
}

#[test]
fn an_s3_endpoint_is_https_or_a_loopback_address_and_a_bucket_name_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let app = open(d.path());
    for url in ["http://s3.example.com", "http://10.0.0.5:9000", "ftp://s3.example.com"] {
        let e = app.put_remote(&admin(), None, s3_input(url, Some("x"))).unwrap_err();
        assert!(e.to_string().contains("https://"), "{url}: {e}");
    }
    app.put_remote(&admin(), None, s3_input("http://127.0.0.1:9000", Some("x"))).unwrap();
    let mut bad = s3_input("https://s3.example.com", Some("x"));
    bad.name = "other".into();
    if let Some(s) = bad.s3.as_mut() {
        s.bucket = "Not_A_Bucket".into();
    }
    assert!(app.put_remote(&admin(), None, bad).unwrap_err().to_string().contains("bucket"));
    let mut no_secret = s3_input("https://s3.example.com", None);
    no_secret.name = "third".into();
    assert!(app.put_remote(&admin(), None, no_secret).unwrap_err().to_string().contains("secret key"));
}

#[test]
fn only_a_pull_remote_has_a_schedule_and_none_is_pushed_to() {
    let d = tempfile::tempdir().unwrap();
    let app = open(d.path());
    let fp = "AB:".repeat(31) + "AB";
    let mut input = RemoteInput {
        name: "prod".into(),
        url: "https://127.0.0.1:9".into(),
        fingerprint: fp,
        token: Some("rvt_x".into()),
        namespace: "site-a".into(),
        max_mbps: None,
        s3: None,
        pull: false,
        schedule: Some("03:00".into()),
        window: None,
    };
    let e = app.put_remote(&admin(), None, input.clone()).unwrap_err();
    assert!(e.to_string().contains("only a pull remote has a schedule"), "{e}");
    input.pull = true;
    input.schedule = Some("not a time".into());
    assert!(app.put_remote(&admin(), None, input.clone()).unwrap_err().to_string().contains("schedule"));
    input.schedule = Some("03:00".into());
    let r = app.put_remote(&admin(), None, input).unwrap();
    assert!(r.pull);
    let e = app.remote_points(&Principal::new("x", Role::Operator), "prod").unwrap_err();
    assert!(!e.to_string().is_empty());
    let e = app.replication_task("admin", "nothing@1", "prod").unwrap_err();
    assert!(e.to_string().contains("nothing") || e.to_string().contains("pulls from"), "{e}");
}

#[test]
fn a_pull_token_reads_only_the_appliances_own_points_and_a_session_reads_none() {
    let d = tempfile::tempdir().unwrap();
    let app = Appliance::open(d.path(), ApplianceOptions { dev: true, ..Default::default() }).unwrap();
    let src = app.sources(&admin()).unwrap().remove(0);
    let b = wait(&app, app.start_backup(&admin(), &src.id).unwrap().id);
    assert_eq!(b.state, TaskState::Succeeded, "{b:?}");
    let puller = Principal { user: "admin".into(), role: Role::Pull, token: Some("offsite".into()) };
    let offered = app.replica_source_points(&puller).unwrap();
    assert_eq!(offered.points.len(), 1);
    let root = offered.points[0].point.disks[0].root;
    let body = app.replica_source_records(&puller, &[root.to_hex(), "00".repeat(32)], false).unwrap();
    let (records, used) = store::pack::split_records(&body).unwrap();
    assert_eq!((records.len(), used), (1, body.len()), "the root node only; the unknown digest left out");
    assert_eq!(records[0].digest, root);
    assert!(matches!(app.replica_source_points(&admin()), Err(ServiceError::Forbidden(_))));
    let replicator = Principal { user: "admin".into(), role: Role::Replication, token: Some("site-a".into()) };
    assert!(matches!(
        app.replica_source_records(&replicator, &[root.to_hex()], false),
        Err(ServiceError::Forbidden(_))
    ));
}

#[test]
fn a_replication_outside_its_remotes_window_waits_connecting_to_nothing_and_can_be_cancelled() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let d = tempfile::tempdir().unwrap();
    let opts = ApplianceOptions { dev: true, runtime: Some(rt.handle().clone()), ..Default::default() };
    let app = Appliance::open(d.path(), opts).unwrap();
    let src = app.sources(&admin()).unwrap().remove(0);
    let b = wait(&app, app.start_backup(&admin(), &src.id).unwrap().id);
    let spec = match &b.result {
        Some(TaskResult::Backup(r)) => format!("{}@{}", r.report.name, r.report.id),
        other => panic!("{other:?}"),
    };
    // A window that opened an hour from now: closed now. Nothing listens on port 9.
    let now_min = (now_unix() % 86400) / 60;
    let (start, end) = ((now_min + 60) % 1440, (now_min + 120) % 1440);
    let mut input = s3_input("http://127.0.0.1:9", Some("x"));
    input.window = Some(format!("{:02}:{:02}-{:02}:{:02}", start / 60, start % 60, end / 60, end % 60));
    app.put_remote(&admin(), None, input).unwrap();
    let t = app.start_replication(&admin(), &spec, "cloud").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (lines, _) = app.task_log(&admin(), t.id, 0).unwrap();
        if lines.iter().any(|l| l.contains("outside the transfer window")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no wait logged: {lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(app.task(&admin(), t.id).unwrap().state, TaskState::Running);
    app.cancel_task(&admin(), t.id).unwrap();
    let done = wait(&app, t.id);
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    let bad = RemoteInput {
        window: Some("22-06".into()),
        name: "w2".into(),
        ..s3_input("https://s3.example.com", Some("x"))
    };
    assert!(app.put_remote(&admin(), None, bad).unwrap_err().to_string().contains("HH:MM-HH:MM"));
}
