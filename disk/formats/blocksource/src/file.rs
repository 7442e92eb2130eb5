//! Local raw image files and block devices.
//!
//! Reads go through this thread's `uringio` ring, so several worker threads read one file at
//! queue depth without sharing a lock. The allocation map comes from `SEEK_DATA`/`SEEK_HOLE`
//! for regular files; block devices report everything as data.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::{check_range, coalesce, BlockSource, Extent, ExtentKind, IoHints, ReadRequest, SourceError};

/// A raw disk image in a local file, or a block device.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    file: File,
    size: u64,
    is_block_device: bool,
}

impl FileSource {
    /// Open `path` read-only.
    pub fn open(path: &Path) -> Result<FileSource, SourceError> {
        let file = File::open(path).map_err(|e| open_error(path, e))?;
        let meta = file.metadata().map_err(|e| open_error(path, e))?;
        let ft = meta.file_type();
        let is_block_device = ft.is_block_device();
        let size = if is_block_device {
            // st_size is 0 for block devices; seeking to the end gives the capacity.
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0)).map_err(|e| open_error(path, e))?
        } else if ft.is_file() {
            meta.len()
        } else {
            return Err(SourceError::Unsupported {
                what: path.display().to_string(),
                detail: "not a regular file or block device; give the path of a disk image".into(),
            });
        };
        Ok(FileSource { path: path.to_path_buf(), file, size, is_block_device })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `lseek` with SEEK_DATA/SEEK_HOLE; `None` when there is no further data (ENXIO).
    fn seek(&self, offset: u64, whence: libc::c_int) -> Result<Option<u64>, SourceError> {
        let off = libc::off_t::try_from(offset).map_err(|_| SourceError::OutOfRange {
            what: self.describe(),
            offset,
            len: 0,
            size: self.size,
        })?;
        let fd = self.file.as_raw_fd();
        match uringio::lseek(fd, off, whence) {
            Ok(pos) => Ok(Some(pos as u64)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(source) => Err(SourceError::Io { what: self.describe(), source }),
        }
    }
}

fn open_error(path: &Path, e: io::Error) -> SourceError {
    match e.kind() {
        io::ErrorKind::NotFound => SourceError::NotFound { path: path.to_path_buf() },
        io::ErrorKind::PermissionDenied => SourceError::PermissionDenied { path: path.to_path_buf() },
        _ => SourceError::Io { what: path.display().to_string(), source: e },
    }
}

impl BlockSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn io_hints(&self) -> IoHints {
        IoHints { alignment: 4096, queue_depth: 32, max_request: 4 << 20 }
    }

    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if self.is_block_device {
            return Ok(vec![Extent { offset, len: end - offset, kind: ExtentKind::Data }]);
        }
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match self.seek(pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d.min(end),
                Ok(None) => end,
                // Filesystems without SEEK_DATA support: everything is data.
                Err(SourceError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                    out.push(Extent { offset: pos, len: end - pos, kind: ExtentKind::Data });
                    break;
                }
                Err(e) => return Err(e),
            };
            if data > pos {
                out.push(Extent { offset: pos, len: data - pos, kind: ExtentKind::Zero });
            }
            if data >= end {
                break;
            }
            let hole = self.seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            out.push(Extent { offset: data, len: hole - data, kind: ExtentKind::Data });
            pos = hole;
        }
        Ok(coalesce(out))
    }

    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter() {
            check_range(&|| self.describe(), r.offset, r.buf.len() as u64, self.size)?;
        }
        let mut batch: Vec<(u64, &mut [u8])> = reqs.iter_mut().map(|r| (r.offset, &mut *r.buf)).collect();
        uringio::with_thread_ring(|ring| ring.read_exact_many(&self.file, &mut batch)).map_err(|f| SourceError::Read {
            what: self.describe(),
            offset: f.offset,
            source: f.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_are_zero_extents_and_data_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(2 << 20)).unwrap();
        f.write_all(&vec![0xAB; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let src = FileSource::open(&path).unwrap();
        assert_eq!(src.size(), 8 << 20);
        let map = src.allocation(0, 8 << 20).unwrap();
        let data: Vec<_> = map.iter().filter(|e| e.kind == ExtentKind::Data).collect();
        assert!(data.iter().all(|e| e.offset <= 2 << 20 && e.end() >= 3 << 20), "{map:?}");
        assert_eq!(map.first().unwrap().offset, 0);
        assert_eq!(map.last().unwrap().end(), 8 << 20);
        let mut buf = vec![0u8; 1 << 20];
        src.read_at(2 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn missing_file_is_not_found() {
        let err = FileSource::open(Path::new("/nonexistent/disk.img")).unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }));
        assert!(err.to_string().contains("/nonexistent/disk.img"));
    }

    #[test]
    fn read_past_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.img");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let src = FileSource::open(&path).unwrap();
        let mut buf = [0u8; 200];
        assert!(matches!(src.read_at(0, &mut buf), Err(SourceError::OutOfRange { .. })));
    }
}
