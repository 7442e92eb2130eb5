//! `iscsi://` sources: LUNs read with our own iSCSI initiator ("Direct SAN").
//!
//! `iscsi://[user[%secret]@]host[:port]/<target iqn>/<lun>[?target_user=U&target_password=P&header_digest=D&data_digest=D&initiator_name=IQN]`
//! follows libiscsi's syntax. A digest `D` is `crc32c,none` (the default: CRC32C whenever the
//! target supports it), `crc32c` (insist on it) or `none` (offer no digest). CHAP credentials may also come from [`SourceSecrets`] (the
//! binary's config or secret files), which keeps them off the command line. Unmapped ranges
//! of a thin LUN (GET LBA STATUS) are reported as zeros and never read.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use blocksource::{coalesce, BlockSource, Extent, ExtentKind, IoHints, ReadRequest, SourceError};

use super::url::{Secret, SourceUrl};
use super::SourceSecrets;
use crate::EngineError;

/// The default iSCSI port.
const ISCSI_PORT: u16 = 3260;

/// Our initiator name when the URL gives none.
pub(crate) const DEFAULT_INITIATOR: &str = "iqn.2024-01.io.rackvault:initiator";

/// A parsed `iscsi://` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiSpec {
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: u64,
    pub chap: Option<(String, Secret)>,
    pub mutual_chap: Option<(String, Secret)>,
    pub header_digest: iscsi::DigestPolicy,
    pub data_digest: iscsi::DigestPolicy,
    pub initiator: Option<String>,
}

impl IscsiSpec {
    pub fn parse(spec: &str) -> Result<IscsiSpec, EngineError> {
        let u = SourceUrl::parse(spec, "iscsi")?;
        let invalid = |what: String| EngineError::Invalid(format!("iscsi:// source URL: {what}"));
        let parts: Vec<&str> = u.path.trim_matches('/').split('/').collect();
        let (target, lun) = match parts.as_slice() {
            [t, l] if !t.is_empty() => {
                (t.to_string(), l.parse::<u64>().map_err(|_| invalid(format!("LUN {l:?} is not a number")))?)
            }
            _ => {
                return Err(invalid(
                    "the path must be /<target iqn>/<lun>, e.g. /iqn.2024-01.com.example:disk/1".into(),
                ))
            }
        };
        let chap = match (u.user, u.secret) {
            (Some(user), Some(secret)) => Some((user, secret)),
            (Some(_), None) => return Err(invalid("a CHAP user needs a secret: user%secret@host".into())),
            _ => None,
        };
        let mut target_user = None;
        let mut target_secret = None;
        let (mut header_digest, mut data_digest, mut initiator) =
            (iscsi::DigestPolicy::Prefer, iscsi::DigestPolicy::Prefer, None);
        let digest = |k: &str, v: &str| match v.to_ascii_lowercase().as_str() {
            "crc32c,none" | "crc32c-none" | "auto" => Ok(iscsi::DigestPolicy::Prefer),
            "crc32c" | "on" | "true" | "1" => Ok(iscsi::DigestPolicy::Require),
            "none" | "off" | "false" | "0" => Ok(iscsi::DigestPolicy::Off),
            _ => Err(invalid(format!("{k}={v:?}: use crc32c,none (the default), crc32c or none"))),
        };
        for (k, v) in &u.query {
            match k.as_str() {
                "target_user" => target_user = Some(v.clone()),
                "target_password" | "target_secret" => target_secret = Some(Secret::new(v.clone())),
                "header_digest" => header_digest = digest(k, v)?,
                "data_digest" => data_digest = digest(k, v)?,
                "initiator" | "initiator_name" => initiator = Some(v.clone()),
                other => {
                    return Err(invalid(format!(
                        "unknown option {other:?}; known: target_user, target_password, header_digest, data_digest, initiator_name"
                    )))
                }
            }
        }
        let mutual_chap = match (target_user, target_secret) {
            (Some(u), Some(s)) => Some((u, s)),
            (None, None) => None,
            _ => return Err(invalid("mutual CHAP needs both target_user and target_password".into())),
        };
        Ok(IscsiSpec {
            host: u.host,
            port: u.port.unwrap_or(ISCSI_PORT),
            target,
            lun,
            chap,
            mutual_chap,
            header_digest,
            data_digest,
            initiator,
        })
    }

    fn portal(&self) -> String {
        Self::portal_of(&self.host, Some(self.port))
    }

    /// `host:port` (IPv6 in brackets), the default port when none is given.
    pub(crate) fn portal_of(host: &str, port: Option<u16>) -> String {
        let port = port.unwrap_or(ISCSI_PORT);
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// The session settings for this URL; secrets in the URL win over `secrets`.
    pub fn session_config(&self, secrets: &SourceSecrets) -> iscsi::SessionConfig {
        let mut cfg = iscsi::SessionConfig::new(self.portal(), &self.target);
        cfg.initiator = self.initiator.clone().unwrap_or_else(|| DEFAULT_INITIATOR.to_string());
        cfg.chap = self.chap.as_ref().or(secrets.chap.as_ref()).map(chap);
        cfg.mutual_chap = self.mutual_chap.as_ref().or(secrets.mutual_chap.as_ref()).map(chap);
        cfg.header_digest = self.header_digest;
        cfg.data_digest = self.data_digest;
        cfg.reconnect_deadline = Duration::from_secs(60);
        cfg
    }

    /// The source URL as shown and recorded: the CHAP user, never a secret.
    pub fn url(&self) -> String {
        let user = self.chap.as_ref().map(|(u, _)| format!("{u}@")).unwrap_or_default();
        format!("iscsi://{user}{}/{}/{}", self.portal(), self.target, self.lun)
    }
}

pub(crate) fn chap(c: &(String, Secret)) -> iscsi::Chap {
    iscsi::Chap { user: c.0.clone(), secret: iscsi::Secret::new(c.1.expose().to_string()) }
}

/// Whether a SCSI error may go away by itself: a lost connection, a timeout, a busy unit.
fn scsi_transient(e: &scsi::ScsiError) -> bool {
    match e {
        scsi::ScsiError::Transport(t) => t.is_transient(),
        scsi::ScsiError::Status { status, .. } => status.is_transient(),
        _ => false,
    }
}

/// A SCSI error as an I/O error whose kind says whether it is transient.
fn scsi_io_error(e: &scsi::ScsiError) -> io::Error {
    io::Error::new(if scsi_transient(e) { io::ErrorKind::ConnectionReset } else { io::ErrorKind::Other }, e.to_string())
}

/// Log in and open the LUN as a disk.
pub(super) fn open(spec: &IscsiSpec, secrets: &SourceSecrets) -> Result<Box<dyn BlockSource>, SourceError> {
    let url = spec.url();
    let io_err = |e: &dyn std::fmt::Display, transient: bool| SourceError::Io {
        what: url.clone(),
        source: io::Error::new(
            if transient { io::ErrorKind::ConnectionReset } else { io::ErrorKind::Other },
            e.to_string(),
        ),
    };
    let cfg = spec.session_config(secrets);
    // A target that is down or drops the connection is transient; bad credentials are not.
    let session = iscsi::Session::login(cfg).map_err(|e| match e {
        // Keep the socket's error, so callers can tell a failure to connect by its kind.
        iscsi::IscsiError::Connect { portal, source } => {
            SourceError::Io { what: format!("{url}: cannot connect to iSCSI portal {portal}"), source }
        }
        e => io_err(&e, e.is_transient()),
    })?;
    let transport: Arc<dyn scsi::ScsiTransport> = Arc::new(session.lun(spec.lun));
    let dev = scsi::BlockDevice::open(transport).map_err(|e| io_err(&e, scsi_transient(&e)))?;
    Ok(Box::new(IscsiDisk { dev, url }))
}

/// One LUN as a disk.
#[derive(Debug)]
struct IscsiDisk {
    dev: scsi::BlockDevice,
    url: String,
}

impl BlockSource for IscsiDisk {
    fn size(&self) -> u64 {
        self.dev.size_bytes()
    }
    fn describe(&self) -> String {
        self.url.clone()
    }
    fn io_hints(&self) -> IoHints {
        IoHints { alignment: self.dev.info().block_size.max(512), queue_depth: 32, max_request: 4 << 20 }
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        let end = offset.saturating_add(len).min(self.size());
        if offset >= end {
            return Ok(Vec::new());
        }
        let bs = self.dev.info().block_size as u64;
        // Unmapped blocks are zeros only where the unit promises it (LBPRZ); elsewhere they
        // are read like any other block.
        let unmapped_is_zero = self.dev.info().lbprz;
        let first = offset / bs;
        let blocks = end.div_ceil(bs) - first;
        let map = self.dev.lba_status(first, blocks).map_err(|e| SourceError::Read {
            what: self.url.clone(),
            offset,
            source: scsi_io_error(&e),
        })?;
        // `lba_status` covers the whole range in order, reporting anything the unit did not
        // describe as mapped, so the extents only need clipping to the byte range.
        let extents = map
            .into_iter()
            .map(|x| {
                let s = (x.lba * bs).max(offset);
                let t = ((x.lba + x.blocks) * bs).min(end);
                let kind = if x.mapped || !unmapped_is_zero { ExtentKind::Data } else { ExtentKind::Zero };
                Extent { offset: s, len: t.saturating_sub(s), kind }
            })
            .collect();
        Ok(coalesce(extents))
    }
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter() {
            blocksource::check_range(&|| self.describe(), r.offset, r.buf.len() as u64, self.size())?;
        }
        let first = reqs.first().map(|r| r.offset).unwrap_or(0);
        let mut batch: Vec<(u64, &mut [u8])> = reqs.iter_mut().map(|r| (r.offset, &mut *r.buf)).collect();
        self.dev.read_many(&mut batch).map_err(|e| SourceError::Read {
            what: self.url.clone(),
            offset: first,
            source: scsi_io_error(&e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iscsi_urls_and_hides_secrets() {
        let s = IscsiSpec::parse(
            "iscsi://backupuser%Secret12345678@127.0.0.1:3261/iqn.2024-01.test.rackvault:chapdisk/1?target_user=tgtout&target_password=OutSecret123456&header_digest=crc32c",
        )
        .unwrap();
        assert_eq!((s.port, s.lun, s.header_digest), (3261, 1, iscsi::DigestPolicy::Require));
        assert_eq!(s.data_digest, iscsi::DigestPolicy::Prefer, "no option: CRC32C,None");
        assert_eq!(s.target, "iqn.2024-01.test.rackvault:chapdisk");
        assert_eq!(s.url(), "iscsi://backupuser@127.0.0.1:3261/iqn.2024-01.test.rackvault:chapdisk/1");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("Secret1234") && !dbg.contains("OutSecret"), "{dbg}");
        assert!(IscsiSpec::parse("iscsi://h/iqn.x/abc").is_err());
        assert!(IscsiSpec::parse("iscsi://h/1").is_err());
        assert!(IscsiSpec::parse("iscsi://u@h/iqn.x/1").is_err());
        assert!(IscsiSpec::parse("iscsi://h/iqn.x/1?target_user=x").is_err());
        assert_eq!(IscsiSpec::parse("iscsi://[::1]/iqn.x/0").unwrap().url(), "iscsi://[::1]:3260/iqn.x/0");
    }

    #[test]
    fn digests_default_to_crc32c_none_and_url_options_force_either_and_set_the_initiator_name() {
        use iscsi::DigestPolicy::{Off, Prefer, Require};
        let secrets = SourceSecrets::default();
        let s = IscsiSpec::parse("iscsi://h/iqn.x:y/1").unwrap();
        let cfg = s.session_config(&secrets);
        assert_eq!((cfg.header_digest, cfg.data_digest), (Prefer, Prefer));
        assert_eq!(cfg.initiator, DEFAULT_INITIATOR);
        let s = IscsiSpec::parse("iscsi://h/iqn.x:y/1?header_digest=none&data_digest=NONE").unwrap();
        assert_eq!((s.header_digest, s.data_digest), (Off, Off));
        let s = IscsiSpec::parse("iscsi://h/iqn.x:y/1?header_digest=crc32c&data_digest=crc32c,none").unwrap();
        assert_eq!((s.header_digest, s.data_digest), (Require, Prefer));
        let err = IscsiSpec::parse("iscsi://h/iqn.x:y/1?data_digest=md5").unwrap_err().to_string();
        assert!(err.contains("data_digest") && err.contains("crc32c,none"), "{err}");
        let s = IscsiSpec::parse("iscsi://h/iqn.x:y/1?initiator_name=iqn.2024-01.com.example:backup").unwrap();
        assert_eq!(s.session_config(&secrets).initiator, "iqn.2024-01.com.example:backup");
    }
}
