//! The SSRF guard: which resolved addresses a callback may connect to.
//!
//! A delivery's host is looked up once ([`Guard::resolve`]), keeping only permitted addresses;
//! its attempts then connect to exactly those ([`pin`]), and the client's resolver checks them
//! again, so a name that resolves differently later (DNS rebinding) cannot slip past the
//! check. Only public unicast addresses pass, unless an operator allows a CIDR.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ipnet::IpNet;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Decides which addresses callbacks may reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Operator-allowed networks (`--callback-allow`), reachable even if not public.
    allow: Vec<IpNet>,
}

impl Guard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Whether a callback may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let allowed = |ip: IpAddr| self.allow.iter().any(|net| net.contains(&ip));
        if allowed(ip) {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => !blocked_v4(v4),
            IpAddr::V6(v6) => match embedded_v4(v6) {
                // An IPv6 form carrying an IPv4 address is judged by that address.
                Some(v4) => allowed(IpAddr::V4(v4)) || (!blocked_v4(v4) && !blocked_v6(v6)),
                None => !blocked_v6(v6),
            },
        }
    }
}

/// Why a host gave no address to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// The look-up failed or found nothing.
    NotFound,
    /// Every address it found is refused.
    Blocked,
}

/// The most addresses kept per host (what the client tries in turn).
const MAX_ADDRS: usize = 16;

impl Guard {
    /// Looks `host_port` (`host:port`, IPv6 in brackets) up and keeps the permitted
    /// addresses, in the resolver's order. Blocks the calling thread for the look-up, bounded
    /// by the system resolver's own timeouts.
    pub fn resolve(&self, host_port: &str) -> Result<Vec<SocketAddr>, Unresolved> {
        let found: Vec<SocketAddr> = host_port
            .to_socket_addrs()
            .map_err(|_| Unresolved::NotFound)?
            .take(MAX_ADDRS)
            .collect();
        if found.is_empty() {
            return Err(Unresolved::NotFound);
        }
        let permitted: Vec<SocketAddr> =
            found.into_iter().filter(|a| self.permits(a.ip())).collect();
        if permitted.is_empty() {
            return Err(Unresolved::Blocked);
        }
        Ok(permitted)
    }
}

thread_local! {
    /// The addresses this thread's next requests must connect to, set by [`pin`].
    static PINNED: RefCell<Option<Vec<SocketAddr>>> = const { RefCell::new(None) };
}

/// Makes this thread's requests connect to `addrs` (instead of looking the host up again)
/// until the returned value is dropped.
pub fn pin(addrs: &[SocketAddr]) -> Pinned {
    PINNED.with(|p| *p.borrow_mut() = Some(addrs.to_vec()));
    Pinned(())
}

/// Unpins on drop (see [`pin`]).
#[must_use = "dropping it unpins at once"]
pub struct Pinned(());

impl Drop for Pinned {
    fn drop(&mut self) {
        PINNED.with(|p| p.borrow_mut().take());
    }
}

/// Loopback, private, link-local, CGNAT, `0.0.0.0/8`, multicast, broadcast, reserved,
/// benchmarking and documentation ranges.
fn blocked_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // 0.0.0.0/8 "this network"
        || ip.is_loopback()                  // 127.0.0.0/8
        || ip.is_private()                   // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()                // 169.254/16 (cloud metadata)
        || (a == 100 && b & 0xc0 == 64)      // 100.64/10 CGNAT
        || (a == 192 && b == 0 && c == 0)    // 192.0.0.0/24 IETF protocol assignments
        || (a == 192 && b == 88 && c == 99)  // 192.88.99.0/24 6to4 relay anycast
        || (a == 198 && b & 0xfe == 18)      // 198.18/15 benchmarking
        || ip.is_documentation()             // 192.0.2/24, 198.51.100/24, 203.0.113/24
        || ip.is_multicast()                 // 224/4
        || a >= 240 // 240/4 reserved, 255.255.255.255 broadcast
}

/// Unspecified, loopback, ULA, link-local, site-local, multicast, discard, documentation.
fn blocked_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()                              // ff00::/8
        || s[0] & 0xfe00 == 0xfc00                        // fc00::/7 ULA
        || s[0] & 0xffc0 == 0xfe80                        // fe80::/10 link-local
        || s[0] & 0xffc0 == 0xfec0                        // fec0::/10 site-local
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])       // 100::/64 discard
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48 local NAT64
        || (s[0] == 0x2001 && s[1] == 0x0db8)             // 2001:db8::/32 documentation
        || (s[0] == 0x3fff && s[1] & 0xf000 == 0) // 3fff::/20 documentation
}

/// The IPv4 address inside IPv4-mapped, IPv4-compatible, NAT64, 6to4 and Teredo addresses.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(u32::from(hi) << 16 | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(v4(hi, lo)), // ::ffff:0:0/96
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),      // ::/96 (incl. :: and ::1)
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)), // 64:ff9b::/96
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),            // 2002::/16 6to4
        [0x2001, 0, .., hi, lo] => Some(v4(!hi, !lo)),       // 2001::/32 Teredo client
        _ => None,
    }
}

/// Marks an `io::Error` raised because every resolved address was refused.
#[derive(Debug)]
pub struct Blocked;

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("address refused by the callback SSRF guard")
    }
}

impl std::error::Error for Blocked {}

/// Whether a client error is the guard's refusal.
pub fn is_blocked(err: &ureq::Error) -> bool {
    matches!(err, ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<Blocked>()))
}

/// The client's resolver, keeping only the addresses the guard permits.
#[derive(Debug)]
pub struct GuardedResolver {
    inner: DefaultResolver,
    guard: Arc<Guard>,
}

impl GuardedResolver {
    pub fn new(guard: Arc<Guard>) -> Self {
        Self {
            inner: DefaultResolver::default(),
            guard,
        }
    }
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut permitted = self.empty();
        let pinned = PINNED.with(|p| p.borrow().clone());
        match pinned {
            // Checked again: pinned addresses come from a look-up made by [`Guard::resolve`],
            // but nothing else may reach the connector unchecked.
            Some(addrs) => {
                for addr in addrs.iter().filter(|a| self.guard.permits(a.ip())) {
                    if permitted.try_push(*addr).is_err() {
                        break;
                    }
                }
            }
            None => {
                let resolved = self.inner.resolve(uri, config, timeout)?;
                for addr in resolved.iter().filter(|a| self.guard.permits(a.ip())) {
                    permitted.push(*addr);
                }
            }
        }
        if permitted.is_empty() {
            return Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                Blocked,
            )));
        }
        Ok(permitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permits(guard: &Guard, ip: &str) -> bool {
        guard.permits(ip.parse().unwrap())
    }

    #[test]
    fn refuses_internal_addresses() {
        let guard = Guard::default();
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.1.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
            "192.88.99.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "64:ff9b:1::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo for 127.0.0.1
        ];
        for ip in refused {
            assert!(!permits(&guard, ip), "{ip} must be refused");
        }
    }

    #[test]
    fn permits_public_addresses() {
        let guard = Guard::default();
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(permits(&guard, ip), "{ip} must be permitted");
        }
    }

    #[test]
    fn resolve_keeps_permitted_addresses_only() {
        let closed = Guard::default();
        assert_eq!(closed.resolve("127.0.0.1:80"), Err(Unresolved::Blocked));
        assert_eq!(
            closed.resolve("[::ffff:127.0.0.1]:80"),
            Err(Unresolved::Blocked)
        );
        assert_eq!(
            closed.resolve("93.184.216.34:443"),
            Ok(vec!["93.184.216.34:443".parse().unwrap()])
        );
        let open = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            open.resolve("127.0.0.9:8080"),
            Ok(vec!["127.0.0.9:8080".parse().unwrap()])
        );
        assert_eq!(open.resolve("no port"), Err(Unresolved::NotFound));
    }

    #[test]
    fn allow_list_opens_chosen_networks_only() {
        let guard = Guard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(permits(&guard, "127.0.0.1"));
        assert!(permits(&guard, "::ffff:127.0.0.1"));
        assert!(permits(&guard, "fd00::5"));
        assert!(!permits(&guard, "10.0.0.1"));
        assert!(!permits(&guard, "169.254.169.254"));
        assert!(!permits(&guard, "::1"));
    }
}
