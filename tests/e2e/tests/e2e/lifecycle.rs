//! The store's life over months through the real binary: prune (dry run and real), delete,
//! pin, immutability, gc and repair, and failed final steps that must commit nothing.

use e2e::*;

/// Four backups of an image that changes a little between them.
fn history(d: &std::path::Path, store: &std::path::Path) -> Vec<(String, String)> {
    let img = d.join("vm.raw");
    make_image(&img, 8 * MIB, 401, Profile::VM);
    let mut out = Vec::new();
    for i in 0..4 {
        if i > 0 {
            mutate_scattered(&img, 5.0, 500 + i);
        }
        let r = backup(&img, store, "vm", &["--chunk-size", "64K"]);
        out.push((spec_of(&r), hash_file(&img)));
    }
    out
}

#[test]
fn prune_dry_run_lists_what_would_go_and_why_then_prune_and_gc_free_the_space() {
    let dir = scratch("life-prune");
    let d = dir.path();
    let store = d.join("store");
    let points = history(d, &store);
    let dry = rv!["prune", "vm", "--store", &store, "--keep-last", "2", "--dry-run", "--json"].run().success().json();
    let items = dry["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let would: Vec<&str> =
        items.iter().filter(|i| i["action"] == "prune").map(|i| i["point"].as_str().unwrap()).collect();
    assert_eq!(would, vec![points[1].0.as_str(), points[0].0.as_str()], "{dry}");
    assert!(items.iter().all(|i| !i["why"].as_str().unwrap().is_empty()), "every decision says why: {dry}");
    assert_eq!(list_points(&store).len(), 4, "a dry run deletes nothing");
    let text = rv!["prune", "vm", "--store", &store, "--keep-last", "2", "--dry-run"].run().success();
    assert!(text.stdout.contains("would prune"), "{}", text.context());

    let before =
        rv!["list", "--store", &store, "--json"].run().success().json()["usage"]["pack_bytes"].as_u64().unwrap();
    rv!["prune", "vm", "--store", &store, "--keep-last", "2"].run().success();
    assert_eq!(list_points(&store).len(), 2);
    let gc = rv!["gc", "--store", &store, "--repack-threshold", "0.01", "--json"].run().success().json();
    assert!(gc["bytes_freed"].as_u64().unwrap() > 0, "{gc}");
    let after =
        rv!["list", "--store", &store, "--json"].run().success().json()["usage"]["pack_bytes"].as_u64().unwrap();
    assert!(after < before, "gc frees space: {before} -> {after}");
    for (spec, hash) in &points[2..] {
        assert_restores_to(&store, spec, hash, d);
    }
    rv!["restore", &points[0].0, "--store", &store, "--to", d.join("gone.raw")].run().failure();
    verify_clean(&store);
    // A pruned point does not come back through reindex.
    rv!["reindex", "--store", &store].run().success();
    assert_eq!(list_points(&store).len(), 2);
}

#[test]
fn immutable_and_pinned_points_survive_every_delete_and_prune_path() {
    let dir = scratch("life-immutable");
    let d = dir.path();
    let store = d.join("store");
    let img = d.join("vm.raw");
    make_image(&img, 4 * MIB, 411, Profile::VM);
    let locked = spec_of(&backup(&img, &store, "vm", &["--immutable-for", "30d"]));
    mutate_scattered(&img, 5.0, 412);
    let pinned = spec_of(&backup(&img, &store, "vm", &[]));
    mutate_scattered(&img, 5.0, 413);
    backup(&img, &store, "vm", &[]);
    rv!["delete", &locked, "--store", &store].run().failure().stderr_has(&["immutable until", &locked]);
    rv!["pin", &pinned, "--store", &store].run().success();
    rv!["delete", &pinned, "--store", &store].run().failure().stderr_has(&["pinned", "unpin"]);
    let r = rv!["prune", "vm", "--store", &store, "--keep-last", "1", "--json"].run().success().json();
    assert_eq!(r["pruned"], 0, "{r}");
    assert_eq!(r["kept_immutable"], 1, "{r}");
    assert_eq!(list_points(&store).len(), 3);
    rv!["unpin", &pinned, "--store", &store].run().success();
    rv!["delete", &pinned, "--store", &store].run().success();
    assert_eq!(list_points(&store).len(), 2);
}

#[test]
fn a_backup_whose_last_step_fails_leaves_no_point_and_a_retry_makes_one() {
    for failpoint in ["commit.points", "seal.fsync_dir"] {
        let dir = scratch("life-failpoint");
        let d = dir.path();
        let store = d.join("store");
        let img = d.join("vm.raw");
        make_image(&img, 4 * MIB, 421, Profile::VM);
        rv!["backup", &img, "--store", &store, "--name", "vm"]
            .env("RACKVAULT_FAILPOINTS", failpoint)
            .run()
            .failure()
            .stderr_has(&[failpoint]);
        assert!(list_points(&store).is_empty(), "{failpoint}: the failed backup came back");
        let r = backup(&img, &store, "vm", &[]);
        assert_eq!(list_points(&store).len(), 1, "{failpoint}: a retry makes exactly one point");
        assert_restores_to(&store, &spec_of(&r), &hash_file(&img), d);
        // what the failed attempt sealed is garbage, and gc reclaims it
        rv!["gc", "--store", &store].run().success();
        verify_clean(&store);
    }
}

#[test]
fn repair_after_a_truncated_pack_and_a_new_backup_leaves_a_clean_store() {
    let dir = scratch("life-repair");
    let d = dir.path();
    let store = d.join("store");
    let img = d.join("vm.raw");
    make_image(&img, 4 * MIB, 431, Profile::VM);
    let first = spec_of(&backup(&img, &store, "vm", &[]));
    let pack = std::fs::read_dir(store.join("packs")).unwrap().next().unwrap().unwrap().path();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();
    rv!["verify", "--store", &store].run().code_is(3);
    // The next backup stores the lost chunks again, which heals the first point too.
    let second = backup(&img, &store, "vm", &[]);
    assert!(second["chunks_new"].as_u64().unwrap() > 0, "damaged chunks are written again: {second}");
    assert_restores_to(&store, &first, &hash_file(&img), d);
    rv!["repair", "--store", &store].run().success();
    verify_clean(&store);
}
