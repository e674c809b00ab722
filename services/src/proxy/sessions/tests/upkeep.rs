//! The upkeep of leases after login, each operation on its own: renewal (and taking a
//! lost lease back), kicks from another proxy, sweeps and retries of announcements.

use super::*;

#[test]
fn renewal_renews_every_session_and_ends_only_those_whose_lease_was_lost() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let _ = rig.sessions.login(BOB, &c2).unwrap();
    rig.claim_elsewhere(BOB);
    assert_eq!(rig.sessions.renew().unwrap(), 1);
    assert_eq!(rig.presence.renewed.lock().unwrap().clone(), [vec![ALICE, BOB]]);
    assert_eq!(rig.sessions.user_of(c1.id), Some(ALICE));
    assert_eq!(c1.kicked(), None);
    assert_eq!(c2.kicked().as_deref(), Some(LEASE_LOST));
    assert!(rig.sessions.connection_of(BOB).is_none());
    assert_eq!(rig.holder(BOB).as_deref(), Some(OTHER), "not released");
    assert!(rig.announced.made().is_empty());
    // With no session left to renew, nothing is asked of the table.
    let _ = rig.sessions.end(c1.id);
    assert_eq!(rig.sessions.renew().unwrap(), 0);
    assert_eq!(rig.presence.renewed.lock().unwrap().len(), 1);
}

#[test]
fn renewal_takes_back_a_lease_the_table_lost_and_keeps_the_session_without_announcing() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let login = rig.sessions.login(ALICE, &c1).unwrap();
    rig.sessions.announce_online(&login);
    // The table loses alice's lease, as a presence backend restarted empty does.
    assert!(rig.presence.memory.release(ALICE, ME).unwrap());
    assert_eq!(rig.sessions.renew().unwrap(), 0);
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME), "taken back");
    assert_eq!(rig.sessions.user_of(c1.id), Some(ALICE));
    assert_eq!(c1.kicked(), None);
    assert_eq!(rig.announced.made(), [(ALICE, true)], "renewed within the TTL: nobody was told otherwise");
}

#[test]
fn renewal_takes_back_a_lease_that_lapsed_and_was_swept_and_announces_the_user_online() {
    let ttl = Duration::from_millis(50);
    let rig = Rig::with_ttl(ttl);
    let c1 = Conn::new(1);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    // The proxy stalls past the TTL; a sweep (here or elsewhere) announces alice offline.
    thread::sleep(ttl * 2);
    assert_eq!(rig.sessions.sweep(10, Instant::now() + STUCK), 1);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
    assert_eq!(rig.sessions.renew().unwrap(), 0);
    assert_eq!(rig.sessions.user_of(c1.id), Some(ALICE));
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
    assert_eq!(rig.announced.made(), [(ALICE, false), (ALICE, true)], "friends hear she is back");
}

#[test]
fn a_session_that_ends_while_its_lease_is_taken_back_leaves_no_lease() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    assert!(rig.presence.memory.release(ALICE, ME).unwrap());
    let reclaim = rig.presence.hold(Op::Reclaim, true);
    let renewal = rig.spawn(|s| s.renew());
    reclaim.reached();
    // Alice logs out while her lease is being taken back; the release waits for the lane.
    let logout = rig.spawn(|s| s.end(ConnectionId(1)));
    rig.until_waiting(1);
    reclaim.release();
    assert_eq!(finishes(renewal).unwrap(), 0);
    assert_eq!(finishes(logout), Some(ALICE));
    assert_eq!(rig.holder(ALICE), None, "the lease taken back was released");
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
}

#[test]
fn a_kick_ends_a_session_whose_lease_another_proxy_holds_and_spares_one_this_proxy_holds() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let _ = rig.sessions.login(BOB, &c2).unwrap();
    // Bob's lease is still this proxy's: the kick is about an older session.
    assert!(!rig.sessions.kick_stale(BOB, OTHER, "moved").unwrap());
    assert_eq!(c2.kicked(), None);
    // A kick this proxy sent itself is ignored.
    assert!(!rig.sessions.kick_stale(ALICE, ME, "moved").unwrap());

    rig.claim_elsewhere(ALICE);
    assert!(rig.sessions.kick_stale(ALICE, OTHER, "moved").unwrap());
    assert_eq!(c1.kicked().as_deref(), Some("moved"));
    assert!(rig.sessions.connection_of(ALICE).is_none());
    assert_eq!(rig.holder(ALICE).as_deref(), Some(OTHER), "not released");
    assert!(!rig.sessions.kick_stale(ALICE, OTHER, "moved").unwrap(), "nothing left to kick");
    assert!(rig.announced.made().is_empty());
}

#[test]
fn a_sweep_announces_each_lapsed_lease_offline_once() {
    let rig = Rig::new();
    rig.presence.memory.claim(ALICE, OTHER, Duration::from_millis(1)).unwrap();
    rig.presence.memory.claim(BOB, OTHER, TTL).unwrap();
    // The lease lapses on the clock.
    let start = Instant::now();
    while rig.holder(ALICE).is_some() {
        assert!(start.elapsed() < STUCK);
        thread::yield_now();
    }
    let until = Instant::now() + STUCK;
    assert_eq!(rig.sessions.sweep(1, until), 1);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
    assert_eq!(rig.sessions.sweep(1, until), 0);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
}

#[test]
fn a_failed_announcement_is_sent_again_until_taken() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    rig.announced.failing.store(true, Ordering::SeqCst);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let _ = rig.sessions.end(c1.id);
    assert_eq!(rig.sessions.unannounced(), 1);
    rig.announced.failing.store(false, Ordering::SeqCst);
    assert_eq!(rig.sessions.retry(10), 1);
    assert_eq!(rig.sessions.unannounced(), 0);
    assert_eq!(rig.sessions.retry(10), 0);
    assert_eq!(rig.announced.made(), [(ALICE, false), (ALICE, false)]);
}
