//! The public value types: handles, attributes, directory entries, status codes.

use std::fmt;

/// Largest NFSv3 file handle (RFC 1813 `NFS3_FHSIZE`).
pub const MAX_FH_LEN: usize = 64;

/// An NFSv3 file handle: opaque bytes chosen by the server, at most 64.
///
/// Handles stay valid across server restarts only if the server makes them persistent
/// (ganesha's VFS FSAL does); a handle to a deleted file reads as [`crate::NfsError::Stale`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FileHandle(Vec<u8>);

impl FileHandle {
    /// A handle from its wire bytes, e.g. one saved earlier; `None` if longer than 64 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<FileHandle> {
        (bytes.len() <= MAX_FH_LEN).then(|| FileHandle(bytes.to_vec()))
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileHandle(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// The type of a file system object (`ftype3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    BlockDevice,
    CharDevice,
    Symlink,
    Socket,
    Fifo,
}

impl FileType {
    pub(crate) fn from_wire(v: u32) -> Option<FileType> {
        Some(match v {
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::BlockDevice,
            4 => FileType::CharDevice,
            5 => FileType::Symlink,
            6 => FileType::Socket,
            7 => FileType::Fifo,
            _ => return None,
        })
    }
}

/// The attributes of a file (a subset of `fattr3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttr {
    pub ftype: FileType,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of disk space actually used (less than `size` for a sparse file).
    pub used: u64,
    pub fsid: u64,
    pub fileid: u64,
    /// Modification time: seconds and nanoseconds since the Unix epoch.
    pub mtime: (u32, u32),
    /// Attribute change time: seconds and nanoseconds since the Unix epoch.
    pub ctime: (u32, u32),
}

impl FileAttr {
    /// `mtime` as a [`std::time::SystemTime`].
    pub fn mtime_system(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::new(u64::from(self.mtime.0), self.mtime.1.min(999_999_999))
    }
}

/// One entry of a directory listing (READDIRPLUS). The server may omit the handle or the
/// attributes of an entry; look the name up to get them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name; bytes that are not UTF-8 are replaced by U+FFFD.
    pub name: String,
    pub fileid: u64,
    pub handle: Option<FileHandle>,
    pub attr: Option<FileAttr>,
}

/// An `nfsstat3` (or `mountstat3`, whose values are a subset) as received from the server.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NfsStatus(pub u32);

impl NfsStatus {
    pub const OK: NfsStatus = NfsStatus(0);
    pub const PERM: NfsStatus = NfsStatus(1);
    pub const NOENT: NfsStatus = NfsStatus(2);
    pub const IO: NfsStatus = NfsStatus(5);
    pub const ACCES: NfsStatus = NfsStatus(13);
    pub const NOTDIR: NfsStatus = NfsStatus(20);
    pub const ISDIR: NfsStatus = NfsStatus(21);
    pub const INVAL: NfsStatus = NfsStatus(22);
    pub const STALE: NfsStatus = NfsStatus(70);
    pub const BADHANDLE: NfsStatus = NfsStatus(10001);
    pub const BAD_COOKIE: NfsStatus = NfsStatus(10003);
    pub const SERVERFAULT: NfsStatus = NfsStatus(10006);
    pub const JUKEBOX: NfsStatus = NfsStatus(10008);

    /// The RFC 1813 name, e.g. `NFS3ERR_ACCES`.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "NFS3_OK",
            1 => "NFS3ERR_PERM",
            2 => "NFS3ERR_NOENT",
            5 => "NFS3ERR_IO",
            6 => "NFS3ERR_NXIO",
            13 => "NFS3ERR_ACCES",
            17 => "NFS3ERR_EXIST",
            18 => "NFS3ERR_XDEV",
            19 => "NFS3ERR_NODEV",
            20 => "NFS3ERR_NOTDIR",
            21 => "NFS3ERR_ISDIR",
            22 => "NFS3ERR_INVAL",
            27 => "NFS3ERR_FBIG",
            28 => "NFS3ERR_NOSPC",
            30 => "NFS3ERR_ROFS",
            31 => "NFS3ERR_MLINK",
            63 => "NFS3ERR_NAMETOOLONG",
            66 => "NFS3ERR_NOTEMPTY",
            69 => "NFS3ERR_DQUOT",
            70 => "NFS3ERR_STALE",
            71 => "NFS3ERR_REMOTE",
            10001 => "NFS3ERR_BADHANDLE",
            10002 => "NFS3ERR_NOT_SYNC",
            10003 => "NFS3ERR_BAD_COOKIE",
            10004 => "NFS3ERR_NOTSUPP",
            10005 => "NFS3ERR_TOOSMALL",
            10006 => "NFS3ERR_SERVERFAULT",
            10007 => "NFS3ERR_BADTYPE",
            10008 => "NFS3ERR_JUKEBOX",
            _ => "unknown status",
        }
    }
}

impl fmt::Display for NfsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl fmt::Debug for NfsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
