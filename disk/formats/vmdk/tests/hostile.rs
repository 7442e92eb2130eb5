//! Hand-crafted hostile headers and descriptors: every one must give a clear error naming the
//! file (or read fine), never panic or allocate without bound.

mod common;

use blocksource::BlockSource;
use common::*;
use vmdk::SourceError;

/// A valid monolithicSparse header of `sectors` sectors, 64 KiB grains, GD at sector 1 with
/// its tables right after, no grains, no descriptor.
fn sparse(sectors: u64) -> Vec<u8> {
    let gts = sectors.div_ceil(128 * 512) as usize;
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"KDMV");
    put_u32(&mut h, 4, 1);
    put_u32(&mut h, 8, 3);
    put_u64(&mut h, 12, sectors);
    put_u64(&mut h, 20, 128);
    put_u32(&mut h, 44, 512);
    put_u64(&mut h, 56, 1);
    h[73..77].copy_from_slice(b"\n \r\n");
    let gd_sectors = (gts * 4).div_ceil(512);
    h.resize(512 + gd_sectors * 512, 0);
    for t in 0..gts {
        let gt_sector = (h.len() / 512) as u32;
        put_u32(&mut h, 512 + t * 4, gt_sector);
        h.resize(h.len() + 2048, 0);
    }
    h
}

fn open_one(name: &str, data: Vec<u8>) -> Result<vmdk::VmdkSource, SourceError> {
    let mut files = MemOpener::default();
    files.files.insert(name.to_string(), data);
    open_mem(&files, name)
}

/// The error of opening (or, if it opens, of reading all of) `data`, which must name `name`.
fn err(name: &str, data: Vec<u8>) -> SourceError {
    let e = match open_one(name, data) {
        Err(e) => e,
        Ok(src) => {
            let mut buf = vec![0u8; src.size().min(8 << 20) as usize];
            match src.read_at(0, &mut buf) {
                Err(e) => e,
                Ok(()) => panic!("{name}: hostile input was accepted"),
            }
        }
    };
    assert!(e.to_string().contains(name), "error does not name the file: {e}");
    eprintln!("{e}");
    e
}

fn corrupt_with(name: &str, data: Vec<u8>, words: &[&str]) {
    let e = err(name, data);
    assert!(matches!(e, SourceError::Corrupt { .. }), "not Corrupt: {e}");
    for w in words {
        assert!(e.to_string().contains(w), "{e:?} lacks {w:?}");
    }
}

fn unsupported_with(name: &str, data: Vec<u8>, words: &[&str]) {
    let e = err(name, data);
    assert!(matches!(e, SourceError::Unsupported { .. }), "not Unsupported: {e}");
    for w in words {
        assert!(e.to_string().contains(w), "{e:?} lacks {w:?}");
    }
}

#[test]
fn valid_handmade_sparse_opens() {
    let src = open_one("ok.vmdk", sparse(100_000)).unwrap();
    assert_eq!(src.size(), 100_000 * 512);
    let mut buf = vec![1u8; 100_000];
    src.read_at(7, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn not_a_vmdk_or_truncated() {
    corrupt_with("empty.vmdk", vec![], &["not a VMDK"]);
    corrupt_with("zeros.vmdk", vec![0; 4096], &["not a VMDK"]);
    corrupt_with("short.vmdk", b"KDMV\x01\0\0\0".to_vec(), &["too short"]);
    let mut d = sparse(100_000);
    d.truncate(600);
    corrupt_with("trunc.vmdk", d, &["grain directory"]);
}

#[test]
fn absurd_header_fields() {
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = sparse(100_000);
        f(&mut d);
        d
    };
    unsupported_with("v.vmdk", with(&|d| put_u32(d, 4, 9)), &["version 9"]);
    // 1 << 55 and 1 << 63 overflowed a byte count once (found by cargo-fuzz).
    for g in [0u64, 3, 100, 1 << 12, 1 << 40, 1 << 55, 1 << 63, u64::MAX] {
        corrupt_with("g.vmdk", with(&|d| put_u64(d, 20, g)), &["grain size"]);
    }
    for n in [0u32, 513, u32::MAX] {
        corrupt_with("n.vmdk", with(&|d| put_u32(d, 44, n)), &["entries per grain table"]);
    }
    for c in [u64::MAX, 1 << 55] {
        corrupt_with("c.vmdk", with(&|d| put_u64(d, 12, c)), &["capacity"]);
    }
    // Legal capacity, but with 512-byte grains the directory would be 128 MiB.
    unsupported_with(
        "gd.vmdk",
        with(&|d| {
            put_u64(d, 12, 1 << 40);
            put_u64(d, 20, 1);
        }),
        &["grain directory", "limit"],
    );
    corrupt_with("gdoff.vmdk", with(&|d| put_u64(d, 56, 1 << 50)), &["grain directory", "inside"]);
    corrupt_with("gdoff2.vmdk", with(&|d| put_u64(d, 56, 0)), &["grain directory"]);
    corrupt_with("gde.vmdk", with(&|d| put_u32(d, 512, 0xffff_fff0)), &["grain directory entry 0", "past the end"]);
    corrupt_with("nl.vmdk", with(&|d| d[75] = b'\n'), &["text-mode"]);
    unsupported_with("z.vmdk", with(&|d| d[77] = 7), &["compression algorithm 7"]);
    corrupt_with(
        "desc.vmdk",
        with(&|d| {
            put_u64(d, 28, 1);
            put_u64(d, 36, 1 << 40)
        }),
        &["descriptor", "limit"],
    );
    corrupt_with(
        "desc2.vmdk",
        with(&|d| {
            put_u64(d, 28, 1 << 40);
            put_u64(d, 36, 2)
        }),
        &["descriptor", "past the end"],
    );
    unsupported_with(
        "cap0.vmdk",
        with(&|d| {
            put_u64(d, 12, 0);
            put_u64(d, 28, 1);
            put_u64(d, 36, 1)
        }),
        &["capacity 0"],
    );
    corrupt_with(
        "end.vmdk",
        with(&|d| {
            put_u64(d, 56, u64::MAX);
        }),
        &["footer"],
    );
}

#[test]
fn hostile_grain_entries() {
    // One grain table entry pointing past the end of the file.
    let mut d = sparse(1000);
    let gt = get_u32(&d, 512) as usize * 512;
    put_u32(&mut d, gt + 4, 0xffff_0000);
    corrupt_with("gte.vmdk", d.clone(), &["grain 1", "past the end"]);
    // The same file, but only reading grain 0 is fine.
    let src = open_one("gte.vmdk", d).unwrap();
    src.read_at(0, &mut [0u8; 65536]).unwrap();
    assert!(src.allocation(0, 65536).is_ok());
    let e = src.allocation(0, src.size()).unwrap_err();
    assert!(e.to_string().contains("grain 1"), "{e}");
}

/// A stream-optimized file whose one grain is replaced by `grain` (marker included).
fn stream_with_grain(f: impl Fn(&mut Vec<u8>, usize)) -> Vec<u8> {
    let mut data = vec![0u8; MIB as usize];
    data[..65536].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 7) as u8);
    let mut d = build_stream_optimized(&data, 1);
    // The first grain marker is at sector 128.
    f(&mut d, 128 * 512);
    d
}

#[test]
fn hostile_compressed_grains() {
    let ok = stream_with_grain(|_, _| {});
    let src = open_one("s.vmdk", ok).unwrap();
    src.read_at(0, &mut [0u8; 65536]).unwrap();
    corrupt_with("size.vmdk", stream_with_grain(|d, at| put_u32(d, at + 8, u32::MAX)), &["compressed data follow"]);
    corrupt_with("size0.vmdk", stream_with_grain(|d, at| put_u32(d, at + 8, 0)), &["metadata marker"]);
    corrupt_with("lba.vmdk", stream_with_grain(|d, at| put_u64(d, at, 1 << 30)), &["grain marker says"]);
    corrupt_with("zlib.vmdk", stream_with_grain(|d, at| d[at + 12..at + 40].fill(0xff)), &["compressed grain 0"]);
    // A zip bomb: a small stream that inflates to 4 MiB, in place of an incompressible grain.
    let mut data = vec![0u8; MIB as usize];
    Rng(9).fill(&mut data[..65536]);
    let mut d = build_stream_optimized(&data, 1);
    let at = 128 * 512;
    {
        use std::io::Write;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 4 << 20]).unwrap();
        let comp = enc.finish().unwrap();
        assert!(comp.len() < 60_000);
        put_u32(&mut d, at + 8, comp.len() as u32);
        d[at + 12..at + 12 + comp.len()].copy_from_slice(&comp);
    }
    corrupt_with("bomb.vmdk", d, &["more than"]);
    // Footer damage.
    let mut d = stream_with_grain(|_, _| {});
    let n = d.len();
    d[n - 512 + 12] = 9;
    corrupt_with("eos.vmdk", d, &["footer"]);
}

fn desc_files(desc: &str, extra: &[(&str, Vec<u8>)]) -> MemOpener {
    let mut files = MemOpener::default();
    files.files.insert("d.vmdk".into(), desc.as_bytes().to_vec());
    for (n, d) in extra {
        files.files.insert(n.to_string(), d.clone());
    }
    files
}

fn desc_err(desc: &str, extra: &[(&str, Vec<u8>)]) -> SourceError {
    let e = open_mem(&desc_files(desc, extra), "d.vmdk").unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("d.vmdk") || extra.iter().any(|(n, _)| e.to_string().contains(n)), "{e}");
    e
}

const HEAD: &str = "# Disk DescriptorFile\nversion=1\nCID=00000001\nparentCID=ffffffff\n";

#[test]
fn hostile_descriptors() {
    let flat = vec![0u8; 8192];
    let msg = |e: SourceError| e.to_string();
    assert!(msg(desc_err(&format!("{HEAD}createType=\"monolithicFlat\"\n"), &[])).contains("no extents"));
    assert!(msg(desc_err(&format!("{HEAD}RW 16 FLAT \"f\" 0\n"), &[("f", flat.clone())])).contains("createType"));
    assert!(msg(desc_err(&format!("{HEAD}createType=\"seSparse\"\nRW 16 SESPARSE \"f\"\n"), &[])).contains("SEsparse"));
    assert!(msg(desc_err(&format!("{HEAD}createType=\"vmfs\"\nRW 16 SESPARSE \"f\"\n"), &[])).contains("SEsparse"));
    assert!(msg(desc_err(&format!("{HEAD}createType=\"vmfsRawDeviceMap\"\nRW 16 VMFSRDM \"f\"\n"), &[]))
        .contains("raw device"));
    assert!(msg(desc_err(&format!("{HEAD}createType=\"vmfs\"\nNOACCESS 16 VMFS \"f\"\n"), &[("f", flat.clone())]))
        .contains("NOACCESS"));
    let e = desc_err(&format!("{HEAD}createType=\"vmfs\"\nRW 17 VMFS \"f\"\n"), &[("f", flat.clone())]);
    assert!(msg(e).contains("truncated"));
    let e = desc_err(&format!("{HEAD}createType=\"vmfs\"\nRW 16 VMFS \"f\" 1\n"), &[("f", flat.clone())]);
    assert!(msg(e).contains("truncated"));
    let e = desc_err(
        &format!("{HEAD}createType=\"vmfs\"\nRW 16 VMFS \"f\" 18446744073709551615\n"),
        &[("f", flat.clone())],
    );
    assert!(msg(e).contains("truncated"));
    let e =
        desc_err(&format!("{HEAD}createType=\"custom\"\nRW 18014398509481983 ZERO\nRW 18014398509481983 ZERO\n"), &[]);
    assert!(msg(e).contains("limit"));
    let e = desc_err(&format!("{HEAD}createType=\"vmfs\"\nRW 16 VMFS \"missing\"\n"), &[]);
    assert!(msg(e).contains("missing"));
    // A sparse extent smaller than the descriptor says.
    let e =
        desc_err(&format!("{HEAD}createType=\"twoGbMaxExtentSparse\"\nRW 2000 SPARSE \"s\"\n"), &[("s", sparse(1000))]);
    assert!(msg(e).contains("1000 sectors"));
    // A flat file named as a sparse extent.
    let e = desc_err(&format!("{HEAD}createType=\"twoGbMaxExtentSparse\"\nRW 16 SPARSE \"f\"\n"), &[("f", flat)]);
    assert!(msg(e).contains("magic"));
    // Garbage lines.
    let e = desc_err(&format!("{HEAD}createType=\"vmfs\"\nRW 16 VMFS \"f\" 0 1\n"), &[]);
    assert!(msg(e).contains("line 6"));
    let e = desc_err(&format!("{HEAD}createType=\"vmfs\"\nhello\n"), &[]);
    assert!(msg(e).contains("line 6"));
    // Too big to be a descriptor.
    let mut big = format!("{HEAD}createType=\"vmfs\"\n").into_bytes();
    big.resize(2 << 20, b'#');
    let e = open_one("big.vmdk", big).unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    // A parent hint with parentCID=ffffffff.
    let parent = format!("{HEAD}createType=\"vmfs\"\nRW 1 ZERO\n");
    let e = desc_err(
        &format!("{HEAD}createType=\"vmfs\"\nparentFileNameHint=\"p\"\nRW 1 ZERO\n"),
        &[("p", parent.into_bytes())],
    );
    assert!(msg(e).contains("parentCID=ffffffff"));
}

#[test]
fn many_extents_naming_one_file_open_it_once() {
    let mut desc = format!("{HEAD}createType=\"custom\"\n");
    for i in 0..5000 {
        desc.push_str(&format!("RW 1 FLAT \"f\" {}\n", i % 16));
    }
    let mut f = vec![0u8; 8192];
    f.iter_mut().enumerate().for_each(|(i, b)| *b = (i / 512) as u8);
    let src = open_mem(&desc_files(&desc, &[("f", f)]), "d.vmdk").unwrap();
    assert_eq!(src.size(), 5000 * 512);
    let mut buf = vec![0u8; 5000 * 512];
    src.read_at(0, &mut buf).unwrap();
    for i in 0..5000 {
        assert!(buf[i * 512..(i + 1) * 512].iter().all(|&b| b == (i % 16) as u8));
    }
}
