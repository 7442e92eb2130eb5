//! A deterministic fuzz loop: corrupt real VMDK files (headers, grain directories and tables,
//! markers, descriptor lines) at random and make sure opening, mapping and reading them never
//! panics, hangs or allocates wildly (errors are fine).

mod common;

use common::*;
use testkit::image::exercise;
use testkit::mutate::maybe_truncate;

/// Hosted sparse header fields worth hitting directly (offset, width).
const FIELDS: &[(usize, usize)] =
    &[(4, 4), (8, 4), (12, 8), (20, 8), (28, 8), (36, 8), (44, 4), (48, 8), (56, 8), (64, 8), (73, 4), (77, 2)];

/// Corrupt binary file contents: header fields, random bytes in the metadata window, bit flips,
/// sometimes a truncation.
fn mutate_binary(d: &mut Vec<u8>, window: usize, rng: &mut Rng) {
    let flips = 1 + rng.below(6);
    for _ in 0..flips {
        if d.is_empty() {
            return;
        }
        match rng.below(5) {
            0 if d.len() >= 512 => {
                let (at, width) = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                let v = match rng.below(3) {
                    0 => rng.next(),
                    1 => rng.below(4096),
                    _ => u64::MAX,
                }
                .to_le_bytes();
                d[at..at + width].copy_from_slice(&v[..width]);
            }
            1 => {
                // Somewhere in the whole file (grains, markers, the footer).
                let at = rng.below(d.len() as u64) as usize;
                d[at] = rng.next() as u8;
            }
            2 if d.len() >= 2048 => {
                // The footer / end-of-stream area.
                let at = d.len() - 1 - rng.below(2048) as usize;
                d[at] ^= 1 << rng.below(8);
            }
            _ => {
                let at = rng.below(window.min(d.len()) as u64) as usize;
                d[at] ^= 1 << rng.below(8);
            }
        }
    }
    maybe_truncate(d, 10, rng);
}

/// Corrupt descriptor text line-wise: numbers replaced, lines dropped or duplicated, bytes
/// changed.
fn mutate_text(d: &mut Vec<u8>, rng: &mut Rng) {
    let text = String::from_utf8_lossy(d).into_owned();
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    for _ in 0..1 + rng.below(3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len() as u64) as usize;
        match rng.below(6) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 | 3 => {
                // Replace a number with another one.
                let l = &lines[i];
                let words: Vec<&str> = l.split(' ').collect();
                let w = rng.below(words.len() as u64) as usize;
                let v = match rng.below(4) {
                    0 => rng.next().to_string(),
                    1 => rng.below(100_000).to_string(),
                    2 => "ffffffff".to_string(),
                    _ => "\"".to_string(),
                };
                let mut words: Vec<String> = words.iter().map(|s| s.to_string()).collect();
                words[w] = v;
                lines[i] = words.join(" ");
            }
            4 => {
                lines[i] =
                    format!("parentFileNameHint=\"{}\"", ["x.vmdk", "d.vmdk", "s.vmdk", ""][rng.below(4) as usize])
            }
            _ => {
                let mut b = std::mem::take(&mut lines[i]).into_bytes();
                if !b.is_empty() {
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] = rng.next() as u8;
                }
                lines[i] = String::from_utf8_lossy(&b).into_owned();
            }
        }
    }
    *d = lines.join("\n").into_bytes();
}

/// Corrupt one file of `good` (chosen at random) per iteration, open `top`.
fn fuzz(good: &MemOpener, top: &str, iterations: usize, seed: u64, min_opened: usize) {
    let mut names: Vec<&String> = good.files.keys().collect();
    names.sort();
    let mutate = |files: &mut std::collections::HashMap<String, Vec<u8>>, rng: &mut Rng| {
        let name = names[rng.below(names.len() as u64) as usize];
        let d = files.get_mut(name.as_str()).unwrap();
        if vmdk::is_vmdk(d) && !d.starts_with(b"KDMV") && !d.starts_with(b"COWD") {
            mutate_text(d, rng);
        } else {
            mutate_binary(d, 64 << 10, rng);
        }
    };
    let tally = flip_loop(top, &good.files, seed, iterations, mutate, |files, rng, t| {
        exercise(open_mem(&MemOpener { files }, top), rng, t)
    });
    assert!(tally.opened >= min_opened && tally.read > min_opened / 2, "{tally:?}");
}

/// A disk converted by qemu-img with `opts`, loaded into memory with its extents.
fn converted(dir: &std::path::Path, opts: &str, seed: u64) -> MemOpener {
    let raw = dir.join("src.raw");
    make_raw(&raw, 3 * MIB, &[(0, 300_000), (MIB, 64 << 10), (2 * MIB + 4096, 500_000)], &[], seed);
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", opts, s(&raw), s(&dir.join("d.vmdk"))]);
    std::fs::remove_file(raw).unwrap();
    load_dir(dir)
}

#[test]
fn flips_monolithic_sparse() {
    let dir = tempfile::tempdir().unwrap();
    fuzz(&converted(dir.path(), "subformat=monolithicSparse", 1), "d.vmdk", 2500, 0x1234_5678, 500);
}

#[test]
fn flips_monolithic_sparse_zeroed_grain() {
    let dir = tempfile::tempdir().unwrap();
    fuzz(&converted(dir.path(), "subformat=monolithicSparse,zeroed_grain=on", 2), "d.vmdk", 1000, 0x9abc_def1, 200);
}

#[test]
fn flips_stream_optimized() {
    let dir = tempfile::tempdir().unwrap();
    fuzz(&converted(dir.path(), "subformat=streamOptimized", 3), "d.vmdk", 2000, 0x2468_ace0, 400);
}

#[test]
fn flips_stream_optimized_with_footer() {
    let mut data = vec![0u8; 3 * MIB as usize];
    Rng(4).fill(&mut data[..200_000]);
    data[2 * MIB as usize..2 * MIB as usize + 100_000].fill(0x42);
    let mut files = MemOpener::default();
    files.files.insert("d.vmdk".into(), build_stream_optimized(&data, 7));
    fuzz(&files, "d.vmdk", 2000, 0x1357_9bdf, 400);
}

#[test]
fn flips_split_sparse_and_flat() {
    let dir = tempfile::tempdir().unwrap();
    fuzz(&converted(dir.path(), "subformat=twoGbMaxExtentSparse", 5), "d.vmdk", 1500, 0x5555_1234, 300);
    let dir = tempfile::tempdir().unwrap();
    fuzz(&converted(dir.path(), "subformat=monolithicFlat", 6), "d.vmdk", 1000, 0x7777_4321, 200);
}

#[test]
fn flips_delta_chain() {
    let dir = tempfile::tempdir().unwrap();
    converted(dir.path(), "subformat=monolithicSparse", 8);
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-f", "vmdk", "-b", "d.vmdk", "-F", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "t.vmdk"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    qemu_io(&dir.path().join("t.vmdk"), &["write -P 0x5a 100k 300k", "write -z 2M 64k"]);
    fuzz(&load_dir(dir.path()), "t.vmdk", 2000, 0x3141_5926, 300);
}
