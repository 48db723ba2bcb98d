//! Who a request comes from, for the limits on sign-ins and codes: the TCP peer,
//! which a client cannot forge; or, when the peer is a reverse proxy the operator
//! trusts (`TOKENGATE_TRUSTED_PROXIES`), the address that proxy put in
//! `X-Forwarded-For`. IPv6 clients count by their /64, the block one machine
//! usually holds, so rotating addresses inside it does not reset a limit.

use actix_web::HttpRequest;
use ipnet::IpNet;
use std::net::IpAddr;

/// Parses `10.0.0.0/8,172.16.0.0/12,127.0.0.1`: networks or single addresses.
pub fn parse_networks(raw: &str) -> Result<Vec<IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an IP address or network"))
        })
        .collect()
}

/// The client of `req`, as the limits count it.
pub fn client_address(req: &HttpRequest, trusted: &[IpNet]) -> String {
    // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`.
    let Some(peer) = req.peer_addr().map(|a| a.ip().to_canonical()) else {
        return "unknown".into();
    };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        if req.headers().contains_key("x-forwarded-for") {
            warn_untrusted_once(peer);
        }
        return key(peer);
    }
    // Each proxy appends the address it got the request from; only the part the
    // trusted proxies wrote can be believed, so the client is the rightmost entry
    // that is not one of them. Anything unreadable ends the search at the proxy.
    let entries: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        match parse_entry(entry) {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return key(ip),
            None => break,
        }
    }
    key(peer)
}

/// An address as proxies write it: `a.b.c.d`, `a.b.c.d:port`, `v6` or `[v6]:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// Once per process: a proxy in front that is not trusted makes every user count as
/// that proxy, which an operator would otherwise never notice.
fn warn_untrusted_once(peer: IpAddr) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(%peer, "a request came with X-Forwarded-For from an address not in TOKENGATE_TRUSTED_PROXIES: the sign-in and code limits count that address, not the client's; list your reverse proxy's address there (the address tokengate sees it as)");
    }
}

/// Networks so wide that they likely hold clients, not just proxies: a client inside
/// one could name any address it likes.
pub fn wide_networks(nets: &[IpNet]) -> Vec<IpNet> {
    nets.iter()
        .filter(|n| match n {
            IpNet::V4(v4) => v4.prefix_len() < 24,
            IpNet::V6(v6) => v6.prefix_len() < 64,
        })
        .copied()
        .collect()
}

fn key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => IpNet::new(IpAddr::V6(v6), 64)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn from(peer: &str, forwarded: &[&str], trusted: &str) -> String {
        let mut req = TestRequest::default().peer_addr(
            peer.parse()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
        );
        for f in forwarded {
            req = req.append_header(("x-forwarded-for", *f));
        }
        client_address(
            &req.to_http_request(),
            &parse_networks(trusted).unwrap_or_default(),
        )
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        // Not a trusted proxy: its header is ignored.
        assert_eq!(
            from("203.0.113.7:5000", &["10.9.9.9"], "10.0.0.0/8"),
            "203.0.113.7"
        );
        // A trusted proxy: the rightmost address it did not add itself.
        assert_eq!(
            from(
                "10.0.0.2:5000",
                &["198.51.100.1, 203.0.113.7"],
                "10.0.0.0/8"
            ),
            "203.0.113.7"
        );
        assert_eq!(
            from("10.0.0.2:5000", &["203.0.113.7", "10.0.0.5"], "10.0.0.0/8"),
            "203.0.113.7"
        );
        // A client that forges the header behind a trusted proxy only adds entries
        // to the left of its own address.
        assert_eq!(
            from("10.0.0.2:5000", &["1.1.1.1, 203.0.113.9"], "10.0.0.0/8"),
            "203.0.113.9"
        );
        // Ports, as some proxies write them.
        assert_eq!(
            from("10.0.0.2:5000", &["203.0.113.5:1234"], "10.0.0.0/8"),
            "203.0.113.5"
        );
        assert_eq!(
            from("10.0.0.2:5000", &["[2001:db8::5]:443"], "10.0.0.0/8"),
            "2001:db8::/64"
        );
        // A proxy reached over a dual-stack listener.
        assert_eq!(
            from("[::ffff:10.0.0.2]:5000", &["203.0.113.5"], "10.0.0.2"),
            "203.0.113.5"
        );
        // Nothing readable: the proxy itself.
        assert_eq!(
            from("10.0.0.2:5000", &["garbage"], "10.0.0.0/8"),
            "10.0.0.2"
        );
        assert_eq!(from("10.0.0.2:5000", &[], "10.0.0.0/8"), "10.0.0.2");
        // IPv6 clients by their /64.
        assert_eq!(
            from("[2001:db8:1:2:aaaa::1]:5000", &[], ""),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            from("[2001:db8:1:2:bbbb::9]:5000", &[], ""),
            "2001:db8:1:2::/64"
        );
        assert_eq!(from("[::ffff:198.51.100.4]:5000", &[], ""), "198.51.100.4");
    }

    #[test]
    fn networks_and_single_addresses() {
        assert_eq!(
            parse_networks("10.0.0.0/8, 127.0.0.1,::1").map(|v| v.len()),
            Ok(3)
        );
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("proxy.local").is_err());
        assert_eq!(parse_networks("").map(|v| v.len()), Ok(0));
    }
}
