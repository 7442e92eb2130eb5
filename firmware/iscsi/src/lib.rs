//! `iscsi`: rackvault's iSCSI initiator (RFC 7143), the "Direct SAN" ingest path.
//!
//! - [`discover`]: a discovery session (`SendTargets=All`) listing a portal's targets.
//! - [`Session::login`]: a normal session to one target, with CHAP or mutual CHAP, CRC32C
//!   header/data digests (offered as `CRC32C,None` unless [`DigestPolicy`] says otherwise), and [`Session::lun`] giving a [`LunTransport`] that implements
//!   [`scsi::ScsiTransport`]; the `scsi` crate's block layer runs on top of it.
//!
//! Layers, bottom up: [`pdu`] (framing, digests, hostile-input limits), [`text`] (key=value
//! lists with the C bit), [`chap`] (MD5 CHAP, redacted secrets), [`login`] (the login state
//! machine), `session` (full feature phase: threads, CmdSN window, R2T, NOP, recovery; its
//! module docs hold the locking table and invariants).
//!
//! Threading model: blocking `std::net::TcpStream`, no async runtime. Per connection one reader
//! thread parses PDUs and routes them by Initiator Task Tag to the waiting caller, gathering a
//! read's Data-In PDUs into one buffer so the caller wakes once per command; callers write
//! their PDUs under a mutex. A [`Session`] is `Send + Sync`; many threads may run commands at
//! once, bounded by the target's CmdSN window and by [`SessionConfig::queue_depth`].
//!
//! Error recovery level 0 only: a failed connection is replaced by a new login with the same
//! ISID (session reinstatement) and outstanding commands are re-issued, until
//! [`SessionConfig::reconnect_deadline`].
//!
//! Dependencies: `md-5` (CHAP requires MD5), `crc32c` (digests); per-batch completion queues
//! are a std `Mutex` + `Condvar`; random bytes for the ISID and CHAP challenges come from
//! `/dev/urandom`. Nothing here knows of images, chunks or backups.

pub mod chap;
pub mod error;
#[cfg(test)]
mod fake_target;
pub mod login;
pub mod pdu;
mod session;
pub mod text;

pub use chap::{Chap, Secret};
pub use error::IscsiError;
pub use session::{Session, MAX_BURST, MAX_RECV_DATA};

use std::sync::Arc;
use std::time::Duration;

use pdu::{op, Pdu};

/// The initiator name used when none is configured.
pub const DEFAULT_INITIATOR: &str = "iqn.2024-01.io.rackvault:initiator";

/// How to reach and log in to one target.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// "host:port", "host" (port 3260), "[::1]:3261".
    pub portal: String,
    /// Target IQN.
    pub target: String,
    /// Our initiator IQN.
    pub initiator: String,
    /// Credentials we prove (one-way CHAP).
    pub chap: Option<Chap>,
    /// What the target must prove (mutual CHAP); needs `chap` too.
    pub mutual_chap: Option<Chap>,
    /// What we offer for HeaderDigest (CRC32C over each PDU header).
    pub header_digest: DigestPolicy,
    /// What we offer for DataDigest (CRC32C over each data segment).
    pub data_digest: DigestPolicy,
    /// Most commands outstanding on the session.
    pub queue_depth: usize,
    /// How long one command, a login step or a stalled PDU may take.
    pub io_timeout: Duration,
    /// How long to keep trying to log in again after losing the connection.
    pub reconnect_deadline: Duration,
    /// Idle time before we ping the target with a NOP-Out (0 disables).
    pub nop_interval: Duration,
}

impl SessionConfig {
    /// Defaults: no CHAP, digests offered as `CRC32C,None` (the target chooses), queue depth
    /// 32, 30 s I/O timeout, 60 s reconnect deadline, 5 s keepalive.
    pub fn new(portal: impl Into<String>, target: impl Into<String>) -> SessionConfig {
        SessionConfig {
            portal: portal.into(),
            target: target.into(),
            initiator: DEFAULT_INITIATOR.to_string(),
            chap: None,
            mutual_chap: None,
            header_digest: DigestPolicy::Prefer,
            data_digest: DigestPolicy::Prefer,
            queue_depth: 32,
            io_timeout: Duration::from_secs(30),
            reconnect_deadline: Duration::from_secs(60),
            nop_interval: Duration::from_secs(5),
        }
    }
}

/// What the initiator offers for one digest key (HeaderDigest or DataDigest) at login
/// (RFC 7143 §13.1). The target answers with the first value of our list it supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestPolicy {
    /// Offer `CRC32C,None`: CRC32C whenever the target supports it, so a target that
    /// requires digests accepts the login, and None with a target that does not offer them.
    #[default]
    Prefer,
    /// Offer only `CRC32C`: the login fails if the target does not agree to it.
    Require,
    /// Offer only `None`: the login fails if the target requires CRC32C.
    Off,
}

impl DigestPolicy {
    /// The value list we send at login.
    pub fn offer(self) -> &'static str {
        match self {
            DigestPolicy::Prefer => "CRC32C,None",
            DigestPolicy::Require => "CRC32C",
            DigestPolicy::Off => "None",
        }
    }

    /// Whether the target's answer `value` (its choice from our list) is one we offered.
    /// Returns whether the digest is on.
    pub fn accepts(self, value: &str) -> Option<bool> {
        let crc = value.eq_ignore_ascii_case("CRC32C");
        let none = value.eq_ignore_ascii_case("None");
        match self {
            DigestPolicy::Prefer if crc || none => Some(crc),
            DigestPolicy::Require if crc => Some(true),
            DigestPolicy::Off if none => Some(false),
            _ => None,
        }
    }
}

/// A target listed by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    /// "address:port,tpgt" entries as the target sent them.
    pub addresses: Vec<String>,
}

/// Largest SendTargets answer we gather.
pub const MAX_SENDTARGETS_TEXT: usize = 1 << 20;

/// Lists the targets behind `portal` with a discovery session (`SendTargets=All`).
pub fn discover(portal: &str, initiator: &str, chap: Option<&Chap>) -> Result<Vec<DiscoveredTarget>, IscsiError> {
    let mut cfg = SessionConfig::new(portal, "");
    cfg.initiator = initiator.to_string();
    cfg.chap = chap.cloned();
    cfg.io_timeout = Duration::from_secs(10);
    let mut isid = [0u8; 6];
    chap::random_bytes(&mut isid).map_err(|e| IscsiError::Io { what: "reading /dev/urandom".into(), source: e })?;
    isid[0] = 0x80 | (isid[0] & 0x3f);
    let (mut w, mut r, neg) = session::open_connection(&cfg, None, isid)?;
    let mut cmd_sn = neg.cmd_sn;
    let mut exp_stat_sn = neg.exp_stat_sn;
    let mut body = text::encode(&[("SendTargets", "All")]);
    let mut ttt = pdu::RESERVED_TAG;
    let mut gathered = text::TextBuffer::new(MAX_SENDTARGETS_TEXT);
    let proto = |d: String| IscsiError::Protocol { detail: d };
    let lost = |e: String| IscsiError::ConnectionLost {
        target: format!("discovery at {portal}"),
        after: Duration::ZERO,
        last: e,
    };
    for round in 0.. {
        if round > 1024 {
            return Err(proto("SendTargets answer continued over more than 1024 PDUs".into()));
        }
        let mut p = Pdu::new(op::TEXT_REQ, true);
        p.set_flags(0x80);
        p.set_itt(1);
        p.set_u32(20, ttt);
        p.set_u32(24, cmd_sn);
        p.set_u32(28, exp_stat_sn);
        p.data = std::mem::take(&mut body);
        std::io::Write::write_all(&mut w, &p.encode(neg.digests)).map_err(|e| lost(e.to_string()))?;
        let resp = loop {
            match r.read_pdu() {
                Ok(Some(p)) if p.opcode() == op::NOP_IN => continue,
                Ok(Some(p)) => break p,
                Ok(None) => {
                    return Err(IscsiError::Timeout { what: format!("SendTargets at {portal}"), after: cfg.io_timeout })
                }
                Err(e) if e.is_protocol() => return Err(proto(e.to_string())),
                Err(e) => return Err(lost(e.to_string())),
            }
        };
        if resp.opcode() != op::TEXT_RESP {
            return Err(proto(format!("expected a Text Response, got opcode 0x{:02x}", resp.opcode())));
        }
        exp_stat_sn = resp.stat_sn().wrapping_add(1);
        cmd_sn = resp.exp_cmd_sn();
        gathered.push(&resp.data).map_err(|e| proto(e.to_string()))?;
        if resp.flags() & 0x40 == 0 {
            break;
        }
        ttt = resp.ttt();
    }
    let pairs = gathered.parse().map_err(|e| proto(format!("SendTargets answer: {e}")))?;
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "TargetName" => out.push(DiscoveredTarget { name: v, addresses: Vec::new() }),
            "TargetAddress" => match out.last_mut() {
                Some(t) => t.addresses.push(v),
                None => return Err(proto("TargetAddress before any TargetName".into())),
            },
            _ => {}
        }
    }
    // Polite logout; the answer does not matter.
    let mut p = Pdu::new(op::LOGOUT_REQ, true);
    p.set_flags(0x80);
    p.set_itt(2);
    p.set_u32(24, cmd_sn);
    p.set_u32(28, exp_stat_sn);
    if std::io::Write::write_all(&mut w, &p.encode(neg.digests)).is_ok() {
        let _ = r.read_pdu();
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
    Ok(out)
}

/// One logical unit of a [`Session`], as a [`scsi::ScsiTransport`].
#[derive(Debug, Clone)]
pub struct LunTransport {
    session: Arc<Session>,
    lun: u64,
}

impl LunTransport {
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
    pub fn lun(&self) -> u64 {
        self.lun
    }
}

impl scsi::ScsiTransport for LunTransport {
    fn execute(&self, cmd: &mut scsi::Command<'_>) -> Result<scsi::Completion, scsi::TransportError> {
        let mut c = self.session.execute_many(self.lun, std::slice::from_mut(cmd))?;
        Ok(c.remove(0))
    }

    fn execute_many(&self, cmds: &mut [scsi::Command<'_>]) -> Result<Vec<scsi::Completion>, scsi::TransportError> {
        Ok(self.session.execute_many(self.lun, cmds)?)
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.session.describe(), self.lun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_target::{self, Script};
    use crate::pdu::Digests;

    #[test]
    fn a_pdu_with_a_wrong_header_digest_after_login_is_a_clear_protocol_error() {
        // The target agrees to CRC32C header digests, then answers SendTargets with a
        // Text Response whose header digest does not match its header.
        let script = Script { header_digest: "CRC32C", ..Script::default() };
        let (portal, seen) = fake_target::start(script, |mut w, mut r, digests| {
            assert_eq!(digests, Digests { header: true, data: false });
            let req = r.read_pdu().unwrap().unwrap();
            assert_eq!(req.opcode(), op::TEXT_REQ, "the request itself carried a good header digest");
            let mut resp = Pdu::new(op::TEXT_RESP, false);
            resp.set_flags(0x80);
            resp.set_itt(req.itt());
            resp.data = text::encode(&[("TargetName", "iqn.2024-01.test:t")]);
            let mut wire = resp.encode(digests);
            wire[pdu::BHS_LEN] ^= 0x01; // first byte of the header digest
            std::io::Write::write_all(&mut w, &wire).unwrap();
            let _ = r.read_pdu();
        });
        let err = discover(&portal, DEFAULT_INITIATOR, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, IscsiError::Protocol { .. }), "{msg}");
        assert!(msg.contains("header digest (CRC32C) mismatch"), "{msg}");
        assert!(msg.contains("corrupted on the way"), "{msg}");
        assert_eq!(err.transport_kind(), scsi::TransportErrorKind::Protocol);
        let seen = seen.join().unwrap();
        assert_eq!(text::get(&seen.keys, "HeaderDigest"), Some("CRC32C,None"));
    }
}
