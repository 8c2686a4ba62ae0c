//! The WooCommerce and OpenAI input mappers read JSON that stores and AI clients send.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren::recs::input;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    // Each mapper answers a value or a message for the 400, never a panic.
    let _ = (input::woo_product(&v), input::woo_customer(&v), input::woo_order(&v));
    let _ = input::product(&v);
    let _ = input::customer(&v);
    let _ = input::order(&v);
    let _ = input::event(&v);
    let _ = input::items_of(v.clone(), "products");
    if let Err(e) = warren::services::search::input_texts(&v) {
        assert!((400..500).contains(&e.code().status()), "{e}");
    }
});
