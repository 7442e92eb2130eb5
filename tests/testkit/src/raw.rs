//! Deterministic raw disk contents, written as sparse files: the input that tests convert
//! with `qemu-img convert -f raw` and then compare a reader's output with.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Rng;

/// Contents of a disk of `size` bytes: random data (from `seed`) in each `(offset, len)` of
/// `ranges`, zeros elsewhere. With `text`, the first half of each range is that text repeated
/// instead, so that compressed formats really compress something.
pub fn contents(size: u64, ranges: &[(u64, u64)], seed: u64, text: Option<&[u8]>) -> Vec<u8> {
    let mut data = vec![0u8; usize::try_from(size).expect("disk fits in memory")];
    let mut rng = Rng::new(seed);
    for &(o, l) in ranges {
        let piece = &mut data[o as usize..(o + l) as usize];
        rng.fill(piece);
        if let Some(text) = text {
            let half = piece.len() / 2;
            for (b, t) in piece[..half].iter_mut().zip(text.iter().cycle()) {
                *b = *t;
            }
        }
    }
    data
}

/// Write `data` to a new file at `path`, sparse: only `ranges` are written, the
/// `zeros` ranges are written as explicit zeros (allocated, unlike holes), the rest are holes.
pub fn write_sparse(path: &Path, data: &[u8], ranges: &[(u64, u64)], zeros: &[(u64, u64)]) {
    let fail = |e: std::io::Error| -> ! { panic!("cannot write {}: {e}", path.display()) };
    let f = File::create(path).unwrap_or_else(|e| fail(e));
    f.set_len(data.len() as u64).unwrap_or_else(|e| fail(e));
    for &(o, l) in zeros {
        f.write_all_at(&vec![0u8; l as usize], o).unwrap_or_else(|e| fail(e));
    }
    for &(o, l) in ranges {
        f.write_all_at(&data[o as usize..(o + l) as usize], o).unwrap_or_else(|e| fail(e));
    }
}

/// Write a raw file of `size` bytes with random data in `ranges` and holes elsewhere; its
/// bytes.
pub fn make_raw(path: &Path, size: u64, ranges: &[(u64, u64)], seed: u64) -> Vec<u8> {
    let data = contents(size, ranges, seed, None);
    write_sparse(path, &data, ranges, &[]);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_replay_from_the_seed_and_stay_inside_the_ranges() {
        let ranges = [(10, 100), (1000, 50)];
        let a = contents(2048, &ranges, 5, Some(b"abc"));
        assert_eq!(a, contents(2048, &ranges, 5, Some(b"abc")));
        assert_eq!(&a[10..16], b"abcabc");
        assert!(a[..10].iter().chain(&a[110..1000]).chain(&a[1050..]).all(|&b| b == 0));
        assert!(a[60..110].iter().any(|&b| b != 0));
    }

    #[test]
    fn make_raw_writes_what_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.raw");
        let data = make_raw(&p, 1 << 20, &[(4096, 8192), (700_000, 3)], 9);
        assert_eq!(std::fs::read(&p).unwrap(), data);
    }
}
