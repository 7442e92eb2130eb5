//! Running `qemu-img` and `qemu-io` from tests: the image crates compare their readers with
//! what QEMU makes and reads.
//!
//! The `try_` functions return a [`CommandFailed`]; the others panic with the command line
//! and its output, which is what a test wants to show.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A command that could not be run or exited unsuccessfully.
#[derive(Debug)]
pub struct CommandFailed {
    /// The command line, as `Command`'s `Debug` shows it.
    pub command: String,
    /// Why: the spawn error, or the exit status with stdout and stderr.
    pub detail: String,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.command, self.detail)
    }
}

impl std::error::Error for CommandFailed {}

/// The full path of `tool` found in `PATH`, if it is there and executable.
pub fn which(tool: impl AsRef<OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let tool = tool.as_ref();
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Whether qemu-img is installed; if not, says that the calling test is skipped (CI
/// installs it).
pub fn have_qemu_img() -> bool {
    let ok = which("qemu-img").is_some();
    if !ok {
        eprintln!("skipped: qemu-img is not installed (apt-get install qemu-utils)");
    }
    ok
}

/// Whether qemu-io is installed (it comes with qemu-img in most distributions, but not all).
pub fn have_qemu_io() -> bool {
    which("qemu-io").is_some()
}

/// Run `cmd` to completion; an error unless it ran and exited with success.
pub fn try_run(cmd: &mut Command) -> Result<Output, CommandFailed> {
    let command = format!("{cmd:?}");
    let failed = |detail: String| CommandFailed { command: command.clone(), detail };
    let out = cmd.output().map_err(|e| failed(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// Run `cmd` to completion; panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Run qemu-img with `args`; its stdout.
pub fn try_qemu_img(args: &[&str]) -> Result<String, CommandFailed> {
    let out = try_run(Command::new("qemu-img").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run qemu-img with `args`; its stdout. Panics with its output if it fails.
pub fn qemu_img(args: &[&str]) -> String {
    try_qemu_img(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Run qemu-io on the image at `path` (of `format`) with each of `cmds` as a `-c` command.
/// Panics with its output if it fails.
pub fn qemu_io(format: &str, path: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg(format);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(path);
    run(&mut c);
}

/// The guest-visible bytes of the image at `path` according to QEMU (`qemu-img convert -O
/// raw`, through a file next to it that is removed again). `format` is passed as `-f`; `None`
/// lets QEMU probe, which it refuses for formats whose first sector is guest data (fixed VHD).
pub fn qemu_raw(path: &Path, format: Option<&str>) -> Vec<u8> {
    let out = path.with_extension("qemu-raw");
    let mut args = vec!["convert"];
    if let Some(f) = format {
        args.extend(["-f", f]);
    }
    args.extend(["-O", "raw", s(path), s(&out)]);
    qemu_img(&args);
    let data = std::fs::read(&out).unwrap_or_else(|e| panic!("cannot read {}: {e}", out.display()));
    std::fs::remove_file(&out).unwrap_or_else(|e| panic!("cannot remove {}: {e}", out.display()));
    data
}

/// A path as a command argument; panics if it is not UTF-8 (test paths always are).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_else(|| panic!("path is not UTF-8: {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("no-such-tool-for-testkit").is_none());
    }

    #[test]
    fn a_failing_command_says_what_failed() {
        let e = try_run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"sh\"") && msg.contains("oops") && msg.contains('3'), "{msg}");
        let e = try_run(&mut Command::new("no-such-tool-for-testkit")).unwrap_err();
        assert!(e.to_string().contains("cannot run it"), "{e}");
    }
}
