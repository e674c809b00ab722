//! The store suite against [`Sqlite`], each test in a file in a temporary directory.

use services::store::{Sqlite, Store};
use tempfile::TempDir;

use crate::store_suite::Fixture;

/// A database file in a directory that is removed when the test ends.
struct SqliteFixture {
    /// Owns the directory; dropped last.
    dir: TempDir,
    /// The store the test uses.
    store: Sqlite,
}

fn fixture() -> SqliteFixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Sqlite::open(dir.path().join("data").join("chat.db")).expect("open sqlite store");
    SqliteFixture { dir, store }
}

impl Fixture for SqliteFixture {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    fn reopen(&self) -> Box<dyn Store> {
        Box::new(Sqlite::open(self.dir.path().join("data").join("chat.db")).expect("reopen sqlite store"))
    }

    fn execute(&self, sql: &str) {
        rusqlite::Connection::open(self.store.path()).unwrap().execute(sql, []).unwrap();
    }
}

store_suite!(fixture);

#[test]
fn file_is_in_wal_mode() {
    let f = fixture();
    let conn = rusqlite::Connection::open(f.store.path()).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let version: u32 =
        conn.query_row("SELECT MAX(version) FROM schema_version", [], |row| row.get(0)).unwrap();
    assert_eq!(version, services::store::SCHEMA_VERSION);
}

/// A database from before private groups, made by undoing versions 3 and 2 on a fresh one, is
/// migrated when opened: its groups become private with their members kept, who read
/// everything they could read before.
#[test]
fn a_version_1_database_gets_private_groups() {
    use crate::store_suite::{group_of, names, send, user, OPEN};
    use services::store::{Anchor, Error, HistoryVisibility};
    let f = fixture();
    let store = &f.store;
    let (alice, bob, carol) = (user(store, "alice"), user(store, "bob"), user(store, "carol"));
    let group = store.create_group(alice.id, "old", OPEN).unwrap();
    send(store, &alice, group_of(&group), "a-1", "from the old days");
    store.join_group(bob.id, group.id).unwrap();
    let conn = rusqlite::Connection::open(f.store.path()).unwrap();
    conn.execute_batch(
        "DROP TABLE session_tokens;
         DELETE FROM schema_version WHERE version = 3;
         DROP TABLE group_invitations;
         ALTER TABLE chat_groups DROP COLUMN is_public;
         ALTER TABLE chat_groups DROP COLUMN shared_history;
         ALTER TABLE group_members DROP COLUMN visible_after_seq;
         DELETE FROM schema_version WHERE version = 2;",
    )
    .unwrap();

    let reopened = Sqlite::open(f.store.path()).expect("migrates");
    let migrated = reopened.group(group.id).unwrap();
    assert!(!migrated.public);
    assert_eq!(migrated.history, HistoryVisibility::Joined);
    assert_eq!(names(&reopened.group_members(group.id).unwrap()), ["alice", "bob"]);
    let page = reopened.history(bob.id, group_of(&group), Anchor::Latest, 10).unwrap();
    assert_eq!(page.messages.len(), 1, "bob still reads what he joined to");
    assert!(matches!(reopened.join_group(carol.id, group.id), Err(Error::NotFound(_))));
    reopened.invite(bob.id, group.id, carol.id).unwrap();
    reopened.join_group(carol.id, group.id).unwrap();
}

#[test]
fn newer_schema_is_refused() {
    let f = fixture();
    let conn = rusqlite::Connection::open(f.store.path()).unwrap();
    conn.execute(
        "INSERT INTO schema_version (version, description, applied_at_ms) VALUES (?1, 'from the future', 0)",
        [services::store::SCHEMA_VERSION + 1],
    )
    .unwrap();
    let err = Sqlite::open(f.store.path()).unwrap_err();
    assert!(matches!(err, services::store::Error::SchemaTooNew { .. }), "{err:?}");
    assert!(err.to_string().contains("upgrade the program"), "{err}");
}
