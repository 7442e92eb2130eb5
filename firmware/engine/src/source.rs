//! Turning a source argument into a [`BlockSource`].
//!
//! A source is a local path or a `file://` URL. The image format is detected from the
//! content (the qcow2 magic), never from the file name; anything else is read as raw.
//! Other URL schemes (`nfs://`, `iscsi://`, `nbd://`) belong to later protocol crates and are
//! refused with a clear message until they exist.

use std::path::{Path, PathBuf};

use blocksource::file::FileSource;
use blocksource::{BlockSource, SourceError};

use crate::EngineError;

/// A parsed source argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Local(PathBuf),
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
        if let Some((scheme, _)) = spec.split_once("://") {
            return Err(EngineError::Invalid(format!(
                "{spec:?}: source scheme {scheme}:// is not supported by this build; give a local path or a file:// URL"
            )));
        }
        if spec.is_empty() {
            return Err(EngineError::Invalid("empty source: give the path of a disk image".into()));
        }
        Ok(SourceSpec::Local(PathBuf::from(spec)))
    }
}

/// Open a source argument, detecting its format from its content.
pub fn open_source(spec: &str) -> Result<Box<dyn BlockSource>, EngineError> {
    match SourceSpec::parse(spec)? {
        SourceSpec::Local(path) => Ok(open_local(&path)?),
    }
}

fn open_local(path: &Path) -> Result<Box<dyn BlockSource>, SourceError> {
    let file = FileSource::open(path)?;
    let mut magic = [0u8; 4];
    if file.size() >= magic.len() as u64 {
        file.read_at(0, &mut magic)?;
    }
    if qcow2::is_qcow2(&magic) {
        let image = qcow2::Qcow2Source::open(Box::new(file), &qcow2::LocalBackingOpener)?;
        Ok(Box::new(image))
    } else {
        Ok(Box::new(file))
    }
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
    }
}
