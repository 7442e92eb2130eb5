//! A deterministic mutation loop for the parsers of untrusted bytes: corrupt a valid input at
//! random, again and again, and hand each corrupted copy to the parser, which must never
//! panic, hang or allocate wildly (errors are fine).
//!
//! [`flip_loop`] is the loop (seeded [`Rng`], counts in a [`Tally`], a time limit); the
//! caller brings the mutation, which knows where the format keeps its metadata, and the
//! exercise, which opens and reads (for a `BlockSource`, `image::exercise` with the `image`
//! feature). [`flip_in_windows`] and [`maybe_truncate`] are mutations most formats can use.

use std::time::{Duration, Instant};

use crate::Rng;

/// How far the corrupted inputs got, to check that the loop reaches past the first checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Inputs that opened.
    pub opened: usize,
    /// Of those, inputs whose allocation map could be read.
    pub mapped: usize,
    /// Of those, inputs whose first MiBs could be read.
    pub read: usize,
}

/// A loop that takes longer than this is a bug (a hang-like slowdown), not a slow machine.
pub const TIME_LIMIT: Duration = Duration::from_secs(120);

/// Run `iterations` rounds: clone `good`, `mutate` the copy, `exercise` it. The rounds replay
/// from `seed`; both closures draw from the same [`Rng`].
///
/// Prints the [`Tally`] under `name` and returns it, for the caller's own thresholds. Panics if
/// every corrupted input opened (the mutations found nothing the parser checks) or if the loop
/// took longer than [`TIME_LIMIT`].
pub fn flip_loop<T: Clone>(
    name: &str,
    good: &T,
    seed: u64,
    iterations: usize,
    mut mutate: impl FnMut(&mut T, &mut Rng),
    mut exercise: impl FnMut(T, &mut Rng, &mut Tally),
) -> Tally {
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut tally = Tally::default();
    for _ in 0..iterations {
        let mut d = good.clone();
        mutate(&mut d, &mut rng);
        exercise(d, &mut rng, &mut tally);
    }
    eprintln!("{name}: {iterations} corrupted inputs: {tally:?}");
    assert!(tally.opened < iterations, "{name}: no corruption was detected at all: {tally:?}");
    let took = started.elapsed();
    assert!(took < TIME_LIMIT, "{name}: fuzz loop too slow: {took:?}");
    tally
}

/// Byte order of the integers [`flip_in_windows`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    Big,
    Little,
}

/// One to four changes, each at a random place of a random window `(offset, len)` of `d`
/// (the headers and tables worth hitting; every window must lie inside `d`): a random
/// integer of 1, 2, 4 or 8 bytes, a random byte or a flipped bit; or, one time in four, a bit
/// flipped anywhere in `d`.
pub fn flip_in_windows(d: &mut [u8], windows: &[(usize, usize)], endian: Endian, rng: &mut Rng) {
    assert!(!windows.is_empty(), "flip_in_windows needs at least one window");
    for _ in 0..1 + rng.below(4) {
        let (o, l) = windows[rng.below(windows.len() as u64) as usize];
        let at = o + rng.below(l as u64) as usize;
        match rng.below(4) {
            0 => {
                let v = match endian {
                    Endian::Big => rng.next().to_be_bytes(),
                    Endian::Little => rng.next().to_le_bytes(),
                };
                let w = [1usize, 2, 4, 8][rng.below(4) as usize].min(d.len() - at);
                d[at..at + w].copy_from_slice(&v[..w]);
            }
            1 => d[at] = rng.next() as u8,
            2 => d[at] ^= 1 << rng.below(8),
            _ => {
                let at = rng.below(d.len() as u64) as usize;
                d[at] ^= 1 << rng.below(8);
            }
        }
    }
}

/// The mutation for formats whose metadata carries checksums (VHD, VHDX):
/// [`flip_in_windows`], then two times in three `fix` the checksums, so that the parser gets
/// past them, and one time in ten [`maybe_truncate`].
pub fn checksummed_flips(
    windows: Vec<(usize, usize)>,
    endian: Endian,
    fix: impl Fn(&mut [u8]),
) -> impl FnMut(&mut Vec<u8>, &mut Rng) {
    move |d, rng| {
        flip_in_windows(d, &windows, endian, rng);
        if rng.below(3) != 0 {
            fix(d);
        }
        maybe_truncate(d, 10, rng);
    }
}

/// One time in `one_in`, cut `d` to a random length (possibly empty).
pub fn maybe_truncate(d: &mut Vec<u8>, one_in: u64, rng: &mut Rng) {
    if rng.below(one_in) == 0 {
        let len = rng.below(d.len() as u64 + 1) as usize;
        d.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_replays_and_counts() {
        let good = vec![0u8; 64];
        let run = || {
            let mut seen = Vec::new();
            let t = flip_loop(
                "test",
                &good,
                3,
                200,
                |d, rng| {
                    flip_in_windows(d, &[(0, 8), (32, 4)], Endian::Little, rng);
                    maybe_truncate(d, 10, rng);
                },
                |d, _, t| {
                    // "Opens" when the first byte is still intact.
                    if d.first() == Some(&0) {
                        t.opened += 1;
                    }
                    seen.push(d);
                },
            );
            (t, seen)
        };
        let (t, seen) = run();
        assert_eq!((t, &seen), (run().0, &run().1));
        assert!(t.opened > 0 && t.opened < 200, "{t:?}");
        assert!(seen.iter().any(|d| d.len() < 64), "no truncation in 200 rounds");
        assert!(seen.iter().any(|d| d.len() == 64 && d != &good), "no flip in 200 rounds");
    }

    #[test]
    #[should_panic(expected = "no corruption was detected")]
    fn a_loop_that_detects_nothing_fails() {
        flip_loop("nothing", &vec![1u8], 1, 10, |_, _| {}, |_, _, t| t.opened += 1);
    }
}
