//! The shared-secret mechanism: both sides prove that they know the same secret,
//! without sending it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{ClientHandshake, Message, Prove, ServerHandshake, Verdict, Verify};

/// The mechanism's name on the wire.
pub const MECHANISM: &str = "hmac-sha256";
/// Bytes of each side's nonce.
const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// What the server's tag covers besides the nonces. The two labels differ, so
/// neither side's tag can be played back as the other's.
const SERVER_LABEL: &[u8] = b"rpc-core hmac-sha256 server";
/// What the client's tag covers besides the nonces.
const CLIENT_LABEL: &[u8] = b"rpc-core hmac-sha256 client";

/// Authentication by a secret both sides hold, such as a cluster's.
///
/// The client sends a fresh random nonce (`hello`); the server answers with a
/// fresh nonce of its own and its tag, HMAC-SHA256 keyed with the secret over
/// the server label and both nonces (`challenge`); the client checks that tag
/// and answers with its own over the client label and both nonces (`proof`);
/// the server checks it and says `ok`. The secret never crosses the wire; a
/// stranger cannot make either tag, and a recorded one is worthless on another
/// connection, whose nonces differ. Tags are compared in constant time.
///
/// The exchange proves who is at the other end when the connection opens; it
/// does not encrypt or sign what follows, so it keeps out whoever can connect,
/// not whoever can alter the traffic on the way (TLS is for that).
///
/// Use a secret of 32 random bytes; its `Debug` form never shows it.
#[derive(Clone)]
pub struct SharedSecret {
    /// The secret, the HMAC key.
    key: Arc<[u8]>,
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSecret").finish_non_exhaustive()
    }
}

impl SharedSecret {
    /// The mechanism for `secret`.
    pub fn new(secret: &[u8]) -> SharedSecret {
        SharedSecret { key: secret.into() }
    }

    /// The HMAC over `label` and both nonces, ready to finalize or verify.
    fn tag(&self, label: &[u8], client_nonce: &[u8], server_nonce: &[u8]) -> Hmac<Sha256> {
        // An HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(client_nonce);
        mac.update(server_nonce);
        mac
    }
}

impl Verify for SharedSecret {
    fn mechanism(&self) -> &str {
        MECHANISM
    }

    fn start(&self, _peer: SocketAddr) -> Box<dyn ServerHandshake> {
        Box::new(ServerSide { secret: self.clone(), nonces: None })
    }
}

impl Prove for SharedSecret {
    fn mechanism(&self) -> &str {
        MECHANISM
    }

    fn start(&self) -> (Box<dyn ClientHandshake>, Message) {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let hello = Message::new("hello", nonce.to_vec());
        (Box::new(ClientSide { secret: self.clone(), nonce, answered: false, verified: false }), hello)
    }
}

/// The server's side of one connection.
struct ServerSide {
    /// The secret.
    secret: SharedSecret,
    /// The client's and our nonce, once the client said hello.
    nonces: Option<([u8; NONCE_LEN], [u8; NONCE_LEN])>,
}

impl ServerHandshake for ServerSide {
    fn step(&mut self, message: &Message) -> Verdict {
        match (message.step.as_str(), self.nonces) {
            ("hello", None) => {
                let Ok(client_nonce) = <[u8; NONCE_LEN]>::try_from(&message.body[..]) else {
                    return Verdict::Refuse(format!("its nonce is not {NONCE_LEN} bytes"));
                };
                let server_nonce: [u8; NONCE_LEN] = rand::random();
                self.nonces = Some((client_nonce, server_nonce));
                let tag = self.secret.tag(SERVER_LABEL, &client_nonce, &server_nonce).finalize();
                let mut body = server_nonce.to_vec();
                body.extend_from_slice(&tag.into_bytes());
                Verdict::Continue(Message::new("challenge", body))
            }
            ("proof", Some((client_nonce, server_nonce))) => {
                let mac = self.secret.tag(CLIENT_LABEL, &client_nonce, &server_nonce);
                // `verify_slice` compares in constant time.
                match mac.verify_slice(&message.body) {
                    Ok(()) => Verdict::Accept,
                    Err(_) => Verdict::Refuse("its proof does not match the shared secret".to_owned()),
                }
            }
            (step, _) => Verdict::Refuse(format!("unexpected step '{step}'")),
        }
    }
}

/// The client's side of one connection.
struct ClientSide {
    /// The secret.
    secret: SharedSecret,
    /// The nonce sent in `hello`.
    nonce: [u8; NONCE_LEN],
    /// Whether the challenge was answered (it comes once).
    answered: bool,
    /// Whether the server's tag in the challenge matched: only then may `ok` end
    /// the handshake.
    verified: bool,
}

impl ClientHandshake for ClientSide {
    fn step(&mut self, message: &Message) -> Result<Option<Message>, String> {
        if message.step != "challenge" || self.answered {
            return Err(format!("the server sent an unexpected step '{}'", message.step));
        }
        self.answered = true;
        if message.body.len() != NONCE_LEN + TAG_LEN {
            return Err(format!("the server's challenge is not {} bytes", NONCE_LEN + TAG_LEN));
        }
        let (server_nonce, server_tag) = message.body.split_at(NONCE_LEN);
        if self.secret.tag(SERVER_LABEL, &self.nonce, server_nonce).verify_slice(server_tag).is_err() {
            return Err("the server did not prove that it knows the shared secret".to_owned());
        }
        self.verified = true;
        let tag = self.secret.tag(CLIENT_LABEL, &self.nonce, server_nonce).finalize();
        Ok(Some(Message::new("proof", tag.into_bytes().to_vec())))
    }

    fn finish(&self) -> Result<(), String> {
        if self.verified {
            Ok(())
        } else {
            Err("the server said ok without proving that it knows the shared secret".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(client_secret: &[u8], server_secret: &[u8]) -> Result<Verdict, String> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let (mut client, hello) = Prove::start(&SharedSecret::new(client_secret));
        let mut server = Verify::start(&SharedSecret::new(server_secret), peer);
        let Verdict::Continue(challenge) = server.step(&hello) else { panic!("hello refused") };
        let proof = client.step(&challenge)?.expect("a proof");
        Ok(server.step(&proof))
    }

    #[test]
    fn the_same_secret_passes_both_ways() {
        assert_eq!(run(b"s3cret", b"s3cret"), Ok(Verdict::Accept));
    }

    #[test]
    fn a_client_refuses_a_server_with_another_secret() {
        let err = run(b"s3cret", b"other").unwrap_err();
        assert!(err.contains("did not prove"), "{err}");
    }

    #[test]
    fn a_replayed_proof_fails_on_a_new_connection() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let secret = SharedSecret::new(b"s3cret");
        let (mut client, hello) = Prove::start(&secret);
        let mut first = Verify::start(&secret, peer);
        let Verdict::Continue(challenge) = first.step(&hello) else { panic!("hello refused") };
        let proof = client.step(&challenge).unwrap().unwrap();
        // The same hello and proof, recorded and played to another connection.
        let mut second = Verify::start(&secret, peer);
        assert!(matches!(second.step(&hello), Verdict::Continue(_)));
        assert!(matches!(second.step(&proof), Verdict::Refuse(_)));
        // A server's tag cannot stand in for a client's proof either.
        let mut third = Verify::start(&secret, peer);
        let Verdict::Continue(challenge) = third.step(&hello) else { panic!("hello refused") };
        let reflected = Message::new("proof", challenge.body[NONCE_LEN..].to_vec());
        assert!(matches!(third.step(&reflected), Verdict::Refuse(_)));
    }

    #[test]
    fn a_proof_without_hello_is_refused() {
        let mut server = Verify::start(&SharedSecret::new(b"s"), SocketAddr::from(([127, 0, 0, 1], 1)));
        assert!(matches!(server.step(&Message::new("proof", vec![0; TAG_LEN])), Verdict::Refuse(_)));
    }
}
