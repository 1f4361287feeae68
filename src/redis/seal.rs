//! Shared entries sealed by their own token: whoever can write to Redis, but holds no token,
//! can neither forge an entry an instance accepts nor read one (oauth2-proxy's Redis session
//! store does the same with its ticket).
//!
//! - The key: HKDF-SHA256 of the token, with labels of its own. Redis names an entry by the
//!   token's plain SHA-256, from which this key cannot be computed.
//! - The cipher: ChaCha20-Poly1305 (pure Rust), a random 96-bit nonce per seal: one token's
//!   entry is sealed a handful of times in its life, far from the 2^32 seals where random
//!   nonces start to collide.
//! - The entry's Redis key is bound as associated data, so an entry moved under another
//!   name does not open either (it would not anyway: another name is another token).
//!
//! A sealed value: a version byte, the nonce, the ciphertext with its tag.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

/// The format's version, the first byte of every sealed value.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
/// What a sealed value adds to its plaintext: version, nonce, Poly1305 tag.
pub(super) const OVERHEAD: usize = 1 + NONCE_LEN + 16;
/// HKDF's salt and info: this derivation's own, so that no other use of the token (nor
/// the entry's name, a plain SHA-256) yields the key.
const SALT: &[u8] = b"id6-tower redis entry seal";
const INFO: &[u8] = b"v1 chacha20poly1305 key";

/// The cipher keyed by `token`.
fn cipher(token: &[u8]) -> ChaCha20Poly1305 {
    let mut key = Key::default();
    // 32 bytes are far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
    let expanded = Hkdf::<Sha256>::new(Some(SALT), token).expand(INFO, &mut key);
    debug_assert!(expanded.is_ok());
    ChaCha20Poly1305::new(&key)
}

/// `plaintext` sealed with `token`'s key, bound to the entry's Redis key `name`.
pub(super) fn seal(token: &[u8], name: &str, plaintext: &[u8]) -> Option<Vec<u8>> {
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let payload = Payload {
        msg: plaintext,
        aad: name.as_bytes(),
    };
    let sealed = cipher(token).encrypt(&nonce, payload).ok()?;
    let mut value = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    value.push(VERSION);
    value.extend_from_slice(&nonce);
    value.extend_from_slice(&sealed);
    Some(value)
}

/// The plaintext of a value sealed by [`seal`] with the same token and name; `None` for
/// anything else (tampered, truncated, another token's, another format).
pub(super) fn open(token: &[u8], name: &str, value: &[u8]) -> Option<Vec<u8>> {
    let (&version, rest) = value.split_first()?;
    if version != VERSION || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).ok()?);
    let payload = Payload {
        msg: sealed,
        aad: name.as_bytes(),
    };
    cipher(token).decrypt(&nonce, payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_same_token_and_name() {
        let sealed = seal(b"token-a", "id6:t:aa", b"{\"user\":1}").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 10);
        assert_eq!(
            open(b"token-a", "id6:t:aa", &sealed).as_deref(),
            Some(&b"{\"user\":1}"[..])
        );
        assert_eq!(open(b"token-b", "id6:t:aa", &sealed), None, "another token");
        assert_eq!(open(b"token-a", "id6:t:bb", &sealed), None, "another name");
        for cut in 0..sealed.len() {
            assert_eq!(
                open(b"token-a", "id6:t:aa", &sealed[..cut]),
                None,
                "cut at {cut}"
            );
        }
        for at in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[at] ^= 1;
            assert_eq!(
                open(b"token-a", "id6:t:aa", &tampered),
                None,
                "bit flipped at {at}"
            );
        }
        assert_eq!(
            open(b"token-a", "id6:t:aa", b"{\"user\":1}"),
            None,
            "plain JSON"
        );
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let (a, b) = (
            seal(b"t", "n", b"v").unwrap(),
            seal(b"t", "n", b"v").unwrap(),
        );
        assert_ne!(a, b, "a nonce per seal");
    }

    #[test]
    fn the_key_is_not_the_entrys_name() {
        use sha2::Digest;
        // The entry's Redis name is the token's SHA-256: that digest as a key opens nothing.
        let token = b"header.payload.signature";
        let sealed = seal(token, "n", b"v").unwrap();
        let digest = Sha256::digest(token);
        let cipher = ChaCha20Poly1305::new(&digest);
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(&sealed[1..1 + NONCE_LEN]).unwrap());
        let payload = Payload {
            msg: &sealed[1 + NONCE_LEN..],
            aad: b"n",
        };
        assert!(cipher.decrypt(&nonce, payload).is_err());
    }
}
