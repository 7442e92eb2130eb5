//! Treat the fuzz input as the body of an answer from a hostile S3 server: the error
//! document's Code and Message, a multipart UploadId and a retention document must parse or
//! fail cleanly, never panic or allocate more than the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/xml.rs"]
mod xml;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for name in ["Code", "Message", "UploadId", "Mode", "RetainUntilDate"] {
        let _ = xml::field(&text, name);
    }
    let _ = xml::retention(&text);
});
