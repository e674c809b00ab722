//! The least code that speaks rpc-core's framing, for the two mio references.
//!
//! The layout is rpc-core's (`rpc_core::frame`, `docs/PROTOCOL.md`): a 4-byte
//! big-endian length, an 18-byte header (version, kind, status, flags, call
//! id, timeout, name lengths), the service and method names, the body. The
//! references serve one method, so they skip the names instead of routing on
//! them, and validate only what they need to find the next frame. Keeping
//! this codec separate from rpc-core's means the references cost what the
//! architecture costs, and nothing that rpc-core's codec adds.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
const LENGTH_LEN: usize = 4;
/// Bytes of the fixed header after the length prefix.
const HEADER_LEN: usize = 18;
/// Largest frame the references accept, after the length prefix.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Frame kind of a request.
const REQUEST: u8 = 1;
/// Frame kind of a response.
const RESPONSE: u8 = 2;
/// Frame kind of a ping.
const PING: u8 = 4;
/// Frame kind of a pong.
const PONG: u8 = 5;

/// What the references care about in an incoming frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A request: answer `call_id` with a response.
    Request {
        /// The caller's id for the call.
        call_id: u64,
        /// The protobuf body.
        body: Bytes,
    },
    /// A ping: answer with a pong of the same id.
    Ping {
        /// Echoed in the pong.
        call_id: u64,
    },
    /// Anything else (pushes, pongs): nothing to answer.
    Other,
}

/// Takes one whole frame off the front of `buf`; `Ok(None)` until it has arrived.
///
/// # Errors
///
/// A short description when the length is out of range; the connection
/// should be closed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Incoming>, &'static str> {
    if buf.len() < LENGTH_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(HEADER_LEN..=MAX_FRAME).contains(&len) {
        return Err("frame length out of range");
    }
    if buf.len() < LENGTH_LEN + len {
        return Ok(None);
    }
    let kind = buf[5];
    let call_id = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    let names = buf[20] as usize + buf[21] as usize;
    if HEADER_LEN + names > len {
        return Err("names run past the end of the frame");
    }
    Ok(Some(match kind {
        REQUEST => {
            buf.advance(LENGTH_LEN + HEADER_LEN + names);
            Incoming::Request { call_id, body: buf.split_to(len - HEADER_LEN - names).freeze() }
        }
        PING => {
            buf.advance(LENGTH_LEN + len);
            Incoming::Ping { call_id }
        }
        _ => {
            buf.advance(LENGTH_LEN + len);
            Incoming::Other
        }
    }))
}

/// Appends a successful response to `call_id` carrying `body`.
pub fn put_response(dst: &mut BytesMut, call_id: u64, body: &[u8]) {
    put_header(dst, RESPONSE, call_id, body.len());
    dst.put_slice(body);
}

/// Appends a pong answering the ping `call_id`.
pub fn put_pong(dst: &mut BytesMut, call_id: u64) {
    put_header(dst, PONG, call_id, 0);
}

fn put_header(dst: &mut BytesMut, kind: u8, call_id: u64, body_len: usize) {
    dst.reserve(LENGTH_LEN + HEADER_LEN + body_len);
    dst.put_u32((HEADER_LEN + body_len) as u32);
    // Version, kind, status (Ok), flags.
    dst.put_slice(&[1, kind, 0, 0]);
    dst.put_u64(call_id);
    // No timeout, no service name, no method name.
    dst.put_u32(0);
    dst.put_u16(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_core::frame;

    #[test]
    fn reads_rpc_core_requests_and_rpc_core_reads_its_responses() {
        let mut buf = BytesMut::new();
        frame::put_request(&mut buf, 7, 250, "bench.Echo", "Say", b"hello");
        frame::put_control(&mut buf, frame::Kind::Ping, 9);
        frame::put_push(&mut buf, "a", "b", b"x");
        let mut partial = buf.split_to(10);
        assert_eq!(decode(&mut partial), Ok(None));
        partial.unsplit(buf);
        let mut buf = partial;
        assert_eq!(decode(&mut buf), Ok(Some(Incoming::Request { call_id: 7, body: Bytes::from("hello") })));
        assert_eq!(decode(&mut buf), Ok(Some(Incoming::Ping { call_id: 9 })));
        assert_eq!(decode(&mut buf), Ok(Some(Incoming::Other)));
        assert_eq!(decode(&mut buf), Ok(None));

        let mut out = BytesMut::new();
        put_response(&mut out, 7, b"hello");
        put_pong(&mut out, 9);
        let f = frame::decode(&mut out, frame::DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((f.kind, f.call_id), (frame::Kind::Response, 7));
        assert_eq!(&f.into_result().unwrap()[..], b"hello");
        let f = frame::decode(&mut out, frame::DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((f.kind, f.call_id), (frame::Kind::Pong, 9));
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 1, 0][..]);
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0xffu8, 0, 0, 0][..]);
        assert!(decode(&mut buf).is_err());
    }
}
