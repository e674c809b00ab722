//! The store suite against [`MySql`] on the MariaDB named by `CHATROOM_MYSQL_URL`, each
//! test in a database of its own (`chatroom_test_<random>`) that is dropped after it.

use mysql::prelude::Queryable;
use services::store::{self, MySql, Store};

use crate::store_suite::Fixture;
use crate::support::{drop_database, mysql_url, unique_name, unreachable, with_database};

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

    fn execute(&self, sql: &str) {
        self.conn().query_drop(sql).unwrap();
    }
}

impl Drop for MySqlFixture {
    fn drop(&mut self) {
        // Close the pool first so that no connection of ours holds the database.
        drop(self.store.take());
        drop_database(&self.database);
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
            "group_invitations",
            "group_members",
            "messages",
            "read_cursors",
            "schema_version",
            "session_tokens",
            "users"
        ]
    );
    assert!(engines.iter().all(|(_, e)| e == "InnoDB"), "{engines:?}");
}

/// A database from before private groups, made by undoing versions 3 and 2 on a fresh one
/// (leaving one added column behind, as a migration cut short would), is migrated when
/// opened: its groups become private with their members kept, who read everything they
/// could read before.
#[test]
fn a_version_1_database_gets_private_groups() {
    use crate::store_suite::{group_of, names, send, user, OPEN};
    let f = fixture();
    let store = f.store.as_ref().expect("store is open");
    let (alice, bob, carol) = (user(store, "alice"), user(store, "bob"), user(store, "carol"));
    let group = store.create_group(alice.id, "old", OPEN).unwrap();
    send(store, &alice, group_of(&group), "a-1", "from the old days");
    store.join_group(bob.id, group.id).unwrap();
    let mut conn = f.conn();
    for undo in [
        "DROP TABLE session_tokens",
        "DELETE FROM schema_version WHERE version = 3",
        "DROP TABLE group_invitations",
        "ALTER TABLE chat_groups DROP COLUMN shared_history",
        "ALTER TABLE group_members DROP COLUMN visible_after_seq",
        "DELETE FROM schema_version WHERE version = 2",
    ] {
        conn.query_drop(undo).unwrap();
    }
    conn.query_drop("UPDATE chat_groups SET is_public = 0").unwrap();

    let reopened = MySql::open(&f.url).expect("migrates");
    let version: Option<u32> = conn.query_first("SELECT MAX(version) FROM schema_version").unwrap();
    assert_eq!(version, Some(store::SCHEMA_VERSION));
    let migrated = reopened.group(group.id).unwrap();
    assert!(!migrated.public);
    assert_eq!(migrated.history, store::HistoryVisibility::Joined);
    assert_eq!(names(&reopened.group_members(group.id).unwrap()), ["alice", "bob"]);
    let page = reopened.history(bob.id, group_of(&group), store::Anchor::Latest, 10).unwrap();
    assert_eq!(page.messages.len(), 1, "bob still reads what he joined to");
    assert!(matches!(reopened.join_group(carol.id, group.id), Err(store::Error::NotFound(_))));
    reopened.invite(bob.id, group.id, carol.id).unwrap();
    reopened.join_group(carol.id, group.id).unwrap();
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

/// Connections start with small buffers (the patch in `third_party/mysql`) that grow for
/// a packet that needs more: packets far larger than those buffers go both ways, on a
/// direct connection and through the store.
#[test]
fn packets_larger_than_a_connections_first_buffers_go_through() {
    use services::store::Anchor;

    use crate::store_suite::{group_of, send, user, OPEN};

    let f = fixture();
    let mut conn = f.conn();
    let big: Option<String> = conn.query_first("SELECT REPEAT('x', 1000000)").unwrap();
    assert_eq!(big.map(|s| s.len()), Some(1_000_000));
    let echoed: Option<u64> = conn.exec_first("SELECT LENGTH(?)", (vec![b'y'; 3_000_000],)).unwrap();
    assert_eq!(echoed, Some(3_000_000));

    let store = f.store.as_ref().expect("store is open");
    let owner = user(store, "owner");
    let group = store.create_group(owner.id, "long letters", OPEN).unwrap();
    let body = "z".repeat(services::limits::BODY_MAX_BYTES);
    for n in 0..200 {
        send(store, &owner, group_of(&group), &format!("m{n}"), &body);
    }
    let page = store.history(owner.id, group_of(&group), Anchor::After(0), 200).unwrap();
    assert_eq!(page.messages.len(), 200);
    assert!(page.messages.iter().all(|m| m.body == body));
}

/// Many concurrent sends through one committer, so they are stored in batches: a group
/// and several pairs written at once, retries of messages in the same and in earlier
/// batches, and a sender who is not a member. Every conversation stays numbered 1, 2, 3,
/// ... without gaps, a retry gets its original, and the outsider is refused.
#[test]
fn batched_sends_keep_numbering_retries_and_rules() {
    use std::collections::BTreeSet;
    use std::sync::Barrier;

    use services::store::{Anchor, NewMessage};

    use crate::store_suite::{direct, group_of, user, OPEN};

    let f = fixture();
    let url = f.url.clone();
    let batched = MySql::with_config(&store::mysql::Config {
        url,
        committers: 1,
        max_batch: 64,
        ..store::mysql::Config::default()
    })
    .unwrap();
    let store: &dyn Store = &batched;
    let owner = user(store, "owner");
    let outsider = user(store, "outsider");
    let group = store.create_group(owner.id, "busy", OPEN).unwrap();
    const THREADS: usize = 12;
    const EACH: usize = 15;
    let senders: Vec<_> = (0..THREADS)
        .map(|i| {
            let u = user(store, &format!("sender{i}"));
            store.join_group(u.id, group.id).unwrap();
            u
        })
        .collect();
    // Each pair's row exists before the run, so that its sends are batched too.
    for pair in senders.chunks(2) {
        crate::store_suite::send(store, &pair[0], direct(&pair[0], &pair[1]), "opening", "hi");
    }
    let barrier = Barrier::new(THREADS + 1);
    let results: Vec<(usize, String, services::store::Sent)> = std::thread::scope(|s| {
        let mut handles: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(i, sender)| {
                let (barrier, senders, group) = (&barrier, &senders, &group);
                s.spawn(move || {
                    barrier.wait();
                    let mut out = Vec::new();
                    for n in 0..EACH {
                        // Alternately to the group and to the thread's partner; every
                        // third message is sent twice, as a client retrying would.
                        let conversation =
                            if n % 2 == 0 { group_of(group) } else { direct(sender, &senders[i ^ 1]) };
                        let id = format!("{i}-{n}");
                        let tries = if n % 3 == 0 { 2 } else { 1 };
                        for _ in 0..tries {
                            let sent = store
                                .send(&NewMessage {
                                    sender: sender.id,
                                    conversation,
                                    client_msg_id: &id,
                                    body: "batched",
                                })
                                .unwrap();
                            out.push((i, id.clone(), sent));
                        }
                    }
                    out
                })
            })
            .collect();
        let outsider = &outsider;
        let group = &group;
        let barrier = &barrier;
        handles.push(s.spawn(move || {
            barrier.wait();
            for n in 0..EACH {
                let refused = store.send(&NewMessage {
                    sender: outsider.id,
                    conversation: group_of(group),
                    client_msg_id: &format!("out-{n}"),
                    body: "let me in",
                });
                assert!(matches!(refused, Err(store::Error::PermissionDenied(_))), "{refused:?}");
            }
            Vec::new()
        }));
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });

    // A retry answers with the message its first attempt stored.
    let mut firsts = std::collections::HashMap::new();
    for (_, id, sent) in &results {
        let first = firsts.entry(id.clone()).or_insert_with(|| sent.message.clone());
        assert_eq!(*first, sent.message, "retry of {id}");
    }
    assert_eq!(results.iter().filter(|(_, _, s)| !s.duplicate).count(), firsts.len());

    let group_page = store.history(owner.id, group_of(&group), Anchor::After(0), 500).unwrap();
    let group_seqs: Vec<u64> = group_page.messages.iter().map(|m| m.seq).collect();
    let expected = (THREADS * EACH.div_ceil(2)) as u64;
    assert_eq!(group_seqs, (1..=expected).collect::<Vec<_>>());
    for pair in senders.chunks(2) {
        let page = store.history(pair[0].id, direct(&pair[0], &pair[1]), Anchor::After(0), 500).unwrap();
        let got: BTreeSet<u64> = page.messages.iter().map(|m| m.seq).collect();
        let n = 1 + 2 * (EACH / 2) as u64;
        assert_eq!(got, (1..=n).collect(), "pair {} and {}", pair[0].name, pair[1].name);
    }
    // Each sender's messages are stored in the order it sent them, and its read cursor
    // is at its newest group message.
    for (i, sender) in senders.iter().enumerate() {
        let ids: Vec<&str> = group_page
            .messages
            .iter()
            .filter(|m| m.sender == sender.id)
            .map(|m| m.client_msg_id.as_str())
            .collect();
        let expected: Vec<String> = (0..EACH).step_by(2).map(|n| format!("{i}-{n}")).collect();
        assert_eq!(ids, expected);
        let newest = group_page.messages.iter().filter(|m| m.sender == sender.id).map(|m| m.seq).max();
        let state = store
            .conversations(sender.id)
            .unwrap()
            .into_iter()
            .find(|c| c.conversation == group_of(&group))
            .unwrap();
        assert!(Some(state.read_seq) >= newest, "{state:?} vs {newest:?}");
    }
}
