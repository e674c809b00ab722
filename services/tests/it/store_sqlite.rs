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
