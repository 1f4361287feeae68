//! The CSRF check: OWASP's Fetch Metadata and Origin checks for writes that carry the
//! cookie's token. A WebSocket handshake counts as a write: it is a `GET`, but it opens a
//! channel that acts for the user, and id6's cookie (no `SameSite`) rides on a cross-site
//! handshake too (cross-site WebSocket hijacking).

use http::header::{CONNECTION, HOST, ORIGIN, REFERER, UPGRADE};
use http::{HeaderMap, Method, Uri};

use crate::config::Origin;
use crate::token::{TokenFinder, TokenLocation};

/// OWASP's Fetch Metadata and Origin checks, for unsafe methods and WebSocket handshakes
/// whose token is the cookie's (the one a browser attaches on its own). Refused:
/// `Sec-Fetch-Site: cross-site`; an `Origin` neither the request's own (by `Host`) nor trusted; `Origin: null` unless
/// Fetch Metadata says same-origin (a page of ours with `Referrer-Policy: no-referrer`);
/// without `Origin`, a `Referer` of another site. A trusted origin passes even cross-site.
/// A request with none of these headers (not a browser) passes, as does a bearer token
/// (which a browser never attaches by itself) or no token.
pub(crate) fn is_cross_site(
    finder: &TokenFinder,
    trusted: &[Origin],
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> bool {
    if is_safe(method) && !is_websocket_upgrade(headers) {
        return false;
    }
    if !matches!(finder.find_raw(headers), Some((_, TokenLocation::Cookie))) {
        return false;
    }
    // HTTP/1.1 names the host in `Host`; HTTP/2 in `:authority`, which lands in the URI.
    let host = match headers.get(HOST) {
        Some(host) => host.to_str().ok(),
        None => uri.authority().map(|a| a.as_str()),
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

/// A WebSocket opening handshake (`Connection: upgrade`, `Upgrade: websocket`).
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let lists = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    };
    lists(UPGRADE, "websocket") && lists(CONNECTION, "upgrade")
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn check(finder: &TokenFinder, trusted: &[Origin], request: http::request::Builder) -> bool {
        let (parts, ()) = request.body(()).unwrap().into_parts();
        is_cross_site(finder, trusted, &parts.method, &parts.uri, &parts.headers)
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
            check(&finder, &[], request)
        };
        assert!(!post("/w", Some("app.example"), "https://app.example"));
        assert!(post("/w", Some("app.example"), "https://evil.example"));
        // HTTP/2: no `Host`, the authority is in the URI.
        assert!(!post("https://app.example/w", None, "https://app.example"));
        assert!(post("https://app.example/w", None, "https://evil.example"));
        // Neither: nothing to compare with, so only trusted origins pass.
        assert!(post("/w", None, "https://app.example"));
    }

    #[test]
    fn a_websocket_handshake_with_the_cookie_is_checked_as_a_write() {
        let finder = TokenFinder::new("auth", &[TokenLocation::Cookie]);
        let trusted = [Origin::parse("https://front.example").unwrap()];
        let get = |origin: &str, upgrade: bool, cookie: &str| {
            let mut request = Request::get("/ws")
                .header(HOST, "app.example")
                .header("cookie", cookie)
                .header(ORIGIN, origin);
            if upgrade {
                request = request
                    .header(CONNECTION, "keep-alive, Upgrade")
                    .header(UPGRADE, "websocket");
            }
            check(&finder, &trusted, request)
        };
        assert!(get("https://evil.example", true, "auth=a.b.c"));
        assert!(
            !get("https://app.example", true, "auth=a.b.c"),
            "own origin"
        );
        assert!(!get("https://front.example", true, "auth=a.b.c"), "trusted");
        assert!(
            !get("https://evil.example", false, "auth=a.b.c"),
            "a plain GET"
        );
        assert!(
            !get("https://evil.example", true, "theme=dark"),
            "no cookie token"
        );
    }
}
