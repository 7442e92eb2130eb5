//! Parsing of the text descriptor: a separate `.vmdk` file (flat, split and ESXi disks) or the
//! descriptor embedded in a hosted sparse file.
//!
//! ```text
//! # Disk DescriptorFile
//! version=1
//! CID=fb183c20
//! parentCID=ffffffff
//! createType="twoGbMaxExtentFlat"
//! parentFileNameHint="base.vmdk"        (snapshot deltas only)
//!
//! # Extent description
//! RW 4192256 FLAT "disk-f001.vmdk" 0
//! RW 2048 ZERO
//! RDONLY 4192256 SPARSE "disk-s002.vmdk"
//!
//! # The Disk Data Base
//! ddb.adapterType = "lsilogic"
//! ```
//!
//! Lines are comments (`#`), `key = value` pairs (values optionally double-quoted), or extent
//! lines `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`, where ACCESS is `RW`, `RDONLY` or
//! `NOACCESS`, SECTORS the extent's size in 512-byte sectors, and OFFSET (flat extents only)
//! the sector in FILE where the extent's data starts. Anything else is refused as corrupt:
//! silently skipping a damaged extent line would shift every following extent.
//!
//! The parser only checks syntax and numbers; whether an extent's file exists and what it
//! holds is the reader's business. File names are kept exactly as written and handed to the
//! [`blocksource::BackingOpener`], which decides where (and whether) they may be opened.

/// Largest descriptor we read, embedded or separate. Real ones are well under 4 KiB; this only
/// bounds memory for hostile headers and for a wrong file named as a descriptor.
pub(crate) const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// Most extent lines one descriptor may have (a 62 TB twoGbMaxExtent disk has about 31000).
pub(crate) const MAX_EXTENTS: usize = 65536;

/// CID value meaning "no parent" in `parentCID`.
pub(crate) const CID_NONE: u32 = 0xffff_ffff;

/// An extent type from the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExtentType {
    /// `FLAT` (hosted) or `VMFS` (ESXi): the guest bytes verbatim at OFFSET in the file.
    Flat,
    /// `SPARSE`: a hosted sparse file (`KDMV`).
    Sparse,
    /// `VMFSSPARSE`: an ESXi redo log (`COWD`).
    VmfsSparse,
    /// `ZERO`: no file, reads as zeros.
    Zero,
    /// `SESPARSE`, `VMFSRDM`, `VMFSRAW` or anything else, kept for the error message.
    Other(String),
}

/// Access mode of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Rw,
    RdOnly,
    Denied,
}

/// One extent line.
#[derive(Debug, Clone)]
pub(crate) struct ExtentLine {
    pub access: Access,
    /// Size in 512-byte sectors, > 0.
    pub sectors: u64,
    pub kind: ExtentType,
    pub file: Option<String>,
    /// Start sector in the file (flat extents).
    pub offset: u64,
    /// 1-based line number, for messages.
    pub line: usize,
}

/// What the reader needs from a descriptor.
#[derive(Debug, Clone, Default)]
pub(crate) struct Descriptor {
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub create_type: Option<String>,
    pub parent_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
}

/// A syntax error: byte offset of the bad line within the descriptor text, and what is wrong.
#[derive(Debug)]
pub(crate) struct ParseError {
    pub offset: u64,
    pub detail: String,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v)
}

fn parse_cid(v: &str) -> Option<u32> {
    let v = unquote(v);
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

/// Parse descriptor text. `bytes` may be NUL-padded (embedded descriptors are); parsing stops
/// at the first NUL.
pub(crate) fn parse(bytes: &[u8]) -> Result<Descriptor, ParseError> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..end]);
    let mut d = Descriptor::default();
    let mut line_start = 0u64;
    for (i, raw) in text.split('\n').enumerate() {
        let at = line_start;
        line_start += raw.len() as u64 + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |detail: String| ParseError { offset: at, detail: format!("descriptor line {}: {detail}", i + 1) };
        let shown = || {
            let mut s: String = line.chars().take(120).collect();
            if s.len() < line.len() {
                s.push_str("...");
            }
            s
        };
        let first = line.split_ascii_whitespace().next().unwrap_or("");
        let access = match first {
            "RW" => Some(Access::Rw),
            "RDONLY" => Some(Access::RdOnly),
            "NOACCESS" => Some(Access::Denied),
            _ => None,
        };
        if let Some(access) = access {
            if d.extents.len() >= MAX_EXTENTS {
                return Err(err(format!("more than {MAX_EXTENTS} extents")));
            }
            let e = parse_extent(access, line[first.len()..].trim_start(), i + 1)
                .map_err(|m| err(format!("{m} in {:?}", shown())))?;
            d.extents.push(e);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(format!("{:?} is neither a comment, a key=value pair nor an extent line", shown())));
        };
        let key = key.trim();
        match key.to_ascii_lowercase().as_str() {
            "version" => {
                let v = unquote(value);
                if !matches!(v, "1" | "2" | "3") {
                    return Err(err(format!("descriptor version {v:?} is not 1, 2 or 3")));
                }
            }
            "cid" => {
                d.cid = Some(parse_cid(value).ok_or_else(|| err(format!("CID {value:?} is not a 32-bit hex number")))?)
            }
            "parentcid" => {
                d.parent_cid = Some(
                    parse_cid(value).ok_or_else(|| err(format!("parentCID {value:?} is not a 32-bit hex number")))?,
                )
            }
            "createtype" => d.create_type = Some(unquote(value).to_string()),
            "parentfilenamehint" => {
                let v = unquote(value);
                if !v.is_empty() {
                    d.parent_hint = Some(v.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(d)
}

/// `rest` is the extent line after its access keyword.
fn parse_extent(access: Access, rest: &str, line: usize) -> Result<ExtentLine, String> {
    let (sectors, rest) = rest.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((rest, ""));
    let sectors: u64 = sectors.parse().map_err(|_| format!("extent size {sectors:?} is not a sector count"))?;
    if sectors == 0 {
        return Err("extent size is 0 sectors".to_string());
    }
    let rest = rest.trim_start();
    let (ty, rest) = rest.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((rest, ""));
    let kind = match ty {
        "FLAT" | "VMFS" => ExtentType::Flat,
        "SPARSE" => ExtentType::Sparse,
        "VMFSSPARSE" => ExtentType::VmfsSparse,
        "ZERO" => ExtentType::Zero,
        "" => return Err("extent line has no type".to_string()),
        other => ExtentType::Other(other.to_string()),
    };
    let rest = rest.trim_start();
    let (file, rest) = if let Some(q) = rest.strip_prefix('"') {
        let close = q.find('"').ok_or("extent file name has no closing quote")?;
        (Some(q[..close].to_string()), q[close + 1..].trim())
    } else if rest.is_empty() {
        (None, "")
    } else {
        return Err("extent file name is not in double quotes".to_string());
    };
    let offset = if rest.is_empty() {
        0
    } else {
        let tok = rest.split_ascii_whitespace().next().unwrap_or("");
        if rest.split_ascii_whitespace().count() > 1 {
            return Err(format!("unexpected text {rest:?} after the extent file name"));
        }
        tok.parse().map_err(|_| format!("extent offset {tok:?} is not a sector number"))?
    };
    match (&kind, &file) {
        (ExtentType::Zero, _) => {}
        (_, None) => return Err("extent has no file name".to_string()),
        (_, Some(f)) if f.is_empty() => return Err("extent file name is empty".to_string()),
        _ => {}
    }
    if offset != 0 && kind != ExtentType::Flat {
        return Err("only FLAT and VMFS extents may have a start offset".to_string());
    }
    Ok(ExtentLine { access, sectors, kind, file, offset, line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_split_flat_descriptor() {
        let text = b"# Disk DescriptorFile\r\nversion=1\r\nCID=fb183c20\r\nparentCID=ffffffff\r\n\
createType=\"twoGbMaxExtentFlat\"\r\n\r\n# Extent description\r\nRW 4192256 FLAT \"my disk-f001.vmdk\" 0\r\n\
RW 2048 ZERO\r\nRDONLY  8   VMFS \"x.vmdk\"  7\r\n\r\n# The Disk Data Base\r\n#DDB\r\nddb.adapterType = \"lsilogic\"\r\n\0\0\0junk";
        let d = parse(text).unwrap();
        assert_eq!(d.cid, Some(0xfb18_3c20));
        assert_eq!(d.parent_cid, Some(CID_NONE));
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentFlat"));
        assert_eq!(d.parent_hint, None);
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file.as_deref(), Some("my disk-f001.vmdk"));
        assert_eq!(d.extents[0].sectors, 4192256);
        assert_eq!(d.extents[1].kind, ExtentType::Zero);
        assert_eq!(d.extents[2].access, Access::RdOnly);
        assert_eq!((d.extents[2].kind.clone(), d.extents[2].offset), (ExtentType::Flat, 7));
    }

    #[test]
    fn parent_hint_and_other_types() {
        let d = parse(b"CID=1\nparentCID=2\nparentFileNameHint=\"../base.vmdk\"\nRW 10 SESPARSE \"a-sesparse.vmdk\"\n")
            .unwrap();
        assert_eq!(d.parent_hint.as_deref(), Some("../base.vmdk"));
        assert_eq!(d.parent_cid, Some(2));
        assert_eq!(d.extents[0].kind, ExtentType::Other("SESPARSE".into()));
    }

    #[test]
    fn rejects_bad_lines() {
        for bad in [
            &b"RW abc FLAT \"a\"\n"[..],
            b"RW 0 FLAT \"a\"\n",
            b"RW 10 FLAT \"a\n",
            b"RW 10 FLAT a\n",
            b"RW 10 FLAT\n",
            b"RW 10 FLAT \"\"\n",
            b"RW 10 SPARSE \"a\" 5\n",
            b"RW 10 FLAT \"a\" x\n",
            b"RW 10 FLAT \"a\" 1 2\n",
            b"RW 99999999999999999999999 FLAT \"a\"\n",
            b"CID=xyz\n",
            b"CID=123456789\n",
            b"version=7\n",
            b"this is not a descriptor\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.detail.contains("line 1"), "{}", e.detail);
        }
        let e = parse(b"# Disk DescriptorFile\nversion=1\nRW 1 FLAT x\n").unwrap_err();
        assert_eq!(e.offset, 32);
        assert!(e.detail.contains("line 3"), "{}", e.detail);
    }
}
