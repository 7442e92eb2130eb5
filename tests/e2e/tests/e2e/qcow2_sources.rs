//! qcow2 images as backup sources: made by `qemu-img convert` (plain and compressed) and with
//! a backing chain; each must restore to exactly the guest view `qemu-img convert -O raw` gives.

use std::path::Path;

use e2e::*;

/// The guest-visible bytes of `image` according to qemu, as a raw file next to it.
fn guest_view(image: &Path, out: &Path) -> String {
    qemu_img!["convert", "-O", "raw", image, out];
    hash_file(out)
}

#[test]
fn converted_and_compressed_qcow2_restore_to_the_guest_view() {
    let dir = scratch("qcow2-src");
    let d = dir.path();
    let raw = d.join("vm.raw");
    make_image(&raw, 32 * MIB, 71, Profile::VM);
    let want = hash_file(&raw);
    let store = d.join("store");
    for (name, extra) in [("plain", None), ("compressed", Some("-c"))] {
        let q = d.join(format!("{name}.qcow2"));
        let mut cmd = Rv::program("qemu-img").args(["convert", "-O", "qcow2"]);
        if let Some(x) = extra {
            cmd = cmd.arg(x);
        }
        cmd.arg(&raw).arg(&q).run().success();
        assert_eq!(guest_view(&q, &d.join(format!("{name}-guest.raw"))), want, "qemu's own view of {name}.qcow2");

        let r = backup(&q, &store, name, &[]);
        assert_eq!(r["format"], "qcow2", "{r}");
        assert_eq!(r["bytes_logical"].as_u64(), Some(32 * MIB), "{r}");
        let out = d.join(format!("{name}-restored.raw"));
        restore(&store, name, &out, &["--verify"]);
        assert_eq!(hash_file(&out), want, "{name}.qcow2 restored differently from its guest view");
    }
    // Same guest content, different containers: the second backup stores (almost) nothing new.
    let points = list_points(&store);
    assert_eq!(points.len(), 2, "{points:?}");
    let second = &points.iter().find(|p| p["name"] == "plain").unwrap()["stats"];
    let third = &points.iter().find(|p| p["name"] == "compressed").unwrap()["stats"];
    assert!(
        third["chunks_new"].as_u64() == Some(0),
        "identical guest data must dedupe: plain {second}, compressed {third}"
    );
    verify_clean(&store);
}

#[test]
fn qcow2_with_backing_file_restores_to_the_guest_view() {
    let dir = scratch("qcow2-chain");
    let d = dir.path();
    let raw = d.join("base.raw");
    make_image(&raw, 16 * MIB, 81, Profile::VM);
    qemu_img!["convert", "-O", "qcow2", &raw, d.join("base.qcow2")];
    // A relative backing name, resolved against the top image's directory.
    Rv::program("qemu-img")
        .args(["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"])
        .current_dir(d)
        .run()
        .success();
    let top = d.join("top.qcow2");
    let store = d.join("store");

    // Unmodified top: reads fall through to the base.
    let want0 = guest_view(&top, &d.join("guest0.raw"));
    assert_eq!(want0, hash_file(&raw));
    backup(&top, &store, "top", &[]);
    let out = d.join("restored0.raw");
    restore(&store, "top", &out, &[]);
    assert_eq!(hash_file(&out), want0, "top.qcow2 over base.qcow2, unmodified");

    match which("qemu-io") {
        Some(qemu_io) => {
            // Data over the backing file, a zeroed range hiding backing data, and a write past
            // a cluster boundary.
            for cmd in ["write -P 0x5a 1M 128k", "write -z 4M 1M", "write -P 0xa5 8388000 9000"] {
                Rv::program(&qemu_io).args(["-f", "qcow2", "-c", cmd]).arg(&top).run().success();
            }
            let want1 = guest_view(&top, &d.join("guest1.raw"));
            assert_ne!(want1, want0, "qemu-io should have changed the guest view");
            let r = backup(&top, &store, "top", &[]);
            assert_eq!(r["format"], "qcow2", "{r}");
            let out = d.join("restored1.raw");
            restore(&store, &spec_of(&r), &out, &["--verify"]);
            assert_eq!(hash_file(&out), want1, "top.qcow2 with its own clusters over base.qcow2");
        }
        None => eprintln!("note: qemu-io is not installed; skipped modifying the top image of the backing chain"),
    }

    // A raw backing file works too.
    Rv::program("qemu-img")
        .args(["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "over-raw.qcow2"])
        .current_dir(d)
        .run()
        .success();
    let over = d.join("over-raw.qcow2");
    let want2 = guest_view(&over, &d.join("guest2.raw"));
    backup(&over, &store, "over-raw", &[]);
    let out = d.join("restored2.raw");
    restore(&store, "over-raw", &out, &[]);
    assert_eq!(hash_file(&out), want2, "qcow2 over a raw backing file");
    verify_clean(&store);
}
