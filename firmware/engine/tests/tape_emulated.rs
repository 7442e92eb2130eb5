//! The tape tier against the in-process emulated library (`vtl`): fast, and covering what
//! tgt cannot do (a hard end, pulled cartridges, medium errors, WORM). The same scenarios run
//! against tgt's virtual tape library in tests/e2e.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use blocksource::mem::MemSource;
use engine::tape::{self, DestageOptions, Library, TapeCatalog, TapeError, TapeRestoreTarget};
use engine::{BackupOptions, NoProgress, Progress};
use store::{Store, StoreOptions};

const CHUNK: u32 = 64 << 10;

/// Deterministic disk content: incompressible runs, zeros and text, so that chunks are
/// distinct, some compress and some are skipped.
fn disk_image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = seed | 1;
    while v.len() < len {
        let region = v.len() / (256 << 10) % 4;
        let n = (256 << 10).min(len - v.len());
        match region {
            0 | 1 => v.extend((0..n).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })),
            2 => v.extend(std::iter::repeat_n(0u8, n)),
            _ => v.extend(
                format!("block {} of the guest's text file system, seed {seed}\n", v.len()).bytes().cycle().take(n),
            ),
        }
    }
    v
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    image: Vec<u8>,
}

impl Fixture {
    fn new(image_len: usize, cartridges: &[(&str, u64, bool)], early_warning: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(&dir.path().join("store"), &StoreOptions { create: true, ..Default::default() }).unwrap();
        let image = disk_image(image_len, 7);
        backup(&store, "vm1", &image);
        let cfg = vtl::LibraryConfig { drives: 2, slots: 10, mail_slots: 2, early_warning };
        let specs: Vec<vtl::CartridgeSpec> = cartridges
            .iter()
            .map(|(b, c, worm)| vtl::CartridgeSpec { barcode: b.to_string(), capacity: *c, worm: *worm })
            .collect();
        drop(vtl::EmulatedLibrary::create(dir.path().join("lib"), &cfg, &specs).unwrap());
        Fixture { dir, store, image }
    }

    fn library(&self) -> Library {
        Library::open(&format!("emulated:{}", self.dir.path().join("lib").display())).unwrap()
    }

    fn catalog(&self) -> TapeCatalog {
        TapeCatalog::open(&self.dir.path().join("tape-catalog")).unwrap()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

fn backup(store: &Store, name: &str, image: &[u8]) {
    let src = MemSource::new(name, image.to_vec());
    let opts = BackupOptions { chunk_size: CHUNK, zstd_level: Some(1), threads: 2, ..BackupOptions::new(name) };
    engine::backup(store, &src, &opts, &NoProgress).unwrap();
}

fn label_all(cat: &TapeCatalog, lib: &mut Library, barcodes: &[&str]) {
    for b in barcodes {
        tape::label(cat, lib, b, "main", false).unwrap();
    }
}

fn restore_dir(cat: &TapeCatalog, lib: &mut Library, spec: &str, to: &Path) -> tape::TapeRestoreReport {
    tape::restore_from_tape(cat, lib, spec, TapeRestoreTarget::Directory(to.to_path_buf()), &NoProgress).unwrap()
}

const SMALL: u64 = 3 << 20;
const EW: u64 = 1 << 20;

fn small_carts() -> Vec<(&'static str, u64, bool)> {
    vec![
        ("TAPE01", SMALL, false),
        ("TAPE02", SMALL, false),
        ("TAPE03", SMALL, false),
        ("TAPE04", SMALL, false),
        ("TAPE05", SMALL, false),
        ("CLN001", 1 << 20, false),
    ]
}
const SMALL_BARCODES: [&str; 5] = ["TAPE01", "TAPE02", "TAPE03", "TAPE04", "TAPE05"];

#[test]
fn destage_spans_cartridges_and_restores_exactly() {
    let f = Fixture::new(8 << 20, &small_carts(), EW);
    let cat = f.catalog();
    let mut lib = f.library();
    label_all(&cat, &mut lib, &SMALL_BARCODES);
    let points = vec![f.store.find("vm1").unwrap()];
    let r = tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap();
    assert!(r.tapes.len() >= 3, "8 MiB with 4 MiB of random data over 3 MiB cartridges spans: {:?}", r.tapes);
    assert!(r.log.iter().any(|l| l.contains("early warning")), "{:#?}", r.log);
    let out = restore_dir(&cat, &mut lib, "vm1@1", &f.path("out"));
    assert!(out.damaged.is_empty(), "{:?}", out.damaged);
    assert_eq!(std::fs::read(f.path("out/disk0.raw")).unwrap(), f.image);
    for b in &r.tapes {
        let v = tape::verify_tape(&mut lib, b, &NoProgress).unwrap();
        assert!(v.problems.is_empty(), "{b}: {:?}", v.problems);
        assert!(v.records > 0);
    }
    // Every cartridge went home.
    let inv = lib.inventory().unwrap();
    assert!(inv.all().filter(|e| e.kind == changer::ElementKind::Drive).all(|e| !e.full));
}

#[test]
fn catalog_rebuilt_from_tapes_alone_restores_again_and_reimports() {
    let f = Fixture::new(6 << 20, &small_carts(), EW);
    {
        let cat = f.catalog();
        let mut lib = f.library();
        label_all(&cat, &mut lib, &SMALL_BARCODES);
        let points = vec![f.store.find("vm1").unwrap()];
        tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap();
    }
    std::fs::remove_dir_all(f.path("tape-catalog")).unwrap();
    let cat = f.catalog();
    let mut lib = f.library();
    assert!(cat.all_points().unwrap().is_empty());
    let rb = tape::rebuild_catalog(&cat, &mut lib, None, &NoProgress).unwrap();
    assert_eq!(rb.restore_points, vec!["vm1@1".to_string()]);
    assert_eq!(rb.media_sets, 1);
    assert_eq!(rb.blank_or_foreign, Vec::<String>::new());
    assert!(rb.problems.is_empty(), "{:?}", rb.problems);
    let out = restore_dir(&cat, &mut lib, "vm1", &f.path("out"));
    assert!(out.damaged.is_empty());
    assert_eq!(std::fs::read(f.path("out/disk0.raw")).unwrap(), f.image);

    // Re-import into a new store, then restore from the store.
    let store2 = Store::open(&f.path("store2"), &StoreOptions { create: true, ..Default::default() }).unwrap();
    let imp =
        tape::restore_from_tape(&cat, &mut lib, "vm1@1", TapeRestoreTarget::Import(&store2), &NoProgress).unwrap();
    let spec = imp.imported_as.unwrap();
    let p = store2.find(&spec).unwrap();
    let opts = engine::RestoreOptions {
        to: f.path("from-store.raw"),
        format: engine::RestoreFormat::Raw,
        verify: true,
        force: false,
        disk: 0,
        threads: 2,
        read_ahead: true,
    };
    engine::restore(&store2, &p, &opts, &NoProgress).unwrap();
    assert_eq!(std::fs::read(f.path("from-store.raw")).unwrap(), f.image);

    // The rebuilt catalog lets the set continue: a second job appends after the old data.
    let mut image2 = f.image.clone();
    image2[100_000..100_100].fill(0xaa);
    backup(&f.store, "vm1", &image2);
    let points = vec![f.store.find("vm1@2").unwrap()];
    let r = tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap();
    assert!(r.chunks_deduplicated > 0);
    assert_eq!(r.chunks_written, 1);
    restore_dir(&cat, &mut lib, "vm1@2", &f.path("out2"));
    assert_eq!(std::fs::read(f.path("out2/disk0.raw")).unwrap(), image2);
    restore_dir(&cat, &mut lib, "vm1@1", &f.path("out1"));
    assert_eq!(std::fs::read(f.path("out1/disk0.raw")).unwrap(), f.image);
}

#[test]
fn labelling_refuses_data_cleaning_and_used_worm_cartridges() {
    let carts = [("DATA01", 64 << 20, false), ("WORM01", 64 << 20, true), ("CLN001", 1 << 20, false)];
    let f = Fixture::new(1 << 20, &carts, EW);
    let cat = f.catalog();
    let mut lib = f.library();
    tape::label(&cat, &mut lib, "DATA01", "main", false).unwrap();
    let e = tape::label(&cat, &mut lib, "DATA01", "other", false).unwrap_err();
    assert!(matches!(e, TapeError::HoldsData { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    let r = tape::label(&cat, &mut lib, "DATA01", "other", true).unwrap();
    assert!(r.previously.contains("rackvault label"), "{}", r.previously);
    assert_eq!(cat.medium("DATA01").unwrap().unwrap().pool, "other");

    let e = tape::label(&cat, &mut lib, "CLN001", "main", true).unwrap_err();
    assert!(e.to_string().contains("cleaning"), "{e}");

    // WORM cartridges are detected and never written, not even with --force.
    for force in [false, true] {
        let e = tape::label(&cat, &mut lib, "WORM01", "main", force).unwrap_err();
        assert!(e.to_string().contains("WORM"), "{e}");
    }
    assert!(cat.medium("WORM01").unwrap().is_none());
}

/// Pulls the cartridge out of whichever drive holds it once `after` bytes went to tape.
struct PullAt {
    lib: Arc<vtl::EmulatedLibrary>,
    after: u64,
    done: AtomicU64,
    pulled: AtomicBool,
}

impl Progress for PullAt {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, n: u64) {
        let d = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if d >= self.after && !self.pulled.swap(true, Ordering::Relaxed) {
            for i in 0..self.lib.drive_count() {
                let _ = self.lib.pull_from_drive(i);
            }
        }
    }
    fn finish(&self) {}
}

#[test]
fn cartridge_pulled_mid_destage_fails_cleanly_and_the_next_job_succeeds() {
    let carts = [("TAPE01", 64 << 20, false), ("TAPE02", 64 << 20, false), ("CLN001", 1 << 20, false)];
    let f = Fixture::new(8 << 20, &carts, EW);
    let cat = f.catalog();
    let mut lib = f.library();
    label_all(&cat, &mut lib, &["TAPE01", "TAPE02"]);
    let points = vec![f.store.find("vm1").unwrap()];
    let pull = PullAt {
        lib: lib.emulated().unwrap().clone(),
        after: 1 << 20,
        done: AtomicU64::new(0),
        pulled: AtomicBool::new(false),
    };
    let e = tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &pull).unwrap_err();
    assert!(pull.pulled.load(Ordering::Relaxed));
    let msg = e.to_string();
    assert!(msg.contains("no cartridge") || msg.contains("medium"), "{msg}");
    // Nothing half-written is in the catalog.
    assert!(cat.all_points().unwrap().is_empty());
    // The library still works: the next job uses the remaining cartridge.
    drop(pull);
    drop(lib);
    let mut lib = f.library();
    let r = tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap();
    assert_eq!(r.tapes, vec!["TAPE02".to_string()]);
    let out = restore_dir(&cat, &mut lib, "vm1@1", &f.path("out"));
    assert!(out.damaged.is_empty());
    assert_eq!(std::fs::read(f.path("out/disk0.raw")).unwrap(), f.image);
}

#[test]
fn a_read_error_on_restore_reports_the_bad_range_and_restores_the_rest() {
    let carts = [("TAPE01", 256 << 20, false), ("CLN001", 1 << 20, false)];
    let f = Fixture::new(8 << 20, &carts, EW);
    let cat = f.catalog();
    let mut lib = f.library();
    label_all(&cat, &mut lib, &["TAPE01"]);
    let points = vec![f.store.find("vm1").unwrap()];
    tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap();
    // Objects: label block, FM, set label, FM, then the chunk archive: its third block.
    let emu = lib.emulated().unwrap().clone();
    for i in 0..emu.drive_count() {
        emu.drive(i).inject_medium_error(6);
    }
    let out =
        tape::restore_from_tape(&cat, &mut lib, "vm1@1", TapeRestoreTarget::Directory(f.path("out")), &NoProgress)
            .unwrap();
    assert!(!out.damaged.is_empty(), "a bad block must be reported");
    assert!(out.problems.iter().any(|p| p.contains("unreadable")), "{:?}", out.problems);
    let got = std::fs::read(f.path("out/disk0.raw")).unwrap();
    assert_eq!(got.len(), f.image.len());
    let mut damaged_bytes = 0;
    for d in &out.damaged {
        assert_eq!(d.disk, "disk0");
        damaged_bytes += d.len;
        assert!(got[d.offset as usize..(d.offset + d.len) as usize].iter().all(|b| *b == 0));
    }
    // One 1 MiB block and the records straddling its edges, no more.
    assert!(damaged_bytes <= 3 << 20, "{damaged_bytes} bytes reported damaged");
    for c in (0..f.image.len()).step_by(CHUNK as usize) {
        let hit = out.damaged.iter().any(|d| (d.offset as usize) <= c && c < (d.offset + d.len) as usize);
        if !hit {
            assert_eq!(got[c..c + CHUNK as usize], f.image[c..c + CHUNK as usize], "chunk at {c}");
        }
    }
    for i in 0..emu.drive_count() {
        emu.drive(i).clear_medium_errors();
    }
    let v = tape::verify_tape(&mut lib, "TAPE01", &NoProgress).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

#[test]
fn a_pool_bound_on_restore_tapes_writes_a_point_again() {
    let f = Fixture::new(6 << 20, &small_carts(), EW);
    let cat = f.catalog();
    let mut lib = f.library();
    label_all(&cat, &mut lib, &SMALL_BARCODES);
    let mut pool = cat.pool("main").unwrap();
    pool.max_restore_tapes = Some(2);
    cat.set_pool(&pool).unwrap();
    let p1 = vec![f.store.find("vm1@1").unwrap()];
    let r1 = tape::destage(&f.store, &cat, &mut lib, &p1, &DestageOptions::new("main"), &NoProgress).unwrap();
    assert!(r1.tapes.len() >= 2, "{:?}", r1.tapes);
    let mut image2 = f.image.clone();
    image2[0..10].fill(1);
    backup(&f.store, "vm1", &image2);
    let p2 = vec![f.store.find("vm1@2").unwrap()];
    let r2 = tape::destage(&f.store, &cat, &mut lib, &p2, &DestageOptions::new("main"), &NoProgress).unwrap();
    assert_eq!(r2.chunks_deduplicated, 0, "{:#?}", r2.log);
    assert!(r2.log.iter().any(|l| l.contains("written again")), "{:#?}", r2.log);
    let out = restore_dir(&cat, &mut lib, "vm1@2", &f.path("out"));
    assert_eq!(std::fs::read(f.path("out/disk0.raw")).unwrap(), image2);
    assert!(out.tapes.iter().all(|t| !r1.tapes[..r1.tapes.len() - 1].contains(t)), "{:?} vs {:?}", out.tapes, r1.tapes);
}

#[test]
fn no_labelled_cartridge_gives_a_clear_error() {
    let carts = [("TAPE01", 64 << 20, false)];
    let f = Fixture::new(1 << 20, &carts, EW);
    let cat = f.catalog();
    let mut lib = f.library();
    let points = vec![f.store.find("vm1").unwrap()];
    let e = tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap_err();
    assert!(e.to_string().contains("rackvault tape label --pool main"), "{e}");
    let e = tape::restore_from_tape(&cat, &mut lib, "vm1@1", TapeRestoreTarget::Directory(f.path("o")), &NoProgress)
        .unwrap_err();
    assert!(e.to_string().contains("--rebuild"), "{e}");
}

/// Progress that asks to stop once `after` bytes have gone by.
struct CancelAfter {
    after: u64,
    done: AtomicU64,
}

impl CancelAfter {
    fn new(after: u64) -> CancelAfter {
        CancelAfter { after, done: AtomicU64::new(0) }
    }
}

impl Progress for CancelAfter {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    fn finish(&self) {}
    fn cancelled(&self) -> bool {
        self.done.load(Ordering::Relaxed) >= self.after
    }
}

#[test]
fn a_cancelled_destage_stops_mid_archive_records_nothing_and_the_next_job_succeeds() {
    let carts = [("TAPE01", 64 << 20, false), ("TAPE02", 64 << 20, false), ("CLN001", 1 << 20, false)];
    let f = Fixture::new(8 << 20, &carts, EW);
    let cat = f.catalog();
    let mut lib = f.library();
    label_all(&cat, &mut lib, &["TAPE01", "TAPE02"]);
    let points = vec![f.store.find("vm1").unwrap()];
    let stop = CancelAfter::new(1 << 20);
    let e = tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &stop).unwrap_err();
    assert_eq!(e.kind(), engine::ErrorKind::Cancelled, "{e}");
    let written = stop.done.load(Ordering::Relaxed);
    assert!((1 << 20..4 << 20).contains(&written), "stopped soon after the request: {written} bytes");
    assert!(cat.all_points().unwrap().is_empty(), "a cancelled destage catalogs nothing");
    let r = tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap();
    let out = restore_dir(&cat, &mut lib, "vm1@1", &f.path("out"));
    assert!(out.damaged.is_empty(), "{:?}", out.damaged);
    assert_eq!(std::fs::read(f.path("out/disk0.raw")).unwrap(), f.image);
    for b in &r.tapes {
        let v = tape::verify_tape(&mut lib, b, &NoProgress).unwrap();
        assert!(v.problems.iter().all(|p| p.contains("interrupted")), "{b}: {:?}", v.problems);
    }
}

#[test]
fn a_cancelled_tape_restore_and_tape_verify_stop_with_the_kind_cancelled() {
    let carts = [("TAPE01", 64 << 20, false), ("CLN001", 1 << 20, false)];
    let f = Fixture::new(8 << 20, &carts, EW);
    let cat = f.catalog();
    let mut lib = f.library();
    label_all(&cat, &mut lib, &["TAPE01"]);
    let points = vec![f.store.find("vm1").unwrap()];
    tape::destage(&f.store, &cat, &mut lib, &points, &DestageOptions::new("main"), &NoProgress).unwrap();

    let stop = CancelAfter::new(1 << 20);
    let target = TapeRestoreTarget::Directory(f.path("out"));
    let e = tape::restore_from_tape(&cat, &mut lib, "vm1@1", target, &stop).unwrap_err();
    assert_eq!(e.kind(), engine::ErrorKind::Cancelled, "{e}");
    assert!(stop.done.load(Ordering::Relaxed) < 4 << 20, "the restore stopped early");

    let stop = CancelAfter::new(1 << 20);
    let e = tape::verify_tape(&mut lib, "TAPE01", &stop).unwrap_err();
    assert_eq!(e.kind(), engine::ErrorKind::Cancelled, "{e}");
    // The drive is usable afterwards: a full verify and restore still work.
    let v = tape::verify_tape(&mut lib, "TAPE01", &NoProgress).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let out = restore_dir(&cat, &mut lib, "vm1@1", &f.path("out2"));
    assert!(out.damaged.is_empty(), "{:?}", out.damaged);
    assert_eq!(std::fs::read(f.path("out2/disk0.raw")).unwrap(), f.image);
}
