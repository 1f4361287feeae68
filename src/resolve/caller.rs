//! Who is calling, for the miss budget: the connection's address (through trusted proxies),
//! or the user's own key.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::{Extensions, HeaderMap};

use crate::config::CallerKey;

/// One caller, as the miss budget counts them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    /// An address; IPv6 by its /64, which one host usually holds whole.
    Address(IpAddr),
    /// Named by [`Id6Builder::caller_key`](crate::Id6Builder::caller_key), or a proxy's
    /// entry that is no address (`unknown`); at most 64 bytes.
    Named(Box<str>),
}

/// Characters of a caller's name kept as its key.
const MAX_NAME: usize = 64;

/// Finds a request's caller.
#[derive(Clone, Debug)]
pub(crate) struct CallerFinder {
    trusted_proxies: usize,
    key: Option<CallerKey>,
}

impl CallerFinder {
    pub(crate) fn new(trusted_proxies: usize, key: Option<CallerKey>) -> Self {
        CallerFinder {
            trusted_proxies,
            key,
        }
    }

    /// The caller of a request, when it can be told: the user's key first, then the address
    /// the outermost trusted proxy saw (or the connection's).
    pub(crate) fn find(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<Caller> {
        if let Some(key) = &self.key {
            if let Some(name) = key.name(headers, extensions) {
                // A key is kept for a window: bounded, whatever a client put in it.
                let name: String = name.chars().take(MAX_NAME).collect();
                return Some(Caller::Named(name.into()));
            }
        }
        let peer = peer_address(extensions);
        if self.trusted_proxies == 0 {
            return peer.map(Caller::Address);
        }
        // Nearest first: the connection, then the entries from the right. Each trusted proxy
        // vouches for the entry it appended, the outermost one for the caller's; past it,
        // nobody vouches. With fewer entries than proxies, the request skipped one: its
        // furthest entry is all there is. Only the entry chosen is parsed, and nothing left of
        // it is read at all.
        forwarded_for(headers, self.trusted_proxies)
            .last()
            .map(parse_entry)
            .or(peer.map(Caller::Address))
    }
}

/// The connection's address, as the server put it in the request's extensions.
fn peer_address(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = extensions.get::<tonic::transport::server::TcpConnectInfo>() {
        if let Some(addr) = info.remote_addr() {
            return Some(addr.ip());
        }
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

/// The `wanted` nearest `X-Forwarded-For` entries (fewer if the header has fewer): the last
/// header's from right to left, then the header before. Only that header: were `Forwarded`
/// read too, a client could write whichever one the proxies do not, and pick its own
/// identity. Lazy and borrowed, so that a client's long header costs only what is taken from
/// its right end; split on bytes, so that one entry a client filled with non-ASCII bytes costs
/// only that entry, never the line its proxy appended to.
fn forwarded_for(headers: &HeaderMap, wanted: usize) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| entries_from_right(value.as_bytes()))
        // Proxies append addresses: an entry longer than any was written by the client, and so
        // was everything left of it, which is not read.
        .scan(true, |reading, (entry, whole)| {
            std::mem::replace(reading, whole).then_some(entry)
        })
        // Nor do proxies append empty entries: a header of commas is not read past a few.
        .take(wanted + MAX_EMPTY_ENTRIES)
        .map(<[u8]>::trim_ascii)
        .filter(|entry| !entry.is_empty())
        .take(wanted)
}

/// One header value's comma-separated entries, from the right, each with whether it is whole:
/// of an entry longer than [`MAX_ENTRY`], only its last `MAX_ENTRY` bytes are looked at.
fn entries_from_right(value: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut end = Some(value.len());
    std::iter::from_fn(move || {
        let stop = end.take()?;
        let from = stop.saturating_sub(MAX_ENTRY);
        match memchr::memrchr(b',', &value[from..stop]) {
            Some(comma) => {
                end = Some(from + comma);
                Some((&value[from + comma + 1..stop], true))
            }
            None => Some((&value[from..stop], from == 0)),
        }
    })
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The longest `X-Forwarded-For` entry read whole: an address with a port, even an IPv6 one
/// with a zone, takes under 64 bytes.
const MAX_ENTRY: usize = 256;

/// Empty `X-Forwarded-For` entries (`a,,b`) skipped before the rest is left unread.
const MAX_EMPTY_ENTRIES: usize = 16;

/// An entry as a caller: an address (with or without a port, IPv6 bracketed or not), else
/// the entry's text (at most 64 bytes of it).
fn parse_entry(entry: &[u8]) -> Caller {
    let text = String::from_utf8_lossy(&entry[..entry.len().min(MAX_NAME)]);
    let entry = text.as_ref();
    let address = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .or_else(|| {
            // `[v6]` without a port, or `v4:port`.
            let bare = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']'));
            let v4 = entry.rsplit_once(':').map(|(host, _)| host);
            bare.or(v4)?.parse().ok()
        });
    match address {
        Some(ip) => Caller::Address(ip),
        None => Caller::Named(entry.into()),
    }
}

impl Caller {
    /// The key the budget counts under: an IPv6 address by its /64 (a host can pick any
    /// address in it), an IPv4-mapped one as IPv4.
    pub(crate) fn budget_key(self) -> Caller {
        match self {
            Caller::Address(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Caller::Address(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Caller::Address(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_peer(peer: &str) -> Extensions {
        let mut extensions = Extensions::new();
        extensions.insert(peer.parse::<SocketAddr>().unwrap());
        extensions
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> Option<Caller> {
        Some(Caller::Address(text.parse().unwrap()))
    }

    #[test]
    fn the_connection_is_the_caller_without_proxies() {
        let finder = CallerFinder::new(0, None);
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            finder.find(&spoofed, &with_peer("10.0.0.7:5000")),
            ip("10.0.0.7")
        );
        assert_eq!(finder.find(&spoofed, &Extensions::new()), None);
    }

    #[test]
    fn trusted_proxies_vouch_for_one_entry_each() {
        let peer = with_peer("10.0.0.1:443");
        // The client wrote `6.6.6.6` itself; our one proxy appended the address it saw.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9")]);
        assert_eq!(
            CallerFinder::new(1, None).find(&h, &peer),
            ip("203.0.113.9")
        );
        assert_eq!(CallerFinder::new(2, None).find(&h, &peer), ip("6.6.6.6"));
        // Fewer entries than proxies: the furthest there is.
        assert_eq!(CallerFinder::new(5, None).find(&h, &peer), ip("6.6.6.6"));
        // One entry a client filled with non-ASCII bytes costs that entry only.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap(),
        );
        assert_eq!(
            CallerFinder::new(1, None).find(&h, &peer),
            ip("203.0.113.9")
        );
        // `Forwarded` is never read: a client could add the header its proxies do not write.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        assert_eq!(
            CallerFinder::new(1, None).find(&h, &peer),
            ip("203.0.113.9")
        );
        let h = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(CallerFinder::new(1, None).find(&h, &peer), ip("10.0.0.1"));
        // Split over two headers, with ports and brackets.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "[2001:db8::1]:4711"),
        ]);
        assert_eq!(
            CallerFinder::new(1, None).find(&h, &peer),
            ip("2001:db8::1")
        );
        let h = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(
            CallerFinder::new(1, None).find(&h, &peer),
            Some(Caller::Named("unknown".into()))
        );
        // No connection address: the nearest entry is the first trusted proxy's.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4:8080")]);
        assert_eq!(
            CallerFinder::new(1, None).find(&h, &Extensions::new()),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn entries_are_read_from_the_right_without_copying() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 7.7.7.7"),
            ("x-forwarded-for", "198.51.100.4,, 203.0.113.9 "),
        ]);
        let values: Vec<&[u8]> = h
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let mut seen = Vec::new();
        for entry in forwarded_for(&h, 16) {
            // Borrowed from the header, never copied: what is not read costs nothing.
            assert!(
                values
                    .iter()
                    .any(|v| v.as_ptr_range().contains(&entry.as_ptr())),
                "entry {:?} was copied out of the header",
                String::from_utf8_lossy(entry)
            );
            seen.push(String::from_utf8_lossy(entry).into_owned());
        }
        // Nearest first: the last header's last entry, then leftwards, then the header before.
        assert_eq!(seen, ["203.0.113.9", "198.51.100.4", "7.7.7.7", "6.6.6.6"]);
    }

    #[test]
    fn a_long_header_gives_the_answer_a_short_one_does() {
        let peer = with_peer("10.0.0.1:443");
        let mut long = "6.6.6.6, ".repeat(100_000);
        long.push_str("198.51.100.4, 203.0.113.9");
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", long.parse().unwrap());
        assert_eq!(
            CallerFinder::new(1, None).find(&h, &peer),
            ip("203.0.113.9")
        );
        assert_eq!(
            CallerFinder::new(2, None).find(&h, &peer),
            ip("198.51.100.4")
        );
        assert_eq!(
            CallerFinder::new(2, None).find(&h, &Extensions::new()),
            ip("198.51.100.4")
        );
        // Where the client's own writing begins (the request skipped a proxy), a header of
        // commas or one huge entry is not read whole: the furthest entry read is the caller.
        let mut h = HeaderMap::new();
        let commas = format!("6.6.6.6{}203.0.113.9", ",".repeat(100_000));
        h.append("x-forwarded-for", commas.parse().unwrap());
        assert_eq!(
            CallerFinder::new(2, None).find(&h, &peer),
            ip("203.0.113.9")
        );
        let mut h = HeaderMap::new();
        let huge = format!("6.6.6.6, {}, 203.0.113.9", "a".repeat(100_000));
        h.append("x-forwarded-for", huge.parse().unwrap());
        assert_eq!(
            CallerFinder::new(2, None).find(&h, &peer),
            Some(Caller::Named("a".repeat(MAX_NAME).into()))
        );
        // A few empty entries are skipped as before.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, , ,198.51.100.4,, 203.0.113.9,")]);
        assert_eq!(
            CallerFinder::new(2, None).find(&h, &peer),
            ip("198.51.100.4")
        );
        assert_eq!(CallerFinder::new(3, None).find(&h, &peer), ip("6.6.6.6"));
    }

    #[test]
    fn a_key_function_names_callers_first() {
        let finder = CallerFinder::new(
            0,
            Some(CallerKey::new(|headers, _| {
                headers
                    .get("x-tenant")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })),
        );
        let peer = with_peer("10.0.0.7:5000");
        assert_eq!(
            finder.find(&headers(&[("x-tenant", "acme")]), &peer),
            Some(Caller::Named("acme".into()))
        );
        assert_eq!(finder.find(&HeaderMap::new(), &peer), ip("10.0.0.7"));
    }

    #[test]
    fn servers_connection_infos_are_read() {
        let finder = CallerFinder::new(0, None);
        let peer: SocketAddr = "192.0.2.5:6000".parse().unwrap();
        #[cfg(feature = "axum")]
        {
            let mut extensions = Extensions::new();
            extensions.insert(axum::extract::ConnectInfo(peer));
            assert_eq!(finder.find(&HeaderMap::new(), &extensions), ip("192.0.2.5"));
        }
        #[cfg(feature = "tonic")]
        {
            let mut extensions = Extensions::new();
            extensions.insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(peer),
            });
            assert_eq!(finder.find(&HeaderMap::new(), &extensions), ip("192.0.2.5"));
        }
        let mut extensions = Extensions::new();
        extensions.insert(peer);
        assert_eq!(finder.find(&HeaderMap::new(), &extensions), ip("192.0.2.5"));
    }

    #[test]
    fn ipv6_callers_count_per_64() {
        let a = ip("2001:db8:1:2:aaaa::1").unwrap().budget_key();
        let b = ip("2001:db8:1:2:bbbb::9").unwrap().budget_key();
        let c = ip("2001:db8:1:3::1").unwrap().budget_key();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ip("::ffff:10.0.0.7").unwrap().budget_key(),
            ip("10.0.0.7").unwrap()
        );
    }
}
