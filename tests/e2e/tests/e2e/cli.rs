//! The command line itself: help, argument errors, non-stores, the demo.

use e2e::*;

#[test]
fn help_lists_the_commands() {
    let out = rv!["--help"].run().success();
    for cmd in ["backup", "list", "restore", "verify"] {
        assert!(out.stdout.contains(cmd), "--help should list `{cmd}`:{}", out.context());
    }
    rv!["backup", "--help"].run().success();
    let v = rv!["--version"].run().success();
    assert!(v.stdout.contains("rackvault"), "{}", v.context());
}

#[test]
fn bad_chunk_size_is_explained() {
    let dir = scratch("cli-chunk");
    let d = dir.path();
    let img = d.join("vm.raw");
    make_image(&img, 2 * MIB, 211, Profile::VM);
    let store = d.join("store");
    rv!["backup", &img, "--store", &store, "--chunk-size", "100K"]
        .run()
        .failure()
        .stderr_has(&["chunk size", "power of two"]);
    rv!["backup", &img, "--store", &store, "--chunk-size", "16M"].run().failure().stderr_has(&["chunk size"]);
    rv!["backup", &img, "--store", &store, "--chunk-size", "2K"].run().failure().stderr_has(&["chunk size"]);
    rv!["backup", &img, "--store", &store, "--chunk-size", "12Q"].run().failure().stderr_has(&["12Q"]);
    assert!(!store.exists(), "a refused backup must not create the store");
    // A good one still works afterwards.
    backup(&img, &store, "vm", &["--chunk-size", "1M"]);
}

#[test]
fn list_on_a_non_store_directory() {
    let dir = scratch("cli-nonstore");
    let d = dir.path().join("not-a-store");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("notes.txt"), b"hello").unwrap();
    let before = hash_tree(&d);
    for cmd in ["list", "verify", "reindex"] {
        rv![cmd, "--store", &d].run().failure().stderr_has(&["not a rackvault store", "not-a-store"]);
    }
    rv!["restore", "vm", "--store", &d, "--to", dir.path().join("x.raw")]
        .run()
        .failure()
        .stderr_has(&["not a rackvault store"]);
    // Backing up into a non-empty directory that is not a store is refused too.
    let img = dir.path().join("vm.raw");
    make_image(&img, MIB, 221, Profile::VM);
    rv!["backup", &img, "--store", &d].run().failure().stderr_has(&["not a rackvault store"]);
    assert_eq!(hash_tree(&d), before, "commands on a non-store must not write into it");
    // A path that does not exist.
    rv!["list", "--store", dir.path().join("nowhere")].run().failure().stderr_has(&["not a rackvault store"]);
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn unknown_restore_point() {
    let dir = scratch("cli-nopoint");
    let d = dir.path();
    let img = d.join("vm.raw");
    make_image(&img, 2 * MIB, 231, Profile::VM);
    let store = d.join("store");
    let r = backup(&img, &store, "vm", &[]);
    rv!["restore", "nosuch", "--store", &store, "--to", d.join("x.raw")]
        .run()
        .failure()
        .stderr_has(&["nosuch", "rackvault list"]);
    let bad_id = format!("vm@{}", r["id"].as_u64().unwrap() + 100);
    rv!["restore", &bad_id, "--store", &store, "--to", d.join("x.raw")].run().failure().stderr_has(&[&bad_id]);
    assert!(!d.join("x.raw").exists());
}

#[test]
fn demo_succeeds_and_checks_its_restore() {
    let dir = scratch("cli-demo");
    let out = rv!["demo", "--dir", dir.path(), "--size-mib", "64"].run().success();
    assert!(out.stdout.contains("blake3 matches"), "the demo should report a matching restore:{}", out.context());
    // What the demo left is a valid store.
    verify_clean(&dir.path().join("store"));
}

#[test]
fn update_bundles_verify_only_with_their_key_whole_and_newer() {
    let dir = scratch("cli-update");
    let d = dir.path();
    for (name, len, seed) in [("root", 3 * MIB, 1), ("kernel", 64 * 1024, 2), ("initrd", 512 * 1024, 3)] {
        std::fs::write(d.join(name), random_bytes(seed, len as usize)).unwrap();
    }
    let key = d.join("signing.key");
    rv!["update", "keygen", "--out", &key].run().success();
    let public = d.join("signing.key.pub");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the signing key is private");
    rv!["update", "keygen", "--out", &key].run().failure().stderr_has(&["never overwritten"]);
    let other = d.join("other.key");
    rv!["update", "keygen", "--out", &other].run().success();

    let bundle = d.join("b.rvu");
    #[rustfmt::skip]
    rv!["update", "bundle", "--key", &key, "--version", "0.7.0", "--root", d.join("root"),
        "--kernel", d.join("kernel"), "--initrd", d.join("initrd"), "--out", &bundle].run().success();
    let ok = rv!["update", "verify", &bundle, "--public-key", &public, "--running", "0.6.0"].run().success();
    assert!(ok.stdout.contains("a good bundle of version 0.7.0"), "{}", ok.context());
    rv!["update", "verify", &bundle, "--public-key", d.join("other.key.pub")]
        .run()
        .failure()
        .stderr_has(&["signature does not verify"]);
    rv!["update", "verify", &bundle, "--public-key", &public, "--running", "0.7.0"]
        .run()
        .failure()
        .stderr_has(&["not newer", "force"]);
    rv!["update", "verify", &bundle, "--public-key", &public, "--running", "0.7.0", "--force"].run().success();

    let bytes = std::fs::read(&bundle).unwrap();
    let cut = d.join("cut.rvu");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    rv!["update", "verify", &cut, "--public-key", &public].run().failure().stderr_has(&["ends", "early", "initrd"]);
    let mut flipped = bytes.clone();
    let at = bytes.len() - 600 * 1024; // inside the root component
    flipped[at] ^= 1;
    let bad = d.join("bad.rvu");
    std::fs::write(&bad, &flipped).unwrap();
    rv!["update", "verify", &bad, "--public-key", &public].run().failure().stderr_has(&["root", "signed digest"]);
}
