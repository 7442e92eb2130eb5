//! An uploaded update bundle is untrusted bytes: opening and unpacking any input must end in
//! `Ok` or a `BundleError`, never a panic, a hang or an allocation the input sizes. The key is
//! fixed, so almost every input stops at the signature; the bytes after a valid-looking head
//! still go through the length and manifest checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = bundle::PublicKey([7u8; 32]);
    if let Ok(b) = bundle::Bundle::open(data, &key) {
        let _ = b.unpack(|_| Ok(std::io::sink()), |_| {});
    }
    let text = String::from_utf8_lossy(data);
    let _ = bundle::PublicKey::from_hex(&text);
    let _ = bundle::parse_version(&text);
});
