//! Protocol behaviour against the shared nfs-ganesha.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use nfs3::{ClientOptions, FileType, Nfs3Client, NfsError};

use crate::common::*;

#[test]
fn mount_via_portmapper() {
    let Some(p) = peer() else { return };
    let opts = ClientOptions { host: p.host.clone(), ..ClientOptions::default() };
    let c = Nfs3Client::mount(&opts, &p.export).unwrap();
    c.ping().unwrap();
    let (fh, a) = c.lookup_path("vm1/small.txt").unwrap();
    let mut buf = [0u8; 6];
    c.read_at(&fh, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello\n");
    assert_eq!(a.size, 6);
    assert!(nfs3::list_exports(&opts).unwrap().contains(&p.export));
    c.unmount();
    assert!(matches!(c.getattr(&fh), Err(NfsError::Unmounted { .. })));
}

#[test]
fn mount_with_fixed_ports_and_fsinfo() {
    let Some(p) = peer() else { return };
    let c = Nfs3Client::mount(&p.opts(), &format!("{}/", p.export)).unwrap();
    assert!(c.read_size() >= 4096 && c.read_size() <= nfs3::READ_CAP, "read size {}", c.read_size());
    assert!(c.exports().unwrap().contains(&p.export));
    let root = c.getattr(c.root()).unwrap();
    assert_eq!(root.ftype, FileType::Directory);
    assert_eq!(c.lookup_path("").unwrap().0, *c.root());
}

#[test]
fn lookups_and_path_errors() {
    let Some(p) = peer() else { return };
    let c = Nfs3Client::mount(&p.opts(), &p.export).unwrap();
    let (vm1, a) = c.lookup_path("vm1").unwrap();
    assert_eq!(a.ftype, FileType::Directory);
    let (fh, a) = c.lookup(&vm1, "small.txt").unwrap();
    assert_eq!(a.ftype, FileType::Regular);
    assert_eq!(c.lookup_path("./vm1//small.txt").unwrap().0, fh);
    assert_eq!(c.lookup_path("vm1/../disk.img").unwrap().1.size, std::fs::metadata(p.dir.join(&p.disk)).unwrap().len());
    assert!(matches!(c.lookup_path("../etc/passwd"), Err(NfsError::InvalidPath { .. })));
    assert!(matches!(c.lookup_path("vm1/../../x"), Err(NfsError::InvalidPath { .. })));
    let e = c.lookup_path("vm1/nope.img").unwrap_err();
    assert!(matches!(&e, NfsError::NotFound { path, .. } if path == "vm1/nope.img"), "{e}");
    assert!(e.to_string().contains("127.0.0.1:/export"), "{e}");
    let e = c.lookup_path("vm1/small.txt/x").unwrap_err();
    assert!(matches!(e, NfsError::NotADirectory { .. }), "{e}");
    let e = c.read_at(&vm1, 0, &mut [0u8; 10]).unwrap_err();
    assert!(matches!(e, NfsError::NotAFile { .. }), "{e}");
    assert!(matches!(c.read_dir(&fh), Err(NfsError::NotADirectory { .. })));
}

#[test]
fn missing_export_lists_the_real_ones() {
    let Some(p) = peer() else { return };
    let e = Nfs3Client::mount(&p.opts(), "/no-such-export").unwrap_err();
    match &e {
        NfsError::ExportNotFound { export, available, .. } => {
            assert_eq!(export, "/no-such-export");
            assert!(available.contains(&p.export), "{available:?}");
        }
        other => panic!("expected ExportNotFound, got {other:?}"),
    }
    assert!(e.to_string().contains("/export"), "{e}");
    assert!(!e.is_transient());
}

#[test]
fn read_dir_with_several_pages() {
    let Some(p) = peer() else { return };
    let d = ScratchDir::new(&p, "dir");
    for i in 0..400 {
        std::fs::write(d.local.join(format!("file-with-a-longish-name-{i:04}.img")), i.to_string()).unwrap();
    }
    let c = Nfs3Client::mount(&p.opts(), &p.export).unwrap();
    let (dir, _) = c.lookup_path(&d.rel).unwrap();
    let entries = c.read_dir(&dir).unwrap();
    assert_eq!(entries.len(), 400);
    let mut names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 400);
    assert!(!names.iter().any(|n| n == "." || n == ".."));
    let e = entries.iter().find(|e| e.name == "file-with-a-longish-name-0123.img").unwrap();
    assert_eq!(e.attr.unwrap().size, 3);
    let mut b = [0u8; 3];
    c.read_at(e.handle.as_ref().unwrap(), 0, &mut b).unwrap();
    assert_eq!(&b, b"123");
    // the root listing has the peer's files
    let root = c.read_dir(c.root()).unwrap();
    assert!(root.iter().any(|e| e.name == p.disk && e.attr.unwrap().ftype == FileType::Regular));
}

#[test]
fn whole_disk_matches_local_copy() {
    let Some(p) = peer() else { return };
    let c = Nfs3Client::mount(&p.opts(), &p.export).unwrap();
    let (fh, a) = c.lookup_path(&p.disk).unwrap();
    let local = p.dir.join(&p.disk);
    assert_eq!(a.size, std::fs::metadata(&local).unwrap().len());
    // 32 MiB batches of 4 MiB requests (several READs each), then odd sizes
    assert_eq!(hash_over_nfs(&c, &fh, a.size, 32 << 20, 4 << 20), hash_local(&local));
}

#[test]
fn random_offsets_and_sizes() {
    let Some(p) = peer() else { return };
    let c = Nfs3Client::mount(&p.opts(), &p.export).unwrap();
    let (fh, a) = c.lookup_path(&p.disk).unwrap();
    let data = std::fs::read(p.dir.join(&p.disk)).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for _ in 0..8 {
        let n = 1 + rnd(40) as usize;
        let mut bufs: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|_| {
                let len = 1 + rnd(3 << 20) as usize;
                (rnd(a.size - len as u64), vec![0u8; len])
            })
            .collect();
        let mut reqs: Vec<(u64, &mut [u8])> = bufs.iter_mut().map(|(o, b)| (*o, b.as_mut_slice())).collect();
        c.read_many(&fh, &mut reqs).unwrap();
        for (o, b) in &bufs {
            assert!(b[..] == data[*o as usize..*o as usize + b.len()], "mismatch at {o}+{}", b.len());
        }
    }
}

#[test]
fn many_threads_share_one_client() {
    let Some(p) = peer() else { return };
    let c = Nfs3Client::mount(&ClientOptions { connections: 3, max_in_flight: 8, ..p.opts() }, &p.export).unwrap();
    let (fh, a) = c.lookup_path(&p.disk).unwrap();
    let data = std::fs::read(p.dir.join(&p.disk)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (c, fh, data) = (c.clone(), fh.clone(), &data);
            s.spawn(move || {
                let part = a.size / 4;
                let mut buf = vec![0u8; 8 << 20];
                for k in 0..(part / buf.len() as u64).min(4) {
                    let off = t * part + k * buf.len() as u64;
                    let mut reqs: Vec<(u64, &mut [u8])> =
                        buf.chunks_mut(1 << 20).enumerate().map(|(i, b)| (off + (i << 20) as u64, b)).collect();
                    c.read_many(&fh, &mut reqs).unwrap();
                    assert!(buf[..] == data[off as usize..off as usize + buf.len()]);
                }
            });
        }
    });
}

#[test]
fn sparse_tail_and_reads_past_eof() {
    let Some(p) = peer() else { return };
    let c = Nfs3Client::mount(&p.opts(), &p.export).unwrap();
    let (fh, a) = c.lookup_path(&p.sparse).unwrap();
    assert_eq!(a.size, p.sparse_bytes);
    assert!(a.used < a.size);
    let mut tail = vec![0u8; 3 << 20];
    let off = a.size - tail.len() as u64;
    c.read_at(&fh, off, &mut tail).unwrap();
    assert!(tail.ends_with(b"TAILMARK"));
    assert!(tail[..tail.len() - 8].iter().all(|&b| b == 0));

    let mut b = [0u8; 16];
    match c.read_at(&fh, a.size - 8, &mut b).unwrap_err() {
        NfsError::ShortRead { offset, expected, got, .. } => {
            assert_eq!((offset, expected, got), (a.size - 8, 16, 8));
            assert_eq!(&b[..8], b"TAILMARK");
        }
        e => panic!("expected ShortRead, got {e}"),
    }
    let e = c.read_at(&fh, a.size + 100, &mut b).unwrap_err();
    assert!(matches!(e, NfsError::ShortRead { got: 0, .. }), "{e}");
    assert!(e.to_string().contains(&p.sparse), "{e}");
}

#[test]
fn permission_denied_for_another_uid() {
    let Some(p) = peer() else { return };
    let d = ScratchDir::new(&p, "perm");
    let f = d.local.join("secret.img");
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&f).unwrap();
    std::fs::write(&f, b"root only").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let opts = ClientOptions { uid: 12345, gid: 12345, ..p.opts() };
    let c = Nfs3Client::mount(&opts, &p.export).unwrap();
    let (fh, a) = c.lookup_path(&format!("{}/secret.img", d.rel)).unwrap();
    assert_eq!(a.mode & 0o777, 0o600);
    let e = c.read_at(&fh, 0, &mut [0u8; 9]).unwrap_err();
    match &e {
        NfsError::PermissionDenied { path, status, .. } => {
            assert!(path.ends_with("secret.img"), "{path}");
            assert_eq!(*status, nfs3::NfsStatus::ACCES);
        }
        other => panic!("expected PermissionDenied, got {other}"),
    }
    assert!(e.to_string().contains("uid/gid"), "{e}");
    // root (no root squash) reads it
    let c = Nfs3Client::mount(&p.opts(), &p.export).unwrap();
    let mut b = [0u8; 9];
    c.read_at(&fh, 0, &mut b).unwrap();
    assert_eq!(&b, b"root only");
}

#[test]
fn handle_of_a_deleted_file_is_stale() {
    let Some(p) = peer() else { return };
    let d = ScratchDir::new(&p, "stale");
    std::fs::write(d.local.join("gone.img"), vec![7u8; 8192]).unwrap();
    std::fs::write(d.local.join("open.img"), vec![9u8; 8192]).unwrap();
    let c = Nfs3Client::mount(&p.opts(), &p.export).unwrap();
    let (gone, _) = c.lookup_path(&format!("{}/gone.img", d.rel)).unwrap();
    let (open, _) = c.lookup_path(&format!("{}/open.img", d.rel)).unwrap();
    let mut b = [0u8; 4096];
    c.read_at(&open, 0, &mut b).unwrap();
    std::fs::remove_file(d.local.join("gone.img")).unwrap();
    std::fs::remove_file(d.local.join("open.img")).unwrap();

    // Never read since the delete: ganesha answers NFS3ERR_STALE at once.
    let e = c.read_at(&gone, 0, &mut b).unwrap_err();
    assert!(matches!(&e, NfsError::Stale { what, .. } if what.ends_with("gone.img")), "{e:?}");
    assert!(e.to_string().contains("restart the backup"), "{e}");
    assert!(!e.is_transient());
    // A forged handle is stale too (ganesha says STALE rather than BADHANDLE).
    let mut bytes = open.as_bytes().to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    bytes[n - 2] ^= 0x55;
    let forged = nfs3::FileHandle::from_bytes(&bytes).unwrap();
    let r = c.getattr(&forged);
    assert!(matches!(r, Err(NfsError::Stale { .. })), "{r:?}");
    // Real ganesha behaviour: a file it already has open keeps being served after the
    // unlink (POSIX semantics of its open descriptor). Either its old bytes or Stale are
    // fine; anything else is not.
    match c.read_at(&open, 0, &mut b) {
        Ok(()) => assert!(b.iter().all(|&x| x == 9)),
        Err(NfsError::Stale { .. }) => {}
        Err(e) => panic!("deleted open file: {e:?}"),
    }
}
