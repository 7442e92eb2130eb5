//! Backup → list → restore round trips of raw images: exact content, sparseness, incremental
//! backups, qcow2 output, `--verify`, `--force`, the pread fallback, chunk sizes and a disk
//! whose size is not a multiple of the chunk size.

use e2e::*;

/// The fields every `backup --json` report must carry, with sane values.
#[track_caller]
fn check_backup_report(r: &Value, name: &str, size: u64, chunk_size: u64) {
    assert_eq!(r["name"], name, "{r}");
    assert!(r["id"].as_u64().is_some_and(|id| id > 0), "id: {r}");
    assert_eq!(r["bytes_logical"].as_u64(), Some(size), "bytes_logical: {r}");
    let read = r["bytes_read"].as_u64().unwrap_or_else(|| panic!("bytes_read: {r}"));
    assert!(read <= size, "read more than the disk: {r}");
    assert!(r["bytes_written"].as_u64().is_some(), "bytes_written: {r}");
    assert_eq!(r["chunks_total"].as_u64(), Some(size.div_ceil(chunk_size)), "chunks_total: {r}");
    let new = r["chunks_new"].as_u64().unwrap_or_else(|| panic!("chunks_new: {r}"));
    assert!(new <= size.div_ceil(chunk_size), "chunks_new: {r}");
    assert!(r["duration_s"].as_f64().is_some_and(|d| d >= 0.0), "duration_s: {r}");
    if let Some(cs) = r["chunk_size"].as_u64() {
        assert_eq!(cs, chunk_size, "chunk_size: {r}");
    }
}

#[track_caller]
fn assert_same(path: &std::path::Path, want: &str, what: &str) {
    let got = hash_file(path);
    assert_eq!(got, want, "{what}: {} does not have the expected content", path.display());
}

#[test]
fn backup_list_restore_and_incremental() {
    let dir = scratch("roundtrip");
    let d = dir.path();
    let img = d.join("vm.raw");
    let store = d.join("store");
    let size = 64 * MIB;
    make_image(&img, size, 1, Profile::VM);
    let h1 = hash_file(&img);

    let r1 = backup(&img, &store, "vm", &[]);
    check_backup_report(&r1, "vm", size, 256 * KIB);
    assert!(r1["bytes_read"].as_u64().unwrap() < size, "holes should not be read: {r1}");
    assert!(r1["bytes_written"].as_u64().unwrap() > 0, "{r1}");
    assert_eq!(r1["format"], "raw", "{r1}");

    let points = list_points(&store);
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0]["name"], "vm");
    assert_eq!(points[0]["id"], r1["id"]);
    assert_eq!(points[0]["disks"][0]["size"].as_u64(), Some(size));

    let out1 = d.join("restored1.raw");
    restore(&store, &spec_of(&r1), &out1, &[]);
    assert_same(&out1, &h1, "first restore");
    assert_eq!(std::fs::metadata(&out1).unwrap().len(), size);

    let changed = mutate_scattered(&img, 1.0, 2);
    let h2 = hash_file(&img);
    assert_ne!(h1, h2);
    let r2 = backup(&img, &store, "vm", &[]);
    check_backup_report(&r2, "vm", size, 256 * KIB);
    assert!(r2["id"].as_u64() > r1["id"].as_u64(), "ids must grow: {r1} {r2}");
    let (w1, w2) = (r1["bytes_written"].as_u64().unwrap(), r2["bytes_written"].as_u64().unwrap());
    assert!(
        w2 * 4 < w1,
        "1% change ({} blocks of 64 KiB) should store far less: first {w1} B, second {w2} B",
        changed.len()
    );
    // At most one new chunk per changed block (plus tree nodes, counted separately).
    assert!(r2["chunks_new"].as_u64().unwrap() <= changed.len() as u64, "{r2}");

    assert_eq!(list_points(&store).len(), 2);
    let out2 = d.join("restored2.raw");
    restore(&store, &spec_of(&r2), &out2, &[]);
    assert_same(&out2, &h2, "second restore point");
    // The first point still restores the old content; NAME alone means the newest.
    restore(&store, &spec_of(&r1), &out1, &["--force"]);
    assert_same(&out1, &h1, "first restore point after the second backup");
    let newest = d.join("newest.raw");
    let rep = restore(&store, "vm", &newest, &[]);
    assert_eq!(rep["point"], spec_of(&r2).as_str(), "{rep}");
    assert_same(&newest, &h2, "restore by name");

    verify_clean(&store);
    // Verify of one point by spec, too.
    rv!["verify", "--store", &store, &spec_of(&r1), "--json"].run().success();
}

#[test]
fn restore_of_mostly_hole_image_is_sparse() {
    let dir = scratch("sparse");
    let d = dir.path();
    let img = d.join("thin.raw");
    let store = d.join("store");
    let size = 64 * MIB;
    make_image(&img, size, 11, Profile::MOSTLY_HOLES);
    let want = hash_file(&img);
    let orig_alloc = allocated_bytes(&img);
    assert!(orig_alloc < size / 3, "the generator should make a thin image ({orig_alloc} of {size} allocated)");

    let r = backup(&img, &store, "thin", &[]);
    assert!(r["chunks_zero"].as_u64().unwrap() * 2 > r["chunks_total"].as_u64().unwrap(), "{r}");
    let out = d.join("thin-restored.raw");
    restore(&store, "thin", &out, &[]);
    assert_same(&out, &want, "sparse restore");
    let alloc = allocated_bytes(&out);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    assert!(
        alloc < size / 4 && alloc <= orig_alloc + MIB,
        "restored file should be sparse: {alloc} bytes allocated for a {size}-byte disk whose source had {orig_alloc} allocated"
    );
}

#[test]
fn qcow2_restore_passes_qemu_img_check_and_compare() {
    let dir = scratch("qcow2-out");
    let d = dir.path();
    let img = d.join("vm.raw");
    let size = 24 * MIB;
    make_image(&img, size, 21, Profile::VM);
    let want = hash_file(&img);
    for cs in ["16K", "64K", "256K", "4M"] {
        let store = d.join(format!("store-{cs}"));
        backup(&img, &store, "vm", &["--chunk-size", cs]);
        let out = d.join(format!("vm-{cs}.qcow2"));
        let rep = restore(&store, "vm", &out, &["--format", "qcow2"]);
        assert_eq!(rep["format"], "qcow2", "{rep}");
        qemu_img!["check", "-f", "qcow2", &out];
        qemu_img!["compare", "-f", "raw", "-F", "qcow2", &img, &out];
        let info = qemu_img!["info", "--output=json", &out].json();
        assert_eq!(info["virtual-size"].as_u64(), Some(size), "chunk size {cs}: {info}");
        assert_eq!(info["format"], "qcow2");
        // Converting back gives the original bytes.
        let back = d.join(format!("back-{cs}.raw"));
        qemu_img!["convert", "-O", "raw", &out, &back];
        assert_same(&back, &want, &format!("qcow2 restore with chunk size {cs}, converted back to raw"));
        // rackvault reads its own qcow2 output back in --verify.
        let out2 = d.join(format!("vm-{cs}-verified.qcow2"));
        let rep = restore(&store, "vm", &out2, &["--format", "qcow2", "--verify"]);
        assert_eq!(rep["verified"], true, "{rep}");
    }
}

#[test]
fn restore_verify_and_overwrite_protection() {
    let dir = scratch("overwrite");
    let d = dir.path();
    let img = d.join("vm.raw");
    let store = d.join("store");
    make_image(&img, 16 * MIB, 31, Profile::VM);
    let want = hash_file(&img);
    backup(&img, &store, "vm", &[]);

    let out = d.join("out.raw");
    let rep = restore(&store, "vm", &out, &["--verify"]);
    assert_eq!(rep["verified"], true, "{rep}");
    assert_same(&out, &want, "restore --verify");

    // An existing file is not overwritten without --force, and stays as it was.
    let precious = d.join("precious.raw");
    std::fs::write(&precious, b"someone's data, not to be overwritten").unwrap();
    let before = hash_file(&precious);
    rv!["restore", "vm", "--store", &store, "--to", &precious].run().failure().stderr_has(&[
        "precious.raw",
        "already exists",
        "--force",
    ]);
    assert_eq!(hash_file(&precious), before, "a refused restore must leave the existing file alone");
    let rep = restore(&store, "vm", &precious, &["--force", "--verify"]);
    assert_eq!(rep["verified"], true, "{rep}");
    assert_same(&precious, &want, "restore --force");

    // No temporary files left next to the targets.
    let leftovers: Vec<_> = dir_entries(d).into_iter().filter(|n| n.to_string_lossy().contains("partial")).collect();
    assert!(leftovers.is_empty(), "leftover temporary files: {leftovers:?}");

    rv!["verify", "--store", &store].run().success();
}

#[test]
fn pread_fallback_round_trip() {
    let dir = scratch("pread");
    let d = dir.path();
    let img = d.join("vm.raw");
    let store = d.join("store");
    make_image(&img, 32 * MIB, 41, Profile::VM);
    let h1 = hash_file(&img);
    let r1 = rv!["backup", &img, "--store", &store, "--name", "vm", "--json"]
        .env("RACKVAULT_IO", "pread")
        .run()
        .success()
        .json();
    // ", O_DIRECT" follows where the scratch filesystem allows direct I/O.
    assert!(
        r1["io_backend"].as_str().unwrap().starts_with("pread/pwrite"),
        "RACKVAULT_IO=pread must force the fallback: {r1}"
    );
    mutate_scattered(&img, 1.0, 42);
    let h2 = hash_file(&img);
    let r2 = rv!["backup", &img, "--store", &store, "--name", "vm", "--json", "--pack-target", "1M"]
        .env("RACKVAULT_IO", "pread")
        .run()
        .success()
        .json();
    assert!(r2["io_backend"].as_str().unwrap().starts_with("pread/pwrite"), "{r2}");
    for (r, want) in [(&r1, &h1), (&r2, &h2)] {
        let out = d.join(format!("out-{}.raw", r["id"]));
        rv!["restore", spec_of(r), "--store", &store, "--to", &out, "--verify"]
            .env("RACKVAULT_IO", "pread")
            .run()
            .success();
        assert_same(&out, want, "restore with RACKVAULT_IO=pread");
    }
    rv!["verify", "--store", &store].env("RACKVAULT_IO", "pread").run().success();
    // A store written through the fallback reads the same through io_uring (if available).
    let out = d.join("default-io.raw");
    restore(&store, &spec_of(&r2), &out, &[]);
    assert_same(&out, &h2, "restore with the default I/O path");
}

#[test]
fn chunk_sizes_64k_and_4m() {
    let dir = scratch("chunksizes");
    let d = dir.path();
    let img = d.join("vm.raw");
    let size = 24 * MIB;
    make_image(&img, size, 51, Profile::VM);
    let h1 = hash_file(&img);
    let copy = d.join("v1.raw");
    std::fs::copy(&img, &copy).unwrap();
    mutate_scattered(&img, 2.0, 52);
    let h2 = hash_file(&img);
    for (arg, cs) in [("64K", 64 * KIB), ("4M", 4 * MIB)] {
        let store = d.join(format!("store-{arg}"));
        let r1 = backup(&copy, &store, "vm", &["--chunk-size", arg]);
        check_backup_report(&r1, "vm", size, cs);
        let r2 = backup(&img, &store, "vm", &["--chunk-size", arg]);
        check_backup_report(&r2, "vm", size, cs);
        assert!(r2["chunks_new"].as_u64() < r1["chunks_new"].as_u64(), "{r1} {r2}");
        let points = list_points(&store);
        assert!(points.iter().all(|p| p["disks"][0]["chunk_size"].as_u64() == Some(cs)), "{points:?}");
        for (r, want) in [(&r1, &h1), (&r2, &h2)] {
            let out = d.join(format!("out-{arg}-{}.raw", r["id"]));
            restore(&store, &spec_of(r), &out, &[]);
            assert_same(&out, want, &format!("chunk size {arg}"));
        }
        verify_clean(&store);
    }
}

#[test]
fn odd_sized_disk_round_trips() {
    let dir = scratch("oddsize");
    let d = dir.path();
    let img = d.join("odd.raw");
    let size = 10 * MIB + 12345;
    make_image(&img, size, 61, Profile { hole: 1, zero: 1, text: 2, random: 2 });
    // Make sure the partial last chunk holds data.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &random_bytes(99, 12345), 10 * MIB))
        .unwrap();
    let want = hash_file(&img);
    for (arg, cs) in [("4K", 4 * KIB), ("64K", 64 * KIB), ("256K", 256 * KIB), ("4M", 4 * MIB)] {
        let store = d.join(format!("store-{arg}"));
        let r = backup(&img, &store, "odd", &["--chunk-size", arg]);
        check_backup_report(&r, "odd", size, cs);
        let out = d.join(format!("odd-{arg}.raw"));
        restore(&store, "odd", &out, &["--verify"]);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size, "chunk size {arg}: restored size");
        assert_same(&out, &want, &format!("odd-sized disk, chunk size {arg}"));
        let q = d.join(format!("odd-{arg}.qcow2"));
        restore(&store, "odd", &q, &["--format", "qcow2", "--verify"]);
        qemu_img!["check", "-f", "qcow2", &q];
        let back = d.join(format!("odd-{arg}-back.raw"));
        qemu_img!["convert", "-O", "raw", &q, &back];
        // qemu-img works in 512-byte sectors: compare the disk's bytes, then the padding.
        let got = std::fs::read(&back).unwrap();
        let orig = std::fs::read(&img).unwrap();
        assert!(got.len() as u64 >= size, "chunk size {arg}: qcow2 holds {} bytes, want {size}", got.len());
        assert!(got[..size as usize] == orig[..], "chunk size {arg}: qcow2 restore differs from the disk");
        assert!(got[size as usize..].iter().all(|&b| b == 0), "chunk size {arg}: non-zero bytes past the disk end");
        verify_clean(&store);
    }
}

#[test]
fn empty_and_tiny_disks() {
    let dir = scratch("tiny");
    let d = dir.path();
    let store = d.join("store");
    for (name, content) in [("empty", &b""[..]), ("three", &b"abc"[..]), ("sector", &[0x42u8; 512][..])] {
        let img = d.join(format!("{name}.img"));
        std::fs::write(&img, content).unwrap();
        let r = backup(&img, &store, name, &[]);
        check_backup_report(&r, name, content.len() as u64, 256 * KIB);
        let out = d.join(format!("{name}.raw"));
        restore(&store, name, &out, &["--verify"]);
        assert_eq!(std::fs::read(&out).unwrap(), content, "{name}");
        let q = d.join(format!("{name}.qcow2"));
        restore(&store, name, &q, &["--format", "qcow2", "--verify"]);
        qemu_img!["check", "-f", "qcow2", &q];
        let info = qemu_img!["info", "--output=json", &q].json();
        // Like `qemu-img convert`, the qcow2 writer rounds the size up to whole 512-byte
        // sectors; the padding reads as zeros.
        let sectors = (content.len() as u64).div_ceil(512) * 512;
        assert_eq!(info["virtual-size"].as_u64(), Some(sectors), "{name}: {info}");
        let back = d.join(format!("{name}-back.raw"));
        qemu_img!["convert", "-O", "raw", &q, &back];
        let got = std::fs::read(&back).unwrap();
        assert_eq!(&got[..content.len()], content, "{name}: qcow2 content");
        assert!(got[content.len()..].iter().all(|&b| b == 0), "{name}: qcow2 padding must be zeros");
    }
    verify_clean(&store);
}
