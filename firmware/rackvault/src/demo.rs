//! `rackvault demo`: the whole backup cycle on a generated sample disk, with nothing to set
//! up. Makes a sparse VM-like disk (holes, zeros, text, incompressible data), backs it up,
//! changes 1% of it in scattered 64 KiB blocks, backs it up again, verifies the store,
//! restores the newest point and checks the restored bytes against the disk.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use engine::{BackupOptions, RestoreFormat, RestoreOptions};

use crate::progress::Bar;
use crate::{human_bytes, open_store};

const MIB: u64 = 1 << 20;

/// splitmix64: a tiny deterministic generator, so the demo disk is the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn random_block(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

fn text_block(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "kernel:",
        "systemd[1]:",
        "Started",
        "Stopped",
        "session",
        "backup",
        "disk",
        "error",
        "warning",
        "connection",
        "from",
        "user",
        "root",
        "service",
        "/var/log",
        "eth0",
        "timeout",
        "retry",
        "ok",
        "nfs",
        "iscsi",
        "volume",
    ];
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        out.extend_from_slice(format!("Nov 22 03:{:02}:{:02} host ", line / 60 % 60, line % 60).as_bytes());
        for _ in 0..(4 + rng.next() % 8) {
            out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

fn make_disk(path: &Path, size_mib: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size_mib * MIB)?;
    let mut rng = Rng(42);
    for slot in 0..size_mib {
        let kind = rng.next() % 10;
        let data = match kind {
            0 | 1 => continue, // hole
            2 => vec![0u8; MIB as usize],
            3..=6 => text_block(&mut rng, MIB as usize),
            _ => random_block(rng.next(), MIB as usize),
        };
        file.write_all_at(&data, slot * MIB)?;
    }
    file.sync_all()?;
    Ok(())
}

/// Overwrite 1% of the disk in scattered 64 KiB blocks.
fn mutate(path: &Path, size_mib: u64) -> Result<u64> {
    let file = File::options().write(true).open(path)?;
    let blocks = size_mib * 16;
    let count = (blocks / 100).max(1);
    let mut rng = Rng(7);
    for _ in 0..count {
        let b = rng.next() % blocks;
        file.write_all_at(&random_block(rng.next(), 64 << 10), b * (64 << 10))?;
    }
    file.sync_all()?;
    Ok(count * (64 << 10))
}

fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

pub fn run(dir: &Path, size_mib: u64, interactive: bool) -> Result<()> {
    if size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let disk = dir.join("sample-vm.img");
    let store_dir = dir.join("store");
    let restored = dir.join("restored-vm.img");
    for p in [&disk, &restored] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&store_dir);

    println!("rackvault demo in {}", dir.display());
    make_disk(&disk, size_mib)?;
    println!("1. made a sample VM disk {} ({} MiB: holes, zeros, logs, random data)", disk.display(), size_mib);

    let store = open_store(&store_dir, true)?;
    let source = disk.display().to_string();
    let bar = Bar::new(interactive);
    let opts = BackupOptions::new("sample-vm");
    let src = engine::open_source(&source)?;
    let first = engine::backup(&store, src.as_ref(), &opts, &bar)?;
    println!(
        "2. full backup sample-vm@{}: {:.2} s, read {}, stored {} ({} of {} chunks new, {} zero) via {}",
        first.id,
        first.duration_s,
        human_bytes(first.bytes_read),
        human_bytes(first.bytes_written),
        first.chunks_new,
        first.chunks_total,
        first.chunks_zero,
        first.io_backend
    );

    let changed = mutate(&disk, size_mib)?;
    println!("3. changed {} of the disk in scattered 64 KiB blocks", human_bytes(changed));

    let src = engine::open_source(&source)?;
    let second = engine::backup(&store, src.as_ref(), &opts, &bar)?;
    println!(
        "4. incremental backup sample-vm@{}: {:.2} s, stored {} ({} chunks new); it is a full image by reference",
        second.id,
        second.duration_s,
        human_bytes(second.bytes_written),
        second.chunks_new
    );

    // What the daemon's nightly maintenance does: compress what the backups stored raw.
    let rc = store.recompress(
        &store::RecompressOptions { level: engine::DEFAULT_ZSTD_LEVEL, yield_to_backups: false, threads: 0 },
        &|_| {},
        &|| false,
    )?;
    println!(
        "   compressed later, off the backups' critical path: {} chunks, store {} -> {} in {:.2} s",
        rc.chunks_compressed,
        human_bytes(rc.store_bytes_before),
        human_bytes(rc.store_bytes_after),
        rc.duration_s
    );

    let report = engine::verify(&store, None, 0, &bar)?;
    if !report.is_clean() {
        bail!("verify found damage: {:?}", report);
    }
    println!(
        "5. verified the store: {} chunks in {} restore points intact",
        report.chunks_checked, report.restore_points_checked
    );

    let point = store.find("sample-vm")?;
    let ropts = RestoreOptions {
        to: restored.clone(),
        format: RestoreFormat::Raw,
        verify: false,
        force: true,
        disk: 0,
        threads: 0,
        read_ahead: true,
    };
    let r = engine::restore(&store, &point, &ropts, &bar)?;
    let want = hash_file(&disk)?;
    let got = hash_file(&restored)?;
    if want != got {
        bail!("restored image differs from the disk (blake3 {got} vs {want})");
    }
    println!(
        "6. restored {} to {} in {:.2} s; blake3 matches the disk: {}",
        r.point,
        restored.display(),
        r.duration_s,
        got
    );
    let u = store.usage()?;
    println!(
        "store {}: {} for two restore points of a {} MiB disk ({} chunks, index {})",
        store_dir.display(),
        human_bytes(u.pack_bytes),
        size_mib,
        u.chunks,
        human_bytes(u.index_bytes)
    );
    Ok(())
}
