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
    for level in 0..3 {
        let _ = tree::decode_node(data, level, &Digest::ZERO);
    }
    // A whole pack: a valid header followed by the fuzz input as records.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0000000000000001.pack");
    let mut file = pack::encode_pack_header(1, &[0; 16], 0).to_vec();
    file.extend_from_slice(data);
    std::fs::write(&path, file).expect("write");
    let _ = pack::scan_pack(&path, true);
});
