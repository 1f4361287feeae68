//! The CSRF check: OWASP's Fetch Metadata and Origin checks for writes that carry the
//! cookie's token, and the web [`Origin`] they compare.

use http::header::{HOST, ORIGIN, REFERER};
use http::{Method, Request};

use crate::token::{TokenFinder, TokenLocation};

/// OWASP's Fetch Metadata and Origin checks, for unsafe methods whose token is the
/// cookie's (the one a browser attaches on its own). Refused: `Sec-Fetch-Site: cross-site`;
/// an `Origin` neither the request's own (by `Host`) nor trusted; `Origin: null` unless
/// Fetch Metadata says same-origin (a page of ours with `Referrer-Policy: no-referrer`);
/// without `Origin`, a `Referer` of another site. A trusted origin passes even cross-site.
/// A request with none of these headers (not a browser) passes, as does a bearer token
/// (which a browser never attaches by itself) or no token.
pub(crate) fn is_cross_site_write<B>(
    finder: &TokenFinder,
    trusted: &[Origin],
    request: &Request<B>,
) -> bool {
    if is_safe(request.method()) {
        return false;
    }
    let headers = request.headers();
    if !matches!(finder.find_raw(headers), Some((_, TokenLocation::Cookie))) {
        return false;
    }
    // HTTP/1.1 names the host in `Host`; HTTP/2 in `:authority`, which lands in the URI.
    let host = match headers.get(HOST) {
        Some(host) => host.to_str().ok(),
        None => request.uri().authority().map(|a| a.as_str()),
    };
    let is_ours = |origin: &Origin| {
        trusted.contains(origin) || host.is_some_and(|host| origin.has_authority(host))
    };
    let origin = headers
        .get(ORIGIN)
        .map(|o| o.to_str().ok().and_then(Origin::parse));
    // A trusted origin may be another site of yours: trusted whatever Fetch Metadata says.
    if let Some(Some(origin)) = &origin {
        if trusted.contains(origin) {
            return false;
        }
    }
    // Set by the browser, never by a page: what it says about the site is the truth.
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let said = |site: &str| fetch_site.is_some_and(|s| s.eq_ignore_ascii_case(site));
    if said("cross-site") {
        return true;
    }
    match origin {
        Some(Some(origin)) => !is_ours(&origin),
        // `null` (a sandboxed frame, a privacy redirect, a no-referrer page) or garbage:
        // not an origin we know, unless the browser vouches that the page is ours.
        Some(None) => !said("same-origin"),
        // No `Origin` (an older browser): the page that sent it, if named, must be ours.
        None => headers.get(REFERER).is_some_and(|referer| {
            !referer
                .to_str()
                .ok()
                .and_then(|referer| reqwest::Url::parse(referer).ok())
                .and_then(|page| Origin::parse(&page.origin().ascii_serialization()))
                .is_some_and(|origin| is_ours(&origin))
        }),
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A web origin, normalised: lowercase scheme and host, default port left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    /// `host[:port]`, the port only when not the scheme's default.
    authority: String,
}

impl Origin {
    /// `scheme://host[:port]` and nothing else (no path, userinfo, query); `None` otherwise.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => "80",
            "https" => "443",
            _ => return None,
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        let authority = rest.to_ascii_lowercase();
        let authority = match authority.rsplit_once(':') {
            // Not the inside of an IPv6 literal: a port.
            Some((host, port)) if !port.contains(']') => {
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                if port == default_port {
                    host.to_owned()
                } else {
                    authority.clone()
                }
            }
            _ => authority,
        };
        Some(Origin { scheme, authority })
    }

    /// Whether `host` (a `Host` header) names this origin's host and port. The scheme is not
    /// in `Host`: behind a TLS terminator, `https://app` and a `Host: app` are the same site.
    fn has_authority(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let host = host
            .strip_suffix(":80")
            .filter(|_| self.scheme == "http")
            .or_else(|| host.strip_suffix(":443").filter(|_| self.scheme == "https"))
            .unwrap_or(&host);
        host == self.authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_and_strict() {
        let o = |t: &str| Origin::parse(t);
        assert_eq!(o("HTTPS://App.Example:443"), o("https://app.example"));
        assert_ne!(o("https://app.example:8443"), o("https://app.example"));
        assert_ne!(o("http://app.example"), o("https://app.example"));
        for bad in [
            "null",
            "app.example",
            "ftp://app.example",
            "https://app.example/",
            "https://u@app.example",
            "https://app.example:x",
            "https://",
        ] {
            assert_eq!(o(bad), None, "{bad}");
        }
        let origin = o("https://app.example").unwrap();
        assert!(origin.has_authority("app.example"));
        assert!(origin.has_authority("APP.example:443"));
        assert!(!origin.has_authority("app.example:8443"));
        assert!(!origin.has_authority("evil.example"));
        let v6 = o("http://[::1]:3000").unwrap();
        assert!(v6.has_authority("[::1]:3000"));
    }

    #[test]
    fn csrf_knows_the_own_origin_by_host_or_by_authority() {
        let finder = TokenFinder::new("auth", &[TokenLocation::Cookie]);
        let post = |uri: &str, host: Option<&str>, origin: &str| {
            let mut request = Request::post(uri)
                .header("cookie", "auth=a.b.c")
                .header(ORIGIN, origin);
            if let Some(host) = host {
                request = request.header(HOST, host);
            }
            is_cross_site_write(&finder, &[], &request.body(()).unwrap())
        };
        assert!(!post("/w", Some("app.example"), "https://app.example"));
        assert!(post("/w", Some("app.example"), "https://evil.example"));
        // HTTP/2: no `Host`, the authority is in the URI.
        assert!(!post("https://app.example/w", None, "https://app.example"));
        assert!(post("https://app.example/w", None, "https://evil.example"));
        // Neither: nothing to compare with, so only trusted origins pass.
        assert!(post("/w", None, "https://app.example"));
    }
}
