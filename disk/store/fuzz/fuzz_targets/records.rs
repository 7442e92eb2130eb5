//! Feed arbitrary bytes to every parser of stored bytes: record headers and payloads, pack
//! headers, index-tree nodes, and a whole pack file walk. None may panic or allocate without
//! bound; all must return errors for garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::{pack, tree, Digest};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if let Ok(Some(h)) = pack::RecordHeader::decode(data) {
        let payload = &data[pack::RECORD_HEADER_LEN.min(data.len())..];
        let _ = pack::decode_payload(h.codec, payload, h.raw_len, &h.digest, &mut out);
    }
    let _ = pack::decode_pack_header(data);
    // A replicated batch: split into whole records, each decoded as a receiver would.
    if let Ok((records, used)) = pack::split_records(data) {
        assert!(used <= data.len());
        for c in records {
            let _ = pack::decode_payload(c.codec, &c.payload, c.raw_len, &c.digest, &mut out);
        }
    }
    for level in 0..3 {
        let _ = tree::decode_node(data, level, &Digest::ZERO);
    }
    // A whole pack: a valid header followed by the fuzz input as records.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0000000000000001.pack");
    let mut file = pack::encode_pack_header(1, &[0; 16], 0, store::FORMAT_VERSION).to_vec();
    file.extend_from_slice(data);
    std::fs::write(&path, file).expect("write");
    let _ = pack::scan_pack(&path, true, &store::Keyring::plain());
    // And as records of an encrypted store: sealed payloads that fail their tag, or claim
    // absurd lengths, are damage, never a panic.
    let keys = store::Keyring::new(&store::StoreKey::from_bytes([7; 32]), store::Cipher::Aes256Gcm);
    if let Ok(Some(h)) = pack::RecordHeader::decode(data) {
        let payload = &data[pack::RECORD_HEADER_LEN.min(data.len())..];
        let _ = pack::decode_record(&keys, &h, payload, &mut out, pack::ReadCheck::Digest);
    }
    let _ = pack::scan_pack(&path, true, &keys);
    // And as foreign records (a replica's, kept without its key; flag bit set by the input),
    // in a store that holds one replica key: checked as far as it can, never a panic.
    let replicas = store::Keyring::plain().with_replica_keys(&[store::StoreKey::from_bytes([7; 32])]);
    if let Ok(Some(h)) = pack::RecordHeader::decode(data) {
        let payload = &data[pack::RECORD_HEADER_LEN.min(data.len())..];
        let _ = pack::check_content(&replicas, &h, payload, &mut out);
    }
    let _ = pack::scan_pack(&path, true, &replicas);
});
