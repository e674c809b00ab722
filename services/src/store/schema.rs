//! The schema, as numbered migrations for each SQL dialect.
//!
//! `docs/SCHEMA.md` explains the tables; this file is what runs. A store applies, in
//! order, every migration above the highest version in `schema_version`, and records each
//! one there. Each statement is idempotent on its own (`IF NOT EXISTS`, or for an added
//! MySQL column, the runner skipping "duplicate column name"), so a migration that was
//! cut short (MySQL commits each DDL statement by itself) completes when run again.
//! Never edit a released migration: add a new one.

use super::Error;

/// One step of the schema.
pub(crate) struct Migration {
    /// The version the schema has after this step.
    pub version: u32,
    /// What the step is for, recorded in `schema_version`.
    pub description: &'static str,
    /// The statements, run in order.
    pub statements: &'static [&'static str],
}

/// The newest schema version this program knows.
pub const VERSION: u32 = 3;

/// The steps of `migrations` a database at version `current` still needs, in order.
///
/// # Errors
///
/// [`Error::SchemaTooNew`] when a newer program already migrated the database past
/// [`VERSION`].
pub(crate) fn pending(
    migrations: &'static [Migration],
    current: u32,
) -> Result<impl Iterator<Item = &'static Migration>, Error> {
    if current > VERSION {
        return Err(Error::SchemaTooNew { found: current, supported: VERSION });
    }
    Ok(migrations.iter().filter(move |m| m.version > current))
}

/// Creates the version table itself, before anything else is read.
pub(crate) const SQLITE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at_ms INTEGER NOT NULL
)";

/// The SQLite schema.
pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        description: "users, friends, groups, conversations, messages, read cursors",
        statements: &[
            "CREATE TABLE IF NOT EXISTS users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            name_key TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL
        )",
            "CREATE TABLE IF NOT EXISTS friends (
            user_id INTEGER NOT NULL REFERENCES users (id),
            friend_id INTEGER NOT NULL REFERENCES users (id),
            created_at_ms INTEGER NOT NULL,
            PRIMARY KEY (user_id, friend_id)
        ) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS chat_groups (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            owner_id INTEGER NOT NULL REFERENCES users (id),
            created_at_ms INTEGER NOT NULL
        )",
            "CREATE TABLE IF NOT EXISTS group_members (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            group_id INTEGER NOT NULL REFERENCES chat_groups (id),
            user_id INTEGER NOT NULL REFERENCES users (id),
            joined_at_ms INTEGER NOT NULL,
            UNIQUE (group_id, user_id)
        )",
            "CREATE INDEX IF NOT EXISTS group_members_by_user ON group_members (user_id)",
            "CREATE TABLE IF NOT EXISTS conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_low INTEGER REFERENCES users (id),
            user_high INTEGER REFERENCES users (id),
            group_id INTEGER UNIQUE REFERENCES chat_groups (id),
            last_seq INTEGER NOT NULL DEFAULT 0,
            UNIQUE (user_low, user_high),
            CHECK ((group_id IS NULL) = (user_low IS NOT NULL AND user_high IS NOT NULL))
        )",
            "CREATE INDEX IF NOT EXISTS conversations_by_high ON conversations (user_high)",
            "CREATE TABLE IF NOT EXISTS messages (
            conversation_id INTEGER NOT NULL REFERENCES conversations (id),
            seq INTEGER NOT NULL,
            sender_id INTEGER NOT NULL REFERENCES users (id),
            client_msg_id TEXT NOT NULL,
            body TEXT NOT NULL,
            sent_at_ms INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, seq),
            UNIQUE (sender_id, client_msg_id)
        ) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS read_cursors (
            user_id INTEGER NOT NULL REFERENCES users (id),
            conversation_id INTEGER NOT NULL REFERENCES conversations (id),
            read_seq INTEGER NOT NULL,
            PRIMARY KEY (user_id, conversation_id)
        ) WITHOUT ROWID",
        ],
    },
    Migration {
        version: 2,
        description: "private groups, invitations, history visibility",
        // SQLite runs a migration in one transaction, so the column additions (which
        // have no IF NOT EXISTS) are all done or none.
        statements: &[
            // Groups made before this version become private; their members stay.
            "ALTER TABLE chat_groups ADD COLUMN is_public INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE chat_groups ADD COLUMN shared_history INTEGER NOT NULL DEFAULT 0",
            // Existing members keep seeing everything they could see.
            "ALTER TABLE group_members ADD COLUMN visible_after_seq INTEGER NOT NULL DEFAULT 0",
            "CREATE TABLE IF NOT EXISTS group_invitations (
                group_id INTEGER NOT NULL REFERENCES chat_groups (id),
                user_id INTEGER NOT NULL REFERENCES users (id),
                inviter_id INTEGER NOT NULL REFERENCES users (id),
                expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (group_id, user_id)
            ) WITHOUT ROWID",
        ],
    },
    Migration {
        version: 3,
        description: "session tokens",
        statements: &[
            "CREATE TABLE IF NOT EXISTS session_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            token_hash BLOB NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users (id),
            created_at_ms INTEGER NOT NULL,
            expires_at_ms INTEGER NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS session_tokens_by_user ON session_tokens (user_id, id)",
        ],
    },
];

/// Creates the version table itself, before anything else is read.
pub(crate) const MYSQL_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version INT UNSIGNED NOT NULL PRIMARY KEY,
    description VARCHAR(255) NOT NULL,
    applied_at_ms BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

/// The MySQL / MariaDB schema. Text columns compare as bytes (`utf8mb4_bin`,
/// `ascii_bin`) so that both backends agree on equality; case-insensitive name lookups go
/// through the lowercased `name_key`.
pub(crate) const MYSQL: &[Migration] = &[
    Migration {
        version: 1,
        description: "users, friends, groups, conversations, messages, read cursors",
        statements: &[
            "CREATE TABLE IF NOT EXISTS users (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            name_key VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            password_hash VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            created_at_ms BIGINT NOT NULL,
            UNIQUE KEY users_name_key (name_key)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS friends (
            user_id BIGINT UNSIGNED NOT NULL,
            friend_id BIGINT UNSIGNED NOT NULL,
            created_at_ms BIGINT NOT NULL,
            PRIMARY KEY (user_id, friend_id),
            CONSTRAINT friends_user FOREIGN KEY (user_id) REFERENCES users (id),
            CONSTRAINT friends_friend FOREIGN KEY (friend_id) REFERENCES users (id)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS chat_groups (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(64) NOT NULL,
            owner_id BIGINT UNSIGNED NOT NULL,
            created_at_ms BIGINT NOT NULL,
            CONSTRAINT chat_groups_owner FOREIGN KEY (owner_id) REFERENCES users (id)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS group_members (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            group_id BIGINT UNSIGNED NOT NULL,
            user_id BIGINT UNSIGNED NOT NULL,
            joined_at_ms BIGINT NOT NULL,
            UNIQUE KEY group_members_pair (group_id, user_id),
            KEY group_members_by_user (user_id),
            CONSTRAINT group_members_group FOREIGN KEY (group_id) REFERENCES chat_groups (id),
            CONSTRAINT group_members_user FOREIGN KEY (user_id) REFERENCES users (id)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS conversations (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            user_low BIGINT UNSIGNED NULL,
            user_high BIGINT UNSIGNED NULL,
            group_id BIGINT UNSIGNED NULL,
            last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
            UNIQUE KEY conversations_pair (user_low, user_high),
            UNIQUE KEY conversations_group (group_id),
            KEY conversations_by_high (user_high),
            CONSTRAINT conversations_low FOREIGN KEY (user_low) REFERENCES users (id),
            CONSTRAINT conversations_high FOREIGN KEY (user_high) REFERENCES users (id),
            CONSTRAINT conversations_group_fk FOREIGN KEY (group_id) REFERENCES chat_groups (id),
            CONSTRAINT conversations_kind
                CHECK ((group_id IS NULL) = (user_low IS NOT NULL AND user_high IS NOT NULL))
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS messages (
            conversation_id BIGINT UNSIGNED NOT NULL,
            seq BIGINT UNSIGNED NOT NULL,
            sender_id BIGINT UNSIGNED NOT NULL,
            client_msg_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            body TEXT NOT NULL,
            sent_at_ms BIGINT NOT NULL,
            PRIMARY KEY (conversation_id, seq),
            UNIQUE KEY messages_client_id (sender_id, client_msg_id),
            CONSTRAINT messages_conversation FOREIGN KEY (conversation_id)
                REFERENCES conversations (id),
            CONSTRAINT messages_sender FOREIGN KEY (sender_id) REFERENCES users (id)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            "CREATE TABLE IF NOT EXISTS read_cursors (
            user_id BIGINT UNSIGNED NOT NULL,
            conversation_id BIGINT UNSIGNED NOT NULL,
            read_seq BIGINT UNSIGNED NOT NULL,
            PRIMARY KEY (user_id, conversation_id),
            CONSTRAINT read_cursors_user FOREIGN KEY (user_id) REFERENCES users (id),
            CONSTRAINT read_cursors_conversation FOREIGN KEY (conversation_id)
                REFERENCES conversations (id)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
        ],
    },
    Migration {
        version: 2,
        description: "private groups, invitations, history visibility",
        // MySQL has no ADD COLUMN IF NOT EXISTS; a column that a cut-short run already
        // added is skipped by the migration runner (duplicate column name).
        statements: &[
            // Groups made before this version become private; their members stay.
            "ALTER TABLE chat_groups ADD COLUMN is_public TINYINT UNSIGNED NOT NULL DEFAULT 0",
            "ALTER TABLE chat_groups ADD COLUMN shared_history TINYINT UNSIGNED NOT NULL DEFAULT 0",
            // Existing members keep seeing everything they could see.
            "ALTER TABLE group_members ADD COLUMN visible_after_seq BIGINT UNSIGNED NOT NULL DEFAULT 0",
            "CREATE TABLE IF NOT EXISTS group_invitations (
                group_id BIGINT UNSIGNED NOT NULL,
                user_id BIGINT UNSIGNED NOT NULL,
                inviter_id BIGINT UNSIGNED NOT NULL,
                expires_at_ms BIGINT NOT NULL,
                PRIMARY KEY (group_id, user_id),
                CONSTRAINT group_invitations_group FOREIGN KEY (group_id) REFERENCES chat_groups (id),
                CONSTRAINT group_invitations_user FOREIGN KEY (user_id) REFERENCES users (id),
                CONSTRAINT group_invitations_inviter FOREIGN KEY (inviter_id) REFERENCES users (id)
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
        ],
    },
    Migration {
        version: 3,
        description: "session tokens",
        statements: &["CREATE TABLE IF NOT EXISTS session_tokens (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            token_hash BINARY(32) NOT NULL,
            user_id BIGINT UNSIGNED NOT NULL,
            created_at_ms BIGINT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            UNIQUE KEY session_tokens_hash (token_hash),
            KEY session_tokens_by_user (user_id, id),
            CONSTRAINT session_tokens_user FOREIGN KEY (user_id) REFERENCES users (id)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_up_to_version() {
        for migrations in [SQLITE, MYSQL] {
            let versions: Vec<u32> = migrations.iter().map(|m| m.version).collect();
            let expected: Vec<u32> = (1..=VERSION).collect();
            assert_eq!(versions, expected);
        }
    }
}
