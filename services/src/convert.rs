//! Translations between the store's records and the wire messages of [`crate::api`],
//! and from every local error to the [`Status`] that crosses the wire.

use rpc_core::{Code, Outcome, Status};

use crate::api;
use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::store;

/// The status a failed store operation answers a caller with. Answers about the request
/// keep their code and text; backend failures become Unavailable or Internal, and their
/// details go to the log rather than to the client.
pub fn store_status(error: store::Error) -> Status {
    match error {
        store::Error::NotFound(m) => Status::not_found(m),
        store::Error::AlreadyExists(m) => Status::already_exists(m),
        store::Error::PermissionDenied(m) => Status::permission_denied(m),
        store::Error::ResourceExhausted(m) => Status::resource_exhausted(m),
        store::Error::InvalidArgument(m) => Status::invalid_argument(m),
        store::Error::Unavailable(m) => {
            tracing::warn!(error = %m, "store unavailable");
            Status::unavailable("the database is unavailable; try again")
        }
        other => {
            tracing::error!(error = %other, "store failed");
            Status::internal("the database failed")
        }
    }
}

/// The status a failed write of a message answers a caller with: as [`store_status`],
/// but a backend failure leaves the outcome unknown, since a write whose answer was lost
/// (a connection broken during the commit) may have been committed.
pub fn write_status(error: store::Error) -> Status {
    let answered = matches!(
        error,
        store::Error::NotFound(_)
            | store::Error::AlreadyExists(_)
            | store::Error::PermissionDenied(_)
            | store::Error::ResourceExhausted(_)
            | store::Error::InvalidArgument(_)
    );
    let status = store_status(error);
    if answered {
        status
    } else {
        status.with_outcome(Outcome::Unknown)
    }
}

/// What the proxy answers a client whose `SendMessage` the chat service did not confirm,
/// keeping the promise of `chat.proto`: DeadlineExceeded, outcome unknown, when the
/// message may have been stored; any other status only when it certainly was not.
///
/// Not stored: the call never reached a chat service (its outcome is "not run"; the
/// answer says "ran", since the proxy ran and stored nothing, and a handler's "not run"
/// would cross the wire as unknown), or the chat service judged the request and refused
/// it. Anything else (a time-out, a lost connection, the chat service or its database
/// failing) leaves it open.
pub fn send_status(error: rpc_core::Error) -> Status {
    let status = error.into_status();
    let refused = matches!(
        status.code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::Unimplemented
    );
    match status.outcome() {
        Outcome::NotRun => Status::new(status.code, status.message),
        Outcome::Ran if refused => status,
        _ => Status::deadline_exceeded(format!(
            "the message may have been stored ({}); send it again with the same client_msg_id",
            status.message
        ))
        .with_outcome(Outcome::Unknown),
    }
}

/// The status a failed presence operation answers a caller with.
pub fn presence_status(error: crate::presence::Error) -> Status {
    tracing::warn!(%error, "presence failed");
    Status::unavailable("the presence table is unavailable; try again")
}

/// The status a failed call to another service answers the original caller with: a
/// status from that service passes through as it is.
pub fn rpc_status(error: rpc_core::Error) -> Status {
    error.into_status()
}

/// The user id a proxy passed in a `*Call`; 0 is never a user.
pub fn caller(user_id: u64) -> Result<UserId, Status> {
    if user_id == 0 {
        return Err(Status::invalid_argument("the call names no user (user_id is 0)"));
    }
    Ok(UserId(user_id))
}

/// A wire user.
pub fn user(user: store::User) -> api::User {
    api::User { id: user.id.0, name: user.name, created_at_ms: user.created_at_ms }
}

/// A wire group.
pub fn group(group: store::Group) -> api::Group {
    api::Group {
        id: group.id.0,
        name: group.name,
        owner_id: group.owner.0,
        created_at_ms: group.created_at_ms,
        public: group.public,
        history: history_visibility(group.history) as i32,
    }
}

/// A wire history visibility.
pub fn history_visibility(history: store::HistoryVisibility) -> api::HistoryVisibility {
    match history {
        store::HistoryVisibility::Joined => api::HistoryVisibility::HistoryJoined,
        store::HistoryVisibility::Shared => api::HistoryVisibility::HistoryShared,
    }
}

/// The settings a `CreateGroupRequest` asks for.
///
/// # Errors
///
/// InvalidArgument for a history visibility this server does not know.
pub fn group_settings(request: &api::CreateGroupRequest) -> Result<store::GroupSettings, Status> {
    let history = match api::HistoryVisibility::try_from(request.history) {
        Ok(api::HistoryVisibility::HistoryJoined) => store::HistoryVisibility::Joined,
        Ok(api::HistoryVisibility::HistoryShared) => store::HistoryVisibility::Shared,
        Err(_) => {
            return Err(Status::invalid_argument(format!("unknown history visibility {}", request.history)))
        }
    };
    Ok(store::GroupSettings { public: request.public, history })
}

/// A wire conversation, a one-to-one pair ordered.
pub fn conversation(conversation: ConversationId) -> api::Conversation {
    let kind = match conversation.normalized() {
        ConversationId::Direct { low, high } => {
            api::conversation::Kind::Direct(api::DirectPair { low_user_id: low.0, high_user_id: high.0 })
        }
        ConversationId::Group(group) => api::conversation::Kind::GroupId(group.0),
    };
    api::Conversation { kind: Some(kind) }
}

/// The conversation a request names, normalised.
///
/// # Errors
///
/// InvalidArgument when it is missing, names no kind, or names user or group 0.
pub fn conversation_id(conversation: Option<api::Conversation>) -> Result<ConversationId, Status> {
    match conversation.and_then(|c| c.kind) {
        Some(api::conversation::Kind::Direct(pair)) if pair.low_user_id != 0 && pair.high_user_id != 0 => {
            Ok(ConversationId::direct(UserId(pair.low_user_id), UserId(pair.high_user_id)))
        }
        Some(api::conversation::Kind::GroupId(group)) if group != 0 => {
            Ok(ConversationId::Group(GroupId(group)))
        }
        Some(_) => Err(Status::invalid_argument("the conversation names user or group 0")),
        None => Err(Status::invalid_argument("the request names no conversation")),
    }
}

/// For clients of the gateway: a conversation in its wire form.
impl From<ConversationId> for api::Conversation {
    fn from(id: ConversationId) -> Self {
        conversation(id)
    }
}

/// For clients of the gateway: the conversation a wire message or reply names.
impl TryFrom<api::Conversation> for ConversationId {
    type Error = Status;

    /// # Errors
    ///
    /// InvalidArgument when it names no kind, or names user or group 0.
    fn try_from(wire: api::Conversation) -> Result<Self, Status> {
        conversation_id(Some(wire))
    }
}

/// A wire message.
pub fn message(message: store::Message) -> api::Message {
    api::Message {
        conversation: Some(conversation(message.conversation)),
        seq: message.seq,
        sender_id: message.sender.0,
        client_msg_id: message.client_msg_id,
        body: message.body,
        sent_at_ms: message.sent_at_ms,
    }
}

/// A wire conversation state with its unread count.
pub fn state(state: store::ConversationState) -> api::ConversationState {
    api::ConversationState {
        conversation: Some(conversation(state.conversation)),
        last_seq: state.last_seq,
        read_seq: state.read_seq,
        unread: state.unread(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_round_trip_ordered() {
        let c = ConversationId::direct(UserId(7), UserId(3));
        assert_eq!(conversation_id(Some(conversation(c))).unwrap(), c);
        let reversed = api::Conversation {
            kind: Some(api::conversation::Kind::Direct(api::DirectPair { low_user_id: 7, high_user_id: 3 })),
        };
        assert_eq!(conversation_id(Some(reversed)).unwrap(), c);
        assert!(conversation_id(None).is_err());
        let zero = api::Conversation { kind: Some(api::conversation::Kind::GroupId(0)) };
        assert!(conversation_id(Some(zero)).is_err());
    }

    #[test]
    fn a_send_is_answered_not_stored_only_when_it_was_not() {
        let refused = send_status(Status::permission_denied("not a member").into());
        assert_eq!((refused.code, refused.outcome()), (Code::PermissionDenied, Outcome::Ran));
        let never_sent = send_status(rpc_core::Error::NoInstances { service: "chat".into() });
        assert_eq!((never_sent.code, never_sent.outcome()), (Code::Unavailable, Outcome::Ran));
        let queued_too_long = Status::deadline_exceeded("expired in the queue").with_outcome(Outcome::NotRun);
        assert_eq!(send_status(queued_too_long.into()).outcome(), Outcome::Ran);
        let open = [
            rpc_core::Error::Timeout { service: "chat".into(), method: "Send".into(), elapsed_ms: 10 },
            rpc_core::Error::ConnectionLost { addr: ([127, 0, 0, 1], 1).into(), reason: "reset".into() },
            Status::internal("the handler panicked").into(),
            Status::unavailable("the database is unavailable").into(),
            write_status(store::Error::Unavailable("lost during commit".into())).into(),
        ];
        for error in open {
            let status = send_status(error);
            assert_eq!(
                (status.code, status.outcome()),
                (Code::DeadlineExceeded, Outcome::Unknown),
                "{status}"
            );
            assert!(status.message.contains("same client_msg_id"), "{status}");
        }
        assert_eq!(write_status(store::Error::AlreadyExists("id".into())).outcome(), Outcome::Ran);
    }

    #[test]
    fn store_errors_keep_their_meaning() {
        use rpc_core::Code;
        assert_eq!(store_status(store::Error::NotFound("x".into())).code, Code::NotFound);
        assert_eq!(store_status(store::Error::PermissionDenied("x".into())).code, Code::PermissionDenied);
        assert_eq!(store_status(store::Error::Unavailable("db".into())).code, Code::Unavailable);
        assert_eq!(store_status(store::Error::Corrupt("row".into())).code, Code::Internal);
    }
}
