//! Fake NFS servers that answer MOUNT honestly (the real ganesha mountd) but send garbled or
//! hostile NFS replies: the client must fail with `Protocol`, never panic or hang.

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use nfs3::xdr::Encoder;
use nfs3::{ClientOptions, Nfs3Client, NfsError};

use crate::common::*;

/// What the fake server sends for a call: `(xid, proc)` -> raw bytes (record marks included),
/// or `None` to close the connection.
type Responder = fn(u32, u32) -> Option<Vec<u8>>;

fn fake_server(respond: Responder) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || serve(&mut c, respond));
        }
    });
    port
}

fn serve(c: &mut TcpStream, respond: Responder) {
    while let Ok(rec) = nfs3::wire::read_record(c, 1 << 20) {
        let w = |i: usize| u32::from_be_bytes(rec[i..i + 4].try_into().unwrap());
        match respond(w(0), w(20)) {
            Some(bytes) => {
                if c.write_all(&bytes).is_err() {
                    return;
                }
            }
            None => return,
        }
    }
}

fn record(body: &[u8]) -> Vec<u8> {
    let mut v = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn ok_header(xid: u32) -> Encoder {
    let mut e = Encoder::new();
    e.u32(xid).u32(1).u32(0).u32(0).u32(0).u32(0);
    e
}

const FSINFO: u32 = 19;
const READ: u32 = 6;

fn fsinfo_reply(xid: u32) -> Vec<u8> {
    let mut e = ok_header(xid);
    e.u32(0).bool(false);
    e.u32(65536).u32(65536).u32(4096).u32(65536).u32(65536).u32(4096).u32(4096).u64(u64::MAX).u32(0).u32(1).u32(0);
    record(&e.buf)
}

fn mount_against(p: &Peer, respond: Responder) -> Result<Nfs3Client, NfsError> {
    let opts = ClientOptions {
        nfs_port: Some(fake_server(respond)),
        io_timeout: SHORT,
        reconnect_deadline: SHORT,
        ..p.opts()
    };
    Nfs3Client::mount(&opts, &p.export)
}

fn expect_protocol(r: Result<(), NfsError>, what: &str) {
    match r {
        Err(NfsError::Protocol { detail, .. }) => eprintln!("{what}: Protocol: {detail}"),
        other => panic!("{what}: expected Protocol, got {other:?}"),
    }
}

#[test]
fn record_mark_over_the_limit() {
    let Some(p) = peer() else { return };
    let r = mount_against(&p, |_, _| Some(0xffff_ffffu32.to_be_bytes().to_vec()));
    expect_protocol(r.map(|_| ()), "huge record mark");
}

#[test]
fn reply_with_a_foreign_xid() {
    let Some(p) = peer() else { return };
    let r = mount_against(&p, |xid, _| Some(fsinfo_reply(xid.wrapping_add(1000))));
    expect_protocol(r.map(|_| ()), "wrong XID");
}

#[test]
fn truncated_results() {
    let Some(p) = peer() else { return };
    let r = mount_against(&p, |xid, _| Some(record(&fsinfo_reply(xid)[4..30])));
    expect_protocol(r.map(|_| ()), "truncated FSINFO");
}

#[test]
fn read_returning_more_than_asked() {
    let Some(p) = peer() else { return };
    let c = mount_against(&p, |xid, proc_| {
        if proc_ == FSINFO {
            return Some(fsinfo_reply(xid));
        }
        assert_eq!(proc_, READ);
        let mut e = ok_header(xid);
        e.u32(0).bool(false).u32(200).bool(false).opaque(&[1u8; 200]);
        Some(record(&e.buf))
    })
    .unwrap();
    assert_eq!(c.read_size(), 65536);
    expect_protocol(c.read_at(c.root(), 0, &mut [0u8; 100]), "oversized READ");
}

#[test]
fn read_with_opaque_length_past_the_buffer() {
    let Some(p) = peer() else { return };
    let c = mount_against(&p, |xid, proc_| {
        if proc_ == FSINFO {
            return Some(fsinfo_reply(xid));
        }
        let mut e = ok_header(xid);
        e.u32(0).bool(false).u32(100).bool(false).u32(100).fixed(&[1u8; 40]);
        Some(record(&e.buf))
    })
    .unwrap();
    expect_protocol(c.read_at(c.root(), 0, &mut [0u8; 100]), "opaque past the record");
}

#[test]
fn readdirplus_with_endless_entries() {
    let Some(p) = peer() else { return };
    let c = mount_against(&p, |xid, proc_| {
        if proc_ == FSINFO {
            return Some(fsinfo_reply(xid));
        }
        let mut e = ok_header(xid);
        e.u32(0).bool(false).fixed(&[0; 8]);
        for i in 0..5000u64 {
            e.bool(true).u64(i).opaque(b"x").u64(i + 1).bool(false).bool(false);
        }
        e.bool(false).bool(true);
        Some(record(&e.buf))
    })
    .unwrap();
    expect_protocol(c.read_dir(c.root()).map(|_| ()), "absurd READDIRPLUS page");
}

#[test]
fn rpc_auth_error_is_auth_rejected() {
    let Some(p) = peer() else { return };
    let r = mount_against(&p, |xid, _| {
        let mut e = Encoder::new();
        e.u32(xid).u32(1).u32(1).u32(1).u32(5);
        Some(record(&e.buf))
    });
    match r {
        Err(e @ NfsError::AuthRejected { .. }) => assert!(e.to_string().contains("AUTH_SYS"), "{e}"),
        other => panic!("expected AuthRejected, got {other:?}"),
    }
}

#[test]
fn server_that_hangs_up_on_every_call() {
    let Some(p) = peer() else { return };
    let r = mount_against(&p, |_, _| None);
    match r {
        Err(e @ NfsError::ConnectionLost { .. }) => assert!(e.is_transient()),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
}
