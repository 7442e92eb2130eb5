//! Crash safety: `kill -9` a backup at a random moment, again and again, and check after each
//! kill that the store verifies clean and that every restore point it lists is complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::*;

/// Kill-and-check rounds: at least `MIN_ITERATIONS`, then more while within `TIME_BUDGET`.
const MIN_ITERATIONS: usize = 25;
const ITERATIONS: usize = 30;
const TIME_BUDGET: Duration = Duration::from_secs(60);
/// Every this many iterations, let the backup finish, so restore points accumulate.
const COMPLETE_EVERY: usize = 5;

/// Like `rv!`, for a given binary.
macro_rules! cli {
    ($bin:expr; $($arg:expr),* $(,)?) => {
        Rv::program($bin)$(.arg($arg))*
    };
}

fn backup_cmd(bin: &Path, img: &Path, store: &Path) -> Rv {
    cli![bin; "backup", img, "--store", store, "--name", "vm", "--pack-target", "2M", "--json"]
}

#[test]
fn kill_dash_nine_during_backups() {
    crash_loop(false);
}

/// The same loop on an encrypted store: sealed records, keyed ids, the same durability.
#[test]
fn kill_dash_nine_during_backups_into_an_encrypted_store() {
    crash_loop(true);
}

fn crash_loop(encrypted: bool) {
    let seed: u64 = match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("CRASH_SEED={s:?} is not a number")),
        Err(_) => 20_261_122,
    };
    let bin = rackvault_bin_fast();
    eprintln!("crash: seed {seed} (replay with CRASH_SEED={seed}), binary {}", bin.display());
    let dir = scratch(if encrypted { "crash-enc" } else { "crash" });
    let d = dir.path();
    if encrypted {
        // Every command of this thread opens the store with its key; the first creates it.
        Rv::thread_env("RACKVAULT_KEY_FILE", d.join("store.key"));
    }
    let img = d.join("vm.raw");
    let store = d.join("store");
    let size = 96 * MIB;
    make_image(&img, size, seed, Profile::VM);
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    // Restore point id → blake3 of the image it was made from.
    let mut expected: BTreeMap<u64, String> = BTreeMap::new();
    // Points already restored and compared once.
    let mut restored: BTreeSet<u64> = BTreeSet::new();

    // A first, uninterrupted backup: creates the store and measures how long a run takes.
    let first = if encrypted {
        backup_cmd(&bin, &img, &store).arg("--encrypt").run().success()
    } else {
        backup_cmd(&bin, &img, &store).run().success()
    };
    let id = first.json()["id"].as_u64().expect("id");
    expected.insert(id, hash_file(&img));
    let mut window = first.elapsed;
    eprintln!("crash: full backup of {} MiB took {:.0} ms", size / MIB, window.as_secs_f64() * 1e3);

    let (mut killed_mid_run, mut finished_anyway, mut completed) = (0, 0, 1);
    let check_store = |iteration: usize,
                       expected: &mut BTreeMap<u64, String>,
                       restored: &mut BTreeSet<u64>,
                       image_hash: &str,
                       rng: &mut Rng| {
        let ctx = format!("iteration {iteration} (seed {seed})");
        let out = cli![&bin; "verify", "--store", &store, "--json"].run();
        assert_eq!(out.code, Some(0), "{ctx}: verify after a kill must be clean:{}", out.context());
        let tmp = dir_entries(&store.join("tmp"));
        assert!(tmp.is_empty(), "{ctx}: the next open must remove unsealed packs, found {tmp:?}");
        let out = cli![&bin; "list", "--store", &store, "--json"].run().success();
        let listed: BTreeSet<u64> = out.json()["restore_points"]
            .as_array()
            .expect("restore_points")
            .iter()
            .map(|p| p["id"].as_u64().expect("id"))
            .collect();
        let known: BTreeSet<u64> = expected.keys().copied().collect();
        let lost: Vec<_> = known.difference(&listed).collect();
        assert!(lost.is_empty(), "{ctx}: committed restore points disappeared: {lost:?}");
        let new: Vec<u64> = listed.difference(&known).copied().collect();
        assert!(new.len() <= 1, "{ctx}: one backup made several restore points: {new:?}");
        for id in new {
            // Killed after the commit: the point must be complete, made from this image.
            expected.insert(id, image_hash.to_string());
        }
        // Restore every point once, plus one earlier point at random each time.
        let mut todo: Vec<u64> = expected.keys().filter(|id| !restored.contains(id)).copied().collect();
        if !restored.is_empty() {
            let pick = rng.below(restored.len() as u64) as usize;
            todo.push(*restored.iter().nth(pick).expect("in range"));
        }
        for id in todo {
            let to = d.join("check.raw");
            let _ = std::fs::remove_file(&to);
            let spec = format!("vm@{id}");
            cli![&bin; "restore", &spec, "--store", &store, "--to", &to].run().success();
            assert_eq!(
                hash_file(&to),
                expected[&id],
                "{ctx}: restore point {spec} does not restore the image it was made from"
            );
            restored.insert(id);
        }
    };

    let mut iterations = 0;
    let mut all_versions: BTreeSet<String> = expected.values().cloned().collect();
    for i in 1..=ITERATIONS {
        if i > MIN_ITERATIONS && started.elapsed() > TIME_BUDGET {
            break;
        }
        iterations = i;
        mutate_scattered(&img, 3.0, rng.next_u64());
        let image_hash = hash_file(&img);
        all_versions.insert(image_hash.clone());
        let (mut child, cmdline) = backup_cmd(&bin, &img, &store).spawn();
        let t0 = Instant::now();
        if i % COMPLETE_EVERY == 0 {
            let out = Outcome::from_child(child, cmdline, t0).success();
            let id = out.json()["id"].as_u64().expect("id");
            expected.insert(id, image_hash.clone());
            window = out.elapsed;
            completed += 1;
        } else {
            let delay = Duration::from_millis(rng.below(window.as_millis() as u64 + 1));
            std::thread::sleep(delay);
            match child.try_wait().expect("try_wait") {
                Some(_) => {
                    // It finished before the kill: then it must have succeeded.
                    let out = Outcome::from_child(child, cmdline, t0).success();
                    expected.insert(out.json()["id"].as_u64().expect("id"), image_hash.clone());
                    finished_anyway += 1;
                }
                None => {
                    // std sends SIGKILL to exactly this child, by PID.
                    child.kill().expect("kill -9 the backup");
                    let out = Outcome::from_child(child, cmdline, t0);
                    assert!(
                        out.signal == Some(libc::SIGKILL) || out.code == Some(0),
                        "iteration {i}: the backup should have died of SIGKILL:{}",
                        out.context()
                    );
                    if out.signal == Some(libc::SIGKILL) {
                        killed_mid_run += 1;
                    }
                }
            }
            eprintln!("crash: iteration {i}: kill after {} ms", delay.as_millis());
        }
        check_store(i, &mut expected, &mut restored, &image_hash, &mut rng);
    }

    // A rebuilt index keeps every committed point (and may bring back points whose manifest was
    // sealed just before a kill; verify covers those).
    cli![&bin; "reindex", "--store", &store, "--json"].run().success();
    verify_clean(&store);
    let listed: BTreeSet<u64> = list_points(&store).iter().map(|p| p["id"].as_u64().expect("id")).collect();
    let lost: Vec<_> = expected.keys().filter(|id| !listed.contains(id)).collect();
    assert!(lost.is_empty(), "reindex lost committed restore points {lost:?}");
    // A point reindex brought back must be a complete image of one of the versions backed up.
    for id in listed.iter().filter(|id| !expected.contains_key(id)) {
        let to = d.join("resurrected.raw");
        let _ = std::fs::remove_file(&to);
        restore(&store, &format!("vm@{id}"), &to, &[]);
        let got = hash_file(&to);
        assert!(all_versions.contains(&got), "reindex brought back vm@{id}, which matches no version of the image");
    }

    // Finally every point once more.
    for (id, want) in &expected {
        assert_restores_to(&store, &format!("vm@{id}"), want, d);
    }
    eprintln!(
        "crash: {iterations} iterations in {:.1} s: {killed_mid_run} killed mid-run, {finished_anyway} finished before the kill, \
         {completed} run to completion; {} restore points",
        started.elapsed().as_secs_f64(),
        expected.len()
    );
    assert!(killed_mid_run >= 5, "too few kills landed while the backup ran ({killed_mid_run}); seed {seed}");
    assert!(expected.len() > iterations / COMPLETE_EVERY, "restore points should accumulate: {expected:?}");
}

/// What `Store::init` leaves when killed before it renames the marker into place: the
/// subdirectories, maybe a partial temporary marker. Its docs promise that such a store is
/// still "empty" to the next attempt, so the next backup creates the store.
#[test]
fn half_created_store_is_created_by_the_next_backup() {
    let dir = scratch("halfcreated");
    let d = dir.path();
    let img = d.join("vm.raw");
    make_image(&img, 4 * MIB, 181, Profile::VM);
    let want = hash_file(&img);
    for (case, marker_tmp) in [("dirs-only", None), ("partial-marker", Some(&b"{\n  \"format\": 1,\n  \"sto"[..]))] {
        let store = d.join(case);
        for sub in ["index", "packs", "tmp"] {
            std::fs::create_dir_all(store.join(sub)).unwrap();
        }
        if let Some(bytes) = marker_tmp {
            std::fs::write(store.join(".rackvault-store.json.tmp"), bytes).unwrap();
        }
        let r = backup(&img, &store, "vm", &[]);
        assert_restores_to(&store, &spec_of(&r), &want, d);
        verify_clean(&store);
    }
}
