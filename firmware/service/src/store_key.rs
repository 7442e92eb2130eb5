//! The staging store's encryption key on an appliance. The store crate takes raw key
//! material; this module keeps it: sealed with the appliance key (the [`Sealer`] that seals
//! the CHAP secrets) in `config.json` as `store_key`, unsealed at open, exported as a
//! recovery key for admins (audited), and installed from a recovery key on a new appliance.
//!
//! ## Creating an encrypted store (`ApplianceOptions::encrypt_store`, `serve --encrypt-store`)
//! 1. A new key is drawn from the kernel's CSPRNG.
//! 2. It is sealed into `config.json` (temporary file, fsync, rename, fsync of the directory).
//! 3. Only then is the store created under it (its marker records the cipher and a key check
//!    value, never the key).
//!
//! A crash after step 2 leaves a key and no store: the next open creates the store with that
//! key. No store ever exists under a key that is not durable on the appliance. Without the
//! option an existing store is opened as it is (encrypted or not: the marker says), and a new
//! one is created unencrypted.
//!
//! ## After a disaster
//! On a new appliance, `rackvault key restore --data-dir DIR --key-file FILE` checks the
//! recovery key against the store in `DIR/store` (if one is there; a wrong key is refused
//! before anything is read) and seals it into `config.json`, with the daemon stopped (it takes
//! the data directory's lock). The daemon then opens the store with it.
//!
//! ## Keys of replicas kept without them
//! An appliance that receives (or pulls) the points of an encrypted store whose key it does
//! not hold keeps them sealed (see `engine::replicate`). To restore them there, an admin gives
//! it that store's recovery key: `rackvault key add-replica --data-dir DIR --key-file FILE`,
//! daemon stopped, seals it into `config.json` as one of `replica_keys`, and the daemon opens
//! its store with those keys as `StoreOptions::replica_keys`.

use std::path::Path;

use serde::Serialize;
use store::recovery::{self, RecoveryKeyFile};
use store::{Store, StoreError, StoreKey, StoreOptions};

use crate::config::{ConfigFile, Sealer};
use crate::{Appliance, Principal, Role, ServiceError};

/// What an admin receives when exporting the recovery key.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryKeyExport {
    pub store_id: String,
    pub cipher: String,
    /// The printable form: `RVK1-` and 14 groups of five characters.
    pub printable: String,
    /// The recovery key file's content (JSON), to save as a file.
    pub file: RecoveryKeyFile,
}

fn seal_key(sealer: &Sealer, key: &StoreKey) -> String {
    sealer.seal(&crate::hex(key.as_bytes()))
}

fn unseal_key(sealer: &Sealer, sealed: &str) -> Result<StoreKey, ServiceError> {
    let bad = || {
        ServiceError::Invalid(
            "config.json's store_key cannot be opened with this appliance's key (appliance.key was replaced, or the \
             file edited); install the store's recovery key with `rackvault key restore`"
                .into(),
        )
    };
    let hex = sealer.open_sealed(sealed).map_err(|_| bad())?;
    let bytes = crate::unhex(&hex).ok_or_else(bad)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    Ok(StoreKey::from_bytes(bytes))
}

/// The key to open (or create) the store with: unsealed from `config`, or with
/// `encrypt_new` and no store yet, a new one sealed into `config` first (steps 1-2).
pub(crate) fn key_for_open(
    data_dir: &Path,
    store_dir: &Path,
    config: &mut ConfigFile,
    sealer: &Sealer,
    encrypt_new: bool,
) -> Result<Option<StoreKey>, ServiceError> {
    if let Some(sealed) = &config.store_key {
        return unseal_key(sealer, sealed).map(Some);
    }
    let store_exists = store_dir.join("rackvault-store.json").exists();
    if !encrypt_new || store_exists {
        return Ok(None);
    }
    let key = StoreKey::generate().map_err(|e| ServiceError::io("/dev/urandom", e))?;
    config.store_key = Some(seal_key(sealer, &key));
    config.save(&data_dir.join("config.json"))?;
    Ok(Some(key))
}

/// Turn the store's refusals at open into what an operator of the appliance must do.
pub(crate) fn explain_open_error(data_dir: &Path, e: StoreError) -> ServiceError {
    match e {
        StoreError::KeyRequired { .. } => ServiceError::Invalid(format!(
            "the staging store in {} is encrypted and this appliance holds no key for it; install its recovery key \
             with `rackvault key restore --data-dir {} --key-file FILE`, then start again",
            data_dir.join("store").display(),
            data_dir.display()
        )),
        StoreError::WrongKey { .. } => ServiceError::Invalid(format!(
            "the store key sealed in {} does not open the staging store in {} (another store's key?); install this \
             store's recovery key with `rackvault key restore --data-dir {} --key-file FILE --replace`",
            data_dir.join("config.json").display(),
            data_dir.join("store").display(),
            data_dir.display()
        )),
        e => ServiceError::Store(e),
    }
}

fn export_from(key: &StoreKey, store_id: &str, cipher: &str) -> RecoveryKeyExport {
    let file = RecoveryKeyFile::new(key, store_id, cipher);
    RecoveryKeyExport {
        store_id: store_id.to_string(),
        cipher: cipher.to_string(),
        printable: recovery::to_printable_lines(key),
        file,
    }
}

fn store_identity(store_dir: &Path) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Marker {
        store_id: String,
        #[serde(default)]
        encryption: Option<store::EncryptionInfo>,
    }
    std::fs::read(store_dir.join("rackvault-store.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
        .map(|m| (m.store_id, m.encryption.map(|e| e.cipher).unwrap_or_default()))
        .unwrap_or_default()
}

/// The recovery key of the appliance in `data_dir`, read without a running daemon (it needs
/// read access to `appliance.key`). `None` when the appliance holds no store key.
pub fn export_recovery_key(data_dir: &Path) -> Result<Option<RecoveryKeyExport>, ServiceError> {
    let config = ConfigFile::load(&data_dir.join("config.json"))?;
    let Some(sealed) = &config.store_key else { return Ok(None) };
    let key_path = data_dir.join("appliance.key");
    if !key_path.exists() {
        return Err(ServiceError::Invalid(format!(
            "{}: no appliance key here, so the sealed store key cannot be opened; give the data directory of the \
             appliance that holds the store",
            key_path.display()
        )));
    }
    let key = unseal_key(&Sealer::open(&key_path)?, sealed)?;
    let (id, cipher) = store_identity(&data_dir.join("store"));
    Ok(Some(export_from(&key, &id, &cipher)))
}

/// Install `key` as the store key of the appliance in `data_dir` (its daemon stopped): checked
/// against the store there if there is one, then sealed into `config.json`. A different key
/// already installed is replaced only with `replace`.
pub fn install_recovery_key(data_dir: &Path, key: &StoreKey, replace: bool) -> Result<(), ServiceError> {
    let _lock = lock_stopped(data_dir)?;
    let store_dir = data_dir.join("store");
    if store_dir.join("rackvault-store.json").exists() {
        // Refuses a wrong key before reading anything, and a plain store.
        let opts = StoreOptions { read_only: true, key: Some(key.clone()), ..Default::default() };
        drop(Store::open(&store_dir, &opts)?);
    }
    let sealer = Sealer::open(&data_dir.join("appliance.key"))?;
    let config_path = data_dir.join("config.json");
    let mut config = ConfigFile::load(&config_path)?;
    if let Some(sealed) = &config.store_key {
        match unseal_key(&sealer, sealed) {
            Ok(existing) if existing == *key => return Ok(()),
            _ if replace => {}
            _ => {
                return Err(ServiceError::Conflict(format!(
                    "{} already holds a different store key; give --replace to replace it (the old key is lost \
                     unless its recovery key was exported)",
                    config_path.display()
                )))
            }
        }
    }
    config.store_key = Some(seal_key(&sealer, key));
    config.save(&config_path)
}

/// Takes the lock of the appliance in `data_dir`, refusing while its daemon runs.
fn lock_stopped(data_dir: &Path) -> Result<std::fs::File, ServiceError> {
    std::fs::create_dir_all(data_dir).map_err(|e| ServiceError::io(data_dir, e))?;
    let lock_path = data_dir.join("appliance.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ServiceError::io(&lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(ServiceError::Conflict(format!(
            "{}: a rackvault serve is using this data directory; stop it, install the key, then start it again",
            data_dir.display()
        )));
    }
    Ok(lock)
}

/// Add `key`, the recovery key of a store this appliance keeps replicas of without its key,
/// to the appliance in `data_dir` (its daemon stopped): sealed into `config.json`. Returns
/// whether it was new.
pub fn install_replica_key(data_dir: &Path, key: &StoreKey) -> Result<bool, ServiceError> {
    let _lock = lock_stopped(data_dir)?;
    let sealer = Sealer::open(&data_dir.join("appliance.key"))?;
    let config_path = data_dir.join("config.json");
    let mut config = ConfigFile::load(&config_path)?;
    if replica_keys(&config, &sealer)?.contains(key) {
        return Ok(false);
    }
    config.replica_keys.push(seal_key(&sealer, key));
    config.save(&config_path)?;
    Ok(true)
}

/// The replica keys `config` holds, unsealed.
pub(crate) fn replica_keys(config: &ConfigFile, sealer: &Sealer) -> Result<Vec<StoreKey>, ServiceError> {
    config.replica_keys.iter().map(|sealed| unseal_key(sealer, sealed)).collect()
}

impl Appliance {
    /// The staging store's cipher when it is encrypted (for the daemon's start-up message).
    pub fn store_cipher(&self) -> Option<String> {
        self.store.encryption().map(|e| e.cipher.clone())
    }

    /// The store's recovery key, for an admin to print or save offline. Audited.
    pub fn recovery_key(&self, actor: &Principal) -> Result<RecoveryKeyExport, ServiceError> {
        actor.require(Role::Admin)?;
        let sealed = crate::lock(&self.config).store_key.clone();
        let Some(sealed) = sealed else {
            return Err(ServiceError::Invalid(
                "the staging store is not encrypted, so it has no recovery key (encryption is chosen when the store is \
                 created: `rackvault serve --encrypt-store` on a new data directory)"
                    .into(),
            ));
        };
        let key = unseal_key(&self.sealer, &sealed)?;
        let cipher = self.store.encryption().map(|e| e.cipher.clone()).unwrap_or_default();
        let export = export_from(&key, &self.store.store_id_hex(), &cipher);
        self.audit(actor, "export recovery key", &format!("store {}", export.store_id));
        Ok(export)
    }
}
