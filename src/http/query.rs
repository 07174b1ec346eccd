//! Parsing and validating the accept query (SPEC §2) straight from the request's `&str`.
//!
//! The id is percent-decoded into a stack buffer. An endpoint is decoded, checked and
//! normalized into a caller's stack buffer ([`EndpointBuf`]) and identified by a seeded hash
//! of its normalized bytes, so a request allocates nothing for an endpoint until one is
//! registered for the first time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

/// Longest decoded endpoint accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Longest normalized endpoint: normalizing adds at most a `/` and the growth of an IP
/// literal written canonically (`[::ffff:7f00:1]` is `[::ffff:127.0.0.1]`).
pub const MAX_NORMALIZED_LEN: usize = MAX_ENDPOINT_LEN + 64;

/// A valid accept query. The endpoint is still raw (percent-encoded): [`Endpoint::parse`]
/// decodes it, and [`parse`] has already checked that it does.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: i64,
    /// The `endpoint` parameter as it arrived, known to be a valid endpoint.
    pub endpoint: Option<&'a str>,
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
/// are ignored; `+` is a literal plus, not a space. The endpoint is checked in full (decoded
/// and normalized on the stack) but returned raw.
pub fn parse(query: &str) -> Result<Query<'_>, QueryError> {
    let query = parse_params(query)?;
    if let Some(raw) = query.endpoint {
        Endpoint::parse(raw, &mut EndpointBuf::new())?;
    }
    Ok(query)
}

/// [`parse`] without the endpoint's check: the caller must run [`Endpoint::parse`] on it.
pub(super) fn parse_params(query: &str) -> Result<Query<'_>, QueryError> {
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
                endpoint = Some(value);
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

/// Room for one normalized endpoint.
pub struct EndpointBuf([u8; MAX_NORMALIZED_LEN]);

impl EndpointBuf {
    pub fn new() -> Self {
        Self([0; MAX_NORMALIZED_LEN])
    }
}

impl Default for EndpointBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// A valid endpoint in its normalized form (SPEC §2): scheme and host lower-cased, a host's
/// final dot dropped, an IP literal written canonically (every IPv4 spelling — `127.1`,
/// `2130706433`, `0x7f.0.0.1`, `0177.0.0.1` — as its dotted quad, IPv6 compressed), the default
/// port dropped, an empty path made `/`. Two spellings of one target are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'b> {
    normalized: &'b str,
    /// Length of `scheme://host[:port]`.
    origin_len: usize,
    /// Length of the host within the origin, from `host_start`.
    host: (usize, usize),
    key: u128,
}

impl<'b> Endpoint<'b> {
    /// Decodes, checks and normalizes a raw (percent-encoded) `endpoint` value into `buf`.
    pub fn parse(raw: &str, buf: &'b mut EndpointBuf) -> Result<Self, QueryError> {
        let mut len = 0;
        for byte in Decoded::new(raw.as_bytes()) {
            let byte = byte.ok_or(QueryError::BadEndpoint)?;
            if len == MAX_ENDPOINT_LEN {
                return Err(QueryError::BadEndpoint);
            }
            buf.0[len] = byte;
            len += 1;
        }
        Self::normalize(buf, len)
    }

    /// Checks and normalizes an already decoded URL (a stored endpoint, say).
    pub fn parse_decoded(url: &str, buf: &'b mut EndpointBuf) -> Result<Self, QueryError> {
        let len = url.len();
        if len > MAX_NORMALIZED_LEN {
            return Err(QueryError::BadEndpoint);
        }
        buf.0[..len].copy_from_slice(url.as_bytes());
        Self::normalize(buf, len)
    }

    /// Normalizes the URL in `buf[..len]` in place.
    fn normalize(buf: &'b mut EndpointBuf, mut len: usize) -> Result<Self, QueryError> {
        let bad = QueryError::BadEndpoint;
        let url = &mut buf.0;
        if len == 0
            || !url[..len]
                .iter()
                .all(|&b| b.is_ascii_graphic() && b != b'#')
        {
            return Err(bad);
        }
        let (scheme_len, default_port) = if starts_with_ignore_case(&url[..len], b"http://") {
            (4, 80)
        } else if starts_with_ignore_case(&url[..len], b"https://") {
            (5, 443)
        } else {
            return Err(bad);
        };
        url[..scheme_len].make_ascii_lowercase();
        let host_start = scheme_len + 3;
        let authority_end = url[host_start..len]
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .map_or(len, |p| host_start + p);
        let authority = &url[host_start..authority_end];
        // The port follows the last `:` that is not inside an IPv6 literal's brackets.
        let colon = authority
            .iter()
            .rposition(|&b| b == b':')
            .filter(|&c| !authority[c..].contains(&b']'));
        let mut host_end = colon.map_or(authority_end, |c| host_start + c);
        let mut authority_end = authority_end;
        if !is_host(&url[host_start..host_end]) || !is_path_and_query(&url[authority_end..len]) {
            return Err(bad);
        }
        url[host_start..host_end].make_ascii_lowercase();
        let mut canonical = [0u8; 48];
        if let Some(host) = canonical_host(&url[host_start..host_end], &mut canonical)? {
            let grown = host.len() as isize - (host_end - host_start) as isize;
            len = splice(url, len, host_start..host_end, host)?;
            host_end = host_end.saturating_add_signed(grown);
            authority_end = authority_end.saturating_add_signed(grown);
        }
        // The port: canonical decimal, dropped when it is the scheme's default (or empty).
        let port = match colon {
            None => None,
            Some(_) => parse_port(&url[host_end + 1..authority_end]).ok_or(bad)?,
        };
        let mut digits = [0u8; 6];
        let port_text: &[u8] = match port {
            Some(port) if port != default_port => port_text(port, &mut digits),
            _ => &[],
        };
        len = splice(url, len, host_end..authority_end, port_text)?;
        let origin_len = host_end + port_text.len();
        if origin_len == len || url[origin_len] != b'/' {
            len = splice(url, len, origin_len..origin_len, b"/")?;
        }
        let normalized = std::str::from_utf8(&url[..len]).map_err(|_| bad)?;
        Ok(Self {
            normalized,
            origin_len,
            host: (host_start, host_end),
            key: xxhash_rust::xxh3::xxh3_128_with_seed(normalized.as_bytes(), key_seed()),
        })
    }

    /// The normalized URL: what is POSTed to, and what the fleet stores.
    pub fn as_str(&self) -> &'b str {
        self.normalized
    }

    /// `scheme://host[:port]`: what the count log shows (paths often carry tokens).
    pub fn origin(&self) -> &'b str {
        &self.normalized[..self.origin_len]
    }

    /// The lower-cased host (an IPv6 literal with its brackets).
    pub fn host(&self) -> &'b str {
        &self.normalized[self.host.0..self.host.1]
    }

    /// The endpoint's identity within this process: a seeded hash of the normalized bytes.
    pub fn key(&self) -> u128 {
        self.key
    }

    /// Who answers for the host, judged without DNS.
    pub fn site(&self) -> Site<'b> {
        Site::of_host(self.host())
    }

    /// Who answers for the host ([`Site`]), as a seeded hash: the same only within this
    /// process (the fleet's per-domain counts go by the site's text). Caps per domain use
    /// it, without DNS: host names under one domain are free to mint.
    pub fn domain_key(&self) -> u64 {
        let seed = key_seed();
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed;
        match self.site() {
            Site::V4([a, b, c]) => hash(&[4, a, b, c], seed),
            Site::V6(prefix) => {
                let mut bytes = [6u8; 9];
                for (i, segment) in prefix.iter().enumerate() {
                    bytes[1 + 2 * i..3 + 2 * i].copy_from_slice(&segment.to_be_bytes());
                }
                hash(&bytes, seed)
            }
            Site::Name(domain) => hash(domain.as_bytes(), seed),
        }
    }
}

/// Who answers for a destination: an IPv4 /24, an IPv6 /64, or a registered name's
/// registrable domain (public suffix list). Host names and IPv6 forms carrying an IPv4
/// address (IPv4-mapped, NAT64) are judged by what they reach, so minting them buys nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site<'a> {
    V4([u8; 3]),
    V6([u16; 4]),
    Name(&'a str),
}

/// The same text on every instance, so the fleet's per-domain counts agree: `127.0.0.0/24`,
/// `2001:db8:1:2::/64` or the registrable domain (a host name holds no `/`, so the forms
/// never meet).
impl std::fmt::Display for Site<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Site::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Site::V6([a, b, c, d]) => write!(f, "{a:x}:{b:x}:{c:x}:{d:x}::/64"),
            Site::Name(domain) => f.write_str(domain),
        }
    }
}

impl<'a> Site<'a> {
    /// The prefix `ip` belongs to.
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Site::V4([a, b, c])
            }
            IpAddr::V6(v6) => match v6.segments() {
                [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
                    Self::of_ip(IpAddr::V4(Ipv4Addr::from(
                        u32::from(hi) << 16 | u32::from(lo),
                    )))
                }
                [a, b, c, d, ..] => Site::V6([a, b, c, d]),
            },
        }
    }

    /// The site of a host as a normalized endpoint holds it (lower case, IPv6 in brackets).
    pub fn of_host(host: &'a str) -> Self {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Ok(ip) = bare.unwrap_or(host).parse::<IpAddr>() {
            return Self::of_ip(ip);
        }
        let name = host.trim_end_matches('.');
        Site::Name(psl::domain_str(name).unwrap_or(name))
    }
}

/// The process's seed for endpoint keys, so callers cannot craft colliding endpoints.
fn key_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x656e_6470_6f69_6e74_u64)
    })
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A registered name (letters, digits, `-._~`) or a bracketed IPv6 literal; no user-info,
/// no percent-escapes, no zone.
fn is_host(host: &[u8]) -> bool {
    match host {
        [] => false,
        [b'[', inner @ .., b']'] => std::str::from_utf8(inner)
            .ok()
            .is_some_and(|v6| v6.parse::<Ipv6Addr>().is_ok()),
        _ => host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')),
    }
}

/// RFC 3986 path and query characters, with every `%` starting a valid escape. Anything
/// else (`"<>\^`{|}` and the like) must arrive percent-encoded inside the URL.
fn is_path_and_query(rest: &[u8]) -> bool {
    let mut i = 0;
    while i < rest.len() {
        let b = rest[i];
        let ok = match b {
            b'%' => {
                let escape = rest.get(i + 1..i + 3);
                if !escape.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 2;
                true
            }
            b'/' | b'?' | b':' | b'@' | b'-' | b'.' | b'_' | b'~' => true,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
            _ => b.is_ascii_alphanumeric(),
        };
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// `:<port>` in decimal, written into `digits`.
fn port_text(port: u16, digits: &mut [u8; 6]) -> &[u8] {
    let mut n = 0;
    let mut rest = port;
    let mut reversed = [0u8; 5];
    loop {
        reversed[n] = b'0' + (rest % 10) as u8;
        n += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    digits[0] = b':';
    for (i, d) in reversed[..n].iter().rev().enumerate() {
        digits[1 + i] = *d;
    }
    &digits[..=n]
}

/// A port: empty (the default), or decimal digits up to 65535 (`Some(None)` for empty).
fn parse_port(digits: &[u8]) -> Option<Option<u16>> {
    if digits.is_empty() {
        return Some(None);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: u32 = 0;
    for &d in digits {
        value = (value * 10 + u32::from(d - b'0')).min(1 << 17);
    }
    u16::try_from(value).ok().filter(|&p| p > 0).map(Some)
}

/// Replaces `range` of `buf[..len]` with `with`; the new length, or bad input when it would
/// not fit in `buf`.
fn splice(
    buf: &mut [u8],
    len: usize,
    range: std::ops::Range<usize>,
    with: &[u8],
) -> Result<usize, QueryError> {
    let new_len = len - range.len() + with.len();
    if new_len > buf.len() {
        return Err(QueryError::BadEndpoint);
    }
    buf.copy_within(range.end..len, range.start + with.len());
    buf[range.start..range.start + with.len()].copy_from_slice(with);
    Ok(new_len)
}

/// The canonical spelling of a (lower-cased, valid) host when it differs: without its final
/// dot; an IPv6 literal as `Ipv6Addr` writes it; a host ending in a number parsed as IPv4 the
/// way browsers do (WHATWG: 1–4 parts, decimal, `0x` hex or `0` octal) and written as a
/// dotted quad — such a host that is not IPv4 (`1.2.3.4.5`, `999.1.1.1`) is bad input,
/// since resolvers read these spellings differently.
fn canonical_host<'c>(host: &[u8], out: &'c mut [u8; 48]) -> Result<Option<&'c [u8]>, QueryError> {
    use std::io::Write;
    let bad = QueryError::BadEndpoint;
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    if let [b'[', inner @ .., b']'] = host {
        let ip: Ipv6Addr = std::str::from_utf8(inner)
            .ok()
            .and_then(|v6| v6.parse().ok())
            .ok_or(bad)?;
        write!(cursor, "[{ip}]").map_err(|_| bad)?;
    } else {
        let name = host.strip_suffix(b".").unwrap_or(host);
        if name.is_empty() || name.ends_with(b".") || name.starts_with(b".") {
            return Err(bad);
        }
        let last = name.rsplit(|&b| b == b'.').next().unwrap_or(name);
        let numeric = last.iter().all(u8::is_ascii_digit)
            || (last.len() >= 2
                && last[..2].eq_ignore_ascii_case(b"0x")
                && last[2..].iter().all(u8::is_ascii_hexdigit));
        if numeric {
            write!(cursor, "{}", parse_ipv4(name).ok_or(bad)?).map_err(|_| bad)?;
        } else if name.len() == host.len() {
            return Ok(None);
        } else {
            cursor.write_all(name).map_err(|_| bad)?;
        }
    }
    let written = cursor.position() as usize;
    let canonical = &out[..written];
    Ok((canonical != host).then_some(canonical))
}

/// The WHATWG URL standard's IPv4 parser, for a host without its final dot.
fn parse_ipv4(name: &[u8]) -> Option<Ipv4Addr> {
    let mut numbers = [0u64; 4];
    let mut parts = 0;
    for part in name.split(|&b| b == b'.') {
        *numbers.get_mut(parts)? = parse_ipv4_number(part)?;
        parts += 1;
    }
    let (last, init) = (numbers[parts - 1], &numbers[..parts - 1]);
    if init.iter().any(|&n| n > 255) || last >= 256u64.pow(5 - parts as u32) {
        return None;
    }
    let value = init
        .iter()
        .enumerate()
        .fold(last, |ip, (i, &n)| ip + (n << (8 * (3 - i))));
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// One IPv4 part: `0x` hex (empty is 0), a leading `0` octal, else decimal; saturating, so
/// a long part is simply too large.
fn parse_ipv4_number(part: &[u8]) -> Option<u64> {
    let (digits, radix) = match part {
        [] => return None,
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        [b'0', octal @ ..] if !octal.is_empty() => (octal, 8),
        decimal => (decimal, 10),
    };
    digits.iter().try_fold(0u64, |value, &d| {
        let digit = char::from(d).to_digit(radix)?;
        Some(
            value
                .saturating_mul(u64::from(radix))
                .saturating_add(u64::from(digit)),
        )
    })
}

/// Decodes, checks and normalizes a raw endpoint value into a new string (tests, tools).
pub fn parse_endpoint(raw: &str) -> Result<String, QueryError> {
    Endpoint::parse(raw, &mut EndpointBuf::new()).map(|e| e.as_str().to_string())
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
        assert_eq!(q.endpoint, Some("http%3A%2F%2Fexample.com%2Fhook%3Fa%3D1"));
        assert_eq!(
            parse_endpoint(q.endpoint.unwrap()).as_deref(),
            Ok("http://example.com/hook?a=1")
        );
        let q = parse("endpoint=https://example.com:8443/x&id=1").unwrap();
        assert_eq!(q.endpoint, Some("https://example.com:8443/x"));
        for ok in [
            "HTTP://a.b/",
            "http://[::1]:80/",
            "http://127.0.0.1",
            "https://a/?b=c",
            "http://a/%250A", // the URL's own escape of a line feed: visible ASCII
            "http://a/p?q=%252523", // a double-encoded `#`: still an escape in the URL
            "http://a_b.c~d/!$&'()*+,;=:@-._~?/?",
        ] {
            assert!(parse_endpoint(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn normalizes_spellings_of_one_target() {
        let table = [
            ("http://Example.COM:80", "http://example.com/"),
            ("HTTP://example.com/", "http://example.com/"),
            ("http://example.com:/", "http://example.com/"),
            ("http://example.com:0080/a", "http://example.com/a"),
            ("https://EXAMPLE.com:443?x=1", "https://example.com/?x=1"),
            ("https://example.com:80/", "https://example.com:80/"),
            ("http://example.com:8080", "http://example.com:8080/"),
            (
                "http://example.com:00443/A/B?C",
                "http://example.com:443/A/B?C",
            ),
            ("http://[::FFFF:7F00:1]:80/", "http://[::ffff:127.0.0.1]/"),
            ("http://[0:0::1]/", "http://[::1]/"),
            ("http://[0000::0001]:8080", "http://[::1]:8080/"),
            ("http://Example.com./x", "http://example.com/x"),
            ("http://127.1/", "http://127.0.0.1/"),
            ("http://2130706433:9/", "http://127.0.0.1:9/"),
            ("http://0x7f.1/", "http://127.0.0.1/"),
            ("http://0X7F.0.0.1/", "http://127.0.0.1/"),
            ("http://0177.0.0.1/", "http://127.0.0.1/"),
            ("http://00177.0.0.1/", "http://127.0.0.1/"),
            ("http://017700000001/", "http://127.0.0.1/"),
            ("http://127.0.1/", "http://127.0.0.1/"),
            ("http://127.0.0.1./", "http://127.0.0.1/"),
            ("http://0/", "http://0.0.0.0/"),
            ("http://0x/", "http://0.0.0.0/"),
            ("http://8.8.2056/", "http://8.8.8.8/"),
        ];
        for (raw, want) in table {
            assert_eq!(parse_endpoint(raw).as_deref(), Ok(want), "{raw}");
            let mut buf = EndpointBuf::new();
            let e = Endpoint::parse(raw, &mut buf).unwrap();
            let mut again = EndpointBuf::new();
            let same = Endpoint::parse_decoded(want, &mut again).unwrap();
            assert_eq!(e.key(), same.key(), "{raw}");
            assert_eq!(same.as_str(), want, "normalizing is idempotent");
        }
        let mut buf = EndpointBuf::new();
        let e = Endpoint::parse("https://Hooks.Example.com:8443/T0KEN/x?sig=1", &mut buf).unwrap();
        assert_eq!(e.origin(), "https://hooks.example.com:8443");
        assert_eq!(e.host(), "hooks.example.com");
        let mut buf = EndpointBuf::new();
        let e = Endpoint::parse("http://[::1]?a", &mut buf).unwrap();
        assert_eq!(
            (e.as_str(), e.origin(), e.host()),
            ("http://[::1]/?a", "http://[::1]", "[::1]")
        );
        let mut other = EndpointBuf::new();
        let f = Endpoint::parse("http://[::1]/?b", &mut other).unwrap();
        assert_ne!(e.key(), f.key());
    }

    /// A 2048-byte endpoint without a path normalizes to 2049 bytes, and a stored endpoint
    /// of that length parses again (the fleet re-reads what it stored).
    #[test]
    fn the_longest_endpoint_parses_again_once_normalized() {
        let query = "x".repeat(MAX_ENDPOINT_LEN - "http://a.b?".len());
        let raw = format!("http://a.b?{query}");
        assert_eq!(raw.len(), MAX_ENDPOINT_LEN);
        let normalized = parse_endpoint(&raw).unwrap();
        assert_eq!(normalized.len(), MAX_ENDPOINT_LEN + 1);
        let mut buf = EndpointBuf::new();
        let again = Endpoint::parse_decoded(&normalized, &mut buf).unwrap();
        assert_eq!(again.as_str(), normalized);
        // Growth past the buffer (a stored value no instance wrote) is refused, not a panic.
        let huge = format!(
            "http://[::ffff:7f00:1]?{}",
            "x".repeat(MAX_NORMALIZED_LEN - 23)
        );
        assert_eq!(huge.len(), MAX_NORMALIZED_LEN);
        let mut buf = EndpointBuf::new();
        assert!(Endpoint::parse_decoded(&huge, &mut buf).is_err());
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
            "http://example.com:0/",
            "http://example.com:8x/",
            "http://exa mple.com/",
            "http://example.com/%zz",
            "http://example.com/%E0%A4",
            "http://example.com/%25zz",
            "http://example.com/x%23%0Aforged",
            "http://example.com/x#frag",
            "http://example.com/x%23frag",
            "http://example.com/%0A",
            "http://example.com/%0D",
            "http://example.com/%00",
            "http://example.com/%09",
            "http://example.com/%20",
            "http://example.com/%7F",
            "http://example.com/%1B%5B31m",
            "http://example.com/%C2%85",
            "http://example.com/%E2%80%A8",
            "http://example.com/%C0%8A",
            "http://exa%0Ample.com/",
            "http://exa%25mple.com/",
            "http://[::1%25eth0]/",
            "http://[::1/",
            "http://[nope]/",
            "http://1.2.3.4.5/",
            "http://999.1.1.1/",
            "http://1.2.3.256/",
            "http://4294967296/",
            "http://0x100000000/",
            "http://example.123/",
            "http://08.1.1.1/",
            "http://./",
            "http://a../",
            "http://.a/",
            "http://a/<script>",
            "http://a/{x}",
            "http://a/x|y",
            "http://a/`",
            "http://a/\\x",
            "http://a\"b/",
            "javascript:alert(1)",
            long.as_str(),
        ];
        for bad in table {
            assert_eq!(parse_endpoint(bad), Err(BadEndpoint), "endpoint {bad:?}");
            assert_eq!(
                parse(&format!("id=1&endpoint={bad}")),
                Err(BadEndpoint),
                "query with endpoint {bad:?}"
            );
        }
        assert_eq!(
            parse("id=1&endpoint=http://a/&endpoint=http://b/"),
            Err(DuplicateEndpoint)
        );
        assert_eq!(parse("id=1&endpoint="), Err(BadEndpoint));
        assert_eq!(parse("id=1&endpoint"), Err(BadEndpoint));
    }

    #[test]
    fn domain_keys_group_by_registrable_domain_and_address_prefix() {
        let key = |url: &str| {
            let mut buf = EndpointBuf::new();
            Endpoint::parse(url, &mut buf).unwrap().domain_key()
        };
        let same = [
            ("http://a.example.com/", "https://b.c.EXAMPLE.com:8443/x"),
            ("http://x.example.co.uk/", "http://example.co.uk/"),
            ("http://127.0.0.2/", "http://127.0.0.3:9/"),
            ("http://[::ffff:127.0.0.9]/", "http://127.0.0.200/"),
            (
                "http://[2001:db8:1:2::1]/",
                "http://[2001:db8:1:2:ffff::9]/",
            ),
            ("http://example.com./", "http://www.example.com/"),
        ];
        for (a, b) in same {
            assert_eq!(key(a), key(b), "{a} and {b}");
        }
        let different = [
            ("http://a.example.com/", "http://a.example.org/"),
            ("http://a.example.co.uk/", "http://b.other.co.uk/"),
            ("http://127.0.0.2/", "http://127.1.0.1/"),
            ("http://[2001:db8:1:2::1]/", "http://[2001:db8:1:3::1]/"),
        ];
        for (a, b) in different {
            assert_ne!(key(a), key(b), "{a} and {b}");
        }
        // The fleet counts by the site's text: it groups exactly as the key does.
        let site = |url: &str| {
            let mut buf = EndpointBuf::new();
            Endpoint::parse(url, &mut buf).unwrap().site().to_string()
        };
        for (a, b) in same {
            assert_eq!(site(a), site(b), "{a} and {b}");
        }
        for (a, b) in different {
            assert_ne!(site(a), site(b), "{a} and {b}");
        }
        assert_eq!(site("http://[::ffff:127.0.0.9]:8/x"), "127.0.0.0/24");
        assert_eq!(site("http://[2001:db8:1:2::1]/"), "2001:db8:1:2::/64");
        assert_eq!(site("https://hooks.a.example.co.uk/"), "example.co.uk");
    }
}
