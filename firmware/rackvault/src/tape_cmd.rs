//! `rackvault tape ...`: the tape tier's command line. Parses arguments, opens the library,
//! the tape catalog and (when needed) the store, runs one engine tape job and prints it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use engine::tape::{self, Library, TapeCatalog, TapeRestoreTarget};
use engine::NoProgress;

use crate::progress::Bar;
use crate::{human_bytes, open_store, print_json};

#[derive(Args, Debug)]
pub struct TapeArgs {
    /// The tape library: iscsi://host[:port]/<iqn>/<changer lun>, /dev/sgN, or
    /// emulated:<dir> (an in-process library, created on first use). Default: $RACKVAULT_CHANGER.
    #[arg(long, global = true, env = "RACKVAULT_CHANGER")]
    changer: Option<String>,
    /// The tape catalog directory. Default: <store>/tape-catalog.
    #[arg(long, global = true)]
    catalog: Option<PathBuf>,
    /// The staging store (destage reads from it, restore --import writes to it).
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// One JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: TapeCmd,
}

#[derive(Subcommand, Debug)]
enum TapeCmd {
    /// The library's slots, drives and mail slots, with each cartridge's label, pool and media set.
    Inventory,
    /// Write a label on cartridges so that a pool can use them. Refuses cartridges that
    /// hold data unless --force; never writes WORM or write-protected cartridges.
    Label {
        /// Barcodes to label.
        #[arg(required_unless_present = "all_unlabelled")]
        barcodes: Vec<String>,
        /// Label every cartridge the catalog does not know (cleaning cartridges excepted);
        /// cartridges that hold data are skipped and listed.
        #[arg(long)]
        all_unlabelled: bool,
        #[arg(long)]
        pool: String,
        /// Label even if the cartridge holds data (it is lost).
        #[arg(long)]
        force: bool,
    },
    /// Copy restore points (NAME for the newest, or NAME@ID) from the store to a pool's media set.
    Destage {
        #[arg(required = true)]
        points: Vec<String>,
        #[arg(long)]
        pool: String,
    },
    /// Restore a restore point from tape: every disk into a directory, one disk into a file
    /// or block device, or back into the store (--import).
    Restore {
        /// NAME (newest copy of the newest) or NAME@ID.
        point: String,
        /// A directory (all disks, as <label>.raw, plus configuration files), or with --disk a
        /// file or block device.
        #[arg(long, required_unless_present = "import")]
        to: Option<PathBuf>,
        /// Restore only this disk (label or index) into --to.
        #[arg(long)]
        disk: Option<String>,
        /// Re-import the restore point into the store given with --store.
        #[arg(long, conflicts_with_all = ["to", "disk"])]
        import: bool,
    },
    /// Show the restore points and media sets on tape; --rebuild re-reads every cartridge
    /// (for a lost or damaged catalog).
    Catalog {
        #[arg(long)]
        rebuild: bool,
        /// With --rebuild: scan only these cartridges.
        #[arg(long = "barcode")]
        barcodes: Vec<String>,
    },
    /// Read a cartridge end to end and check every block and record digest.
    Verify { barcode: String },
    /// Show or change a pool's policy.
    Pool {
        name: String,
        /// continue | per-job | daily | weekly
        #[arg(long)]
        allocation: Option<tape::Allocation>,
        /// Days after a media set's last write before its cartridges may be overwritten.
        #[arg(long)]
        retention_days: Option<u64>,
        /// Bound on the cartridges one restore of this pool may need (0: unbounded).
        #[arg(long)]
        max_restore_tapes: Option<u32>,
    },
    /// Benchmarks only (tests/bench/tape-bench.sh): makes the data cartridges of an
    /// emulated:<dir> library (created if new; none may be in a drive) discarding: writes are
    /// accepted and counted against capacity, the data of blocks over 64 KiB is dropped and
    /// reads back as a medium error.
    #[command(hide = true)]
    EmulatedDiscard,
}

impl TapeArgs {
    fn catalog(&self) -> Result<TapeCatalog> {
        let dir = match (&self.catalog, &self.store) {
            (Some(c), _) => c.clone(),
            (None, Some(s)) => s.join("tape-catalog"),
            (None, None) => bail!("give --catalog DIR (or --store DIR, whose tape-catalog directory is then used)"),
        };
        TapeCatalog::open(&dir).with_context(|| format!("opening the tape catalog {}", dir.display()))
    }

    fn library(&self) -> Result<Library> {
        let spec = self.changer.as_deref().context(
            "no tape library given: use --changer iscsi://host[:port]/<iqn>/<lun>, /dev/sgN or emulated:<dir> \
             (or set RACKVAULT_CHANGER)",
        )?;
        Ok(Library::open(spec)?)
    }
}

pub fn run(args: TapeArgs, interactive: bool) -> Result<ExitCode> {
    let json = args.json;
    let bar = Bar::new(interactive && !json);
    match &args.cmd {
        TapeCmd::Inventory => {
            let cat = args.catalog()?;
            let lib = args.library()?;
            let rows = tape::inventory(&cat, &lib)?;
            if json {
                print_json(&serde_json::json!({ "library": lib.describe(), "elements": rows }))?;
            } else {
                println!("library {}", lib.describe());
                println!("{:<10} {:>6}  {:<10} {:<10} {:<34} notes", "element", "addr", "barcode", "pool", "media set");
                for r in rows {
                    let mut notes = Vec::new();
                    if let Some(s) = &r.drive_serial {
                        notes.push(format!("drive {s}"));
                    }
                    if r.cleaning {
                        notes.push("cleaning cartridge".into());
                    }
                    if r.full_tape {
                        notes.push("full".into());
                    }
                    if r.bytes_written > 0 {
                        notes.push(human_bytes(r.bytes_written));
                    }
                    if r.full && r.pool.is_none() && !r.cleaning {
                        notes.push("not labelled".into());
                    }
                    println!(
                        "{:<10} {:>6}  {:<10} {:<10} {:<34} {}",
                        r.element,
                        r.address,
                        r.barcode.as_deref().unwrap_or(if r.full { "?" } else { "-" }),
                        r.pool.as_deref().unwrap_or("-"),
                        r.media_set
                            .as_ref()
                            .map(|s| format!("{s} #{}", r.set_seq.unwrap_or(0) + 1))
                            .unwrap_or("-".into()),
                        notes.join(", ")
                    );
                }
            }
        }
        TapeCmd::Label { barcodes, all_unlabelled, pool, force } => {
            let cat = args.catalog()?;
            let mut lib = args.library()?;
            let mut targets = barcodes.clone();
            if *all_unlabelled {
                for e in lib.inventory()?.all() {
                    if let Some(b) = &e.barcode {
                        if !e.is_cleaning() && cat.medium(b)?.is_none() && !targets.contains(b) {
                            targets.push(b.clone());
                        }
                    }
                }
            }
            let mut done = Vec::new();
            let mut refused = Vec::new();
            for b in &targets {
                match tape::label(&cat, &mut lib, b, pool, *force) {
                    Ok(r) => {
                        if !json {
                            println!(
                                "labelled {} for pool {} (medium {}; was {})",
                                r.barcode, r.pool, r.medium_id, r.previously
                            );
                        }
                        done.push(r);
                    }
                    Err(e) if *all_unlabelled && matches!(e, tape::TapeError::HoldsData { .. }) => {
                        if !json {
                            println!("skipped {b}: {e}");
                        }
                        refused.push(serde_json::json!({ "barcode": b, "error": e.to_string() }));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if json {
                print_json(&serde_json::json!({ "labelled": done, "skipped": refused }))?;
            }
        }
        TapeCmd::Destage { points, pool } => {
            let store_dir = args.store.as_ref().context("destage reads from a store: give --store DIR")?;
            let store = open_store(store_dir, false)?;
            let cat = args.catalog()?;
            let mut lib = args.library()?;
            let mut chosen = Vec::new();
            for p in points {
                chosen.push(store.find(p)?);
            }
            let report = tape::destage(&store, &cat, &mut lib, &chosen, &tape::DestageOptions::new(pool), &bar)?;
            if json {
                print_json(&report)?;
            } else {
                for l in &report.log {
                    println!("  {l}");
                }
                println!(
                    "destaged {} to pool {} media set {}: {} written to {} in {:.1} s ({:.0} MB/s), {} chunks new, {} \
                     already on the set; the drive waited {} time(s) ({:.2} s)",
                    report.points.join(", "),
                    report.pool,
                    report.media_set,
                    human_bytes(report.bytes_to_tape),
                    report.tapes.join(", "),
                    report.seconds,
                    report.mb_per_s,
                    report.chunks_written,
                    report.chunks_deduplicated,
                    report.drive_waits,
                    report.drive_wait_seconds
                );
            }
        }
        TapeCmd::Restore { point, to, disk, import } => {
            // The store first: creating a new one needs an empty directory, and the default
            // catalog directory lives inside it.
            let store = if *import {
                Some(open_store(
                    args.store.as_ref().context("restore --import writes into a store: give --store DIR")?,
                    true,
                )?)
            } else {
                None
            };
            let cat = args.catalog()?;
            let mut lib = args.library()?;
            let target = if let Some(store) = &store {
                TapeRestoreTarget::Import(store)
            } else {
                let to = to.clone().expect("clap requires --to without --import");
                match disk {
                    Some(d) => TapeRestoreTarget::Disk { disk: d.clone(), path: to },
                    None => TapeRestoreTarget::Directory(to),
                }
            };
            let report = tape::restore_from_tape(&cat, &mut lib, point, target, &bar)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "restored {} from media set {} ({}) : {} into {}",
                    report.point,
                    report.media_set,
                    report.tapes.join(", "),
                    human_bytes(report.bytes_restored),
                    report
                        .imported_as
                        .clone()
                        .map(|p| format!("the store as {p}"))
                        .unwrap_or(report.outputs.join(", "))
                );
                for p in &report.problems {
                    println!("  problem: {p}");
                }
                for d in &report.damaged {
                    println!("DAMAGED {} bytes {}..{}: {}", d.disk, d.offset, d.offset + d.len, d.reason);
                }
                if !report.damaged.is_empty() {
                    println!(
                        "the ranges above could not be read from tape and were left as zeros; everything else was \
                         restored. Clean the drive and retry, or restore those disks from another copy"
                    );
                }
            }
            if !report.damaged.is_empty() {
                return Ok(ExitCode::from(3));
            }
        }
        TapeCmd::Catalog { rebuild, barcodes } => {
            let cat = args.catalog()?;
            if *rebuild {
                let mut lib = args.library()?;
                let only = (!barcodes.is_empty()).then_some(barcodes.as_slice());
                let report = tape::rebuild_catalog(&cat, &mut lib, only, &NoProgress)?;
                if json {
                    print_json(&report)?;
                } else {
                    println!(
                        "scanned {} cartridge(s): {} labelled, {} blank or foreign; {} media set(s), {} restore \
                         point copies, {} chunk locations",
                        report.cartridges_scanned.len(),
                        report.labelled.len(),
                        report.blank_or_foreign.len(),
                        report.media_sets,
                        report.restore_points.len(),
                        report.chunks
                    );
                    for p in &report.problems {
                        println!("  problem: {p}");
                    }
                }
            } else {
                let points = cat.all_points()?;
                let sets = cat.sets()?;
                if json {
                    let pts: Vec<_> = points
                        .iter()
                        .map(|p| {
                            serde_json::json!({ "point": p.point.spec(), "media_set": p.set_id, "barcode": p.barcode,
                                "file": p.file, "written_unix": p.written_unix, "bytes": p.point.stats.bytes_logical })
                        })
                        .collect();
                    print_json(&serde_json::json!({ "points": pts, "media_sets": sets, "pools": cat.pools()? }))?;
                } else {
                    for s in &sets {
                        println!("media set {} pool {}: {}", s.set_id, s.pool, s.media.join(", "));
                    }
                    for p in &points {
                        println!(
                            "{:<24} set {} from {} file {} ({})",
                            p.point.spec(),
                            p.set_id,
                            p.barcode,
                            p.file,
                            human_bytes(p.point.stats.bytes_logical)
                        );
                    }
                    if points.is_empty() {
                        println!("no restore point is on tape yet (destage one with `rackvault tape destage`)");
                    }
                }
            }
        }
        TapeCmd::Verify { barcode } => {
            let mut lib = args.library()?;
            let report = tape::verify_tape(&mut lib, barcode, &bar)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "{}: {} file(s), {} records, {} checked",
                    report.barcode,
                    report.files,
                    report.records,
                    human_bytes(report.bytes)
                );
                for p in &report.problems {
                    println!("PROBLEM {p}");
                }
                if report.problems.is_empty() {
                    println!("all intact");
                }
            }
            if !report.problems.is_empty() {
                return Ok(ExitCode::from(3));
            }
        }
        TapeCmd::Pool { name, allocation, retention_days, max_restore_tapes } => {
            let cat = args.catalog()?;
            let mut p = cat.pool(name)?;
            if let Some(a) = allocation {
                p.allocation = *a;
            }
            if let Some(d) = retention_days {
                p.retention_days = *d;
            }
            if let Some(m) = max_restore_tapes {
                p.max_restore_tapes = (*m > 0).then_some(*m);
            }
            if allocation.is_some() || retention_days.is_some() || max_restore_tapes.is_some() {
                cat.set_pool(&p)?;
            }
            if json {
                print_json(&p)?;
            } else {
                println!(
                    "pool {}: allocation {:?}, retention {} days, max restore tapes {}",
                    p.name,
                    p.allocation,
                    p.retention_days,
                    p.max_restore_tapes.map(|m| m.to_string()).unwrap_or("unbounded".into())
                );
            }
        }
        TapeCmd::EmulatedDiscard => {
            let lib = args.library()?;
            let emu = lib.emulated().context("emulated-discard works on an emulated:<dir> library only")?;
            let mut done = Vec::new();
            for e in lib.inventory()?.all() {
                if let (Some(b), true, false) = (&e.barcode, e.full, e.is_cleaning()) {
                    emu.set_discard(b, true).with_context(|| format!("making {b} discarding"))?;
                    done.push(b.clone());
                }
            }
            if json {
                print_json(&serde_json::json!({ "library": lib.describe(), "discarding": done }))?;
            } else {
                println!("{}: {} discarding (benchmarks only)", lib.describe(), done.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
