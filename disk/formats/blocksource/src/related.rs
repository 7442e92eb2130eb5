//! Opening the files an image names: qcow2 backing files, VMDK extents and parent disks,
//! VHDX parents.
//!
//! Image readers never open files themselves. They ask a [`BackingOpener`], which decides
//! where a name points (the local filesystem, the same NFS export, ...) and may refuse it.
//! That keeps every format reader independent of where its container bytes live.

use std::path::{Path, PathBuf};

use crate::{BlockSource, SourceError};

/// Opens the files an image header names (backing files, extents, parents).
pub trait BackingOpener {
    /// Open the backing file named in an image header. `name` is the raw string from the
    /// header, `child_describe` is the describe() of the image that names it. Returns the raw
    /// container bytes of the backing file, and a stable identity (e.g. canonical path) used
    /// for loop detection.
    fn open_backing(&self, name: &str, child_describe: &str) -> Result<(Box<dyn BlockSource>, String), SourceError>;
}

/// Opens backing files on the local filesystem: a relative name is resolved against the
/// directory of the child image (whose `describe()` is its path), as QEMU does.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalBackingOpener;

impl BackingOpener for LocalBackingOpener {
    fn open_backing(&self, name: &str, child_describe: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        let path = resolve_backing_path(name, child_describe)?;
        let canonical = std::fs::canonicalize(&path).map_err(|source| SourceError::Io {
            what: format!("{child_describe}: backing file {name:?} (looked for {})", path.display()),
            source,
        })?;
        let source = open_local_file(&canonical)?;
        Ok((source, canonical.display().to_string()))
    }
}

/// The one place that opens a local file as raw container bytes, so the file backend can be
/// swapped in one spot.
fn open_local_file(path: &Path) -> Result<Box<dyn BlockSource>, SourceError> {
    Ok(Box::new(crate::file::FileSource::open(path)?))
}

/// Where a local backing file named `name` in the image described by `child_describe` lives:
/// absolute names as they are, relative ones against the child's directory. A `file:` prefix
/// is stripped; QEMU's network protocols and `json:` specifications are refused, since they
/// are not local files.
pub fn resolve_backing_path(name: &str, child_describe: &str) -> Result<PathBuf, SourceError> {
    const PROTOCOLS: &[&str] = &[
        "json",
        "nbd",
        "nbds",
        "http",
        "https",
        "ftp",
        "ftps",
        "ssh",
        "iscsi",
        "iser",
        "gluster",
        "rbd",
        "nfs",
        "sheepdog",
        "vxhs",
        "null-co",
        "null-aio",
        "blkdebug",
        "blkverify",
        "host_device",
        "host_cdrom",
    ];
    let mut name = name;
    if let Some((proto, rest)) = name.split_once(':') {
        let base = proto.split('+').next().unwrap_or(proto).to_ascii_lowercase();
        if base == "file" {
            name = rest;
        } else if PROTOCOLS.contains(&base.as_str()) {
            return Err(SourceError::Unsupported {
                what: child_describe.to_string(),
                detail: format!("backing file {name:?} is not a local file (protocol {proto:?})"),
            });
        }
    }
    if name.is_empty() {
        return Err(SourceError::Unsupported {
            what: child_describe.to_string(),
            detail: "backing file name is empty".to_string(),
        });
    }
    let p = Path::new(name);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(child_describe).parent().unwrap_or(Path::new("")).join(p)
    })
}
