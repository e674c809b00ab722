//! Password hashing with argon2id.
//!
//! Passwords are stored only as PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), each with its own random salt. The
//! string carries its own parameters, so hashes made with older settings still verify
//! after [`Config`] changes.
//!
//! Every hash fills a block of memory as large as its cost says (19 MiB by default).
//! Allocating it per hash made the allocator keep the freed blocks, so a burst of
//! logins left the process gigabytes larger; instead each thread keeps one buffer and
//! reuses it ([`argon2::Argon2::hash_password_into_with_memory`]). The user service runs
//! hashes on a small lane of threads (one per core), so the buffers together stay a few
//! tens of MiB. A stored hash names its own cost, so one with a cost past
//! [`MAX_MEMORY_KIB`], [`MAX_ITERATIONS`] or [`MAX_PARALLELISM`] is refused rather than
//! computed.
//!
//! ```
//! use services::auth;
//!
//! let cheap = auth::Config { memory_kib: 64, iterations: 1, parallelism: 1 };
//! let stored = auth::hash_password_with("correct horse", &cheap).unwrap();
//! assert!(auth::verify_password("correct horse", &stored).unwrap());
//! assert!(!auth::verify_password("wrong horse", &stored).unwrap());
//! ```

use std::cell::RefCell;
use std::sync::Mutex;

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

/// The most memory a hash may use, in KiB (64 MiB, over three times the default): a
/// stored hash naming more is refused, so that no row can make a thread allocate without
/// bound.
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// The most passes a hash may make (the default makes 2).
pub const MAX_ITERATIONS: u32 = 16;
/// The most lanes a hash may have (the default has 1).
pub const MAX_PARALLELISM: u32 = 4;

/// Bytes of the hash in a PHC string made here.
const OUTPUT_LEN: usize = 32;

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

impl Config {
    /// argon2's parameters for this cost.
    ///
    /// # Errors
    ///
    /// [`Error::Params`] when the cost is out of argon2's range or past this module's
    /// ceilings ([`MAX_MEMORY_KIB`], [`MAX_ITERATIONS`], [`MAX_PARALLELISM`]).
    pub fn params(&self) -> Result<Params, Error> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(OUTPUT_LEN))
            .map_err(|e| Error::Params(e.to_string()))?;
        within_ceiling(&params)?;
        Ok(params)
    }
}

/// Hashing or verification failed for a reason other than a wrong password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cost parameters are out of argon2's range, or past this module's ceilings.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// The stored hash is not a PHC string this module can read.
    #[error("stored password hash is malformed: {0}")]
    MalformedHash(String),
    /// The hash computation itself failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Refuses a cost past the ceilings.
fn within_ceiling(params: &Params) -> Result<(), Error> {
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if m > MAX_MEMORY_KIB || t > MAX_ITERATIONS || p > MAX_PARALLELISM {
        return Err(Error::Params(format!(
            "m={m},t={t},p={p} is past the ceiling m={MAX_MEMORY_KIB},t={MAX_ITERATIONS},p={MAX_PARALLELISM}"
        )));
    }
    Ok(())
}

thread_local! {
    /// This thread's argon2 memory, kept between hashes and grown to the largest cost
    /// seen (at most [`MAX_MEMORY_KIB`]).
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Computes argon2 of `password` and `salt` into `out`, in this thread's buffer.
fn compute(hasher: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), Error> {
    within_ceiling(hasher.params())?;
    let needed = hasher.params().block_count();
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        if blocks.len() < needed {
            blocks.resize(needed, Block::default());
        }
        hasher
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
            .map_err(|e| Error::Hash(e.to_string()))
    })
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
/// [`Error::Params`] when the cost is out of range (for example less than 8 KiB per lane,
/// or more than [`MAX_MEMORY_KIB`]).
pub fn hash_password_with(password: &str, config: &Config) -> Result<String, Error> {
    let params = config.params()?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| Error::Hash(e.to_string()))?;
    let mut out = [0u8; OUTPUT_LEN];
    compute(&hasher, password.as_bytes(), &salt_bytes, &mut out)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().map_err(|e: argon2::password_hash::Error| Error::Hash(e.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| Error::Hash(e.to_string()))?),
    };
    Ok(hash.to_string())
}

/// Checks `password` against a stored PHC string, in time that does not depend on where
/// the two differ.
///
/// # Errors
///
/// [`Error::MalformedHash`] when `stored` cannot be parsed, and [`Error::Params`] when it
/// names a cost past the ceilings; a wrong password is `Ok(false)`.
pub fn verify_password(password: &str, stored: &str) -> Result<bool, Error> {
    let malformed = |e: argon2::password_hash::Error| Error::MalformedHash(e.to_string());
    let parsed = PasswordHash::new(stored).map_err(malformed)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(malformed)?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| Error::MalformedHash(e.to_string()))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(malformed)?;
    within_ceiling(&params)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(Error::MalformedHash("no salt or no hash".into()));
    };
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(malformed)?;
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    compute(&Argon2::new(algorithm, version, params), password.as_bytes(), salt, out)?;
    Ok(bool::from(out.ct_eq(expected.as_bytes())))
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
    fn hashes_agree_with_the_argon2_crate_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash_password_with("correct horse", &cheap()).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        // A hash made by the crate's own allocating path (as stored rows were) verifies here.
        let params = cheap().params().unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"correct horse", &SaltString::encode_b64(b"sixteen byte slt").unwrap())
            .unwrap()
            .to_string();
        assert_eq!(verify_password("correct horse", &theirs), Ok(true));
        assert_eq!(verify_password("correct horsE", &theirs), Ok(false));
    }

    #[test]
    fn a_stored_hash_past_the_ceiling_is_refused_not_computed() {
        let stored = hash_password_with("correct horse", &cheap()).unwrap();
        // 4 TiB of memory: computing it would take the machine down.
        let absurd = stored.replace("m=256,", "m=4294967295,");
        assert!(matches!(verify_password("correct horse", &absurd), Err(Error::Params(_))), "{absurd}");
        let slow = stored.replace("t=1,", "t=100000,");
        assert!(matches!(verify_password("correct horse", &slow), Err(Error::Params(_))));
        let wide = stored.replace("m=256,t=1,p=1$", "m=1024,t=1,p=64$");
        assert!(matches!(verify_password("correct horse", &wide), Err(Error::Params(_))));
        let config = Config { memory_kib: MAX_MEMORY_KIB + 1, ..cheap() };
        assert!(matches!(hash_password_with("x", &config), Err(Error::Params(_))));
    }

    #[test]
    fn bad_params_are_reported() {
        let config = Config { memory_kib: 1, ..cheap() };
        assert!(matches!(hash_password_with("x", &config), Err(Error::Params(_))));
    }
}
