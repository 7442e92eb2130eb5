//! `testkit`: the few helpers every crate's tests need, in one place (a dev-dependency only;
//! nothing in the firmware links it).
//!
//! - [`Rng`]: splitmix64, so that every random test replays from its seed.
//! - [`clear_immutable`] and [`ClearImmutable`]: a store opened with immutable packs gives
//!   them `chattr +i`, which even root cannot delete; tests clear it before their temporary
//!   directory is removed.
//! - [`is_root`]: tests that mount filesystems skip (or fail, where peers are required)
//!   without root.
//! - [`kill_child_test_after`]: the crash tests' child: this test binary re-run on one
//!   ignored test, killed with SIGKILL at a chosen moment.
//! - [`peers`]: the real peers' settings from `tests/peers/start-*.sh` (S3), skipping or
//!   failing (`RACKVAULT_REQUIRE_PEERS=1`) when one is not running; unique bucket names.
//!
//! For the disk-image crates (qcow2, vmdk, vhdx, vhd), which test their readers against QEMU:
//!
//! - [`qemu`]: `qemu-img` / `qemu-io` wrappers that panic (or return a [`qemu::CommandFailed`])
//!   with the command line and its output, and [`qemu::which`].
//! - [`raw`]: deterministic raw disk contents written as sparse files, the input of
//!   `qemu-img convert`.
//! - [`bytes`]: big- and little-endian field access for patching headers.
//! - [`mutate`]: a seeded mutation loop ([`mutate::flip_loop`]) for parsers of untrusted bytes.
//! - `image` (feature `image`, which adds a dependency on blocksource): reading a whole
//!   `BlockSource`, random-read and allocation-map checks, and the exercise of a corrupted
//!   image in the mutation loop.

use std::path::Path;

pub mod bytes;
#[cfg(feature = "image")]
pub mod image;
pub mod mutate;
pub mod peers;
pub mod qemu;
pub mod raw;

/// splitmix64: tiny, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The same as [`Rng::next_u64`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.next_u64()
    }

    /// Uniform in `0..n` (0 for n = 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// Clear the immutable attribute of everything below `dir` (`chattr -R -f -i`); errors are
/// ignored, as on a filesystem without the attribute there is nothing to clear.
pub fn clear_immutable(dir: &Path) {
    let _ = std::process::Command::new("chattr").arg("-R").arg("-f").arg("-i").arg(dir).status();
}

/// Clears the immutable attribute below a directory when dropped; declare it after the
/// temporary directory, so that it drops first.
#[derive(Debug)]
pub struct ClearImmutable<'a>(pub &'a Path);

impl Drop for ClearImmutable<'_> {
    fn drop(&mut self) {
        clear_immutable(self.0);
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Run the ignored test `name` of this test binary as a child process with `env` added, and
/// kill it with SIGKILL after `after` (a crash at that moment); returns once it is reaped.
pub fn kill_child_test_after(name: &str, env: &[(&str, String)], after: std::time::Duration) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the child test");
    std::thread::sleep(after);
    child.kill().expect("SIGKILL the child test");
    child.wait().expect("reap the child test");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_replays_from_its_seed() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        let mut buf = [0u8; 13];
        Rng::new(1).fill(&mut buf);
        assert!(buf.iter().any(|&x| x != 0));
        assert!((0..1000).all(|_| a.below(10) < 10));
    }
}
