//! How conversations are named.
//!
//! A one-to-one conversation is named by its two participants, smaller id first, so both
//! of them name it the same way and it exists once in the store whoever wrote first. A
//! group conversation is named by its group. Every conversation has its own sequence
//! numbers 1, 2, 3, ... without gaps.
//!
//! The text form, used in logs and by the command-line client, is `direct:LOW:HIGH` or
//! `group:ID`:
//!
//! ```
//! use services::{ConversationId, GroupId, UserId};
//!
//! let c = ConversationId::direct(UserId(7), UserId(3));
//! assert_eq!(c.to_string(), "direct:3:7");
//! assert_eq!(c, ConversationId::direct(UserId(3), UserId(7)));
//! assert_eq!(c.peer_of(UserId(7)), Some(UserId(3)));
//! assert_eq!("group:12".parse(), Ok(ConversationId::Group(GroupId(12))));
//! ```

use std::fmt;
use std::str::FromStr;

use crate::ids::{GroupId, UserId};

/// Names one conversation. Build one-to-one ones with [`ConversationId::direct`], which
/// orders the pair; the stores normalise any pair they are given as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// A one-to-one conversation.
    Direct {
        /// The smaller of the two user ids.
        low: UserId,
        /// The larger of the two user ids.
        high: UserId,
    },
    /// A group's conversation.
    Group(GroupId),
}

impl ConversationId {
    /// The one-to-one conversation between `a` and `b`, in either order.
    pub fn direct(a: UserId, b: UserId) -> Self {
        ConversationId::Direct { low: a.min(b), high: a.max(b) }
    }

    /// The same conversation with a one-to-one pair put in order.
    pub fn normalized(self) -> Self {
        match self {
            ConversationId::Direct { low, high } => ConversationId::direct(low, high),
            group => group,
        }
    }

    /// For a one-to-one conversation that includes `user`, the other participant.
    /// `None` for groups and for pairs without `user`.
    pub fn peer_of(&self, user: UserId) -> Option<UserId> {
        match *self {
            ConversationId::Direct { low, high } if low == user => Some(high),
            ConversationId::Direct { low, high } if high == user => Some(low),
            _ => None,
        }
    }

    /// The group, for a group conversation.
    pub fn group(&self) -> Option<GroupId> {
        match *self {
            ConversationId::Group(group) => Some(group),
            ConversationId::Direct { .. } => None,
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversationId::Direct { low, high } => write!(f, "direct:{low}:{high}"),
            ConversationId::Group(group) => write!(f, "group:{group}"),
        }
    }
}

/// The text was not `direct:A:B` or `group:G` with decimal ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a conversation as direct:USER:USER or group:GROUP, got {0:?}")]
pub struct ParseConversationError(String);

impl FromStr for ConversationId {
    type Err = ParseConversationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseConversationError(s.to_owned());
        let number = |part: &str| part.parse::<u64>().map_err(|_| bad());
        let mut parts = s.split(':');
        let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("direct"), Some(a), Some(b), None) => {
                ConversationId::direct(UserId(number(a)?), UserId(number(b)?))
            }
            (Some("group"), Some(g), None, None) => ConversationId::Group(GroupId(number(g)?)),
            _ => return Err(bad()),
        };
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_is_ordered() {
        let c = ConversationId::direct(UserId(9), UserId(2));
        assert_eq!(c, ConversationId::Direct { low: UserId(2), high: UserId(9) });
        let unordered = ConversationId::Direct { low: UserId(9), high: UserId(2) };
        assert_eq!(unordered.normalized(), c);
        assert_eq!(c.peer_of(UserId(2)), Some(UserId(9)));
        assert_eq!(c.peer_of(UserId(5)), None);
        assert_eq!(c.group(), None);
    }

    #[test]
    fn text_form_round_trips() {
        for c in [ConversationId::direct(UserId(1), UserId(2)), ConversationId::Group(GroupId(77))] {
            assert_eq!(c.to_string().parse(), Ok(c));
        }
        assert_eq!("direct:5:4".parse(), Ok(ConversationId::direct(UserId(4), UserId(5))));
        for bad in ["", "group:", "group:x", "direct:1", "direct:1:2:3", "dm:1:2"] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad}");
        }
    }
}
