//! Password hashing with argon2id.
//!
//! Passwords are stored only as PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), each with its own random salt. The
//! string carries its own parameters, so hashes made with older settings still verify
//! after [`Config`] changes.
//!
//! ```
//! use services::auth;
//!
//! let cheap = auth::Config { memory_kib: 64, iterations: 1, parallelism: 1 };
//! let stored = auth::hash_password_with("correct horse", &cheap).unwrap();
//! assert!(auth::verify_password("correct horse", &stored).unwrap());
//! assert!(!auth::verify_password("wrong horse", &stored).unwrap());
//! ```

use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// The cost of a new hash. The default is the OWASP recommendation for argon2id: 19 MiB
/// of memory, 2 passes, 1 lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Memory per hash, in KiB; the main defence against GPU guessing.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes computed in parallel.
    pub parallelism: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

/// Hashing or verification failed for a reason other than a wrong password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cost parameters are out of argon2's range.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// The stored hash is not a PHC string this module can read.
    #[error("stored password hash is malformed: {0}")]
    MalformedHash(String),
    /// The hash computation itself failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes `password` with argon2id, the default [`Config`] and a fresh random salt.
///
/// # Errors
///
/// Only if argon2 fails, which with the default parameters does not happen.
pub fn hash_password(password: &str) -> Result<String, Error> {
    hash_password_with(password, &Config::default())
}

/// Hashes `password` with argon2id, the given cost and a fresh random salt.
///
/// # Errors
///
/// [`Error::Params`] when the cost is out of range (for example less than 8 KiB per lane).
pub fn hash_password_with(password: &str, config: &Config) -> Result<String, Error> {
    let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
        .map_err(|e| Error::Params(e.to_string()))?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| Error::Hash(e.to_string()))?;
    let hash = hasher.hash_password(password.as_bytes(), &salt).map_err(|e| Error::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks `password` against a stored PHC string, in time that does not depend on where
/// the two differ.
///
/// # Errors
///
/// [`Error::MalformedHash`] when `stored` cannot be parsed; a wrong password is `Ok(false)`.
pub fn verify_password(password: &str, stored: &str) -> Result<bool, Error> {
    let parsed = PasswordHash::new(stored).map_err(|e| Error::MalformedHash(e.to_string()))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(Error::MalformedHash(e.to_string())),
    }
}

/// Spends as long as verifying a password against a real hash made at cost `config`
/// (the cost new passwords are hashed at), and returns nothing.
///
/// A login for an unknown name calls this, so that it takes as long as a login with a
/// wrong password and the response time does not reveal which names exist.
pub fn verify_against_dummy(password: &str, config: &Config) {
    // The outcome is meaningless by construction; only the time spent matters.
    if let Some(dummy) = dummy_hash(config) {
        let _ = verify_password(password, &dummy);
    }
}

/// A hash of a password no one has, at cost `config`, made once per cost.
fn dummy_hash(config: &Config) -> Option<String> {
    static DUMMIES: Mutex<Vec<(Config, String)>> = Mutex::new(Vec::new());
    let mut dummies = DUMMIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, hash)) = dummies.iter().find(|(c, _)| c == config) {
        return Some(hash.clone());
    }
    let hash = hash_password_with("not a real password", config).ok()?;
    dummies.push((config.clone(), hash.clone()));
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Argon2 at full cost is slow in debug builds; the behaviour under test does not
    /// depend on the cost.
    fn cheap() -> Config {
        Config { memory_kib: 256, iterations: 1, parallelism: 1 }
    }

    #[test]
    fn the_dummy_hash_has_the_cost_of_real_ones() {
        let dummy = dummy_hash(&cheap()).unwrap();
        assert!(dummy.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{dummy}");
        assert_eq!(dummy_hash(&cheap()).unwrap(), dummy, "made once per cost");
        let other = Config { memory_kib: 512, ..cheap() };
        assert!(dummy_hash(&other).unwrap().starts_with("$argon2id$v=19$m=512,t=1,p=1$"));
    }

    #[test]
    fn hash_is_argon2id_phc_with_random_salt() {
        let a = hash_password_with("hunter2hunter2", &cheap()).unwrap();
        let b = hash_password_with("hunter2hunter2", &cheap()).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(!a.contains("hunter2"));
    }

    #[test]
    fn verify_accepts_only_the_right_password() {
        let stored = hash_password_with("correct horse", &cheap()).unwrap();
        assert_eq!(verify_password("correct horse", &stored), Ok(true));
        assert_eq!(verify_password("correct horsE", &stored), Ok(false));
        assert_eq!(verify_password("", &stored), Ok(false));
    }

    #[test]
    fn default_config_is_owasp_argon2id() {
        let stored = hash_password("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert_eq!(verify_password("correct horse", &stored), Ok(true));
    }

    #[test]
    fn malformed_hash_is_an_error_not_a_mismatch() {
        assert!(matches!(verify_password("x", "plaintext-password"), Err(Error::MalformedHash(_))));
    }

    #[test]
    fn bad_params_are_reported() {
        let config = Config { memory_kib: 1, ..cheap() };
        assert!(matches!(hash_password_with("x", &config), Err(Error::Params(_))));
    }
}
