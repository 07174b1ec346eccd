//! Fuzzes the accept query's parser (SPEC §2) and the callback host allow-list against
//! simple reference implementations written here: whatever arrives, parsing answers without
//! panicking, and an id is accepted exactly when the reference accepts it, with its value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verve::callback::guard::HostList;
use verve::http::query::{MAX_ENDPOINT_LEN, parse, parse_endpoint, parse_id};

/// Percent-decoding as plainly as it can be written; `None` for a broken escape.
fn decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The id grammar (optional `-`, then ASCII digits) and the standard library's i64 parser.
fn reference_id(raw: &str) -> Option<i64> {
    let decoded = String::from_utf8(decode(raw)?).ok()?;
    let digits = decoded.strip_prefix('-').unwrap_or(&decoded);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    decoded.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The whole input as a query, and as one id value and one endpoint value.
    if let Ok(query) = parse(text) {
        assert_eq!(
            parse(&format!("id={}", query.id)).map(|q| q.id),
            Ok(query.id)
        );
        if let Some(raw) = query.endpoint {
            let endpoint = parse_endpoint(raw).expect("an accepted query's endpoint parses");
            assert!(!endpoint.is_empty() && endpoint.len() <= MAX_ENDPOINT_LEN + 1);
            assert!(endpoint.starts_with("http://") || endpoint.starts_with("https://"));
            assert!(endpoint.bytes().all(|b| b.is_ascii_graphic() && b != b'#'));
        }
    }
    assert_eq!(parse_id(text).ok(), reference_id(text), "id {text:?}");
    if let Ok(endpoint) = parse_endpoint(text) {
        // Anything accepted is a URL the allow-list can judge, with or without a list.
        let list: HostList = "example.com,*.example.org".parse().unwrap();
        let _ = list.permits_url(&endpoint);
        assert!(HostList::default().permits_url(&endpoint));
    }
});
