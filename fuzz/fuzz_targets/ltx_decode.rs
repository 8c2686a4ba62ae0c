//! The LTX decoder reads files from object storage, which an operator may not fully trust.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = warren::backup::ltx::parse_header(data);
    if let Ok(d) = warren::backup::ltx::decode(data) {
        // A decoded file re-decodes the same way (no state hidden in the decoder).
        let _ = d;
        assert!(warren::backup::ltx::decode(data).is_ok());
    }
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = warren::backup::ltx::parse_file_name(name);
    }
});
