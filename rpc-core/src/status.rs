//! The status that crosses the wire with every response.

use std::fmt;

/// Outcome class of a call, numbered as in gRPC so the codes are familiar.
///
/// Later versions may add codes; a code number this version does not know
/// decodes as [`Code::Unknown`]. Whether a failed call ran is not the code's to say but
/// the [`Outcome`] carried with it; a status a handler returns means
/// [`Outcome::Ran`] unless it says otherwise, and the docs below name what
/// rpc-core itself sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Code {
    /// The call succeeded.
    Ok = 0,
    /// The caller gave up on the call. Outcome unknown.
    Cancelled = 1,
    /// An error with no better code, or a code number this version does not know.
    Unknown = 2,
    /// The request was malformed or failed validation.
    InvalidArgument = 3,
    /// The call's deadline passed before it completed. From rpc-core's
    /// server queue, the call never ran ([`Outcome::NotRun`]); from a handler
    /// whose own calls timed out, or a caller that stopped waiting, the
    /// outcome is unknown.
    DeadlineExceeded = 4,
    /// A named entity does not exist.
    NotFound = 5,
    /// The entity the call would create already exists.
    AlreadyExists = 6,
    /// The caller is known but not allowed to do this.
    PermissionDenied = 7,
    /// A limit was hit: calls in flight, bytes queued, sizes or rates. rpc-core's
    /// server sends it, marked not run, for a call refused at admission (too
    /// many in flight, a lane full, frame too large).
    ResourceExhausted = 8,
    /// The system is not in a state where the call can run.
    FailedPrecondition = 9,
    /// The call was aborted, typically by a conflict; it may be retried.
    Aborted = 10,
    /// The call asked for something past a valid range.
    OutOfRange = 11,
    /// No such service or method on this server. Unknown services are refused
    /// before anything runs (not run).
    Unimplemented = 12,
    /// The server broke an invariant, for example a handler panicked.
    Internal = 13,
    /// The service cannot be reached right now; retrying may help. Marked not
    /// run when a shutting-down server refuses the call; a handler passing on a
    /// lost connection says unknown.
    Unavailable = 14,
    /// Data was lost or corrupted.
    DataLoss = 15,
    /// The call needs an authenticated session.
    Unauthenticated = 16,
}

impl Code {
    /// Decodes a code number from the wire; unknown numbers become [`Code::Unknown`].
    pub fn from_u8(n: u8) -> Code {
        use Code::*;
        match n {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The name used in logs and error messages, e.g. `"NotFound"`.
    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "Ok",
            Cancelled => "Cancelled",
            Unknown => "Unknown",
            InvalidArgument => "InvalidArgument",
            DeadlineExceeded => "DeadlineExceeded",
            NotFound => "NotFound",
            AlreadyExists => "AlreadyExists",
            PermissionDenied => "PermissionDenied",
            ResourceExhausted => "ResourceExhausted",
            FailedPrecondition => "FailedPrecondition",
            Aborted => "Aborted",
            OutOfRange => "OutOfRange",
            Unimplemented => "Unimplemented",
            Internal => "Internal",
            Unavailable => "Unavailable",
            DataLoss => "DataLoss",
            Unauthenticated => "Unauthenticated",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller of a failed call can know about whether it ran.
///
/// A code alone does not say it: a `ResourceExhausted` may be the server
/// refusing a call at the door (it never ran) or a handler that ran out of
/// something halfway. So every failed response carries its outcome too
/// (`docs/PROTOCOL.md`, "Outcomes"), and [`crate::Error::outcome`] gives it
/// for local failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler never started: sending the call again, here or elsewhere,
    /// cannot run it twice. Given only when it is proved: refused at
    /// admission, dropped from a queue past its deadline, refused while the
    /// server shuts down, or never read by a server that said so.
    NotRun,
    /// The handler ran and answered with this status; whatever it did is done.
    Ran,
    /// Nobody can say: the caller stopped waiting (a timeout), the connection
    /// broke with the call in flight, or a service further down could not
    /// tell. Retry only with an idempotency key (the chat's client message id).
    Unknown,
}

impl Outcome {
    /// The name used in logs, e.g. `"not run"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotRun => "not run",
            Outcome::Ran => "ran",
            Outcome::Unknown => "outcome unknown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call's code and a human-readable message, as sent by the server,
/// and whether the call ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What class of failure this is.
    pub code: Code,
    /// What went wrong, in words meant for the person reading the error.
    pub message: String,
    /// Whether the call ran; [`Outcome::Ran`] unless the status says otherwise.
    outcome: Outcome,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with `code` and `message`, from a handler that ran.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status { code, message: message.into(), outcome: Outcome::Ran }
    }

    /// The same status with `outcome`: [`Outcome::Unknown`] when passing on a
    /// failure that leaves it open. Only rpc-core's server itself answers
    /// [`Outcome::NotRun`]: a handler's "not run" (a refusal passed on from a
    /// service further down) is sent as unknown, since the handler may have done
    /// something before it.
    pub fn with_outcome(mut self, outcome: Outcome) -> Status {
        self.outcome = outcome;
        self
    }

    /// Whether the call ran.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    constructors! {
        /// [`Code::InvalidArgument`]: the request was malformed or failed validation.
        invalid_argument => InvalidArgument,
        /// [`Code::NotFound`]: a named entity does not exist.
        not_found => NotFound,
        /// [`Code::AlreadyExists`]: the entity already exists.
        already_exists => AlreadyExists,
        /// [`Code::PermissionDenied`]: the caller may not do this.
        permission_denied => PermissionDenied,
        /// [`Code::Unauthenticated`]: the call needs a logged-in session.
        unauthenticated => Unauthenticated,
        /// [`Code::ResourceExhausted`]: a limit was hit.
        resource_exhausted => ResourceExhausted,
        /// [`Code::FailedPrecondition`]: the system is not in a state for this call.
        failed_precondition => FailedPrecondition,
        /// [`Code::Unavailable`]: try again later.
        unavailable => Unavailable,
        /// [`Code::DeadlineExceeded`]: the deadline passed.
        deadline_exceeded => DeadlineExceeded,
        /// [`Code::Unimplemented`]: no such service or method.
        unimplemented => Unimplemented,
        /// [`Code::Internal`]: the server broke an invariant.
        internal => Internal,
        /// [`Code::Aborted`]: the call was aborted by a conflict.
        aborted => Aborted,
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        match self.outcome {
            Outcome::Ran => Ok(()),
            other => write!(f, " ({other})"),
        }
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_number() {
        for n in 0..=16u8 {
            let code = Code::from_u8(n);
            assert_eq!(code as u8, n, "{code}");
        }
        assert_eq!(Code::from_u8(17), Code::Unknown);
        assert_eq!(Code::from_u8(255), Code::Unknown);
    }

    #[test]
    fn a_status_ran_unless_it_says_otherwise() {
        assert_eq!(Status::internal("x").outcome(), Outcome::Ran);
        let refused = Status::resource_exhausted("full").with_outcome(Outcome::NotRun);
        assert_eq!(refused.outcome(), Outcome::NotRun);
        assert_eq!(refused.to_string(), "ResourceExhausted: full (not run)");
    }

    #[test]
    fn display_names_code_and_message() {
        let s = Status::not_found("user 'ann' does not exist");
        assert_eq!(s.to_string(), "NotFound: user 'ann' does not exist");
    }
}
