//! The encrypted staging store on an appliance: the key sealed in config.json, backups and
//! restores through tasks, the audited export, and a new appliance opening the store with
//! only the recovery key.

use super::*;

fn open_encrypted(dir: &std::path::Path) -> Arc<Appliance> {
    Appliance::open(dir, ApplianceOptions { encrypt_store: true, ..Default::default() }).unwrap()
}

#[test]
fn an_encrypted_appliance_seals_its_store_key_and_backs_up_and_restores() {
    let d = tempfile::tempdir().unwrap();
    let app = open_encrypted(d.path());
    let config = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(v["store_key"].as_str().unwrap().starts_with("sealed:v1:"), "{config}");
    let export = app.recovery_key(&admin()).unwrap();
    let hex_key = hex(store::recovery::parse_printable(&export.printable).unwrap().as_bytes());
    assert!(!config.contains(&hex_key), "the key is sealed, never in clear");
    assert!(app.store.keyring().is_encrypted());

    let img = d.path().join("vm.raw");
    write_sample_disk(&img, 8 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    let t = app.start_backup(&admin(), &src.id).unwrap();
    assert_eq!(wait(&app, t.id).state, TaskState::Succeeded);
    drop(app);
    // Reopened without the option: the sealed key opens the store.
    let app = reopen(d.path());
    let points = app.points(&admin()).unwrap();
    let r = app
        .start_restore(&admin(), RestoreRequest { point: points[0].point.spec(), disk: None, target: "r".into() })
        .unwrap();
    assert_eq!(wait(&app, r.id).state, TaskState::Succeeded);
    assert_eq!(std::fs::read(d.path().join("restores/r/disk0.raw")).unwrap(), std::fs::read(&img).unwrap());
}

#[test]
fn the_recovery_key_export_is_for_admins_and_audited() {
    let d = tempfile::tempdir().unwrap();
    let app = open_encrypted(d.path());
    for role in [Role::Auditor, Role::Operator] {
        let who = Principal::new("someone", role);
        assert!(matches!(app.recovery_key(&who), Err(ServiceError::Forbidden(_))), "{role:?}");
    }
    let export = app.recovery_key(&admin()).unwrap();
    assert_eq!(
        export.file.key,
        store::recovery::to_printable(&store::recovery::parse_printable(&export.printable).unwrap())
    );
    assert_eq!(export.store_id, app.store.store_id_hex());
    let log = app.audit_log(&admin(), 20, None).unwrap();
    assert!(log.iter().any(|e| e.action == "export recovery key" && e.user.contains("admin")), "{log:?}");
    assert!(!log.iter().any(|e| e.detail.contains(&export.file.key)), "the key itself is never audited");
    // The CLI's path, with the daemon stopped, gives the same key.
    drop(app);
    let offline = export_recovery_key(d.path()).unwrap().unwrap();
    assert_eq!(offline.file.key, export.file.key);
    // A plain appliance has none.
    let (_p, plain) = open();
    let e = plain.recovery_key(&admin()).unwrap_err().to_string();
    assert!(e.contains("not encrypted"), "{e}");
}

#[test]
fn a_new_appliance_opens_the_store_with_only_the_recovery_key() {
    let old = tempfile::tempdir().unwrap();
    let app = open_encrypted(old.path());
    let img = old.path().join("vm.raw");
    write_sample_disk(&img, 4 << 20).unwrap();
    let src = local_source(&app, "vm", img.display().to_string());
    assert_eq!(wait(&app, app.start_backup(&admin(), &src.id).unwrap().id).state, TaskState::Succeeded);
    let file = app.recovery_key(&admin()).unwrap().file.to_json();
    drop(app);

    // The disaster: only the store's files survive, on a new appliance with a new appliance key.
    let new = tempfile::tempdir().unwrap();
    let copy = std::process::Command::new("cp")
        .args(["-a", &old.path().join("store").display().to_string(), &new.path().display().to_string()])
        .status()
        .unwrap();
    assert!(copy.success());
    let e = Appliance::open(new.path(), ApplianceOptions::default()).unwrap_err().to_string();
    assert!(e.contains("encrypted and this appliance holds no key") && e.contains("rackvault key restore"), "{e}");
    // A wrong key is refused before anything is written.
    let wrong = store::StoreKey::from_bytes([1; 32]);
    let e = install_recovery_key(new.path(), &wrong, false).unwrap_err().to_string();
    assert!(e.contains("does not open this encrypted store"), "{e}");
    let key = store::recovery::parse_file(&file).unwrap();
    install_recovery_key(new.path(), &key, false).unwrap();
    let app = reopen(new.path());
    let points = app.points(&admin()).unwrap();
    assert_eq!(points.len(), 1);
    let r = app
        .start_restore(&admin(), RestoreRequest { point: points[0].point.spec(), disk: None, target: "r".into() })
        .unwrap();
    assert_eq!(wait(&app, r.id).state, TaskState::Succeeded);
    assert_eq!(std::fs::read(new.path().join("restores/r/disk0.raw")).unwrap(), std::fs::read(&img).unwrap());
    // Installing it again is a no-op; another key needs --replace.
    drop(app);
    install_recovery_key(new.path(), &key, false).unwrap();
}
