//! The human-readable configuration file (`<data>/config.json`) that the UI and API edit:
//! sources, jobs, the tape library and settings. Written atomically (temporary file, fsync,
//! rename). Secrets in it (CHAP secrets, the store key) are sealed with the appliance key
//! (`<data>/appliance.key`, 32 random bytes, mode 0600) using ChaCha20-Poly1305, as
//! `"sealed:v1:<hex nonce><hex ciphertext>"`: the file can be read, backed up and diffed
//! without exposing them.

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use crate::ServiceError;

/// A backup source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceConfig {
    pub id: String,
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
    /// Read bandwidth limit in MB/s (10^6 bytes), so a backup does not swamp the datastore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_read_mbps: Option<u32>,
}

/// A job: a source on a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConfig {
    pub id: String,
    pub name: String,
    pub source: String,
    pub schedule: String,
    /// A run may start up to this many hours after its scheduled time (a backup window);
    /// later, it is skipped until the next occurrence.
    #[serde(default)]
    pub window_hours: Option<u32>,
    pub enabled: bool,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// After a successful backup, destage the new restore point to this tape pool (D2D2T).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destage_pool: Option<String>,
    /// After a successful backup, replicate the new restore point to this remote (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_to: Option<String>,
    /// Which restore points of the job's source to keep; absent: all of them. Applied after
    /// every successful backup and by the nightly maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<store::retention::RetentionPolicy>,
    /// Each new restore point is immutable (no one may delete or prune it) for this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_days: Option<u32>,
}

fn default_retries() -> u32 {
    2
}

/// Global settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Tasks running at once against one source host.
    pub max_tasks_per_host: usize,
    /// Tasks running at once against one datastore (NFS export, iSCSI target).
    #[serde(default = "one")]
    pub max_tasks_per_datastore: usize,
    /// Tasks running at once in all.
    pub max_tasks: usize,
    /// IANA time zone for retention's days, weeks, months and years; absent: the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Above this share of the staging tier's filesystem (percent), the appliance prunes what
    /// retention allows and deletes what is safely on tape, down to the low watermark.
    #[serde(default = "default_high")]
    pub capacity_high_pct: u8,
    #[serde(default = "default_low")]
    pub capacity_low_pct: u8,
    /// When the maintenance (prune every job, free space, garbage collection) runs: a
    /// calendar event (UTC), e.g. `03:00` or `sun 04:30`.
    #[serde(default = "default_maintenance")]
    pub maintenance_schedule: String,
    /// When the store is verified (UTC calendar event); absent: only on request. A scheduled
    /// verify is incremental: it leaves out packs scanned clean in the last
    /// `verify_skip_days` days, so each pack is re-read about that often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_schedule: Option<String>,
    #[serde(default = "default_verify_skip_days")]
    pub verify_skip_days: u32,
}

fn default_verify_skip_days() -> u32 {
    30
}

fn one() -> usize {
    1
}

fn default_high() -> u8 {
    90
}

fn default_low() -> u8 {
    80
}

fn default_maintenance() -> String {
    "03:00".into()
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_tasks_per_host: 2,
            max_tasks_per_datastore: 1,
            max_tasks: 4,
            time_zone: None,
            capacity_high_pct: default_high(),
            capacity_low_pct: default_low(),
            maintenance_schedule: default_maintenance(),
            verify_schedule: None,
            verify_skip_days: default_verify_skip_days(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
    /// The tape library (`iscsi://…`, `/dev/sgN`, `emulated:<dir>`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tape_changer: Option<String>,
    #[serde(default)]
    pub settings: Settings,
    /// Webhook and e-mail notifications (secrets sealed).
    #[serde(default, skip_serializing_if = "crate::notify::NotificationConfig::is_unset")]
    pub notifications: crate::notify::NotificationConfig,
    /// Other appliances this one replicates to (tokens sealed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<crate::RemoteConfig>,
    /// The encrypted staging store's key, sealed (see `store_key`); absent for a plain store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key: Option<String>,
    /// Recovery keys of stores this appliance keeps replicas of without their key, sealed
    /// like `store_key` (see `store_key::install_replica_key`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_keys: Vec<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ServiceError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                ServiceError::Invalid(format!(
                    "{}: not valid configuration ({e}); fix the file by hand or move it away to start afresh",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(ServiceError::io(path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ServiceError> {
        let mut text = serde_json::to_vec_pretty(self).expect("config serialises");
        text.push(b'\n');
        write_synced(path, &text)
    }
}

/// Writes `path` whole or not at all: a temporary file, synced, renamed, then the file synced
/// again under its new name and its directory synced. The second sync is for vfat (the EFI
/// partition, see `update`): a rename there moves the file's directory entry, whose size and
/// first cluster are written only with the file's inode, which syncing the directory does not
/// write.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| ServiceError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| ServiceError::io(&tmp, e))?;
    drop(f);
    rename_synced(&tmp, path)
}

/// Renames `from` to `to` durably, on vfat too (see [`write_synced`]).
pub fn rename_synced(from: &Path, to: &Path) -> Result<(), ServiceError> {
    std::fs::rename(from, to).map_err(|e| ServiceError::io(to, e))?;
    std::fs::File::open(to).and_then(|f| f.sync_all()).map_err(|e| ServiceError::io(to, e))?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Syncs a directory (its entries).
pub fn sync_dir(dir: &Path) -> Result<(), ServiceError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ServiceError::io(dir, e))
}

/// Writes out everything dirty on the filesystem that holds `path` (syncfs). For vfat (the
/// EFI partition) after the file and directory syncs: when background writeback has already
/// written a file's inode, vfat's fsync finds it clean and does not write the directory entry
/// block that the writeback only dirtied, so a file can be synced and still come back after a
/// power cut with its old size and a freed first cluster. Seen under qemu: an update's initrd
/// was lost that way, and the boot loader could not start the entry. Not for the data
/// partition, where it would flush every backup's dirty packs too.
pub fn sync_filesystem(path: &Path) -> Result<(), ServiceError> {
    let f = std::fs::File::open(path).map_err(|e| ServiceError::io(path, e))?;
    nix::unistd::syncfs(&f).map_err(|e| ServiceError::io(path, std::io::Error::from(e)))
}

/// Seals and opens secrets with the appliance key.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

const SEALED: &str = "sealed:v1:";

impl Sealer {
    /// Loads the key at `path`, creating it (mode 0600) on first start.
    pub fn open(path: &Path) -> Result<Sealer, ServiceError> {
        let key = match std::fs::read(path) {
            Ok(k) if k.len() == 32 => k,
            Ok(k) => {
                return Err(ServiceError::Invalid(format!(
                    "{}: the appliance key must be 32 bytes, found {}; restore it from a backup (sealed secrets \
                     cannot be read without it)",
                    path.display(),
                    k.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = crate::random_bytes::<32>().to_vec();
                write_private(path, &k)?;
                k
            }
            Err(e) => return Err(ServiceError::io(path, e)),
        };
        Ok(Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) })
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce = crate::random_bytes::<12>();
        let ct = self.cipher.encrypt(Nonce::from_slice(&nonce), plain.as_bytes()).expect("encryption cannot fail");
        format!("{SEALED}{}{}", crate::hex(&nonce), crate::hex(&ct))
    }

    pub fn open_sealed(&self, sealed: &str) -> Result<String, ServiceError> {
        let bad = || {
            ServiceError::Invalid(
                "a sealed secret in config.json cannot be opened with this appliance's key (edited by hand, or the \
                 key was replaced); enter the secret again"
                    .into(),
            )
        };
        let hex = sealed.strip_prefix(SEALED).ok_or_else(bad)?;
        let bytes = crate::unhex(hex).ok_or_else(bad)?;
        if bytes.len() < 12 + 16 {
            return Err(bad());
        }
        let plain = self.cipher.decrypt(Nonce::from_slice(&bytes[..12]), &bytes[12..]).map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

/// Writes `bytes` to a new file readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| ServiceError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("appliance.key");
        let s = Sealer::open(&key).unwrap();
        let sealed = s.seal("chap-secret-123");
        assert!(!sealed.contains("chap-secret"));
        assert_eq!(s.open_sealed(&sealed).unwrap(), "chap-secret-123");
        // Reopened with the same key file.
        assert_eq!(Sealer::open(&key).unwrap().open_sealed(&sealed).unwrap(), "chap-secret-123");
        let mut t = sealed.clone().into_bytes();
        let n = t.len() - 3;
        t[n] = if t[n] == b'0' { b'1' } else { b'0' };
        assert!(s.open_sealed(std::str::from_utf8(&t).unwrap()).is_err());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn config_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        assert_eq!(ConfigFile::load(&p).unwrap(), ConfigFile::default());
        let mut c = ConfigFile::default();
        c.sources.push(SourceConfig {
            id: "s1".into(),
            name: "web01".into(),
            url: "/tmp/x.raw".into(),
            chap_user: None,
            chap_secret: None,
            mutual_user: None,
            mutual_secret: None,
            max_read_mbps: None,
        });
        c.save(&p).unwrap();
        assert_eq!(ConfigFile::load(&p).unwrap(), c);
        std::fs::write(&p, "{ not json").unwrap();
        assert!(ConfigFile::load(&p).unwrap_err().to_string().contains("config.json"));
    }
}
