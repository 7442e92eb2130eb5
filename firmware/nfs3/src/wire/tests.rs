//! Hand-made replies, honest and hostile.

use super::*;
use crate::xdr::Encoder;

fn fattr(e: &mut Encoder, ftype: u32, size: u64) {
    e.u32(ftype).u32(0o644).u32(1).u32(0).u32(0).u64(size).u64(size).u64(0).u64(7).u64(42);
    e.u32(1).u32(2).u32(3).u32(4).u32(5).u32(6);
}

fn accepted_header(xid: u32) -> Encoder {
    let mut e = Encoder::new();
    e.u32(xid).u32(1).u32(0).u32(0).u32(0).u32(0);
    e
}

fn read_ok(count: u32, data_len: u32, data: &[u8], eof: bool) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u32(0).bool(true);
    fattr(&mut e, 1, 100);
    e.u32(count).bool(eof).u32(data_len).fixed(data);
    e.buf
}

#[test]
fn rpc_reply_header() {
    let mut e = accepted_header(9);
    e.u32(77);
    let (xid, out) = decode_rpc_reply(&e.buf).unwrap();
    assert_eq!(xid, 9);
    assert_eq!(out, RpcOutcome::Success { body: 24 });

    let mut e = Encoder::new();
    e.u32(9).u32(1).u32(1).u32(1).u32(5);
    assert_eq!(decode_rpc_reply(&e.buf).unwrap().1, RpcOutcome::AuthError(5));

    let mut e = Encoder::new();
    e.u32(9).u32(1).u32(0).u32(0).u32(0).u32(2).u32(2).u32(2);
    assert_eq!(decode_rpc_reply(&e.buf).unwrap().1, RpcOutcome::ProgMismatch(2, 2));
}

#[test]
fn hostile_rpc_headers() {
    // a CALL instead of a REPLY
    let mut e = Encoder::new();
    e.u32(1).u32(0).u32(0);
    assert!(decode_rpc_reply(&e.buf).is_err());
    // verifier longer than allowed / than the record
    let mut e = Encoder::new();
    e.u32(1).u32(1).u32(0).u32(0).u32(0xffff_fff0);
    assert!(decode_rpc_reply(&e.buf).is_err());
    // unknown accept_stat
    let mut e = Encoder::new();
    e.u32(1).u32(1).u32(0).u32(0).u32(0).u32(99);
    assert!(decode_rpc_reply(&e.buf).is_err());
    assert!(decode_rpc_reply(&[0, 0]).is_err());
}

#[test]
fn read_reply_good_and_short() {
    let b = read_ok(5, 5, b"hello", true);
    let r = decode_read(&b, 8).unwrap().unwrap();
    assert_eq!(r.data, b"hello");
    assert!(r.eof);
    assert_eq!(r.attr.unwrap().size, 100);
}

#[test]
fn read_reply_more_than_asked_is_refused() {
    let b = read_ok(5, 5, b"hello", false);
    assert!(decode_read(&b, 4).is_err());
}

#[test]
fn read_reply_count_mismatch_and_truncation() {
    let b = read_ok(9, 5, b"hello", false);
    assert!(decode_read(&b, 16).is_err());
    // data length past the end of the record
    let mut b = read_ok(5, 5, b"hello", false);
    b.truncate(b.len() - 4);
    assert!(decode_read(&b, 16).is_err());
    // absurd data length
    let b = read_ok(5, 0xffff_ffff, b"hello", false);
    assert!(decode_read(&b, u32::MAX).is_err());
    // bad boolean for eof
    let mut e = Encoder::new();
    e.u32(0).bool(false).u32(0).u32(7).u32(0);
    assert!(decode_read(&e.buf, 16).is_err());
}

#[test]
fn read_reply_error_status() {
    let mut e = Encoder::new();
    e.u32(70).bool(false);
    assert_eq!(decode_read(&e.buf, 16).unwrap().unwrap_err(), NfsStatus::STALE);
}

#[test]
fn bad_file_type_and_long_handle() {
    let mut e = Encoder::new();
    e.u32(0);
    fattr(&mut e, 9, 1);
    assert!(decode_getattr(&e.buf).is_err());

    let mut e = Encoder::new();
    e.u32(0).opaque(&[1u8; 65]).bool(false);
    assert!(decode_lookup(&e.buf).is_err());
    let mut e = Encoder::new();
    e.u32(0).opaque(&[1u8; 64]).bool(false);
    assert_eq!(decode_lookup(&e.buf).unwrap().unwrap().0.as_bytes().len(), 64);
}

fn dir_entry(e: &mut Encoder, name: &str, cookie: u64) {
    e.bool(true).u64(cookie).opaque(name.as_bytes()).u64(cookie).bool(true);
    fattr(e, 1, 3);
    e.bool(true).opaque(&[cookie as u8; 8]);
}

#[test]
fn readdirplus_pages() {
    let mut e = Encoder::new();
    e.u32(0).bool(false).fixed(&[1, 2, 3, 4, 5, 6, 7, 8]);
    dir_entry(&mut e, ".", 1);
    dir_entry(&mut e, "a.img", 2);
    e.bool(false).bool(true);
    let p = decode_readdirplus(&e.buf, 10).unwrap().unwrap();
    assert_eq!(p.cookieverf, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(p.entries.len(), 2);
    assert_eq!(p.entries[1].name, b"a.img");
    assert!(p.eof);
    // too many entries for the page limit
    assert!(decode_readdirplus(&e.buf, 1).is_err());
    // a list that never ends (truncated)
    let mut e = Encoder::new();
    e.u32(0).bool(false).fixed(&[0; 8]);
    for i in 0..3 {
        dir_entry(&mut e, "x", i);
    }
    assert!(decode_readdirplus(&e.buf, 100).is_err());
}

#[test]
fn mnt_and_exports() {
    let mut e = Encoder::new();
    e.u32(0).opaque(&[9; 16]).u32(2).u32(1).u32(390_003);
    let (fh, fl) = decode_mnt(&e.buf).unwrap().unwrap();
    assert_eq!(fh.as_bytes(), &[9; 16]);
    assert_eq!(fl, vec![1, 390_003]);
    // a flavor count far beyond the record
    let mut e = Encoder::new();
    e.u32(0).opaque(&[9; 16]).u32(0x4000_0000).u32(1);
    assert!(decode_mnt(&e.buf).is_err());

    let mut e = Encoder::new();
    e.bool(true).opaque(b"/export").bool(true).opaque(b"*").bool(false);
    e.bool(true).opaque(b"/other").bool(false).bool(false);
    assert_eq!(decode_exports(&e.buf).unwrap(), vec!["/export".to_string(), "/other".to_string()]);
    e.buf.truncate(e.buf.len() - 4);
    assert!(decode_exports(&e.buf).is_err());
}

#[test]
fn fsinfo() {
    let mut e = Encoder::new();
    e.u32(0).bool(false).u32(1 << 20).u32(1 << 16).u32(4096).u32(1 << 20).u32(1 << 16).u32(4096).u32(8192);
    e.u64(u64::MAX).u32(0).u32(1).u32(0x1b);
    let f = decode_fsinfo(&e.buf).unwrap().unwrap();
    assert_eq!((f.rtmax, f.rtpref, f.dtpref), (1 << 20, 1 << 16, 8192));
    assert!(decode_fsinfo(&e.buf[..20]).is_err());
}

#[test]
fn record_marking() {
    // two fragments
    let mut s = Vec::new();
    s.extend_from_slice(&3u32.to_be_bytes());
    s.extend_from_slice(b"abc");
    s.extend_from_slice(&(0x8000_0000u32 | 2).to_be_bytes());
    s.extend_from_slice(b"de");
    assert_eq!(read_record(&mut std::io::Cursor::new(&s), 100).unwrap(), b"abcde");
    // fragment length over the limit: refused before reading (no allocation)
    let s = (0x8000_0000u32 | 0x7fff_ffff).to_be_bytes();
    assert!(matches!(read_record(&mut std::io::Cursor::new(&s), MAX_RECORD), Err(RecordError::Bad(_))));
    // fragments adding up past the limit
    let mut s = Vec::new();
    for _ in 0..3 {
        s.extend_from_slice(&40u32.to_be_bytes());
        s.extend_from_slice(&[0; 40]);
    }
    assert!(matches!(read_record(&mut std::io::Cursor::new(&s), 100), Err(RecordError::Bad(_))));
    // claimed 1000 bytes, stream ends: an EOF, not a big buffer
    let s = (0x8000_0000u32 | 1000).to_be_bytes();
    assert!(matches!(read_record(&mut std::io::Cursor::new(&s), MAX_RECORD), Err(RecordError::Io(_))));
    // endless empty fragments
    let s = vec![0u8; 4 * (MAX_FRAGMENTS + 1)];
    assert!(matches!(read_record(&mut std::io::Cursor::new(&s), MAX_RECORD), Err(RecordError::Bad(_))));
}

#[test]
fn call_encoding() {
    let auth = auth_sys(1000, 100, "rackvault");
    let rec = encode_call(0x1234, NFS_PROG, NFS_VERS, NFSPROC3_GETATTR, &auth, &[0, 0, 0, 0]);
    let mark = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
    assert_eq!(mark, 0x8000_0000 | (rec.len() as u32 - 4));
    assert_eq!(&rec[4..8], &0x1234u32.to_be_bytes());
    assert_eq!(rec.len() % 4, 0);
}

#[test]
fn fuzz_entry_point_survives_junk() {
    let mut x = 0x9e37_79b9_u32;
    for len in 0..2000 {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0xff) as u8
            })
            .collect();
        fuzz_all_decoders(&data);
    }
}
