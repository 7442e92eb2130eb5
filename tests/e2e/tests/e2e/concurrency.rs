//! Two `rackvault backup` processes writing into one store at the same time.

use std::path::Path;
use std::time::Instant;

use e2e::*;

/// Start both commands, then wait for both; both must succeed. Returns their reports.
fn run_pair(a: Rv, b: Rv) -> (Value, Value) {
    let t0 = Instant::now();
    let (ca, la) = a.spawn();
    let (cb, lb) = b.spawn();
    let oa = Outcome::from_child(ca, la, t0);
    let ob = Outcome::from_child(cb, lb, t0);
    (oa.success().json(), ob.success().json())
}

fn backup_cmd(img: &Path, store: &Path, name: &str, extra: &[&str]) -> Rv {
    rv!["backup", img, "--store", store, "--name", name, "--json"].args(extra)
}

#[test]
fn two_backups_into_one_store_at_once() {
    let dir = scratch("concurrent");
    let d = dir.path();
    let store = d.join("store");
    let a = d.join("a.raw");
    let b = d.join("b.raw");
    make_image(&a, 48 * MIB, 191, Profile::VM);
    // The store exists before the race starts (creation races are a separate test).
    let seed_img = d.join("seed.raw");
    make_image(&seed_img, 2 * MIB, 192, Profile::VM);
    let mut expected = vec![(spec_of(&backup(&seed_img, &store, "seed", &[])), hash_file(&seed_img))];

    for round in 0..2u64 {
        // Two images that share most content: b is a with 5% changed.
        if round > 0 {
            mutate_scattered(&a, 2.0, 193 + round);
        }
        std::fs::copy(&a, &b).unwrap();
        mutate_scattered(&b, 5.0, 195 + round);
        let (ha, hb) = (hash_file(&a), hash_file(&b));
        let (ra, rb) =
            run_pair(backup_cmd(&a, &store, "a", &["--pack-target", "2M"]), backup_cmd(&b, &store, "b", &[]));
        expected.push((spec_of(&ra), ha.clone()));
        expected.push((spec_of(&rb), hb));

        // The same image twice, under the same name.
        let (r1, r2) = run_pair(
            backup_cmd(&a, &store, "same", &["--pack-target", "2M"]),
            backup_cmd(&a, &store, "same", &["--pack-target", "2M", "--chunk-size", "64K"]),
        );
        assert_ne!(r1["id"], r2["id"], "two backups got one id: {r1} {r2}");
        expected.push((spec_of(&r1), ha.clone()));
        expected.push((spec_of(&r2), ha));
    }

    verify_clean(&store);
    let mut listed: Vec<String> = list_points(&store).iter().map(spec_of).collect();
    let mut want: Vec<String> = expected.iter().map(|e| e.0.clone()).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "every successful backup must be listed once");
    for (spec, hash) in &expected {
        assert_restores_to(&store, spec, hash, d);
    }
}

/// Two first backups into a directory that is not a store yet: both create it at once.
#[test]
fn two_first_backups_create_the_store_together() {
    let dir = scratch("concurrent-create");
    let d = dir.path();
    let a = d.join("a.raw");
    let b = d.join("b.raw");
    make_image(&a, 4 * MIB, 201, Profile::VM);
    make_image(&b, 4 * MIB, 202, Profile::VM);
    let (ha, hb) = (hash_file(&a), hash_file(&b));
    for round in 0..8 {
        let store = d.join(format!("store-{round}"));
        let (ra, rb) = run_pair(backup_cmd(&a, &store, "a", &[]), backup_cmd(&b, &store, "b", &[]));
        verify_clean(&store);
        assert_eq!(list_points(&store).len(), 2, "round {round}");
        assert_restores_to(&store, &spec_of(&ra), &ha, d);
        assert_restores_to(&store, &spec_of(&rb), &hb, d);
    }
}

/// `list` and `verify` while a backup writes: they see a consistent store, never damage.
#[test]
fn readers_while_a_backup_runs() {
    let dir = scratch("concurrent-readers");
    let d = dir.path();
    let store = d.join("store");
    let img = d.join("vm.raw");
    make_image(&img, 64 * MIB, 241, Profile::VM);
    backup(&img, &store, "vm", &[]);
    let mut expected = vec![(spec_of(&list_points(&store)[0]), hash_file(&img))];
    let mut reads = 0;
    for round in 0..3u64 {
        mutate_scattered(&img, 10.0, 242 + round);
        let want = hash_file(&img);
        let t0 = Instant::now();
        let (mut child, cmdline) = backup_cmd(&img, &store, "vm", &["--pack-target", "1M"]).spawn();
        while child.try_wait().expect("try_wait").is_none() {
            verify_clean(&store);
            list_points(&store);
            reads += 1;
        }
        let r = Outcome::from_child(child, cmdline, t0).success().json();
        expected.push((spec_of(&r), want));
    }
    eprintln!("readers_while_a_backup_runs: {reads} verify+list rounds overlapped the backups");
    verify_clean(&store);
    for (spec, hash) in &expected {
        assert_restores_to(&store, spec, hash, d);
    }
}
