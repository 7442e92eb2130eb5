//! The store's life over months on the command line: `prune`, `delete`, `pin`/`unpin`, `gc`
//! and `repair`. Each opens the store, runs one store or engine operation and prints it (or
//! one JSON object with `--json`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use engine::prune::{PruneAction, PruneRequest};
use store::retention::RetentionPolicy;

use crate::{format_time, human_bytes, open_store, print_json};

/// `rackvault prune`: apply a retention policy to one name's restore points.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The restore-point name (a job's source name) to prune.
    name: String,
    #[arg(long)]
    store: PathBuf,
    /// Keep the N newest points.
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep the newest point of each of the N most recent days with points.
    #[arg(long)]
    keep_daily: Option<u32>,
    /// Keep the newest point of each of the N most recent ISO weeks with points.
    #[arg(long)]
    keep_weekly: Option<u32>,
    /// Keep the newest point of each of the N most recent months with points.
    #[arg(long)]
    keep_monthly: Option<u32>,
    /// Keep the newest point of each of the N most recent years with points.
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep every point newer than this (e.g. 36h, 14d, 8w).
    #[arg(long, value_parser = parse_duration)]
    keep_within: Option<u64>,
    /// Time zone for days, weeks, months and years (IANA name); default: the system's.
    #[arg(long)]
    time_zone: Option<String>,
    /// Prune only points with a complete copy on tape (the tape catalog is
    /// <store>/tape-catalog unless --tape-catalog).
    #[arg(long)]
    require_tape_copy: bool,
    #[arg(long)]
    tape_catalog: Option<PathBuf>,
    /// List what would go and why; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

/// `rackvault delete NAME@ID...`
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Restore points to delete, as NAME@ID (all or none are deleted).
    #[arg(required = true)]
    points: Vec<String>,
    #[arg(long)]
    store: PathBuf,
    #[arg(long)]
    json: bool,
}

/// `rackvault pin|unpin NAME@ID`
#[derive(Args, Debug)]
pub struct PinArgs {
    point: String,
    #[arg(long)]
    store: PathBuf,
}

/// `rackvault gc`
#[derive(Args, Debug)]
pub struct GcArgs {
    #[arg(long)]
    store: PathBuf,
    /// Rewrite packs more than this share dead (0.0-1.0).
    #[arg(long, default_value_t = store::DEFAULT_REPACK_THRESHOLD)]
    repack_threshold: f64,
    /// Mark and count only; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

/// `rackvault recompress`
#[derive(Args, Debug)]
pub struct RecompressArgs {
    #[arg(long)]
    store: PathBuf,
    /// zstd level to compress at (negative levels are faster).
    #[arg(long, default_value_t = engine::DEFAULT_ZSTD_LEVEL, allow_negative_numbers = true)]
    zstd_level: i32,
    /// Compressing threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

/// `rackvault repair`
#[derive(Args, Debug)]
pub struct RepairArgs {
    #[arg(long)]
    store: PathBuf,
    #[arg(long)]
    json: bool,
}

/// "36h", "14d", "8w", "3600" (seconds) to seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration; use e.g. 36h, 14d or 8w"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h, d or w")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too long"))
}

fn split_spec(spec: &str) -> Result<(String, u64)> {
    let (name, id) = spec
        .rsplit_once('@')
        .with_context(|| format!("{spec:?}: name the restore point exactly, as NAME@ID (see `rackvault list`)"))?;
    let id = id.parse().with_context(|| format!("{spec:?}: the part after '@' must be a restore point id"))?;
    Ok((name.to_string(), id))
}

pub fn prune(a: PruneArgs) -> Result<ExitCode> {
    let store = open_store(&a.store, false)?;
    let policy = RetentionPolicy {
        keep_last: a.keep_last,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within_s: a.keep_within,
    };
    anyhow::ensure!(
        !policy.is_keep_all(),
        "no retention rule given, so nothing would be pruned; give at least one --keep-* option"
    );
    let tz = match &a.time_zone {
        Some(name) => store::retention::time_zone(name)?,
        None => store::retention::system_time_zone(),
    };
    let catalog = if a.require_tape_copy {
        let dir = a.tape_catalog.clone().unwrap_or_else(|| a.store.join("tape-catalog"));
        Some(
            engine::tape::TapeCatalog::open(&dir)
                .with_context(|| format!("opening the tape catalog {}", dir.display()))?,
        )
    } else {
        None
    };
    let on_tape = |p: &store::RestorePoint| {
        catalog.as_ref().is_some_and(|c| c.point_copies(&p.spec()).is_ok_and(|copies| !copies.is_empty()))
    };
    let req = PruneRequest {
        name: &a.name,
        policy: &policy,
        tz: &tz,
        require_tape_copy: a.require_tape_copy,
        dry_run: a.dry_run,
        actor: "rackvault prune",
    };
    let report = engine::prune::prune(&store, &req, &on_tape)?;
    if a.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    for item in &report.items {
        let verb = match (item.action, a.dry_run) {
            (PruneAction::Keep, _) => "keep  ",
            (PruneAction::Prune, true) => "would prune",
            (PruneAction::Prune, false) => "pruned",
            (PruneAction::KeepImmutable, _) => "keep (immutable)",
            (PruneAction::KeepAwaitingTape, _) => "keep (awaiting tape)",
        };
        println!("{verb:<20} {:<28} {}  {}", item.point, format_time(item.created_unix), item.why);
    }
    println!(
        "{}: {} kept, {} {}, {} kept as immutable, {} kept until on tape{}",
        report.name,
        report.kept,
        report.pruned,
        if a.dry_run { "would be pruned" } else { "pruned" },
        report.kept_immutable,
        report.kept_awaiting_tape,
        if a.dry_run || report.pruned == 0 { "" } else { "; run `rackvault gc` to free their space" }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn delete(a: DeleteArgs) -> Result<ExitCode> {
    let store = open_store(&a.store, false)?;
    let specs = a.points.iter().map(|s| split_spec(s)).collect::<Result<Vec<_>>>()?;
    let tombstones = store.delete_points(&specs, "deleted with `rackvault delete`")?;
    if a.json {
        print_json(&tombstones)?;
    } else {
        for t in &tombstones {
            println!("deleted {}@{}", t.name, t.id);
        }
        println!("run `rackvault gc` to free the space they alone used");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pin(a: PinArgs, pinned: bool) -> Result<ExitCode> {
    let store = open_store(&a.store, false)?;
    let (name, id) = split_spec(&a.point)?;
    store.set_pinned(&name, id, pinned)?;
    println!("{} {name}@{id}", if pinned { "pinned (protected from prune and delete):" } else { "unpinned:" });
    Ok(ExitCode::SUCCESS)
}

pub fn recompress(a: RecompressArgs, interactive: bool) -> Result<ExitCode> {
    let store = open_store(&a.store, false)?;
    let last = std::cell::Cell::new(0u64);
    let progress = |p: store::GcProgress| {
        // A line per tenth of the work.
        if interactive && !a.json && p.total > 0 && (p.done * 10 / p.total > last.get() || p.done == p.total) {
            last.set(p.done * 10 / p.total);
            eprintln!("recompress: {} of {}", human_bytes(p.done), human_bytes(p.total));
        }
    };
    let opts = store::RecompressOptions { level: a.zstd_level, yield_to_backups: false, threads: a.threads };
    let report = store.recompress(&opts, &progress, &|| false)?;
    if a.json {
        print_json(&report)?;
    } else if report.packs_pending == 0 {
        println!("nothing to compress: no pack holds data a backup stored raw for later");
    } else {
        println!(
            "recompressed {} pack(s) at zstd level {} in {:.1} s: {} chunk(s) compressed, {} left raw (they do not compress); {} -> {}; store {} -> {}",
            report.packs_rewritten,
            report.level,
            report.duration_s,
            report.chunks_compressed,
            report.chunks_left_raw,
            human_bytes(report.bytes_in),
            human_bytes(report.bytes_out),
            human_bytes(report.store_bytes_before),
            human_bytes(report.store_bytes_after)
        );
    }
    if report.packs_skipped_damaged > 0 {
        println!(
            "{} pack(s) with damaged records were left alone; run `rackvault verify`, then `rackvault repair`",
            report.packs_skipped_damaged
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gc(a: GcArgs, interactive: bool) -> Result<ExitCode> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.repack_threshold),
        "--repack-threshold {} must be between 0.0 and 1.0",
        a.repack_threshold
    );
    let store = open_store(&a.store, false)?;
    let progress = |p: store::GcProgress| {
        if interactive && !a.json && p.done == p.total {
            eprintln!("gc: {} done ({})", p.phase, p.total);
        }
    };
    let opts = store::GcOptions { repack_threshold: a.repack_threshold, dry_run: a.dry_run };
    let report = store.gc(&opts, &progress, &|| false)?;
    if a.json {
        print_json(&report)?;
    } else if a.dry_run {
        println!(
            "dry run: {} restore point(s) marked; {} chunk(s), {} would be condemned (about 1% of garbage may be kept for one more run)",
            report.points_marked,
            report.chunks_condemned,
            human_bytes(report.bytes_condemned)
        );
    } else {
        println!(
            "gc {}: {} point(s) marked, {} chunk(s) condemned, {} pack(s) deleted, {} rewritten, {} freed in {:.1} s; store {} -> {}",
            report.generation,
            report.points_marked,
            report.chunks_condemned,
            report.packs_deleted,
            report.packs_repacked,
            human_bytes(report.bytes_freed),
            report.duration_s,
            human_bytes(report.bytes_before),
            human_bytes(report.bytes_after)
        );
        if report.chunks_held > 0 {
            println!(
                "{} condemned chunk(s) kept for {} running backup(s); the next gc frees them",
                report.chunks_held, report.sessions_running
            );
        }
        if report.packs_skipped_damaged > 0 {
            println!(
                "{} pack(s) with damaged records were left alone; run `rackvault verify`, then `rackvault repair`",
                report.packs_skipped_damaged
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn repair(a: RepairArgs) -> Result<ExitCode> {
    let store = open_store(&a.store, false)?;
    let report = store.repair()?;
    if a.json {
        print_json(&report)?;
    } else {
        for p in &report.packs_rewritten {
            println!(
                "rewrote pack {:016x} ({}): kept {} record(s), dropped {}",
                p.old_pack, p.reason, p.records_kept, p.records_dropped
            );
        }
        for r in &report.records_dropped {
            println!("dropped chunk {} (pack {:016x} at {}): {}", r.digest, r.pack, r.offset, r.reason);
        }
        if report.index_entries_repointed > 0 {
            println!("repointed {} index entries at intact copies", report.index_entries_repointed);
        }
        for p in &report.points_restored_from_manifest {
            println!("restored the catalog record of {p} from its manifest");
        }
        for p in &report.manifests_rewritten {
            println!("wrote the manifest of {p} again");
        }
        for p in &report.points_unrepairable {
            println!("UNREPAIRABLE {}@{}: {}; delete it with `rackvault delete`", p.name, p.id, p.reason);
        }
        for p in &report.points_incomplete {
            println!("INCOMPLETE {}: {} chunk(s) missing; {}", p.point, p.chunks_missing, p.advice);
        }
        if report.all_points_complete() {
            println!("every restore point is complete");
        }
    }
    Ok(if report.all_points_complete() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
