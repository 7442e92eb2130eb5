//! Encrypted stores (format 3): what the packs reveal, keys at open, damage to ciphertext,
//! records copied between stores, and unencrypted stores from before.

use std::path::Path;

use store::{pack, Cipher, Digest, RestorePoint, Store, StoreError, StoreKey, StoreOptions};

mod common;
use common::CHUNK;

/// A text that must never appear in an encrypted pack.
const SECRET: &[u8] = b"the-quarterly-payroll-of-acme-corporation;";

/// Chunk content: compressible text holding `SECRET` for even ids, random bytes for odd ones.
fn chunk_content(id: u64) -> Vec<u8> {
    let mut v = vec![0u8; CHUNK];
    if id.is_multiple_of(2) {
        for (i, b) in v.iter_mut().enumerate() {
            *b = SECRET[i % SECRET.len()];
        }
        v[0..8].copy_from_slice(&id.to_le_bytes());
    } else {
        blake3::Hasher::new().update(&id.to_le_bytes()).finalize_xof().fill(&mut v);
    }
    v
}

fn key(b: u8) -> StoreKey {
    StoreKey::from_bytes(*blake3::hash(&[b]).as_bytes())
}

fn open_with(dir: &Path, key: Option<StoreKey>, cipher: Option<Cipher>) -> store::Result<Store> {
    Store::open(dir, &StoreOptions { create: true, pack_target: 1 << 20, key, cipher, ..Default::default() })
}

fn open_encrypted(dir: &Path) -> Store {
    open_with(dir, Some(key(1)), None).expect("open encrypted store")
}

fn backup(store: &Store, name: &str, disk: &[u64]) -> RestorePoint {
    common::backup_with(store, name, disk, &chunk_content, None)
}

fn all_pack_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir.join("packs")).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn marker(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("rackvault-store.json")).unwrap()).unwrap()
}

#[test]
fn an_encrypted_store_reveals_no_plaintext_and_no_plain_digests_in_its_packs() {
    for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
        let dir = tempfile::tempdir().unwrap();
        let disk: Vec<u64> = vec![1, 2, 0, 3, 4, 0, 0, 5, 6, 2, 1];
        let store = open_with(dir.path(), Some(key(1)), Some(cipher)).unwrap();
        assert_eq!(store.format(), store::FORMAT_VERSION);
        let mut session = store.begin_backup().unwrap();
        session.add_file("payroll-server.vmx", SECRET).unwrap();
        let tree = common::ingest(&mut session, &disk, &chunk_content);
        let point = common::commit(session, "payroll-server", disk.len(), tree);
        common::assert_restores(&store, &point, &disk, &chunk_content);
        assert_eq!(store.read_point_file(&point.files[0]).unwrap(), SECRET);

        let packs = all_pack_bytes(dir.path());
        assert!(!contains(&packs, &SECRET[..24]), "{cipher:?}: plaintext in a pack");
        assert!(!contains(&packs, b"payroll-server"), "{cipher:?}: a point or file name in a pack");
        for id in 1..=6u64 {
            let plain = Digest::of(&chunk_content(id));
            assert!(!contains(&packs, &plain.0), "{cipher:?}: the plain blake3 of chunk {id} is in a pack");
            // The keyed id is what the index and the record headers hold.
            assert!(store.contains(&store.keyring().digest(&chunk_content(id))).unwrap());
            assert!(!store.contains(&plain).unwrap());
        }
        // Every record says which AEAD sealed it.
        let m = marker(dir.path());
        assert_eq!(m["format"], 3);
        assert_eq!(m["encryption"]["cipher"], cipher.name());
        let key_hex: String = key(1).as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!m.to_string().contains(&key_hex), "the key itself is never written");
        let loc = store.locate(&store.keyring().digest(&chunk_content(2))).unwrap().unwrap();
        let mut scratch = Vec::new();
        let rec = store.read_encoded(&store.keyring().digest(&chunk_content(2)), &mut scratch).unwrap();
        assert_eq!(rec.cipher, cipher);
        assert_eq!(rec.payload.len() as u32, loc.stored_len);
        assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());
    }
}

#[test]
fn dedup_and_zero_chunks_still_work_in_an_encrypted_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_encrypted(dir.path());
    let disk: Vec<u64> = vec![1, 2, 3, 0, 0, 1, 2, 3];
    let first = {
        let mut s = store.begin_backup().unwrap();
        let tree = common::ingest(&mut s, &disk, &chunk_content);
        assert_eq!(s.stats().chunks_new, 3, "each distinct chunk once, zero chunks never");
        common::commit(s, "vm", disk.len(), tree)
    };
    let mut s = store.begin_backup().unwrap();
    let tree = common::ingest(&mut s, &disk, &chunk_content);
    assert_eq!(s.stats().chunks_new, 0, "an unchanged disk stores nothing new");
    assert_eq!(s.stats().tree_nodes_new, 0, "not even its tree");
    let second = common::commit(s, "vm", disk.len(), tree);
    assert_eq!(first.disks[0].root, second.disks[0].root);
    common::assert_restores(&store, &second, &disk, &chunk_content);
}

#[test]
fn a_wrong_key_is_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    drop(backup(&open_encrypted(dir.path()), "vm", &[1, 2, 3]));
    // What an interrupted backup leaves: the next open that gets in removes it.
    let leftover = dir.path().join("tmp/00000000000000ff.pack");
    std::fs::write(&leftover, b"unsealed").unwrap();
    let index = dir.path().join("index/data.mdb");
    let before = std::fs::metadata(&index).unwrap().modified().unwrap();

    let err = open_with(dir.path(), Some(key(2)), None).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("does not open this encrypted store"), "{err}");
    let err = open_with(dir.path(), None, None).unwrap_err();
    assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
    assert!(err.to_string().contains("the store is encrypted and no key was given"), "{err}");
    // Neither refusal touched the store: no cleanup ran, the index was not written.
    assert!(leftover.exists());
    assert_eq!(std::fs::metadata(&index).unwrap().modified().unwrap(), before);

    let store = open_encrypted(dir.path());
    assert!(!leftover.exists(), "the right key opens it, and the cleanup runs");
    common::assert_restores(&store, &store.find("vm").unwrap(), &[1, 2, 3], &chunk_content);
}

#[test]
fn a_tampered_ciphertext_is_found_by_verify_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = (1..=8).collect();
    let (point, loc) = {
        let store = open_encrypted(dir.path());
        let p = backup(&store, "vm", &disk);
        let loc = store.locate(&store.keyring().digest(&chunk_content(4))).unwrap().unwrap();
        (p, loc)
    };
    // Change one ciphertext byte and fix the record's crc32c, as an attacker would: only
    // the AEAD tag can tell.
    let path = dir.path().join("packs").join(format!("{:016x}.pack", loc.pack));
    let mut bytes = std::fs::read(&path).unwrap();
    let rec = loc.offset as usize;
    let payload = rec + pack::RECORD_HEADER_LEN;
    bytes[payload + 100] ^= 0x20;
    let end = payload + loc.stored_len as usize;
    let crc = pack::RecordHeader::compute_crc(&bytes[rec..rec + 48], &bytes[payload..end]);
    bytes[rec + 48..rec + 52].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();

    let store = open_encrypted(dir.path());
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let d = store.keyring().digest(&chunk_content(4));
    let err = store.read_chunk_checked(&d, &mut scratch, &mut out, pack::ReadCheck::Checksum).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("fails authentication"), "{err}");
    let report = store.verify_store(1, &|_| {}).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.damaged_points.iter().map(|p| p.point.as_str()).collect::<Vec<_>>(), ["vm@1"], "{report:?}");
    let range = &report.damaged_points[0].ranges[0];
    assert_eq!((range.offset, range.len), (3 * CHUNK as u64, CHUNK as u64), "{report:?}");
    // A plain record put in its place, with a valid checksum, is refused just the same: an
    // encrypted store never holds an unsealed record.
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut h = [0u8; pack::RECORD_HEADER_LEN];
    h[..pack::RECORD_HEADER_LEN].copy_from_slice(&bytes[rec..payload]);
    h[5] = 0; // raw
    h[6] = 0; // not encrypted
    h[8..12].copy_from_slice(&loc.stored_len.to_le_bytes()); // raw_len = stored_len
    bytes[payload..end].fill(b'X');
    let crc = pack::RecordHeader::compute_crc(&h, &bytes[payload..end]);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    bytes[rec..payload].copy_from_slice(&h);
    std::fs::write(&path, bytes).unwrap();
    let store = open_encrypted(dir.path());
    let err = store.read_chunk_checked(&d, &mut scratch, &mut out, pack::ReadCheck::Checksum).unwrap_err();
    assert!(err.to_string().contains("an unencrypted record in an encrypted store"), "{err}");
    assert!(!store.verify_store(1, &|_| {}).unwrap().is_clean());
    // The next backup of the same data heals it, as in a plain store.
    let healed = backup(&store, "vm", &disk);
    common::assert_restores(&store, &point, &disk, &chunk_content);
    common::assert_restores(&store, &healed, &disk, &chunk_content);
}

#[test]
fn an_encrypted_record_is_copied_verbatim_into_another_store_with_the_same_key() {
    let (a_dir, b_dir, c_dir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A seals with AES-256-GCM, B with XChaCha20-Poly1305: B reads both.
    let a = open_with(a_dir.path(), Some(key(1)), Some(Cipher::Aes256Gcm)).unwrap();
    let b = open_with(b_dir.path(), Some(key(1)), Some(Cipher::XChaCha20Poly1305)).unwrap();
    assert_ne!(a.store_id_hex(), b.store_id_hex());
    let point = backup(&a, "vm", &[1, 2, 3, 4]);
    let mut scratch = Vec::new();
    let mut session = b.begin_backup().unwrap();
    let mut copied = Vec::new();
    for d in a.walk(&point.disks[0]).map(|d| d.unwrap()) {
        let rec = a.read_encoded(&d, &mut scratch).unwrap();
        assert_eq!(rec.cipher, Cipher::Aes256Gcm);
        session.insert(&rec).unwrap();
        copied.push(rec);
    }
    session.commit("other", vec![], Default::default()).unwrap();
    let (mut out, mut scratch2) = (Vec::new(), Vec::new());
    for (rec, id) in copied.iter().zip(1..=4u64) {
        b.read_chunk(&rec.digest, &mut scratch2, &mut out).unwrap();
        assert_eq!(out, chunk_content(id));
        assert_eq!(b.read_encoded(&rec.digest, &mut scratch).unwrap().payload, rec.payload, "byte for byte");
    }
    // A store under another key takes the bytes but cannot read them, and verify says so.
    let c = open_with(c_dir.path(), Some(key(9)), None).unwrap();
    let mut session = c.begin_backup().unwrap();
    session.insert(&copied[0]).unwrap();
    session.commit("foreign", vec![], Default::default()).unwrap();
    assert!(c.read_chunk(&copied[0].digest, &mut scratch2, &mut out).is_err());
    assert!(!c.verify_store(1, &|_| {}).unwrap().is_clean());
    // A plain store refuses sealed records outright.
    let p_dir = tempfile::tempdir().unwrap();
    let p = open_with(p_dir.path(), None, None).unwrap();
    let err = p.begin_backup().unwrap().insert(&copied[0]).unwrap_err();
    assert!(err.to_string().contains("is encrypted and this store is not"), "{err}");
}

#[test]
fn a_lost_index_is_rebuilt_from_encrypted_packs_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = vec![1, 2, 0, 3];
    drop(backup(&open_encrypted(dir.path()), "vm", &disk));
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    std::fs::create_dir(dir.path().join("index")).unwrap();
    let store = open_encrypted(dir.path());
    assert_eq!(store.cleanup_report().restore_points_recovered, 1);
    let point = store.find("vm").unwrap();
    common::assert_restores(&store, &point, &disk, &chunk_content);
    // Delete and collect: the GC works on keyed ids and sealed records too.
    let kept = backup(&store, "kept", &[3, 4]);
    store.delete_points(&[("vm".into(), point.id)], "test").unwrap();
    store.gc(&Default::default(), &|_| {}, &|| false).unwrap();
    common::assert_restores(&store, &kept, &[3, 4], &chunk_content);
    assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());
}

#[test]
fn an_unencrypted_store_from_before_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = vec![1, 2, 0, 3, 4];
    drop(backup(&open_with(dir.path(), None, None).unwrap(), "vm", &disk));
    // An unencrypted store is still written as format 2, byte for byte what the build before
    // encryption wrote: its marker, its pack headers and a zero cipher byte in every record.
    assert_eq!(marker(dir.path())["format"], 2);
    assert!(marker(dir.path()).get("encryption").is_none());
    for e in std::fs::read_dir(dir.path().join("packs")).unwrap() {
        let path = e.unwrap().path();
        assert_eq!(pack::decode_pack_header(&std::fs::read(&path).unwrap()).unwrap().0, 2);
        let scan = pack::scan_pack(&path, true, &store::Keyring::plain()).unwrap();
        assert!(scan.records.iter().all(|r| r.header.cipher == Cipher::None && r.intact));
    }
    let store = open_with(dir.path(), None, None).unwrap();
    assert_eq!(store.format(), 2);
    let old = store.find("vm").unwrap();
    common::assert_restores(&store, &old, &disk, &chunk_content);
    // Backups into it keep deduplicating against what it holds.
    let mut s = store.begin_backup().unwrap();
    let tree = common::ingest(&mut s, &disk, &chunk_content);
    assert_eq!(s.stats().chunks_new, 0);
    let new = common::commit(s, "vm", disk.len(), tree);
    common::assert_restores(&store, &new, &disk, &chunk_content);
    assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());
    drop(store);
    // A key does not open it: encryption is chosen when a store is created.
    let err = open_with(dir.path(), Some(key(1)), None).unwrap_err();
    assert!(matches!(err, StoreError::NotEncrypted { .. }), "{err}");
}

#[test]
fn a_marker_that_says_format_1_or_2_never_asks_for_a_key() {
    // A format-1 store (no tombstones) is still upgraded to format 2, not 3.
    let dir = tempfile::tempdir().unwrap();
    drop(backup(&open_with(dir.path(), None, None).unwrap(), "vm", &[1]));
    let m = dir.path().join("rackvault-store.json");
    let text = std::fs::read_to_string(&m).unwrap().replace("\"format\": 2", "\"format\": 1");
    std::fs::write(&m, text).unwrap();
    let store = open_with(dir.path(), None, None).unwrap();
    assert_eq!(store.format(), 2);
    assert_eq!(marker(dir.path())["format"], 2);
}

#[test]
fn gc_repack_and_repair_copy_sealed_records_verbatim_and_keep_them_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_encrypted(dir.path());
    // Two points sharing one pack: deleting one leaves the pack mostly dead, so the GC
    // rewrites it, copying the live sealed records into a new pack.
    let mut s = store.begin_backup().unwrap();
    let gone_tree = common::ingest(&mut s, &(1..=20).collect::<Vec<u64>>(), &chunk_content);
    let kept_disk: Vec<u64> = vec![21, 22, 0, 23];
    let kept_tree = common::ingest(&mut s, &kept_disk, &chunk_content);
    let gone = s
        .commit("gone", vec![common::disk_index(20, gone_tree), common::disk_index(4, kept_tree)], Default::default())
        .unwrap();
    let kept = backup(&store, "kept", &kept_disk);
    store.delete_points(&[("gone".into(), gone.id)], "test").unwrap();
    let r = store.gc(&store::GcOptions { repack_threshold: 0.1, dry_run: false }, &|_| {}, &|| false).unwrap();
    assert!(r.chunks_condemned > 0 && r.packs_repacked >= 1, "{r:?}");
    common::assert_restores(&store, &kept, &kept_disk, &chunk_content);
    assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());

    // Damage one record's stored bytes (its checksum fails): repair rewrites the pack keeping
    // the intact sealed records as they are.
    let loc = store.locate(&store.keyring().digest(&chunk_content(22))).unwrap().unwrap();
    drop(store);
    let path = dir.path().join("packs").join(format!("{:016x}.pack", loc.pack));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[loc.offset as usize + pack::RECORD_HEADER_LEN + 7] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let store = open_encrypted(dir.path());
    assert!(!store.verify_store(1, &|_| {}).unwrap().is_clean());
    let report = store.repair().unwrap();
    assert_eq!(report.records_dropped.len(), 1, "{report:?}");
    // Backing the data up again heals the point; every record reads back.
    let again = backup(&store, "kept", &kept_disk);
    common::assert_restores(&store, &kept, &kept_disk, &chunk_content);
    common::assert_restores(&store, &again, &kept_disk, &chunk_content);
    assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());
}

#[test]
fn a_foreign_record_is_never_deduplicated_against_and_a_record_of_the_stores_own_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), None, None).unwrap();
    // A hostile replication source plants garbage under the plain id of content this store
    // will back up (a plain store's ids are public blake3 hashes).
    let planted = Digest::of(&chunk_content(2));
    let mut session = store.begin_backup().unwrap();
    let garbage = pack::EncodedChunk {
        cipher: Cipher::XChaCha20Poly1305,
        foreign: true,
        deferred: false,
        ..pack::EncodedChunk::plain(planted, pack::RecordKind::Data, pack::Codec::Raw, CHUNK as u32, vec![7; 64])
    };
    assert!(session.insert(&garbage).unwrap());
    session.flush().unwrap();
    drop(session);
    assert!(store.holds(&planted).unwrap() && !store.contains(&planted).unwrap());
    // The backup stores its own copy, which takes over the index entry; the point restores.
    let point = backup(&store, "vm", &[2, 3]);
    common::assert_restores(&store, &point, &[2, 3], &chunk_content);
    assert!(store.locate(&planted).unwrap().is_some_and(|l| !l.foreign));
    // The index rebuilt from the packs alone keeps the store's own copy, whichever pack is
    // read first.
    store.reindex().unwrap();
    assert!(store.locate(&planted).unwrap().is_some_and(|l| !l.foreign));
    common::assert_restores(&store, &point, &[2, 3], &chunk_content);
    // The planted record is still in a pack, checked by its checksum only: not damage.
    let v = store.verify_store(1, &|_| {}).unwrap();
    assert!(v.is_clean() && v.chunks_checksum_only == 1, "{v:?}");
    // A foreign record whose checksum fails is damage, as any other.
    let packs: Vec<_> = std::fs::read_dir(dir.path().join("packs")).unwrap().map(|e| e.unwrap().path()).collect();
    let first = packs.iter().min().unwrap();
    let mut bytes = std::fs::read(first).unwrap();
    bytes[64 + 64 + 10] ^= 1;
    std::fs::write(first, &bytes).unwrap();
    assert!(!store.verify_store(1, &|_| {}).unwrap().is_clean());
}
