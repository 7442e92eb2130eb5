//! Direct NFS and Direct SAN ingest against the real servers of `tests/peers`: nfs-ganesha
//! (NFSv3) and tgt (iSCSI). Every disk format is made by `qemu-img`, put on the NFS export,
//! backed up over our own NFS client, restored, and compared with the guest view
//! `qemu-img convert -O raw` gives. LUNs are read over our own iSCSI initiator, with CHAP,
//! mutual CHAP and thin provisioning. Faults: a server restarted mid-backup, wrong
//! credentials, corrupt images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::*;

/// The guest-visible bytes of `image` according to qemu, as a raw file; its hash.
fn guest_view(image: &Path, out: &Path) -> String {
    qemu_img!["convert", "-O", "raw", image, out];
    hash_file(out)
}

/// The running nfs-ganesha: where its export lives locally, and URLs into it.
struct Nfs {
    env: BTreeMap<String, String>,
}

impl Nfs {
    fn get() -> Option<Nfs> {
        peer_env("nfs-ganesha").map(|env| Nfs { env })
    }
    fn export_dir(&self) -> PathBuf {
        PathBuf::from(&self.env["RV_NFS_EXPORT_DIR"])
    }
    /// A fresh directory in the export for one test.
    fn dir(&self, tag: &str) -> (PathBuf, String) {
        let rel = format!("e2e-{tag}-{}", std::process::id());
        let local = self.export_dir().join(&rel);
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).unwrap();
        (local, rel)
    }
    /// `nfs://` URL of `rel` (a path inside the export), with fixed ports.
    fn url(&self, rel: &str) -> String {
        format!(
            "nfs://{}:{}{}/{rel}?mountport={}",
            self.env["RV_NFS_HOST"], self.env["RV_NFS_PORT"], self.env["RV_NFS_EXPORT"], self.env["RV_NFS_MOUNT_PORT"]
        )
    }
}

/// The running tgt with its targets (tests/peers/start-tgt-disk.sh lists them).
struct Tgt {
    env: BTreeMap<String, String>,
}

impl Tgt {
    fn get() -> Option<Tgt> {
        peer_env("tgt-disk").map(|env| Tgt { env })
    }
    fn e(&self, k: &str) -> &str {
        &self.env[&format!("RV_TGT_DISK_{k}")]
    }
    fn url(&self, userinfo: &str, iqn_key: &str, query: &str) -> String {
        format!("iscsi://{userinfo}{}/{}/1{query}", self.e("PORTAL"), self.e(iqn_key))
    }
}

#[test]
fn every_disk_format_over_nfs_restores_to_the_guest_view() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _shared = peer_lock("nfs").read();
    let Some(nfs) = Nfs::get() else { return };
    let dir = scratch("nfs-formats");
    let (export, rel) = nfs.dir("formats");
    let raw = dir.path().join("vm.raw");
    // An odd size that is not a multiple of any grain or block size.
    make_image(&raw, 24 * MIB + 3 * 4096, 301, Profile::VM);
    let store = dir.path().join("store");
    let cases: &[(&str, &str, &[&str], &str)] = &[
        ("raw", "raw", &[], "raw"),
        ("qcow2", "qcow2", &[], "qcow2"),
        ("vmdk-sparse", "vmdk", &["-o", "subformat=monolithicSparse"], "vmdk"),
        ("vmdk-stream", "vmdk", &["-o", "subformat=streamOptimized"], "vmdk"),
        ("vmdk-flat", "vmdk", &["-o", "subformat=monolithicFlat"], "vmdk"),
        ("vmdk-2gb", "vmdk", &["-o", "subformat=twoGbMaxExtentSparse"], "vmdk"),
        ("vhdx-dynamic", "vhdx", &["-o", "subformat=dynamic"], "vhdx"),
        ("vhdx-fixed", "vhdx", &["-o", "subformat=fixed"], "vhdx"),
    ];
    for (i, &(name, fmt, opts, detected)) in cases.iter().enumerate() {
        // Names that do not give the format away: detection is by content.
        let file = format!("disk{i}.img");
        let image = export.join(&file);
        Rv::program("qemu-img").args(["convert", "-O", fmt]).args(opts).arg(&raw).arg(&image).run().success();
        let want = guest_view(&image, &dir.path().join(format!("{name}-guest.raw")));
        let url = nfs.url(&format!("{rel}/{file}"));
        let r = rv!["backup", &url, "--store", &store, "--name", name, "--json"].run().success().json();
        assert_eq!(r["format"], detected, "{name}: {r}");
        assert_eq!(r["bytes_logical"].as_u64(), Some(24 * MIB + 3 * 4096), "{name}: {r}");
        assert!(r["source"].as_str().unwrap().starts_with("nfs://"), "{name}: {r}");
        assert_restores_to(&store, name, &want, dir.path());
    }
    // The same guest data in eight containers: all but the first backup store no new chunks.
    for p in list_points(&store).iter().filter(|p| p["name"] != "raw") {
        assert_eq!(p["stats"]["chunks_new"].as_u64(), Some(0), "{p}");
    }
    verify_clean(&store);
    std::fs::remove_dir_all(&export).unwrap();
}

/// A VMware-style VM folder: a `.vmx` whose first disk is a snapshot delta over a
/// descriptor + flat base, a second thin disk, a CD-ROM image that is not backed up, and an
/// `.nvram`.
fn make_vm_folder(folder: &Path, scratch: &Path) -> (String, String) {
    let base_raw = scratch.join("base.raw");
    make_image(&base_raw, 16 * MIB, 411, Profile::VM);
    qemu_img!["convert", "-O", "vmdk", "-o", "subformat=monolithicFlat", &base_raw, folder.join("web01.vmdk")];
    Rv::program("qemu-img")
        .args(["create", "-q", "-f", "vmdk", "-b", "web01.vmdk", "-F", "vmdk", "web01-000001.vmdk"])
        .current_dir(folder)
        .run()
        .success();
    // Guest writes after the snapshot land in the delta.
    Rv::program("qemu-io")
        .args(["-f", "vmdk", "-c", "write -P 0x5a 1M 64k", "-c", "write -P 0xa5 9M 1M", "-c", "write -z 12M 256k"])
        .arg(folder.join("web01-000001.vmdk"))
        .run()
        .success();
    let data_raw = scratch.join("data.raw");
    make_image(&data_raw, 8 * MIB, 412, Profile::VM);
    qemu_img!["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", &data_raw, folder.join("web01_1.vmdk")];
    std::fs::write(folder.join("install.iso"), vec![7u8; 4096]).unwrap();
    std::fs::write(folder.join("web01.nvram"), vec![0x42u8; 8684]).unwrap();
    std::fs::write(folder.join("web01.vmx.lck"), b"").ok();
    let vmx = r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "web01"
guestOS = "debian12-64"
memSize = "2048"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01-000001.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "/vmfs/volumes/5f0c7d3e-datastore1/web01/web01_1.vmdk"
sata0.present = "TRUE"
sata0:0.present = "TRUE"
sata0:0.deviceType = "cdrom-image"
sata0:0.fileName = "install.iso"
nvram = "web01.nvram"
"#;
    std::fs::write(folder.join("web01.vmx"), vmx).unwrap();
    let d0 = guest_view(&folder.join("web01-000001.vmdk"), &scratch.join("d0.raw"));
    let d1 = guest_view(&folder.join("web01_1.vmdk"), &scratch.join("d1.raw"));
    (d0, d1)
}

#[test]
fn a_vm_folder_over_nfs_is_one_restore_point_with_every_disk_and_its_vmx() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _shared = peer_lock("nfs").read();
    let Some(nfs) = Nfs::get() else { return };
    let dir = scratch("nfs-vmfolder");
    let (export, rel) = nfs.dir("vmfolder");
    let (want0, want1) = make_vm_folder(&export, dir.path());
    let store = dir.path().join("store");
    let url = nfs.url(&format!("{rel}/"));

    // "Test connection" first: the server's exports, then the folder as a backup would see it.
    let server = format!(
        "nfs://{}:{}?mountport={}",
        nfs.env["RV_NFS_HOST"], nfs.env["RV_NFS_PORT"], nfs.env["RV_NFS_MOUNT_PORT"]
    );
    let exports = rv!["probe", &server, "--json"].run().success().json();
    assert_eq!(exports["exports"], serde_json::json!([nfs.env["RV_NFS_EXPORT"]]), "{exports}");
    let probed = rv!["probe", &url, "--json"].run().success().json();
    assert_eq!(probed["disks"].as_array().map(|d| d.len()), Some(2), "{probed}");
    assert_eq!(probed["disks"][0]["format"], "vmdk", "{probed}");

    let r = rv!["backup", &url, "--store", &store, "--name", "web01", "--json"].run().success().json();
    let labels: Vec<&str> = r["disks"].as_array().unwrap().iter().map(|d| d["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["scsi0:0", "scsi0:1"], "{r}");
    assert_eq!(r["files"], serde_json::json!(["web01.nvram", "web01.vmx"]), "{r}");
    assert!(r["disks"][0]["source"].as_str().unwrap().ends_with("/web01-000001.vmdk"), "{r}");

    // Whole VM back into a directory: both disks, the .vmx and the .nvram, byte for byte.
    let out = dir.path().join("restored");
    let all = rv!["restore", "web01", "--store", &store, "--all", "--to", &out, "--json"].run().success().json();
    assert_eq!(all["written"].as_array().unwrap().len(), 4, "{all}");
    assert_eq!(hash_file(&out.join("scsi0-0.raw")), want0, "snapshot chain restored differently from its guest view");
    assert_eq!(hash_file(&out.join("scsi0-1.raw")), want1);
    assert_eq!(std::fs::read(out.join("web01.vmx")).unwrap(), std::fs::read(export.join("web01.vmx")).unwrap());
    assert_eq!(std::fs::read(out.join("web01.nvram")).unwrap(), std::fs::read(export.join("web01.nvram")).unwrap());

    // One disk by label; a multi-disk point without --disk is refused with the labels listed.
    let one = dir.path().join("one.raw");
    rv!["restore", "web01", "--store", &store, "--disk", "scsi0:1", "--to", &one].run().success();
    assert_eq!(hash_file(&one), want1);
    rv!["restore", "web01", "--store", &store, "--to", dir.path().join("x.raw")]
        .run()
        .failure()
        .stderr_has(&["scsi0:0, scsi0:1"]);

    // The next backup of the unchanged VM stores only index nodes and the manifest.
    let again = rv!["backup", &url, "--store", &store, "--name", "web01", "--json"].run().success().json();
    assert_eq!(again["chunks_new"].as_u64(), Some(0), "{again}");
    verify_clean(&store);
    std::fs::remove_dir_all(&export).unwrap();
}

#[test]
fn corrupt_images_over_nfs_fail_clearly_and_leave_no_restore_point() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _shared = peer_lock("nfs").read();
    let Some(nfs) = Nfs::get() else { return };
    let dir = scratch("nfs-corrupt");
    let (export, rel) = nfs.dir("corrupt");
    let raw = dir.path().join("vm.raw");
    make_image(&raw, 8 * MIB, 501, Profile::VM);
    qemu_img!["convert", "-O", "vmdk", &raw, export.join("bad.vmdk")];
    qemu_img!["convert", "-O", "qcow2", &raw, export.join("bad.qcow2")];
    // VMDK: grain directory offset far past the end of the file (header field at byte 56).
    let mut v = std::fs::read(export.join("bad.vmdk")).unwrap();
    v[56..64].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(export.join("bad.vmdk"), v).unwrap();
    // qcow2: L1 table offset past the end of the file (header field at byte 40).
    let mut q = std::fs::read(export.join("bad.qcow2")).unwrap();
    q[40..48].copy_from_slice(&(1u64 << 50).to_be_bytes());
    std::fs::write(export.join("bad.qcow2"), q).unwrap();
    let store = dir.path().join("store");
    for file in ["bad.vmdk", "bad.qcow2"] {
        let url = nfs.url(&format!("{rel}/{file}"));
        rv!["backup", &url, "--store", &store, "--name", "bad"].run().failure().stderr_has(&["corrupt", file]);
    }
    // A missing file and a missing export are named as such.
    rv!["backup", nfs.url(&format!("{rel}/nope.vmdk")), "--store", &store].run().failure().stderr_has(&["nope.vmdk"]);
    let bad_export = format!(
        "nfs://{}:{}/no-such-export/disk.img?mountport={}",
        nfs.env["RV_NFS_HOST"], nfs.env["RV_NFS_PORT"], nfs.env["RV_NFS_MOUNT_PORT"]
    );
    rv!["backup", &bad_export, "--store", &store].run().failure().stderr_has(&["/export"]);
    if store.exists() {
        assert!(list_points(&store).is_empty());
    }
    std::fs::remove_dir_all(&export).unwrap();
}

#[test]
fn nfs_server_restart_mid_backup_finishes_or_fails_cleanly() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _exclusive = peer_lock("nfs").write();
    let Some(nfs) = Nfs::get() else { return };
    let dir = scratch("nfs-restart");
    let store = dir.path().join("store");
    let url = nfs.url(&nfs.env["RV_NFS_DISK_FILE"]);
    let want = hash_file(&nfs.export_dir().join(&nfs.env["RV_NFS_DISK_FILE"]));
    // Uncompressed and one thread, so the 256 MiB read takes long enough to be interrupted.
    let started = Instant::now();
    let (child, cmdline) =
        rv!["backup", &url, "--store", &store, "--name", "disk", "--json", "--threads", "1", "--no-compress"].spawn();
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    peer_script("stop-nfs-ganesha.sh");
    std::thread::sleep(Duration::from_secs(2));
    peer_script("start-nfs-ganesha.sh");
    eprintln!("nfs-ganesha was down for {:.1} s", stopped.elapsed().as_secs_f64());
    let out = Outcome::from_child(child, cmdline, started);
    let points = if store.exists() { list_points(&store) } else { vec![] };
    if out.code == Some(0) {
        assert_eq!(points.len(), 1);
        assert_restores_to(&store, "disk", &want, dir.path());
        eprintln!("backup reconnected and finished");
    } else {
        assert!(points.is_empty(), "a failed backup left a restore point: {points:?}");
        let out = out.stderr_has(&["nfs://"]);
        eprintln!("backup failed cleanly: {}", out.stderr);
    }
    verify_clean_if_exists(&store);
}

fn verify_clean_if_exists(store: &Path) {
    if store.exists() {
        verify_clean(store);
    }
}

#[test]
fn iscsi_luns_open_chap_and_mutual_chap_restore_exactly() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _shared = peer_lock("tgt").read();
    let Some(tgt) = Tgt::get() else { return };
    // Discovery lists the targets of the portal (those whose ACL allows us).
    let found = rv!["probe", format!("iscsi://{}", tgt.e("PORTAL")), "--json"].run().success().json();
    let names: Vec<&str> = found["targets"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for key in ["IQN", "CHAP_IQN", "MUTUAL_IQN", "THIN_IQN"] {
        assert!(names.contains(&tgt.e(key)), "{key} missing from discovery: {found}");
    }
    let dir = scratch("iscsi-luns");
    let store = dir.path().join("store");
    let want = hash_file(Path::new(tgt.e("IMG")));
    let user = tgt.e("CHAP_USER");
    let pass = tgt.e("CHAP_PASS");
    let mutual = format!("?target_user={}&target_password={}", tgt.e("MUTUAL_USER"), tgt.e("MUTUAL_PASS"));
    let cases = [
        ("open", tgt.url("", "IQN", "")),
        ("chap", tgt.url(&format!("{user}%{pass}@"), "CHAP_IQN", "")),
        ("mutual", tgt.url(&format!("{user}%{pass}@"), "MUTUAL_IQN", &mutual)),
        ("digests", tgt.url("", "IQN", "?header_digest=crc32c&data_digest=crc32c")),
    ];
    for (name, url) in &cases {
        let out = rv!["backup", url, "--store", &store, "--name", name, "--json"].run().success();
        assert!(!out.stdout.contains(pass) && !out.stderr.contains(pass), "secret printed:{}", out.context());
        let r = out.json();
        assert_eq!(r["bytes_logical"].as_u64(), tgt.e("SIZE_BYTES").parse().ok(), "{r}");
        assert_restores_to(&store, name, &want, dir.path());
    }
    // Secrets from files instead of the URL.
    let secret = dir.path().join("chap.secret");
    std::fs::write(&secret, format!("{pass}\n")).unwrap();
    let tsecret = dir.path().join("target.secret");
    std::fs::write(&tsecret, tgt.e("MUTUAL_PASS")).unwrap();
    rv!["backup", tgt.url("", "MUTUAL_IQN", ""), "--store", &store, "--name", "files", "--chap-user", user]
        .arg("--chap-secret-file")
        .arg(&secret)
        .args(["--mutual-user", tgt.e("MUTUAL_USER")])
        .arg("--mutual-secret-file")
        .arg(&tsecret)
        .run()
        .success();
    // Nothing in the store's metadata holds a secret.
    let listing = rv!["list", "--store", &store, "--json"].run().success();
    assert!(!listing.stdout.contains(pass) && !listing.stdout.contains(tgt.e("MUTUAL_PASS")));
    verify_clean(&store);
}

#[test]
fn wrong_iscsi_credentials_fail_clearly_without_a_restore_point() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _shared = peer_lock("tgt").read();
    let Some(tgt) = Tgt::get() else { return };
    let dir = scratch("iscsi-badauth");
    let store = dir.path().join("store");
    let user = tgt.e("CHAP_USER");
    let bad = tgt.url(&format!("{user}%WrongSecret99@"), "CHAP_IQN", "");
    let out = rv!["backup", &bad, "--store", &store, "--name", "x"].run().failure().stderr_has(&["authentication"]);
    assert!(!out.stderr.contains("WrongSecret99"), "secret echoed:{}", out.context());
    // No credentials at all for a CHAP target.
    rv!["backup", tgt.url("", "CHAP_IQN", ""), "--store", &store, "--name", "x"].run().failure();
    // The target proves the wrong mutual secret.
    let wrong_mutual = tgt.url(
        &format!("{user}%{}@", tgt.e("CHAP_PASS")),
        "MUTUAL_IQN",
        &format!("?target_user={}&target_password=NotTheTargetSecret1", tgt.e("MUTUAL_USER")),
    );
    rv!["backup", &wrong_mutual, "--store", &store, "--name", "x"].run().failure().stderr_has(&["mutual"]);
    if store.exists() {
        assert!(list_points(&store).is_empty());
    }
}

#[test]
fn thin_lun_unmapped_ranges_are_never_read() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _shared = peer_lock("tgt").read();
    let Some(tgt) = Tgt::get() else { return };
    let dir = scratch("iscsi-thin");
    let store = dir.path().join("store");
    let layout = std::fs::read_to_string(tgt.e("THIN_LAYOUT")).unwrap();
    let mapped: u64 = layout.lines().map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()).sum();
    let r = rv!["backup", tgt.url("", "THIN_IQN", ""), "--store", &store, "--name", "thin", "--json"]
        .run()
        .success()
        .json();
    assert_eq!(r["bytes_logical"].as_u64(), tgt.e("THIN_BYTES").parse().ok(), "{r}");
    let read = r["bytes_read"].as_u64().unwrap();
    assert!(read >= mapped && read <= mapped + 4 * MIB, "read {read} bytes of a LUN with {mapped} mapped: {r}");
    assert_restores_to(&store, "thin", &hash_file(Path::new(tgt.e("THIN_IMG"))), dir.path());
}

#[test]
fn iscsi_target_restart_mid_backup_finishes_or_fails_cleanly() {
    // Lock before reading the env file: a restart test removes it while the peer is down.
    let _exclusive = peer_lock("tgt").write();
    let Some(tgt) = Tgt::get() else { return };
    let dir = scratch("iscsi-restart");
    let store = dir.path().join("store");
    let want = hash_file(Path::new(tgt.e("IMG")));
    let started = Instant::now();
    let (child, cmdline) =
        rv!["backup", tgt.url("", "IQN", ""), "--store", &store, "--name", "lun", "--threads", "1", "--no-compress"]
            .spawn();
    std::thread::sleep(Duration::from_millis(300));
    peer_script("stop-tgt-disk.sh");
    std::thread::sleep(Duration::from_secs(1));
    peer_script("start-tgt-disk.sh");
    let out = Outcome::from_child(child, cmdline, started);
    let points = if store.exists() { list_points(&store) } else { vec![] };
    if out.code == Some(0) {
        assert_eq!(points.len(), 1);
        assert_restores_to(&store, "lun", &want, dir.path());
        eprintln!("backup reconnected and finished");
    } else {
        assert!(points.is_empty(), "a failed backup left a restore point: {points:?}");
        let out = out.stderr_has(&["iscsi://"]);
        eprintln!("backup failed cleanly: {}", out.stderr);
    }
    verify_clean_if_exists(&store);
}

#[test]
fn a_local_vm_folder_is_one_restore_point_too() {
    let dir = scratch("local-vmfolder");
    let folder = dir.path().join("web01");
    std::fs::create_dir(&folder).unwrap();
    let (want0, want1) = make_vm_folder(&folder, dir.path());
    let store = dir.path().join("store");
    let r = backup(&folder, &store, "web01", &[]);
    assert_eq!(r["disks"].as_array().map(|d| d.len()), Some(2), "{r}");
    let out = dir.path().join("restored");
    rv!["restore", "web01", "--store", &store, "--all", "--to", &out].run().success();
    assert_eq!(hash_file(&out.join("scsi0-0.raw")), want0);
    assert_eq!(hash_file(&out.join("scsi0-1.raw")), want1);
    // A folder without a .vmx, and one with two, are refused with what to do.
    std::fs::copy(folder.join("web01.vmx"), folder.join("copy.vmx")).unwrap();
    rv!["backup", &folder, "--store", &store].run().failure().stderr_has(&["2 .vmx files"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    rv!["backup", &empty, "--store", &store].run().failure().stderr_has(&["no .vmx"]);
}
