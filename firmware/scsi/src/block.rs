//! [`BlockDevice`]: a disk logical unit over any [`ScsiTransport`].
//!
//! `open` identifies the unit and learns its geometry once:
//! 1. standard INQUIRY: refuse anything that is not a connected disk (peripheral type 0);
//! 2. VPD 0x00 (supported pages), then 0x80 serial, 0xB0 block limits, 0xB2 provisioning when
//!    listed (a unit without VPD support still opens);
//! 3. READ CAPACITY(16), falling back to READ CAPACITY(10) when the unit rejects it.
//!
//! Reads are byte ranges aligned to the logical block size. [`BlockDevice::read_many`] cuts each
//! into READ(16) commands of at most [`DeviceInfo::max_io_bytes`] (the unit's MAXIMUM TRANSFER
//! LENGTH, capped at [`MAX_IO_BYTES`]) and hands them all to the transport's `execute_many`,
//! which keeps as many outstanding as it can.
//!
//! Retry policy (per command): UNIT ATTENTION is retried up to [`UA_RETRIES`] times (it reports a
//! reset or a change once, and the command itself was not run); BUSY / TASK SET FULL / TASK
//! ABORTED are retried up to [`BUSY_RETRIES`] times with a growing pause. Everything else fails
//! the call with a [`ScsiError`] naming the command and the decoded sense. A READ that moves
//! fewer bytes than asked (underrun residual) is a [`ScsiError::ShortRead`], never zero fill.
//!
//! The struct is immutable after `open` and `Send + Sync`; concurrency is the transport's.

use std::sync::Arc;
use std::time::Duration;

use crate::cdb::{self, sbc, spc};
use crate::error::{sense_hint, status_hint};
use crate::parse::{self, device_type, LbaState};
use crate::{Command, Completion, DataDir, Residual, ScsiError, ScsiTransport, Status};

/// Upper bound of one READ/WRITE command's transfer, whatever the unit allows: big enough to
/// amortise per-command cost, small enough to keep memory per outstanding command modest.
pub const MAX_IO_BYTES: u32 = 1 << 20;
/// How often a command failing with UNIT ATTENTION is tried again.
pub const UA_RETRIES: u32 = 5;
/// How often a command answered BUSY / TASK SET FULL is tried again.
pub const BUSY_RETRIES: u32 = 10;

/// What `open` learnt about the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Unit serial number (VPD 0x80), when reported.
    pub serial: Option<String>,
    /// Logical unit designators (VPD 0x83, association 0) as text, e.g. NAA in hex.
    pub identifiers: Vec<String>,
    pub block_size: u32,
    pub blocks: u64,
    /// Thin provisioning management enabled: GET LBA STATUS tells mapped from unmapped.
    pub lbpme: bool,
    /// Unmapped blocks read as zeros.
    pub lbprz: bool,
    /// Block limits VPD, when reported.
    pub limits: Option<parse::BlockLimits>,
    /// Largest READ/WRITE this layer issues, in bytes (a multiple of `block_size`).
    pub max_io_bytes: u32,
}

impl DeviceInfo {
    /// Capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size as u64)
    }
}

/// One run of GET LBA STATUS results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaExtent {
    pub lba: u64,
    pub blocks: u64,
    /// `false` when deallocated or anchored: no data stored (reads as zeros when `lbprz`).
    pub mapped: bool,
}

/// A disk logical unit.
#[derive(Debug)]
pub struct BlockDevice {
    transport: Arc<dyn ScsiTransport>,
    name: String,
    info: DeviceInfo,
}

impl BlockDevice {
    /// Identifies the unit and reads its capacity; fails when it is not a disk.
    pub fn open(transport: Arc<dyn ScsiTransport>) -> Result<BlockDevice, ScsiError> {
        let name = transport.describe();
        let mut dev = BlockDevice {
            transport,
            name,
            info: DeviceInfo {
                vendor: String::new(),
                product: String::new(),
                revision: String::new(),
                serial: None,
                identifiers: Vec::new(),
                block_size: 512,
                blocks: 0,
                lbpme: false,
                lbprz: false,
                limits: None,
                max_io_bytes: MAX_IO_BYTES,
            },
        };
        let std = dev.query(&spc::inquiry(96), 96)?;
        let inq = parse::inquiry(&std).map_err(|e| dev.malformed("INQUIRY", e))?;
        if inq.qualifier != 0 {
            return Err(ScsiError::NoDevice { device: dev.name.clone(), qualifier: inq.qualifier });
        }
        if inq.device_type != device_type::DISK {
            return Err(ScsiError::NotADisk {
                device: dev.name.clone(),
                device_type: inq.device_type,
                kind: device_type::name(inq.device_type),
            });
        }
        dev.info.vendor = inq.vendor;
        dev.info.product = inq.product;
        dev.info.revision = inq.revision;

        // VPD pages are optional: a unit that rejects page 0 simply has none we can use.
        let pages = dev
            .query(&spc::inquiry_vpd(spc::vpd::SUPPORTED_PAGES, 255), 255)
            .ok()
            .and_then(|b| parse::vpd_supported_pages(&b).ok())
            .unwrap_or_default();
        let vpd = |page: u8| -> Option<Vec<u8>> {
            if pages.contains(&page) {
                dev.query(&spc::inquiry_vpd(page, 1024), 1024).ok()
            } else {
                None
            }
        };
        let serial = vpd(spc::vpd::UNIT_SERIAL).and_then(|b| parse::vpd_serial(&b).ok()).filter(|s| !s.is_empty());
        let ids = vpd(spc::vpd::DEVICE_ID)
            .and_then(|b| parse::vpd_device_id(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.association == 0)
            .map(|d| d.text())
            .collect();
        let limits = vpd(spc::vpd::BLOCK_LIMITS).and_then(|b| parse::vpd_block_limits(&b).ok());
        let prov = vpd(spc::vpd::LOGICAL_BLOCK_PROVISIONING).and_then(|b| parse::vpd_provisioning(&b).ok());
        dev.info.serial = serial;
        dev.info.identifiers = ids;
        dev.info.limits = limits;

        let cap = match dev.query(&sbc::read_capacity16(32), 32) {
            Ok(b) => parse::read_capacity16(&b).map_err(|e| dev.malformed("READ CAPACITY(16)", e))?,
            Err(ScsiError::Check { .. }) => {
                let b = dev.query(&sbc::read_capacity10(), 8)?;
                parse::read_capacity10(&b).map_err(|e| dev.malformed("READ CAPACITY(10)", e))?
            }
            Err(e) => return Err(e),
        };
        if cap.block_size == 0 || !cap.block_size.is_power_of_two() || cap.block_size > MAX_IO_BYTES {
            return Err(ScsiError::Malformed {
                device: dev.name.clone(),
                command: "READ CAPACITY".into(),
                detail: format!("logical block size {} is not a power of two up to 1 MiB", cap.block_size),
            });
        }
        dev.info.block_size = cap.block_size;
        dev.info.blocks = cap.blocks;
        dev.info.lbpme = cap.lbpme;
        dev.info.lbprz = cap.lbprz || prov.is_some_and(|p| p.lbprz);
        let mut max = MAX_IO_BYTES as u64;
        if let Some(l) = limits.filter(|l| l.max_transfer_blocks > 0) {
            max = max.min(l.max_transfer_blocks as u64 * cap.block_size as u64);
        }
        dev.info.max_io_bytes = ((max / cap.block_size as u64).max(1) * cap.block_size as u64) as u32;
        Ok(dev)
    }

    /// What `open` learnt.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The transport's description of the unit.
    pub fn describe(&self) -> &str {
        &self.name
    }

    /// The transport, for commands this layer does not wrap.
    pub fn transport(&self) -> &Arc<dyn ScsiTransport> {
        &self.transport
    }

    /// Capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.info.size_bytes()
    }

    /// Fills every buffer with the bytes at its offset. Offsets and lengths must be multiples
    /// of the logical block size and inside the disk. All READ(16)s of the batch go to the
    /// transport at once.
    pub fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> Result<(), ScsiError> {
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::new();
        for (off, buf) in reqs.iter_mut() {
            let len = buf.len();
            self.check_range(*off, len, "read")?;
            for (i, chunk) in buf.chunks_mut(self.info.max_io_bytes as usize).enumerate() {
                pieces.push((*off + i as u64 * self.info.max_io_bytes as u64, chunk));
            }
        }
        let bs = self.info.block_size as u64;
        let cdbs: Vec<[u8; 16]> =
            pieces.iter().map(|(off, b)| sbc::read16(off / bs, (b.len() as u64 / bs) as u32, false)).collect();
        let lens: Vec<usize> = pieces.iter().map(|(_, b)| b.len()).collect();
        let mut bufs: Vec<DataDir<'_>> = pieces.into_iter().map(|(_, b)| DataDir::In(b)).collect();
        let done = self.run_batch(&cdbs, &mut bufs)?;
        for (i, c) in done.iter().enumerate() {
            let short = match c.residual {
                Residual::Under(n) => n > 0,
                _ => false,
            };
            if short || c.transferred < lens[i] {
                return Err(ScsiError::ShortRead {
                    device: self.name.clone(),
                    command: "READ(16)".into(),
                    lba: u64::from_be_bytes(cdbs[i][2..10].try_into().unwrap_or([0; 8])),
                    expected: lens[i],
                    got: c.transferred.min(lens[i].saturating_sub(match c.residual {
                        Residual::Under(n) => n,
                        _ => 0,
                    })),
                });
            }
        }
        Ok(())
    }

    /// Reads one range (see [`read_many`](Self::read_many)).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ScsiError> {
        self.read_many(&mut [(offset, buf)])
    }

    /// Writes `data` at `offset` with WRITE(16) (block aligned). Used by tests and, later,
    /// restores to a LUN.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ScsiError> {
        self.check_range(offset, data.len(), "write")?;
        let bs = self.info.block_size as u64;
        let max = self.info.max_io_bytes as usize;
        let pieces: Vec<&[u8]> = data.chunks(max).collect();
        let cdbs: Vec<[u8; 16]> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| sbc::write16((offset + (i * max) as u64) / bs, (p.len() as u64 / bs) as u32, false))
            .collect();
        let mut bufs: Vec<DataDir<'_>> = pieces.into_iter().map(DataDir::Out).collect();
        self.run_batch(&cdbs, &mut bufs)?;
        Ok(())
    }

    /// Provisioning status of `[start_lba, start_lba + blocks)`, clipped to the disk: sorted,
    /// contiguous runs covering the range, adjacent runs merged. Without LBPME every block is
    /// reported mapped (the unit cannot tell).
    pub fn lba_status(&self, start_lba: u64, blocks: u64) -> Result<Vec<LbaExtent>, ScsiError> {
        let end = start_lba.saturating_add(blocks).min(self.info.blocks);
        let mut out: Vec<LbaExtent> = Vec::new();
        let mut push = |lba: u64, n: u64, mapped: bool| {
            if n == 0 {
                return;
            }
            match out.last_mut() {
                Some(l) if l.mapped == mapped && l.lba + l.blocks == lba => l.blocks += n,
                _ => out.push(LbaExtent { lba, blocks: n, mapped }),
            }
        };
        if start_lba >= end {
            return Ok(out);
        }
        if !self.info.lbpme {
            push(start_lba, end - start_lba, true);
            return Ok(out);
        }
        const ALLOC: u32 = 8 + 16 * 512;
        let mut cur = start_lba;
        while cur < end {
            let b = self.query(&sbc::get_lba_status(cur, ALLOC), ALLOC as usize)?;
            let descs = parse::get_lba_status(&b).map_err(|e| self.malformed("GET LBA STATUS", e))?;
            let before = cur;
            for d in descs {
                let d_end = d.lba.saturating_add(d.blocks as u64).min(end);
                if d_end <= cur {
                    continue;
                }
                if d.lba > cur {
                    // A gap the unit did not describe: read it to be safe.
                    push(cur, d.lba.min(end) - cur, true);
                    cur = d.lba.min(end);
                }
                let mapped = !matches!(d.state, LbaState::Deallocated | LbaState::Anchored);
                push(cur, d_end - cur, mapped);
                cur = d_end;
                if cur >= end {
                    break;
                }
            }
            if cur == before {
                // No progress (empty or useless answer): report the rest as mapped rather than
                // loop or guess that it is empty.
                push(cur, end - cur, true);
                cur = end;
            }
        }
        Ok(out)
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready(&self) -> Result<(), ScsiError> {
        self.run_batch(&[spc::test_unit_ready()], &mut [DataDir::None]).map(|_| ())
    }

    /// REPORT LUNS through this unit's transport.
    pub fn report_luns(&self) -> Result<Vec<u64>, ScsiError> {
        let b = self.query(&spc::report_luns(4096), 4096)?;
        parse::report_luns(&b).map_err(|e| self.malformed("REPORT LUNS", e))
    }

    fn check_range(&self, off: u64, len: usize, what: &str) -> Result<(), ScsiError> {
        let bs = self.info.block_size as u64;
        let bad = |detail: String| Err(ScsiError::BadRequest { device: self.name.clone(), detail });
        if !off.is_multiple_of(bs) || !(len as u64).is_multiple_of(bs) {
            return bad(format!(
                "{what} of {len} bytes at offset {off} is not aligned to the {bs}-byte logical block size"
            ));
        }
        if off.checked_add(len as u64).is_none_or(|e| e > self.size_bytes()) {
            return bad(format!(
                "{what} of {len} bytes at offset {off} is past the end of the {}-byte disk",
                self.size_bytes()
            ));
        }
        Ok(())
    }

    fn malformed(&self, command: &str, e: parse::ParseError) -> ScsiError {
        ScsiError::Malformed { device: self.name.clone(), command: command.into(), detail: e.to_string() }
    }

    /// Runs one data-in command and returns the bytes the unit really sent.
    fn query<const N: usize>(&self, cdb: &[u8; N], alloc: usize) -> Result<Vec<u8>, ScsiError> {
        let mut buf = vec![0u8; alloc];
        let c = self.run_batch(std::slice::from_ref(cdb), &mut [DataDir::In(&mut buf)])?;
        let n = c[0].transferred.min(alloc);
        buf.truncate(n);
        Ok(buf)
    }

    /// Runs `cdbs[i]` with `data[i]` as one batch, retrying per command on UNIT ATTENTION and
    /// busy statuses; returns the GOOD completions in order.
    fn run_batch<const N: usize>(
        &self,
        cdbs: &[[u8; N]],
        data: &mut [DataDir<'_>],
    ) -> Result<Vec<Completion>, ScsiError> {
        let mut results: Vec<Option<Completion>> = vec![None; cdbs.len()];
        let mut pending: Vec<usize> = (0..cdbs.len()).collect();
        let (mut ua, mut busy) = (0u32, 0u32);
        while !pending.is_empty() {
            let mut want = vec![false; cdbs.len()];
            pending.iter().for_each(|&i| want[i] = true);
            let mut cmds: Vec<Command<'_>> = data
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| want[*i])
                .map(|(i, d)| Command {
                    cdb: &cdbs[i][..],
                    data: match d {
                        DataDir::None => DataDir::None,
                        DataDir::In(b) => DataDir::In(b),
                        DataDir::Out(b) => DataDir::Out(b),
                    },
                    timeout: None,
                })
                .collect();
            let comps = self.transport.execute_many(&mut cmds)?;
            drop(cmds);
            let mut again = Vec::new();
            let (mut saw_ua, mut saw_busy) = (false, false);
            for (&i, c) in pending.iter().zip(comps) {
                match c.status {
                    Status::Good | Status::ConditionMet => results[i] = Some(c),
                    Status::CheckCondition => match &c.sense {
                        Some(s) if s.is_unit_attention() && ua < UA_RETRIES => {
                            saw_ua = true;
                            again.push(i);
                        }
                        Some(s) => {
                            return Err(ScsiError::Check {
                                device: self.name.clone(),
                                command: cdb::name(&cdbs[i]),
                                opcode: cdbs[i][0],
                                hint: sense_hint(s),
                                sense: s.clone(),
                            })
                        }
                        None => {
                            return Err(ScsiError::Status {
                                device: self.name.clone(),
                                command: cdb::name(&cdbs[i]),
                                opcode: cdbs[i][0],
                                status: c.status,
                                hint: " without sense data; retry",
                            })
                        }
                    },
                    s if s.is_transient() && busy < BUSY_RETRIES => {
                        saw_busy = true;
                        again.push(i);
                    }
                    s => {
                        return Err(ScsiError::Status {
                            device: self.name.clone(),
                            command: cdb::name(&cdbs[i]),
                            opcode: cdbs[i][0],
                            status: s,
                            hint: status_hint(s),
                        })
                    }
                }
            }
            ua += saw_ua as u32;
            if saw_busy {
                busy += 1;
                std::thread::sleep(Duration::from_millis(20 * busy as u64));
            }
            pending = again;
        }
        Ok(results.into_iter().map(|c| c.unwrap_or_else(|| Completion::good(0))).collect())
    }
}

/// Test helper and emulated device: a RAM disk that speaks just enough SBC for the block layer.
pub mod mem {
    use super::*;
    use crate::sense::Sense;
    use crate::TransportError;
    use std::sync::Mutex;

    /// A RAM-backed disk LUN implementing [`ScsiTransport`]: INQUIRY (standard, VPD 0x00, 0xB0,
    /// 0xB2), READ CAPACITY(10/16), READ(16), WRITE(16), GET LBA STATUS (from a map of unmapped
    /// blocks), TEST UNIT READY. It can raise UNIT ATTENTION a number of times.
    #[derive(Debug)]
    pub struct MemDisk {
        pub block_size: u32,
        pub data: Mutex<Vec<u8>>,
        /// Unmapped (deallocated) block runs; LBPME is on when non-empty.
        pub unmapped: Vec<(u64, u64)>,
        /// Pending UNIT ATTENTIONs to report before the next commands.
        pub unit_attentions: Mutex<u32>,
        /// Max transfer length (blocks) in VPD 0xB0.
        pub max_transfer_blocks: u32,
        /// Commands seen, opcode and LBA (for READ/WRITE), for tests.
        pub log: Mutex<Vec<(u8, u64)>>,
    }

    impl MemDisk {
        pub fn new(block_size: u32, data: Vec<u8>) -> MemDisk {
            MemDisk {
                block_size,
                data: Mutex::new(data),
                unmapped: Vec::new(),
                unit_attentions: Mutex::new(0),
                max_transfer_blocks: 0,
                log: Mutex::new(Vec::new()),
            }
        }

        fn check(key: u8, asc: u8, ascq: u8) -> Completion {
            let mut b = [0u8; 18];
            b[0] = 0x70;
            b[2] = key;
            b[7] = 10;
            b[12] = asc;
            b[13] = ascq;
            Completion {
                status: Status::CheckCondition,
                sense: Sense::parse(&b),
                residual: Residual::None,
                transferred: 0,
            }
        }
    }

    fn put(dst: &mut [u8], src: &[u8]) -> Completion {
        let n = dst.len().min(src.len());
        dst[..n].copy_from_slice(&src[..n]);
        let residual = if src.len() < dst.len() {
            Residual::Under(dst.len() - src.len())
        } else if src.len() > dst.len() {
            Residual::Over(src.len() - dst.len())
        } else {
            Residual::None
        };
        Completion { status: Status::Good, sense: None, residual, transferred: n }
    }

    impl ScsiTransport for MemDisk {
        fn execute(&self, cmd: &mut Command<'_>) -> Result<Completion, TransportError> {
            let c = cmd.cdb;
            {
                let mut ua = self.unit_attentions.lock().unwrap_or_else(|e| e.into_inner());
                if *ua > 0 && c[0] != 0x12 {
                    *ua -= 1;
                    return Ok(Self::check(0x06, 0x29, 0x00));
                }
            }
            let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
            let bs = self.block_size as u64;
            let blocks = data.len() as u64 / bs;
            let lba16 = || u64::from_be_bytes(c[2..10].try_into().unwrap_or([0; 8]));
            let n16 = || u32::from_be_bytes(c[10..14].try_into().unwrap_or([0; 4])) as u64;
            let reply: Vec<u8> = match (c[0], c.get(1).copied().unwrap_or(0) & 0x1f) {
                (0x00, _) => Vec::new(),
                (0x12, _) if c[1] & 1 == 0 => {
                    let mut b = vec![0u8; 36];
                    b[2] = 6;
                    b[4] = 31;
                    b[8..16].copy_from_slice(b"RVTEST  ");
                    b[16..32].copy_from_slice(b"MEMDISK         ");
                    b[32..36].copy_from_slice(b"0001");
                    b
                }
                (0x12, _) => match c[2] {
                    0x00 => vec![0, 0, 0, 3, 0x00, 0xb0, 0xb2],
                    0xb0 => {
                        let mut b = vec![0u8; 64];
                        b[1] = 0xb0;
                        b[3] = 60;
                        b[8..12].copy_from_slice(&self.max_transfer_blocks.to_be_bytes());
                        b
                    }
                    0xb2 => vec![0, 0xb2, 0, 4, 0, 0x84, 2, 0],
                    _ => return Ok(Self::check(0x05, 0x24, 0)),
                },
                (0x25, _) => {
                    let mut b = ((blocks.min(u32::MAX as u64 + 1) - 1) as u32).to_be_bytes().to_vec();
                    b.extend_from_slice(&self.block_size.to_be_bytes());
                    b
                }
                (0x9e, 0x10) => {
                    let mut b = vec![0u8; 32];
                    b[0..8].copy_from_slice(&(blocks - 1).to_be_bytes());
                    b[8..12].copy_from_slice(&self.block_size.to_be_bytes());
                    if !self.unmapped.is_empty() {
                        b[14] = 0xc0;
                    }
                    b
                }
                (0x9e, 0x12) => {
                    let start = lba16();
                    let mut b = vec![0u8; 8];
                    let mut cur = start;
                    for &(ul, un) in &self.unmapped {
                        if ul + un <= cur {
                            continue;
                        }
                        let mut desc = |lba: u64, n: u64, st: u8| {
                            b.extend_from_slice(&lba.to_be_bytes());
                            b.extend_from_slice(&(n as u32).to_be_bytes());
                            b.extend_from_slice(&[st, 0, 0, 0]);
                        };
                        if ul > cur {
                            desc(cur, ul - cur, 0);
                            cur = ul;
                        }
                        desc(cur, ul + un - cur, 1);
                        cur = ul + un;
                    }
                    if cur < blocks {
                        b.extend_from_slice(&cur.to_be_bytes());
                        b.extend_from_slice(&((blocks - cur) as u32).to_be_bytes());
                        b.extend_from_slice(&[0, 0, 0, 0]);
                    }
                    let l = (b.len() - 4) as u32;
                    b[0..4].copy_from_slice(&l.to_be_bytes());
                    b
                }
                (0x88, _) | (0x8a, _) => {
                    let (lba, n) = (lba16(), n16());
                    if lba + n > blocks {
                        return Ok(Self::check(0x05, 0x21, 0));
                    }
                    self.log.lock().unwrap_or_else(|e| e.into_inner()).push((c[0], lba));
                    let r = (lba * bs) as usize..((lba + n) * bs) as usize;
                    if c[0] == 0x8a {
                        drop(data);
                        if let DataDir::Out(src) = &cmd.data {
                            let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
                            d[r.clone()].copy_from_slice(&src[..r.len()]);
                        }
                        return Ok(Completion::good(r.len()));
                    }
                    data[r].to_vec()
                }
                _ => return Ok(Self::check(0x05, 0x20, 0)),
            };
            Ok(match &mut cmd.data {
                DataDir::In(buf) => put(buf, &reply),
                _ => Completion::good(0),
            })
        }

        fn describe(&self) -> String {
            "memdisk".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mem::MemDisk;
    use super::*;

    fn disk(len: usize) -> (Arc<MemDisk>, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        (Arc::new(MemDisk::new(512, data.clone())), data)
    }

    #[test]
    fn open_and_read_many() {
        let (m, data) = disk(8 << 20);
        let dev = BlockDevice::open(m.clone()).unwrap();
        assert_eq!(dev.size_bytes(), 8 << 20);
        assert_eq!(dev.info().vendor, "RVTEST");
        assert_eq!(dev.info().max_io_bytes, MAX_IO_BYTES);
        let mut a = vec![0u8; 3 << 20];
        let mut b = vec![0u8; 4096];
        dev.read_many(&mut [(512, &mut a[..]), (7 << 20, &mut b[..])]).unwrap();
        assert_eq!(&a[..], &data[512..512 + (3 << 20)]);
        assert_eq!(&b[..], &data[7 << 20..(7 << 20) + 4096]);
        // 3 MiB in 1 MiB pieces + 1.
        assert_eq!(m.log.lock().unwrap().len(), 4);
    }

    #[test]
    fn max_transfer_splits_and_unit_attention_retries() {
        let (m, data) = disk(1 << 20);
        let mut md = MemDisk::new(512, data.clone());
        md.max_transfer_blocks = 16;
        *md.unit_attentions.lock().unwrap() = 3;
        drop(m);
        let dev = BlockDevice::open(Arc::new(md)).unwrap();
        assert_eq!(dev.info().max_io_bytes, 8192);
        let mut a = vec![0u8; 65536];
        dev.read_at(4096, &mut a).unwrap();
        assert_eq!(&a[..], &data[4096..4096 + 65536]);
    }

    #[test]
    fn errors_are_readable() {
        let (m, _) = disk(1 << 20);
        let dev = BlockDevice::open(m.clone()).unwrap();
        let mut a = vec![0u8; 1000];
        let e = dev.read_at(0, &mut a).unwrap_err();
        assert!(e.to_string().contains("not aligned"), "{e}");
        let mut a = vec![0u8; 1024];
        let e = dev.read_at(1 << 20, &mut a).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        *m.unit_attentions.lock().unwrap() = 100;
        let e = dev.read_at(0, &mut a).unwrap_err();
        assert!(matches!(e, ScsiError::Check { .. }));
        assert!(e.to_string().contains("READ(16) failed: UNIT ATTENTION, power on, reset"), "{e}");
    }

    #[test]
    fn write_then_read() {
        let (m, _) = disk(1 << 20);
        let dev = BlockDevice::open(m).unwrap();
        let w: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
        dev.write_at(4096, &w).unwrap();
        let mut r = vec![0u8; 8192];
        dev.read_at(4096, &mut r).unwrap();
        assert_eq!(r, w);
    }

    #[test]
    fn lba_status_thin_and_thick() {
        let (m, data) = disk(1 << 20);
        let dev = BlockDevice::open(m).unwrap();
        assert_eq!(dev.lba_status(0, 2048).unwrap(), vec![LbaExtent { lba: 0, blocks: 2048, mapped: true }]);
        let mut md = MemDisk::new(512, data);
        md.unmapped = vec![(100, 50), (1000, 1048)];
        let dev = BlockDevice::open(Arc::new(md)).unwrap();
        assert!(dev.info().lbpme && dev.info().lbprz);
        assert_eq!(
            dev.lba_status(0, 4096).unwrap(),
            vec![
                LbaExtent { lba: 0, blocks: 100, mapped: true },
                LbaExtent { lba: 100, blocks: 50, mapped: false },
                LbaExtent { lba: 150, blocks: 850, mapped: true },
                LbaExtent { lba: 1000, blocks: 1048, mapped: false },
            ]
        );
        assert_eq!(
            dev.lba_status(120, 40).unwrap(),
            vec![LbaExtent { lba: 120, blocks: 30, mapped: false }, LbaExtent { lba: 150, blocks: 10, mapped: true }]
        );
    }
}
