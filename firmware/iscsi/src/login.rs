//! The login phase of one connection (RFC 7143 §6.3, §12), run synchronously on the fresh
//! socket before any reader thread exists.
//!
//! ```text
//!  stage 0 SecurityNegotiation            stage 1 LoginOperationalNegotiation   stage 3 FullFeature
//!  I: InitiatorName, TargetName,           I: HeaderDigest, DataDigest,
//!     SessionType, AuthMethod=CHAP,None       MaxRecvDataSegmentLength, MaxBurstLength, ...
//!  T: AuthMethod=CHAP                      T: the agreed values (+ its own declarations)
//!  I: CHAP_A=5                             (repeat while the target answers T=0 or offers keys
//!  T: CHAP_A=5 CHAP_I=id CHAP_C=challenge   we must answer)
//!  I: CHAP_N, CHAP_R [+ CHAP_I, CHAP_C     T: T=1 NSG=3 → full feature phase
//!     of our own for mutual CHAP], T=1
//!  T: [CHAP_N, CHAP_R: verified], T=1 NSG=1
//! ```
//! Without CHAP credentials we offer `AuthMethod=None` and ask to move on at once. All login
//! PDUs use the same ISID, ITT 0, CID 0 and the same CmdSN (login requests are immediate);
//! ExpStatSN follows the target's StatSN. A target response with the C bit is gathered over
//! several PDUs (we answer each with an empty request) up to [`MAX_LOGIN_TEXT`] bytes, and the
//! whole exchange is bounded to [`MAX_ROUNDS`] round trips.

use std::io::Write;
use std::net::TcpStream;

use crate::chap::{self, Chap};
use crate::error::{login_status_text, IscsiError};
use crate::pdu::{op, Digests, Pdu, PduReader};
use crate::text::{self, TextBuffer};
use crate::DigestPolicy;

/// Largest gathered login text.
pub const MAX_LOGIN_TEXT: usize = 64 * 1024;
/// Most request/response round trips in one login.
pub const MAX_ROUNDS: usize = 32;

/// What we offer.
#[derive(Debug, Clone)]
pub struct LoginParams<'a> {
    pub portal: &'a str,
    pub initiator: &'a str,
    /// `None` for a discovery session.
    pub target: Option<&'a str>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cmd_sn: u32,
    pub chap: Option<&'a Chap>,
    pub mutual: Option<&'a Chap>,
    pub header_digest: DigestPolicy,
    pub data_digest: DigestPolicy,
    /// Our MaxRecvDataSegmentLength.
    pub max_recv_data: u32,
    pub max_burst: u32,
    pub first_burst: u32,
}

/// What was agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub digests: Digests,
    /// The target's MaxRecvDataSegmentLength: our Data-Out / immediate data PDUs stay below it.
    pub their_max_recv_data: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub tsih: u16,
    /// Next CmdSN to use.
    pub cmd_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// Next StatSN we expect.
    pub exp_stat_sn: u32,
}

struct Exchange<'a, 'p> {
    w: &'a mut TcpStream,
    r: &'a mut PduReader<TcpStream>,
    p: &'a LoginParams<'p>,
    exp_stat_sn: u32,
    first: bool,
    last: Option<Pdu>,
}

impl Exchange<'_, '_> {
    fn name(&self) -> String {
        self.p.target.unwrap_or("discovery session").to_string()
    }

    /// Sends one login request and returns the complete (C-bit gathered) answer's keys.
    fn round(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String)>, IscsiError> {
        let mut body = text::encode(keys);
        let mut gathered = TextBuffer::new(MAX_LOGIN_TEXT);
        let mut transit = transit;
        let mut parts = 0;
        loop {
            parts += 1;
            if parts > MAX_ROUNDS {
                return Err(IscsiError::Protocol {
                    detail: format!("login response continued over more than {MAX_ROUNDS} PDUs"),
                });
            }
            let mut req = Pdu::new(op::LOGIN_REQ, true);
            req.set_flags(if transit { 0x80 } else { 0 } | (csg << 2) | if transit { nsg } else { 0 });
            req.bhs[8..14].copy_from_slice(&self.p.isid);
            req.bhs[14..16].copy_from_slice(&self.p.tsih.to_be_bytes());
            req.set_itt(0);
            req.set_u32(24, self.p.cmd_sn);
            req.set_u32(28, if self.first { 0 } else { self.exp_stat_sn });
            req.data = std::mem::take(&mut body);
            self.w.write_all(&req.encode(Digests::default())).map_err(|e| self.lost(e.to_string()))?;
            let resp = {
                match self.r.read_pdu() {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        return Err(IscsiError::Timeout {
                            what: format!("login to {}", self.name()),
                            after: self.r.get_ref().read_timeout().ok().flatten().unwrap_or_default(),
                        })
                    }
                    Err(e) if e.is_protocol() => {
                        return Err(IscsiError::Protocol { detail: format!("during login: {e}") })
                    }
                    Err(e) => return Err(self.lost(e.to_string())),
                }
            };
            if resp.opcode() != op::LOGIN_RESP {
                if resp.opcode() == op::REJECT {
                    return Err(IscsiError::Rejected { detail: "the target rejected our login request".into() });
                }
                return Err(IscsiError::Protocol {
                    detail: format!("expected a login response, got opcode 0x{:02x}", resp.opcode()),
                });
            }
            self.first = false;
            self.exp_stat_sn = resp.stat_sn().wrapping_add(1);
            let (class, detail) = (resp.bhs[36], resp.bhs[37]);
            if class != 0 {
                let (meaning, hint) = login_status_text(class, detail);
                let mut hint = hint.to_string();
                if let (2, 2 | 3, Some(_)) = (class, detail, self.p.target) {
                    // Targets answer "not found" both for a name they do not have and for one
                    // whose ACL leaves this initiator out (tgt does): name both causes, and the
                    // initiator name the ACL has to allow.
                    hint = format!(
                        "check the target name, and that the target's ACL allows our initiator name {}; \
                         set ours with initiator_name= in the iscsi:// URL",
                        self.p.initiator
                    );
                }
                if class == 1 {
                    if let Some(a) =
                        text::parse(&resp.data).ok().and_then(|k| text::get(&k, "TargetAddress").map(str::to_string))
                    {
                        hint = format!("{hint} ({a})");
                    }
                }
                return Err(IscsiError::LoginFailed {
                    portal: self.p.portal.to_string(),
                    target: self.name(),
                    status_class: class,
                    status_detail: detail,
                    meaning,
                    hint,
                });
            }
            if resp.bhs[8..14] != self.p.isid {
                return Err(IscsiError::Protocol { detail: "login response carries another ISID".into() });
            }
            gathered.push(&resp.data).map_err(|e| IscsiError::Protocol { detail: format!("login text: {e}") })?;
            let cont = resp.flags() & 0x40 != 0;
            self.last = Some(resp);
            if !cont {
                break;
            }
            // Answer a partial response with an empty request, no transit (RFC 7143 §11.12.2).
            transit = false;
        }
        gathered.parse().map_err(|e| IscsiError::Protocol { detail: format!("login text: {e}") })
    }

    fn lost(&self, detail: String) -> IscsiError {
        IscsiError::ConnectionLost {
            target: self.name(),
            after: std::time::Duration::ZERO,
            last: format!("during login: {detail}"),
        }
    }
}

/// Why a login that offered only None for a digest failed, and what to change.
fn digest_required(option: &str) -> String {
    format!("the target requires CRC32C digests: drop {option}=none (the default offers CRC32C,None)")
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// Runs the login on `w`/`r` (two handles of one socket).
pub fn login(w: &mut TcpStream, r: &mut PduReader<TcpStream>, p: &LoginParams<'_>) -> Result<Negotiated, IscsiError> {
    let mut x = Exchange { w, r, p, exp_stat_sn: 0, first: true, last: None };
    let name = x.name();
    let mut keys = vec![kv("InitiatorName", p.initiator)];
    match p.target {
        Some(t) => {
            keys.push(kv("SessionType", "Normal"));
            keys.push(kv("TargetName", t));
        }
        None => keys.push(kv("SessionType", "Discovery")),
    }
    let mut rounds = 0;
    let mut bump = || -> Result<(), IscsiError> {
        rounds += 1;
        if rounds > MAX_ROUNDS {
            return Err(IscsiError::Protocol { detail: format!("login did not finish after {MAX_ROUNDS} exchanges") });
        }
        Ok(())
    };

    // ---- stage 0: security ----
    if let Some(c) = p.chap {
        keys.push(kv("AuthMethod", "CHAP,None"));
        bump()?;
        let ans = x.round(0, 1, false, &keys)?;
        let method = text::get(&ans, "AuthMethod").unwrap_or("");
        if method == "CHAP" {
            bump()?;
            let ans = x.round(0, 1, false, &[kv("CHAP_A", "5")])?;
            if text::get(&ans, "CHAP_A") != Some("5") {
                return Err(IscsiError::Negotiation {
                    key: "CHAP_A".into(),
                    detail: "the target does not offer CHAP with MD5 (CHAP_A=5)".into(),
                });
            }
            let id: u8 = text::get(&ans, "CHAP_I").and_then(|v| v.parse().ok()).ok_or_else(|| {
                IscsiError::Protocol { detail: "the target's CHAP_I is missing or not a number 0..255".into() }
            })?;
            let challenge = text::get(&ans, "CHAP_C")
                .ok_or_else(|| IscsiError::Protocol { detail: "the target sent no CHAP_C".into() })
                .and_then(|v| {
                    chap::decode_binary(v).map_err(|e| IscsiError::Protocol { detail: format!("CHAP_C: {e}") })
                })?;
            if challenge.is_empty() {
                return Err(IscsiError::Protocol { detail: "the target's CHAP challenge is empty".into() });
            }
            let resp = chap::response(id, c.secret.expose(), &challenge);
            let mut out = vec![kv("CHAP_N", c.user.clone()), kv("CHAP_R", chap::encode_hex(&resp))];
            let mut ours = None;
            if p.mutual.is_some() {
                let mut rnd = [0u8; 17];
                chap::random_bytes(&mut rnd)
                    .map_err(|e| IscsiError::Io { what: "reading /dev/urandom".into(), source: e })?;
                let my_id = rnd[0];
                let my_ch = rnd[1..].to_vec();
                // A reflection attack replays our own challenge at us; never answer a challenge
                // equal to ours (and never send one equal to the target's).
                if my_ch == challenge {
                    return Err(IscsiError::MutualAuthFailed {
                        target: name,
                        detail: "the target's challenge equals ours (reflection)".into(),
                    });
                }
                out.push(kv("CHAP_I", my_id.to_string()));
                out.push(kv("CHAP_C", chap::encode_hex(&my_ch)));
                ours = Some((my_id, my_ch));
            }
            bump()?;
            let ans = x.round(0, 1, true, &out)?;
            if let (Some(m), Some((my_id, my_ch))) = (p.mutual, ours) {
                let n = text::get(&ans, "CHAP_N");
                let r = text::get(&ans, "CHAP_R");
                let Some(r) = r else {
                    return Err(IscsiError::MutualAuthFailed {
                        target: name,
                        detail: "the target sent no CHAP_R".into(),
                    });
                };
                let got = chap::decode_binary(r)
                    .map_err(|e| IscsiError::MutualAuthFailed { target: name.clone(), detail: e })?;
                let want = chap::response(my_id, m.secret.expose(), &my_ch);
                if n != Some(m.user.as_str()) {
                    return Err(IscsiError::MutualAuthFailed {
                        target: name,
                        detail: "the target answered with another CHAP user name".into(),
                    });
                }
                if got.as_slice() != want.as_slice() {
                    return Err(IscsiError::MutualAuthFailed {
                        target: name,
                        detail: "the target's CHAP_R is wrong".into(),
                    });
                }
            }
        } else if method == "None" {
            if p.mutual.is_some() {
                return Err(IscsiError::MutualAuthFailed {
                    target: name,
                    detail: "the target chose AuthMethod=None, so it cannot prove its identity".into(),
                });
            }
        } else {
            return Err(IscsiError::Negotiation {
                key: "AuthMethod".into(),
                detail: format!(
                    "the target answered {method:?}; it may require an authentication method we do not offer"
                ),
            });
        }
    } else {
        if p.mutual.is_some() {
            return Err(IscsiError::Config { detail: "mutual CHAP needs initiator CHAP credentials too".into() });
        }
        keys.push(kv("AuthMethod", "None"));
        bump()?;
        let ans = x.round(0, 1, true, &keys)?;
        if let Some(m) = text::get(&ans, "AuthMethod").filter(|m| *m != "None") {
            return Err(IscsiError::Negotiation {
                key: "AuthMethod".into(),
                detail: format!("the target requires {m:?}; configure CHAP credentials for this target"),
            });
        }
    }
    // Finish stage 0 if the target has not moved on yet.
    while x.last.as_ref().is_some_and(|l| l.flags() & 0x80 == 0 || l.flags() & 0x03 != 1) {
        bump()?;
        x.round(0, 1, true, &[])?;
    }
    let stage = 1u8;

    // ---- stage 1: operational negotiation ----
    let mut offer = Vec::new();
    offer.push(kv("HeaderDigest", p.header_digest.offer()));
    offer.push(kv("DataDigest", p.data_digest.offer()));
    offer.push(kv("MaxRecvDataSegmentLength", p.max_recv_data.to_string()));
    if p.target.is_some() {
        offer.extend([
            kv("MaxBurstLength", p.max_burst.to_string()),
            kv("FirstBurstLength", p.first_burst.to_string()),
            kv("InitialR2T", "No"),
            kv("ImmediateData", "Yes"),
            kv("MaxOutstandingR2T", "1"),
            kv("DataPDUInOrder", "Yes"),
            kv("DataSequenceInOrder", "Yes"),
            kv("ErrorRecoveryLevel", "0"),
            kv("MaxConnections", "1"),
            kv("DefaultTime2Wait", "2"),
            kv("DefaultTime2Retain", "0"),
        ]);
    }
    let mut all: Vec<(String, String)> = Vec::new();
    let mut sent: Vec<String> = offer.iter().map(|(k, _)| k.clone()).collect();
    let csg = stage;
    let mut next = offer;
    loop {
        bump()?;
        let ans = x.round(csg, 3, true, &next)?;
        let last = x.last.as_ref().map(|l| l.flags()).unwrap_or(0);
        next = Vec::new();
        for (k, v) in &ans {
            if v == "Reject" && sent.contains(k) {
                let detail = match (k.as_str(), p.header_digest, p.data_digest) {
                    ("HeaderDigest", DigestPolicy::Off, _) => digest_required("header_digest"),
                    ("DataDigest", _, DigestPolicy::Off) => digest_required("data_digest"),
                    _ => "the target rejected our value".into(),
                };
                return Err(IscsiError::Negotiation { key: k.clone(), detail });
            }
            if !sent.contains(k) {
                // A key the target offers on its own: declarations need no answer, a few
                // negotiable ones we accept as offered, the rest we do not understand.
                match k.as_str() {
                    "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "MaxRecvDataSegmentLength" => {}
                    "AuthMethod" | "CHAP_N" | "CHAP_R" | "CHAP_A" | "CHAP_I" | "CHAP_C" => {}
                    "MaxBurstLength" | "FirstBurstLength" | "DefaultTime2Wait" | "DefaultTime2Retain"
                    | "MaxOutstandingR2T" | "MaxConnections" => {
                        next.push(kv(k, v.clone()));
                        sent.push(k.clone());
                    }
                    _ => {
                        next.push(kv(k, "NotUnderstood"));
                        sent.push(k.clone());
                    }
                }
            }
        }
        all.extend(ans);
        if last & 0x80 != 0 && last & 0x03 == 3 {
            break;
        }
    }

    // ---- results ----
    let get = |k: &str| text::get(&all, k);
    let yes = |k: &str, default: bool| get(k).map(|v| v == "Yes").unwrap_or(default);
    let num = |k: &str, default: u32| -> Result<u32, IscsiError> {
        match get(k) {
            None => Ok(default),
            Some(v) => {
                v.parse::<u32>().ok().filter(|n| (512..=0xff_ffff).contains(n)).ok_or_else(|| IscsiError::Negotiation {
                    key: k.into(),
                    detail: format!("the target's value {v:?} is outside 512..16777215"),
                })
            }
        }
    };
    let digest = |k: &str, want: DigestPolicy| -> Result<bool, IscsiError> {
        // A target that leaves the key out keeps the default, None.
        let answer = get(k).unwrap_or("None");
        // The URL option that sets this policy (firmware/engine's iscsi:// sources).
        let option = if k == "HeaderDigest" { "header_digest" } else { "data_digest" };
        want.accepts(answer).ok_or_else(|| IscsiError::Negotiation {
            key: k.into(),
            detail: match want {
                DigestPolicy::Off => {
                    format!("we offered None and the target answered {answer:?}; {}", digest_required(option))
                }
                DigestPolicy::Require => format!(
                    "we offered CRC32C only and the target answered {answer:?}: it does not do CRC32C \
                     digests; drop {option}=crc32c (the default offers CRC32C,None)"
                ),
                DigestPolicy::Prefer => format!(
                    "we offered CRC32C,None and the target answered {answer:?}, which is neither; \
                     check the target's {k} setting"
                ),
            },
        })
    };
    if let Some(erl) = get("ErrorRecoveryLevel") {
        if erl != "0" {
            return Err(IscsiError::Negotiation {
                key: "ErrorRecoveryLevel".into(),
                detail: format!("target chose {erl}, we only do 0"),
            });
        }
    }
    let last = x.last.take().ok_or_else(|| IscsiError::Protocol { detail: "login ended without response".into() })?;
    let max_burst = num("MaxBurstLength", 262_144)?.min(p.max_burst.max(512));
    let first_burst = num("FirstBurstLength", 65_536)?.min(max_burst);
    Ok(Negotiated {
        digests: Digests {
            header: digest("HeaderDigest", p.header_digest)?,
            data: digest("DataDigest", p.data_digest)?,
        },
        their_max_recv_data: num("MaxRecvDataSegmentLength", 8192)?,
        max_burst,
        first_burst,
        initial_r2t: yes("InitialR2T", true),
        immediate_data: yes("ImmediateData", true),
        tsih: u16::from_be_bytes([last.bhs[14], last.bhs[15]]),
        cmd_sn: last.exp_cmd_sn(),
        exp_cmd_sn: last.exp_cmd_sn(),
        max_cmd_sn: last.max_cmd_sn(),
        exp_stat_sn: x.exp_stat_sn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_target::{self, Script};

    /// Logs in to a fake target playing `script` with digest policies `(header, data)`.
    fn login_with(
        script: Script,
        digests: (DigestPolicy, DigestPolicy),
    ) -> (Result<Negotiated, IscsiError>, Vec<(String, String)>) {
        let (portal, seen) = fake_target::start(script, |_, _, _| {});
        let mut w = TcpStream::connect(&portal).unwrap();
        w.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut r = PduReader::new(w.try_clone().unwrap(), 1 << 20);
        let p = LoginParams {
            portal: &portal,
            initiator: "iqn.2024-01.test.rackvault:me",
            target: Some("iqn.2024-01.test.rackvault:t"),
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 0,
            cmd_sn: 1,
            chap: None,
            mutual: None,
            header_digest: digests.0,
            data_digest: digests.1,
            max_recv_data: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
        };
        let res = login(&mut w, &mut r, &p);
        drop((w, r));
        (res, seen.join().unwrap().keys)
    }

    #[test]
    fn by_default_both_digests_are_offered_as_crc32c_then_none_and_the_targets_choice_is_used() {
        let cfg = crate::SessionConfig::new("h", "t");
        let default = (cfg.header_digest, cfg.data_digest);
        assert_eq!(default, (DigestPolicy::Prefer, DigestPolicy::Prefer));
        for (h, d) in [("CRC32C", "CRC32C"), ("CRC32C", "None"), ("None", "None")] {
            let (res, keys) = login_with(Script { header_digest: h, data_digest: d, ..Script::default() }, default);
            let neg = res.unwrap_or_else(|e| panic!("target choosing {h}/{d}: {e}"));
            assert_eq!(neg.digests, Digests { header: h == "CRC32C", data: d == "CRC32C" });
            assert_eq!(text::get(&keys, "HeaderDigest"), Some("CRC32C,None"));
            assert_eq!(text::get(&keys, "DataDigest"), Some("CRC32C,None"));
        }
    }

    #[test]
    fn a_target_that_requires_digests_accepts_the_default_offer_and_explains_a_none_only_offer() {
        let strict = Script { require_digests: true, ..Script::default() };
        let (res, _) = login_with(strict.clone(), Default::default());
        let neg = res.unwrap_or_else(|e| panic!("default offer to a target requiring digests: {e}"));
        assert_eq!(neg.digests, Digests { header: true, data: true });

        let (res, keys) = login_with(strict, (DigestPolicy::Off, DigestPolicy::Prefer));
        assert_eq!(text::get(&keys, "HeaderDigest"), Some("None"));
        let msg = res.unwrap_err().to_string();
        assert!(msg.contains("HeaderDigest") && msg.contains("requires CRC32C"), "{msg}");
        assert!(msg.contains("drop header_digest=none"), "{msg}");
    }

    #[test]
    fn forced_digest_settings_offer_one_value_and_a_target_answering_otherwise_names_the_url_option() {
        let (res, keys) =
            login_with(Script { header_digest: "CRC32C", ..Script::default() }, (DigestPolicy::Off, DigestPolicy::Off));
        assert_eq!(text::get(&keys, "HeaderDigest"), Some("None"));
        let msg = res.unwrap_err().to_string();
        assert!(
            msg.contains("HeaderDigest") && msg.contains("requires CRC32C") && msg.contains("header_digest=none"),
            "{msg}"
        );

        let (res, keys) = login_with(Script::default(), (DigestPolicy::Prefer, DigestPolicy::Require));
        assert_eq!(text::get(&keys, "DataDigest"), Some("CRC32C"));
        let msg = res.unwrap_err().to_string();
        assert!(msg.contains("DataDigest") && msg.contains("data_digest=crc32c"), "{msg}");
    }

    #[test]
    fn a_target_not_found_or_not_allowed_is_explained_with_our_initiator_name() {
        for detail in [2, 3] {
            let (res, _) = login_with(Script { status: (2, detail), ..Script::default() }, Default::default());
            let err = res.unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, IscsiError::LoginFailed { status_class: 2, .. }), "{msg}");
            assert!(msg.contains("iqn.2024-01.test.rackvault:t"), "{msg}");
            let meaning = if detail == 2 { "authorization failure" } else { "not found or not allowed" };
            assert!(msg.contains(meaning), "{msg}");
            assert!(msg.contains("ACL allows our initiator name iqn.2024-01.test.rackvault:me"), "{msg}");
            assert!(msg.contains("initiator_name="), "{msg}");
        }
    }
}
