//! The chunker splits any UTF-8 a tenant sends.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren::docs::chunk::{chunk, TokenCounter};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (title, body) = match text.split_once('\u{1}') {
        Some((t, b)) => (Some(t), b),
        None => (None, text.as_ref()),
    };
    let chunks = chunk(&TokenCounter::Approx, body, title);
    if !body.trim().is_empty() {
        assert!(!chunks.is_empty(), "non-blank content gave no chunk");
    }
    let input = warren::docs::DocumentInput { content: body.to_string(), path: "fuzz.md".into(), title: title.map(String::from), metadata: None };
    let _ = warren::docs::prepare(input, &warren::docs::DocLimits::default(), &TokenCounter::Approx);
});
