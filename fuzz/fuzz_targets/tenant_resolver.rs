//! The tenant resolver: Host and X-Tenant-Domain values and JWTs come straight from the network.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let host = parts.next().unwrap_or_default();
    let base = parts.next().unwrap_or("localhost");
    let token = parts.next().unwrap_or(host);
    let _ = warren::auth::classify_host(host, base);
    let _ = warren::auth::classify_host(host, "localhost");
    let key = jsonwebtoken::DecodingKey::from_secret(b"a-fuzzing-secret-of-enough-length-0123");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_nbf = true;
    if let Err(e) = warren::auth::parse_jwt(token, &key, &validation) {
        // Every refusal is a 401, never a server error.
        assert_eq!(e.code().status(), 401, "{e}");
    }
});
