//! The store suite against [`MySql`] on the MariaDB named by `CHATROOM_MYSQL_URL`, each
//! test in a database of its own (`chatroom_test_<random>`) that is dropped after it.

use mysql::prelude::Queryable;
use services::store::{self, MySql, Store};

use crate::store_suite::Fixture;
use crate::support::{mysql_url, unique_name, unreachable, with_database};

/// A fresh database, dropped when the test ends (whether it passed or not).
struct MySqlFixture {
    /// The URL naming the fresh database.
    url: String,
    /// The database's name, for dropping it.
    database: String,
    /// The store the test uses; `None` once dropped.
    store: Option<MySql>,
}

fn open(url: &str) -> MySql {
    MySql::open(url).unwrap_or_else(|e| unreachable("MariaDB", url, &e))
}

fn fixture() -> MySqlFixture {
    let database = unique_name("chatroom_test");
    let url = with_database(&mysql_url(), &database);
    let store = open(&url);
    assert_eq!(store.database(), database);
    MySqlFixture { url, database, store: Some(store) }
}

impl MySqlFixture {
    fn conn(&self) -> mysql::Conn {
        mysql::Conn::new(self.url.as_str()).expect("a direct connection")
    }
}

impl Fixture for MySqlFixture {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().expect("store is open")
    }

    fn reopen(&self) -> Box<dyn Store> {
        Box::new(open(&self.url))
    }
}

impl Drop for MySqlFixture {
    fn drop(&mut self) {
        // Close the pool first so that no connection of ours holds the database.
        drop(self.store.take());
        let dropped = mysql::Conn::new(with_database(&self.url, "").as_str())
            .and_then(|mut conn| conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.database)));
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.database);
        }
    }
}

store_suite!(fixture);

#[test]
fn schema_is_recorded_and_tables_use_innodb() {
    let f = fixture();
    let mut conn = f.conn();
    let version: Option<u32> = conn.query_first("SELECT MAX(version) FROM schema_version").unwrap();
    assert_eq!(version, Some(store::SCHEMA_VERSION));
    let engines: Vec<(String, String)> = conn
        .exec(
            "SELECT table_name, engine FROM information_schema.tables WHERE table_schema = ? ORDER BY table_name",
            (&f.database,),
        )
        .unwrap();
    let tables: Vec<&str> = engines.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        tables,
        [
            "chat_groups",
            "conversations",
            "friends",
            "group_members",
            "messages",
            "read_cursors",
            "schema_version",
            "users"
        ]
    );
    assert!(engines.iter().all(|(_, e)| e == "InnoDB"), "{engines:?}");
}

#[test]
fn newer_schema_is_refused() {
    let f = fixture();
    f.conn()
        .exec_drop(
            "INSERT INTO schema_version (version, description, applied_at_ms) VALUES (?, 'from the future', 0)",
            (store::SCHEMA_VERSION + 1,),
        )
        .unwrap();
    let err = MySql::open(&f.url).unwrap_err();
    assert!(matches!(err, store::Error::SchemaTooNew { .. }), "{err:?}");
}

#[test]
fn unreachable_server_is_reported_as_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let err = MySql::with_config(&store::mysql::Config {
        url: "mysql://chatroom:chatroom@127.0.0.1:1/chatroom_test".into(),
        connect_timeout: std::time::Duration::from_secs(2),
        ..store::mysql::Config::default()
    })
    .unwrap_err();
    assert!(matches!(err, store::Error::Unavailable(_)), "{err:?}");
}
