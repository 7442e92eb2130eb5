//! Turning a source argument into the disks to back up.
//!
//! A source is one of:
//! - a local path or `file://` URL: a disk image, a block device, or a VM folder (a
//!   directory holding a `.vmx`, or the `.vmx` itself);
//! - `nfs://host[:port]/export/path/disk.vmdk`: one disk image read over our own NFSv3
//!   client, no kernel mount ("Direct NFS");
//! - `nfs://host[:port]/export/vmfolder/` (trailing slash) or
//!   `nfs://host[:port]/export/vmfolder/vm.vmx`: a whole VM folder on an NFS datastore;
//! - `iscsi://[user[%secret]@]host[:port]/<iqn>/<lun>`: a LUN read over our own iSCSI
//!   initiator ("Direct SAN").
//!
//! Whatever carries the bytes, the image format is detected from the content (qcow2,
//! VMDK, VHDX, VHD, else raw; every other format qemu-img knows is refused, see `detect.rs`),
//! never from the name, and files an image names (backing files,
//! extents, parents) are opened from the same place as the image itself.
//!
//! Secrets (CHAP secrets) never appear in `describe()` strings, errors or restore-point
//! metadata: [`SourceSpec`]'s `Debug` and every URL we print leave them out.

mod confine;
mod detect;
mod folder;
mod iscsi;
mod nfs;
mod url;

use std::path::{Path, PathBuf};

use blocksource::file::FileSource;
use blocksource::{BackingOpener, BlockSource, LocalBackingOpener, SourceError};

use crate::EngineError;

pub use self::confine::LocalConfinement;
pub use self::detect::detect_format;
pub use self::iscsi::IscsiSpec;
pub use self::nfs::NfsSpec;
pub use self::url::Secret;

/// Credentials and options that do not belong in a URL: the binary fills them from its
/// config or from files given on the command line.
#[derive(Debug, Clone, Default)]
pub struct SourceSecrets {
    /// iSCSI CHAP user and secret, used when the URL has none.
    pub chap: Option<(String, Secret)>,
    /// iSCSI mutual CHAP: the user and secret the target must prove.
    pub mutual_chap: Option<(String, Secret)>,
    /// Where local files may be read from (the daemon's source roots); default: anywhere.
    pub local: LocalConfinement,
}

/// A parsed source argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Local(PathBuf),
    Nfs(NfsSpec),
    Iscsi(IscsiSpec),
}

impl SourceSpec {
    pub fn parse(spec: &str) -> Result<SourceSpec, EngineError> {
        if let Some(rest) = spec.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(EngineError::Invalid(format!(
                    "{spec:?}: a file:// URL needs an absolute path, e.g. file:///var/lib/images/vm.qcow2"
                )));
            }
            return Ok(SourceSpec::Local(PathBuf::from(rest)));
        }
        if spec.starts_with("nfs://") {
            return Ok(SourceSpec::Nfs(NfsSpec::parse(spec)?));
        }
        if spec.starts_with("iscsi://") {
            return Ok(SourceSpec::Iscsi(IscsiSpec::parse(spec)?));
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            return Err(EngineError::Invalid(format!(
                "source scheme {scheme}:// is not supported; give a local path, a file://, nfs:// or iscsi:// URL"
            )));
        }
        if spec.is_empty() {
            return Err(EngineError::Invalid("empty source: give the path of a disk image".into()));
        }
        Ok(SourceSpec::Local(PathBuf::from(spec)))
    }

    /// The source as it may be shown and recorded: no secrets.
    pub fn display(&self) -> String {
        match self {
            SourceSpec::Local(p) => p.display().to_string(),
            SourceSpec::Nfs(n) => n.url(),
            SourceSpec::Iscsi(i) => i.url(),
        }
    }
}

/// Everything one source yields: its disks (one for an image or LUN, several for a VM
/// folder) and the configuration files captured with them.
#[derive(Debug)]
pub struct OpenedSource {
    /// What was opened, for logs (no secrets).
    pub describe: String,
    /// `(label, disk)` in the order they are backed up.
    pub disks: Vec<(String, Box<dyn BlockSource>)>,
    /// `(file name, content)`: the VM's configuration (`.vmx`, `.nvram`, ...).
    pub files: Vec<(String, Vec<u8>)>,
}

/// Open a source argument as one disk, detecting its format from its content. A VM folder
/// is refused here (it has several disks); use [`open_source_all`].
pub fn open_source(spec: &str) -> Result<Box<dyn BlockSource>, EngineError> {
    let mut opened = open_source_all(spec, &SourceSecrets::default())?;
    if opened.disks.len() != 1 || !opened.files.is_empty() {
        return Err(EngineError::Invalid(format!(
            "{} is a VM folder with {} disk(s), not a single disk image",
            opened.describe,
            opened.disks.len()
        )));
    }
    Ok(opened.disks.pop().expect("one disk").1)
}

/// Open a source argument: a disk image, a LUN, or a VM folder with all its disks.
pub fn open_source_all(spec: &str, secrets: &SourceSecrets) -> Result<OpenedSource, EngineError> {
    match SourceSpec::parse(spec)? {
        SourceSpec::Local(path) => {
            let confine = &secrets.local;
            let path = confine.check(&path)?;
            let store = folder::LocalDatastore { confine: confine.clone() };
            if path.is_dir() {
                return folder::open_vm_folder(&store, &path.display().to_string(), None);
            }
            // A VM's .vmx stands for its folder: its disks are what it references. (Read as a
            // disk, it would be stored as a tiny "raw" disk holding the configuration text.)
            let shown = path.display().to_string();
            if folder::is_vmx(&shown) && path.is_file() {
                let (dir, name) = folder::split_vmx(&shown);
                return folder::open_vm_folder(&store, &dir, Some(&name));
            }
            let disk = open_local(&path, confine)?;
            Ok(OpenedSource {
                describe: path.display().to_string(),
                disks: vec![("disk0".into(), disk)],
                files: vec![],
            })
        }
        SourceSpec::Nfs(nfs) => nfs::open(&nfs),
        SourceSpec::Iscsi(iscsi) => {
            let disk = iscsi::open(&iscsi, secrets)?;
            Ok(OpenedSource { describe: iscsi.url(), disks: vec![("disk0".into(), disk)], files: vec![] })
        }
    }
}

/// What [`probe`] found: a "test connection" for a source, without backing anything up.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeReport {
    /// An iSCSI portal: the targets SendTargets discovery lists.
    IscsiTargets { portal: String, targets: Vec<ProbeTarget> },
    /// An NFS server: its exports.
    NfsExports { server: String, exports: Vec<String> },
    /// A disk, a LUN or a VM folder, opened and decoded as a backup would.
    Disks { source: String, disks: Vec<ProbeDisk>, files: Vec<String> },
}

/// One target of an iSCSI portal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeTarget {
    pub name: String,
    pub addresses: Vec<String>,
}

/// One disk as a backup would read it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeDisk {
    pub label: String,
    pub source: String,
    pub format: String,
    pub size: u64,
}

/// Check that a source can be reached and read: `iscsi://host[:port]` lists the portal's
/// targets, `nfs://host[:port]` the server's exports; anything else is opened (logged in,
/// mounted, image headers decoded) and its disks described.
pub fn probe(spec: &str, secrets: &SourceSecrets) -> Result<ProbeReport, EngineError> {
    if let Some(rest) = spec.strip_prefix("iscsi://") {
        if !rest.trim_end_matches('/').contains('/') {
            let u = url::SourceUrl::parse(spec, "iscsi")?;
            let portal = iscsi::IscsiSpec::portal_of(&u.host, u.port);
            let chap = match (&u.user, &u.secret) {
                (Some(user), Some(secret)) => Some((user.clone(), secret.clone())),
                _ => secrets.chap.clone(),
            };
            let chap = chap.map(|c| iscsi::chap(&c));
            let targets = ::iscsi::discover(&portal, iscsi::DEFAULT_INITIATOR, chap.as_ref()).map_err(|e| match e {
                ::iscsi::IscsiError::Connect { source, .. } => {
                    SourceError::Io { what: format!("iscsi://{portal}: cannot connect"), source }
                }
                e => {
                    SourceError::Io { what: format!("iscsi://{portal}"), source: std::io::Error::other(e.to_string()) }
                }
            })?;
            let targets = targets.into_iter().map(|t| ProbeTarget { name: t.name, addresses: t.addresses }).collect();
            return Ok(ProbeReport::IscsiTargets { portal, targets });
        }
    }
    if let Some(rest) = spec.strip_prefix("nfs://") {
        let before_query = rest.split('?').next().unwrap_or(rest);
        if !before_query.trim_end_matches('/').contains('/') {
            let (server, exports) = nfs::exports_of(spec)?;
            return Ok(ProbeReport::NfsExports { server, exports });
        }
    }
    let opened = open_source_all(spec, secrets)?;
    Ok(ProbeReport::Disks {
        source: opened.describe,
        disks: opened
            .disks
            .iter()
            .map(|(label, d)| ProbeDisk {
                label: label.clone(),
                source: d.describe(),
                format: d.format().to_string(),
                size: d.size(),
            })
            .collect(),
        files: opened.files.into_iter().map(|(name, _)| name).collect(),
    })
}

fn open_local(path: &Path, confine: &LocalConfinement) -> Result<Box<dyn BlockSource>, SourceError> {
    let file = FileSource::open(path)?;
    if confine.is_unconfined() {
        return open_image(Box::new(file), &LocalBackingOpener);
    }
    open_image(Box::new(file), &ConfinedOpener { confine })
}

/// Backing and data files of a confined local image: resolved as [`LocalBackingOpener`]
/// does, then held to the same confinement as the image.
struct ConfinedOpener<'a> {
    confine: &'a LocalConfinement,
}

impl BackingOpener for ConfinedOpener<'_> {
    fn open_backing(&self, name: &str, child_describe: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        let path = blocksource::resolve_backing_path(name, child_describe)?;
        let real = self.confine.check(&path)?;
        let shown = real.display().to_string();
        Ok((Box::new(FileSource::open(&real)?), shown))
    }
}

/// Decode the image in `container` (raw bytes of a file or LUN), whatever its format.
/// Files it names are opened through `opener`.
pub fn open_image(
    container: Box<dyn BlockSource>,
    opener: &dyn BackingOpener,
) -> Result<Box<dyn BlockSource>, SourceError> {
    Ok(match detect_format(container.as_ref())? {
        "qcow2" => Box::new(qcow2::Qcow2Source::open(container, opener)?),
        "vhdx" => Box::new(vhdx::VhdxSource::open(container, opener)?),
        "vmdk" => Box::new(vmdk::VmdkSource::open(container, opener)?),
        "vhd" => Box::new(vhd::VhdSource::open(container)?),
        "raw" => container,
        other => {
            return Err(detect::refusal(other, &container.describe()).unwrap_or_else(|| SourceError::Unsupported {
                what: container.describe(),
                detail: format!("image format {other:?}"),
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_urls() {
        assert_eq!(SourceSpec::parse("/a/b.img").unwrap(), SourceSpec::Local("/a/b.img".into()));
        assert_eq!(SourceSpec::parse("file:///a/b.img").unwrap(), SourceSpec::Local("/a/b.img".into()));
        assert!(SourceSpec::parse("file://relative").is_err());
        let e = SourceSpec::parse("gopher://x/y").unwrap_err().to_string();
        assert!(e.contains("gopher://"), "{e}");
        assert!(matches!(SourceSpec::parse("nfs://h/export/d.img").unwrap(), SourceSpec::Nfs(_)));
        assert!(matches!(SourceSpec::parse("iscsi://h/iqn.2024-01.x:y/1").unwrap(), SourceSpec::Iscsi(_)));
    }
}
