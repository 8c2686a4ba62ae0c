//! The LTX decoder reads files from object storage, which an operator may not fully trust.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = warren::backup::ltx::parse_header(data);
    if warren::backup::ltx::decode(data).is_ok() {
        // A file that decoded once decodes again (no state hidden in the decoder).
        assert!(warren::backup::ltx::decode(data).is_ok());
    }
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = warren::backup::ltx::parse_file_name(name);
    }
});
