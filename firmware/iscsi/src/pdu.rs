//! iSCSI PDU framing (RFC 7143 §11).
//!
//! ```text
//!  0        1        2        3        4        5..8      8..16     16..20  20..48
//! |.I|opcd |F|flags | op-specific     |AHSlen  |DataSegLen|LUN/opsp |ITT    |op-specific (TTT, SNs..)|
//! [AHS: AHSlen*4 bytes] [HeaderDigest: CRC32C(BHS+AHS), 4 bytes LE]
//! [Data segment: DataSegLen bytes, padded to 4] [DataDigest: CRC32C(data+pad), 4 bytes LE]
//! ```
//! All multi-byte fields are big-endian; the CRC32C digests travel least significant byte
//! first (RFC 7143 §13.1 and its test vectors: 32 zero bytes → `aa 36 91 8a`).
//!
//! [`PduReader`] reads PDUs from any byte stream and trusts nothing: a data segment longer than
//! the limit we declared (our MaxRecvDataSegmentLength) is refused *before* anything is
//! allocated, and a digest mismatch is an error. On a socket with a read timeout, a timeout at
//! a PDU boundary is reported as "idle" (used for keepalives) while one inside a PDU keeps
//! waiting until the stall limit, so no byte is ever lost to a timeout.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Length of the basic header segment.
pub const BHS_LEN: usize = 48;
/// The reserved tag value ("no task").
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (low 6 bits of byte 0).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TMF_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESP: u8 = 0x21;
    pub const TMF_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// One PDU: header, additional header segments, data segment (without padding or digests).
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Pdu {
    // Data segments can hold CHAP values and bulk data: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pdu(op 0x{:02x}, itt 0x{:08x}, {} data bytes)", self.opcode(), self.itt(), self.data.len())
    }
}

impl Pdu {
    /// A PDU with opcode `opcode` (immediate when `immediate`), other fields zero.
    pub fn new(opcode: u8, immediate: bool) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = (opcode & 0x3f) | if immediate { 0x40 } else { 0 };
        Pdu { bhs, ahs: Vec::new(), data: Vec::new() }
    }

    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }
    pub fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.bhs[i], self.bhs[i + 1], self.bhs[i + 2], self.bhs[i + 3]])
    }
    pub fn set_u32(&mut self, i: usize, v: u32) {
        self.bhs[i..i + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v)
    }
    /// Target transfer tag (most PDUs), bytes 20..24.
    pub fn ttt(&self) -> u32 {
        self.u32_at(20)
    }
    pub fn set_lun(&mut self, lun: [u8; 8]) {
        self.bhs[8..16].copy_from_slice(&lun);
    }
    pub fn lun(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.bhs[8..16]);
        l
    }
    /// StatSN of target PDUs (bytes 24..28).
    pub fn stat_sn(&self) -> u32 {
        self.u32_at(24)
    }
    /// ExpCmdSN of target PDUs (bytes 28..32).
    pub fn exp_cmd_sn(&self) -> u32 {
        self.u32_at(28)
    }
    /// MaxCmdSN of target PDUs (bytes 32..36).
    pub fn max_cmd_sn(&self) -> u32 {
        self.u32_at(32)
    }

    /// Serialises header, AHS, data, padding and the configured digests. The DataSegmentLength
    /// and TotalAHSLength fields are filled in from the vectors.
    pub fn encode(&self, digests: Digests) -> Vec<u8> {
        let mut out = Vec::with_capacity(BHS_LEN + self.ahs.len() + self.data.len() + 12);
        let mut bhs = self.bhs;
        bhs[4] = (self.ahs.len() / 4) as u8;
        let dl = (self.data.len() as u32).to_be_bytes();
        bhs[5..8].copy_from_slice(&dl[1..4]);
        out.extend_from_slice(&bhs);
        out.extend_from_slice(&self.ahs);
        if digests.header {
            let c = crc32c::crc32c(&out);
            out.extend_from_slice(&c.to_le_bytes());
        }
        if !self.data.is_empty() {
            let start = out.len();
            out.extend_from_slice(&self.data);
            out.resize(out.len() + pad(self.data.len()), 0);
            if digests.data {
                let c = crc32c::crc32c(&out[start..]);
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }
}

/// Bytes of padding after a data segment of `len` bytes.
pub fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Which digests are in use on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Why a PDU could not be read.
#[derive(Debug)]
pub enum PduError {
    /// The stream ended (cleanly between PDUs or in the middle of one).
    Eof { mid_pdu: bool },
    /// A socket error.
    Io(io::Error),
    /// Nothing arrived inside a PDU for longer than the stall limit.
    Stalled,
    /// The peer announced a data segment larger than we accept.
    TooLong { len: usize, max: usize },
    /// The header digest the target sent does not match the header (BHS + AHS) we received.
    HeaderDigest { sent: u32, computed: u32 },
    /// The data digest the target sent does not match the data segment (with its padding).
    DataDigest { sent: u32, computed: u32 },
}

impl std::fmt::Display for PduError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PduError::Eof { mid_pdu: false } => f.write_str("the target closed the connection"),
            PduError::Eof { mid_pdu: true } => f.write_str("the target closed the connection in the middle of a PDU"),
            PduError::Io(e) => write!(f, "socket error: {e}"),
            PduError::Stalled => f.write_str("the target stopped sending in the middle of a PDU"),
            PduError::TooLong { len, max } => {
                write!(f, "the target sent a {len}-byte data segment, more than the {max} bytes we accept")
            }
            PduError::HeaderDigest { sent, computed } => write!(
                f,
                "header digest (CRC32C) mismatch: a PDU header from the target carries digest \
                 0x{sent:08x} but its bytes give 0x{computed:08x}, so the header was corrupted on \
                 the way or the target computes digests wrongly"
            ),
            PduError::DataDigest { sent, computed } => write!(
                f,
                "data digest (CRC32C) mismatch: a data segment from the target carries digest \
                 0x{sent:08x} but its bytes give 0x{computed:08x}, so the data was corrupted on the \
                 way or the target computes digests wrongly"
            ),
        }
    }
}

impl PduError {
    /// The peer broke the protocol (as opposed to the connection failing).
    pub fn is_protocol(&self) -> bool {
        matches!(self, PduError::TooLong { .. } | PduError::HeaderDigest { .. } | PduError::DataDigest { .. })
    }
}

/// Reads PDUs from a byte stream (see the module docs for the timeout rules).
#[derive(Debug)]
pub struct PduReader<R> {
    inner: R,
    /// Largest data segment accepted (our declared MaxRecvDataSegmentLength).
    pub max_data: usize,
    pub digests: Digests,
    /// How long a PDU may stall half-read before the read fails.
    pub stall: Duration,
}

enum Fill {
    Done,
    Idle,
}

impl<R: Read> PduReader<R> {
    pub fn new(inner: R, max_data: usize) -> Self {
        PduReader { inner, max_data, digests: Digests::default(), stall: Duration::from_secs(30) }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    fn fill(&mut self, buf: &mut [u8], boundary: bool) -> Result<Fill, PduError> {
        let mut n = 0;
        let mut stalled_since: Option<Instant> = None;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => return Err(PduError::Eof { mid_pdu: n > 0 || !boundary }),
                Ok(k) => {
                    n += k;
                    stalled_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if n == 0 && boundary {
                        return Ok(Fill::Idle);
                    }
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.stall {
                        return Err(PduError::Stalled);
                    }
                }
                Err(e) => return Err(PduError::Io(e)),
            }
        }
        Ok(Fill::Done)
    }

    /// The next PDU; `Ok(None)` when the read timed out before its first byte.
    pub fn read_pdu(&mut self) -> Result<Option<Pdu>, PduError> {
        let Some(h) = self.read_header()? else { return Ok(None) };
        let data = self.read_data(h.data_len)?;
        Ok(Some(Pdu { bhs: h.bhs, ahs: h.ahs, data }))
    }

    /// The next PDU's header (BHS, AHS, header digest checked); its data segment must be read
    /// next with [`read_data`](Self::read_data) or [`read_data_into`](Self::read_data_into).
    /// The announced data length is checked against `max_data` before anything is allocated.
    /// `Ok(None)` when the read timed out before the first byte.
    pub fn read_header(&mut self) -> Result<Option<Header>, PduError> {
        let mut bhs = [0u8; BHS_LEN];
        if let Fill::Idle = self.fill(&mut bhs, true)? {
            return Ok(None);
        }
        let ahs_len = bhs[4] as usize * 4;
        let data_len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        if data_len > self.max_data {
            return Err(PduError::TooLong { len: data_len, max: self.max_data });
        }
        let mut ahs = vec![0u8; ahs_len];
        self.fill(&mut ahs, false)?;
        if self.digests.header {
            let mut d = [0u8; 4];
            self.fill(&mut d, false)?;
            let computed = crc32c::crc32c_append(crc32c::crc32c(&bhs), &ahs);
            let sent = u32::from_le_bytes(d);
            if computed != sent {
                return Err(PduError::HeaderDigest { sent, computed });
            }
        }
        Ok(Some(Header { bhs, ahs, data_len }))
    }

    /// Reads a data segment of `len` bytes (the header's `data_len`) into a new vector.
    pub fn read_data(&mut self, len: usize) -> Result<Vec<u8>, PduError> {
        if len > self.max_data {
            return Err(PduError::TooLong { len, max: self.max_data });
        }
        let mut data = vec![0u8; len];
        self.read_data_into(&mut data)?;
        Ok(data)
    }

    /// Reads a data segment of exactly `dst.len()` bytes (the header's `data_len`) into `dst`,
    /// then its padding and data digest (checked).
    pub fn read_data_into(&mut self, dst: &mut [u8]) -> Result<(), PduError> {
        if dst.is_empty() {
            return Ok(());
        }
        self.fill(dst, false)?;
        let mut padding = [0u8; 4];
        let padding = &mut padding[..pad(dst.len())];
        self.fill(padding, false)?;
        if self.digests.data {
            let mut d = [0u8; 4];
            self.fill(&mut d, false)?;
            let computed = crc32c::crc32c_append(crc32c::crc32c(dst), padding);
            let sent = u32::from_le_bytes(d);
            if computed != sent {
                return Err(PduError::DataDigest { sent, computed });
            }
        }
        Ok(())
    }
}

/// A PDU header read ahead of its data segment (see [`PduReader::read_header`]).
#[derive(Debug, Clone)]
pub struct Header {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    /// DataSegmentLength (without padding), already checked against the reader's limit.
    pub data_len: usize,
}

impl Header {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.bhs[i], self.bhs[i + 1], self.bhs[i + 2], self.bhs[i + 3]])
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
}

/// Serial number arithmetic (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_3720_appendix_b4_vectors_in_wire_byte_order() {
        let inc: Vec<u8> = (0..32).collect();
        let dec: Vec<u8> = (0..32).rev().collect();
        // The SCSI Read (10) command PDU of the appendix.
        let read10: [u8; 48] = [
            0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14, 0, 0, 0,
            0x18, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
        ];
        for (what, data, wire) in [
            ("32 zero bytes", &[0u8; 32][..], [0xaa, 0x36, 0x91, 0x8a]),
            ("32 0xff bytes", &[0xffu8; 32][..], [0x43, 0xab, 0xa8, 0x62]),
            ("32 incrementing bytes", &inc[..], [0x4e, 0x79, 0xdd, 0x46]),
            ("32 decrementing bytes", &dec[..], [0x5c, 0xdb, 0x3f, 0x11]),
            ("a READ(10) command PDU", &read10[..], [0x56, 0x3a, 0x96, 0xd9]),
        ] {
            assert_eq!(crc32c::crc32c(data).to_le_bytes(), wire, "{what}");
        }
        // encode() appends that digest after the 48-byte header.
        let mut p = Pdu::new(op::SCSI_CMD, true);
        p.bhs.copy_from_slice(&read10);
        let wire = p.encode(Digests { header: true, data: false });
        assert_eq!(wire[48..], [0x56, 0x3a, 0x96, 0xd9]);
    }

    #[test]
    fn a_pdu_whose_header_or_data_digest_is_wrong_is_a_protocol_error_naming_both_digests() {
        let mut p = Pdu::new(op::DATA_IN, false);
        p.set_itt(9);
        p.data = b"some data".to_vec();
        let both = Digests { header: true, data: true };
        let good = p.encode(both);
        let mut bad = good.clone();
        bad[BHS_LEN] ^= 0xff; // the header digest's first byte
        let mut r = PduReader::new(&bad[..], 8192);
        r.digests = both;
        let e = r.read_pdu().unwrap_err();
        assert!(matches!(e, PduError::HeaderDigest { .. }) && e.is_protocol(), "{e}");
        let sent = u32::from_le_bytes(bad[BHS_LEN..BHS_LEN + 4].try_into().unwrap());
        let computed = u32::from_le_bytes(good[BHS_LEN..BHS_LEN + 4].try_into().unwrap());
        let msg = e.to_string();
        assert!(msg.contains("header digest (CRC32C) mismatch"), "{msg}");
        assert!(msg.contains(&format!("0x{sent:08x}")) && msg.contains(&format!("0x{computed:08x}")), "{msg}");
        // A header digest that is right but a data segment changed on the way.
        let mut bad = good.clone();
        bad[BHS_LEN + 4] ^= 0x01;
        let mut r = PduReader::new(&bad[..], 8192);
        r.digests = both;
        let e = r.read_pdu().unwrap_err();
        assert!(matches!(e, PduError::DataDigest { .. }) && e.is_protocol(), "{e}");
        assert!(e.to_string().contains("data was corrupted on the way"), "{e}");
    }

    #[test]
    fn crc_round_trip() {
        for digests in [Digests::default(), Digests { header: true, data: true }] {
            let mut p = Pdu::new(op::SCSI_CMD, false);
            p.set_itt(7);
            p.data = b"hello".to_vec();
            let wire = p.encode(digests);
            assert_eq!(wire.len(), 48 + 8 + if digests.header { 8 } else { 0 });
            let mut r = PduReader::new(&wire[..], 8192);
            r.digests = digests;
            let q = r.read_pdu().unwrap().unwrap();
            assert_eq!(q.itt(), 7);
            assert_eq!(q.data, b"hello");
            assert!(matches!(r.read_pdu(), Err(PduError::Eof { mid_pdu: false })));
        }
    }

    #[test]
    fn hostile_lengths_and_digests() {
        let mut p = Pdu::new(op::DATA_IN, false);
        p.data = vec![1; 9000];
        let wire = p.encode(Digests::default());
        assert!(matches!(PduReader::new(&wire[..], 8192).read_pdu(), Err(PduError::TooLong { len: 9000, .. })));
        let mut wire = p.encode(Digests { header: true, data: true });
        let mut r = PduReader::new(&wire[..], 65536);
        r.digests = Digests { header: true, data: true };
        assert!(r.read_pdu().is_ok());
        wire[60] ^= 1;
        let mut r = PduReader::new(&wire[..], 65536);
        r.digests = Digests { header: true, data: true };
        assert!(matches!(r.read_pdu(), Err(PduError::DataDigest { .. })));
        wire[3] ^= 1;
        let mut r = PduReader::new(&wire[..], 65536);
        r.digests = Digests { header: true, data: false };
        assert!(matches!(r.read_pdu(), Err(PduError::HeaderDigest { .. })));
        assert!(matches!(PduReader::new(&wire[..20], 65536).read_pdu(), Err(PduError::Eof { mid_pdu: true })));
    }

    #[test]
    fn serial_numbers() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(3, 3));
    }
}
