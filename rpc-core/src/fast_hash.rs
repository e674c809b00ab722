//! A fast, non-cryptographic hasher for the maps on the hot path.
//!
//! The server's connection map (keyed by poll token), its service map (keyed
//! by name bytes) and the client's pending calls (keyed by call id) are
//! looked up once or twice per call. No peer chooses what goes into them:
//! tokens and call ids are our own counters, and the service names are the
//! server's, fixed at start (a client's name only looks one up). SipHash's
//! protection against chosen keys buys nothing there and costs tens of
//! nanoseconds per lookup. This is the multiply-rotate hash of rustc's
//! `FxHasher`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// rustc's Fx hash: one rotate, xor and multiply per word.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_work_with_every_key_kind() {
        let mut ids: FastMap<u64, u64> = FastMap::default();
        for i in 0..10_000u64 {
            ids.insert(i, i * 2);
        }
        assert!((0..10_000u64).all(|i| ids[&i] == i * 2));
        let mut names: FastMap<Box<[u8]>, usize> = FastMap::default();
        for (i, n) in ["a", "chatroom.Gateway", "chatroom.Gatewax", "bench.Echo", ""].iter().enumerate() {
            names.insert(n.as_bytes().into(), i);
        }
        assert_eq!(names.get(&b"chatroom.Gatewax"[..]), Some(&2));
        assert_eq!(names.get(&b""[..]), Some(&4));
        assert_eq!(names.get(&b"bench.Ech"[..]), None);
    }
}
