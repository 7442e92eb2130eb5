//! Reading standalone qcow2 images made by qemu-img / qemu-io, compared with
//! `qemu-img convert -O raw` and `qemu-img map`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use blocksource::file::FileSource;
use blocksource::{BlockSource, ExtentKind, ReadRequest};
use common::*;
use qcow2::{is_qcow2, LocalBackingOpener, OpenOptions, Qcow2Source};

const MIB: u64 = 1 << 20;

/// Convert a raw file with scattered random data to qcow2 with `opts`, then check reads,
/// random reads and the allocation map.
fn roundtrip_converted(size: u64, extra: &[&str], seed: u64) -> Qcow2Source {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("img.qcow2");
    let data = make_raw(&raw, size, &scattered(size), seed);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[s(&raw), s(&img)]);
    qemu_img(&args);
    assert_eq!(qemu_raw(&img), data, "qemu itself disagrees with the source data");

    let src = open(&img).unwrap();
    assert_eq!(src.size(), size);
    assert_eq!(src.format(), "qcow2");
    assert_eq!(src.describe(), img.display().to_string());
    assert!(read_all(&src) == data, "read_all differs from the raw data for {extra:?}");
    check_random_reads(&src, &data, seed, 40);
    assert_alloc_matches_qemu(&src, &img, &data);
    src
}

#[test]
fn magic_detection() {
    assert!(is_qcow2(b"QFI\xfb\0\0\0\x03"));
    assert!(is_qcow2(b"QFI\xfb\0\0\0\x09")); // unknown version: still qcow2, refused at open
    assert!(!is_qcow2(b"QFI"));
    assert!(!is_qcow2(b"\0\0\0\0\0\0\0\0"));
    assert!(!is_qcow2(b"KDMV\x01\0\0\0"));
}

#[test]
fn cluster_64k_v3() {
    let src = roundtrip_converted(24 * MIB, &["-o", "cluster_size=65536"], 1);
    assert_eq!(src.version(), 3);
    assert_eq!(src.cluster_size(), 65536);
}

#[test]
fn cluster_512() {
    let src = roundtrip_converted(12 * MIB, &["-o", "cluster_size=512"], 2);
    assert_eq!(src.cluster_size(), 512);
}

#[test]
fn cluster_2m() {
    let src = roundtrip_converted(40 * MIB, &["-o", "cluster_size=2M"], 3);
    assert_eq!(src.cluster_size(), 2 * MIB);
}

#[test]
fn version_2() {
    let src = roundtrip_converted(16 * MIB, &["-o", "compat=0.10"], 4);
    assert_eq!(src.version(), 2);
}

#[test]
fn size_not_a_cluster_multiple() {
    // 64K clusters, size ends 3 sectors into a cluster; data reaches the very end.
    roundtrip_converted(5 * MIB + 3 * 512, &["-o", "cluster_size=65536"], 5);
    roundtrip_converted(5 * MIB + 3 * 512, &["-o", "cluster_size=2M"], 6);
}

#[test]
fn empty_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "0"]);
    let src = open(&img).unwrap();
    assert_eq!(src.size(), 0);
    assert_eq!(src.allocation(0, 100).unwrap(), vec![]);
    src.read_many(&mut []).unwrap();
    assert!(src.read_at(0, &mut [0u8; 1]).is_err());
}

#[test]
fn qemu_io_scattered_writes_and_zero_flag() {
    if !have_qemu_io() {
        eprintln!("qemu-io not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("io.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", s(&img), "64M"]);
    qemu_io(
        &img,
        &[
            "write -P 0xab 0 64k",
            "write -P 0x12 1000 3000", // partial cluster: QEMU copies on write
            "write -P 0x34 5M 1M",
            "write -P 0x56 9437184 131072", // 9 MiB
            "write -P 0x78 33554432 512",   // 32 MiB, one sector
            "write -P 0x9a 67043328 65536", // last cluster
            "write -z 5M 128k",             // zero flag over data
            "write -z 20M 64k",             // zero flag over nothing
            "write -P 0 40M 64k",           // explicit zeros are still data
        ],
    );
    let data = qemu_raw(&img);
    let src = open(&img).unwrap();
    assert!(read_all(&src) == data);
    check_random_reads(&src, &data, 7, 60);
    assert_alloc_matches_qemu(&src, &img, &data);

    // Spot checks of the map itself.
    let ext = src.allocation(5 * MIB, MIB).unwrap();
    assert_eq!(ext[0].kind, ExtentKind::Zero);
    assert_eq!(ext[0].len, 128 << 10);
    assert_eq!(ext[1].kind, ExtentKind::Data);
    let ext = src.allocation(40 * MIB, 64 << 10).unwrap();
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].kind, ExtentKind::Data);
    // Clipped at the end of the disk; empty past it.
    let ext = src.allocation(64 * MIB - 512, 10 * MIB).unwrap();
    assert_eq!(ext.last().unwrap().end(), 64 * MIB);
    assert!(src.allocation(64 * MIB, 1).unwrap().is_empty());
    // Reads past the end are errors, never zeros.
    assert!(src.read_at(64 * MIB - 10, &mut [0u8; 11]).is_err());
}

#[test]
fn compressed_deflate() {
    for cs in ["512", "65536", "2M"] {
        let opt = format!("cluster_size={cs}");
        roundtrip_converted(9 * MIB + 1024, &["-c", "-o", &opt], 8);
    }
}

#[test]
fn compressed_zstd() {
    for cs in ["512", "65536", "2M"] {
        let opt = format!("cluster_size={cs},compression_type=zstd");
        roundtrip_converted(9 * MIB + 1024, &["-c", "-o", &opt], 9);
    }
}

#[test]
fn compressed_really_compressed() {
    // Make sure the compressed tests exercise compressed clusters: qemu-img map reports them.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("t.raw");
    let img = dir.path().join("t.qcow2");
    let data = make_raw(&raw, 4 * MIB, &[(0, 2 * MIB)], 10);
    qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", s(&raw), s(&img)]);
    let map = qemu_img(&["map", "--output=json", s(&img)]);
    assert!(map.contains("\"compressed\": true"), "no compressed clusters in {map}");
    let src = open(&img).unwrap();
    // Many small reads into the same compressed clusters in one batch.
    let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 1000]).collect();
    let mut reqs: Vec<ReadRequest<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| ReadRequest { offset: i as u64 * 1000, buf: b.as_mut_slice() })
        .collect();
    src.read_many(&mut reqs).unwrap();
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(b[..], data[i * 1000..i * 1000 + 1000]);
    }
}

#[test]
fn tiny_cache_and_concurrent_readers() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("c.raw");
    let img = dir.path().join("c.qcow2");
    let size = 16 * MIB;
    let ranges: Vec<(u64, u64)> = (0..64).map(|i| (i * 250_000, 70_000)).collect();
    let data = Arc::new(make_raw(&raw, size, &ranges, 11));
    qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512", s(&raw), s(&img)]);
    // A cache smaller than one table: every lookup evicts, results must not change.
    let src = Arc::new(
        Qcow2Source::open_with(
            Box::new(FileSource::open(&img).unwrap()),
            &LocalBackingOpener,
            &OpenOptions { l2_cache_bytes: 1 },
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (src, data) = (src.clone(), data.clone());
            std::thread::spawn(move || check_random_reads(&*src, &data, 100 + t, 30))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(read_all(&*src) == *data);
}

#[test]
fn batch_with_empty_and_overlapping_requests() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("b.raw");
    let img = dir.path().join("b.qcow2");
    let data = make_raw(&raw, 8 * MIB, &scattered(8 * MIB), 12);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&img)]);
    let src = open(&img).unwrap();
    let mut a = vec![1u8; 0];
    let mut b = vec![1u8; 100_000];
    let mut c = vec![1u8; 100_000];
    let mut d = vec![1u8; 1];
    let mut reqs = [
        ReadRequest { offset: 5, buf: &mut a },
        ReadRequest { offset: 60_000, buf: &mut b },
        ReadRequest { offset: 60_000, buf: &mut c },
        ReadRequest { offset: 8 * MIB - 1, buf: &mut d },
    ];
    src.read_many(&mut reqs).unwrap();
    assert_eq!(b[..], data[60_000..160_000]);
    assert_eq!(c[..], data[60_000..160_000]);
    assert_eq!(d[0], data[8 * MIB as usize - 1]);
    let hints = src.io_hints();
    assert!(hints.alignment.is_power_of_two() && hints.alignment >= 4096);
    assert!(hints.max_request >= hints.alignment);
}

/// Delegates to a real `FileSource` and counts the calls and requests it receives.
#[derive(Debug)]
struct Counting {
    inner: FileSource,
    calls: Arc<AtomicUsize>,
    reqs: Arc<AtomicUsize>,
}

impl BlockSource for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<blocksource::Extent>, blocksource::SourceError> {
        self.inner.allocation(offset, len)
    }
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), blocksource::SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.reqs.fetch_add(reqs.len(), Ordering::SeqCst);
        self.inner.read_many(reqs)
    }
}

#[test]
fn one_container_call_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("p.raw");
    let size = 16 * MIB;
    let data = make_raw(&raw, size, &[(0, size)], 13);
    for (name, extra) in [("plain", None), ("compressed", Some("-c"))] {
        let img = dir.path().join(format!("{name}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(extra);
        args.extend([s(&raw), s(&img)]);
        qemu_img(&args);
        let (calls, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let container = Counting { inner: FileSource::open(&img).unwrap(), calls: calls.clone(), reqs: reqs.clone() };
        let src = Qcow2Source::open(Box::new(container), &LocalBackingOpener).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; 256 << 10]).collect();
        let mut batch = |calls_expected: usize| {
            calls.store(0, Ordering::SeqCst);
            reqs.store(0, Ordering::SeqCst);
            let mut rq: Vec<ReadRequest<'_>> = bufs
                .iter_mut()
                .enumerate()
                .map(|(i, b)| ReadRequest { offset: MIB + i as u64 * (256 << 10), buf: b.as_mut_slice() })
                .collect();
            src.read_many(&mut rq).unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), calls_expected, "{name}: container read_many calls");
            reqs.load(Ordering::SeqCst)
        };
        // Cold: one call for the L2 table, one for all the data.
        batch(2);
        // Warm: exactly one call for the whole batch.
        let n = batch(1);
        if name == "plain" {
            // Host clusters are contiguous, so each 256 KiB request is one host read.
            assert_eq!(n, 16);
        } else {
            assert_eq!(n, 16 * 4); // one per compressed 64 KiB cluster
        }
        for (i, b) in bufs.iter().enumerate() {
            let o = (MIB + i as u64 * (256 << 10)) as usize;
            assert!(b[..] == data[o..o + b.len()]);
        }
    }
}
