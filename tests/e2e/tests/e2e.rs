//! End-to-end tests of rackvault: the real binary on real image files, real `qemu-img`, real
//! stores on disk (and on a small tmpfs), `kill -9` in the middle of backups.
//!
//! Build the binary first: `cargo build --release -p rackvault && cargo test -p e2e --release`
//! (or both without `--release`). `RACKVAULT_BIN` overrides which binary runs. The full-disk
//! test mounts a tmpfs and so needs root; `RACKVAULT_TEST_NO_ROOT=1` skips it instead of
//! failing. `CRASH_SEED` replays a crash loop; `E2E_KEEP=1` keeps the scratch directories.

#[path = "e2e/bad_input.rs"]
mod bad_input;
#[path = "e2e/blockdev.rs"]
mod blockdev;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/concurrency.rs"]
mod concurrency;
#[path = "e2e/crash.rs"]
mod crash;
#[path = "e2e/daemon.rs"]
mod daemon;
#[path = "e2e/encryption.rs"]
mod encryption;
#[path = "e2e/hardening.rs"]
mod hardening;
#[path = "e2e/ingest.rs"]
mod ingest;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/qcow2_sources.rs"]
mod qcow2_sources;
#[path = "e2e/replication.rs"]
mod replication;
#[path = "e2e/replication_s3.rs"]
mod replication_s3;
#[path = "e2e/roundtrip.rs"]
mod roundtrip;
#[path = "e2e/tape.rs"]
mod tape;
