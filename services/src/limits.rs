//! Size and character limits on everything a client sends, with errors a person can act
//! on.
//!
//! The services check every field against these limits before doing any work, and the
//! stores check them again so that nothing that breaks them is ever stored. The numbers
//! are part of the API: `proto/chat.proto` repeats them next to each field.

use std::fmt;

/// The shortest user name, in characters.
pub const NAME_MIN: usize = 3;
/// The longest user name, in characters.
pub const NAME_MAX: usize = 32;
/// The shortest password, in characters.
pub const PASSWORD_MIN: usize = 8;
/// The longest password, in characters. Hashing cost does not grow with length, but a
/// bound keeps requests small.
pub const PASSWORD_MAX: usize = 128;
/// The longest message body, in bytes of UTF-8.
pub const BODY_MAX_BYTES: usize = 4096;
/// The longest group name, in characters.
pub const GROUP_NAME_MAX: usize = 64;
/// The longest client message id, in characters.
pub const CLIENT_MSG_ID_MAX: usize = 64;
/// The most invitations a group may have waiting at once (expired ones do not count).
pub const GROUP_INVITATIONS_MAX: usize = 100;
/// How long an invitation into a group stays good: seven days, in milliseconds.
pub const INVITATION_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// How long a client waits, in milliseconds, before it connects again and resumes after
/// a lost connection: a random moment in this range (chat.proto, `Resume`). Not before
/// the crash's own teardown is over, and spread over a second.
pub const RECONNECT_PAUSE_MS: std::ops::Range<u64> = 500..1500;

/// How many messages a history page holds when the client does not say.
pub const HISTORY_PAGE_DEFAULT: usize = 50;
/// The most messages one history page holds.
pub const HISTORY_PAGE_MAX: usize = 200;
/// How many messages one sync answer holds when the client does not say.
pub const SYNC_PAGE_DEFAULT: usize = 500;
/// The most messages one sync answer holds.
pub const SYNC_PAGE_MAX: usize = 1000;

/// The page size to use for a client's requested `limit`: 0 means `default`, and anything
/// above `max` is cut to `max` (asking for more is not an error; the answer says
/// `has_more`).
pub fn page_size(requested: usize, default: usize, max: usize) -> usize {
    match requested {
        0 => default,
        n => n.min(max),
    }
}

/// A value broke one of the limits. The `Display` text names the field and the rule, and
/// is meant to be shown to the person who typed the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The value is empty (or only whitespace where that counts as empty).
    #[error("{field} must not be empty")]
    Empty {
        /// Which field, e.g. "name".
        field: Field,
    },
    /// The value is shorter than the minimum.
    #[error("{field} must be at least {min} {unit} long (got {actual})")]
    TooShort {
        /// Which field.
        field: Field,
        /// The minimum length.
        min: usize,
        /// The length that was given.
        actual: usize,
        /// What the lengths count: "characters" or "bytes".
        unit: &'static str,
    },
    /// The value is longer than the maximum.
    #[error("{field} must be at most {max} {unit} long (got {actual})")]
    TooLong {
        /// Which field.
        field: Field,
        /// The maximum length.
        max: usize,
        /// The length that was given.
        actual: usize,
        /// What the lengths count: "characters" or "bytes".
        unit: &'static str,
    },
    /// The value contains a character the field does not allow.
    #[error("{field} may not contain {found:?}; {allowed}")]
    BadCharacter {
        /// Which field.
        field: Field,
        /// The first character that is not allowed.
        found: char,
        /// A sentence saying what is allowed.
        allowed: &'static str,
    },
}

/// The fields that have limits, named in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// A user name.
    Name,
    /// A password.
    Password,
    /// A message body.
    Body,
    /// A group name.
    GroupName,
    /// A client message id.
    ClientMsgId,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Name => "user name",
            Field::Password => "password",
            Field::Body => "message",
            Field::GroupName => "group name",
            Field::ClientMsgId => "client message id",
        })
    }
}

const CHARS: &str = "characters";
const BYTES: &str = "bytes";

/// Checks a user name: 3 to 32 ASCII letters, digits, `_`, `-` or `.`, starting with a
/// letter. Names are unique ignoring ASCII case.
///
/// # Errors
///
/// Describes the first rule the name breaks.
pub fn check_name(name: &str) -> Result<(), Error> {
    let field = Field::Name;
    check_length(field, name.chars().count(), NAME_MIN, NAME_MAX, CHARS)?;
    const ALLOWED: &str = "use ASCII letters, digits, '_', '-' and '.', starting with a letter";
    if let Some(found) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(Error::BadCharacter { field, found, allowed: ALLOWED });
    }
    match name.chars().next() {
        Some(first) if !first.is_ascii_alphabetic() => {
            Err(Error::BadCharacter { field, found: first, allowed: ALLOWED })
        }
        _ => Ok(()),
    }
}

/// Checks a password: 8 to 128 characters, no control characters.
///
/// # Errors
///
/// Describes the first rule the password breaks. The message never repeats the password.
pub fn check_password(password: &str) -> Result<(), Error> {
    let field = Field::Password;
    check_length(field, password.chars().count(), PASSWORD_MIN, PASSWORD_MAX, CHARS)?;
    if password.chars().any(char::is_control) {
        // The character itself is not echoed back: it is part of a secret.
        return Err(Error::BadCharacter { field, found: '?', allowed: "control characters are not allowed" });
    }
    Ok(())
}

/// Checks a message body: 1 to 4096 bytes of UTF-8, not only whitespace, and no control
/// characters other than newline and tab.
///
/// # Errors
///
/// Describes the first rule the body breaks.
pub fn check_body(body: &str) -> Result<(), Error> {
    let field = Field::Body;
    if body.trim().is_empty() {
        return Err(Error::Empty { field });
    }
    check_length(field, body.len(), 1, BODY_MAX_BYTES, BYTES)?;
    if let Some(found) = body.chars().find(|&c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::BadCharacter {
            field,
            found,
            allowed: "control characters other than newline and tab are not allowed",
        });
    }
    Ok(())
}

/// Checks a group name: 1 to 64 characters, not only whitespace, no control characters.
///
/// # Errors
///
/// Describes the first rule the group name breaks.
pub fn check_group_name(name: &str) -> Result<(), Error> {
    let field = Field::GroupName;
    if name.trim().is_empty() {
        return Err(Error::Empty { field });
    }
    check_length(field, name.chars().count(), 1, GROUP_NAME_MAX, CHARS)?;
    if let Some(found) = name.chars().find(|c| c.is_control()) {
        return Err(Error::BadCharacter { field, found, allowed: "control characters are not allowed" });
    }
    Ok(())
}

/// Checks a client message id: 1 to 64 printable ASCII characters (no spaces).
///
/// # Errors
///
/// Describes the first rule the id breaks.
pub fn check_client_msg_id(id: &str) -> Result<(), Error> {
    let field = Field::ClientMsgId;
    if id.is_empty() {
        return Err(Error::Empty { field });
    }
    check_length(field, id.chars().count(), 1, CLIENT_MSG_ID_MAX, CHARS)?;
    if let Some(found) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::BadCharacter {
            field,
            found,
            allowed: "use printable ASCII characters without spaces",
        });
    }
    Ok(())
}

fn check_length(
    field: Field,
    actual: usize,
    min: usize,
    max: usize,
    unit: &'static str,
) -> Result<(), Error> {
    if actual == 0 {
        Err(Error::Empty { field })
    } else if actual < min {
        Err(Error::TooShort { field, min, actual, unit })
    } else if actual > max {
        Err(Error::TooLong { field, max, actual, unit })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name("alice"), Ok(()));
        assert_eq!(check_name("A.b-c_9"), Ok(()));
        assert_eq!(check_name(&"a".repeat(NAME_MAX)), Ok(()));
        assert_eq!(check_name("").unwrap_err().to_string(), "user name must not be empty");
        assert_eq!(
            check_name("ab").unwrap_err().to_string(),
            "user name must be at least 3 characters long (got 2)"
        );
        assert!(matches!(check_name(&"a".repeat(NAME_MAX + 1)), Err(Error::TooLong { actual: 33, .. })));
        assert_eq!(
            check_name("bob smith").unwrap_err().to_string(),
            "user name may not contain ' '; use ASCII letters, digits, '_', '-' and '.', \
             starting with a letter"
        );
        assert!(matches!(check_name("9lives"), Err(Error::BadCharacter { found: '9', .. })));
        assert!(matches!(check_name("zoë"), Err(Error::BadCharacter { found: 'ë', .. })));
        assert!(check_name("x'; DROP TABLE users; --").is_err());
    }

    #[test]
    fn passwords() {
        assert_eq!(check_password("correct horse"), Ok(()));
        assert_eq!(check_password("pässwörd"), Ok(()));
        assert!(matches!(check_password("short"), Err(Error::TooShort { min: 8, .. })));
        assert!(check_password(&"p".repeat(PASSWORD_MAX + 1)).is_err());
        let err = check_password("secret\u{7}secret").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn bodies() {
        assert_eq!(check_body("hi"), Ok(()));
        assert_eq!(check_body("line one\nline two\tend"), Ok(()));
        assert_eq!(check_body(&"é".repeat(BODY_MAX_BYTES / 2)), Ok(()));
        assert_eq!(check_body(" \n "), Err(Error::Empty { field: Field::Body }));
        assert_eq!(
            check_body(&"x".repeat(BODY_MAX_BYTES + 1)).unwrap_err().to_string(),
            "message must be at most 4096 bytes long (got 4097)"
        );
        assert!(matches!(check_body("nul\0byte"), Err(Error::BadCharacter { found: '\0', .. })));
    }

    #[test]
    fn group_names() {
        assert_eq!(check_group_name("Rust fans 🦀"), Ok(()));
        assert!(matches!(check_group_name("   "), Err(Error::Empty { .. })));
        assert!(check_group_name(&"g".repeat(GROUP_NAME_MAX + 1)).is_err());
        assert!(check_group_name("tab\there").is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0, 50, 200), 50);
        assert_eq!(page_size(7, 50, 200), 7);
        assert_eq!(page_size(10_000, 50, 200), 200);
    }

    #[test]
    fn client_msg_ids() {
        assert_eq!(check_client_msg_id("9b2f-01"), Ok(()));
        assert!(check_client_msg_id("").is_err());
        assert!(check_client_msg_id("has space").is_err());
        assert!(check_client_msg_id(&"x".repeat(CLIENT_MSG_ID_MAX + 1)).is_err());
    }
}
