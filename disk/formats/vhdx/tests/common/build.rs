//! A minimal VHDX writer for tests, written from the spec independently of the reader's code:
//! fixed layout (log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB, blocks after it), any block
//! size, logical sector size, differencing with a parent locator, block states, and log entries.

pub const MIB: u64 = 1 << 20;

pub const PARENT_LOCATOR_TYPE: [u8; 16] =
    guid(0xB04A_EFB7, 0xD19E, 0x4A81, [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13]);

pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]]
}

pub fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{{{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}}}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

const BAT: [u8; 16] = guid(0x2DC2_7766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]);
const META: [u8; 16] = guid(0x8B7C_A206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);
const FILE_PARAMS: [u8; 16] = guid(0xCAA1_6737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]);
const DISK_SIZE: [u8; 16] = guid(0x2FA5_4224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]);
const PAGE83: [u8; 16] = guid(0xBECA_12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]);
const LOGICAL: [u8; 16] = guid(0x8141_BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]);
const PHYSICAL: [u8; 16] = guid(0xCDA3_48C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]);
const LOCATOR: [u8; 16] = guid(0xA8D3_5F2D, 0xB30B, 0x454D, [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C]);

pub const LOG_OFFSET: u64 = MIB;
pub const LOG_LENGTH: u64 = MIB;
pub const META_OFFSET: u64 = 2 * MIB;
pub const BAT_OFFSET: u64 = 3 * MIB;

fn crc_into(d: &mut [u8], field: usize) {
    d[field..field + 4].fill(0);
    let c = crc32c::crc32c(d);
    d[field..field + 4].copy_from_slice(&c.to_le_bytes());
}

/// An image under construction.
#[derive(Debug, Clone)]
pub struct Image {
    pub block_size: u64,
    pub sector: u64,
    pub size: u64,
    pub parent: Option<Vec<(String, String)>>,
    pub data_write_guid: [u8; 16],
    pub log_guid: [u8; 16],
    /// Payload entries (state | offset).
    pub payload: Vec<u64>,
    /// Sector bitmap entries per chunk.
    pub bitmaps: Vec<u64>,
    pub file: Vec<u8>,
}

impl Image {
    pub fn new(size: u64, block_size: u64, sector: u64) -> Image {
        let blocks = size.div_ceil(block_size);
        let cr = ((1u64 << 23) * sector) / block_size;
        let chunks = blocks.div_ceil(cr).max(1);
        let bat_len = (chunks * (cr + 1) * 8).div_ceil(MIB) * MIB;
        let mut file = vec![0u8; (BAT_OFFSET + bat_len) as usize];
        file[..8].copy_from_slice(b"vhdxfile");
        Image {
            block_size,
            sector,
            size,
            parent: None,
            data_write_guid: [0x11; 16],
            log_guid: [0; 16],
            payload: vec![0; blocks as usize],
            bitmaps: vec![0; chunks as usize],
            file,
        }
    }

    pub fn chunk_ratio(&self) -> u64 {
        ((1u64 << 23) * self.sector) / self.block_size
    }

    pub fn bat_len(&self) -> u64 {
        (self.bitmaps.len() as u64 * (self.chunk_ratio() + 1) * 8).div_ceil(MIB) * MIB
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let off = (self.file.len() as u64).div_ceil(MIB) * MIB;
        self.file.resize((off + len) as usize, 0);
        off
    }

    /// Write guest bytes (sector-aligned for differencing images). Blocks become
    /// FULLY_PRESENT, or PARTIALLY_PRESENT with bitmap bits in a differencing image.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let bs = self.block_size;
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            let b = pos / bs;
            let n = (bs - pos % bs).min(end - pos);
            let st = self.payload[b as usize] & 7;
            if st != 6 && st != 7 {
                let off = self.alloc(bs);
                let state = if self.parent.is_some() { 7 } else { 6 };
                self.payload[b as usize] = off | state;
            }
            let host = (self.payload[b as usize] & !0xfffff) + pos % bs;
            let src = &data[(pos - offset) as usize..(pos - offset + n) as usize];
            self.file[host as usize..(host + n) as usize].copy_from_slice(src);
            if self.payload[b as usize] & 7 == 7 {
                assert!(
                    pos.is_multiple_of(self.sector) && n.is_multiple_of(self.sector),
                    "differencing writes must be sector-aligned"
                );
                let chunk = (b / self.chunk_ratio()) as usize;
                if self.bitmaps[chunk] & 7 != 6 {
                    let off = self.alloc(MIB);
                    self.bitmaps[chunk] = off | 6;
                }
                let sb = self.bitmaps[chunk] & !0xfffff;
                let first = (b % self.chunk_ratio()) * (bs / self.sector) + (pos % bs) / self.sector;
                for s in first..first + n / self.sector {
                    self.file[(sb + s / 8) as usize] |= 1 << (s % 8);
                }
            }
            pos += n;
        }
    }

    pub fn set_state(&mut self, block: u64, state: u64) {
        let e = &mut self.payload[block as usize];
        *e = (*e & !7) | state;
    }

    fn bat_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio()
    }

    /// Serialize the header section, metadata and BAT into `file`; returns the bytes.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut f = std::mem::take(&mut self.file);
        // BAT.
        let cr = self.chunk_ratio();
        for (b, &e) in self.payload.iter().enumerate() {
            let at = (BAT_OFFSET + self.bat_index(b as u64) * 8) as usize;
            f[at..at + 8].copy_from_slice(&e.to_le_bytes());
        }
        for (c, &e) in self.bitmaps.iter().enumerate() {
            let at = (BAT_OFFSET + (c as u64 * (cr + 1) + cr) * 8) as usize;
            f[at..at + 8].copy_from_slice(&e.to_le_bytes());
        }
        // Metadata.
        let m = META_OFFSET as usize;
        f[m..m + 8].copy_from_slice(b"metadata");
        let mut items: Vec<([u8; 16], Vec<u8>, u32)> = vec![
            (
                FILE_PARAMS,
                {
                    let mut v = (self.block_size as u32).to_le_bytes().to_vec();
                    v.extend_from_slice(&(if self.parent.is_some() { 2u32 } else { 0 }).to_le_bytes());
                    v
                },
                4,
            ),
            (DISK_SIZE, self.size.to_le_bytes().to_vec(), 6),
            (PAGE83, [0x42; 16].to_vec(), 6),
            (LOGICAL, (self.sector as u32).to_le_bytes().to_vec(), 6),
            (PHYSICAL, 4096u32.to_le_bytes().to_vec(), 6),
        ];
        if let Some(kv) = &self.parent {
            items.push((LOCATOR, locator(kv), 4));
        }
        f[m + 10..m + 12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut data_at = 65536u32;
        for (i, (id, data, flags)) in items.iter().enumerate() {
            let e = m + 32 + 32 * i;
            f[e..e + 16].copy_from_slice(id);
            f[e + 16..e + 20].copy_from_slice(&data_at.to_le_bytes());
            f[e + 20..e + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
            f[e + 24..e + 28].copy_from_slice(&flags.to_le_bytes());
            let d = m + data_at as usize;
            f[d..d + data.len()].copy_from_slice(data);
            data_at += data.len() as u32;
        }
        // Region tables.
        for t in [192usize << 10, 256 << 10] {
            let mut rt = vec![0u8; 65536];
            rt[..4].copy_from_slice(b"regi");
            rt[8..12].copy_from_slice(&2u32.to_le_bytes());
            for (i, (id, off, len)) in [(BAT, BAT_OFFSET, self.bat_len()), (META, META_OFFSET, MIB)].iter().enumerate()
            {
                let e = 16 + 32 * i;
                rt[e..e + 16].copy_from_slice(id);
                rt[e + 16..e + 24].copy_from_slice(&off.to_le_bytes());
                rt[e + 24..e + 28].copy_from_slice(&(*len as u32).to_le_bytes());
                rt[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
            }
            crc_into(&mut rt, 4);
            f[t..t + 65536].copy_from_slice(&rt);
        }
        self.file = f.clone();
        self.write_headers(&mut f, 5);
        f
    }

    /// Write both headers with sequence numbers `seq` and `seq - 1`.
    pub fn write_headers(&self, f: &mut [u8], seq: u64) {
        for (i, h) in [64usize << 10, 128 << 10].into_iter().enumerate() {
            let mut b = vec![0u8; 4096];
            b[..4].copy_from_slice(b"head");
            b[8..16].copy_from_slice(&(seq - i as u64).to_le_bytes());
            b[16..32].copy_from_slice(&[0x22; 16]);
            b[32..48].copy_from_slice(&self.data_write_guid);
            b[48..64].copy_from_slice(&self.log_guid);
            b[66..68].copy_from_slice(&1u16.to_le_bytes());
            b[68..72].copy_from_slice(&(LOG_LENGTH as u32).to_le_bytes());
            b[72..80].copy_from_slice(&LOG_OFFSET.to_le_bytes());
            crc_into(&mut b, 4);
            f[h..h + 4096].copy_from_slice(&b);
        }
    }
}

/// Encode a parent locator item.
pub fn locator(kv: &[(String, String)]) -> Vec<u8> {
    let mut v = vec![0u8; 20 + 12 * kv.len()];
    v[..16].copy_from_slice(&PARENT_LOCATOR_TYPE);
    v[18..20].copy_from_slice(&(kv.len() as u16).to_le_bytes());
    for (i, (k, val)) in kv.iter().enumerate() {
        let ko = v.len();
        let kb: Vec<u8> = k.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        v.extend_from_slice(&kb);
        let vo = v.len();
        let vb: Vec<u8> = val.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        v.extend_from_slice(&vb);
        let e = 20 + 12 * i;
        v[e..e + 4].copy_from_slice(&(ko as u32).to_le_bytes());
        v[e + 4..e + 8].copy_from_slice(&(vo as u32).to_le_bytes());
        v[e + 8..e + 10].copy_from_slice(&(kb.len() as u16).to_le_bytes());
        v[e + 10..e + 12].copy_from_slice(&(vb.len() as u16).to_le_bytes());
    }
    v
}

/// One log write: a 4 KiB sector of data, or a zeroed range.
#[derive(Debug, Clone)]
pub enum LogWrite {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

/// Encode a log entry whose Tail field is `tail` (ring byte offset of its sequence's first entry).
pub fn log_entry(guid: &[u8; 16], seq: u64, tail: u32, writes: &[LogWrite], file_size: u64) -> Vec<u8> {
    let count = writes.len() as u64;
    let desc_sectors = (64 + 32 * count).div_ceil(4096);
    let ndata = writes.iter().filter(|w| matches!(w, LogWrite::Data(..))).count() as u64;
    let len = (desc_sectors + ndata) * 4096;
    let mut e = vec![0u8; len as usize];
    e[..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    e[12..16].copy_from_slice(&tail.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&(count as u32).to_le_bytes());
    e[32..48].copy_from_slice(guid);
    e[48..56].copy_from_slice(&file_size.to_le_bytes());
    e[56..64].copy_from_slice(&file_size.to_le_bytes());
    let mut di = 0u64;
    for (k, w) in writes.iter().enumerate() {
        let d = 64 + 32 * k;
        match w {
            LogWrite::Zero(off, l) => {
                e[d..d + 4].copy_from_slice(b"zero");
                e[d + 8..d + 16].copy_from_slice(&l.to_le_bytes());
                e[d + 16..d + 24].copy_from_slice(&off.to_le_bytes());
            }
            LogWrite::Data(off, sector) => {
                assert_eq!(sector.len(), 4096);
                e[d..d + 4].copy_from_slice(b"desc");
                e[d + 4..d + 8].copy_from_slice(&sector[4092..]);
                e[d + 8..d + 16].copy_from_slice(&sector[..8]);
                e[d + 16..d + 24].copy_from_slice(&off.to_le_bytes());
                let s = ((desc_sectors + di) * 4096) as usize;
                di += 1;
                e[s..s + 4].copy_from_slice(b"data");
                e[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
                e[s + 8..s + 4092].copy_from_slice(&sector[8..4092]);
                e[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
            }
        }
        e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
    }
    crc_into(&mut e, 4);
    e
}
