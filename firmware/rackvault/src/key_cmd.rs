//! Encrypted stores on the command line: the global `--key-file` that opens one, and
//! `rackvault key` (`export`, `restore`, `check`).
//!
//! A key file is a recovery key file (JSON, written by `backup --encrypt` or `key export`) or
//! a text file holding only the printable form; `-` reads the printable form from standard
//! input, so a key typed from a printout never lands in a file or in `ps`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use store::recovery::{self, RecoveryKeyFile};
use store::{Store, StoreKey, StoreOptions};

use crate::print_json;

/// The global `--key-file`, as given.
static KEY_FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// The key read from it, read once (standard input can be read only once).
static KEY: OnceLock<StoreKey> = OnceLock::new();

pub fn set_key_file(path: Option<PathBuf>) {
    let _ = KEY_FILE.set(path);
}

pub fn key_file() -> Option<&'static Path> {
    KEY_FILE.get().and_then(|p| p.as_deref())
}

/// The global `--replica-key` files, as given.
static REPLICA_KEY_FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();

pub fn set_replica_key_files(paths: Vec<PathBuf>) {
    let _ = REPLICA_KEY_FILES.set(paths);
}

/// The keys the global `--replica-key` files hold (see `StoreOptions::replica_keys`).
pub fn replica_keys() -> Result<Vec<StoreKey>> {
    let paths = REPLICA_KEY_FILES.get().map(Vec::as_slice).unwrap_or_default();
    paths.iter().map(|p| read_key_file(p)).collect()
}

/// Read a key file (or standard input for `-`).
pub fn read_key_file(path: &Path) -> Result<StoreKey> {
    let text = if path == Path::new("-") {
        if std::io::stdin().is_terminal() {
            eprintln!("Type the recovery key (groups of five characters), then Ctrl-D:");
        }
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the recovery key from standard input")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the recovery key file", path.display()))?
    };
    recovery::parse_file(&text).with_context(|| format!("{}", path.display()))
}

/// The key the global `--key-file` names, if one was given.
pub fn store_key() -> Result<Option<StoreKey>> {
    let Some(path) = key_file() else { return Ok(None) };
    if let Some(k) = KEY.get() {
        return Ok(Some(k.clone()));
    }
    let k = read_key_file(path)?;
    let _ = KEY.set(k.clone());
    Ok(Some(k))
}

/// Write a new recovery key file at `path` (which must not exist), readable by its owner only,
/// durably.
pub fn write_key_file(path: &Path, file: &RecoveryKeyFile) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| {
            format!("{}: cannot create the recovery key file (it must not exist yet)", path.display())
        })?;
    f.write_all(file.to_json().as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("{}: writing the recovery key file", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(())
}

/// For `backup --encrypt`: the key to create the store at `store_dir` with. An existing key
/// file is used as it is; a missing one is created with a new key, before the store exists.
pub fn key_for_new_store(store_dir: &Path, cipher: Option<store::Cipher>) -> Result<StoreKey> {
    let path = key_file().ok_or_else(|| {
        anyhow::anyhow!(
            "--encrypt needs --key-file FILE: where the new store's recovery key is written (or an existing \
             recovery key file to use)"
        )
    })?;
    if path == Path::new("-") || path.exists() {
        return store_key()?.ok_or_else(|| anyhow::anyhow!("--key-file was given but could not be read"));
    }
    if store_dir.join("rackvault-store.json").exists() {
        anyhow::bail!(
            "{}: the store exists already; give the recovery key file it was created with (--key-file), or leave \
             out --encrypt",
            store_dir.display()
        );
    }
    let key = StoreKey::generate().context("no random bytes for a new key (/dev/urandom)")?;
    let cipher = cipher.unwrap_or_else(store::Cipher::preferred).name();
    write_key_file(path, &RecoveryKeyFile::new(&key, "(new store)", cipher))?;
    eprintln!(
        "rackvault: wrote the new store's recovery key to {}; print it (`rackvault key export --store {} --key-file {}`) \
         and keep it offline: without it the store cannot be read",
        path.display(),
        store_dir.display(),
        path.display()
    );
    let _ = KEY.set(key.clone());
    Ok(key)
}

/// `rackvault key`: the recovery key of an encrypted store.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Print the recovery key (printable form, with check characters) and optionally write a
    /// recovery key file: of an appliance (--data-dir, read with its appliance key), or of a
    /// store opened with --key-file (--store).
    Export {
        #[arg(long, conflicts_with = "store", required_unless_present = "store")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        store: Option<PathBuf>,
        /// Also write a recovery key file here (must not exist).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Install a recovery key (--key-file, or typed on standard input) into an appliance's data
    /// directory, so that its daemon opens the encrypted store there: after a disaster, on a
    /// new appliance. The daemon must be stopped.
    Restore {
        #[arg(long)]
        data_dir: PathBuf,
        /// Replace a different store key the appliance holds.
        #[arg(long)]
        replace: bool,
    },
    /// Give an appliance (its daemon stopped) the recovery key of a store it keeps replicas of
    /// without that key (--key-file, or typed on standard input): sealed into its
    /// configuration, so that those replicas restore there. The key's own store never needs
    /// to be reachable.
    AddReplica {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Check that --key-file opens the store (nothing is read but the store's marker).
    Check {
        #[arg(long)]
        store: PathBuf,
    },
}

fn open_read_only(store_dir: &Path, key: &StoreKey) -> Result<Store> {
    let opts = StoreOptions { read_only: true, key: Some(key.clone()), ..Default::default() };
    Ok(Store::open(store_dir, &opts)?)
}

pub fn run(args: KeyArgs) -> Result<ExitCode> {
    match args.command {
        KeyCommand::Export { data_dir, store, out, json } => {
            let (printable, file) = match (data_dir, store) {
                (Some(dir), _) => {
                    let export = service::export_recovery_key(&dir)?.ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: this appliance's store is not encrypted, so it has no recovery key",
                            dir.display()
                        )
                    })?;
                    (export.printable, export.file)
                }
                (None, Some(store_dir)) => {
                    let key = store_key()?
                        .ok_or_else(|| anyhow::anyhow!("give the store's current recovery key file with --key-file"))?;
                    let s = open_read_only(&store_dir, &key)?;
                    let cipher = s.encryption().map(|e| e.cipher.clone()).unwrap_or_default();
                    (recovery::to_printable_lines(&key), RecoveryKeyFile::new(&key, &s.store_id_hex(), &cipher))
                }
                (None, None) => anyhow::bail!("give --data-dir DIR or --store DIR"),
            };
            if let Some(out) = &out {
                write_key_file(out, &file)?;
            }
            if json {
                print_json(&file)?;
            } else {
                println!("Recovery key of store {} ({}):\n\n{printable}\n", file.store_id, file.cipher);
                println!("Whoever holds it can read every backup in the store; keep it offline.");
                if let Some(out) = out {
                    println!("Also written to {}.", out.display());
                }
            }
        }
        KeyCommand::Restore { data_dir, replace } => {
            let key = match store_key()? {
                Some(k) => k,
                None => read_key_file(Path::new("-"))?,
            };
            service::install_recovery_key(&data_dir, &key, replace)?;
            println!(
                "installed the store key into {}; `rackvault serve --data-dir {}` opens the store with it",
                data_dir.join("config.json").display(),
                data_dir.display()
            );
        }
        KeyCommand::AddReplica { data_dir } => {
            let key = match store_key()? {
                Some(k) => k,
                None => read_key_file(Path::new("-"))?,
            };
            let added = service::install_replica_key(&data_dir, &key)?;
            println!(
                "{} {}; the daemon reads the replicas kept without this key with it from its next start",
                if added { "added the replica key to" } else { "the key was there already in" },
                data_dir.join("config.json").display()
            );
        }
        KeyCommand::Check { store } => {
            let key = store_key()?.ok_or_else(|| anyhow::anyhow!("give the recovery key file with --key-file"))?;
            let s = open_read_only(&store, &key)?;
            println!("the key opens store {} ({})", s.store_id_hex(), s.encryption().map_or("", |e| e.cipher.as_str()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
