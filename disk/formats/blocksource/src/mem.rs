//! [`MemSource`]: bytes in memory as a [`BlockSource`], and [`NoBacking`], an opener that
//! refuses every name. For small images held in memory and for the tests and fuzz targets of
//! the format readers, which feed them corrupted copies of real images.

use crate::{check_range, BackingOpener, BlockSource, Extent, ExtentKind, ReadRequest, SourceError};

/// An image held in memory; everything in it counts as data.
#[derive(Debug, Clone)]
pub struct MemSource {
    pub data: Vec<u8>,
    /// What `describe()` returns.
    pub name: String,
}

impl MemSource {
    pub fn new(name: impl Into<String>, data: Vec<u8>) -> MemSource {
        MemSource { data, name: name.into() }
    }
}

impl BlockSource for MemSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        let end = offset.saturating_add(len).min(self.size());
        Ok(vec![Extent { offset, len: end.saturating_sub(offset), kind: ExtentKind::Data }])
    }
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter_mut() {
            check_range(&|| self.describe(), r.offset, r.buf.len() as u64, self.size())?;
            let o = r.offset as usize;
            r.buf.copy_from_slice(&self.data[o..o + r.buf.len()]);
        }
        Ok(())
    }
}

/// Refuses every backing file, parent or extent an image names, with an error (corrupted
/// metadata may name one, so this must not panic).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBacking;

impl BackingOpener for NoBacking {
    fn open_backing(&self, name: &str, child: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        Err(SourceError::Unsupported {
            what: child.to_string(),
            detail: format!("this image names another file ({name:?}), which is not available here"),
        })
    }
}
