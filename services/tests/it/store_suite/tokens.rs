//! Session tokens: issued, found, expired, trimmed per user, revoked one by one and all
//! at once by a password change.

use services::session_token;
use services::store::{password_check, NewToken};

use super::*;

/// A token for `user` (whose password hash is still [`HASH`]) that expires in an hour.
fn token(user: &User, keep: usize) -> NewToken {
    let (_, hash) = session_token::generate();
    NewToken {
        user: user.id,
        hash,
        expires_at_ms: now_ms() + 3_600_000,
        keep,
        password_check: password_check(HASH),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn session_tokens_find_their_user_until_revoked(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let a = token(&alice, 10);
    let b = token(&bob, 10);
    store.add_session_token(&a).unwrap();
    store.add_session_token(&b).unwrap();
    assert_eq!(store.session_token_user(&a.hash).unwrap(), alice);
    assert_eq!(store.session_token_user(&b.hash).unwrap(), bob);
    assert_eq!(f.reopen().session_token_user(&a.hash).unwrap(), alice, "tokens are durable");
    assert_not_found(store.session_token_user(&[7; 32]));

    assert!(store.revoke_session_token(&a.hash).unwrap());
    assert!(!store.revoke_session_token(&a.hash).unwrap(), "revoked already");
    assert_not_found(store.session_token_user(&a.hash));
    assert_eq!(store.session_token_user(&b.hash).unwrap(), bob, "another user's token is untouched");
    assert_not_found(store.add_session_token(&NewToken { user: UserId(999_999), ..token(&alice, 10) }));
}

pub fn expired_session_tokens_are_refused_and_deleted(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let expired = NewToken { expires_at_ms: now_ms() - 1, ..token(&alice, 10) };
    store.add_session_token(&expired).unwrap();
    assert_not_found(store.session_token_user(&expired.hash));
    assert!(!store.revoke_session_token(&expired.hash).unwrap(), "the refused token was deleted");

    // An expired token is also swept when the user gets a new one.
    let expired = NewToken { expires_at_ms: now_ms() - 1, ..token(&alice, 10) };
    store.add_session_token(&expired).unwrap();
    let fresh = token(&alice, 10);
    store.add_session_token(&fresh).unwrap();
    assert!(!store.revoke_session_token(&expired.hash).unwrap(), "swept at the next issue");
    assert_eq!(store.session_token_user(&fresh.hash).unwrap(), alice);
}

pub fn each_user_keeps_only_the_newest_session_tokens(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let bobs = token(&bob, 1);
    store.add_session_token(&bobs).unwrap();
    let tokens: Vec<NewToken> = (0..5).map(|_| token(&alice, 3)).collect();
    for t in &tokens {
        store.add_session_token(t).unwrap();
    }
    for old in &tokens[..2] {
        assert_not_found(store.session_token_user(&old.hash));
    }
    for kept in &tokens[2..] {
        assert_eq!(store.session_token_user(&kept.hash).unwrap(), alice);
    }
    assert_eq!(store.session_token_user(&bobs.hash).unwrap(), bob, "the bound is per user");
    // Keeping zero would revoke the new token at once; at least the new one stays.
    let last = token(&alice, 0);
    store.add_session_token(&last).unwrap();
    assert_eq!(store.session_token_user(&last.hash).unwrap(), alice);
    assert_not_found(store.session_token_user(&tokens[4].hash));
}

pub fn a_password_change_revokes_every_session_token_of_the_user(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let alices: Vec<NewToken> = (0..3).map(|_| token(&alice, 10)).collect();
    for t in &alices {
        store.add_session_token(t).unwrap();
    }
    let bobs = token(&bob, 10);
    store.add_session_token(&bobs).unwrap();

    let new_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaG5ld2hhc2huZXdoYXNo";
    store.set_password_hash(alice.id, new_hash).unwrap();
    assert_eq!(store.credentials("alice").unwrap().password_hash, new_hash);
    for t in &alices {
        assert_not_found(store.session_token_user(&t.hash));
    }
    assert_eq!(store.session_token_user(&bobs.hash).unwrap(), bob);
    assert_eq!(store.credentials("bob").unwrap().password_hash, HASH);

    // A login that checked the old password before the change gets no token after it.
    let raced = token(&alice, 10);
    let err = store.add_session_token(&raced).unwrap_err();
    assert!(matches!(err, services::store::Error::PermissionDenied(_)), "{err:?}");
    assert_not_found(store.session_token_user(&raced.hash));
    let checked = NewToken { password_check: password_check(new_hash), ..token(&alice, 10) };
    store.add_session_token(&checked).unwrap();
    assert_eq!(store.session_token_user(&checked.hash).unwrap(), alice, "a login with the new password");

    assert_not_found(store.set_password_hash(UserId(999_999), new_hash));
    assert_invalid(store.set_password_hash(alice.id, ""));
    assert_eq!(
        store.credentials("alice").unwrap().password_hash,
        new_hash,
        "a refused change changes nothing"
    );
}
