//! What the client has seen of each conversation, so that it prints every message once
//! and notices a gap (a message it never got) by the sequence numbers.

use std::collections::BTreeSet;

/// What the client has seen of one conversation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Every sequence up to this one has been seen (printed, or sent by this client).
    upto: u64,
    /// Sequences above `upto` seen already: this client's sends, and pushes that
    /// overtook an earlier message.
    above: BTreeSet<u64>,
}

impl Seen {
    /// Starts after `upto`.
    pub fn after(upto: u64) -> Seen {
        Seen { upto, above: BTreeSet::new() }
    }

    /// Starts just before `seq`: where the server says the unseen part begins.
    pub fn before(seq: u64) -> Seen {
        Seen::after(seq.saturating_sub(1))
    }

    /// Every sequence up to this one has been seen: where a Sync resumes.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// Records `seq` as seen; false if it was already.
    pub fn see(&mut self, seq: u64) -> bool {
        if seq <= self.upto || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
        true
    }

    /// Whether `seq` was seen.
    pub fn has(&self, seq: u64) -> bool {
        seq <= self.upto || self.above.contains(&seq)
    }

    /// Whether some sequence before `seq` has not been seen.
    pub fn gap_before(&self, seq: u64) -> bool {
        if seq <= self.upto + 1 {
            return false;
        }
        let seen_between = self.above.range(self.upto + 1..seq).count() as u64;
        seq > self.upto + 1 + seen_between
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn seen_sequences_absorb_into_the_contiguous_prefix() {
        let mut seen = Seen::after(3);
        assert!(!seen.see(2) && !seen.see(3), "at or below the start");
        assert!(!seen.gap_before(4));
        // Our own send (6) overtakes the pushes of 4 and 5.
        assert!(seen.see(6));
        assert!(seen.gap_before(7), "4 and 5 are missing");
        assert!(seen.see(5));
        assert!(seen.gap_before(7), "4 is still missing");
        assert!(seen.see(4));
        assert_eq!(seen, Seen::after(6), "4, 5 and 6 absorbed");
        assert!(!seen.gap_before(7));
        assert!(!seen.see(5) && !seen.see(6), "each once");
        assert!(seen.has(6) && !seen.has(7));
    }
}
