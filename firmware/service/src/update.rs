//! Updates of the appliance's own system: signed bundles (the `bundle` crate) written to the
//! inactive root slot, tried with a boot counter, blessed when healthy, rolled back by the
//! boot loader when not.
//!
//! ## The slots and the boot loader (see `image/README.md`)
//! The disk has two read-only root slots, A and B (`rv-root-a`, `rv-root-b`), and an EFI system
//! partition mounted at `/efi` with systemd-boot. Each slot has its kernel and initrd under
//! `/efi/rackvault/<slot>/` and a boot entry `/efi/loader/entries/rackvault-<slot>.conf` with
//! `sort-key rackvault` and `version <generation>`; `loader.conf` says `default rackvault-*`,
//! so the boot loader starts the entry with the highest generation among those not marked bad.
//! The running slot is `rackvault.slot=` on the kernel command line.
//!
//! ## Applying a bundle, in order
//! 1. The upload is streamed to `<data>/updates/upload.part`. A cut upload stops here.
//! 2. The whole bundle is verified: its signature with the public key built into the image,
//!    then every component against the signed digests, then the version (newer than the running
//!    one, unless an admin forces it). Any refusal stops here: **nothing was written to either
//!    slot.**
//! 3. The inactive slot's boot entry is removed (and the directory synced), so that a slot
//!    half written is never booted.
//! 4. The root filesystem is written to the inactive slot's partition, the kernel and initrd to
//!    its ESP directory; each is synced, then the whole ESP (`syncfs`: vfat's fsync alone can
//!    miss a directory entry, see [`sync_filesystem`]).
//! 5. Its boot entry is written as `rackvault-<slot>+3.conf`, with the next generation: the
//!    commit point. systemd-boot counts the tries down in the file name at each boot.
//! 6. An update record (`<data>/update.json`, versioned) names both versions and slots and the
//!    boot it was applied in. The admin reboots (the UI's button writes
//!    `<data>/reboot-requested`, which `rackvault-reboot.path` turns into a clean reboot).
//!
//! ## Blessing and rollback
//! After a boot, `rackvault-health.service` (`rackvault health --bless`) waits for the daemon to
//! answer on its own HTTPS port, then renames the running entry to drop its counter: the slot
//! is good. If the daemon does not answer in time the unit fails and reboots the machine; after
//! three failed tries the entry is bad, sorts last, and the boot loader starts the other slot.
//! A root that does not mount fails the same way (`panic=5` reboots from the initramfs). The
//! daemon then finds itself on the slot the update came from, with the update record naming the
//! other: it reports the update as rolled back ([`UpdateState::RolledBack`]).
//!
//! ## Data across updates and rollbacks
//! The data partition is not touched by an update. The store and the configuration carry
//! their own format versions: a newer rackvault opens older data; an older rackvault refuses a
//! newer store format with `StoreError::NewerFormat` without touching it. So a rollback after
//! a data-format change is refused safely (the daemon of the old slot does not open the
//! store), never corrupting: roll forward again, or restore from a replica.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::config::{rename_synced, sync_filesystem};
use crate::config::{sync_dir, write_synced};
use crate::{Appliance, Principal, Role, ServiceError};

/// Where the running system keeps what updates read and write. [`SystemLayout::appliance`]
/// on the appliance image; tests use files.
#[derive(Debug, Clone)]
pub struct SystemLayout {
    /// The kernel command line: `rackvault.slot=a|b` names the running slot.
    pub cmdline: PathBuf,
    /// This boot's id.
    pub boot_id: PathBuf,
    /// The mounted EFI system partition.
    pub esp: PathBuf,
    /// The root slots' devices, `{slot}` standing for `a` or `b`.
    pub root_device: String,
    /// The update public key built into the image (hex).
    pub public_key: PathBuf,
    /// The running image's version.
    pub version: PathBuf,
    /// What `rackvault network apply` last did (see the `network` module).
    pub network_applied: PathBuf,
}

/// Where `rackvault network apply` reports what it did, on the appliance image.
pub const NETWORK_APPLIED: &str = "/run/rackvault/network-applied.json";

impl SystemLayout {
    /// The appliance image's layout.
    pub fn appliance() -> SystemLayout {
        SystemLayout {
            cmdline: "/proc/cmdline".into(),
            boot_id: "/proc/sys/kernel/random/boot_id".into(),
            esp: "/efi".into(),
            root_device: "/dev/disk/by-partlabel/rv-root-{slot}".into(),
            public_key: "/usr/lib/rackvault/update.pub".into(),
            version: "/usr/lib/rackvault/version".into(),
            network_applied: NETWORK_APPLIED.into(),
        }
    }

    /// The running slot, when this is the appliance image.
    pub fn running_slot(&self) -> Option<char> {
        let cmdline = std::fs::read_to_string(&self.cmdline).ok()?;
        cmdline.split_whitespace().find_map(|w| match w.strip_prefix("rackvault.slot=") {
            Some("a") => Some('a'),
            Some("b") => Some('b'),
            _ => None,
        })
    }

    fn running_version(&self) -> Option<String> {
        std::fs::read_to_string(&self.version).ok().map(|s| s.trim().to_string())
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string(&self.boot_id).map(|s| s.trim().to_string()).unwrap_or_default()
    }

    fn entries_dir(&self) -> PathBuf {
        self.esp.join("loader/entries")
    }

    fn device(&self, slot: char) -> PathBuf {
        PathBuf::from(self.root_device.replace("{slot}", &slot.to_string()))
    }
}

/// The update record (`<data>/update.json`): the last update applied. Versioned on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// Version of this record: 1.
    pub v: u32,
    pub from_slot: char,
    pub from_version: String,
    pub to_slot: char,
    pub to_version: String,
    /// The boot entry's generation.
    pub generation: u64,
    pub applied_unix: u64,
    /// The boot it was applied in (a later boot tells whether it came up).
    pub boot_id: String,
}

/// Where the last update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    /// Written; the appliance runs the old slot until it reboots.
    RebootPending,
    /// The appliance runs the new slot.
    Running,
    /// The new slot did not come up healthy within its tries: the boot loader went back to
    /// the slot the update came from, which runs now.
    RolledBack,
}

/// The last update, as the UI shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub from_version: String,
    pub to_version: String,
    pub to_slot: String,
    pub applied_unix: u64,
    /// One sentence for the operator.
    pub message: String,
}

/// The running system, as `GET /api/v1/system` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemInfo {
    /// Whether this is the appliance image (updates apply only there).
    pub appliance: bool,
    /// The image's version (the binary's own outside the image).
    pub version: String,
    /// The running root slot, `a` or `b`.
    pub slot: Option<String>,
    /// The running slot is on trial: its boot entry still counts tries (the health check
    /// marks it good once the daemon answers).
    pub on_trial: bool,
    /// The last update applied, if any.
    pub update: Option<UpdateStatus>,
}

/// What an applied update did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateApplied {
    pub version: String,
    pub slot: String,
    pub bytes_written: u64,
    pub message: String,
}

/// How many times the boot loader tries a new slot before it goes back.
pub const BOOT_TRIES: u32 = 3;

fn invalid(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Invalid(e.to_string())
}

impl Appliance {
    fn update_record_path(&self) -> PathBuf {
        self.data_dir.join("update.json")
    }

    fn update_record(&self) -> Option<UpdateRecord> {
        let text = std::fs::read(self.update_record_path()).ok()?;
        serde_json::from_slice::<UpdateRecord>(&text).ok().filter(|r| r.v == 1)
    }

    /// The running system and the last update.
    pub fn system_info(&self, actor: &Principal) -> Result<SystemInfo, ServiceError> {
        actor.require(Role::Auditor)?;
        let sys = &self.system;
        let slot = sys.running_slot();
        let version = sys.running_version().unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        let update = self.update_record().map(|r| {
            let (state, message) = if r.boot_id == sys.boot_id() {
                (
                    UpdateState::RebootPending,
                    format!("version {} is written to slot {}; reboot to start it", r.to_version, r.to_slot),
                )
            } else if slot == Some(r.to_slot) {
                (UpdateState::Running, format!("updated from {} to {}", r.from_version, r.to_version))
            } else {
                (
                    UpdateState::RolledBack,
                    format!(
                        "the update to {} did not come up healthy in {BOOT_TRIES} tries; the appliance went back to \
                         slot {} (version {}) by itself. Its data is as it was; look at the new version's notes, then \
                         try again",
                        r.to_version, r.from_slot, r.from_version
                    ),
                )
            };
            UpdateStatus {
                state,
                from_version: r.from_version,
                to_version: r.to_version,
                to_slot: r.to_slot.to_string(),
                applied_unix: r.applied_unix,
                message,
            }
        });
        let on_trial = slot.is_some_and(|s| {
            std::fs::read_dir(sys.entries_dir()).into_iter().flatten().flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                entry_slot(&name) == Some(s) && blessed_name(&name).is_some()
            })
        });
        Ok(SystemInfo { appliance: slot.is_some(), version, slot: slot.map(|s| s.to_string()), on_trial, update })
    }

    /// Receives an update bundle as it streams in (`next` gives its pieces, then how it
    /// ended), verifies all of it, and only then writes it to the inactive slot (see the
    /// module docs for the order). Admins only. A downgrade needs `force`.
    pub fn receive_update(
        &self,
        actor: &Principal,
        force: bool,
        next: &mut dyn FnMut() -> Result<Vec<u8>, crate::replica_wire::StreamEnd>,
    ) -> Result<UpdateApplied, ServiceError> {
        actor.require(Role::Admin)?;
        let sys = &self.system;
        let running = sys.running_slot().ok_or_else(|| {
            invalid(
                "this is not the appliance image (no rackvault.slot= on the kernel command line): update it the way \
                 it was installed",
            )
        })?;
        let _guard = self
            .update_lock
            .try_lock()
            .map_err(|_| ServiceError::Conflict("an update is being applied already; wait for it to finish".into()))?;
        let dir = self.data_dir.join("updates");
        std::fs::create_dir_all(&dir).map_err(|e| ServiceError::io(&dir, e))?;
        let upload = dir.join("upload.part");
        let received = receive_to(&upload, next)?;
        let result = self.apply_upload(actor, sys, running, &upload, received, force);
        // Applied or refused, the upload is not kept (it may be as large as a root slot).
        let _ = std::fs::remove_file(&upload);
        result
    }

    /// Steps 2-6 for the upload at `upload` (see the module docs).
    fn apply_upload(
        &self,
        actor: &Principal,
        sys: &SystemLayout,
        running: char,
        upload: &Path,
        received: u64,
        force: bool,
    ) -> Result<UpdateApplied, ServiceError> {
        let key_hex = std::fs::read_to_string(&sys.public_key).map_err(|e| ServiceError::io(&sys.public_key, e))?;
        let key = bundle::PublicKey::from_hex(key_hex.trim()).map_err(invalid)?;
        let running_version = sys.running_version().unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        let refused = |e: bundle::BundleError| {
            invalid(format!("the update bundle is refused: {e}. Nothing was written to either slot"))
        };
        // Step 2: everything checked before anything is written.
        let manifest = {
            let f = File::open(upload).map_err(|e| ServiceError::io(upload, e))?;
            let b = bundle::Bundle::open(std::io::BufReader::new(f), &key).map_err(refused)?;
            bundle::check_upgrade(&running_version, &b.manifest.version, force).map_err(refused)?;
            b.unpack(|_| Ok(std::io::sink()), |_| {}).map_err(refused)?
        };
        let target = if running == 'a' { 'b' } else { 'a' };
        // Step 3: the target's entry goes first.
        let entries = sys.entries_dir();
        let mut generation = 0u64;
        let mut running_options = None;
        for e in std::fs::read_dir(&entries).map_err(|e| ServiceError::io(&entries, e))? {
            let path = e.map_err(|e| ServiceError::io(&entries, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            let Some(slot) = entry_slot(&name) else { continue };
            let text = std::fs::read_to_string(&path).map_err(|e| ServiceError::io(&path, e))?;
            generation = generation.max(entry_field(&text, "version").and_then(|v| v.parse().ok()).unwrap_or(0));
            if slot == target {
                std::fs::remove_file(&path).map_err(|e| ServiceError::io(&path, e))?;
            } else if slot == running {
                running_options = entry_field(&text, "options");
            }
        }
        sync_dir(&entries)?;
        sync_filesystem(&sys.esp)?;
        let options = running_options
            .ok_or_else(|| invalid(format!("no boot entry for the running slot {running} in {}", entries.display())))?
            .replace(&format!("rv-root-{running}"), &format!("rv-root-{target}"))
            .replace(&format!("rackvault.slot={running}"), &format!("rackvault.slot={target}"));
        // Step 4: the components.
        let device = sys.device(target);
        let boot_dir = sys.esp.join(format!("rackvault/{target}"));
        std::fs::create_dir_all(&boot_dir).map_err(|e| ServiceError::io(&boot_dir, e))?;
        let written = {
            let f = File::open(upload).map_err(|e| ServiceError::io(upload, e))?;
            let b = bundle::Bundle::open(std::io::BufReader::new(f), &key).map_err(refused)?;
            let (device, boot_dir) = (device.clone(), boot_dir.clone());
            b.unpack(
                move |c| {
                    let path = match c.name.as_str() {
                        "root" => device.clone(),
                        "kernel" => boot_dir.join("vmlinuz"),
                        _ => boot_dir.join("initrd.img"),
                    };
                    SyncedFile::open(&path, c.size, c.name == "root")
                },
                |_| {},
            )
            .map_err(|e| {
                ServiceError::Internal(format!(
                    "writing the update to slot {target} failed ({e}); slot {target} has no boot entry now, so the \
                     appliance keeps starting slot {running}; apply the update again"
                ))
            })?
        };
        sync_dir(&boot_dir)?;
        sync_filesystem(&sys.esp)?;
        // Step 5: the entry, with its tries: the commit point.
        generation += 1;
        let entry = format!(
            "title rackvault {v} (slot {target})\nsort-key rackvault\nversion {generation}\nlinux /rackvault/{target}/vmlinuz\n\
             initrd /rackvault/{target}/initrd.img\noptions {options}\n",
            v = manifest.version
        );
        let final_path = entries.join(format!("rackvault-{target}+{BOOT_TRIES}.conf"));
        write_synced(&final_path, entry.as_bytes())?;
        sync_filesystem(&sys.esp)?;
        // Step 6: the record.
        let record = UpdateRecord {
            v: 1,
            from_slot: running,
            from_version: running_version,
            to_slot: target,
            to_version: manifest.version.clone(),
            generation,
            applied_unix: crate::now_unix(),
            boot_id: sys.boot_id(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ServiceError::Internal(e.to_string()))?;
        write_synced(&self.update_record_path(), &json)?;
        self.audit(
            actor,
            "apply update",
            &format!("{} written to slot {target} ({received} bytes received)", manifest.version),
        );
        Ok(UpdateApplied {
            version: manifest.version.clone(),
            slot: target.to_string(),
            bytes_written: written.payload_len(),
            message: format!(
                "version {} is written to slot {target}; reboot to start it (if it does not come up healthy, the \
                 appliance goes back to version {} by itself)",
                manifest.version, record.from_version
            ),
        })
    }

    /// Asks the system for a clean reboot (`rackvault-reboot.path` watches the request file).
    pub fn request_reboot(&self, actor: &Principal) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        if self.system.running_slot().is_none() {
            return Err(invalid("this is not the appliance image: reboot the machine the way it is managed"));
        }
        let path = self.data_dir.join("reboot-requested");
        write_synced(&path, b"reboot\n")?;
        self.audit(actor, "reboot", "requested from the API");
        Ok(())
    }
}

/// The slot of a boot entry file `rackvault-<slot>[+N[-M]].conf`.
pub fn entry_slot(name: &str) -> Option<char> {
    let rest = name.strip_prefix("rackvault-")?.strip_suffix(".conf")?;
    let slot = rest.split('+').next()?;
    match slot {
        "a" => Some('a'),
        "b" => Some('b'),
        _ => None,
    }
}

fn entry_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// The entry file name once blessed: the boot counter dropped (`rackvault-b+2-1.conf` →
/// `rackvault-b.conf`); `None` when it has none.
pub fn blessed_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".conf")?;
    let (base, counter) = stem.split_once('+')?;
    counter.split('-').all(|n| n.chars().all(|c| c.is_ascii_digit())).then(|| format!("{base}.conf"))
}

/// Streams `next` into `path` (replaced); the byte count.
fn receive_to(
    path: &Path,
    next: &mut dyn FnMut() -> Result<Vec<u8>, crate::replica_wire::StreamEnd>,
) -> Result<u64, ServiceError> {
    let mut f = File::create(path).map_err(|e| ServiceError::io(path, e))?;
    let mut total = 0u64;
    loop {
        match next() {
            Ok(piece) => {
                f.write_all(&piece).map_err(|e| ServiceError::io(path, e))?;
                total += piece.len() as u64;
            }
            Err(crate::replica_wire::StreamEnd::Complete) => break,
            Err(crate::replica_wire::StreamEnd::Cut(why)) => {
                drop(f);
                let _ = std::fs::remove_file(path);
                return Err(invalid(format!(
                    "the upload was cut off after {total} bytes ({why}); nothing was written to either slot: upload \
                     it again"
                )));
            }
        }
    }
    f.sync_all().map_err(|e| ServiceError::io(path, e))?;
    Ok(total)
}

/// A component's destination: synced on flush (which `bundle::Bundle::unpack` calls at the
/// end of each component). A root slot is a device (or a file in tests): written from its
/// start, never truncated, and refused when the component does not fit.
struct SyncedFile {
    file: File,
    path: PathBuf,
}

impl SyncedFile {
    fn open(path: &Path, size: u64, device: bool) -> std::io::Result<SyncedFile> {
        let mut file = if device { std::fs::OpenOptions::new().write(true).open(path)? } else { File::create(path)? };
        if device {
            let capacity = file.seek(SeekFrom::End(0))?;
            if size > capacity {
                return Err(std::io::Error::other(format!(
                    "{}: the root filesystem is {size} bytes and the slot only {capacity}",
                    path.display()
                )));
            }
            file.seek(SeekFrom::Start(0))?;
        }
        Ok(SyncedFile { file, path: path.to_path_buf() })
    }
}

impl Write for SyncedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_all().map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_give_their_slot_and_their_blessed_name() {
        assert_eq!(entry_slot("rackvault-a.conf"), Some('a'));
        assert_eq!(entry_slot("rackvault-b+3.conf"), Some('b'));
        assert_eq!(entry_slot("rackvault-b+0-3.conf"), Some('b'));
        assert_eq!(entry_slot("other.conf"), None);
        assert_eq!(blessed_name("rackvault-b+2-1.conf").as_deref(), Some("rackvault-b.conf"));
        assert_eq!(blessed_name("rackvault-b.conf"), None);
    }
}
