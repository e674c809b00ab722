//! Session tokens: what a client keeps after a login to open a session again, after a
//! lost connection, without sending its password and without a password hash on the
//! server.
//!
//! A token is 32 random bytes from the operating system's generator, written as 64
//! lowercase hex digits. The client receives it once, in the answer to `Login` (or
//! `ChangePassword`); the store keeps only its SHA-256. A fast hash is right here,
//! unlike for passwords: a token has 256 bits of entropy, so no guess at it is better
//! than any other, and a hash costs microseconds where argon2 costs tens of
//! milliseconds and megabytes. Whoever reads the database learns no token.
//!
//! A token works until it expires ([`Config::ttl`]), until its session logs out, until
//! the user changes their password (which revokes all of the user's tokens), or until
//! [`Config::keep_per_user`] newer tokens of the same user push it out.
//!
//! ```
//! use services::session_token;
//!
//! let (token, hash) = session_token::generate();
//! assert_eq!(token.len(), 64);
//! assert_eq!(session_token::hash(&token), Some(hash));
//! assert_eq!(session_token::hash("not a token"), None);
//! ```

use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long tokens last and how many a user may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a token opens sessions after it was issued. The default is 30 days.
    pub ttl: Duration,
    /// How many tokens a user keeps, the newest ones: one per device the user logs in
    /// from. The default is 10; an eleventh login revokes the oldest token.
    pub keep_per_user: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { ttl: Duration::from_secs(30 * 24 * 3600), keep_per_user: 10 }
    }
}

/// How many hex digits a token has.
pub const LEN: usize = 64;

/// A new token and its hash, the only form of it to store.
pub fn generate() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = digest(&token);
    (token, hash)
}

/// The hash under which `token` is stored; `None` when `token` does not have a token's
/// form (64 lowercase hex digits), so that no store is asked about it.
pub fn hash(token: &str) -> Option<[u8; 32]> {
    let well_formed = token.len() == LEN && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then(|| digest(token))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_to_what_was_generated() {
        let (a, hash_a) = generate();
        let (b, hash_b) = generate();
        assert_ne!(a, b);
        assert_ne!(hash_a, hash_b);
        assert_eq!(hash(&a), Some(hash_a));
        assert!(!a.contains(|c: char| c.is_ascii_uppercase()));
    }

    #[test]
    fn malformed_tokens_have_no_hash() {
        let (token, _) = generate();
        assert_eq!(hash(&token[..LEN - 1]), None, "too short");
        assert_eq!(hash(&format!("{token}0")), None, "too long");
        assert_eq!(hash(&token.to_uppercase()), None, "upper case");
        assert_eq!(hash(&"g".repeat(LEN)), None, "not hex");
        assert_eq!(hash(""), None);
    }
}
