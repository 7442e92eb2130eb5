//! `nfs://` sources: disk images and VM folders read with our own NFSv3 client.
//!
//! `nfs://host[:port]/export/path/disk.vmdk[?mountport=N&nfsport=N&uid=N&gid=N&connections=N]`
//! names one image; a trailing `/` names a VM folder, and so does a path to the VM's `.vmx`. A
//! directory named without the trailing slash is refused with an error that says to add it. The authority's port and `nfsport`
//! fix the NFS port and `mountport` the MOUNT port, so no portmapper is needed. The export
//! is the longest path the server exports that is a prefix of the URL's path.

use std::io;
use std::sync::Arc;

use blocksource::{BlockSource, Extent, ExtentKind, IoHints, ReadRequest, SourceError};
use nfs3::{ClientOptions, FileHandle, FileType, Nfs3Client, NfsError};

use super::folder::{is_vmx, open_vm_folder, split_vmx, Datastore, DatastoreOpener};
use super::url::{parse_num, SourceUrl};
use super::{open_image, OpenedSource};
use crate::EngineError;

/// A parsed `nfs://` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsSpec {
    pub host: String,
    pub nfs_port: Option<u16>,
    pub mount_port: Option<u16>,
    pub uid: u32,
    pub gid: u32,
    pub connections: Option<usize>,
    /// Full path on the server, export included, without a trailing '/'.
    pub path: String,
    /// The URL ended in '/': a VM folder.
    pub folder: bool,
}

impl NfsSpec {
    pub fn parse(spec: &str) -> Result<NfsSpec, EngineError> {
        let parsed = Self::parse_server(spec)?;
        if parsed.path.is_empty() {
            return Err(EngineError::Invalid(
                "nfs:// source URL: no export path; use nfs://host/export/path/to/disk".into(),
            ));
        }
        Ok(parsed)
    }

    /// Parse a URL that may name only the server (`nfs://host[:port][?options]`, an empty path).
    fn parse_server(spec: &str) -> Result<NfsSpec, EngineError> {
        let u = SourceUrl::parse(spec, "nfs")?;
        if u.user.is_some() {
            return Err(EngineError::Invalid(
                "nfs:// source URL: NFSv3 with AUTH_SYS has no user/password; use ?uid=N&gid=N instead".into(),
            ));
        }
        let mut nfs_port = u.port;
        let mut mount_port = None;
        let (mut uid, mut gid, mut connections) = (0, 0, None);
        for (k, v) in &u.query {
            match k.as_str() {
                "nfsport" => nfs_port = Some(parse_num("nfs", k, v)?),
                "mountport" => mount_port = Some(parse_num("nfs", k, v)?),
                "uid" => uid = parse_num("nfs", k, v)?,
                "gid" => gid = parse_num("nfs", k, v)?,
                "connections" => connections = Some(parse_num::<usize>("nfs", k, v)?.clamp(1, 16)),
                "version" if v == "3" => {}
                other => {
                    return Err(EngineError::Invalid(format!(
                        "nfs:// source URL: unknown option {other:?}; known: nfsport, mountport, uid, gid, connections"
                    )))
                }
            }
        }
        let folder = u.path.ends_with('/');
        let path = u.path.trim_end_matches('/').to_string();
        Ok(NfsSpec { host: u.host, nfs_port, mount_port, uid, gid, connections, path, folder })
    }

    /// `nfs://host[:port]` (IPv6 in brackets).
    fn base(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.nfs_port {
            Some(p) => format!("nfs://{host}:{p}"),
            None => format!("nfs://{host}"),
        }
    }

    /// The source URL as shown and recorded.
    pub fn url(&self) -> String {
        format!("{}{}{}", self.base(), self.path, if self.folder { "/" } else { "" })
    }

    fn options(&self) -> ClientOptions {
        let mut o = ClientOptions {
            host: self.host.clone(),
            nfs_port: self.nfs_port,
            mount_port: self.mount_port,
            uid: self.uid,
            gid: self.gid,
            ..ClientOptions::default()
        };
        if let Some(c) = self.connections {
            o.connections = c;
        }
        o
    }
}

/// An NFS error as a source error: the client's message says what happened and what to do.
fn nfs_error(what: &str, e: NfsError) -> SourceError {
    let kind = if e.is_transient() { io::ErrorKind::ConnectionReset } else { io::ErrorKind::Other };
    SourceError::Io { what: what.to_string(), source: io::Error::new(kind, e) }
}

/// The exports of the server an `nfs://host[:port][?options]` URL names: `(server, exports)`.
pub(super) fn exports_of(url: &str) -> Result<(String, Vec<String>), EngineError> {
    let spec = NfsSpec::parse_server(url)?;
    let exports = nfs3::list_exports(&spec.options()).map_err(|e| nfs_error(&spec.base(), e))?;
    Ok((spec.base(), exports))
}

/// Mount the export that holds `spec.path` and open what it names.
pub(super) fn open(spec: &NfsSpec) -> Result<OpenedSource, EngineError> {
    let opts = spec.options();
    let exports = nfs3::list_exports(&opts).map_err(|e| nfs_error(&spec.url(), e))?;
    let export = exports
        .iter()
        .filter(|e| {
            let e = e.trim_end_matches('/');
            spec.path == e || spec.path.starts_with(&format!("{e}/")) || e.is_empty()
        })
        .max_by_key(|e| e.len())
        .ok_or_else(|| {
            EngineError::Invalid(format!(
                "{}: no export of {} contains {}; the server exports: {}",
                spec.url(),
                spec.host,
                spec.path,
                if exports.is_empty() { "(nothing)".to_string() } else { exports.join(", ") }
            ))
        })?
        .trim_end_matches('/')
        .to_string();
    let client = Nfs3Client::mount(&opts, if export.is_empty() { "/" } else { &export })
        .map_err(|e| nfs_error(&spec.url(), e))?;
    let ds = NfsDatastore { client: Arc::new(client), base: spec.base(), export };
    if spec.folder {
        return open_vm_folder(&ds, &spec.path, None);
    }
    if is_vmx(&spec.path) {
        let (dir, name) = split_vmx(&spec.path);
        return open_vm_folder(&ds, &dir, Some(&name));
    }
    let (handle, attr) = ds.lookup(&spec.path)?;
    if attr.ftype == FileType::Directory {
        // Without the trailing slash the URL names one disk image; a folder needs the slash.
        return Err(EngineError::Invalid(format!(
            "{}: is a directory, not a disk image; to back up the VM folder, end the path with a slash: {}/ (put any ?options after it)",
            spec.url(),
            spec.url()
        )));
    }
    let raw = ds.file(&spec.path, handle, attr)?;
    let disk = open_image(raw, &DatastoreOpener { ds: &ds })?;
    Ok(OpenedSource { describe: spec.url(), disks: vec![("disk0".into(), disk)], files: vec![] })
}

/// One mounted export. Paths are full server paths (`/export/dir/file`).
#[derive(Debug)]
struct NfsDatastore {
    client: Arc<Nfs3Client>,
    /// `nfs://host[:port]`
    base: String,
    /// The mounted export path, without a trailing '/'.
    export: String,
}

impl NfsDatastore {
    /// `path` relative to the export root, or NotFound if it lies outside the export.
    fn relative<'p>(&self, path: &'p str) -> Result<&'p str, SourceError> {
        let rel = if self.export.is_empty() { Some(path) } else { path.strip_prefix(&self.export) };
        match rel {
            Some(r) if r.is_empty() || r.starts_with('/') => Ok(r.trim_start_matches('/')),
            _ => Err(SourceError::NotFound { path: self.describe(path).into() }),
        }
    }

    fn lookup(&self, path: &str) -> Result<(FileHandle, nfs3::FileAttr), SourceError> {
        let rel = self.relative(path)?;
        self.client.lookup_path(rel).map_err(|e| match e {
            NfsError::NotFound { .. } => SourceError::NotFound { path: self.describe(path).into() },
            e => nfs_error(&self.describe(path), e),
        })
    }
}

impl Datastore for NfsDatastore {
    fn describe(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
    fn path_of(&self, describe: &str) -> Option<String> {
        describe.strip_prefix(&self.base).map(|p| p.to_string())
    }
    fn list_dir(&self, dir: &str) -> Result<Vec<String>, SourceError> {
        let (fh, _) = self.lookup(dir)?;
        let entries = self.client.read_dir(&fh).map_err(|e| nfs_error(&self.describe(dir), e))?;
        let mut names: Vec<String> = entries.into_iter().map(|e| e.name).collect();
        names.sort();
        Ok(names)
    }
    fn open_raw(&self, path: &str) -> Result<Box<dyn BlockSource>, SourceError> {
        let (handle, attr) = self.lookup(path)?;
        self.file(path, handle, attr)
    }
}

impl NfsDatastore {
    /// The raw bytes of the regular file `path`, already looked up.
    fn file(&self, path: &str, handle: FileHandle, attr: nfs3::FileAttr) -> Result<Box<dyn BlockSource>, SourceError> {
        if attr.ftype != FileType::Regular {
            return Err(SourceError::Unsupported {
                what: self.describe(path),
                detail: format!("it is a {:?}, not a regular file", attr.ftype),
            });
        }
        Ok(Box::new(NfsFile { client: self.client.clone(), handle, size: attr.size, url: self.describe(path) }))
    }
}

/// The raw bytes of one file on an NFS export.
#[derive(Debug)]
struct NfsFile {
    client: Arc<Nfs3Client>,
    handle: FileHandle,
    size: u64,
    url: String,
}

impl BlockSource for NfsFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn describe(&self) -> String {
        self.url.clone()
    }
    fn io_hints(&self) -> IoHints {
        IoHints { alignment: 4096, queue_depth: 64, max_request: 4 << 20 }
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        // NFSv3 cannot report holes (SEEK_DATA is NFSv4.2), so everything is data.
        let end = offset.saturating_add(len).min(self.size);
        Ok(vec![Extent { offset, len: end.saturating_sub(offset), kind: ExtentKind::Data }])
    }
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter() {
            blocksource::check_range(&|| self.describe(), r.offset, r.buf.len() as u64, self.size)?;
        }
        let first = reqs.first().map(|r| r.offset).unwrap_or(0);
        let mut batch: Vec<(u64, &mut [u8])> = reqs.iter_mut().map(|r| (r.offset, &mut *r.buf)).collect();
        self.client.read_many(&self.handle, &mut batch).map_err(|e| {
            let kind = if e.is_transient() { io::ErrorKind::ConnectionReset } else { io::ErrorKind::Other };
            SourceError::Read { what: self.url.clone(), offset: first, source: io::Error::new(kind, e) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nfs_urls() {
        let s = NfsSpec::parse("nfs://127.0.0.1:12049/export/vm1/?mountport=12048&uid=1000").unwrap();
        assert_eq!(s.nfs_port, Some(12049));
        assert_eq!(s.mount_port, Some(12048));
        assert_eq!((s.uid, s.path.as_str(), s.folder), (1000, "/export/vm1", true));
        assert_eq!(s.url(), "nfs://127.0.0.1:12049/export/vm1/");
        assert!(NfsSpec::parse("nfs://h/").is_err());
        assert!(NfsSpec::parse("nfs://h/e?bogus=1").is_err());
        assert!(NfsSpec::parse("nfs://u%p@h/e/d").is_err());
    }
}
