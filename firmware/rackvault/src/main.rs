//! `rackvault`: the appliance binary. Parses the command line, opens the store, runs one
//! engine job, and prints the result for a person or, with `--json`, one JSON object for a
//! script. It is the only place that reads paths from the command line, draws progress bars
//! and turns errors into exit codes (1: the job failed; 3: verify found damage).

mod console_cmd;
mod demo;
mod health_cmd;
mod key_cmd;
mod network_cmd;
mod progress;
mod remote_cmd;
mod s3_cmd;
mod serve_cmd;
mod store_cmd;
mod tape_cmd;
mod update_cmd;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use engine::{BackupOptions, RestoreFormat, RestoreOptions};
use store::{Store, StoreOptions};

use crate::progress::Bar;

/// The firmware's version and, when built from a git checkout, its commit:
/// `0.6.0 (3f2c9a1b7d4e)`.
pub const VERSION: &str = if env!("RACKVAULT_COMMIT").is_empty() {
    env!("CARGO_PKG_VERSION")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("RACKVAULT_COMMIT"), ")")
};

#[derive(Parser, Debug)]
#[command(name = "rackvault", version = VERSION, about = "rackvault: image-level VM backup appliance", long_about = None)]
struct Cli {
    /// The recovery key of an encrypted store: a recovery key file, a file holding its
    /// printable form, or `-` to type it on standard input. With `backup --encrypt` on a new
    /// store, where the new key is written.
    #[arg(long, global = true, env = "RACKVAULT_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The recovery key of a store this one holds replicas of without its key (a recovery
    /// key file, or a file holding its printable form): with it, those replicas restore.
    /// May be given more than once.
    #[arg(long, global = true, value_name = "FILE")]
    replica_key: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Back up a disk image, a LUN or a VM folder into a store (creates the store if the
    /// directory is new or empty).
    Backup {
        /// A disk image (raw, qcow2, VMDK, VHDX, VHD) or block device: a path, file://, or
        /// nfs://host[:port]/export/path/disk[?mountport=N]; a VM folder (a directory with a
        /// .vmx, the .vmx itself, or nfs://host/export/vmfolder/ with a trailing slash); or an
        /// iSCSI LUN:
        /// iscsi://[user@]host[:port]/<iqn>/<lun>.
        source: String,
        #[command(flatten)]
        credentials: Credentials,
        #[arg(long)]
        store: PathBuf,
        /// Restore point name; defaults to the source's file name.
        #[arg(long)]
        name: Option<String>,
        /// Chunk size, a power of two from 4K to 8M (e.g. 256K, 1M).
        #[arg(long, value_parser = parse_size, default_value = "256K")]
        chunk_size: u32,
        /// zstd compression level (negative levels are faster).
        #[arg(long, default_value_t = engine::DEFAULT_ZSTD_LEVEL, allow_negative_numbers = true)]
        zstd_level: i32,
        /// Store chunks uncompressed, for good: largest store.
        #[arg(long, conflicts_with_all = ["zstd_level", "compress_now"])]
        no_compress: bool,
        /// Compress during the backup. By default data is stored raw, which keeps the
        /// backup fast, and `rackvault recompress` (or the daemon's nightly maintenance)
        /// compresses it later at --zstd-level.
        #[arg(long)]
        compress_now: bool,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Make the restore point immutable for this long (e.g. 30d): no one can delete or
        /// prune it before then.
        #[arg(long, value_parser = store_cmd::parse_duration)]
        immutable_for: Option<u64>,
        /// Seal packs at this size (tests use small packs to exercise pack rotation).
        #[arg(long, value_parser = parse_size, hide = true)]
        pack_target: Option<u32>,
        /// Create the store encrypted (AES-256-GCM with AES-NI, else XChaCha20-Poly1305; keyed
        /// chunk ids). Needs --key-file: a new file receives the new recovery key.
        #[arg(long)]
        encrypt: bool,
        /// With --encrypt on a new store: its AEAD, aes-256-gcm or xchacha20-poly1305
        /// (default: AES-256-GCM where the CPU has AES-NI, else XChaCha20-Poly1305).
        #[arg(long, requires = "encrypt", value_parser = parse_cipher)]
        cipher: Option<store::Cipher>,
        #[arg(long)]
        json: bool,
    },
    /// Test a source without backing it up: an iSCSI portal (iscsi://host[:port]) lists its
    /// targets, an NFS server (nfs://host[:port]) its exports; a disk, LUN or VM folder is
    /// opened and its disks described.
    Probe {
        source: String,
        #[command(flatten)]
        credentials: Credentials,
        #[arg(long)]
        json: bool,
    },
    /// List the restore points of a store.
    List {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Restore a restore point (NAME for the newest, or NAME@ID) to a file or block device.
    Restore {
        point: String,
        #[arg(long)]
        store: PathBuf,
        /// Target file or block device; with --all, a directory.
        #[arg(long)]
        to: PathBuf,
        /// Which disk of a multi-disk restore point: its label (e.g. scsi0:1) or number.
        #[arg(long, conflicts_with = "all")]
        disk: Option<String>,
        /// Restore every disk and configuration file of the point into the directory --to.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "raw")]
        format: Format,
        /// Read the result back and check it against the backup.
        #[arg(long)]
        verify: bool,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Read packs only when a chunk is needed, not ahead (to measure the read-ahead).
        #[arg(long, hide = true)]
        no_read_ahead: bool,
        /// Fetch the point from a bucket first (s3://BUCKET[/PREFIX]; NAME or NAME@ID as the
        /// source named it), into --store (created if missing; give the lost store's recovery
        /// key with --key-file after a disaster).
        #[arg(long, requires = "namespace")]
        from: Option<String>,
        /// With --from: the namespace the point was replicated under.
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        s3: s3_cmd::S3Args,
        #[arg(long)]
        json: bool,
    },
    /// Check every chunk of one restore point, or of the whole store.
    Verify {
        #[arg(long)]
        store: PathBuf,
        /// NAME or NAME@ID; all of the store when omitted.
        point: Option<String>,
        /// Whole store only: leave out packs scanned clean within this many days (an
        /// incremental verify; the index and every restore point are still checked).
        #[arg(long, conflicts_with = "point")]
        skip_verified_within: Option<u64>,
        /// Whole store only: scan at most this many packs; the next run continues.
        #[arg(long, conflicts_with = "point")]
        max_packs: Option<u64>,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send a restore point offsite (replication, push): to another appliance
    /// (https://HOST:PORT) or to an S3 bucket (s3://BUCKET[/PREFIX]). Only what the other
    /// side lacks travels; running it again after a cut or a crash sends only what is missing.
    Replicate {
        /// NAME or NAME@ID.
        point: String,
        /// A store, with the remote given in full (--to URL and its options).
        #[arg(long, required_unless_present = "data_dir", conflicts_with = "data_dir")]
        store: Option<PathBuf>,
        /// An appliance's data directory (its daemon stopped): replicate one of its points to
        /// one of its remotes, --to naming the remote, with the remote's own settings and
        /// sealed secrets.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The receiving appliance (https://HOST:PORT) or bucket (s3://BUCKET[/PREFIX]); with
        /// --data-dir, the name of one of the appliance's remotes.
        #[arg(long)]
        to: String,
        /// An appliance's certificate SHA-256 fingerprint (read it with `rackvault
        /// remote-fingerprint` and compare it with the one the appliance shows).
        #[arg(long)]
        fingerprint: Option<String>,
        /// A file holding the replication token made on the receiving appliance.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// On an appliance, the token's name: the namespace the point arrives in; in a bucket,
        /// the folder this store's points go in under the prefix.
        #[arg(long, required_unless_present = "data_dir")]
        namespace: Option<String>,
        /// Send at most this many MB/s.
        #[arg(long)]
        max_mbps: Option<u32>,
        /// To a bucket: object lock for points with an immutability window, governance or
        /// compliance (the bucket must have object lock enabled).
        #[arg(long, value_parser = ["governance", "compliance"])]
        lock: Option<String>,
        #[command(flatten)]
        s3: s3_cmd::S3Args,
        #[arg(long)]
        json: bool,
    },
    /// List the points an S3 bucket holds, or fetch one into a store (checked record by
    /// record) to restore it: after the local copy is gone, or on a new appliance after a
    /// disaster (give the lost store's recovery key with --key-file).
    Pull {
        /// NAME or NAME@ID as the source named it; left out: list the bucket's points.
        point: Option<String>,
        /// The bucket: s3://BUCKET[/PREFIX].
        #[arg(long)]
        from: String,
        /// The namespace the points were replicated under.
        #[arg(long)]
        namespace: String,
        /// The store to fetch into (created if missing, encrypted when --key-file is given).
        #[arg(long, required_unless_present = "list")]
        store: Option<PathBuf>,
        /// Only list the bucket's points.
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        s3: s3_cmd::S3Args,
        #[arg(long)]
        json: bool,
    },
    /// An appliance's remotes (other appliances, S3 buckets), while its daemon is stopped:
    /// `list`, `add`, `delete`.
    Remote(remote_cmd::RemoteArgs),
    /// Print the SHA-256 fingerprint of the certificate an appliance presents, trusting
    /// nothing, to compare with the one it shows before pinning it.
    RemoteFingerprint {
        /// https://HOST:PORT
        url: String,
    },
    /// Rebuild the chunk index from the pack files.
    Reindex {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Apply a retention policy to one name's restore points (--dry-run lists what would go
    /// and why). Pinned and immutable points are kept.
    Prune(store_cmd::PruneArgs),
    /// Delete restore points (NAME@ID), unless pinned or inside their immutability window.
    Delete(store_cmd::DeleteArgs),
    /// Protect a restore point (NAME@ID) from prune and delete.
    Pin(store_cmd::PinArgs),
    /// Remove a restore point's protection.
    Unpin(store_cmd::PinArgs),
    /// Free the space of chunks no restore point references (safe while backups run).
    Gc(store_cmd::GcArgs),
    /// Compress what backups stored raw to keep ingest fast (the daemon does this in its
    /// nightly maintenance; safe while backups run).
    Recompress(store_cmd::RecompressArgs),
    /// After verify found damage: rewrite damaged packs, drop what is lost, restore damaged
    /// catalog records from their manifests; exit 3 while restore points are incomplete.
    Repair(store_cmd::RepairArgs),
    /// Run the appliance daemon: HTTPS REST API and web UI, scheduler and task engine.
    Serve(serve_cmd::ServeArgs),
    /// What the appliance's console shows: the addresses to open, the TLS certificate's
    /// fingerprint and, until setup is done, the setup code.
    Console(console_cmd::ConsoleArgs),
    /// Wait until the daemon answers on its HTTPS port; with --bless, then mark the running
    /// root slot good (the appliance image runs it after each boot).
    Health(health_cmd::HealthArgs),
    /// The appliance image's network and time settings: apply what the UI saved (as root).
    Network(network_cmd::NetworkArgs),
    /// Signed update bundles of the appliance image: make a signing key, sign, verify.
    Update(update_cmd::UpdateArgs),
    /// The recovery key of an encrypted store: export it, install it on a new appliance, check it.
    Key(key_cmd::KeyArgs),
    /// The tape tier: inventory, label, destage, restore from tape, catalog, verify, pools.
    Tape(tape_cmd::TapeArgs),
    /// Make a sample VM disk, back it up twice with a change between, verify, restore.
    Demo {
        /// Working directory for the sample disk, the store and the restored image.
        #[arg(long, default_value = "rackvault-demo")]
        dir: PathBuf,
        /// Size of the sample disk in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
    },
}

/// Credentials for iSCSI sources that should not be typed into a URL (it shows in `ps`).
#[derive(clap::Args, Debug, Default)]
struct Credentials {
    /// CHAP user name for iSCSI sources.
    #[arg(long, requires = "chap_secret_file")]
    chap_user: Option<String>,
    /// File whose first line is the CHAP secret.
    #[arg(long, requires = "chap_user")]
    chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the user name the target must answer with.
    #[arg(long, requires = "mutual_secret_file")]
    mutual_user: Option<String>,
    /// Mutual CHAP: file whose first line is the target's secret.
    #[arg(long, requires = "mutual_user")]
    mutual_secret_file: Option<PathBuf>,
}

impl Credentials {
    fn load(&self) -> Result<engine::SourceSecrets> {
        let read = |path: &Path| -> Result<engine::Secret> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: cannot read the secret file: {e}", path.display()))?;
            let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
            anyhow::ensure!(!line.is_empty(), "{}: the secret file is empty", path.display());
            Ok(engine::Secret::new(line))
        };
        let pair = |user: &Option<String>, file: &Option<PathBuf>| -> Result<Option<(String, engine::Secret)>> {
            match (user, file) {
                (Some(u), Some(f)) => Ok(Some((u.clone(), read(f)?))),
                _ => Ok(None),
            }
        };
        Ok(engine::SourceSecrets {
            chap: pair(&self.chap_user, &self.chap_secret_file)?,
            mutual_chap: pair(&self.mutual_user, &self.mutual_secret_file)?,
            // The command line reads whatever its user may read.
            local: engine::LocalConfinement::default(),
        })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Raw,
    Qcow2,
}

/// Parse "65536", "64K", "64KiB", "1M", "4MiB".
fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size; use e.g. 256K or 1M"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K or M")),
    };
    u32::try_from(n * mult).map_err(|_| format!("{s:?} is too large"))
}

fn parse_cipher(s: &str) -> Result<store::Cipher, String> {
    store::Cipher::from_name(s)
        .filter(|c| *c != store::Cipher::None)
        .ok_or_else(|| format!("{s:?}: use aes-256-gcm or xchacha20-poly1305"))
}

/// Open the store at `path` with the global `--key-file`'s key, if one was given.
fn open_store(path: &Path, create: bool) -> Result<Store> {
    let key = key_cmd::store_key()?;
    let replica_keys = key_cmd::replica_keys()?;
    Ok(opened_store(Store::open(path, &StoreOptions { create, key, replica_keys, ..Default::default() })?))
}

/// Tell what the cleanup at open did.
fn opened_store(store: Store) -> Store {
    let c = store.cleanup_report();
    if c.tmp_packs_removed > 0 {
        eprintln!(
            "rackvault: cleaned up after an interrupted backup: removed {} unsealed pack(s), {} freed",
            c.tmp_packs_removed,
            human_bytes(c.bytes_freed)
        );
    }
    if c.orphan_packs_adopted > 0 {
        eprintln!(
            "rackvault: indexed {} sealed pack(s) the index did not know (interrupted backup or lost index); {} restore point(s) recovered",
            c.orphan_packs_adopted, c.restore_points_recovered
        );
    }
    store
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn default_name(source: &str) -> String {
    let source = source.split('?').next().unwrap_or(source).trim_end_matches('/');
    let base = source.rsplit('/').next().unwrap_or(source);
    let stem = base.split('.').next().unwrap_or(base);
    let cleaned: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if cleaned.is_empty() {
        "disk".into()
    } else {
        cleaned
    }
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let interactive = std::io::stderr().is_terminal();
    match cli.command {
        Command::Backup {
            source,
            credentials,
            store,
            name,
            chunk_size,
            zstd_level,
            no_compress,
            compress_now,
            threads,
            immutable_for,
            pack_target,
            encrypt,
            cipher,
            json,
        } => {
            let name = name.unwrap_or_else(|| default_name(&source));
            engine::validate_chunk_size(chunk_size)?;
            store::validate_name(&name)?;
            let opened = engine::open_source_all(&source, &credentials.load()?)?;
            let key = if encrypt { Some(key_cmd::key_for_new_store(&store, cipher)?) } else { key_cmd::store_key()? };
            let o = StoreOptions {
                create: true,
                pack_target: pack_target.map_or(store::DEFAULT_PACK_TARGET, u64::from),
                key,
                cipher,
                ..Default::default()
            };
            let store = opened_store(Store::open(&store, &o)?);
            let zstd_level = (!no_compress).then_some(zstd_level);
            let opts = BackupOptions {
                chunk_size,
                zstd_level,
                defer_compression: !compress_now,
                threads,
                immutable_for_s: immutable_for,
                ..BackupOptions::new(&name)
            };
            let bar = Bar::new(interactive && !json);
            let disks: Vec<engine::DiskToBackup<'_>> = opened
                .disks
                .iter()
                .map(|(label, disk)| engine::DiskToBackup { label, source: disk.as_ref() })
                .collect();
            let report = engine::backup_disks(&store, &disks, &opened.files, &opts, &bar)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "backed up {} ({}, {}) as {}@{} in {:.2} s: read {}, wrote {}, {} of {} chunks new, {} zero; I/O via {}",
                    report.source,
                    report.format,
                    human_bytes(report.bytes_logical),
                    report.name,
                    report.id,
                    report.duration_s,
                    human_bytes(report.bytes_read),
                    human_bytes(report.bytes_written),
                    report.chunks_new,
                    report.chunks_total,
                    report.chunks_zero,
                    report.io_backend
                );
                if report.bytes_deferred > 0 {
                    println!(
                        "{} of it stored raw to keep the backup fast: `rackvault recompress --store {}` (the daemon's nightly maintenance) compresses it",
                        human_bytes(report.bytes_deferred),
                        store.root().display()
                    );
                }
                if report.disks.len() > 1 || !report.files.is_empty() {
                    for d in &report.disks {
                        println!("  disk {}: {} ({}, {})", d.label, d.source, d.format, human_bytes(d.bytes_logical));
                    }
                    if !report.files.is_empty() {
                        println!("  configuration: {}", report.files.join(", "));
                    }
                }
            }
        }
        Command::Probe { source, credentials, json } => {
            let report = engine::probe(&source, &credentials.load()?)?;
            if json {
                print_json(&report)?;
            } else {
                match report {
                    engine::ProbeReport::IscsiTargets { portal, targets } => {
                        println!("iSCSI portal {portal}: {} target(s)", targets.len());
                        for t in targets {
                            println!("  {}  ({})", t.name, t.addresses.join(", "));
                        }
                    }
                    engine::ProbeReport::NfsExports { server, exports } => {
                        println!("NFS server {server}: {} export(s)", exports.len());
                        for e in exports {
                            println!("  {e}");
                        }
                    }
                    engine::ProbeReport::Disks { source, disks, files } => {
                        println!("{source}: {} disk(s)", disks.len());
                        for d in disks {
                            println!("  {}: {} ({}, {})", d.label, d.source, d.format, human_bytes(d.size));
                        }
                        if !files.is_empty() {
                            println!("  configuration: {}", files.join(", "));
                        }
                    }
                }
            }
        }
        Command::List { store, json } => {
            let store = open_store(&store, false)?;
            let points = store.list()?;
            if json {
                print_json(&serde_json::json!({ "restore_points": points, "usage": store.usage()? }))?;
            } else if points.is_empty() {
                println!(
                    "no restore points yet; create one with `rackvault backup SOURCE --store {}`",
                    store.root().display()
                );
            } else {
                println!(
                    "{:<24} {:>6} {:>20} {:>10} {:>10}  source",
                    "name", "id", "created (UTC)", "size", "new data"
                );
                for p in &points {
                    let size: u64 = p.disks.iter().map(|d| d.size).sum();
                    let src = p.disks.first().map(|d| d.source.as_str()).unwrap_or("");
                    println!(
                        "{:<24} {:>6} {:>20} {:>10} {:>10}  {}",
                        p.name,
                        p.id,
                        format_time(p.created_unix),
                        human_bytes(size),
                        human_bytes(p.stats.bytes_written),
                        src
                    );
                }
                let u = store.usage()?;
                println!(
                    "store: {} in {} pack(s), {} chunks, index {}",
                    human_bytes(u.pack_bytes),
                    u.packs,
                    u.chunks,
                    human_bytes(u.index_bytes)
                );
            }
        }
        Command::Restore {
            point,
            store,
            to,
            disk,
            all,
            format,
            verify,
            force,
            threads,
            no_read_ahead,
            from,
            namespace,
            s3,
            json,
        } => {
            let (store, rp) = match (&from, &namespace) {
                (Some(url), Some(ns)) => {
                    let store = open_store(&store, true)?;
                    let from = s3_cmd::Remote { url, namespace: ns, args: &s3 };
                    let rp = s3_cmd::pull_for_restore(&store, &point, &from, interactive && !json)?;
                    (store, rp)
                }
                _ => {
                    let store = open_store(&store, false)?;
                    let rp = store.find(&point)?;
                    (store, rp)
                }
            };
            let format = match format {
                Format::Raw => RestoreFormat::Raw,
                Format::Qcow2 => RestoreFormat::Qcow2,
            };
            let bar = Bar::new(interactive && !json);
            if all {
                let reports = restore_all(&store, &rp, &to, format, verify, force, threads, &bar)?;
                if json {
                    print_json(&reports)?;
                } else {
                    println!("restored {} into {}: {}", rp.spec(), to.display(), reports.written.join(", "));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let disk = pick_disk(&rp, disk.as_deref())?;
            let opts = RestoreOptions { to, format, verify, force, disk, threads, read_ahead: !no_read_ahead };
            let report = engine::restore(&store, &rp, &opts, &bar)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "restored {} ({}) to {} as {:?} in {:.2} s: {} written, {} zero chunks left as holes{}",
                    report.point,
                    human_bytes(report.bytes_logical),
                    report.to,
                    report.format,
                    report.duration_s,
                    human_bytes(report.bytes_written),
                    report.chunks_zero,
                    if report.verified { "; verified against the backup" } else { "" }
                );
            }
        }
        Command::Replicate { point, data_dir: Some(dir), to, json, .. } => {
            remote_cmd::replicate_to_remote(&dir, &point, &to, json)?;
        }
        Command::Replicate {
            point, store, to, fingerprint, token_file, namespace, max_mbps, lock, s3, json, ..
        } => {
            let (Some(store), Some(namespace)) = (store, namespace) else {
                anyhow::bail!("give --store and --namespace (or --data-dir and a remote's name)");
            };
            let store = open_store(&store, false)?;
            let p = store.find(&point)?;
            let opts = engine::replicate::ReplicateOptions {
                max_bytes_per_s: max_mbps.map(|m| u64::from(m) * 1_000_000),
                ..engine::replicate::ReplicateOptions::new(&namespace)
            };
            let bar = Bar::new(interactive && !json);
            let r = if to.starts_with("s3://") {
                let remote = s3_cmd::Remote { url: &to, namespace: &namespace, args: &s3 };
                s3_cmd::replicate(&store, &p, &remote, lock.as_deref(), &opts, &bar)?
            } else {
                let (Some(fingerprint), Some(token_file)) = (fingerprint, token_file) else {
                    anyhow::bail!("replicating to an appliance needs --fingerprint and --token-file");
                };
                let token = std::fs::read_to_string(&token_file)
                    .with_context(|| format!("reading the token from {}", token_file.display()))?;
                let client = pinhttp::Client::new(&to, &fingerprint, Some(token.trim().to_string()))?;
                let mut target = engine::replicate::HttpTarget::new(client);
                engine::replicate::replicate(&store, &p, &mut target, &opts, &bar)?
            };
            if json {
                print_json(&r)?;
            } else if r.already_there {
                println!("{} is already there as {}: nothing sent", r.point, r.delivered_as);
            } else {
                println!(
                    "replicated {} as {}: {} chunk(s) and {} index node(s), {} in {} batch(es), {:.1} s",
                    r.point,
                    r.delivered_as,
                    r.chunks_sent,
                    r.nodes_sent,
                    human_bytes(r.bytes_sent),
                    r.batches,
                    r.seconds
                );
            }
        }
        Command::Pull { point, from, namespace, store, list, s3, json } => {
            let store = match (&store, list) {
                (Some(dir), false) => Some(open_store(dir, true)?),
                _ => None,
            };
            let point = if list { None } else { point.as_deref() };
            if !list && point.is_none() {
                anyhow::bail!("name the point to pull (NAME or NAME@ID), or give --list");
            }
            let from = s3_cmd::Remote { url: &from, namespace: &namespace, args: &s3 };
            s3_cmd::pull(store.as_ref(), point, &from, interactive, json)?;
        }
        Command::RemoteFingerprint { url } => {
            println!("{}", pinhttp::fetch_fingerprint(&url, std::time::Duration::from_secs(10))?);
        }
        Command::Verify { store, point, skip_verified_within, max_packs, threads, json } => {
            let store = open_store(&store, false)?;
            let bar = Bar::new(interactive && !json);
            let report = if skip_verified_within.is_some() || max_packs.is_some() {
                let opts = store::VerifyOptions {
                    skip_verified_within_s: skip_verified_within.map(|d| d * 86_400),
                    max_packs,
                };
                engine::verify_incremental(&store, &opts, threads, &bar)?
            } else {
                engine::verify(&store, point.as_deref(), threads, &bar)?
            };
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "checked {} restore point(s), {} chunks, {}",
                    report.restore_points_checked,
                    report.chunks_checked,
                    human_bytes(report.bytes_checked)
                );
                if report.packs_skipped_recent + report.packs_left_for_later > 0 {
                    println!(
                        "incremental: {} pack(s) scanned, {} verified recently and skipped, {} left for the next run",
                        report.packs_scanned, report.packs_skipped_recent, report.packs_left_for_later
                    );
                }
                for r in &report.damaged_records {
                    println!("DAMAGED RECORD {r}");
                }
                for p in &report.damaged_points {
                    for r in &p.ranges {
                        println!(
                            "DAMAGED {} disk {} bytes {}..{}: {}",
                            p.point,
                            r.disk,
                            r.offset,
                            r.offset + r.len,
                            r.reason
                        );
                    }
                }
                if report.is_clean() {
                    println!("all intact");
                } else {
                    println!("damage found: restore points listed above cannot be fully restored; back them up again from the source, and keep the store's disk under watch");
                }
            }
            if !report.is_clean() {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Reindex { store, json } => {
            let store = open_store(&store, false)?;
            let report = store.reindex()?;
            if json {
                print_json(&report)?;
            } else {
                println!("rebuilt the index from {} pack(s): {} chunks", report.packs, report.chunks);
                for r in &report.damaged_records {
                    println!("DAMAGED {r}");
                }
            }
        }
        Command::Prune(args) => return store_cmd::prune(args),
        Command::Delete(args) => return store_cmd::delete(args),
        Command::Pin(args) => return store_cmd::pin(args, true),
        Command::Unpin(args) => return store_cmd::pin(args, false),
        Command::Gc(args) => return store_cmd::gc(args, interactive),
        Command::Recompress(args) => return store_cmd::recompress(args, interactive),
        Command::Repair(args) => return store_cmd::repair(args),
        Command::Tape(args) => return tape_cmd::run(args, interactive),
        Command::Serve(args) => return serve_cmd::run(args),
        Command::Console(args) => return console_cmd::run(args),
        Command::Health(args) => return health_cmd::run(args),
        Command::Update(args) => return update_cmd::run(args),
        Command::Network(args) => return network_cmd::run(args),
        Command::Key(args) => return key_cmd::run(args),
        Command::Remote(args) => return remote_cmd::run(args),
        Command::Demo { dir, size_mib } => demo::run(&dir, size_mib, interactive)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The index of the disk `--disk` names (a label or a number), or the only disk.
fn pick_disk(rp: &store::RestorePoint, disk: Option<&str>) -> Result<usize> {
    let labels = || rp.disks.iter().map(|d| d.label.as_str()).collect::<Vec<_>>().join(", ");
    match disk {
        None if rp.disks.len() <= 1 => Ok(0),
        None => anyhow::bail!(
            "{} has {} disks ({}); choose one with --disk LABEL, or restore the whole VM with --all --to DIR",
            rp.spec(),
            rp.disks.len(),
            labels()
        ),
        Some(d) => rp
            .disks
            .iter()
            .position(|x| x.label == d)
            .or_else(|| d.parse::<usize>().ok().filter(|&i| i < rp.disks.len()))
            .ok_or_else(|| anyhow::anyhow!("{} has no disk {d:?}; its disks are: {}", rp.spec(), labels())),
    }
}

/// What `restore --all` wrote.
#[derive(Debug, serde::Serialize)]
struct RestoreAllReport {
    point: String,
    to: String,
    disks: Vec<engine::RestoreReport>,
    /// File names written into the directory, disks and configuration files.
    written: Vec<String>,
}

/// Restore every disk and configuration file of `rp` into the directory `dir`: disks as
/// `<label>.raw|qcow2` (':' in labels becomes '-'), configuration files under their names.
#[allow(clippy::too_many_arguments)]
fn restore_all(
    store: &Store,
    rp: &store::RestorePoint,
    dir: &Path,
    format: RestoreFormat,
    verify: bool,
    force: bool,
    threads: usize,
    bar: &Bar,
) -> Result<RestoreAllReport> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create the directory: {e}", dir.display()))?;
    let ext = match format {
        RestoreFormat::Raw => "raw",
        RestoreFormat::Qcow2 => "qcow2",
    };
    let mut out = RestoreAllReport { point: rp.spec(), to: dir.display().to_string(), disks: vec![], written: vec![] };
    for file in &rp.files {
        // The store only accepts plain names; check again, a manifest is data from disk.
        anyhow::ensure!(
            !file.name.is_empty() && file.name != "." && file.name != ".." && !file.name.contains(['/', '\0']),
            "{}: configuration file name {:?} is not a plain file name; not restoring it",
            rp.spec(),
            file.name
        );
        let path = dir.join(&file.name);
        anyhow::ensure!(force || !path.exists(), "{}: exists; use --force to overwrite it", path.display());
        let content = store.read_point_file(file)?;
        let tmp = dir.join(format!(".{}.rackvault-partial", file.name));
        std::fs::write(&tmp, &content)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
        out.written.push(file.name.clone());
    }
    for (i, disk) in rp.disks.iter().enumerate() {
        let name = format!("{}.{ext}", disk.label.replace([':', '/'], "-"));
        let opts = RestoreOptions { to: dir.join(&name), format, verify, force, disk: i, threads, read_ahead: true };
        out.disks.push(engine::restore(store, rp, &opts, bar)?);
        out.written.push(name);
    }
    Ok(out)
}

pub fn format_time(unix: u64) -> String {
    // Civil date from days since the epoch (proleptic Gregorian), to avoid a time crate.
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message
/// already holds (many library errors embed their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Raise the soft open-files limit to the hard one: a restore or verify may touch many pack
/// files, and the daemon serves connections while tasks run. Nothing is said on failure: the
/// store then keeps fewer pack files open.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn main() -> ExitCode {
    raise_open_files_limit();
    let cli = Cli::parse();
    key_cmd::set_key_file(cli.key_file.clone());
    key_cmd::set_replica_key_files(cli.replica_key.clone());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rackvault: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
    }

    #[test]
    fn names_from_sources() {
        assert_eq!(default_name("/var/lib/vm-01.qcow2"), "vm-01");
        assert_eq!(default_name("file:///x/disk image.raw"), "disk-image");
        assert_eq!(default_name("nfs://h/export/web01/"), "web01");
        assert_eq!(default_name("nfs://h/export/web01/web01.vmdk?mountport=1"), "web01");
    }

    #[test]
    fn dates_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06:40");
    }
}
