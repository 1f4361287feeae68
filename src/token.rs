//! Finding id6's token in a request, the cache key derived from it, and keeping it out of
//! every `Debug` output.

use std::fmt;

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};
use sha2::{Digest, Sha256};

/// Longest token we forward: id6's JWTs are a few hundred bytes; anything near a header
/// limit is not one.
pub(crate) const MAX_TOKEN_LEN: usize = 4096;

/// What the request's cookies say about id6's token, once checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found<'a> {
    /// No cookie of that name, or an empty one (id6 treats `auth=` as none).
    None,
    /// A value no id6 token can have (bytes outside cookie-octets, or too long).
    Malformed,
    Token(&'a str),
}

/// Where a request may carry id6's token. Whatever the place, id6 receives it as its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenLocation {
    /// id6's cookie (`auth` unless renamed): what browsers and grpc-web send.
    Cookie,
    /// `Authorization: Bearer <jwt>`, which is also gRPC's `authorization` metadata.
    Bearer,
}

/// Finds the token in the configured places, in their order: the first place holding one
/// wins.
#[derive(Clone, Debug)]
pub(crate) struct TokenFinder {
    cookie: CookieName,
    locations: Box<[TokenLocation]>,
}

impl TokenFinder {
    pub(crate) fn new(cookie_name: &str, locations: &[TokenLocation]) -> Self {
        TokenFinder {
            cookie: CookieName::new(cookie_name),
            locations: locations.into(),
        }
    }

    /// The raw token and where it was, unchecked: see [`find_raw`].
    pub(crate) fn find_raw<'a>(&self, headers: &'a HeaderMap) -> Option<(&'a [u8], TokenLocation)> {
        self.locations.iter().find_map(|&location| {
            let raw = match location {
                TokenLocation::Cookie => find_raw(headers, &self.cookie),
                TokenLocation::Bearer => find_bearer(headers),
            }?;
            Some((raw, location))
        })
    }

    /// The checked token: [`find_raw`](Self::find_raw), then [`check`].
    pub(crate) fn find<'a>(&self, headers: &'a HeaderMap) -> Found<'a> {
        self.find_raw(headers)
            .map_or(Found::None, |(raw, _)| check(raw))
    }
}

/// The token of the first `Authorization` header, if it is `Bearer <token>` (scheme in any
/// case).
fn find_bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = trim(rest);
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
fn find<'a>(headers: &'a HeaderMap, name: &str) -> Found<'a> {
    TokenFinder::new(name, &[TokenLocation::Cookie]).find(headers)
}

/// A cookie name with its substring searcher, built once per handle rather than per request.
#[derive(Clone, Debug)]
pub(crate) struct CookieName {
    finder: memchr::memmem::Finder<'static>,
}

impl CookieName {
    pub(crate) fn new(name: &str) -> Self {
        CookieName {
            finder: memchr::memmem::Finder::new(name.as_bytes()).into_owned(),
        }
    }

    fn len(&self) -> usize {
        self.finder.needle().len()
    }
}

/// The raw value of the first cookie named `name` across every `Cookie` header, in order, as
/// id6's cookie parser sees it: the first one wins even when empty (then `None`), and
/// surrounding double quotes are dropped. Not checked: the hit path hashes it as it is, and
/// only a miss pays for [`check`] (a value in the cache passed it when it was stored).
///
/// A hand scan rather than `cookie::Cookie::split_parse`: `memmem` jumps to the name and
/// nothing is allocated; `tests` check it against the `cookie` crate.
pub(crate) fn find_raw<'a>(headers: &'a HeaderMap, name: &CookieName) -> Option<&'a [u8]> {
    for header in headers.get_all(COOKIE) {
        if let Some(value) = find_in(header.as_bytes(), name) {
            let value = match value {
                [b'"', inner @ .., b'"'] => inner,
                _ => value,
            };
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

fn find_in<'a>(header: &'a [u8], name: &CookieName) -> Option<&'a [u8]> {
    // `find` from the last candidate on rather than `find_iter`, whose set-up costs more
    // than the one search a typical header needs (7 ns of 36 measured).
    let mut from = 0;
    while let Some(found) = name.finder.find(&header[from..]) {
        let at = from + found;
        // Past the candidate (an empty name, which the builder refuses, still moves on).
        from = at + name.len().max(1);
        // A cookie's name starts the header or follows `;` and optional white space. A
        // skipped overlapping match cannot be such a start: names hold no `;` nor spaces.
        // Each look around a candidate stops at the first byte that is not white space, and
        // candidates are separated by the name itself: the whole scan is linear, whatever
        // the header's shape (never trim "the rest of the header" per candidate).
        let before = trim_end(&header[..at]);
        if !(before.is_empty() || before.ends_with(b";")) {
            continue;
        }
        let Some(rest) = trim_start(&header[at + name.len()..]).strip_prefix(b"=") else {
            continue;
        };
        let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
        return Some(trim(&rest[..end]));
    }
    None
}

/// A raw value as a token id6 could have issued: cookie-octets only, at most
/// [`MAX_TOKEN_LEN`] bytes.
pub(crate) fn check(value: &[u8]) -> Found<'_> {
    if value.is_empty() {
        return Found::None;
    }
    if value.len() > MAX_TOKEN_LEN || !value.iter().all(|&b| is_cookie_octet(b)) {
        return Found::Malformed;
    }
    // Cookie-octets are ASCII, so this never fails; no `unwrap` on request input all the same.
    std::str::from_utf8(value).map_or(Found::Malformed, Found::Token)
}

fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t')
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(0, |e| e + 1);
    &bytes[..end]
}

fn trim(bytes: &[u8]) -> &[u8] {
    trim_end(trim_start(bytes))
}

/// RFC 6265 `cookie-octet`: visible ASCII but `"`, `,`, `;` and `\`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// How maps and caches keyed by [`TokenKey`] hash it. A key is already a SHA-256 or keyed
/// SipHash-128 output, uniform: foldhash spreads them at a fraction of std's SipHash cost,
/// and its per-process seed keeps a stranger who can compute a key (a SHA-256) from aiming
/// it at a bucket.
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// A map by [`TokenKey`].
pub(crate) type KeyMap<V> = std::collections::HashMap<TokenKey, V, KeyHasher>;

/// A token's cache key, as its resolver's [`Keying`] names it. Never a 64-bit hash: a
/// collision would hand one user's identity to another.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TokenKey(pub(crate) [u8; 32]);

impl TokenKey {
    /// SHA-256: the key every instance agrees on.
    pub(crate) fn of(token: impl AsRef<[u8]>) -> Self {
        TokenKey(Sha256::digest(token.as_ref()).into())
    }
}

/// How a resolver names tokens, chosen once when it is built and used by every key it makes
/// (lookups, loads, marks, lives, evictions), so two keys of one token always agree.
///
/// A token's [`key`](Self::key) names it in the tiers, marks, lives and evictions:
/// - with a second level ([`shared`](Self::shared)), SHA-256, which every instance computes
///   alike, so that an entry or an eviction one instance writes to Redis names the token for
///   all of them;
/// - without one ([`local`](Self::local)), the [hot key](Self::hot).
///
/// The hot key names it in the front of hot entries, the first place a request looks:
/// SipHash-1-3 with 128-bit output under a secret key drawn when the resolver is built. The
/// key never leaves the process, so no one can compute a token's name, let alone look for
/// two tokens with the same name: a PRF's output under an unknown key is as good as random,
/// and 128 bits make a chance collision among even 2³² live tokens about a 2⁻⁶⁵ event. About
/// 60 ns less than SHA-256 on a 171-byte token: with a second level, a hit in front computes
/// no SHA-256, only a lookup that goes past the front does.
#[derive(Clone, Copy)]
pub(crate) struct Keying {
    k0: u64,
    k1: u64,
    /// Keys are SHA-256 (a second level shares them).
    shared: bool,
}

impl Keying {
    /// Without a second level: one key, the hot one.
    pub(crate) fn local() -> Self {
        Keying::drawn(false)
    }

    /// With a second level: SHA-256 keys, and hot keys for the front.
    pub(crate) fn shared() -> Self {
        Keying::drawn(true)
    }

    /// Under a fresh secret key: two outputs of std's `RandomState`, SipHash under keys std
    /// draws from the operating system's generator.
    fn drawn(shared: bool) -> Self {
        use std::hash::{BuildHasher, RandomState};
        Keying {
            k0: RandomState::new().hash_one(0_u64),
            k1: RandomState::new().hash_one(1_u64),
            shared,
        }
    }

    /// `token`'s key in the front of hot entries.
    #[inline]
    pub(crate) fn hot(&self, token: impl AsRef<[u8]>) -> TokenKey {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut hasher = siphasher::sip128::SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(token.as_ref());
        let mut key = [0; 32];
        key[..16].copy_from_slice(&hasher.finish128().as_bytes());
        TokenKey(key)
    }

    /// `token`'s key everywhere else.
    pub(crate) fn key(&self, token: impl AsRef<[u8]>) -> TokenKey {
        match self.shared {
            true => TokenKey::of(token),
            false => self.hot(token),
        }
    }

    /// [`key`](Self::key), given `token`'s [`hot`](Self::hot) key, which it may be.
    #[inline]
    pub(crate) fn key_beside(&self, hot: &TokenKey, token: impl AsRef<[u8]>) -> TokenKey {
        match self.shared {
            true => TokenKey::of(token),
            false => *hot,
        }
    }
}

impl fmt::Debug for Keying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shared {
            true => f.write_str("Shared(SHA-256; hot: SipHash-1-3-128, key redacted)"),
            false => f.write_str("Local(SipHash-1-3-128, key redacted)"),
        }
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// An end user's id6 token, as found in a request: what the typed calls of
/// [`Id6`](crate::Id6) forward to id6. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct UserToken(Box<str>);

impl UserToken {
    /// A token from its text; `None` for an empty one or one with bytes no cookie can carry.
    pub fn new(token: &str) -> Option<Self> {
        match check(token.as_bytes()) {
            Found::Token(token) => Some(UserToken(token.into())),
            Found::None | Found::Malformed => None,
        }
    }

    pub(crate) fn from_found(token: &str) -> Self {
        UserToken(token.into())
    }

    /// The token itself, to hand to id6. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `userId` of the JWT payload, unverified (see [`jwt::unverified_user_id`]).
    ///
    /// [`jwt::unverified_user_id`]: crate::jwt::unverified_user_id
    pub(crate) fn unverified_user_id(&self) -> Option<u64> {
        crate::jwt::unverified_user_id(&self.0)
    }

    /// The `Cookie` header id6 expects, marked sensitive so that HTTP stacks never log it.
    pub(crate) fn cookie_header(&self, cookie_name: &str) -> Option<HeaderValue> {
        let mut value = HeaderValue::try_from(format!("{cookie_name}={}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for UserToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserToken(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn found(values: &[&[u8]]) -> Found<'static> {
        let map = Box::leak(Box::new(headers(values)));
        find(map, "auth")
    }

    #[test]
    fn finds_the_first_auth_cookie() {
        assert_eq!(found(&[b"auth=abc"]), Found::Token("abc"));
        assert_eq!(found(&[b"a=1; auth=abc; b=2"]), Found::Token("abc"));
        assert_eq!(found(&[b"  auth = abc  ;x=y"]), Found::Token("abc"));
        assert_eq!(found(&[b"auth=first; auth=second"]), Found::Token("first"));
        assert_eq!(
            found(&[b"x=1", b"auth=second-header"]),
            Found::Token("second-header")
        );
        assert_eq!(found(&[b"auth=one", b"auth=two"]), Found::Token("one"));
        assert_eq!(found(&[b"auth=\"quoted\""]), Found::Token("quoted"));
        assert_eq!(found(&[b"xauth=no; authx=no"]), Found::None);
        assert_eq!(found(&[b"auth=a=b"]), Found::Token("a=b"));
    }

    #[test]
    fn empty_first_cookie_means_none() {
        assert_eq!(found(&[]), Found::None);
        assert_eq!(found(&[b"auth="]), Found::None);
        assert_eq!(found(&[b"auth=; auth=later"]), Found::None);
        assert_eq!(found(&[b"auth=\"\""]), Found::None);
    }

    #[test]
    fn malformed_values_are_flagged_not_forwarded() {
        assert_eq!(found(&[b"auth=a\\b"]), Found::Malformed);
        assert_eq!(found(&[b"auth=a b"]), Found::Malformed);
        assert_eq!(found(&[b"auth=\xff\xfe"]), Found::Malformed);
        let long = format!("auth={}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(found(&[long.as_bytes()]), Found::Malformed);
        let ok = format!("auth={}", "a".repeat(MAX_TOKEN_LEN));
        assert!(matches!(found(&[ok.as_bytes()]), Found::Token(_)));
    }

    #[test]
    fn odd_headers_do_not_panic() {
        let huge = vec![b'a'; 64 * 1024];
        let mut huge_pairs = b"auth".repeat(16 * 1024);
        huge_pairs.extend_from_slice(b"=x");
        for h in [
            &b""[..],
            b";;;;",
            b"=",
            b"==auth==",
            b"noequals",
            b"auth",
            b";auth",
            b"\xff=\xff; auth=\x80",
            &huge,
            &huge_pairs,
        ] {
            let _ = found(&[h]);
        }
    }

    /// Fastest of a few runs of `find` over `header`, in nanoseconds.
    fn scan_cost(header: &[u8]) -> u128 {
        let map = headers(&[header]);
        (0..5)
            .map(|_| {
                let started = std::time::Instant::now();
                std::hint::black_box(find(std::hint::black_box(&map), "auth"));
                started.elapsed().as_nanos().max(1)
            })
            .min()
            .unwrap_or(1)
    }

    /// Crafted headers cost what a plain one of the same length costs: the scan is linear.
    /// A ratio within one run, not a duration: the quadratic scan this replaces was over
    /// 1000 times slower on these shapes.
    #[test]
    fn the_scan_is_linear_in_the_header_whatever_its_shape() {
        const N: usize = 10_000;
        let mut candidates_then_spaces = b"a=1".to_vec();
        for _ in 0..N {
            candidates_then_spaces.extend_from_slice(b";auth ");
        }
        // Trailing spaces, as HTTP/2 keeps them.
        candidates_then_spaces.extend(std::iter::repeat_n(b' ', 6 * N));
        let mut spaces_then_candidates = vec![b' '; 6 * N];
        for _ in 0..N {
            spaces_then_candidates.extend_from_slice(b"auth  ");
        }
        spaces_then_candidates.extend_from_slice(b"x");
        for crafted in [candidates_then_spaces, spaces_then_candidates] {
            let mut plain = b"a=".to_vec();
            plain.resize(crafted.len() - 8, b'b');
            plain.extend_from_slice(b"; auth=x");
            assert_eq!(plain.len(), crafted.len());
            let ratio = scan_cost(&crafted) / scan_cost(&plain);
            assert!(ratio < 100, "a crafted header cost {ratio}x a plain one");
        }
    }

    #[test]
    fn keys_are_full_sha256_and_debug_is_redacted() {
        let key = TokenKey::of("abc");
        assert_eq!(
            key.0[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
        assert_ne!(TokenKey::of("abc"), TokenKey::of("abd"));
        assert_eq!(format!("{key:?}"), "TokenKey(..)");
        let token = UserToken::new("secret.jwt.value").unwrap();
        assert!(!format!("{token:?}").contains("secret"));
        assert!(UserToken::new("").is_none() && UserToken::new("a b").is_none());
        let header = token.cookie_header("auth").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header, "auth=secret.jwt.value");
    }

    #[test]
    fn local_keys_are_keyed_and_shared_keys_are_sha256() {
        let shared = Keying::shared();
        assert_eq!(shared.key("abc"), TokenKey::of("abc"));
        assert_eq!(
            shared.key_beside(&shared.hot("abc"), "abc"),
            TokenKey::of("abc")
        );
        assert_ne!(shared.hot("abc"), TokenKey::of("abc"), "hot keys are keyed");
        let (a, b) = (Keying::local(), Keying::local());
        assert_eq!(
            a.key("abc"),
            a.key("abc"),
            "one resolver names a token alike"
        );
        assert_eq!(a.key("abc"), a.hot("abc"));
        assert_eq!(a.key_beside(&a.hot("abc"), "abc"), a.key("abc"));
        assert_ne!(a.key("abc"), a.key("abd"));
        assert_ne!(
            a.key("abc"),
            b.key("abc"),
            "each resolver draws its own secret"
        );
        assert_ne!(a.key("abc"), TokenKey::of("abc"));
        assert_eq!(format!("{a:?}"), "Local(SipHash-1-3-128, key redacted)");
        assert_eq!(
            format!("{shared:?}"),
            "Shared(SHA-256; hot: SipHash-1-3-128, key redacted)"
        );
    }

    #[test]
    fn locations_are_searched_in_order() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("auth=from-cookie"));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        let token =
            |locations: &[TokenLocation], h: &HeaderMap| match TokenFinder::new("auth", locations)
                .find(h)
            {
                Found::Token(t) => Some(t.to_owned()),
                _ => None,
            };
        use TokenLocation::{Bearer, Cookie};
        assert_eq!(token(&[Cookie], &h).as_deref(), Some("from-cookie"));
        assert_eq!(token(&[Bearer], &h).as_deref(), Some("from-header"));
        assert_eq!(token(&[Cookie, Bearer], &h).as_deref(), Some("from-cookie"));
        assert_eq!(token(&[Bearer, Cookie], &h).as_deref(), Some("from-header"));
        h.remove(COOKIE);
        assert_eq!(token(&[Cookie, Bearer], &h).as_deref(), Some("from-header"));
        for bad in ["Basic abc", "Bearer", "Bearer   ", "bearerabc", "Token abc"] {
            h.insert(AUTHORIZATION, HeaderValue::from_static(bad));
            assert_eq!(token(&[Bearer], &h), None, "{bad}");
        }
        h.insert(AUTHORIZATION, HeaderValue::from_static("bEaReR   spaced  "));
        assert_eq!(token(&[Bearer], &h).as_deref(), Some("spaced"));
    }

    #[test]
    fn unverified_user_id_reads_the_payload() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = |payload: &str| {
            UserToken::new(&format!(
                "{}.{}.sig",
                b64(r#"{"alg":"HS256"}"#),
                b64(payload)
            ))
            .unwrap()
        };
        assert_eq!(
            jwt(r#"{"userId":42,"issuedAt":1}"#).unverified_user_id(),
            Some(42)
        );
        // One rule with the screen: a string `userId` is no id6 token.
        assert_eq!(jwt(r#"{"userId":"7"}"#).unverified_user_id(), None);
        assert_eq!(jwt(r#"{"user":1}"#).unverified_user_id(), None);
        assert_eq!(jwt("not json").unverified_user_id(), None);
        assert_eq!(UserToken::new("abc").unwrap().unverified_user_id(), None);
    }

    fn cookie_octets() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just(0x21u8),
                0x23u8..=0x2B,
                0x2Du8..=0x3A,
                0x3Cu8..=0x5B,
                0x5Du8..=0x7E
            ],
            1..40,
        )
        .prop_map(|b| String::from_utf8(b).unwrap().replace('=', "-"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes in any number of Cookie headers never panic.
        #[test]
        fn never_panics(values in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 0..4)
        ) {
            let mut map = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    map.append(COOKIE, v);
                }
            }
            let _ = find(&map, "auth");
        }

        /// On well-formed headers the scan agrees with the `cookie` crate.
        #[test]
        fn agrees_with_the_cookie_crate(
            pairs in proptest::collection::vec(
                (prop_oneof![Just("auth".to_owned()), "[a-z]{1,6}"], cookie_octets()),
                0..8,
            ),
            spaces in proptest::bool::ANY,
        ) {
            let sep = if spaces { "; " } else { ";" };
            let header = pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(sep);
            let oracle = cookie::Cookie::split_parse(header.as_str())
                .filter_map(Result::ok)
                .find(|c| c.name() == "auth")
                .map(|c| c.value_trimmed().to_owned());
            let map = headers(&[header.as_bytes()]);
            let ours = match find(&map, "auth") {
                Found::Token(t) => Some(t.to_owned()),
                Found::None => None,
                Found::Malformed => panic!("well-formed header flagged malformed: {header}"),
            };
            prop_assert_eq!(ours, oracle);
        }
    }
}
