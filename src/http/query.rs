//! Parsing and validating the accept query (SPEC §2) straight from the request's `&str`.
//!
//! The id is percent-decoded into a stack buffer; the endpoint borrows the query unless it
//! holds escapes. Nothing here allocates for a request without escapes in its endpoint.

use std::borrow::Cow;

use hyper::Uri;

/// Longest decoded endpoint accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// A valid accept query.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: i64,
    /// An absolute http(s) URL, percent-decoded.
    pub endpoint: Option<Cow<'a, str>>,
}

/// Why a query is bad input; every variant is answered `400 failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    MissingId,
    DuplicateId,
    BadId,
    DuplicateEndpoint,
    BadEndpoint,
}

/// Parses `id` and `endpoint` from a raw query string (without the `?`). Other parameters
/// are ignored; `+` is a literal plus, not a space.
pub fn parse(query: &str) -> Result<Query<'_>, QueryError> {
    let mut id = None;
    let mut endpoint = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match param(key) {
            Param::Id => {
                if id.is_some() {
                    return Err(QueryError::DuplicateId);
                }
                id = Some(parse_id(value)?);
            }
            Param::Endpoint => {
                if endpoint.is_some() {
                    return Err(QueryError::DuplicateEndpoint);
                }
                endpoint = Some(parse_endpoint(value)?);
            }
            Param::Other => {}
        }
    }
    Ok(Query {
        id: id.ok_or(QueryError::MissingId)?,
        endpoint,
    })
}

enum Param {
    Id,
    Endpoint,
    Other,
}

/// Recognises a key, also when percent-encoded (`%69d` is `id`).
fn param(key: &str) -> Param {
    match key {
        "id" => return Param::Id,
        "endpoint" => return Param::Endpoint,
        _ if !key.contains('%') => return Param::Other,
        _ => {}
    }
    let mut buf = [0u8; 8];
    match decode_into(key.as_bytes(), &mut buf) {
        Some(b"id") => Param::Id,
        Some(b"endpoint") => Param::Endpoint,
        _ => Param::Other,
    }
}

/// A signed 64-bit decimal: optional `-`, then digits, nothing else. Accumulated while
/// decoding, so any number of leading zeros fits and overflow is caught exactly.
pub fn parse_id(raw: &str) -> Result<i64, QueryError> {
    let mut bytes = Decoded::new(raw.as_bytes()).peekable();
    let negative = bytes.next_if_eq(&Some(b'-')).is_some();
    let mut value: i64 = 0;
    let mut digits = 0usize;
    for byte in bytes {
        let digit = match byte {
            Some(b @ b'0'..=b'9') => i64::from(b - b'0'),
            _ => return Err(QueryError::BadId),
        };
        // Accumulate towards the sign so that i64::MIN is reachable.
        value = value
            .checked_mul(10)
            .and_then(|v| {
                if negative {
                    v.checked_sub(digit)
                } else {
                    v.checked_add(digit)
                }
            })
            .ok_or(QueryError::BadId)?;
        digits += 1;
    }
    if digits == 0 {
        return Err(QueryError::BadId);
    }
    Ok(value)
}

/// An absolute `http`/`https` URL with a host, no user-info, at most 2048 bytes decoded.
pub fn parse_endpoint(raw: &str) -> Result<Cow<'_, str>, QueryError> {
    let decoded: Cow<'_, str> = if raw.contains('%') {
        let bytes = decode(raw.as_bytes()).ok_or(QueryError::BadEndpoint)?;
        Cow::Owned(String::from_utf8(bytes).map_err(|_| QueryError::BadEndpoint)?)
    } else {
        Cow::Borrowed(raw)
    };
    if decoded.is_empty() || decoded.len() > MAX_ENDPOINT_LEN || !is_http_url(&decoded) {
        return Err(QueryError::BadEndpoint);
    }
    Ok(decoded)
}

fn is_http_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else {
        return false;
    };
    let scheme_ok = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    let Some(authority) = uri.authority() else {
        return false;
    };
    let port_ok = match authority.as_str().rsplit_once(':') {
        // `[::1]` has colons inside brackets; a port follows the last `]` if any.
        Some((_, port)) if !port.contains(']') => authority.port_u16().is_some(),
        _ => true,
    };
    scheme_ok && !authority.host().is_empty() && !authority.as_str().contains('@') && port_ok
}

/// Percent-decoded bytes of a raw query component; `None` marks a bad escape.
struct Decoded<'a> {
    raw: &'a [u8],
}

impl<'a> Decoded<'a> {
    fn new(raw: &'a [u8]) -> Self {
        Self { raw }
    }
}

impl Iterator for Decoded<'_> {
    type Item = Option<u8>;

    fn next(&mut self) -> Option<Option<u8>> {
        let (&first, rest) = self.raw.split_first()?;
        if first != b'%' {
            self.raw = rest;
            return Some(Some(first));
        }
        match rest {
            [hi, lo, tail @ ..] => {
                self.raw = tail;
                Some(unhex(*hi).zip(unhex(*lo)).map(|(h, l)| h << 4 | l))
            }
            _ => {
                self.raw = &[];
                Some(None)
            }
        }
    }
}

/// Percent-decodes into `buf`; `None` on a bad escape or when `buf` is too small.
fn decode_into<'b>(raw: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
    let mut len = 0;
    for byte in Decoded::new(raw) {
        *buf.get_mut(len)? = byte?;
        len += 1;
    }
    Some(&buf[..len])
}

/// Percent-decodes into a new buffer; `None` on a bad escape.
fn decode(raw: &[u8]) -> Option<Vec<u8>> {
    Decoded::new(raw).collect()
}

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use QueryError::*;

    fn id(q: &str) -> Result<i64, QueryError> {
        parse(q).map(|q| q.id)
    }

    #[test]
    fn accepts_valid_ids() {
        assert_eq!(id("id=42"), Ok(42));
        assert_eq!(id("id=-7"), Ok(-7));
        assert_eq!(id("id=007"), Ok(7));
        assert_eq!(id("id=%34%32"), Ok(42));
        assert_eq!(id("%69d=5"), Ok(5));
        assert_eq!(id("x=1&id=9&y"), Ok(9));
        assert_eq!(id("id=9223372036854775807"), Ok(i64::MAX));
        assert_eq!(id("id=-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(id("id=0000000000000000000000001"), Ok(1));
        assert_eq!(id("id=-0"), Ok(0));
    }

    #[test]
    fn rejects_bad_ids() {
        let table = [
            ("", MissingId),
            ("x=1", MissingId),
            ("id", BadId),
            ("id=", BadId),
            ("id=-", BadId),
            ("id=+1", BadId),
            ("id=%2B1", BadId),
            ("id=%201", BadId),
            ("id=1%20", BadId),
            ("id=1e3", BadId),
            ("id=1.0", BadId),
            ("id=0x10", BadId),
            ("id=9223372036854775808", BadId),
            ("id=-9223372036854775809", BadId),
            ("id=00000000000000000000009223372036854775808", BadId),
            ("id=%zz", BadId),
            ("id=%3", BadId),
            ("id=%E0%A4", BadId),
            ("id=1&id=2", DuplicateId),
            ("id=1&id=1", DuplicateId),
        ];
        for (q, want) in table {
            assert_eq!(id(q), Err(want), "query {q:?}");
        }
    }

    #[test]
    fn accepts_and_decodes_endpoints() {
        let q = parse("id=1&endpoint=http%3A%2F%2Fexample.com%2Fhook%3Fa%3D1").unwrap();
        assert_eq!(q.endpoint.as_deref(), Some("http://example.com/hook?a=1"));
        assert!(matches!(q.endpoint, Some(Cow::Owned(_))));
        let q = parse("endpoint=https://example.com:8443/x&id=1").unwrap();
        assert_eq!(q.endpoint.as_deref(), Some("https://example.com:8443/x"));
        assert!(matches!(q.endpoint, Some(Cow::Borrowed(_))));
        for ok in [
            "HTTP://a.b/",
            "http://[::1]:80/",
            "http://127.0.0.1",
            "https://a/?b=c",
        ] {
            assert!(parse_endpoint(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_endpoints() {
        let long = format!("http://a.com/{}", "x".repeat(MAX_ENDPOINT_LEN));
        let table = [
            "",
            "example.com/hook",
            "/hook",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://",
            "http:///path",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "http%3A%2F%2Fuser%40example.com%2F",
            "http://example.com:99999/",
            "http://exa mple.com/",
            "http://example.com/%zz",
            "http://example.com/%E0%A4",
            "javascript:alert(1)",
            long.as_str(),
        ];
        for bad in table {
            assert_eq!(parse_endpoint(bad), Err(BadEndpoint), "endpoint {bad:?}");
        }
        assert_eq!(
            parse("id=1&endpoint=http://a/&endpoint=http://b/"),
            Err(DuplicateEndpoint)
        );
        assert_eq!(parse("id=1&endpoint="), Err(BadEndpoint));
        assert_eq!(parse("id=1&endpoint"), Err(BadEndpoint));
    }
}
