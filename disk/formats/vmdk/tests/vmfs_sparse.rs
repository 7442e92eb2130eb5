//! ESXi snapshot deltas (vmfsSparse, `COWD`), hand-built from the format description since
//! qemu-img cannot create them, over a `vmfs` flat base; checked against the expected bytes
//! and against QEMU, which reads them.

mod common;

use blocksource::{BlockSource, ExtentKind};
use common::*;
use vmdk::SourceError;

/// A vmfsSparse (COWD) file for a disk of `data.len()` bytes with grains of `grain_sectors`
/// sectors; grains for which `present` is true hold `data`, the others are unallocated. Grain
/// tables that would be empty are left out of the directory.
fn build_cowd(data: &[u8], grain_sectors: u32, present: impl Fn(usize) -> bool) -> Vec<u8> {
    let sectors = (data.len() / 512) as u32;
    let grain = grain_sectors as usize * 512;
    let grains = data.len().div_ceil(grain);
    let gt_entries = 4096usize;
    let gts = grains.div_ceil(gt_entries);
    let mut f = vec![0u8; 2048];
    f[..4].copy_from_slice(b"COWD");
    put_u32(&mut f, 4, 1);
    put_u32(&mut f, 8, 3);
    put_u32(&mut f, 12, sectors);
    put_u32(&mut f, 16, grain_sectors);
    put_u32(&mut f, 20, 4);
    put_u32(&mut f, 24, gts as u32);
    // GD right after the header, then the tables, then the grains.
    let gd_at = f.len();
    f.resize(gd_at + (gts * 4).div_ceil(512) * 512, 0);
    let mut gt_at = vec![0usize; gts];
    for (t, at) in gt_at.iter_mut().enumerate() {
        if (t * gt_entries..((t + 1) * gt_entries).min(grains)).any(&present) {
            *at = f.len();
            let sector = (f.len() / 512) as u32;
            put_u32(&mut f, gd_at + t * 4, sector);
            f.resize(f.len() + gt_entries * 4, 0);
        }
    }
    for g in 0..grains {
        if !present(g) {
            continue;
        }
        let entry = gt_at[g / gt_entries] + (g % gt_entries) * 4;
        let sector = (f.len() / 512) as u32;
        put_u32(&mut f, entry, sector);
        let chunk = &data[g * grain..((g + 1) * grain).min(data.len())];
        f.extend_from_slice(chunk);
        f.resize(f.len().div_ceil(512) * 512, 0);
    }
    let free = (f.len() / 512) as u32;
    put_u32(&mut f, 28, free);
    f
}

#[test]
fn esxi_snapshot_over_vmfs_base() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12 * MIB as usize;
    let mut rng = Rng(3);
    let mut base = vec![0u8; size];
    rng.fill(&mut base[..4 * MIB as usize]);
    rng.fill(&mut base[9 * MIB as usize..]);
    // Thin-provisioned base: the zero middle is a hole in the flat file.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(dir.path().join("vm-flat.vmdk")).unwrap();
        f.set_len(size as u64).unwrap();
        f.write_all_at(&base[..4 * MIB as usize], 0).unwrap();
        f.write_all_at(&base[9 * MIB as usize..], 9 * MIB).unwrap();
    }
    let sectors = size / 512;
    std::fs::write(
        dir.path().join("vm.vmdk"),
        format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=5d1e2c44\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW {sectors} VMFS \"vm-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.thinProvisioned = \"1\"\n"
        ),
    )
    .unwrap();
    // The delta: 1-sector grains (as ESXi writes them) in three scattered runs, one of which
    // rewrites data with zeros and one of which crosses a grain table boundary (4096 sectors).
    let mut top = base.clone();
    let runs = [(100usize, 300usize), (4000, 300), (20000, 50)];
    let mut written = vec![false; sectors];
    for (i, &(s0, n)) in runs.iter().enumerate() {
        for sec in s0..s0 + n {
            written[sec] = true;
            let b = &mut top[sec * 512..(sec + 1) * 512];
            if i == 2 {
                b.fill(0);
            } else {
                rng.fill(b);
            }
        }
    }
    std::fs::write(dir.path().join("vm-000001-delta.vmdk"), build_cowd(&top, 1, |g| written[g])).unwrap();
    let desc = dir.path().join("vm-000001.vmdk");
    std::fs::write(
        &desc,
        format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=7a0f1d3e\nparentCID=5d1e2c44\nisNativeSnapshot=\"no\"\ncreateType=\"vmfsSparse\"\nparentFileNameHint=\"vm.vmdk\"\n# Extent description\nRW {sectors} VMFSSPARSE \"vm-000001-delta.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.longContentID = \"0123456789abcdef0123456789abcdef\"\n"
        ),
    )
    .unwrap();
    let src = open(&desc).unwrap();
    assert_eq!(src.create_type(), "vmfsSparse");
    assert!(read_all(&src) == top);
    check_random_reads(&src, &top, 4, 60);
    let (reported, zero) = check_allocation(&src, &top);
    assert!(reported * 10 >= zero * 9, "{reported} of {zero}");
    assert!(qemu_raw(&desc) == top, "QEMU reads the hand-built delta differently");

    // The delta file opened on its own is refused: it does not say what it is a delta of.
    let e = open(&dir.path().join("vm-000001-delta.vmdk")).unwrap_err();
    assert!(matches!(e, SourceError::Unsupported { .. }) && e.to_string().contains("vm-000001.vmdk"), "{e}");
}

#[test]
fn cowd_with_larger_grains_and_no_parent() {
    let mut rng = Rng(5);
    let mut data = vec![0u8; 3 * MIB as usize + 4096];
    rng.fill(&mut data[65536..200_000]);
    let grain = 16usize * 512;
    let cowd = build_cowd(&data, 16, |g| data[g * grain..((g + 1) * grain).min(data.len())].iter().any(|&b| b != 0));
    let mut files = MemOpener::default();
    files.files.insert("d-delta.vmdk".into(), cowd);
    files.files.insert(
        "d.vmdk".into(),
        format!(
            "# Disk DescriptorFile\nCID=00000001\nparentCID=ffffffff\ncreateType=\"vmfsSparse\"\nRW {} VMFSSPARSE \"d-delta.vmdk\"\n",
            data.len() / 512
        )
        .into_bytes(),
    );
    let src = open_mem(&files, "d.vmdk").unwrap();
    assert!(read_all(&src) == data);
    let map = src.allocation(0, src.size()).unwrap();
    let zero: u64 = map.iter().filter(|e| e.kind == ExtentKind::Zero).map(|e| e.len).sum();
    assert!(zero >= data.len() as u64 - 200_000, "{map:?}");

    // Too few directory entries for the capacity.
    let mut bad = files.files["d-delta.vmdk"].clone();
    put_u32(&mut bad, 24, 0);
    files.files.insert("d-delta.vmdk".into(), bad);
    let e = open_mem(&files, "d.vmdk").unwrap_err();
    assert!(e.to_string().contains("d-delta.vmdk") && e.to_string().contains("too few"), "{e}");
}
