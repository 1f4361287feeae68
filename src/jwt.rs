//! Screening a token before it costs an id6 call: the shape of an id6 JWT, and, when the app
//! knows id6's secret, its signature and age.
//!
//! id6 itself is lenient (a string `userId`, no `issuedAt`): here a token must look exactly
//! like what id6 issues, or it is anonymous without asking. A random cookie can then no
//! longer spend the id6 rate-limit budget the whole deployment shares.

use std::time::Duration;

use base64::Engine;

use crate::clock::Clock;
#[cfg(feature = "jwt")]
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The claims id6 puts in its tokens; anything else in the payload is ignored.
///
/// One rule wherever the crate reads a payload: `userId` must be a number. id6 issues
/// numbers; the real server would also trust a string (`docs/id6.md`), but a string is a
/// forgery or garbage, so here it is no id6 token at all.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claims {
    user_id: u64,
    issued_at: Option<u64>,
    /// id6 issues none; its JWT library refuses a token once now (seconds) reaches it, and
    /// one whose `exp` is not a number. Any number JSON holds, as JavaScript reads it (past
    /// u64 too): read here rather than by jsonwebtoken, which refuses what it cannot hold.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))]
    exp: Option<f64>,
}

/// A token's payload part, read the one way the crate reads it: unpadded base64url JSON
/// with a numeric `userId`.
fn claims(payload: &str) -> Result<Claims, Refusal> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Refusal::Shape)?;
    serde_json::from_slice(&json).map_err(|_| Refusal::Shape)
}

/// The `userId` of a token's payload, unverified: only to know whose cache entries to evict
/// after id6 accepted the token for a change.
pub(crate) fn unverified_user_id(token: &str) -> Option<u64> {
    claims(token.split('.').nth(1)?).ok().map(|c| c.user_id)
}

/// Why a token was refused without asking id6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not three base64url parts, not an HS256 header, or no numeric `userId`.
    Shape,
    /// The signature does not match id6's secret.
    #[cfg(feature = "jwt")]
    Signature,
    /// `issuedAt` plus the token lifetime is past.
    Expired,
    /// Now is at or past the token's `exp`: id6's JWT library refuses it (`invalid_token`).
    #[cfg(feature = "jwt")]
    PastExp,
}

impl Refusal {
    /// What id6 answers for such a token.
    pub(crate) fn as_rejection(self) -> crate::error::TokenRejection {
        match self {
            Refusal::Expired => crate::error::TokenRejection::TokenExpired,
            _ => crate::error::TokenRejection::InvalidToken,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Shape => "not an id6 token",
            #[cfg(feature = "jwt")]
            Refusal::Signature => "bad signature",
            Refusal::Expired => "expired",
            #[cfg(feature = "jwt")]
            Refusal::PastExp => "past exp",
        }
    }
}

/// The screen: always the shape; with the secret (feature `jwt`), signature and expiry too.
#[derive(Clone)]
pub(crate) struct Screen {
    verify: Option<Verifier>,
    lifetime: Duration,
    /// The handle's clock: a token's age is read on it.
    clock: Clock,
}

/// What checks a signature: jsonwebtoken with id6's secret.
#[cfg(feature = "jwt")]
type Verifier = (DecodingKey, Validation);
/// Without the `jwt` feature there is none (`build` refuses a secret).
#[cfg(not(feature = "jwt"))]
type Verifier = std::convert::Infallible;

#[cfg(feature = "jwt")]
fn verifier(secret: &[u8]) -> Verifier {
    let mut validation = Validation::new(Algorithm::HS256);
    // The signature and the algorithm only: id6 reads no other registered claim (an `aud`
    // is no reason to refuse), and `exp` is read by `Screen::check`, as id6 reads it, on
    // the handle's clock.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    (DecodingKey::from_secret(secret), validation)
}

#[cfg(feature = "jwt")]
fn verify(token: &str, (key, validation): &Verifier) -> Result<Claims, Refusal> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|_| Refusal::Signature)
}

#[cfg(not(feature = "jwt"))]
fn verify(_: &str, never: &Verifier) -> Result<Claims, Refusal> {
    match *never {}
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen")
            .field("verifies_signature", &self.verify.is_some())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// HS256 signatures are 32 bytes: 43 base64url characters.
const SIGNATURE_LEN: usize = 43;

impl Screen {
    /// `secret` is `None` without the `jwt` feature: `Id6Builder::build` sees to it.
    pub(crate) fn new(secret: Option<&[u8]>, lifetime: Duration, clock: Clock) -> Self {
        #[cfg(feature = "jwt")]
        let verify = secret.map(verifier);
        #[cfg(not(feature = "jwt"))]
        let verify = {
            debug_assert!(secret.is_none(), "build() refuses a secret without `jwt`");
            None
        };
        Screen {
            verify,
            lifetime,
            clock,
        }
    }

    /// Whether a token's verdict here may change with time (with a secret, its age is
    /// checked): if not, a token that passed once passes again.
    pub(crate) fn depends_on_time(&self) -> bool {
        self.verify.is_some()
    }

    /// Whether `token` may be an id6 token still worth asking id6 about.
    pub(crate) fn check(&self, token: &str) -> Result<(), Refusal> {
        let shaped = shape(token)?;
        let claims = match &self.verify {
            None => shaped,
            Some(verifier) => verify(token, verifier)?,
        };
        if self.verify.is_some() {
            // Past once now (whole seconds, as id6's library counts) reaches it.
            #[cfg(feature = "jwt")]
            if claims
                .exp
                .is_some_and(|exp| (self.clock.wall_ms() / 1000) as f64 >= exp)
            {
                return Err(Refusal::PastExp);
            }
            if let Some(issued_at) = claims.issued_at {
                // Checked: `issuedAt` is the token's to choose; an expiry past any clock's
                // range is simply not yet.
                let since_epoch = Duration::from_millis(self.clock.wall_ms());
                let expires = Duration::from_millis(issued_at).checked_add(self.lifetime);
                if expires.is_some_and(|expires| expires < since_epoch) {
                    return Err(Refusal::Expired);
                }
            }
        }
        Ok(())
    }
}

/// A necessary condition of an id6 token's shape, cheap enough to ask before the cache is:
/// three parts, the last of an HS256 signature's length. A value failing it was never
/// stored (every stored token passed [`Screen::check`]), so it is refused without a lookup.
pub(crate) fn may_have_shape(token: &[u8]) -> bool {
    let Some(last) = memchr::memrchr(b'.', token) else {
        return false;
    };
    let head = &token[..last];
    token.len() - last - 1 == SIGNATURE_LEN
        && memchr::memchr(b'.', head)
            .is_some_and(|first| memchr::memchr(b'.', &head[first + 1..]).is_none())
}

/// Three base64url parts, an HS256 JSON header, a JSON payload with a numeric `userId`, a
/// signature of HS256's length.
fn shape(token: &str) -> Result<Claims, Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Shape);
    };
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| Refusal::Shape)
    };
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    if !ID6_HEADERS.contains(&header) {
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| Refusal::Shape)?;
        if header.alg != "HS256" {
            return Err(Refusal::Shape);
        }
    }
    if signature.len() != SIGNATURE_LEN {
        return Err(Refusal::Shape);
    }
    // 43 characters are 32 bytes, or not base64url at all: decoded on the stack.
    let mut signed = [0; 32];
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(signature, &mut signed)
        .map_err(|_| Refusal::Shape)?;
    if decoded != signed.len() {
        return Err(Refusal::Shape);
    }
    claims(payload)
}

/// HS256 headers as JWT libraries write them, recognised without decoding:
/// `{"alg":"HS256","typ":"JWT"}` (Node's `jsonwebtoken`) and
/// `{"typ":"JWT","alg":"HS256"}` (Rust's). Any other is decoded and read.
const ID6_HEADERS: [&str; 2] = [
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9",
];

// Tokens are signed with jsonwebtoken, which only the `jwt` feature brings.
#[cfg(all(test, feature = "jwt"))]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

    fn now_ms() -> u64 {
        Clock::default().wall_ms()
    }

    fn sign(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn the_shape_of_an_id6_token() {
        let screen = Screen::new(None, 30 * DAY, Clock::default());
        let good = sign(json!({"userId": 1, "issuedAt": now_ms(), "iat": 1}), b"s");
        assert_eq!(screen.check(&good), Ok(()));
        assert!(may_have_shape(good.as_bytes()));
        // Without the secret, any signature of the right shape passes: id6 decides.
        assert_eq!(screen.check(&sign(json!({"userId": 1}), b"other")), Ok(()));
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let sig = "A".repeat(SIGNATURE_LEN);
        for bad in [
            "garbage".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!(
                "{}.{}.{sig}",
                b64(r#"{"alg":"none"}"#),
                b64(r#"{"userId":1}"#)
            ),
            format!(
                "{}.{}.{sig}",
                b64(r#"{"alg":"HS512"}"#),
                b64(r#"{"userId":1}"#)
            ),
            format!(
                "{}.{}.{sig}",
                b64(r#"{"alg":"HS256"}"#),
                b64(r#"{"userId":"1"}"#)
            ),
            format!(
                "{}.{}.{sig}",
                b64(r#"{"alg":"HS256"}"#),
                b64(r#"{"user":1}"#)
            ),
            format!("{}.{}.{sig}", b64(r#"{"alg":"HS256"}"#), b64("not json")),
            format!(
                "{}.{}.short",
                b64(r#"{"alg":"HS256"}"#),
                b64(r#"{"userId":1}"#)
            ),
            format!("{}.{}.{sig}", "!!", b64(r#"{"userId":1}"#)),
        ] {
            assert_eq!(screen.check(&bad), Err(Refusal::Shape), "{bad}");
        }
    }

    /// The headers recognised without decoding say what the decoding would: the same
    /// answer either way, whatever the payload and signature.
    #[test]
    fn the_known_headers_are_read_as_decoding_reads_them() {
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for header in ID6_HEADERS {
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap();
            let decoded: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(decoded["alg"], "HS256", "{header}");
        }
        let payload = b64(br#"{"userId":1}"#);
        for signature in [
            b64(&[7; 32]),
            "A".repeat(SIGNATURE_LEN - 1),
            "A".repeat(SIGNATURE_LEN + 1),
            format!("{}B", "A".repeat(SIGNATURE_LEN - 1)),
            format!("{}!", "A".repeat(SIGNATURE_LEN - 1)),
        ] {
            let known =
                shape(&format!("{}.{payload}.{signature}", ID6_HEADERS[0])).map(|c| c.user_id);
            let decoded = shape(&format!(
                "{}.{payload}.{signature}",
                b64(br#"{"alg":"HS256"}"#)
            ))
            .map(|c| c.user_id);
            assert_eq!(known, decoded, "{signature}");
        }
        assert_eq!(
            shape(&format!("{}.{payload}.{}", ID6_HEADERS[1], b64(&[7; 32]))).map(|c| c.user_id),
            Ok(1)
        );
    }

    #[test]
    fn with_the_secret_signature_and_age_are_checked_locally() {
        let screen = Screen::new(Some(b"id6 secret"), 30 * DAY, Clock::default());
        let fresh = sign(json!({"userId": 1, "issuedAt": now_ms()}), b"id6 secret");
        assert_eq!(screen.check(&fresh), Ok(()));
        let forged = sign(json!({"userId": 1, "issuedAt": now_ms()}), b"guess");
        assert_eq!(screen.check(&forged), Err(Refusal::Signature));
        let old = now_ms() - 31 * 24 * 3600 * 1000;
        let expired = sign(json!({"userId": 1, "issuedAt": old}), b"id6 secret");
        assert_eq!(screen.check(&expired), Err(Refusal::Expired));
        let past_exp = sign(json!({"userId": 1, "exp": 1}), b"id6 secret");
        assert_eq!(screen.check(&past_exp), Err(Refusal::PastExp));
        // id6's library refuses a token from its `exp` second on, and an `exp` not a number.
        let now_s = now_ms() / 1000;
        let at_exp = sign(json!({"userId": 1, "exp": now_s}), b"id6 secret");
        assert_eq!(screen.check(&at_exp), Err(Refusal::PastExp));
        let text_exp = sign(json!({"userId": 1, "exp": "soon"}), b"id6 secret");
        assert_eq!(
            screen.check(&text_exp).map_err(Refusal::as_rejection),
            Err(crate::error::TokenRejection::InvalidToken)
        );
        // id6 lets a token without issuedAt live forever; so do we (id6 still decides).
        assert_eq!(
            screen.check(&sign(json!({"userId": 1}), b"id6 secret")),
            Ok(())
        );
    }

    /// id6 refuses a token signed with its secret only for its `alg`, a past `exp` or its
    /// age (`docs/id6.md`: `invalid_token` is garbage, a wrong signature, alg none, a past
    /// `exp`), and the screen ignores "anything else in the payload" ([`Claims`]). A claim
    /// id6 does not read (`aud`, `iss`, `sub`, `jti`) or an `exp` not yet reached, however
    /// far, is id6's to judge: refusing it here would lock out a token id6 accepts.
    #[test]
    fn claims_id6_accepts_are_not_refused_locally() {
        let screen = Screen::new(Some(b"id6 secret"), 30 * DAY, Clock::default());
        let now_s = now_ms() / 1000;
        let refused: Vec<String> = [
            json!({"aud": "some-app"}),
            json!({"aud": []}),
            json!({"iss": "id6"}),
            json!({"sub": "1"}),
            json!({"jti": "x"}),
            json!({"exp": now_s + 3600}),
            json!({"exp": (now_s + 3600) as f64 + 0.5}),
            // Past u64 (JavaScript numbers go to 1.8e308): not past, so not refused by id6.
            json!({"exp": 1e20}),
            json!({"exp": 1e300}),
        ]
        .into_iter()
        .filter_map(|extra| {
            let mut claims = json!({"userId": 1, "issuedAt": now_ms(), "iat": now_s});
            for (name, value) in extra.as_object().unwrap() {
                claims[name] = value.clone();
            }
            let verdict = screen.check(&sign(claims, b"id6 secret"));
            (verdict != Ok(())).then(|| format!("{extra}: {verdict:?}"))
        })
        .collect();
        assert!(refused.is_empty(), "refused locally: {refused:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Arbitrary text never panics the screen, with or without the secret.
        #[test]
        fn never_panics(token in "\\PC{0,300}", dots in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5)) {
            let joined = dots.join(".");
            for screen in [Screen::new(None, DAY, Clock::default()), Screen::new(Some(b"k"), DAY, Clock::default())] {
                let _ = screen.check(&token);
                let _ = screen.check(&joined);
            }
        }

        /// The early test lets through every value the shape check could pass: exactly
        /// three parts, the last of a signature's length.
        #[test]
        fn the_early_test_is_the_shape_s_outline(parts in proptest::collection::vec("[A-Za-z0-9_.-]{0,50}", 1..5)) {
            let token = parts.join(".");
            let outline = token.split('.').count() == 3
                && token.rsplit('.').next().is_some_and(|s| s.len() == SIGNATURE_LEN);
            prop_assert_eq!(may_have_shape(token.as_bytes()), outline);
        }
    }
}
