//! The statements behind the session-token and password methods of
//! [`MySql`](super::MySql). Each runs inside the caller's transaction.

use mysql::prelude::Queryable;

use super::queries::{require_user, user_from};
use crate::ids::UserId;
use crate::store::rules::{check_password_unchanged, token_user, tokens_kept};
use crate::store::{now_ms, Error, NewToken, User};

/// Replaces the user's password hash and deletes all their tokens.
pub(super) fn set_password_hash(
    q: &mut impl Queryable,
    user: UserId,
    password_hash: &str,
) -> Result<(), Error> {
    require_user(q, user)?;
    q.exec_drop("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user.0))?;
    q.exec_drop("DELETE FROM session_tokens WHERE user_id = ?", (user.0,))?;
    Ok(())
}

/// Inserts the token, then trims the user's tokens to the newest `keep` unexpired ones.
pub(super) fn add(q: &mut impl Queryable, token: &NewToken) -> Result<(), Error> {
    require_user(q, token.user)?;
    // Locked until the commit: a password change waits for this token, then deletes it.
    let current: Option<String> =
        q.exec_first("SELECT password_hash FROM users WHERE id = ? FOR UPDATE", (token.user.0,))?;
    check_password_unchanged(current.as_deref(), token)?;
    let now = now_ms();
    q.exec_drop(
        "INSERT INTO session_tokens (token_hash, user_id, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?)",
        (&token.hash[..], token.user.0, now, token.expires_at_ms),
    )?;
    // The id of the newest token past the ones to keep; it and every older one go.
    let offset = u64::try_from(tokens_kept(token)).unwrap_or(u64::MAX);
    let cutoff: Option<u64> = q.exec_first(
        "SELECT id FROM session_tokens WHERE user_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
        (token.user.0, offset),
    )?;
    q.exec_drop(
        "DELETE FROM session_tokens WHERE user_id = ? AND (expires_at_ms <= ? OR id <= ?)",
        (token.user.0, now, cutoff.unwrap_or(0)),
    )?;
    Ok(())
}

/// The token's user; an expired token is deleted.
pub(super) fn user(q: &mut impl Queryable, hash: &[u8; 32]) -> Result<User, Error> {
    let found: Option<(u64, String, i64, i64)> = q.exec_first(
        "SELECT u.id, u.name, u.created_at_ms, t.expires_at_ms
         FROM session_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
        (&hash[..],),
    )?;
    let found = found.map(|(id, name, created_at_ms, expires_at_ms)| {
        (user_from((id, name, created_at_ms)), expires_at_ms)
    });
    token_user(found, now_ms(), || revoke(q, hash))
}

/// Deletes the token; false when there was none.
pub(super) fn revoke(q: &mut impl Queryable, hash: &[u8; 32]) -> Result<bool, Error> {
    let result = q.exec_iter("DELETE FROM session_tokens WHERE token_hash = ?", (&hash[..],))?;
    Ok(result.affected_rows() > 0)
}
