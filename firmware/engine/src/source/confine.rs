//! Where local sources may be read from.
//!
//! The daemon reads local files only under its configured source roots (by default `/srv`),
//! and never inside its own data directory (its keys, configuration and store), except a
//! root nested inside it (the dev mode's sample disks). A block device under `/dev` is a
//! whole disk and always allowed. The rule applies to every file a source opens: the image
//! itself, its backing and data files, a VM folder's disks. Paths are compared after
//! resolving symbolic links and `..`, so neither escapes a root. The command line, run by
//! whoever has a shell, is not confined ([`LocalConfinement::default`]).

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use blocksource::SourceError;

/// Allowed and denied directories for local files; both empty: anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalConfinement {
    /// Directories (real paths) under which local files may be read.
    pub allow: Vec<PathBuf>,
    /// Directories (real paths) never read from, unless through an allowed directory inside them.
    pub deny: Vec<PathBuf>,
}

impl LocalConfinement {
    pub fn is_unconfined(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// `path` if it may be read: its real path when confined, unchanged when not.
    pub fn check(&self, path: &Path) -> Result<PathBuf, SourceError> {
        if self.is_unconfined() {
            return Ok(path.to_path_buf());
        }
        let real = std::fs::canonicalize(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::NotFound { path: path.to_path_buf() },
            std::io::ErrorKind::PermissionDenied => SourceError::PermissionDenied { path: path.to_path_buf() },
            _ => SourceError::Io { what: path.display().to_string(), source: e },
        })?;
        let block_device =
            real.starts_with("/dev") && std::fs::metadata(&real).is_ok_and(|m| m.file_type().is_block_device());
        let under_allowed = self.allow.iter().any(|r| real.starts_with(r));
        let denied = self
            .deny
            .iter()
            .any(|d| real.starts_with(d) && !self.allow.iter().any(|r| r.starts_with(d) && real.starts_with(r)));
        if denied {
            return Err(SourceError::Confined {
                path: path.to_path_buf(),
                detail: "inside the appliance's own data directory, which holds its keys and configuration; sources are never read from there".into(),
            });
        }
        if !(under_allowed || block_device) {
            let roots: Vec<String> = self.allow.iter().map(|r| r.display().to_string()).collect();
            return Err(SourceError::Confined {
                path: path.to_path_buf(),
                detail: format!(
                    "outside the directories local sources may be read from ({}); put the image there, or start `rackvault serve` with --source-root <dir>",
                    if roots.is_empty() { "none configured".to_string() } else { roots.join(", ") }
                ),
            });
        }
        Ok(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_under_an_allowed_root_and_outside_a_denied_one_are_read() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        for dir in ["srv", "data/samples", "data/state", "other"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for f in ["srv/a.raw", "data/samples/s.raw", "data/state/key", "other/b.raw"] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink(root.join("data/state/key"), root.join("srv/link.raw")).unwrap();
        let c = LocalConfinement {
            allow: vec![root.join("srv"), root.join("data/samples"), root.clone()],
            deny: vec![root.join("data")],
        };
        assert!(c.check(&root.join("srv/a.raw")).is_ok());
        assert!(c.check(&root.join("data/samples/s.raw")).is_ok(), "an allowed root inside the denied one");
        assert!(c.check(&root.join("other/b.raw")).is_ok(), "under the broad root");
        for bad in ["data/state/key", "srv/link.raw", "srv/../data/state/key"] {
            let e = c.check(&root.join(bad)).unwrap_err();
            assert!(matches!(e, SourceError::Confined { .. }), "{bad}: {e}");
        }
        let narrow = LocalConfinement { allow: vec![root.join("srv")], deny: vec![] };
        let e = narrow.check(&root.join("other/b.raw")).unwrap_err().to_string();
        assert!(e.contains("--source-root") && e.contains("srv"), "{e}");
        assert!(matches!(
            narrow.check(Path::new("/etc/shadow")),
            Err(SourceError::Confined { .. } | SourceError::PermissionDenied { .. })
        ));
        assert!(LocalConfinement::default().check(Path::new("/etc/hostname")).is_ok(), "the CLI is not confined");
    }
}
