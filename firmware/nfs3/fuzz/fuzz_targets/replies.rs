//! Treat the fuzz input as a reply from a hostile NFS server: record marking, the RPC
//! header and every procedure's results must decode or fail cleanly, never panic, hang or
//! allocate more than the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nfs3::wire::fuzz_all_decoders(data);
});
