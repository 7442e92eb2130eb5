//! VM folders: a directory holding a VM's `.vmx` and its disks, on the local filesystem or
//! an NFS datastore, and the opener that resolves the files images name inside it.
//!
//! A [`Datastore`] is "a tree of files we can list and read", addressed by '/'-separated
//! paths. Images that name other files (VMDK parents and extents, qcow2 backing files)
//! get those files from the same datastore through [`DatastoreOpener`]. VMware records
//! some names as absolute ESXi paths (`/vmfs/volumes/<uuid>/vm/vm.vmdk`) that mean nothing
//! to us; such a name that does not exist in the datastore is looked up by its file name in
//! the naming image's own folder, which is where VMware keeps a VM's disks.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use blocksource::file::FileSource;
use blocksource::{resolve_backing_path, BackingOpener, BlockSource, SourceError};

use super::{open_image, OpenedSource};
use crate::vmx::{self, MAX_VMX_BYTES};
use crate::EngineError;

/// Configuration files captured with a VM folder, by extension: the VM definition, its
/// extended config, the firmware's variable store (EFI VMs do not boot without it) and the
/// snapshot database.
const CONFIG_EXTENSIONS: &[&str] = &[".vmx", ".vmxf", ".nvram", ".vmsd"];

/// A tree of files that can be listed and read.
pub(crate) trait Datastore: Send + Sync + fmt::Debug {
    /// How `path` is shown in logs and restore-point metadata (no secrets).
    fn describe(&self, path: &str) -> String;
    /// The inverse of [`describe`](Datastore::describe), for images opened from here.
    fn path_of(&self, describe: &str) -> Option<String>;
    /// Names in a directory.
    fn list_dir(&self, dir: &str) -> Result<Vec<String>, SourceError>;
    /// The raw bytes of a file.
    fn open_raw(&self, path: &str) -> Result<Box<dyn BlockSource>, SourceError>;
}

/// The local filesystem; paths are absolute or relative to the working directory. Every
/// file and folder opened is held to `confine`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalDatastore {
    pub confine: super::LocalConfinement,
}

impl Datastore for LocalDatastore {
    fn describe(&self, path: &str) -> String {
        path.to_string()
    }
    fn path_of(&self, describe: &str) -> Option<String> {
        Some(describe.to_string())
    }
    fn list_dir(&self, dir: &str) -> Result<Vec<String>, SourceError> {
        let io = |source| SourceError::Io { what: dir.to_string(), source };
        let real = self.confine.check(Path::new(dir))?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(real).map_err(io)? {
            names.push(entry.map_err(io)?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn open_raw(&self, path: &str) -> Result<Box<dyn BlockSource>, SourceError> {
        let real = self.confine.check(Path::new(path))?;
        Ok(Box::new(FileSource::open(&real)?))
    }
}

/// Resolves names found inside images against the datastore the image came from.
#[derive(Debug)]
pub(crate) struct DatastoreOpener<'a> {
    pub ds: &'a dyn Datastore,
}

impl BackingOpener for DatastoreOpener<'_> {
    fn open_backing(&self, name: &str, child_describe: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        let child = self.ds.path_of(child_describe).ok_or_else(|| SourceError::Unsupported {
            what: child_describe.to_string(),
            detail: format!("cannot tell where {name:?} lives relative to this image"),
        })?;
        // Refuses protocol names (nbd:, json:, ...) and joins relative names to the child's folder.
        let joined = resolve_backing_path(name, &child)?;
        let path = normalize(&joined);
        match self.ds.open_raw(&path) {
            Ok(raw) => Ok((raw, self.ds.describe(&path))),
            Err(first) if Path::new(name).is_absolute() => {
                // An ESXi path such as /vmfs/volumes/<uuid>/vm/base.vmdk: look next to the child.
                let base = Path::new(name).file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
                let sibling = normalize(&Path::new(&child).parent().unwrap_or(Path::new("/")).join(&base));
                match self.ds.open_raw(&sibling) {
                    Ok(raw) => Ok((raw, self.ds.describe(&sibling))),
                    Err(_) => Err(first),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Lexically remove `.` and `..` components, keeping the path inside its root.
fn normalize(p: &Path) -> String {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.display().to_string()
}

/// Read all of a small file.
pub(crate) fn read_small(ds: &dyn Datastore, path: &str, limit: u64) -> Result<Vec<u8>, EngineError> {
    let raw = ds.open_raw(path)?;
    if raw.size() > limit {
        return Err(EngineError::Invalid(format!(
            "{}: {} bytes is too large for a configuration file (limit {limit})",
            ds.describe(path),
            raw.size()
        )));
    }
    let mut buf = vec![0u8; raw.size() as usize];
    if !buf.is_empty() {
        raw.read_at(0, &mut buf)?;
    }
    Ok(buf)
}

/// Whether `path` names a VM's configuration file (`.vmx`, in any case): a source naming one
/// means the VM folder it lives in.
pub(crate) fn is_vmx(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".vmx")
}

/// The folder a `.vmx` path lives in, and the file's name.
pub(crate) fn split_vmx(path: &str) -> (String, String) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (if dir.is_empty() { "/".to_string() } else { dir.to_string() }, name.to_string()),
        None => (".".to_string(), path.to_string()),
    }
}

/// Open a VM folder: its `.vmx` (the one named by `vmx`, else the only one in the folder),
/// the configuration files next to it, and every disk the `.vmx` references, each decoded from
/// its own format.
pub(crate) fn open_vm_folder(ds: &dyn Datastore, dir: &str, vmx: Option<&str>) -> Result<OpenedSource, EngineError> {
    let dir = dir.trim_end_matches('/');
    let dir = if dir.is_empty() { "/" } else { dir };
    let join = |name: &str| if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
    let names = ds.list_dir(dir)?;
    let vmxs: Vec<&String> = match vmx {
        // Named by the source: that one, even beside others.
        Some(v) => names.iter().filter(|n| n.as_str() == v).collect(),
        None => names.iter().filter(|n| is_vmx(n)).collect(),
    };
    let vmx_name = match vmxs.as_slice() {
        [one] => (*one).clone(),
        [] if vmx.is_some() => {
            return Err(EngineError::Invalid(format!(
                "{}: no such file in {}; check the source path",
                ds.describe(&join(vmx.unwrap_or_default())),
                ds.describe(dir)
            )))
        }
        [] => {
            return Err(EngineError::Invalid(format!(
                "{}: no .vmx file in this folder; give a VM folder (with its .vmx) or the path of one disk image",
                ds.describe(dir)
            )))
        }
        many => {
            return Err(EngineError::Invalid(format!(
                "{}: {} .vmx files ({}); a VM folder holds one VM, give the disk images one by one",
                ds.describe(dir),
                many.len(),
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let vmx_text = read_small(ds, &join(&vmx_name), MAX_VMX_BYTES)?;
    let info = vmx::parse(&String::from_utf8_lossy(&vmx_text));
    if info.disks.is_empty() {
        return Err(EngineError::Invalid(format!(
            "{}: the VM has no virtual disks to back up (no present scsi/sata/ide/nvme disk with a .vmdk fileName)",
            ds.describe(&join(&vmx_name))
        )));
    }
    let mut files = Vec::new();
    for name in &names {
        let lower = name.to_ascii_lowercase();
        if CONFIG_EXTENSIONS.iter().any(|ext| lower.ends_with(ext)) {
            files.push((name.clone(), read_small(ds, &join(name), store::MAX_POINT_FILE as u64)?));
        }
    }
    let opener = DatastoreOpener { ds };
    let vmx_path = join(&vmx_name);
    let mut disks = Vec::with_capacity(info.disks.len());
    for disk in &info.disks {
        let (raw, _) = opener.open_backing(&disk.file_name, &ds.describe(&vmx_path)).map_err(|e| {
            EngineError::Invalid(format!("disk {} ({}) of {}: {e}", disk.node, disk.file_name, ds.describe(&vmx_path)))
        })?;
        disks.push((disk.node.clone(), open_image(raw, &opener)?));
    }
    Ok(OpenedSource { describe: ds.describe(dir), disks, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_inside_the_root() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), "/a/c/d");
        assert_eq!(normalize(Path::new("/../../etc")), "/etc");
    }
}
