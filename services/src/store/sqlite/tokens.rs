//! The statements behind the session-token and password methods of
//! [`Sqlite`](super::Sqlite). Each runs inside the caller's transaction.

use rusqlite::{params, OptionalExtension, Transaction};

use super::queries::{require_user, user_from_row};
use crate::ids::UserId;
use crate::store::rules::{check_password_unchanged, token_user, tokens_kept};
use crate::store::{now_ms, Error, NewToken, User};

/// Replaces the user's password hash and deletes all their tokens.
pub(super) fn set_password_hash(
    tx: &Transaction<'_>,
    user: UserId,
    password_hash: &str,
) -> Result<(), Error> {
    require_user(tx, user)?;
    tx.prepare_cached("UPDATE users SET password_hash = ?1 WHERE id = ?2")?
        .execute(params![password_hash, user])?;
    tx.prepare_cached("DELETE FROM session_tokens WHERE user_id = ?1")?.execute([user])?;
    Ok(())
}

/// Inserts the token, then trims the user's tokens to the newest `keep` unexpired ones.
pub(super) fn add(tx: &Transaction<'_>, token: &NewToken) -> Result<(), Error> {
    require_user(tx, token.user)?;
    // SQLite runs one write transaction at a time: the hash cannot change under us.
    let current: String = tx
        .prepare_cached("SELECT password_hash FROM users WHERE id = ?1")?
        .query_row([token.user], |row| row.get(0))?;
    check_password_unchanged(Some(&current), token)?;
    let now = now_ms();
    tx.prepare_cached(
        "INSERT INTO session_tokens (token_hash, user_id, created_at_ms, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![&token.hash[..], token.user, now, token.expires_at_ms])?;
    // The id of the newest token past the ones to keep; it and every older one go.
    let offset = i64::try_from(tokens_kept(token)).unwrap_or(i64::MAX);
    let cutoff: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM session_tokens WHERE user_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![token.user, offset], |row| row.get(0))
        .optional()?;
    tx.prepare_cached("DELETE FROM session_tokens WHERE user_id = ?1 AND (expires_at_ms <= ?2 OR id <= ?3)")?
        .execute(params![token.user, now, cutoff.unwrap_or(0)])?;
    Ok(())
}

/// The token's user; an expired token is deleted.
pub(super) fn user(tx: &Transaction<'_>, hash: &[u8; 32]) -> Result<User, Error> {
    let found = tx
        .prepare_cached(
            "SELECT u.id, u.name, u.created_at_ms, t.expires_at_ms
             FROM session_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1",
        )?
        .query_row([&hash[..]], |row| Ok((user_from_row(row)?, row.get::<_, i64>(3)?)))
        .optional()?;
    token_user(found, now_ms(), || revoke(tx, hash))
}

/// Deletes the token; false when there was none.
pub(super) fn revoke(tx: &Transaction<'_>, hash: &[u8; 32]) -> Result<bool, Error> {
    Ok(tx.prepare_cached("DELETE FROM session_tokens WHERE token_hash = ?1")?.execute([&hash[..]])? > 0)
}
