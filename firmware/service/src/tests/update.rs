//! Updates of the system, against a layout of plain files (slots, EFI partition, command
//! line): what is refused leaves both slots and the boot entries as they were; an update is
//! written to the other slot with a boot entry on trial; the system view tells a pending
//! reboot, a running update and a rollback apart. The same under qemu: tests/e2e/tests/image.rs.

use super::*;
use crate::replica_wire::StreamEnd;
use crate::update::{SystemLayout, UpdateState};

const SLOT: u64 = 1 << 20;

struct System {
    dir: tempfile::TempDir,
    layout: SystemLayout,
    key: Vec<u8>,
}

impl System {
    fn new() -> System {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("cmdline"), "root=PARTLABEL=rv-root-a ro rackvault.slot=a panic=5\n").unwrap();
        std::fs::write(p.join("boot_id"), "boot-1\n").unwrap();
        std::fs::create_dir_all(p.join("esp/loader/entries")).unwrap();
        std::fs::write(
            p.join("esp/loader/entries/rackvault-a.conf"),
            "title rackvault 1.0.0 (slot a)\nsort-key rackvault\nversion 1\nlinux /rackvault/a/vmlinuz\n\
             initrd /rackvault/a/initrd.img\noptions root=PARTLABEL=rv-root-a ro rackvault.slot=a panic=5\n",
        )
        .unwrap();
        for s in ["a", "b"] {
            let f = std::fs::File::create(p.join(format!("rv-root-{s}"))).unwrap();
            f.set_len(SLOT).unwrap();
        }
        let (key, public) = bundle::generate_key().unwrap();
        std::fs::write(p.join("update.pub"), public.to_hex()).unwrap();
        std::fs::write(p.join("version"), "1.0.0\n").unwrap();
        let layout = SystemLayout {
            cmdline: p.join("cmdline"),
            boot_id: p.join("boot_id"),
            esp: p.join("esp"),
            root_device: p.join("rv-root-{slot}").display().to_string(),
            public_key: p.join("update.pub"),
            version: p.join("version"),
            network_applied: p.join("network-applied.json"),
        };
        System { dir, layout, key }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// A bundle of `version` with a root of `root_len` bytes, signed with `key`.
    fn bundle(&self, key: &[u8], version: &str, root_len: usize) -> Vec<u8> {
        let p = self.dir.path();
        std::fs::write(p.join("root.img"), vec![0x5a; root_len]).unwrap();
        std::fs::write(p.join("vmlinuz"), format!("kernel {version}")).unwrap();
        std::fs::write(p.join("initrd"), format!("initrd {version}")).unwrap();
        let mut out = Vec::new();
        let parts = [("root", p.join("root.img")), ("kernel", p.join("vmlinuz")), ("initrd", p.join("initrd"))];
        let parts: Vec<(&str, &std::path::Path)> = parts.iter().map(|(n, p)| (*n, p.as_path())).collect();
        bundle::write_bundle(key, version, 1, &parts, &mut out).unwrap();
        out
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("esp/loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn slot_b(&self) -> Vec<u8> {
        std::fs::read(self.path("rv-root-b")).unwrap()
    }
}

fn upload(app: &Appliance, bytes: &[u8], force: bool, cut: bool) -> Result<crate::update::UpdateApplied, ServiceError> {
    let mut pieces: Vec<Vec<u8>> = bytes.chunks(64 << 10).map(<[u8]>::to_vec).collect();
    pieces.reverse();
    let mut next = || match pieces.pop() {
        Some(p) => Ok(p),
        None if cut => Err(StreamEnd::Cut("the connection broke".into())),
        None => Err(StreamEnd::Complete),
    };
    app.receive_update(&admin(), force, &mut next)
}

#[test]
fn refused_bundles_leave_both_slots_and_the_boot_entries_as_they_were() {
    let sys = System::new();
    let d = tempfile::tempdir().unwrap();
    let app =
        Appliance::open(d.path(), ApplianceOptions { system: Some(sys.layout.clone()), ..Default::default() }).unwrap();
    let (other_key, _) = bundle::generate_key().unwrap();
    let good = sys.bundle(&sys.key, "1.1.0", 4096);
    let cases: Vec<(&str, Vec<u8>, bool, bool)> = vec![
        ("signature", sys.bundle(&other_key, "1.1.0", 4096), false, false),
        ("not newer", sys.bundle(&sys.key, "0.9.0", 4096), false, false),
        ("not newer", sys.bundle(&sys.key, "1.0.0", 4096), false, false),
        ("ends 76 bytes early", good[..good.len() - 100].to_vec(), false, false),
        ("cut off", good[..good.len() / 2].to_vec(), false, true),
        ("not a rackvault update bundle", b"GIF89a and so on".to_vec(), false, false),
    ];
    let before = sys.entries();
    for (what, bytes, force, cut) in cases {
        let e = upload(&app, &bytes, force, cut).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
        assert!(e.to_string().contains("either slot"), "{what}: says nothing was written: {e}");
        assert_eq!(e.kind(), ServiceErrorKind::Invalid, "{what}");
        assert_eq!(sys.entries(), before, "{what}: the boot entries are unchanged");
        assert!(sys.slot_b().iter().all(|b| *b == 0), "{what}: slot b is untouched");
        assert!(app.system_info(&admin()).unwrap().update.is_none());
        assert!(!d.path().join("updates/upload.part").exists(), "{what}: the refused upload is not kept");
    }
    // Only admins update.
    let op = Principal::new("op", Role::Operator);
    let mut none = || Err(StreamEnd::Complete);
    assert_eq!(app.receive_update(&op, false, &mut none).unwrap_err().kind(), ServiceErrorKind::Forbidden);
    // A root larger than the slot is refused before slot b gets an entry.
    let e = upload(&app, &sys.bundle(&sys.key, "1.1.0", SLOT as usize + 1), false, false).unwrap_err();
    assert!(e.to_string().contains("slot b has no boot entry"), "{e}");
    assert_eq!(sys.entries(), before);
}

#[test]
fn an_update_goes_to_the_other_slot_on_trial_and_the_system_tells_a_reboot_an_update_and_a_rollback_apart() {
    let sys = System::new();
    let d = tempfile::tempdir().unwrap();
    let app =
        Appliance::open(d.path(), ApplianceOptions { system: Some(sys.layout.clone()), ..Default::default() }).unwrap();
    let info = app.system_info(&admin()).unwrap();
    assert_eq!((info.appliance, info.version.as_str(), info.slot.as_deref()), (true, "1.0.0", Some("a")));

    let applied = upload(&app, &sys.bundle(&sys.key, "1.1.0", 8192), false, false).unwrap();
    assert_eq!((applied.version.as_str(), applied.slot.as_str()), ("1.1.0", "b"));
    assert!(sys.slot_b()[..8192].iter().all(|b| *b == 0x5a) && sys.slot_b()[8192..].iter().all(|b| *b == 0));
    assert_eq!(std::fs::read_to_string(sys.path("esp/rackvault/b/vmlinuz")).unwrap(), "kernel 1.1.0");
    assert_eq!(sys.entries(), ["rackvault-a.conf", "rackvault-b+3.conf"]);
    let entry = std::fs::read_to_string(sys.path("esp/loader/entries/rackvault-b+3.conf")).unwrap();
    for want in ["version 2", "sort-key rackvault", "root=PARTLABEL=rv-root-b", "rackvault.slot=b", "panic=5"] {
        assert!(entry.contains(want), "{want}: {entry}");
    }
    let u = app.system_info(&admin()).unwrap().update.unwrap();
    assert_eq!(u.state, UpdateState::RebootPending, "{u:?}");

    // The next boot runs slot b: the update runs.
    std::fs::write(sys.path("cmdline"), "root=PARTLABEL=rv-root-b ro rackvault.slot=b panic=5\n").unwrap();
    std::fs::write(sys.path("boot_id"), "boot-2\n").unwrap();
    let info = app.system_info(&admin()).unwrap();
    let u = info.update.unwrap();
    assert_eq!((u.state, u.to_version.as_str()), (UpdateState::Running, "1.1.0"), "{u:?}");
    assert!(info.on_trial, "slot b counts its tries until the health check marks it good");

    // Had the boot loader gone back to slot a, the system would say so.
    std::fs::write(sys.path("cmdline"), "root=PARTLABEL=rv-root-a ro rackvault.slot=a panic=5\n").unwrap();
    let u = app.system_info(&admin()).unwrap().update.unwrap();
    assert_eq!(u.state, UpdateState::RolledBack, "{u:?}");
    assert!(u.message.contains("went back to slot a"), "{}", u.message);

    // From slot b (blessed), an admin may force a downgrade into slot a: its entry has the
    // next generation, so the boot loader tries it first.
    std::fs::write(sys.path("cmdline"), "root=PARTLABEL=rv-root-b ro rackvault.slot=b panic=5\n").unwrap();
    std::fs::rename(sys.path("esp/loader/entries/rackvault-b+3.conf"), sys.path("esp/loader/entries/rackvault-b.conf"))
        .unwrap();
    std::fs::write(sys.path("version"), "1.1.0\n").unwrap();
    let old = sys.bundle(&sys.key, "1.0.0", 4096);
    assert!(upload(&app, &old, false, false).unwrap_err().to_string().contains("not newer"));
    let applied = upload(&app, &old, true, false).unwrap();
    assert_eq!(applied.slot, "a");
    assert_eq!(sys.entries(), ["rackvault-a+3.conf", "rackvault-b.conf"]);
    let entry = std::fs::read_to_string(sys.path("esp/loader/entries/rackvault-a+3.conf")).unwrap();
    assert!(entry.contains("version 3") && entry.contains("rackvault.slot=a"), "{entry}");
}

#[test]
fn network_settings_are_kept_for_the_system_and_the_view_tells_applied_pending_and_failed_apart() {
    use crate::network::{AddressMode, AppliedNetwork, ApplyState, NetworkRecord, NetworkSettings};
    let sys = System::new();
    let d = tempfile::tempdir().unwrap();
    let app =
        Appliance::open(d.path(), ApplianceOptions { system: Some(sys.layout.clone()), ..Default::default() }).unwrap();
    let v = app.network(&admin()).unwrap();
    assert_eq!((v.settings.mode, v.state), (AddressMode::Dhcp, ApplyState::Pending), "{v:?}");

    let wanted = NetworkSettings {
        mode: AddressMode::Static,
        address: Some("10.0.2.16/24".into()),
        gateway: Some("10.0.2.2".into()),
        dns: vec!["10.0.2.3".into()],
        ntp: vec!["10.0.2.2".into()],
    };
    let op = Principal::new("op", Role::Operator);
    assert_eq!(app.put_network(&op, wanted.clone()).unwrap_err().kind(), ServiceErrorKind::Forbidden);
    let v = app.put_network(&admin(), wanted.clone()).unwrap();
    assert_eq!((&v.settings, v.state), (&wanted, ApplyState::Pending), "{v:?}");
    // What the root side reads is the file the daemon wrote, checked again.
    let record = crate::network::read_settings_file(d.path()).unwrap().expect("the settings file");
    assert_eq!(record.settings(), wanted);

    // `rackvault network apply` reports: applied, or failed with its reason.
    let report = |record: Option<NetworkRecord>, ok: bool, message: &str| {
        let a = AppliedNetwork { v: 1, record, ok, message: message.into(), at_unix: 1 };
        std::fs::write(sys.path("network-applied.json"), serde_json::to_vec(&a).unwrap()).unwrap();
    };
    report(Some(record.clone()), true, "static 10.0.2.16/24");
    let v = app.network(&admin()).unwrap();
    assert_eq!((v.state, v.message.as_str()), (ApplyState::Applied, "static 10.0.2.16/24"));
    report(Some(record.clone()), false, "networkctl reload failed");
    assert_eq!(app.network(&admin()).unwrap().state, ApplyState::Failed);
    // Changed since: pending again.
    report(Some(record), true, "static 10.0.2.16/24");
    let dhcp = NetworkSettings { ntp: vec!["ntp.example.net".into()], ..Default::default() };
    assert_eq!(app.put_network(&admin(), dhcp).unwrap().state, ApplyState::Pending);
    // Refused settings leave the file as it was.
    let before = std::fs::read(d.path().join("network.json")).unwrap();
    let bad = NetworkSettings { mode: AddressMode::Static, address: Some("10.0.2.16".into()), ..Default::default() };
    assert_eq!(app.put_network(&admin(), bad).unwrap_err().kind(), ServiceErrorKind::Invalid);
    assert_eq!(std::fs::read(d.path().join("network.json")).unwrap(), before);
}
