//! What a source argument turns into: container formats detected by content (VHD read as its
//! guest disk, formats we do not read refused with how to convert them), and a `.vmx` standing
//! for its VM folder, on local paths and over NFS (nfs-ganesha from `tests/peers`). Images are
//! made by qemu-img; tests that need it or the NFS peer print why they are skipped when they
//! are missing (`RACKVAULT_REQUIRE_PEERS=1` turns a missing peer into a failure).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use engine::{open_source_all, BackupOptions, NoProgress, RestoreFormat, RestoreOptions, SourceSecrets};
use store::{Store, StoreOptions};

const MIB: u64 = 1 << 20;

fn have(program: &str) -> bool {
    let ok = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: {program} is not installed (apt-get install qemu-utils)");
    }
    ok
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A raw disk with a deterministic pattern: incompressible runs, text, and zero regions
/// (whole MiBs of them, so a dynamic image leaves blocks unallocated).
fn make_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    let mut x = seed | 1;
    for (i, c) in v.chunks_mut(MIB as usize).enumerate() {
        match i % 5 {
            0 | 3 => c.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
            1 => c.iter_mut().zip(format!("sector text {i} seed {seed}\n").bytes().cycle()).for_each(|(b, t)| *b = t),
            _ => {}
        }
    }
    std::fs::write(path, &v).unwrap();
    v
}

/// The guest-visible bytes of `image` according to QEMU.
fn qemu_guest(image: &Path, fmt: &str) -> Vec<u8> {
    let out = image.with_extension("guest");
    run("qemu-img", &["convert", "-f", fmt, "-O", "raw", s(image), s(&out)]);
    std::fs::read(&out).unwrap()
}

fn new_store(dir: &Path) -> Store {
    Store::open(&dir.join("store"), &StoreOptions { create: true, ..Default::default() }).unwrap()
}

/// Back up every disk of `spec` as point `name`; returns the report.
fn backup(store: &Store, spec: &str, name: &str) -> engine::BackupReport {
    let opened = open_source_all(spec, &SourceSecrets::default()).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let disks: Vec<engine::DiskToBackup<'_>> =
        opened.disks.iter().map(|(label, d)| engine::DiskToBackup { label, source: d.as_ref() }).collect();
    let opts = BackupOptions { chunk_size: 64 << 10, threads: 2, ..BackupOptions::new(name) };
    engine::backup_disks(store, &disks, &opened.files, &opts, &NoProgress).unwrap()
}

/// Restore disk `disk` of point `name` to a raw file; its bytes.
fn restore(store: &Store, name: &str, disk: usize, to: &Path) -> Vec<u8> {
    let point = store.find(name).unwrap();
    let opts = RestoreOptions {
        to: to.to_path_buf(),
        format: RestoreFormat::Raw,
        verify: true,
        force: false,
        disk,
        threads: 2,
        read_ahead: true,
    };
    engine::restore(store, &point, &opts, &NoProgress).unwrap();
    std::fs::read(to).unwrap()
}

#[test]
fn a_vhd_source_backs_up_as_its_guest_disk_not_its_container() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("guest.raw");
    make_raw(&raw, 23 * MIB + 4096, 13);
    let store = new_store(dir.path());
    for sub in ["dynamic", "fixed"] {
        // A name that does not give the format away: detection is by content.
        let image = dir.path().join(format!("{sub}.img"));
        run("qemu-img", &["convert", "-f", "raw", "-O", "vpc", "-o", &format!("subformat={sub}"), s(&raw), s(&image)]);
        let guest = qemu_guest(&image, "vpc");
        let container = std::fs::metadata(&image).unwrap().len();
        assert_ne!(container, guest.len() as u64, "{sub}: the test needs a container that differs from its disk");

        let r = backup(&store, s(&image), sub);
        assert_eq!(r.format, "vhd", "{sub}: {r:?}");
        assert_eq!(r.bytes_logical, guest.len() as u64, "{sub}: backed up the container, not the guest disk");
        let back = restore(&store, sub, 0, &dir.path().join(format!("{sub}.restored")));
        assert!(back == guest, "{sub}: restored disk differs from QEMU's guest view");
    }
}

#[test]
fn container_formats_we_do_not_read_are_refused_with_how_to_convert_them() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("guest.raw");
    make_raw(&raw, 4 * MIB, 14);
    for (fmt, words) in
        [("vdi", "VirtualBox VDI"), ("qed", "QED"), ("parallels", "Parallels"), ("qcow", "qcow version 1")]
    {
        let image = dir.path().join(format!("disk-{fmt}.img"));
        run("qemu-img", &["convert", "-f", "raw", "-O", fmt, s(&raw), s(&image)]);
        let e = open_source_all(s(&image), &SourceSecrets::default()).map(|o| o.disks.len()).unwrap_err().to_string();
        assert!(e.contains(words), "{fmt}: {e}");
        assert!(e.contains(&format!("qemu-img convert -f {fmt} -O qcow2")), "{fmt}: no advice in {e}");
        assert!(e.contains(s(&image)), "{fmt}: the error does not name the file: {e}");
    }
}

/// A VM folder: a `.vmx` naming two VMDK disks, and an `.nvram`. Returns the guest views of
/// the two disks.
fn make_vm_folder(folder: &Path, scratch: &Path) -> (Vec<u8>, Vec<u8>) {
    std::fs::create_dir_all(folder).unwrap();
    let r0 = scratch.join("d0.raw");
    let r1 = scratch.join("d1.raw");
    make_raw(&r0, 6 * MIB, 21);
    make_raw(&r1, 3 * MIB, 22);
    run("qemu-img", &["convert", "-f", "raw", "-O", "vmdk", s(&r0), s(&folder.join("app01.vmdk"))]);
    run("qemu-img", &["convert", "-f", "raw", "-O", "vmdk", s(&r1), s(&folder.join("app01_1.vmdk"))]);
    std::fs::write(folder.join("app01.nvram"), vec![0x42u8; 8684]).unwrap();
    let vmx = r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "app01"
guestOS = "debian12-64"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "app01.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "app01_1.vmdk"
nvram = "app01.nvram"
"#;
    std::fs::write(folder.join("app01.vmx"), vmx).unwrap();
    (std::fs::read(&r0).unwrap(), std::fs::read(&r1).unwrap())
}

/// The point backed up from a VM folder holds both disks and the configuration files.
fn assert_vm_point(store: &Store, r: &engine::BackupReport, name: &str, want: &(Vec<u8>, Vec<u8>), scratch: &Path) {
    let labels: Vec<&str> = r.disks.iter().map(|d| d.label.as_str()).collect();
    assert_eq!(labels, ["scsi0:0", "scsi0:1"], "{r:?}");
    assert_eq!(r.files, ["app01.nvram", "app01.vmx"], "{r:?}");
    assert_eq!(r.disks[0].bytes_logical, 6 * MIB, "{r:?}");
    assert!(restore(store, name, 0, &scratch.join(format!("{name}-0.raw"))) == want.0);
    assert!(restore(store, name, 1, &scratch.join(format!("{name}-1.raw"))) == want.1);
}

#[test]
fn a_vmx_file_as_the_source_backs_up_its_vm_folder() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("app01");
    let want = make_vm_folder(&folder, dir.path());
    let store = new_store(dir.path());
    let r = backup(&store, s(&folder.join("app01.vmx")), "by-vmx");
    assert_vm_point(&store, &r, "by-vmx", &want, dir.path());
    // The same as giving the folder.
    let r = backup(&store, s(&folder), "by-folder");
    assert_vm_point(&store, &r, "by-folder", &want, dir.path());

    // A second VM's .vmx in the same folder: naming one picks it; the folder alone is ambiguous.
    std::fs::write(folder.join("other.vmx"), "displayName = \"other\"\n").unwrap();
    let r = backup(&store, s(&folder.join("app01.vmx")), "by-vmx-2");
    assert_eq!(r.disks.len(), 2, "{r:?}");
    let e = open_source_all(s(&folder), &SourceSecrets::default()).map(|o| o.disks.len()).unwrap_err().to_string();
    assert!(e.contains("2 .vmx files"), "{e}");
}

// ---- over NFS (tests/peers/start-nfs-ganesha.sh) ------------------------------------------

/// The running nfs-ganesha's env file, or `None` (skipped) when it is not running.
fn nfs_peer() -> Option<BTreeMap<String, String>> {
    let root = std::env::var("RV_PEERS_ROOT").unwrap_or_else(|_| "/tmp/rackvault-peers".into());
    let path = Path::new(&root).join("nfs-ganesha").join("env");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
                .collect(),
        ),
        Err(_) if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") => {
            panic!("nfs-ganesha is not running ({} missing) but RACKVAULT_REQUIRE_PEERS=1", path.display())
        }
        Err(_) => {
            eprintln!("skipped: nfs-ganesha is not running (start it with tests/peers/start-nfs-ganesha.sh)");
            None
        }
    }
}

/// A fresh directory in the export (local path) and the `nfs://` URL of `rel` inside it.
fn nfs_dir(env: &BTreeMap<String, String>, tag: &str) -> (PathBuf, impl Fn(&str) -> String) {
    let rel = format!("engine-{tag}-{}", std::process::id());
    let local = PathBuf::from(&env["RV_NFS_EXPORT_DIR"]).join(&rel);
    let _ = std::fs::remove_dir_all(&local);
    std::fs::create_dir_all(&local).unwrap();
    let (host, port, export, mport) = (
        env["RV_NFS_HOST"].clone(),
        env["RV_NFS_PORT"].clone(),
        env["RV_NFS_EXPORT"].clone(),
        env["RV_NFS_MOUNT_PORT"].clone(),
    );
    (local, move |sub: &str| format!("nfs://{host}:{port}{export}/{rel}{sub}?mountport={mport}"))
}

#[test]
fn a_vmx_url_over_nfs_backs_up_its_vm_folder() {
    if !have("qemu-img") {
        return;
    }
    let Some(env) = nfs_peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (export, url) = nfs_dir(&env, "vmx");
    let want = make_vm_folder(&export, dir.path());
    let store = new_store(dir.path());
    let r = backup(&store, &url("/app01.vmx"), "nfs-vmx");
    assert_vm_point(&store, &r, "nfs-vmx", &want, dir.path());
    std::fs::remove_dir_all(&export).unwrap();
}

#[test]
fn an_nfs_folder_named_without_its_trailing_slash_is_refused_suggesting_the_slash() {
    if !have("qemu-img") {
        return;
    }
    let Some(env) = nfs_peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (export, url) = nfs_dir(&env, "noslash");
    let want = make_vm_folder(&export, dir.path());
    let e = open_source_all(&url(""), &SourceSecrets::default()).map(|o| o.disks.len()).unwrap_err().to_string();
    assert!(e.contains("is a directory") && e.contains("end the path with a slash"), "{e}");
    // With the slash it is the VM folder.
    let store = new_store(dir.path());
    let r = backup(&store, &url("/"), "nfs-slash");
    assert_vm_point(&store, &r, "nfs-slash", &want, dir.path());
    std::fs::remove_dir_all(&export).unwrap();
}

// ---- qcow2 with an external data file -------------------------------------------------------

/// In `dir`: `img.qcow2` (6 MiB) over data file `data` (as the header records it), with
/// patterns written and some of them zeroed again, so the data file holds stale bytes where
/// the guest reads zeros. Returns QEMU's guest view (qemu run in `dir`, where it resolves a
/// relative data file name).
fn make_data_file_image(dir: &Path, data: &str) -> Vec<u8> {
    let in_dir = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    in_dir("qemu-img", &["create", "-q", "-f", "qcow2", "-o", &format!("data_file={data}"), "img.qcow2", "6M"]);
    in_dir(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 4M 1M", "-c", "write -z 0 1M", "img.qcow2"],
    );
    in_dir("qemu-img", &["convert", "-O", "raw", "img.qcow2", "guest.raw"]);
    std::fs::read(dir.join("guest.raw")).unwrap()
}

#[test]
fn a_qcow2_with_an_external_data_file_backs_up_as_its_guest_disk() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vm");
    std::fs::create_dir(&vm).unwrap();
    let guest = make_data_file_image(&vm, "img.data");
    let store = new_store(dir.path());
    let r = backup(&store, s(&vm.join("img.qcow2")), "datafile");
    assert_eq!((r.format.as_str(), r.bytes_logical), ("qcow2", 6 * MIB), "{r:?}");
    assert!(restore(&store, "datafile", 0, &dir.path().join("back.raw")) == guest);
}

#[test]
fn a_qcow2_data_file_over_nfs_is_read_from_the_same_export_and_never_from_outside_it() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let Some(env) = nfs_peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());

    // A relative name: next to the image on the export.
    let (export, url) = nfs_dir(&env, "datafile");
    let guest = make_data_file_image(&export, "img.data");
    let r = backup(&store, &url("/img.qcow2"), "nfs-datafile");
    assert_eq!(r.bytes_logical, 6 * MIB, "{r:?}");
    assert!(restore(&store, "nfs-datafile", 0, &dir.path().join("nfs.raw")) == guest);

    // An absolute name outside the export: a local file with that path is never read (the
    // NFS opener only looks on the export, and there by the file name next to the image).
    let (export2, url2) = nfs_dir(&env, "datafile-out");
    let outside = dir.path().join("outside.data");
    make_data_file_image(&export2, s(&outside));
    assert!(outside.exists());
    let e = open_source_all(&url2("/img.qcow2"), &SourceSecrets::default()).map(|o| o.disks.len()).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("external data file") && e.contains("outside.data"), "{e}");
    std::fs::remove_dir_all(&export).unwrap();
    std::fs::remove_dir_all(&export2).unwrap();
}

#[test]
fn an_encrypted_store_backs_up_restores_and_verifies_a_disk_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let want = make_raw(&raw, 9 * MIB + 4096, 21);
    let key = store::StoreKey::from_bytes([42; 32]);
    let opts = StoreOptions { create: true, key: Some(key.clone()), ..Default::default() };
    let store = Store::open(&dir.path().join("store"), &opts).unwrap();
    let first = backup(&store, s(&raw), "vm");
    assert!(first.chunks_new > 0);
    // Unchanged: nothing new, the keyed ids dedup like plain ones.
    let second = backup(&store, s(&raw), "vm");
    assert_eq!(second.chunks_new, 0, "{second:?}");
    assert_eq!(restore(&store, "vm", 0, &dir.path().join("back.raw")), want);
    let report = engine::verify(&store, None, 2, &NoProgress).unwrap();
    assert!(report.is_clean(), "{report:?}");
    // The text the image holds is nowhere in the packs.
    let needle = b"sector text 1 seed 21";
    assert!(want.windows(needle.len()).any(|w| w == needle));
    for e in std::fs::read_dir(dir.path().join("store/packs")).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "plaintext in a pack");
    }
}
