//! A scripted iSCSI target on loopback for unit tests: one connection, a login without
//! authentication that answers the digests it is told to, then a test-supplied closure that
//! plays the rest of the connection. Test-only.

use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

use crate::pdu::{op, Digests, Pdu, PduReader};
use crate::text;

/// How the fake target answers a login.
#[derive(Debug, Clone)]
pub struct Script {
    /// Login status (class, detail) of the first answer; (0, 0) lets the login go on.
    pub status: (u8, u8),
    /// The target's answer to HeaderDigest and DataDigest (its choice from our offer).
    pub header_digest: &'static str,
    pub data_digest: &'static str,
    /// Require CRC32C for both digests, as a strict target does: answer `CRC32C` when the
    /// initiator's list holds it and `Reject` when it does not (RFC 7143 §6.2); the two
    /// fields above are then not used.
    pub require_digests: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script { status: (0, 0), header_digest: "None", data_digest: "None", require_digests: false }
    }
}

/// What the fake target saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every key the initiator sent during the login, in order.
    pub keys: Vec<(String, String)>,
}

/// Starts the target; returns its portal and a handle yielding what it saw. After a
/// successful login, `after` gets the socket halves with the negotiated digests turned on.
pub fn start(
    script: Script,
    after: impl FnOnce(TcpStream, PduReader<TcpStream>, Digests) + Send + 'static,
) -> (String, JoinHandle<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let portal = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (mut w, _) = l.accept().unwrap();
        let mut r = PduReader::new(w.try_clone().unwrap(), 1 << 20);
        let mut seen = Seen::default();
        let mut stat_sn = 1u32;
        loop {
            let Ok(Some(req)) = r.read_pdu() else { return seen };
            assert_eq!(req.opcode(), op::LOGIN_REQ);
            let keys = text::parse(&req.data).unwrap();
            seen.keys.extend(keys.iter().cloned());
            let csg = (req.flags() >> 2) & 3;
            let mut resp = Pdu::new(op::LOGIN_RESP, false);
            resp.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
            resp.set_itt(req.itt());
            resp.set_u32(24, stat_sn);
            resp.set_u32(28, req.u32_at(24));
            resp.set_u32(32, req.u32_at(24).wrapping_add(16));
            stat_sn += 1;
            if script.status != (0, 0) {
                (resp.bhs[36], resp.bhs[37]) = script.status;
                std::io::Write::write_all(&mut w, &resp.encode(Digests::default())).unwrap();
                return seen;
            }
            let done = csg == 1;
            let (mut header, mut data) = (script.header_digest, script.data_digest);
            if done {
                if script.require_digests {
                    let choose = |k: &str| match text::get(&keys, k) {
                        Some(offer) if offer.split(',').any(|v| v == "CRC32C") => "CRC32C",
                        _ => "Reject",
                    };
                    (header, data) = (choose("HeaderDigest"), choose("DataDigest"));
                }
                resp.set_flags(0x80 | (1 << 2) | 3);
                resp.bhs[14..16].copy_from_slice(&1u16.to_be_bytes());
                resp.data = text::encode(&[("HeaderDigest", header), ("DataDigest", data)]);
            } else {
                resp.set_flags(0x80 | 1);
                resp.data = text::encode(&[("AuthMethod", "None")]);
            }
            std::io::Write::write_all(&mut w, &resp.encode(Digests::default())).unwrap();
            if done {
                let digests = Digests { header: header == "CRC32C", data: data == "CRC32C" };
                r.digests = digests;
                after(w, r, digests);
                return seen;
            }
        }
    });
    (portal, h)
}
