//! The status that crosses the wire with every response.

use std::fmt;

/// Outcome class of a call, numbered as in gRPC so the codes are familiar.
///
/// The set is closed: a code number this version does not know decodes as
/// [`Code::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// The call succeeded.
    Ok = 0,
    /// The caller gave up on the call.
    Cancelled = 1,
    /// An error with no better code, or a code number this version does not know.
    Unknown = 2,
    /// The request was malformed or failed validation.
    InvalidArgument = 3,
    /// The call's deadline passed before it completed.
    DeadlineExceeded = 4,
    /// A named entity does not exist.
    NotFound = 5,
    /// The entity the call would create already exists.
    AlreadyExists = 6,
    /// The caller is known but not allowed to do this.
    PermissionDenied = 7,
    /// A limit was hit: calls in flight, bytes queued, sizes or rates.
    ResourceExhausted = 8,
    /// The system is not in a state where the call can run.
    FailedPrecondition = 9,
    /// The call was aborted, typically by a conflict; it may be retried.
    Aborted = 10,
    /// The call asked for something past a valid range.
    OutOfRange = 11,
    /// No such service or method on this server.
    Unimplemented = 12,
    /// The server broke an invariant, for example a handler panicked.
    Internal = 13,
    /// The service cannot be reached right now; retrying may help.
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

/// A failed call's code and a human-readable message, as sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What class of failure this is.
    pub code: Code,
    /// What went wrong, in words meant for the person reading the error.
    pub message: String,
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
    /// A status with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status { code, message: message.into() }
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
        write!(f, "{}: {}", self.code, self.message)
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
    fn display_names_code_and_message() {
        let s = Status::not_found("user 'ann' does not exist");
        assert_eq!(s.to_string(), "NotFound: user 'ann' does not exist");
    }
}
