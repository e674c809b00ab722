//! Who talks to whom.
//!
//! Users are first put in proxy-alternating order (the first user of each proxy, then
//! the second of each, ...). One-to-one pairs are consecutive users in that order, so a
//! pair spans two proxies whenever there are two; groups are consecutive runs of it, so
//! each group has members on every proxy.

use std::collections::{BTreeMap, HashMap};

use services::{ConversationId, GroupId, UserId};

/// The kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// One-to-one messages between the two users of a pair.
    Direct,
    /// Messages to groups of 10.
    Group10,
    /// Messages to groups of 500.
    Group500,
    /// Every user in a pair and in a group of 10, sending to each in turn.
    Mixed,
}

impl Workload {
    /// Whether users are paired.
    pub fn pairs(self) -> bool {
        matches!(self, Workload::Direct | Workload::Mixed)
    }

    /// The group size, if users are grouped.
    pub fn group_size(self) -> Option<usize> {
        match self {
            Workload::Direct => None,
            Workload::Group10 | Workload::Mixed => Some(10),
            Workload::Group500 => Some(500),
        }
    }
}

/// Users in proxy-alternating order. `proxies[i]` is where user `i` logged in, if known.
pub fn interleave(proxies: &[Option<String>]) -> Vec<usize> {
    let mut buckets: BTreeMap<&Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, p) in proxies.iter().enumerate() {
        buckets.entry(p).or_default().push(i);
    }
    let buckets: Vec<Vec<usize>> = buckets.into_values().collect();
    let longest = buckets.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|k| buckets.iter().filter_map(move |b| b.get(k).copied())).collect()
}

/// One-to-one pairs of consecutive users in `order`, and how many of them span two
/// proxies.
pub fn pairs(order: &[usize], proxies: &[Option<String>]) -> (Vec<(usize, usize)>, usize) {
    let pairs: Vec<(usize, usize)> = order.chunks_exact(2).map(|c| (c[0], c[1])).collect();
    let cross = pairs.iter().filter(|&&(a, b)| proxies[a].is_none() || proxies[a] != proxies[b]).count();
    (pairs, cross)
}

/// Groups of `size` consecutive users in `order`; a last group of fewer than two is
/// dropped.
pub fn groups(order: &[usize], size: usize) -> Vec<Vec<usize>> {
    order.chunks(size.max(2)).filter(|c| c.len() >= 2).map(<[usize]>::to_vec).collect()
}

/// The conversations of a run: who is in each, and where each user sends.
#[derive(Debug, Default)]
pub struct Conversations {
    /// The user ids in each conversation.
    pub members: HashMap<ConversationId, Vec<u64>>,
    /// The conversations each user (by index) sends to, in turn.
    pub sends: Vec<Vec<ConversationId>>,
}

impl Conversations {
    /// The conversations for `pairs` and `groups` (with their ids), over users whose
    /// ids are `ids`.
    pub fn new(ids: &[u64], pairs: &[(usize, usize)], groups: &[(GroupId, Vec<usize>)]) -> Self {
        let mut c = Conversations { members: HashMap::new(), sends: vec![Vec::new(); ids.len()] };
        for &(a, b) in pairs {
            let conversation = ConversationId::direct(UserId(ids[a]), UserId(ids[b]));
            c.members.insert(conversation, vec![ids[a], ids[b]]);
            c.sends[a].push(conversation);
            c.sends[b].push(conversation);
        }
        for (group, users) in groups {
            let conversation = ConversationId::Group(*group);
            c.members.insert(conversation, users.iter().map(|&u| ids[u]).collect());
            for &u in users {
                c.sends[u].push(conversation);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_span_proxies() {
        let proxies: Vec<Option<String>> =
            ["a", "a", "b", "a", "b", "b"].iter().map(|s| Some((*s).to_owned())).collect();
        let order = interleave(&proxies);
        assert_eq!(order, [0, 2, 1, 4, 3, 5]);
        let (pairs, cross) = pairs(&order, &proxies);
        assert_eq!(pairs.len(), 3);
        assert_eq!(cross, 3);
        assert_eq!(groups(&order, 4), vec![vec![0, 2, 1, 4], vec![3, 5]]);
        assert_eq!(groups(&[1, 2, 3], 2), vec![vec![1, 2]]);
    }
}
