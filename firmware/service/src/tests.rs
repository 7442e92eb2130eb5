//! Service API tests on a temporary data directory.

use super::*;
use std::time::Duration;

fn admin() -> Principal {
    Principal::new("admin", Role::Admin)
}

fn open() -> (tempfile::TempDir, Arc<Appliance>) {
    let dir = tempfile::tempdir().unwrap();
    let app = Appliance::open(dir.path(), ApplianceOptions::default()).unwrap();
    (dir, app)
}

/// A source without secrets or limits.
fn source_input(name: &str, url: String) -> SourceInput {
    SourceInput {
        name: name.into(),
        url,
        chap_user: None,
        chap_secret: None,
        mutual_user: None,
        mutual_secret: None,
        max_read_mbps: None,
    }
}

/// Adds a source without secrets or limits.
fn local_source(app: &Appliance, name: &str, url: String) -> SourceInfo {
    app.put_source(&admin(), None, source_input(name, url)).unwrap()
}

/// Settings with `max_tasks` tasks (one per host and datastore) and the library `changer`;
/// the rest unchanged.
fn settings_input(max_tasks: usize, changer: Option<String>) -> SettingsInput {
    SettingsInput {
        max_tasks,
        max_tasks_per_host: 1,
        max_tasks_per_datastore: 1,
        tape_changer: changer,
        time_zone: None,
        capacity_high_pct: None,
        capacity_low_pct: None,
        maintenance_schedule: None,
        verify_schedule: None,
        verify_skip_days: None,
    }
}

/// Opens `dir` again once the appliance dropped before is gone: a task's thread may still
/// hold the state environment for a moment after its record says it ended.
fn reopen(dir: &std::path::Path) -> Arc<Appliance> {
    for _ in 0..100 {
        match Appliance::open(dir, ApplianceOptions::default()) {
            Err(ServiceError::Store(store::StoreError::Index { .. })) => std::thread::sleep(Duration::from_millis(50)),
            other => return other.unwrap(),
        }
    }
    panic!("{} did not open again within 5 s", dir.display())
}

fn wait(app: &Appliance, id: u64) -> TaskInfo {
    for _ in 0..600 {
        let t = app.task(&admin(), id).unwrap();
        if t.state.is_finished() {
            return t;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("task {id} did not finish");
}

#[test]
fn setup_once_then_login_with_lockout() {
    let (_d, app) = open();
    assert!(app.needs_setup());
    assert!(app
        .setup("admin", "short", &app.setup_code().unwrap_or_default(), "127.0.0.1")
        .unwrap_err()
        .to_string()
        .contains("at least"));
    app.setup("admin", "correct horse battery", &app.setup_code().unwrap_or_default(), "127.0.0.1").unwrap();
    assert!(!app.needs_setup());
    assert!(matches!(
        app.setup("admin2", "correct horse battery", &app.setup_code().unwrap_or_default(), "127.0.0.1"),
        Err(ServiceError::Conflict(_))
    ));
    let s = app.login("admin", "correct horse battery", "127.0.0.1").unwrap();
    assert_eq!(s.principal.role, Role::Admin);
    assert_eq!(app.session(&s.token).unwrap().csrf, s.csrf);
    app.logout(&s.token);
    assert!(app.session(&s.token).is_none());
    for _ in 0..5 {
        assert!(matches!(app.login("admin", "wrong", "10.0.0.1"), Err(ServiceError::Unauthenticated(_))));
    }
    match app.login("admin", "correct horse battery", "10.0.0.1") {
        Err(ServiceError::RateLimited { retry_after_s }) => assert!(retry_after_s > 0),
        other => panic!("expected a lockout, got {other:?}"),
    }
    let log = app.audit_log(&admin(), 100, None).unwrap();
    assert!(log.iter().any(|e| e.action == "login failed"));
}

#[test]
fn roles_are_enforced_by_the_service() {
    let (_d, app) = open();
    app.setup("admin", "correct horse battery", &app.setup_code().unwrap_or_default(), "127.0.0.1").unwrap();
    let auditor = Principal::new("eve", Role::Auditor);
    let operator = Principal::new("op", Role::Operator);
    assert!(matches!(app.start_backup(&auditor, "x"), Err(ServiceError::Forbidden(_))));
    assert!(matches!(app.users(&operator), Err(ServiceError::Forbidden(_))));
    let input = SourceInput {
        name: "s".into(),
        url: "/x".into(),
        chap_user: None,
        chap_secret: None,
        mutual_user: None,
        mutual_secret: None,
        max_read_mbps: None,
    };
    assert!(matches!(app.put_source(&operator, None, input), Err(ServiceError::Forbidden(_))));
    assert!(app.tasks(&auditor).is_ok());
    let (info, secret) = app.create_api_token(&admin(), "script", Role::Operator).unwrap();
    let p = app.authenticate_token(&secret).unwrap();
    assert_eq!(p.role, Role::Operator);
    assert!(app.authenticate_token("rvt_wrong").is_none());
    app.delete_api_token(&admin(), &info.id).unwrap();
    assert!(app.authenticate_token(&secret).is_none());
}

#[test]
fn secrets_are_sealed_in_the_config_file_and_never_shown() {
    let (d, app) = open();
    let input = SourceInput {
        name: "san".into(),
        url: "iscsi://127.0.0.1:3260/iqn.2024-01.test:disk/1".into(),
        chap_user: Some("u".into()),
        chap_secret: Some("supersecret-chap".into()),
        mutual_user: None,
        mutual_secret: None,
        max_read_mbps: None,
    };
    let s = app.put_source(&admin(), None, input).unwrap();
    assert!(s.has_chap_secret);
    assert_eq!(s.host, "127.0.0.1");
    let text = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    assert!(!text.contains("supersecret-chap") && text.contains("sealed:v1:"), "{text}");
    let listed = serde_json::to_string(&app.sources(&admin()).unwrap()).unwrap();
    assert!(!listed.contains("supersecret") && !listed.contains("sealed"), "{listed}");
    // An edit without a secret keeps the old one.
    let edit = SourceInput {
        name: "san".into(),
        url: s.url.clone(),
        chap_user: Some("u".into()),
        chap_secret: None,
        mutual_user: None,
        mutual_secret: None,
        max_read_mbps: None,
    };
    assert!(app.put_source(&admin(), Some(&s.id), edit).unwrap().has_chap_secret);
}

#[test]
fn backup_restore_verify_tasks_with_progress_logs_and_cancel() {
    let (d, app) = open();
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 32 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    let t = app.start_backup(&admin(), &src.id).unwrap();
    let t = wait(&app, t.id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(t.percent, 100.0);
    assert!(t.bytes_total >= 32 << 20);
    let (lines, next) = app.task_log(&admin(), t.id, 0).unwrap();
    assert!(lines.iter().any(|l| l.contains("backup complete")), "{lines:?}");
    assert_eq!(app.task_log(&admin(), t.id, next).unwrap().0.len(), 0);
    let points = app.points(&admin()).unwrap();
    assert_eq!(points.len(), 1);
    let r = app
        .start_restore(&admin(), RestoreRequest { point: points[0].point.spec(), disk: None, target: "r1".into() })
        .unwrap();
    assert_eq!(wait(&app, r.id).state, TaskState::Succeeded);
    let restored = std::fs::read(d.path().join("restores/r1/disk0.raw")).unwrap();
    assert_eq!(restored, std::fs::read(&img).unwrap());
    let v = app.start_verify(&admin(), None).unwrap();
    assert_eq!(wait(&app, v.id).state, TaskState::Succeeded);
    let u = app.usage(&admin()).unwrap();
    assert!(u.dedup_ratio > 1.0 && !u.history.is_empty(), "{u:?}");
    let m = app.metrics(&admin()).unwrap();
    assert!(m.contains("rackvault_tasks{kind=\"backup\",state=\"succeeded\"} 1"), "{m}");
    assert!(m.contains("rackvault_store_dedup_ratio"), "{m}");
    // Cancel: a finished task cannot be cancelled; a restore target cannot be reused.
    assert!(matches!(app.cancel_task(&admin(), t.id), Err(ServiceError::Conflict(_))));
    assert!(matches!(
        app.start_restore(&admin(), RestoreRequest { point: points[0].point.spec(), disk: None, target: "r1".into() }),
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        app.start_restore(
            &admin(),
            RestoreRequest { point: points[0].point.spec(), disk: None, target: "../x".into() }
        ),
        Err(ServiceError::Invalid(_))
    ));
}

#[test]
fn interrupted_tasks_are_marked_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    {
        let app = Appliance::open(d.path(), ApplianceOptions::default()).unwrap();
        // A task that never finishes: the source is a FIFO nobody writes.
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let src = local_source(&app, "hang", fifo.display().to_string());
        let t = app.start_backup(&admin(), &src.id).unwrap();
        for _ in 0..100 {
            if app.task(&admin(), t.id).unwrap().state == TaskState::Running {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Simulate the crash: the record says running; reopen a second appliance on a copy.
        let copy = d.path().join("copy");
        std::fs::create_dir_all(copy.join("state")).unwrap();
        std::fs::copy(d.path().join("state/data.mdb"), copy.join("state/data.mdb")).unwrap();
        let again = Appliance::open(&copy, ApplianceOptions::default()).unwrap();
        assert_eq!(again.interrupted_at_open(), 1);
        let t2 = again.task(&admin(), t.id).unwrap();
        assert_eq!(t2.state, TaskState::Interrupted);
        assert!(t2.error.unwrap().contains("stopped"));
        // Unblock the hanging reader so the thread ends.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
}

#[test]
fn jobs_validate_schedules_and_the_scheduler_starts_due_jobs() {
    let (d, app) = open();
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    let bad = JobInput {
        name: "nightly".into(),
        source: src.id.clone(),
        schedule: "someday".into(),
        window_hours: None,
        enabled: true,
        retries: None,
        destage_pool: None,
        replicate_to: None,
        retention: None,
        immutable_days: None,
    };
    assert!(app.put_job(&admin(), None, bad).unwrap_err().to_string().contains("example"));
    let job = JobInput {
        name: "nightly".into(),
        source: src.id.clone(),
        schedule: "*:0/15".into(),
        window_hours: Some(1),
        enabled: true,
        retries: Some(0),
        destage_pool: None,
        replicate_to: None,
        retention: None,
        immutable_days: None,
    };
    let j = app.put_job(&admin(), None, job.clone()).unwrap();
    // A job can only chain a destage when a tape library is configured.
    let to_tape = JobInput { destage_pool: Some("default".into()), ..job };
    assert!(matches!(app.put_job(&admin(), None, to_tape), Err(ServiceError::NotFound(_))));
    let next = j.next_run_unix.unwrap();
    app.tick(next - 60); // plans the run
    assert!(app.tasks(&admin()).unwrap().is_empty());
    app.tick(next + 1);
    let tasks = app.tasks(&admin()).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(wait(&app, tasks[0].id).state, TaskState::Succeeded);
    assert!(matches!(app.delete_source(&admin(), &src.id), Err(ServiceError::Conflict(_))));
}

#[test]
fn a_running_backup_can_be_cancelled_and_commits_nothing() {
    let (d, app) = open();
    let img = d.path().join("big.raw");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&img).unwrap();
        let mut x = 1u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..192 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&buf).unwrap();
        }
    }
    let src = local_source(&app, "big", img.display().to_string());
    let t = app.start_backup(&admin(), &src.id).unwrap();
    for _ in 0..200 {
        if app.task(&admin(), t.id).unwrap().state == TaskState::Running {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = app.cancel_task(&admin(), t.id);
    let fin = wait(&app, t.id);
    if fin.state == TaskState::Cancelled {
        assert!(fin.error.unwrap().contains("cancel"));
        assert!(app.points(&admin()).unwrap().is_empty(), "a cancelled backup commits nothing");
        let (lines, _) = app.task_log(&admin(), t.id, 0).unwrap();
        assert!(lines.iter().any(|l| l.contains("cancel requested")), "{lines:?}");
    } else {
        // The machine was fast enough to finish first; then it must have succeeded.
        assert_eq!(fin.state, TaskState::Succeeded);
    }
}

#[test]
fn datastores_and_hosts_of_sources() {
    assert_eq!(source_host("nfs://10.0.0.5:2049/vol/vm/a.vmdk"), "10.0.0.5");
    assert_eq!(source_host("iscsi://u@[::1]:3260/iqn.x:y/1"), "::1");
    assert_eq!(source_host("/var/lib/a.raw"), "local");
    assert_eq!(source_datastore("nfs://10.0.0.5:2049/vol/vm/a.vmdk"), "nfs://10.0.0.5/vol");
    assert_eq!(source_datastore("iscsi://u@h:3260/iqn.x:y/1?header_digest=crc32c"), "iscsi://h/iqn.x:y");
    assert_eq!(source_datastore("/var/lib/a.raw"), "/var/lib");
}

#[test]
fn dev_mode_tape_label_and_destage_task() {
    let d = tempfile::tempdir().unwrap();
    let app = Appliance::open(d.path(), ApplianceOptions { dev: true, ..Default::default() }).unwrap();
    let src = app.sources(&admin()).unwrap().remove(0);
    assert_eq!(src.name, "sample-vm");
    let b = wait(&app, app.start_backup(&admin(), &src.id).unwrap().id);
    assert_eq!(b.state, TaskState::Succeeded, "{b:?}");
    let inv = app.tape_inventory(&admin()).unwrap();
    assert!(inv.elements.iter().any(|e| e.row.barcode.as_deref() == Some("RVT001L9")));
    app.tape_label(&admin(), "RVT001L9", "main", false).unwrap();
    let e = app.tape_label(&admin(), "RVT001L9", "main", false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    let operator = Principal::new("op", Role::Operator);
    assert!(matches!(app.tape_label(&operator, "RVT002L9", "main", false), Err(ServiceError::Forbidden(_))));
    let t = wait(&app, app.start_destage(&operator, "sample-vm", "main").unwrap().id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let Some(TaskResult::Destage(r)) = &t.result else { panic!("a destage's result: {t:?}") };
    assert_eq!(r.tapes[0], "RVT001L9");

    // Pools: dev mode's default, the one labelling created, and a changed policy.
    let names: Vec<String> = app.tape_pools(&admin()).unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["default", "main"]);
    let bad = PoolInput { allocation: engine::tape::Allocation::Weekly, retention_days: 7, max_restore_tapes: Some(0) };
    assert!(matches!(app.put_tape_pool(&admin(), "main", bad), Err(ServiceError::Invalid(_))));
    let weekly =
        PoolInput { allocation: engine::tape::Allocation::Weekly, retention_days: 7, max_restore_tapes: Some(2) };
    assert!(matches!(app.put_tape_pool(&operator, "main", weekly.clone()), Err(ServiceError::Forbidden(_))));
    assert!(matches!(app.put_tape_pool(&admin(), "../x", weekly.clone()), Err(ServiceError::Invalid(_))));
    app.put_tape_pool(&admin(), "main", weekly).unwrap();
    let main = app.tape_pools(&admin()).unwrap().into_iter().find(|p| p.name == "main").unwrap();
    assert_eq!(
        (main.allocation, main.retention_days, main.max_restore_tapes),
        (engine::tape::Allocation::Weekly, 7, Some(2))
    );

    // The UI asks for pools, copies and the inventory at once: concurrent readers share the
    // one open catalog (a second open of the LMDB environment in one process is refused).
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                for _ in 0..5 {
                    app.tape_pools(&admin()).unwrap();
                    app.tape_copies(&admin()).unwrap();
                }
            });
        }
    });

    // The copy on tape is listed.
    let copies = app.tape_copies(&admin()).unwrap();
    assert_eq!(copies.len(), 1);
    assert!(copies[0].point.name == "sample-vm");
    assert_eq!((copies[0].point.name.as_str(), copies[0].barcode.as_str()), ("sample-vm", "RVT001L9"));

    // Load and unload by hand; drive rows carry the index unload takes.
    let l = app.tape_load(&operator, "RVT002L9").unwrap();
    let drive = l.drive;
    assert_eq!(l.state, DriveMediaState::Ready);
    let inv = app.tape_inventory(&admin()).unwrap();
    let e = inv.elements.iter().find(|e| e.row.barcode.as_deref() == Some("RVT002L9")).unwrap().clone();
    assert_eq!((e.row.element.as_str(), e.drive_index), ("drive", Some(drive)));
    assert!(matches!(app.tape_load(&operator, "NOPE01L9"), Err(e) if e.kind() == ServiceErrorKind::NotFound));
    let u = app.tape_unload(&operator, drive).unwrap();
    assert_eq!(u.barcode.as_deref(), Some("RVT002L9"));
    assert_eq!(app.tape_unload(&operator, drive).unwrap().barcode, None);
    assert!(matches!(app.tape_unload(&operator, 99), Err(ServiceError::NotFound(_))));
    let auditor = Principal::new("eve", Role::Auditor);
    assert!(matches!(app.tape_load(&auditor, "RVT002L9"), Err(ServiceError::Forbidden(_))));

    // While a tape task holds the library, quick actions are refused, not queued for minutes.
    {
        let _held = app.tape_lock.lock().unwrap();
        assert!(matches!(app.tape_load(&operator, "RVT002L9"), Err(ServiceError::Conflict(_))));
        assert!(matches!(app.tape_inventory(&admin()), Err(ServiceError::Conflict(_))));
    }

    // A job that destages after its backup (disk to disk to tape, unattended).
    let job = JobInput {
        name: "nightly-d2d2t".into(),
        source: src.id.clone(),
        schedule: "daily".into(),
        window_hours: None,
        enabled: true,
        retries: Some(0),
        destage_pool: Some("main".into()),
        replicate_to: None,
        retention: None,
        immutable_days: None,
    };
    let j = app.put_job(&admin(), None, job).unwrap();
    assert_eq!(j.job.destage_pool.as_deref(), Some("main"));
    let b = wait(&app, app.run_job(&operator, &j.job.id).unwrap().id);
    assert_eq!(b.state, TaskState::Succeeded, "{b:?}");
    let Some(TaskResult::Backup(r)) = &b.result else { panic!("a backup's result: {b:?}") };
    let chained = r.destage_task.expect("the backup queued a destage");
    let t = wait(&app, chained);
    assert_eq!((t.kind.as_str(), t.state), ("destage", TaskState::Succeeded), "{t:?}");
    assert_eq!(t.user, "op");
    assert_eq!(app.tape_copies(&admin()).unwrap().len(), 2, "both restore points are on tape");

    // Restore straight from tape, byte for byte, then verify the cartridge.
    let req = |target: &str| RestoreRequest { point: "sample-vm".into(), disk: None, target: target.into() };
    let t = wait(&app, app.start_tape_restore(&operator, req("from-tape")).unwrap().id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let restored = std::fs::read_dir(d.path().join("restores/from-tape")).unwrap().count();
    assert!(restored >= 1);
    // The result names the files where they are now, not in the partial directory.
    let Some(TaskResult::TapeRestore(r)) = &t.result else { panic!("a tape restore's result: {t:?}") };
    assert_eq!(r.report.outputs.len(), restored, "{r:?}");
    for o in &r.report.outputs {
        assert!(std::path::Path::new(o).is_file() && o.starts_with(&r.directory), "{o} in {}", r.directory);
    }
    let raw = std::fs::read_dir(d.path().join("restores/from-tape"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "raw"))
        .unwrap();
    assert!(
        std::fs::read(&raw).unwrap() == std::fs::read(d.path().join("samples/sample-vm.raw")).unwrap(),
        "{} differs from the sample disk",
        raw.display()
    );
    assert!(matches!(app.start_tape_restore(&operator, req("from-tape")), Err(ServiceError::Conflict(_))));
    let unknown = RestoreRequest { point: "nothing-like-this".into(), disk: None, target: "x".into() };
    assert!(matches!(app.start_tape_restore(&operator, unknown), Err(ServiceError::NotFound(_))));
    let v = wait(&app, app.start_tape_verify(&operator, "RVT001L9").unwrap().id);
    assert_eq!(v.state, TaskState::Succeeded, "{v:?}");
    let Some(TaskResult::TapeVerify(r)) = &v.result else { panic!("a cartridge verify's result: {v:?}") };
    assert!(r.records > 0);
    let log = app.task_log(&admin(), v.id, 0).unwrap().0.join("\n");
    assert!(log.contains("all intact"), "{log}");
}

#[test]
fn restores_write_to_a_partial_name_and_leftovers_go_at_open() {
    let (d, app) = open();
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    assert_eq!(wait(&app, app.start_backup(&admin(), &src.id).unwrap().id).state, TaskState::Succeeded);
    // A restore in progress (or interrupted) blocks its target name.
    let partial = d.path().join("restores/.busy.partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("vm.raw"), b"half").unwrap();
    let req = |t: &str| RestoreRequest { point: "vm".into(), disk: None, target: t.into() };
    assert!(matches!(app.start_restore(&admin(), req("busy")), Err(ServiceError::Conflict(_))));
    let t = wait(&app, app.start_restore(&admin(), req("done")).unwrap().id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let raws = |dir: &str| -> usize {
        std::fs::read_dir(d.path().join(dir))
            .map(|r| r.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "raw")).count())
            .unwrap_or(0)
    };
    assert_eq!(raws("restores/done"), 1);
    assert!(!d.path().join("restores/.done.partial").exists());
    // Leftovers of any kind are removed when the appliance opens.
    std::fs::write(d.path().join("restores/.blocked.partial"), b"a file, not a directory").unwrap();
    drop(app);
    // Reopening removes the leftovers of restores that were running.
    let app = Appliance::open(d.path(), ApplianceOptions::default()).unwrap();
    assert!(!partial.exists());
    assert!(!d.path().join("restores/.blocked.partial").exists());
    assert_eq!(raws("restores/done"), 1);
    let t = wait(&app, app.start_restore(&admin(), req("busy")).unwrap().id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
}

#[test]
fn a_source_read_limit_paces_its_backup() {
    let (d, app) = open();
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 8 << 20).unwrap();
    let input = |limit: Option<u32>| SourceInput {
        name: "vm".into(),
        url: img.display().to_string(),
        chap_user: Some("u".into()),
        chap_secret: None,
        mutual_user: Some("target-user".into()),
        mutual_secret: None,
        max_read_mbps: limit,
    };
    assert!(matches!(app.put_source(&admin(), None, input(Some(0))), Err(ServiceError::Invalid(_))));
    let src = app.put_source(&admin(), None, input(Some(4))).unwrap();
    // What the API shows is what an edit form needs to send back unchanged.
    assert_eq!((src.max_read_mbps, src.mutual_user.as_deref()), (Some(4), Some("target-user")));
    let started = std::time::Instant::now();
    let t = wait(&app, app.start_backup(&admin(), &src.id).unwrap().id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    // 8 MiB at 4 MB/s, less the pacer's 250 ms burst.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "8 MiB at 4 MB/s took only {took:?}");
    let log = app.task_log(&admin(), t.id, 0).unwrap().0.join("\n");
    assert!(log.contains("reads limited to 4 MB/s"), "{log}");
    // Lifting the limit.
    let src = app.put_source(&admin(), Some(&src.id), input(None)).unwrap();
    assert_eq!(src.max_read_mbps, None);
}

#[test]
fn settings_change_limits_and_the_tape_library() {
    let (d, app) = open();
    let operator = Principal::new("op", Role::Operator);
    let input = |changer: Option<String>, n: usize| settings_input(n, changer);
    assert!(matches!(app.put_settings(&operator, input(None, 2)), Err(ServiceError::Forbidden(_))));
    assert!(matches!(app.put_settings(&admin(), input(None, 0)), Err(ServiceError::Invalid(_))));
    // An address that does not answer is refused and nothing changes.
    let dead = "iscsi://127.0.0.1:9/iqn.2024-01.test:none/0".to_string();
    let e = app.put_settings(&admin(), input(Some(dead), 2)).unwrap_err();
    assert!(e.to_string().contains("cannot connect to iscsi://127.0.0.1:9/"), "{e}");
    let secret = "iscsi://u%25s@127.0.0.1:3260/iqn.x/0".to_string();
    assert!(matches!(app.put_settings(&admin(), input(Some(secret), 2)), Err(ServiceError::Invalid(_))));
    assert!(matches!(app.tape_inventory(&admin()), Err(ServiceError::NotFound(_))));
    // A working library is kept, the limits apply at once, and the file says so.
    let lib = format!("emulated:{}", d.path().join("lib").display());
    let v = app.put_settings(&admin(), input(Some(lib.clone()), 3)).unwrap();
    assert_eq!((v.tape_changer.as_deref(), v.settings.max_tasks), (Some(lib.as_str()), 3));
    assert_eq!(lock(&app.tasks.limits).total, 3);
    assert!(!app.tape_inventory(&admin()).unwrap().elements.is_empty());
    let file = ConfigFile::load(&d.path().join("config.json")).unwrap();
    assert_eq!((file.tape_changer.as_deref(), file.settings.max_tasks), (Some(lib.as_str()), 3));
    assert!(app.audit_log(&admin(), 10, None).unwrap().iter().any(|e| e.action == "change settings"));
    // Null removes the library.
    app.put_settings(&admin(), input(None, 3)).unwrap();
    assert!(matches!(app.tape_inventory(&admin()), Err(ServiceError::NotFound(_))));
}

// ---- notifications ----------------------------------------------------------------------------

/// A webhook receiver on 127.0.0.1 answering `status` to every request; hands each body to
/// the test.
fn webhook_receiver(status: &'static str) -> (u16, std::sync::mpsc::Receiver<serde_json::Value>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(20) {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (end, len) = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse::<usize>().unwrap())
                        .unwrap();
                    break (i + 4, len);
                }
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            };
            while buf.len() < end + len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
            if tx.send(serde_json::from_slice(&buf[end..end + len]).unwrap()).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

fn webhook_settings(port: u16) -> NotificationsInput {
    serde_json::from_value(serde_json::json!({
        "webhook": { "url": format!("http://127.0.0.1:{port}/hook"), "secret": "s3cret" },
    }))
    .unwrap()
}

#[test]
fn a_failed_backup_task_sends_one_webhook() {
    let (d, app) = open();
    let (port, rx) = webhook_receiver("200 OK");
    app.put_notification_settings(&admin(), webhook_settings(port)).unwrap();
    let src = local_source(&app, "gone", d.path().join("no-such-disk.raw").display().to_string());
    let t = app.start_backup(&admin(), &src.id).unwrap();
    assert_eq!(wait(&app, t.id).state, TaskState::Failed);
    let v = rx.recv_timeout(Duration::from_secs(10)).expect("a webhook for the failed task");
    assert_eq!(v["event"], "job_failed");
    assert_eq!(v["details"]["task_id"], t.id);
    assert_eq!(v["details"]["source"], "gone");
    assert_eq!(v["details"]["task_kind"], "backup");
    assert_eq!(v["details"]["job"], serde_json::Value::Null);
    assert!(v["details"]["message"].as_str().unwrap().contains("no-such-disk.raw"), "{v}");
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "exactly one delivery");
    // A cancelled task sends nothing.
    let t = app.start_backup(&admin(), &src.id).unwrap();
    let _ = app.cancel_task(&admin(), t.id);
    wait(&app, t.id);
    if app.task(&admin(), t.id).unwrap().state == TaskState::Cancelled {
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "no webhook for a cancelled task");
    }
}

#[test]
fn a_webhook_answering_500_leaves_an_audit_entry_saying_so() {
    let (_d, app) = open();
    app.notifier.set_options(notify::Options {
        retry_delays: vec![Duration::from_millis(20)],
        attempt_timeout: Duration::from_secs(5),
        queue_capacity: 8,
    });
    let (port, rx) = webhook_receiver("500 Internal Server Error");
    app.put_notification_settings(&admin(), webhook_settings(port)).unwrap();
    app.notify(Event::CapacityWatermark { used_pct: 91, high_pct: 90, crossed: notify::Crossing::Above });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut found = None;
    for _ in 0..200 {
        let log = app.audit_log(&admin(), 50, None).unwrap();
        found = log.into_iter().find(|e| e.action == "notification failed");
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = found.expect("an audit entry for the failed notification");
    assert_eq!(e.user, "notifier");
    assert!(e.detail.contains(&format!("notification to webhook http://127.0.0.1:{port} failed")), "{}", e.detail);
    assert!(e.detail.contains("HTTP 500"), "{}", e.detail);
}

#[test]
fn notification_settings_are_admin_only_and_never_show_secrets() {
    let (d, app) = open();
    let op = Principal::new("op", Role::Operator);
    assert!(matches!(app.notification_settings(&op), Err(ServiceError::Forbidden(_))));
    assert!(matches!(app.test_notifications(&op), Err(ServiceError::Forbidden(_))));
    assert!(matches!(app.test_notifications(&admin()), Err(ServiceError::Invalid(_))));
    let info = app.put_notification_settings(&admin(), webhook_settings(1)).unwrap();
    assert!(info.webhook.as_ref().unwrap().has_secret);
    let shown = serde_json::to_string(&app.notification_settings(&admin()).unwrap()).unwrap();
    assert!(!shown.contains("s3cret") && !shown.contains("sealed"), "{shown}");
    let file = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    assert!(!file.contains("s3cret") && file.contains("sealed:v1:"), "{file}");
    // Reopened: the sealed secret still signs (the channel is not broken).
    drop(app);
    let app = Appliance::open(d.path(), ApplianceOptions::default()).unwrap();
    let out = app.test_notifications(&admin()).unwrap();
    assert_eq!(out.len(), 1);
    assert!(!out[0].ok);
    assert!(out[0].error.as_deref().unwrap().contains("cannot connect"), "{:?}", out[0]);
}

#[test]
fn a_verify_that_finds_damage_sends_verify_damage_not_job_failed() {
    let (d, app) = open();
    let (port, rx) = webhook_receiver("200 OK");
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    let t = app.start_backup(&admin(), &src.id).unwrap();
    assert_eq!(wait(&app, t.id).state, TaskState::Succeeded);
    // Damage the middle of every pack.
    for e in std::fs::read_dir(d.path().join("store/packs")).unwrap().flatten() {
        let mut b = std::fs::read(e.path()).unwrap();
        let mid = b.len() / 2;
        for x in &mut b[mid..mid + 64] {
            *x ^= 0xff;
        }
        std::fs::write(e.path(), b).unwrap();
    }
    app.put_notification_settings(&admin(), webhook_settings(port)).unwrap();
    let t = app.start_verify(&admin(), None).unwrap();
    assert_eq!(wait(&app, t.id).state, TaskState::Failed);
    let v = rx.recv_timeout(Duration::from_secs(10)).expect("a webhook for the damage");
    assert_eq!(v["event"], "verify_damage", "{v}");
    assert_eq!(v["details"]["task_id"], t.id);
    let damaged = v["details"]["damaged_points"].as_array().unwrap().len() as u64
        + v["details"]["damaged_records"].as_u64().unwrap();
    assert!(damaged > 0, "{v}");
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "no JobFailed besides the damage report");
}

// ---- the store's life over months ----------------------------------------------------------------

/// A job on a small sample disk, with `retention` and `immutable_days`.
fn lifecycle_job(
    app: &Appliance,
    d: &Path,
    retention: Option<store::retention::RetentionPolicy>,
    immutable_days: Option<u32>,
) -> JobInfo {
    let img = d.join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(app, "vm", img.display().to_string());
    let job = JobInput {
        name: "nightly".into(),
        source: src.id,
        schedule: "22:00".into(),
        window_hours: None,
        enabled: true,
        retries: Some(0),
        destage_pool: None,
        replicate_to: None,
        retention,
        immutable_days,
    };
    app.put_job(&admin(), None, job).unwrap()
}

fn run_job_to_end(app: &Appliance, job: &JobInfo) -> TaskInfo {
    let t = app.run_job(&admin(), &job.job.id).unwrap();
    let t = wait(app, t.id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    t
}

#[test]
fn a_job_with_retention_prunes_after_each_backup_and_gc_frees_the_space() {
    let (d, app) = open();
    let keep2 = store::retention::RetentionPolicy { keep_last: Some(2), ..Default::default() };
    let job = lifecycle_job(&app, d.path(), Some(keep2), None);
    for i in 0..4u8 {
        // a different disk each time, so every point has data of its own
        let img = d.path().join("vm.raw");
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[..1 << 20].fill(i + 1);
        std::fs::write(&img, bytes).unwrap();
        let t = run_job_to_end(&app, &job);
        if i >= 2 {
            let log = app.task_log(&admin(), t.id, 0).unwrap().0.join("\n");
            assert!(log.contains("retention: 2 kept, 1 pruned"), "{log}");
        }
    }
    let points = app.points(&admin()).unwrap();
    assert_eq!(points.len(), 2, "{points:?}");
    // A dry run is open to auditors and changes nothing; the real prune needs an admin.
    let auditor = Principal::new("eve", Role::Auditor);
    let dry = app.prune_job(&auditor, PruneRequest { job: job.job.id.clone(), dry_run: true }).unwrap();
    assert_eq!((dry.kept, dry.pruned), (2, 0));
    assert!(matches!(
        app.prune_job(&auditor, PruneRequest { job: job.job.id.clone(), dry_run: false }),
        Err(ServiceError::Forbidden(_))
    ));
    let before = app.usage(&admin()).unwrap().bytes_stored;
    let gc = wait(&app, app.start_gc(&admin(), GcRequest::default()).unwrap().id);
    assert_eq!(gc.state, TaskState::Succeeded, "{gc:?}");
    let after = app.usage(&admin()).unwrap().bytes_stored;
    assert!(after < before, "gc freed nothing: {before} -> {after}");
    let dash = app.dashboard(&admin()).unwrap();
    let cap = dash.capacity.expect("capacity on the dashboard");
    assert!(cap.total_bytes > 0 && cap.used_pct > 0.0 && cap.high_pct == 90, "{cap:?}");
    assert!(app.metrics(&admin()).unwrap().contains("rackvault_capacity_free_bytes"));
}

#[test]
fn immutable_points_are_refused_to_every_delete_and_prune_even_for_admins() {
    let (d, app) = open();
    let _clear = testkit::ClearImmutable(d.path());
    let keep1 = store::retention::RetentionPolicy { keep_last: Some(1), ..Default::default() };
    let job = lifecycle_job(&app, d.path(), Some(keep1), Some(7));
    run_job_to_end(&app, &job);
    let t = run_job_to_end(&app, &job);
    let log = app.task_log(&admin(), t.id, 0).unwrap().0.join("\n");
    assert!(log.contains("1 kept as immutable"), "{log}");
    let points = app.points(&admin()).unwrap();
    assert_eq!(points.len(), 2);
    assert!(points.iter().all(|p| p.immutable), "{points:?}");
    let spec = points[1].point.spec();
    match app.delete_point(&admin(), &spec) {
        Err(ServiceError::Conflict(m)) => assert!(m.contains("immutable until"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let r = app.prune_job(&admin(), PruneRequest { job: job.job.id.clone(), dry_run: false }).unwrap();
    assert_eq!((r.pruned, r.kept_immutable), (0, 1));
    assert_eq!(app.points(&admin()).unwrap().len(), 2);
    // On disk the packs are protected too, or the dashboard says why they cannot be.
    let protection = app.store.pack_protection();
    match &protection.unavailable {
        None => assert!(protection.packs_protected >= 1, "{protection:?}"),
        Some(why) => {
            let alerts = app.dashboard(&admin()).unwrap().alerts;
            assert!(alerts.iter().any(|a| a.message.contains(why.as_str())), "{alerts:?}");
        }
    }
    // Shortening the job's window does not shorten the window of points already made.
    let edit = JobInput {
        name: "nightly".into(),
        source: job.job.source.clone(),
        schedule: "22:00".into(),
        window_hours: None,
        enabled: true,
        retries: Some(0),
        destage_pool: None,
        replicate_to: None,
        retention: None,
        immutable_days: None,
    };
    app.put_job(&admin(), Some(&job.job.id), edit).unwrap();
    assert!(matches!(app.delete_point(&admin(), &spec), Err(ServiceError::Conflict(_))));
}

#[test]
fn pinned_points_are_kept_and_unpinned_ones_can_be_deleted() {
    let (d, app) = open();
    let job = lifecycle_job(&app, d.path(), None, None);
    run_job_to_end(&app, &job);
    let spec = app.points(&admin()).unwrap()[0].point.spec();
    app.pin_point(&admin(), &spec, PinRequest { pinned: true }).unwrap();
    assert!(app.points(&admin()).unwrap()[0].pinned);
    assert!(matches!(app.delete_point(&admin(), &spec), Err(ServiceError::Conflict(_))));
    let operator = Principal::new("op", Role::Operator);
    assert!(matches!(app.delete_point(&operator, &spec), Err(ServiceError::Forbidden(_))));
    app.pin_point(&admin(), &spec, PinRequest { pinned: false }).unwrap();
    app.delete_point(&admin(), &spec).unwrap();
    assert!(app.points(&admin()).unwrap().is_empty());
    assert!(app.audit_log(&admin(), 20, None).unwrap().iter().any(|e| e.action == "delete restore point"));
}

#[test]
fn a_backup_above_the_high_watermark_that_nothing_can_relieve_is_refused_before_it_reads() {
    let (d, app) = open();
    let job = lifecycle_job(&app, d.path(), None, None);
    let s = |high: u8, low: u8| SettingsInput {
        time_zone: Some("Europe/Berlin".into()),
        capacity_high_pct: Some(high),
        capacity_low_pct: Some(low),
        maintenance_schedule: Some("sun 04:30".into()),
        ..settings_input(4, None)
    };
    assert!(matches!(app.put_settings(&admin(), s(50, 60)), Err(ServiceError::Invalid(_))));
    let bad_tz = SettingsInput { time_zone: Some("Mars/Olympus".into()), ..s(90, 80) };
    assert!(app.put_settings(&admin(), bad_tz).unwrap_err().to_string().contains("time zone"));
    // Any filesystem in use is above 1%.
    app.put_settings(&admin(), s(1, 0)).unwrap();
    let t = app.run_job(&admin(), &job.job.id).unwrap();
    let t = wait(&app, t.id);
    assert_eq!(t.state, TaskState::Failed);
    let err = t.error.unwrap_or_default();
    assert!(err.contains("refused before it started") && err.contains("nothing more can be freed"), "{err}");
    assert!(app.points(&admin()).unwrap().is_empty());
    let log = app.task_log(&admin(), t.id, 0).unwrap().0.join("\n");
    assert!(!log.contains("opening"), "the source was not even opened: {log}");
    // The tick notices the watermark and records it once.
    app.tick(now_unix());
    app.tick(now_unix());
    let crossings = app.audit_log(&admin(), 50, None).unwrap().into_iter().filter(|e| e.action == "capacity").count();
    assert_eq!(crossings, 1);
    assert!(app.dashboard(&admin()).unwrap().alerts.iter().any(|a| a.message.contains("high watermark")));
    app.put_settings(&admin(), s(99, 98)).unwrap();
    run_job_to_end(&app, &job);
}

#[test]
fn points_pruned_from_disk_after_their_tape_copy_show_as_on_tape_only() {
    let (d, app) = open();
    let lib = format!("emulated:{}", d.path().join("lib").display());
    let settings = settings_input(4, Some(lib));
    app.put_settings(&admin(), settings).unwrap();
    let inv = app.tape_inventory(&admin()).unwrap();
    let barcodes: Vec<String> =
        inv.elements.iter().filter_map(|e| e.row.barcode.clone()).filter(|b| !b.starts_with("CLN")).collect();
    app.tape_label(&admin(), &barcodes[0], "default", false).unwrap();
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    let keep1 = store::retention::RetentionPolicy { keep_last: Some(1), ..Default::default() };
    let job = app
        .put_job(
            &admin(),
            None,
            JobInput {
                name: "d2d2t".into(),
                source: src.id,
                schedule: "22:00".into(),
                window_hours: None,
                enabled: true,
                retries: Some(0),
                destage_pool: Some("default".into()),
                replicate_to: None,
                retention: Some(keep1),
                immutable_days: None,
            },
        )
        .unwrap();
    let first = run_job_to_end(&app, &job);
    let destage = match &first.result {
        Some(TaskResult::Backup(r)) => r.destage_task.expect("a destage was queued"),
        other => panic!("a backup's result: {other:?}"),
    };
    assert_eq!(wait(&app, destage).state, TaskState::Succeeded);
    // A second backup: the first point has its tape copy, so retention removes it from disk.
    let second = run_job_to_end(&app, &job);
    let log = app.task_log(&admin(), second.id, 0).unwrap().0.join("\n");
    assert!(log.contains("1 pruned"), "{log}");
    let points = app.points(&admin()).unwrap();
    let tape_only: Vec<&PointInfo> = points.iter().filter(|p| p.tape_only).collect();
    assert_eq!(tape_only.len(), 1, "{points:?}");
    assert!(tape_only[0].on_tape);
    // The newest point is kept on disk, awaiting its own tape copy.
    let dry = app.prune_job(&admin(), PruneRequest { job: job.job.id.clone(), dry_run: true }).unwrap();
    assert_eq!(dry.items.len(), 1);
}

#[test]
fn a_scheduled_verify_runs_incrementally_and_skips_what_it_verified_recently() {
    let (d, app) = open();
    let job = lifecycle_job(&app, d.path(), None, None);
    run_job_to_end(&app, &job);
    let settings = SettingsInput {
        capacity_high_pct: Some(99),
        capacity_low_pct: Some(98),
        verify_schedule: Some("02:00".into()),
        verify_skip_days: Some(7),
        ..settings_input(4, None)
    };
    let bad = SettingsInput { verify_schedule: Some("whenever".into()), ..settings.clone() };
    assert!(matches!(app.put_settings(&admin(), bad), Err(ServiceError::Invalid(_))));
    app.put_settings(&admin(), settings).unwrap();
    let ev = CalendarEvent::parse("02:00").unwrap();
    let first = ev.next_after(now_unix()).unwrap();
    let verifies = |app: &Appliance| -> Vec<TaskInfo> {
        app.tasks(&admin()).unwrap().into_iter().filter(|t| t.kind == TaskKind::Verify).collect()
    };
    app.tick(first - 10); // plans it
    assert!(verifies(&app).is_empty());
    app.tick(first + 1);
    let v = verifies(&app);
    assert_eq!(v.len(), 1);
    assert!(v[0].subject.contains("incremental"), "{:?}", v[0]);
    let t = wait(&app, v[0].id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let Some(TaskResult::Verify(r)) = t.result else { panic!("a verify's result") };
    assert!(r.packs_scanned >= 1, "{r:?}");
    // The next night's run skips the packs verified a day ago.
    let second = ev.next_after(first + 60).unwrap();
    app.tick(second + 1);
    let v = verifies(&app);
    assert_eq!(v.len(), 2);
    let Some(TaskResult::Verify(r)) = wait(&app, v.iter().map(|t| t.id).max().unwrap()).result else {
        panic!("a verify's result")
    };
    assert_eq!(r.packs_scanned, 0, "{r:?}");
    assert!(r.packs_skipped_recent >= 1, "{r:?}");
}

#[test]
fn a_second_appliance_on_the_same_data_directory_is_refused_before_it_touches_anything() {
    let (d, app) = open();
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    let t = wait(&app, app.start_backup(&admin(), &src.id).unwrap().id);
    assert_eq!(t.state, TaskState::Succeeded);
    let before = std::fs::read(d.path().join("config.json")).unwrap();
    match Appliance::open(d.path(), ApplianceOptions::default()) {
        Err(ServiceError::Conflict(m)) => assert!(m.contains("another rackvault serve"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read(d.path().join("config.json")).unwrap(), before);
    drop(app);
    // Once the first is gone (its task thread may still be finishing its end hook), the
    // directory opens again.
    let again = reopen(d.path());
    assert_eq!(again.points(&admin()).unwrap().len(), 1);
}

// ---- shutdown, typed task errors and kinds ---------------------------------------------------------

/// A source on a `size`-MiB sample disk whose reads are limited to `mbps` MB/s, so its backup
/// runs for about `size / mbps` seconds.
fn slow_source(app: &Appliance, d: &Path, name: &str, size_mib: u64, mbps: u32) -> SourceInfo {
    let img = d.join(format!("{name}.raw"));
    write_sample_disk(&img, size_mib << 20).unwrap();
    let input = SourceInput {
        name: name.into(),
        url: img.display().to_string(),
        chap_user: None,
        chap_secret: None,
        mutual_user: None,
        mutual_secret: None,
        max_read_mbps: Some(mbps),
    };
    app.put_source(&admin(), None, input).unwrap()
}

/// Until task `id` reads (up to 30 s: a loaded machine may take a while to start it).
fn wait_running(app: &Appliance, id: u64) {
    for _ in 0..1200 {
        let t = app.task(&admin(), id).unwrap();
        if t.state == TaskState::Running && t.bytes_done > 0 {
            return;
        }
        assert!(!t.state.is_finished(), "task {id} ended before it could be stopped: {t:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("task {id} did not start reading");
}

/// A job on `source` with `retries`.
fn job_with_retries(app: &Appliance, source: &str, retries: u32) -> JobInfo {
    let job = JobInput {
        name: format!("job-{source}"),
        source: source.into(),
        schedule: "22:00".into(),
        window_hours: None,
        enabled: true,
        retries: Some(retries),
        destage_pool: None,
        replicate_to: None,
        retention: None,
        immutable_days: None,
    };
    app.put_job(&admin(), None, job).unwrap()
}

fn log_of(app: &Appliance, id: u64) -> String {
    app.task_log(&admin(), id, 0).unwrap().0.join("\n")
}

#[test]
fn shutdown_cancels_running_and_queued_tasks_within_the_deadline_and_refuses_new_ones() {
    let d = tempfile::tempdir().unwrap();
    let (running, queued) = {
        let app = Appliance::open(d.path(), ApplianceOptions::default()).unwrap();
        // 64 MiB at 2 MB/s: half a minute of reading, far longer than the shutdown may take.
        let src = slow_source(&app, d.path(), "vm", 64, 2);
        let running = app.start_backup(&admin(), &src.id).unwrap();
        // The same datastore allows one task at a time: the second waits, queued.
        let queued = app.start_backup(&admin(), &src.id).unwrap();
        wait_running(&app, running.id);
        assert_eq!(app.task(&admin(), queued.id).unwrap().state, TaskState::Queued);

        let started = std::time::Instant::now();
        let report = app.shutdown(Duration::from_secs(20));
        let took = started.elapsed();
        assert_eq!(report.cancelled, 2, "{report:?}");
        assert!(report.unfinished.is_empty(), "every task stops before the deadline: {report:?}");
        assert!(took < Duration::from_secs(20), "the shutdown took {took:?}");
        for id in [running.id, queued.id] {
            let t = app.task(&admin(), id).unwrap();
            assert_eq!(t.state, TaskState::Cancelled, "{t:?}");
            assert_eq!(t.error_kind, Some(TaskErrorKind::Cancelled), "{t:?}");
            assert!(t.error.as_deref().unwrap_or("").contains("shutting down"), "{t:?}");
            assert!(log_of(&app, id).contains("cancel requested: the appliance is shutting down"));
        }
        // No new task, from the API or the scheduler.
        match app.start_backup(&admin(), &src.id) {
            Err(ServiceError::Conflict(m)) => assert!(m.contains("shutting down"), "{m}"),
            other => panic!("a task started during shutdown: {other:?}"),
        }
        assert!(matches!(app.start_verify(&admin(), None), Err(ServiceError::Conflict(_))));
        let job = job_with_retries(&app, &src.id, 0);
        app.tick(job.next_run_unix.unwrap() - 60);
        app.tick(job.next_run_unix.unwrap() + 1);
        assert_eq!(app.tasks(&admin()).unwrap().len(), 2, "the scheduler started nothing");
        assert!(app.points(&admin()).unwrap().is_empty(), "a cancelled backup commits nothing");
        (running.id, queued.id)
    };
    // After a restart the tasks read cancelled, not interrupted.
    let app = Appliance::open(d.path(), ApplianceOptions::default()).unwrap();
    assert_eq!(app.interrupted_at_open(), 0);
    for id in [running, queued] {
        assert_eq!(app.task(&admin(), id).unwrap().state, TaskState::Cancelled);
    }
}

#[test]
fn a_shutdown_reports_the_tasks_that_did_not_end_before_the_deadline() {
    let (d, app) = open();
    // A source that blocks in open (a FIFO nobody writes) does not see the cancel.
    let fifo = d.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let src = local_source(&app, "hang", fifo.display().to_string());
    let t = app.start_backup(&admin(), &src.id).unwrap();
    // Until the task is opening its source (and then blocked in the open).
    for _ in 0..200 {
        if log_of(&app, t.id).contains("opening ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let report = app.shutdown(Duration::from_millis(500));
    assert_eq!(report.cancelled, 1);
    assert_eq!(report.unfinished.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t.id], "{report:?}");
    assert!(report.waited >= Duration::from_millis(500));
    // Unblock the reader: the task then ends cancelled.
    let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    let fin = wait(&app, t.id);
    assert_eq!((fin.state, fin.error_kind), (TaskState::Cancelled, Some(TaskErrorKind::Cancelled)), "{fin:?}");
}

#[test]
fn a_cancelled_task_has_the_error_kind_cancelled() {
    let (d, app) = open();
    let src = slow_source(&app, d.path(), "vm", 32, 2);
    let t = app.start_backup(&admin(), &src.id).unwrap();
    wait_running(&app, t.id);
    app.cancel_task(&admin(), t.id).unwrap();
    let fin = wait(&app, t.id);
    assert_eq!(fin.state, TaskState::Cancelled, "{fin:?}");
    assert_eq!(fin.error_kind, Some(TaskErrorKind::Cancelled), "{fin:?}");
    assert!(fin.error.unwrap().starts_with("cancelled"));
    // The record keeps the kind, and the API shows it by that name.
    let json = serde_json::to_value(app.task(&admin(), t.id).unwrap()).unwrap();
    assert_eq!(json["error_kind"], "cancelled", "{json}");
}

#[test]
fn a_permanent_error_fails_at_once_and_the_log_says_why_it_was_not_retried() {
    let (d, app) = open();
    *lock(&app.tasks.retry_unit) = Duration::from_millis(10);
    let src = local_source(&app, "gone", d.path().join("no-such-disk.raw").display().to_string());
    let job = job_with_retries(&app, &src.id, 3);
    let t = wait(&app, app.run_job(&admin(), &job.job.id).unwrap().id);
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert_eq!(t.error_kind, Some(TaskErrorKind::Permanent), "{t:?}");
    let log = log_of(&app, t.id);
    assert!(log.contains("not retried: the error is permanent"), "{log}");
    assert_eq!(log.matches("opening ").count(), 1, "one attempt only: {log}");
    assert!(!log.contains("attempt 1"), "{log}");
}

#[test]
fn a_transient_error_is_retried_as_many_times_as_the_job_says() {
    let (_d, app) = open();
    *lock(&app.tasks.retry_unit) = Duration::from_millis(10);
    // An NFS server that is down: nothing listens on the port, the connection is refused.
    // A daemon that is down comes back, so this is transient.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nfs://127.0.0.1:{port}/export/disk.raw?mountport={port}");
    let src = local_source(&app, "nas", url);
    let job = job_with_retries(&app, &src.id, 2);
    let t = wait(&app, app.run_job(&admin(), &job.job.id).unwrap().id);
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert_eq!(t.error_kind, Some(TaskErrorKind::Transient), "{t:?}");
    let log = log_of(&app, t.id);
    assert_eq!(log.matches("opening ").count(), 3, "the first attempt and 2 retries: {log}");
    assert!(log.contains("attempt 1 of 3 failed") && log.contains("attempt 2 of 3 failed"), "{log}");
    assert!(log.contains("giving up after 3 attempt(s)"), "{log}");
    assert!(!log.contains("not retried"), "{log}");
}

#[test]
fn interrupted_tasks_say_what_their_kind_left_behind() {
    use tasks::interrupted_message;
    assert!(interrupted_message(TaskKind::Backup).contains("unsealed packs"));
    for k in [TaskKind::Restore, TaskKind::TapeRestore] {
        assert!(interrupted_message(k).contains(".partial) was removed"), "{k}");
    }
    // Readers remove nothing: their message must not say they did.
    for k in [TaskKind::Verify, TaskKind::TapeVerify] {
        let m = interrupted_message(k);
        assert!(m.contains("nothing to clean up") && !m.contains("removed"), "{k}: {m}");
    }
    assert!(interrupted_message(TaskKind::Destage).contains("not in the tape catalog"));
    for k in TaskKind::ALL {
        assert!(interrupted_message(k).starts_with("the appliance stopped while"), "{k}");
    }
}

#[test]
fn task_kinds_and_error_kinds_keep_the_names_the_api_and_old_records_use() {
    let names: Vec<String> =
        TaskKind::ALL.iter().map(|k| serde_json::to_value(k).unwrap().as_str().unwrap().to_string()).collect();
    assert_eq!(
        names,
        [
            "backup",
            "restore",
            "verify",
            "destage",
            "tape-restore",
            "tape-verify",
            "gc",
            "maintenance",
            "replicate",
            "pull"
        ]
    );
    for k in TaskKind::ALL {
        assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        assert_eq!(k.to_string(), k.as_str());
    }
    for (k, s) in [
        (TaskErrorKind::Transient, "transient"),
        (TaskErrorKind::Permanent, "permanent"),
        (TaskErrorKind::Cancelled, "cancelled"),
    ] {
        assert_eq!(serde_json::to_value(k).unwrap(), s);
    }
    // A record written before error kinds existed still reads.
    let old = r#"{"id":7,"kind":"tape-restore","subject":"vm@1 from tape to r","state":"failed","user":"admin",
        "created_unix":1,"started_unix":2,"finished_unix":3,"phase":"done","bytes_done":0,"bytes_total":0,
        "throughput_bps":0.0,"eta_s":null,"percent":0.0,"result":null,"error":"boom","host":"tape","datastore":"tape"}"#;
    let t: TaskInfo = serde_json::from_str(old).unwrap();
    assert_eq!((t.kind, t.error_kind), (TaskKind::TapeRestore, None));
}

/// A finished task's record as the task store keeps it, its result `result` (JSON as the
/// versions before typed results wrote it).
fn old_record(id: u64, kind: &str, result: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "kind": kind, "subject": "vm", "state": "succeeded", "user": "admin",
        "created_unix": 1, "started_unix": 2, "finished_unix": 3, "phase": "done", "bytes_done": 10,
        "bytes_total": 10, "throughput_bps": 5.0, "eta_s": null, "percent": 100.0, "result": result,
        "error": null, "error_kind": null, "host": "local", "datastore": "/srv",
    }))
    .unwrap()
}

#[test]
fn task_results_written_before_they_were_typed_still_load_and_read_the_same() {
    use serde_json::json;
    let gc = json!({
        "generation": 3, "dry_run": false, "points_marked": 2, "tree_nodes_marked": 4, "chunks_live": 100,
        "chunks_condemned": 7, "bytes_condemned": 7000, "chunks_held": 0, "sessions_running": 0,
        "chunks_freed": 7, "packs_deleted": 1, "packs_repacked": 0, "packs_skipped_damaged": 0,
        "bytes_before": 9000, "bytes_after": 2000, "bytes_freed": 7000, "mark_set_bytes": 512,
        "duration_s": 0.25, "complete": true,
    });
    let backup = json!({
        "name": "vm", "id": 4, "source": "/srv/vm.raw", "format": "raw", "bytes_logical": 4096,
        "bytes_read": 4096, "bytes_written": 100, "chunks_total": 1, "chunks_new": 1, "chunks_zero": 0,
        "tree_nodes_new": 1, "chunk_size": 1048576, "duration_s": 0.5, "io_backend": "io_uring",
        "disks": [{"label": "disk0", "source": "/srv/vm.raw", "format": "raw", "bytes_logical": 4096,
                   "bytes_read": 4096, "chunks_total": 1, "chunks_zero": 0}],
        "files": [], "destage_task": 9,
    });
    let restore = json!({"point": "vm@4", "outputs": ["/data/restores/r/disk0.raw"]});
    let tape_restore = json!({
        "point": "vm@4", "media_set": "s1", "tapes": ["RVT001L9"], "bytes_restored": 4096,
        "outputs": ["/data/restores/.t.partial/disk0.raw"], "damaged": [], "imported_as": null,
        "problems": [], "directory": "/data/restores/t",
    });
    let verify = json!({
        "restore_points_checked": 1, "chunks_checked": 3, "bytes_checked": 300, "packs_scanned": 1,
        "packs_skipped_recent": 0, "packs_left_for_later": 0, "damaged_records": [], "damaged_points": [],
    });
    let maintenance = json!({
        "pruned": 2, "gc": gc,
        "relief": {"used_pct_before": 50.0, "used_pct_after": 50.0, "deleted_on_tape": [], "gc": null, "stuck": null},
    });
    // A backup's report from a version with fewer fields: kept as it was recorded.
    let older = json!({"name": "vm", "id": 1, "bytes_read": 77});
    let records = [
        (1, "backup", &backup),
        (2, "restore", &restore),
        (3, "tape-restore", &tape_restore),
        (4, "verify", &verify),
        (5, "gc", &json!({ "gc": gc })),
        (6, "maintenance", &maintenance),
        (7, "backup", &older),
    ];
    let d = tempfile::tempdir().unwrap();
    {
        let names = ["users", "tokens", "audit", "tasks", "usage", "counters"];
        let (env, dbs) = store::kv::KvEnv::open(&d.path().join("state"), &names).unwrap();
        let mut wtxn = env.write().unwrap();
        for (id, kind, result) in &records {
            dbs[3].put(&mut wtxn, &u64::to_be_bytes(*id), &old_record(*id, kind, result)).unwrap();
        }
        wtxn.commit().unwrap();
    }
    let app = Appliance::open(d.path(), ApplianceOptions::default()).unwrap();
    for (id, kind, result) in &records {
        let t = app.task(&admin(), *id).unwrap();
        assert_eq!(t.kind.as_str(), *kind);
        let typed = match (&t.result, *id) {
            (Some(TaskResult::Backup(b)), 1) => b.destage_task == Some(9) && b.report.disks.len() == 1,
            (Some(TaskResult::Restore(r)), 2) => r.point == "vm@4",
            (Some(TaskResult::TapeRestore(r)), 3) => {
                r.directory == "/data/restores/t" && r.report.tapes == ["RVT001L9"]
            }
            (Some(TaskResult::Verify(r)), 4) => r.is_clean(),
            (Some(TaskResult::Upkeep(u)), 5) => u.pruned.is_none() && u.relief.is_none() && u.gc.complete,
            (Some(TaskResult::Upkeep(u)), 6) => u.pruned == Some(2) && u.relief.is_some(),
            (Some(r @ TaskResult::Recorded(_)), 7) => r.bytes_read() == 77,
            _ => false,
        };
        assert!(typed, "task {id} ({kind}) read as {:?}", t.result);
        // The API shows exactly what was recorded.
        assert_eq!(&serde_json::to_value(&t).unwrap()["result"], *result, "task {id}");
    }
    assert_eq!(app.tasks(&admin()).unwrap().len(), records.len());
}

#[test]
fn a_task_result_round_trips_through_the_persisted_record() {
    let (d, app) = open();
    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    let b = wait(&app, app.start_backup(&admin(), &src.id).unwrap().id);
    let Some(TaskResult::Backup(report)) = &b.result else { panic!("a backup's result: {b:?}") };
    assert_eq!((report.report.bytes_read, report.destage_task), (4 << 20, None));
    let spec = format!("{}@{}", report.report.name, report.report.id);
    let r = app.start_restore(&admin(), RestoreRequest { point: spec.clone(), disk: None, target: "r1".into() });
    let r = wait(&app, r.unwrap().id);
    assert!(matches!(&r.result, Some(TaskResult::Restore(x)) if x.point == spec && x.outputs.len() == 1), "{r:?}");
    let g = wait(&app, app.start_gc(&admin(), GcRequest { dry_run: true }).unwrap().id);
    assert!(matches!(&g.result, Some(TaskResult::Upkeep(u)) if u.gc.dry_run && u.pruned.is_none()), "{g:?}");
    let shown: Vec<serde_json::Value> = [&b, &r, &g].iter().map(|t| serde_json::to_value(t).unwrap()).collect();
    // A backup's result has no `destage_task` unless one was queued, as before.
    assert!(shown[0]["result"].get("destage_task").is_none(), "{}", shown[0]);
    assert!(shown[2]["result"].get("pruned").is_none() && shown[2]["result"]["gc"].is_object(), "{}", shown[2]);
    drop(app);
    let app = reopen(d.path());
    for (t, before) in [&b, &r, &g].iter().zip(&shown) {
        let again = app.task(&admin(), t.id).unwrap();
        assert_eq!(&serde_json::to_value(&again).unwrap(), before);
        assert_eq!(
            std::mem::discriminant(again.result.as_ref().unwrap()),
            std::mem::discriminant(t.result.as_ref().unwrap())
        );
    }
}

mod hardening;
mod remotes;
mod store_key;
mod update;

#[test]
fn a_replicated_point_that_is_incomplete_here_is_refused_with_its_own_kind_and_only_a_replication_token_may_deliver() {
    let (_d, app) = open();
    let token = Principal { user: "admin".into(), role: Role::Replication, token: Some("site-a".into()) };
    let missing = store::Digest::of(b"a node this appliance never received");
    let point = store::RestorePoint {
        name: "vm".into(),
        id: 3,
        created_unix: 1,
        disks: vec![store::DiskIndex {
            label: "disk0".into(),
            source: "remote".into(),
            format: "raw".into(),
            size: 1 << 20,
            chunk_size: 1 << 18,
            chunks: 4,
            root: missing,
            height: 1,
        }],
        files: Vec::new(),
        stats: store::PointStats::default(),
        immutable_until_unix: None,
        origin: None,
    };
    let origin = store::PointOrigin {
        namespace: "site-a".into(),
        store_id: "00".into(),
        point: "vm@3".into(),
        created_unix: 1,
        without_key: false,
    };
    let e = app.replica_commit(&token, &point, &origin, None).unwrap_err();
    assert_eq!(e.kind(), ServiceErrorKind::Incomplete, "{e}");
    assert!(e.to_string().contains(&missing.to_hex()), "{e}");
    assert!(app.points(&admin()).unwrap().is_empty());
    // Another namespace, or anyone but a replication token, is refused.
    let other = store::PointOrigin { namespace: "site-b".into(), ..origin.clone() };
    assert_eq!(app.replica_commit(&token, &point, &other, None).unwrap_err().kind(), ServiceErrorKind::Forbidden);
    assert_eq!(app.replica_commit(&admin(), &point, &origin, None).unwrap_err().kind(), ServiceErrorKind::Forbidden);
}

#[test]
fn the_nightly_maintenance_compresses_what_backups_stored_raw_and_logs_it() {
    let (d, app) = open();
    let job = lifecycle_job(&app, d.path(), None, None);
    // Below the low watermark, whatever the test machine's disk holds (above it a backup
    // compresses inline: the next test).
    let s = SettingsInput { capacity_high_pct: Some(99), capacity_low_pct: Some(98), ..settings_input(4, None) };
    app.put_settings(&admin(), s).unwrap();
    run_job_to_end(&app, &job);
    let pending = app.store.usage().unwrap().deferred_bytes;
    assert!(pending > 0, "a backup stores compressible data raw for later");
    let before = app.store.usage().unwrap().pack_bytes;
    let now = now_unix();
    app.tick(now); // plans the maintenance (03:00 by default)
    app.tick(now + 2 * 86_400);
    let t = app
        .tasks(&admin())
        .unwrap()
        .into_iter()
        .find(|t| t.kind == TaskKind::Maintenance)
        .expect("the maintenance started");
    let t = wait(&app, t.id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let Some(TaskResult::Upkeep(r)) = &t.result else { panic!("{t:?}") };
    let rc = r.recompress.as_ref().expect("the maintenance recompressed");
    assert!(rc.complete && rc.chunks_compressed > 0 && rc.deferred_bytes_before == pending, "{rc:?}");
    let after = app.store.usage().unwrap();
    assert_eq!(after.deferred_bytes, 0);
    assert!(after.pack_bytes < before, "{before} -> {}", after.pack_bytes);
    let log = app.task_log(&admin(), t.id, 0).unwrap().0.join("\n");
    assert!(log.contains("recompress:") && log.contains("chunk(s) compressed"), "{log}");
    // Every chunk still matches its id.
    let v = app.store.verify_store(1, &|_| {}).unwrap();
    assert!(v.is_clean(), "{v:?}");
}

#[test]
fn above_the_low_watermark_a_backup_compresses_during_the_backup() {
    let (d, app) = open();
    let job = lifecycle_job(&app, d.path(), None, None);
    // Any filesystem in use is above 1%.
    let s = SettingsInput { capacity_high_pct: Some(99), capacity_low_pct: Some(1), ..settings_input(4, None) };
    app.put_settings(&admin(), s).unwrap();
    let t = run_job_to_end(&app, &job);
    let log = app.task_log(&admin(), t.id, 0).unwrap().0.join("\n");
    assert!(log.contains("compressing during the backup"), "{log}");
    assert_eq!(app.store.usage().unwrap().deferred_bytes, 0, "nothing was left raw");
}
