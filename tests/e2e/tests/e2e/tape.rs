//! The tape tier end to end through the `rackvault tape` CLI:
//! - against tgt's virtual tape library on loopback (a private instance this test starts
//!   with tests/peers/start-tgt-vtl.sh, so its cartridge sizes suit the test and the shared
//!   VTL of the drive and changer tests is left alone): inventory, label, refusing to label a
//!   cartridge with data, a 2 GiB restore point destaged across several cartridges starting
//!   with the tiny one, restore and compare, catalog deleted and rebuilt from the tapes, restore
//!   again, verify;
//! - `kill -9` of destage jobs at random moments on the emulated library: after every kill the
//!   catalog lists only complete copies, each restores exactly, and a later job succeeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;

/// A private tgt VTL, stopped on drop (also when an assertion fails).
struct PrivateVtl {
    env: Vec<(&'static str, String)>,
    url: String,
}

const VTL_PORT: u16 = 3265;

impl PrivateVtl {
    fn start(tape_mb: u32) -> Option<PrivateVtl> {
        let env = vec![
            ("RV_TGT_VTL_DIR", "/tmp/rv-e2e-vtl".to_string()),
            ("RV_TGT_VTL_PORT", VTL_PORT.to_string()),
            ("RV_TGT_VTL_CTL", "35".to_string()),
            ("RV_TGT_VTL_TAPES", "4".to_string()),
            ("RV_TGT_VTL_TAPE_MB", tape_mb.to_string()),
        ];
        let script = workspace_root().join("tests/peers/start-tgt-vtl.sh");
        let mut cmd = Command::new(&script);
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str()))).stdin(Stdio::null());
        let out = cmd.output().expect("run start-tgt-vtl.sh");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).to_string();
            if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!("could not start a private tgt VTL: {why}");
            }
            eprintln!("skipped: cannot start a private tgt VTL (needs root and tgt): {why}");
            return None;
        }
        let mut vtl = PrivateVtl { env, url: String::new() };
        let vars = vtl.vars();
        vtl.url = format!("{}/{}", vars["RV_TGT_VTL_URL"], vars["RV_TGT_VTL_CHANGER_LUN"]);
        Some(vtl)
    }

    fn vars(&self) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string("/tmp/rv-e2e-vtl/env").expect("private VTL env file");
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect()
    }
}

impl Drop for PrivateVtl {
    fn drop(&mut self) {
        let script = workspace_root().join("tests/peers/stop-tgt-vtl.sh");
        let _ = Command::new(script).envs(self.env.iter().map(|(k, v)| (*k, v.as_str()))).stdin(Stdio::null()).status();
    }
}

fn tape(changer: &str, catalog: &Path, store: &Path) -> Rv {
    rv!["tape", "--changer", changer, "--catalog", catalog, "--store", store, "--json"]
}

fn raw_in(dir: &Path) -> PathBuf {
    let mut raws: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("restore dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "raw"))
        .collect();
    assert_eq!(raws.len(), 1, "one disk restored into {}: {raws:?}", dir.display());
    raws.remove(0)
}

#[test]
fn tape_tier_end_to_end_against_tgt_vtl() {
    let _shared = peer_lock("tgt-vtl").read().unwrap_or_else(|e| e.into_inner());
    let Some(vtl) = PrivateVtl::start(160) else { return };
    let vars = vtl.vars();
    let dir = scratch("tape-tgt");
    let d = dir.path();
    let img = d.join("vm.raw");
    make_image(&img, 2048 * MIB, 4242, Profile::VM);
    let want = hash_file(&img);
    let store = d.join("store");
    let catalog = d.join("tape-catalog");
    backup(&img, &store, "vm", &[]);
    // What the nightly maintenance does before tape sees the point: the backup stored its data
    // raw, and tgt's cartridges (unlike LTO drives) do not compress what is written.
    let rc = rv!["recompress", "--store", &store, "--json"].run().success().json();
    assert!(rc["chunks_compressed"].as_u64().unwrap() > 0 && rc["complete"] == true, "{rc}");

    // Inventory: drives matched to their elements by serial, barcodes, the cleaning cartridge.
    let inv = tape(&vtl.url, &catalog, &store).arg("inventory").run().success().json();
    let elements = inv["elements"].as_array().expect("elements");
    let serials: Vec<&str> = elements.iter().filter_map(|e| e["drive_serial"].as_str()).collect();
    assert_eq!(serials, vars["RV_TGT_VTL_DRIVE_SERIALS"].split(' ').collect::<Vec<_>>());
    let barcodes: Vec<&str> = elements.iter().filter_map(|e| e["barcode"].as_str()).collect();
    for b in vars["RV_TGT_VTL_BARCODES"].split(' ') {
        assert!(barcodes.contains(&b), "{b} in {barcodes:?}");
    }
    assert!(elements.iter().any(|e| e["barcode"] == "CLN001L1" && e["cleaning"] == true));

    // Label everything but the cleaning cartridge; a second label of a used cartridge is refused.
    let l =
        tape(&vtl.url, &catalog, &store).args(["label", "--all-unlabelled", "--pool", "main"]).run().success().json();
    assert_eq!(l["labelled"].as_array().expect("labelled").len(), 5, "{l}");
    tape(&vtl.url, &catalog, &store)
        .args(["label", "TST001L6", "--pool", "other"])
        .run()
        .failure()
        .stderr_has(&["TST001L6 holds data", "--force"]);

    // Destage: the tiny EOM001L6 sorts first, so the set starts on it and spans.
    let t0 = Instant::now();
    let r = tape(&vtl.url, &catalog, &store).args(["destage", "vm", "--pool", "main"]).run().success().json();
    let tapes: Vec<&str> = r["tapes"].as_array().expect("tapes").iter().map(|t| t.as_str().unwrap()).collect();
    eprintln!("destage: {:.1} s, {} MB/s, tapes {tapes:?}", t0.elapsed().as_secs_f64(), r["mb_per_s"]);
    assert_eq!(tapes[0], "EOM001L6", "{r}");
    assert!(tapes.len() >= 3, "spans cartridges: {r}");

    let out = d.join("out");
    let rr = tape(&vtl.url, &catalog, &store).args(["restore", "vm", "--to"]).arg(&out).run().success().json();
    assert!(rr["damaged"].as_array().expect("damaged").is_empty(), "{rr}");
    assert_eq!(hash_file(&raw_in(&out)), want, "restored from tape");
    std::fs::remove_dir_all(&out).unwrap();

    // Disaster recovery: no catalog at all, only the cartridges.
    std::fs::remove_dir_all(&catalog).unwrap();
    let rb = tape(&vtl.url, &catalog, &store).args(["catalog", "--rebuild"]).run().success().json();
    assert_eq!(rb["restore_points"], serde_json::json!(["vm@1"]), "{rb}");
    assert_eq!(rb["media_sets"], 1, "{rb}");
    let listed = tape(&vtl.url, &catalog, &store).arg("catalog").run().success().json();
    assert_eq!(listed["points"][0]["point"], "vm@1", "{listed}");
    let out2 = d.join("out2");
    tape(&vtl.url, &catalog, &store).args(["restore", "vm@1", "--to"]).arg(&out2).run().success();
    assert_eq!(hash_file(&raw_in(&out2)), want, "restored from tape with a rebuilt catalog");

    let v = tape(&vtl.url, &catalog, &store).args(["verify", tapes[1]]).run().success().json();
    assert!(v["records"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn kill_dash_nine_during_destage_leaves_a_consistent_catalog() {
    let bin = rackvault_bin_fast();
    let dir = scratch("tape-crash");
    let d = dir.path();
    let img = d.join("vm.raw");
    make_image(&img, 64 * MIB, 99, Profile::RANDOM);
    let want = hash_file(&img);
    let store = d.join("store");
    let catalog = d.join("tape-catalog");
    Rv::program(&bin).args(["backup"]).arg(&img).arg("--store").arg(&store).args(["--name", "vm"]).run().success();
    let changer = format!("emulated:{}", d.join("lib").display());
    let t = |args: &[&str]| {
        Rv::program(&bin)
            .args(["tape", "--changer", &changer, "--catalog"])
            .arg(&catalog)
            .arg("--store")
            .arg(&store)
            .arg("--json")
            .args(args)
    };
    t(&["label", "--all-unlabelled", "--pool", "main"]).run().success();
    // Every job starts a new set, so each killed job competes for cartridges afresh.
    t(&["pool", "main", "--allocation", "per-job", "--retention-days", "0"]).run().success();
    let first = t(&["destage", "vm", "--pool", "main"]).run().success();
    let window = first.elapsed;
    let mut rng = Rng::new(20_261_122);
    let mut killed = 0;
    let mut restores = 0;
    let started = Instant::now();
    for i in 0..12 {
        if i >= 6 && started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let (mut child, cmdline) = t(&["destage", "vm", "--pool", "main"]).spawn();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.below(window.as_millis() as u64 + 1)));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("kill -9 the destage job");
            killed += 1;
        }
        let _ = Outcome::from_child(child, cmdline, t0);
        // Whatever the catalog lists must restore exactly.
        let listed = t(&["catalog"]).run().success().json();
        let copies = listed["points"].as_array().expect("points").len();
        if copies == 0 {
            // Retention 0 lets a job reuse the only complete set's cartridge.
            continue;
        }
        restores += 1;
        let out = d.join(format!("out{i}"));
        t(&["restore", "vm@1", "--to"]).arg(&out).run().success();
        assert_eq!(hash_file(&raw_in(&out)), want, "iteration {i}");
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert!(killed > 0, "at least one job was killed mid-run");
    assert!(restores > 0, "at least one listed copy was restored after a kill");
    // A complete job after all the kills, then rebuild from the tapes: still consistent.
    t(&["destage", "vm", "--pool", "main"]).run().success();
    std::fs::remove_dir_all(&catalog).unwrap();
    let rb = t(&["catalog", "--rebuild"]).run().success().json();
    assert!(!rb["restore_points"].as_array().expect("points").is_empty(), "{rb}");
    let out = d.join("final");
    t(&["restore", "vm", "--to"]).arg(&out).run().success();
    assert_eq!(hash_file(&raw_in(&out)), want);
}
