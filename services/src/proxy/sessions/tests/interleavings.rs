//! Each interleaving of two session operations, forced with gates in the presence
//! table: an operation stopped in the middle of its Redis round trip while another runs.

use super::*;

/// Alice logged in on connection 1 and logging out there, her lease's release held at
/// its gate: the logout, the gate, and connection 2, not yet used.
fn a_logout_held_at_its_release(rig: &Rig) -> (thread::JoinHandle<Option<UserId>>, Held, Conn) {
    let c1 = Conn::new(1);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let release = rig.presence.hold(Op::Release, false);
    let logout = rig.spawn(move |s| s.end(ConnectionId(1)));
    release.reached();
    (logout, release, Conn::new(2))
}

#[test]
fn a_connection_closed_while_its_login_claims_gets_no_session_and_keeps_no_lease() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let claim = rig.presence.hold(Op::Claim, false);
    let login = {
        let c1 = c1.clone();
        rig.spawn(move |s| s.login(ALICE, &c1))
    };
    claim.reached();
    // The reset: the server marks the connection closed, then reports the disconnect,
    // which finds no session yet.
    c1.close();
    assert_eq!(rig.sessions.end(c1.id), None);
    claim.release();
    assert!(matches!(finishes(login), Err(LoginError::Closed)));
    assert!(rig.sessions.is_empty());
    assert_eq!(rig.holder(ALICE), None);
    assert!(rig.announced.made().is_empty(), "alice was offline before, and is still");
}

#[test]
fn a_connection_closed_during_a_login_that_took_a_lease_from_another_proxy_announces_offline() {
    let rig = Rig::new();
    rig.claim_elsewhere(ALICE);
    let c1 = Conn::new(1);
    c1.close();
    assert!(matches!(rig.sessions.login(ALICE, &c1), Err(LoginError::Closed)));
    assert_eq!(rig.holder(ALICE), None);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
}

#[test]
fn a_connection_closed_after_its_login_bound_is_ended_by_the_disconnect() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    c1.close();
    assert_eq!(rig.sessions.end(c1.id), Some(ALICE));
    assert_eq!(rig.holder(ALICE), None);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
}

#[test]
fn of_two_logins_on_one_connection_the_later_stays_and_the_earlier_ends_properly() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let claim = rig.presence.hold(Op::Claim, false);
    let alice = {
        let c1 = c1.clone();
        rig.spawn(move |s| s.login(ALICE, &c1))
    };
    claim.reached();
    // Bob's login on the same connection finishes while alice's claim runs.
    let _ = rig.sessions.login(BOB, &c1).unwrap();
    claim.release();
    let _ = finishes(alice).unwrap();
    assert_eq!(rig.sessions.user_of(c1.id), Some(ALICE));
    assert!(rig.sessions.connection_of(BOB).is_none());
    assert_eq!(rig.holder(BOB), None, "bob's lease is released");
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
    assert_eq!(rig.announced.made(), [(BOB, false)]);
}

#[test]
fn a_logout_whose_release_is_in_flight_leaves_the_lease_to_a_newer_login() {
    let rig = Rig::new();
    let (logout, release, c2) = a_logout_held_at_its_release(&rig);
    let login = {
        let c2 = c2.clone();
        rig.spawn(move |s| s.login(ALICE, &c2))
    };
    rig.until_waiting(1);
    release.release();
    assert_eq!(finishes(logout), Some(ALICE));
    let login = finishes(login).unwrap();
    // The release came first, then the claim: the lease is the new session's.
    assert_eq!(login, Login { epoch: login.epoch, user: ALICE, replaced: false, elsewhere: None });
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
    assert_eq!(rig.sessions.user_of(c2.id), Some(ALICE));
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
}

#[test]
fn a_login_whose_claim_is_in_flight_keeps_its_lease_when_the_old_session_ends() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let claim = rig.presence.hold(Op::Claim, false);
    let login = {
        let c2 = c2.clone();
        rig.spawn(move |s| s.login(ALICE, &c2))
    };
    claim.reached();
    let logout = rig.spawn(move |s| s.end(ConnectionId(1)));
    rig.until_waiting(1);
    claim.release();
    let _ = finishes(login).unwrap();
    assert_eq!(finishes(logout), Some(ALICE));
    // The release found the newer session and left its lease alone.
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
    assert_eq!(rig.sessions.user_of(c2.id), Some(ALICE));
    assert!(rig.announced.made().is_empty(), "alice never went offline");
}

#[test]
fn a_late_kick_spares_a_newer_session_here() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    // Alice logs in on the other proxy, which will ask this one to kick; meanwhile she
    // logs in here again.
    rig.claim_elsewhere(ALICE);
    let claim = rig.presence.hold(Op::Claim, false);
    let login = {
        let c2 = c2.clone();
        rig.spawn(move |s| s.login(ALICE, &c2))
    };
    claim.reached();
    let kick = rig.spawn(move |s| s.kick_stale(ALICE, OTHER, "moved"));
    rig.until_waiting(1);
    claim.release();
    let login = finishes(login).unwrap();
    assert_eq!(login.elsewhere.as_deref(), Some(OTHER), "this login asks the other proxy to kick in turn");
    assert!(!finishes(kick).unwrap(), "the newer session is spared");
    assert_eq!(c2.kicked(), None);
    assert_eq!(rig.sessions.user_of(c2.id), Some(ALICE));
    assert_eq!(c1.kicked().as_deref(), Some(REPLACED));
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
}

#[test]
fn a_kick_looking_the_lease_up_ends_the_older_session_before_a_login_here_claims() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    rig.claim_elsewhere(ALICE);
    let lookup = rig.presence.hold(Op::Lookup, false);
    let kick = rig.spawn(move |s| s.kick_stale(ALICE, OTHER, "moved"));
    lookup.reached();
    let login = {
        let c2 = c2.clone();
        rig.spawn(move |s| s.login(ALICE, &c2))
    };
    rig.until_waiting(1);
    lookup.release();
    assert!(finishes(kick).unwrap());
    assert_eq!(c1.kicked().as_deref(), Some("moved"));
    let login = finishes(login).unwrap();
    assert_eq!(
        login,
        Login { epoch: login.epoch, user: ALICE, replaced: true, elsewhere: Some(OTHER.into()) }
    );
    assert_eq!(c2.kicked(), None);
    assert_eq!(rig.sessions.user_of(c2.id), Some(ALICE));
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
}

#[test]
fn a_renewal_in_flight_blocks_no_login_or_logout_and_resurrects_nothing() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let renew_all = rig.presence.hold(Op::RenewAll, false);
    let renewal = rig.spawn(|s| s.renew());
    renew_all.reached();
    // While every lease is being renewed, bob logs in and alice logs out.
    let bob = {
        let c2 = c2.clone();
        rig.spawn(move |s| s.login(BOB, &c2))
    };
    let _ = finishes(bob).unwrap();
    assert_eq!(finishes(rig.spawn(|s| s.end(ConnectionId(1)))), Some(ALICE));
    renew_all.release();
    // Alice's lease was gone when the renewal ran: lost, for a session that is gone too.
    assert_eq!(finishes(renewal).unwrap(), 0);
    assert_eq!(rig.holder(ALICE), None);
    assert!(rig.sessions.connection_of(ALICE).is_none());
    assert_eq!(rig.sessions.user_of(c2.id), Some(BOB));
    assert_eq!(c2.kicked(), None);
}

#[test]
fn a_lease_renewal_found_lost_ends_only_the_session_that_still_owns_it() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    rig.claim_elsewhere(ALICE);
    // The renewal finds alice's lease lost, and stops before it reconciles.
    let renew_all = rig.presence.hold(Op::RenewAll, true);
    let renewal = rig.spawn(|s| s.renew());
    renew_all.reached();
    // Alice logs in here again, taking the lease back.
    let login = rig.sessions.login(ALICE, &c2).unwrap();
    assert_eq!(login.elsewhere.as_deref(), Some(OTHER));
    renew_all.release();
    assert_eq!(finishes(renewal).unwrap(), 0);
    assert_eq!(c2.kicked(), None, "the newer session is spared");
    assert_eq!(rig.sessions.user_of(c2.id), Some(ALICE));
    assert_eq!(c1.kicked().as_deref(), Some(REPLACED));
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
}

#[test]
fn a_release_in_flight_blocks_no_other_users_login() {
    let rig = Rig::new();
    let (logout, release, c2) = a_logout_held_at_its_release(&rig);
    let bob = {
        let c2 = c2.clone();
        rig.spawn(move |s| s.login(BOB, &c2))
    };
    let _ = finishes(bob).unwrap();
    assert_eq!(rig.sessions.user_of(c2.id), Some(BOB));
    release.release();
    assert_eq!(finishes(logout), Some(ALICE));
}
