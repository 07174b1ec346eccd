//! Properties of the accept query's parser (SPEC §2), checked on generated input.

use proptest::prelude::*;
use verve::countlog::{self, Entry};
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
        // Normalized: an explicit default port is dropped, an empty path is `/`.
        let mut want = url.clone();
        for default in [":80", ":443"] {
            let scheme_default = (default == ":80") != https;
            if scheme_default {
                let authority = want.find("://").unwrap() + 3;
                let end = want[authority..].find(['/', '?']).map_or(want.len(), |i| authority + i);
                if want[..end].ends_with(default) {
                    want.replace_range(end - default.len()..end, "");
                }
            }
        }
        let authority = want.find("://").unwrap() + 3;
        match want[authority..].find(['/', '?']) {
            Some(i) if want.as_bytes()[authority + i] == b'?' => want.insert(authority + i, '/'),
            None => want.push('/'),
            _ => {}
        }
        let decoded = parse_endpoint(&encoded);
        prop_assert_eq!(decoded.as_deref(), Ok(want.as_str()));
        let query = format!("endpoint={encoded}&id=7");
        let full = parse(&query).unwrap();
        prop_assert_eq!(full.endpoint, Some(encoded.as_str()));
        // The normalized form is a URL the HTTP client takes, with the same host.
        let uri: hyper::Uri = want.parse().unwrap();
        prop_assert_eq!(uri.host(), Some(host.as_str()));
    }

    /// Any decoded endpoint is refused, or normalized to visible ASCII without a fragment
    /// that normalizes to itself and that the HTTP client parses.
    #[test]
    fn accepted_endpoints_are_visible_ascii_urls(raw in "(https?://)?([\\x00-\\x7f]|%[0-9a-fA-F]{2}|\\PC){0,40}") {
        if let Ok(normalized) = parse_endpoint(&raw) {
            prop_assert!(normalized.bytes().all(|b| b.is_ascii_graphic() && b != b'#'), "{normalized:?}");
            prop_assert_eq!(parse_endpoint(&normalized.replace('%', "%25")), Ok(normalized.clone()));
            prop_assert!(normalized.parse::<hyper::Uri>().is_ok(), "{normalized:?}");
        }
    }

    /// Whatever a caller sends ends up as one line of visible ASCII words, through the very
    /// function the count log writes with: each value one word, decodable to itself.
    #[test]
    fn count_log_lines_are_one_line_of_ascii_words(
        value in "\\PC*|[\\x00-\\x7f]*",
        other in any::<String>(),
        message in any::<String>(),
    ) {
        let entry = Entry::new("callback")
            .field("endpoint", &value)
            .field("endpoint_id", &other)
            .field("attempt", 1);
        for text in [entry.text(), message.as_str()] {
            let line = countlog::line(1_795_529_161_004, log::Level::Info, text);
            prop_assert!(line.ends_with('\n'));
            let body = &line[..line.len() - 1];
            prop_assert!(body.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{line:?}");
            prop_assert!(!body.contains("  ") && !body.ends_with(' '), "{line:?}");
        }
        let line = countlog::line(0, log::Level::Info, entry.text());
        let words: Vec<&str> = line.trim_end().split(' ').collect();
        prop_assert_eq!(words.len(), 6, "{}", line);
        prop_assert_eq!(words[2], "callback");
        prop_assert_eq!(percent_decode(words[3].strip_prefix("endpoint=").unwrap()), value.into_bytes());
        prop_assert_eq!(percent_decode(words[4].strip_prefix("endpoint_id=").unwrap()), other.into_bytes());
        prop_assert_eq!(words[5], "attempt=1");
    }
}

/// Decodes `%XX` escapes (the count log's escaping is reversible).
fn percent_decode(word: &str) -> Vec<u8> {
    let bytes = word.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&word[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
