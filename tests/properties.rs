//! Properties of the accept query's parser (SPEC §2), checked on generated input.

use proptest::prelude::*;
use verve::http::query::{QueryError, parse, parse_endpoint, parse_id};

/// Every byte as `%XX`.
fn percent_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The id grammar, written independently of the parser: optional `-`, then ASCII digits.
fn is_id_grammar(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever arrives, parsing answers (Ok or a QueryError) and never panics.
    #[test]
    fn never_panics(query in ".{0,300}") {
        let _ = parse(&query);
    }

    /// Raw bytes too (percent-escapes of anything, stray `%`, `&` and `=`).
    #[test]
    fn never_panics_on_escapes(query in "([%&=a-z0-9+-]|%[0-9a-fA-F]{2}){0,120}") {
        let _ = parse(&query);
    }

    /// An id formatted and re-parsed is unchanged, plainly, fully percent-encoded, and with
    /// leading zeros.
    #[test]
    fn id_round_trips(id in any::<i64>(), zeros in 0usize..30) {
        prop_assert_eq!(parse(&format!("id={id}")).map(|q| q.id), Ok(id));
        prop_assert_eq!(parse(&format!("id={}", percent_all(&id.to_string()))).map(|q| q.id), Ok(id));
        let padded = if id < 0 {
            format!("-{}{}", "0".repeat(zeros), id.unsigned_abs())
        } else {
            format!("{}{id}", "0".repeat(zeros))
        };
        prop_assert_eq!(parse_id(&padded), Ok(id));
    }

    /// An id is accepted exactly when it matches the grammar and fits in i64.
    #[test]
    fn id_accepted_iff_grammar_and_range(raw in "[-+0-9 eE.x]{0,25}") {
        let expected = if is_id_grammar(&raw) {
            raw.parse::<i128>().ok().and_then(|v| i64::try_from(v).ok()).ok_or(QueryError::BadId)
        } else {
            Err(QueryError::BadId)
        };
        prop_assert_eq!(parse_id(&raw), expected);
    }

    /// An endpoint percent-encoded in full decodes to itself.
    #[test]
    fn endpoint_percent_encoding_round_trips(
        https in any::<bool>(),
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6}){1,2}",
        port in proptest::option::of(1u16..),
        path in "(/[A-Za-z0-9._~!$'()*+,;=:@-]{0,12}){0,4}",
        query in proptest::option::of("[A-Za-z0-9=&._~-]{0,20}"),
    ) {
        let mut url = format!("{}://{host}", if https { "https" } else { "http" });
        if let Some(port) = port {
            url.push_str(&format!(":{port}"));
        }
        url.push_str(&path);
        if let Some(q) = query {
            url.push('?');
            url.push_str(&q);
        }
        let encoded = percent_all(&url);
        let decoded = parse_endpoint(&encoded);
        prop_assert_eq!(decoded.as_deref(), Ok(url.as_str()));
        let query = format!("endpoint={encoded}&id=7");
        let full = parse(&query).unwrap();
        prop_assert_eq!(full.endpoint.as_deref(), Some(url.as_str()));
    }
}
