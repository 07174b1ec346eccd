//! Comma-separated flag values: the one parser (`comma_separated`) and the list types some
//! settings are made of. Here rather than in `config` or `callback`, so that both can use
//! them without importing each other.

use std::str::FromStr;

use ipnet::IpNet;
use ureq::http::Uri;

/// The items of a comma-separated flag value (blanks around items and empty items ignored),
/// each parsed by `item`; the first failure is the error.
pub fn comma_separated<T>(
    value: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(item)
        .collect()
}

/// A comma-separated list of CIDRs; empty means none.
#[derive(Debug, Clone, Default)]
pub struct CidrList(pub Vec<IpNet>);

impl FromStr for CidrList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_separated(s, |part| {
            part.parse::<IpNet>()
                .map_err(|_| format!("'{part}' is not a CIDR such as 127.0.0.0/8"))
        })
        .map(CidrList)
    }
}

/// `--callback-hosts`: the host names callbacks may go to — exact names, or `*.suffix` for
/// any name under a domain (not the domain itself). Empty allows every host; the address
/// guard applies either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostList(Vec<String>);

impl FromStr for HostList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_separated(s, |part| {
            let name = part.strip_prefix("*.").unwrap_or(part);
            let valid = !name.is_empty()
                && !name.contains('*')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if valid {
                Ok(part.trim_end_matches('.').to_ascii_lowercase())
            } else {
                Err(format!("'{part}' is not a host name or *.domain pattern"))
            }
        })
        .map(HostList)
    }
}

impl HostList {
    /// Whether callbacks may go to `host` (a URL's host, any case, maybe with a final dot).
    pub fn permits(&self, host: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        // Compared without allocating: this runs on the accept path.
        let host = host.trim_end_matches('.').as_bytes();
        self.0
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => {
                    let domain = domain.as_bytes();
                    host.len() > domain.len() + 1
                        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                        && host[host.len() - domain.len() - 1] == b'.'
                }
                None => host.eq_ignore_ascii_case(pattern.as_bytes()),
            })
    }

    /// Whether callbacks may go to `endpoint` (an absolute URL).
    pub fn permits_url(&self, endpoint: &str) -> bool {
        self.0.is_empty()
            || endpoint
                .parse::<Uri>()
                .ok()
                .and_then(|uri| uri.host().map(|h| self.permits(h)))
                .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_list_matches_names_and_subdomains_only() {
        let hosts: HostList = "hooks.example.com, *.partner.io".parse().unwrap();
        assert!(hosts.permits("hooks.example.com"));
        assert!(hosts.permits("HOOKS.Example.com."));
        assert!(hosts.permits("a.partner.io"));
        assert!(hosts.permits("b.a.partner.io"));
        assert!(!hosts.permits("partner.io"));
        assert!(!hosts.permits("evilpartner.io"));
        assert!(!hosts.permits("example.com"));
        assert!(!hosts.permits("hooks.example.com.evil.net"));
        assert!(hosts.permits_url("https://x.partner.io:8443/h?q=1"));
        assert!(!hosts.permits_url("http://127.0.0.1/h"));
        assert!(HostList::default().permits_url("http://anything/"));
        assert!("a b".parse::<HostList>().is_err());
        assert!("*.".parse::<HostList>().is_err());
        assert!("x.*.com".parse::<HostList>().is_err());
    }

    #[test]
    fn items_are_trimmed_and_blanks_skipped() {
        let items = comma_separated(" a, ,b ,,", |part| Ok::<_, String>(part.to_string()));
        assert_eq!(items.unwrap(), ["a", "b"]);
        assert!(
            comma_separated("", |_| Err::<(), _>("never".to_string()))
                .unwrap()
                .is_empty()
        );
        let cidrs: CidrList = "127.0.0.0/8, ::1/128".parse().unwrap();
        assert_eq!(cidrs.0.len(), 2);
        assert_eq!(
            "10.0.0.0/8,nope".parse::<CidrList>().unwrap_err(),
            "'nope' is not a CIDR such as 127.0.0.0/8"
        );
    }
}
