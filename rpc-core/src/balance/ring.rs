//! The consistent-hash ring: each instance owns `virtual_nodes` points, a key
//! goes to the owner of the first point at or after its hash.

use std::hash::{Hash, Hasher};

/// Points sorted by hash, each naming an endpoint by index.
#[derive(Debug, Default)]
pub(super) struct Ring {
    /// `(point, endpoint index)`, sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring over instances with these ids, in endpoint order. Points depend
    /// only on the id, so an instance keeps its arc of the ring whatever else
    /// joins or leaves.
    pub(super) fn new<'a>(ids: impl Iterator<Item = &'a str>, virtual_nodes: usize) -> Ring {
        let mut points: Vec<(u64, usize)> = ids
            .enumerate()
            .flat_map(|(index, id)| {
                (0..virtual_nodes.max(1) as u32).map(move |v| (stable_hash((id, v)), index))
            })
            .collect();
        points.sort_unstable();
        Ring { points }
    }

    /// Endpoint indices in ring order starting at `hash`'s place, each
    /// once: the owner first, then the next distinct owners around the ring.
    pub(super) fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(point, _)| *point < hash);
        let mut seen = Vec::new();
        self.points[start..].iter().chain(&self.points[..start]).map(|(_, index)| *index).filter(
            move |index| {
                if seen.contains(index) {
                    false
                } else {
                    seen.push(*index);
                    true
                }
            },
        )
    }
}

/// FNV-1a over the bytes `Hash` feeds it, finished with murmur3's mix: the
/// same on every run and every machine of one endianness, unlike std's
/// `DefaultHasher`, so all consumers agree on where a key goes.
#[derive(Debug)]
struct StableHasher(u64);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The stable hash of `value`.
pub(super) fn stable_hash(value: impl Hash) -> u64 {
    let mut hasher = StableHasher(0xcbf2_9ce4_8422_2325);
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pinned() {
        // Changing it would move every key of every deployment at once.
        assert_eq!(stable_hash("user-42"), 0xae15_1ea6_ff60_b06e);
        if cfg!(target_endian = "little") {
            assert_eq!(stable_hash(42u64), 0xa624_5a5d_cf27_8758);
        }
    }

    #[test]
    fn walk_visits_every_owner_once_starting_with_the_key_owner() {
        let ring = Ring::new(["a", "b", "c"].into_iter(), 50);
        for key in 0..100u64 {
            let order: Vec<usize> = ring.walk(stable_hash(key)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2]);
        }
        assert_eq!(Ring::default().walk(1).count(), 0);
    }

    #[test]
    fn keys_spread_roughly_evenly() {
        let ring = Ring::new(["a", "b", "c", "d"].into_iter(), 160);
        let mut counts = [0usize; 4];
        for key in 0..10_000u64 {
            counts[ring.walk(stable_hash(key)).next().unwrap()] += 1;
        }
        for count in counts {
            assert!((1_500..3_500).contains(&count), "{counts:?}");
        }
    }
}
