//! The wire format: one length-prefixed frame per message.
//!
//! ```text
//! offset  size  field
//! 0       4     length of everything after this field (u32, big-endian)
//! 4       1     version (1)
//! 5       1     kind (see `Kind`)
//! 6       1     status code (responses; 0 otherwise)
//! 7       1     flags (responses: the outcome of a failed call; 0 otherwise)
//! 8       8     call id (u64, big-endian)
//! 16      4     timeout in milliseconds (requests; 0 = none)
//! 20      1     service name length S
//! 21      1     method name length M
//! 22      S     service name (UTF-8)
//! 22+S    M     method name (UTF-8)
//! 22+S+M  ...   body: protobuf message, or the UTF-8 error message of a failed response
//! ```
//!
//! `docs/PROTOCOL.md` describes the same layout with the rules for each kind.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::status::{Code, Outcome, Status};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LENGTH_LEN: usize = 4;
/// Bytes of the fixed header after the length prefix, before the names.
pub const HEADER_LEN: usize = 18;
/// Default largest frame accepted, counted after the length prefix.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// The go-away reason that starts a graceful shutdown: send no new calls here.
pub const SHUTDOWN_REASON: &str = "server is shutting down";
/// The go-away reason that ends a graceful shutdown, the last frame before the close:
/// every call the server read was answered, so a call still unanswered never ran.
pub const DRAINED_REASON: &str = "server stopped after answering every call it read";
/// Longest service or method name (it is sent with a one-byte length).
pub const MAX_NAME: usize = 255;
/// Response flag: the handler never ran (see [`Outcome::NotRun`]).
pub const FLAG_NOT_RUN: u8 = 0x01;
/// Response flag: whether the call ran is unknown (see [`Outcome::Unknown`]).
pub const FLAG_OUTCOME_UNKNOWN: u8 = 0x02;

/// What a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client to server: call `service.method` with the body; expects a `Response`.
    Request = 1,
    /// Server to client: the outcome of the request with the same call id.
    Response = 2,
    /// Either direction: a one-way message on `service.method`; no reply.
    Push = 3,
    /// Either direction: are you there? Answered by `Pong` with the same call id.
    Ping = 4,
    /// The answer to a `Ping`.
    Pong = 5,
    /// Server to client: shutting down; send no new requests on this connection.
    GoAway = 6,
    /// Either direction, first on a connection to a listener that authenticates:
    /// one step of the handshake (the service field names the mechanism, the
    /// method field the step). See [`crate::auth`].
    Auth = 7,
}

impl Kind {
    fn from_u8(n: u8) -> Option<Kind> {
        Some(match n {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Push,
            4 => Kind::Ping,
            5 => Kind::Pong,
            6 => Kind::GoAway,
            7 => Kind::Auth,
            _ => return None,
        })
    }
}

/// Why bytes could not be read as a frame. Cheap to build: it is on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the configured maximum.
    TooLarge {
        /// The announced length.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The bytes break the format; the connection cannot be trusted any further.
    Invalid(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { size, max } => {
                write!(f, "frame of {size} bytes is larger than the maximum of {max}")
            }
            FrameError::Invalid(why) => write!(f, "invalid frame: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// One decoded frame. The names and body share the read buffer's memory.
#[derive(Debug, Clone)]
pub struct Frame {
    /// What the frame is for.
    pub kind: Kind,
    /// The status code of a response; `Ok` on other kinds.
    pub code: Code,
    /// The flags byte: on a failed response, its outcome ([`FLAG_NOT_RUN`],
    /// [`FLAG_OUTCOME_UNKNOWN`]).
    pub flags: u8,
    /// Matches a response to its request, and a pong to its ping.
    pub call_id: u64,
    /// The caller's remaining time budget in milliseconds; 0 means none.
    pub timeout_ms: u32,
    /// Service then method name bytes, validated as UTF-8.
    names: Bytes,
    /// Where the method name starts in `names`.
    service_len: usize,
    /// The protobuf body, or the error message of a failed response.
    pub body: Bytes,
}

impl Frame {
    /// The service name of a request or push.
    pub fn service(&self) -> &str {
        // Validated as UTF-8 in `decode`.
        std::str::from_utf8(&self.names[..self.service_len]).unwrap_or_default()
    }

    /// The method name of a request or push.
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.names[self.service_len..]).unwrap_or_default()
    }

    /// The service name's bytes, known to be UTF-8: for lookups that need no `&str`.
    #[inline]
    pub(crate) fn service_bytes(&self) -> &[u8] {
        &self.names[..self.service_len]
    }

    /// The same frame in memory of its own, no longer sharing the buffer it was read
    /// from (which a small frame would otherwise keep alive whole).
    pub fn detached(self) -> Frame {
        Frame { names: Bytes::copy_from_slice(&self.names), body: Bytes::copy_from_slice(&self.body), ..self }
    }

    /// Bytes the frame took on the wire, length prefix included.
    pub fn wire_len(&self) -> usize {
        LENGTH_LEN + HEADER_LEN + self.names.len() + self.body.len()
    }

    /// A response frame's outcome: the body on `Ok`, else the status it carries.
    pub fn into_result(self) -> Result<Bytes, Status> {
        if self.code == Code::Ok {
            Ok(self.body)
        } else {
            let outcome = if self.flags & FLAG_NOT_RUN != 0 {
                Outcome::NotRun
            } else if self.flags & FLAG_OUTCOME_UNKNOWN != 0 {
                Outcome::Unknown
            } else {
                Outcome::Ran
            };
            Err(Status::new(self.code, String::from_utf8_lossy(&self.body)).with_outcome(outcome))
        }
    }
}

/// Takes one whole frame off the front of `buf`, if one is there.
///
/// Returns `Ok(None)` when more bytes are needed; `buf` is then untouched, and
/// it has reserved room for the rest of the frame.
///
/// # Errors
///
/// [`FrameError::TooLarge`] as soon as the length prefix exceeds `max_frame`,
/// before anything is allocated for it; [`FrameError::Invalid`] when the
/// header breaks the format.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < LENGTH_LEN {
        return Ok(None);
    }
    if buf.len() > LENGTH_LEN && buf[LENGTH_LEN] != VERSION {
        // Checked before the length so that text such as an HTTP request is
        // refused at once instead of being read as a huge frame to skip.
        return Err(FrameError::Invalid("unsupported protocol version"));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge { size: len, max: max_frame });
    }
    if len < HEADER_LEN {
        return Err(FrameError::Invalid("length shorter than the header"));
    }
    if buf.len() < LENGTH_LEN + len {
        // Room for what is missing, but a peer that announces a large frame
        // and stalls gets no more than 64 KiB reserved ahead of its bytes.
        buf.reserve((LENGTH_LEN + len - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    let h = &buf[LENGTH_LEN..];
    if h[0] != VERSION {
        return Err(FrameError::Invalid("unsupported protocol version"));
    }
    let kind = Kind::from_u8(h[1]).ok_or(FrameError::Invalid("unknown frame kind"))?;
    let code = Code::from_u8(h[2]);
    let flags = h[3];
    let call_id = u64::from_be_bytes(h[4..12].try_into().expect("8 bytes"));
    let timeout_ms = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
    let service_len = h[16] as usize;
    let method_len = h[17] as usize;
    if HEADER_LEN + service_len + method_len > len {
        return Err(FrameError::Invalid("names run past the end of the frame"));
    }
    let names_end = HEADER_LEN + service_len + method_len;
    // One pass over both names; the service name ends on a character
    // boundary exactly when both halves are valid on their own.
    match std::str::from_utf8(&h[HEADER_LEN..names_end]) {
        Ok(names) if names.is_char_boundary(service_len) => {}
        _ => return Err(FrameError::Invalid("service or method name is not UTF-8")),
    }
    buf.advance(LENGTH_LEN + HEADER_LEN);
    let mut rest = buf.split_to(len - HEADER_LEN).freeze();
    let names = rest.split_to(service_len + method_len);
    Ok(Some(Frame { kind, code, flags, call_id, timeout_ms, names, service_len, body: rest }))
}

/// The fields of a frame header, for encoding.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// What the frame is for.
    pub kind: Kind,
    /// Status of a response; `Ok` on other kinds.
    pub code: Code,
    /// Flags: a failed response's outcome; 0 on other kinds.
    pub flags: u8,
    /// The call id (0 where the kind has none).
    pub call_id: u64,
    /// Milliseconds the caller will wait; 0 for none.
    pub timeout_ms: u32,
    /// Service name, at most [`MAX_NAME`] bytes.
    pub service: &'a str,
    /// Method name, at most [`MAX_NAME`] bytes.
    pub method: &'a str,
}

impl<'a> Header<'a> {
    /// A header of `kind` with no names, no status and no deadline.
    pub fn new(kind: Kind, call_id: u64) -> Header<'a> {
        Header { kind, code: Code::Ok, flags: 0, call_id, timeout_ms: 0, service: "", method: "" }
    }

    /// Appends the length prefix and this header for a body of `body_len` bytes.
    ///
    /// The caller appends the body right after. Names longer than [`MAX_NAME`]
    /// must be rejected before this is called.
    pub fn put(&self, dst: &mut BytesMut, body_len: usize) {
        debug_assert!(self.service.len() <= MAX_NAME && self.method.len() <= MAX_NAME);
        let len = HEADER_LEN + self.service.len() + self.method.len() + body_len;
        dst.reserve(LENGTH_LEN + len);
        // Built on the stack and appended at once: one capacity check, not ten.
        let mut fixed = [0u8; LENGTH_LEN + HEADER_LEN];
        fixed[..4].copy_from_slice(&(len as u32).to_be_bytes());
        fixed[4] = VERSION;
        fixed[5] = self.kind as u8;
        fixed[6] = self.code as u8;
        fixed[7] = self.flags;
        fixed[8..16].copy_from_slice(&self.call_id.to_be_bytes());
        fixed[16..20].copy_from_slice(&self.timeout_ms.to_be_bytes());
        fixed[20] = self.service.len() as u8;
        fixed[21] = self.method.len() as u8;
        dst.put_slice(&fixed);
        dst.put_slice(self.service.as_bytes());
        dst.put_slice(self.method.as_bytes());
    }
}

/// Appends a whole request frame.
pub fn put_request(
    dst: &mut BytesMut,
    call_id: u64,
    timeout_ms: u32,
    service: &str,
    method: &str,
    body: &[u8],
) {
    let header =
        Header { kind: Kind::Request, code: Code::Ok, flags: 0, call_id, timeout_ms, service, method };
    header.put(dst, body.len());
    dst.put_slice(body);
}

/// Appends a whole response frame carrying `result`.
pub fn put_response(dst: &mut BytesMut, call_id: u64, result: &Result<Bytes, Status>) {
    match result {
        Ok(body) => {
            Header::new(Kind::Response, call_id).put(dst, body.len());
            dst.put_slice(body);
        }
        Err(status) => {
            let code = if status.code == Code::Ok { Code::Unknown } else { status.code };
            let flags = match status.outcome() {
                Outcome::NotRun => FLAG_NOT_RUN,
                Outcome::Unknown => FLAG_OUTCOME_UNKNOWN,
                _ => 0,
            };
            let msg = status.message.as_bytes();
            Header { code, flags, ..Header::new(Kind::Response, call_id) }.put(dst, msg.len());
            dst.put_slice(msg);
        }
    }
}

/// Appends a whole one-way push frame.
pub fn put_push(dst: &mut BytesMut, service: &str, method: &str, body: &[u8]) {
    Header { service, method, ..Header::new(Kind::Push, 0) }.put(dst, body.len());
    dst.put_slice(body);
}

/// Appends a frame with no names and no body: ping, pong or go-away.
pub fn put_control(dst: &mut BytesMut, kind: Kind, call_id: u64) {
    Header::new(kind, call_id).put(dst, 0);
}

/// Appends a go-away frame whose body says why the connection is ending.
pub fn put_goaway(dst: &mut BytesMut, reason: &str) {
    Header::new(Kind::GoAway, 0).put(dst, reason.len());
    dst.put_slice(reason.as_bytes());
}

/// Appends a handshake frame: one `step` of `mechanism` with its bytes.
pub fn put_auth(dst: &mut BytesMut, mechanism: &str, step: &str, body: &[u8]) {
    Header { service: mechanism, method: step, ..Header::new(Kind::Auth, 0) }.put(dst, body.len());
    dst.put_slice(body);
}

/// Reads the kind and call id of the frame at the front of `buf` without
/// taking it, so an oversized request can still be answered before its body
/// is skipped. `None` until the fixed header has arrived.
pub fn peek_call(buf: &[u8]) -> Option<(Option<Kind>, u64)> {
    if buf.len() < LENGTH_LEN + HEADER_LEN {
        return None;
    }
    let kind = Kind::from_u8(buf[LENGTH_LEN + 1]);
    let call_id = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    Some((kind, call_id))
}

/// Checks that a service or method name fits in a frame.
pub(crate) fn check_name(name: &str) -> Result<(), crate::Error> {
    if name.len() > MAX_NAME {
        return Err(crate::Error::InvalidName { name: name.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        put_request(&mut b, id, 250, "echo.Echo", "Say", body);
        b
    }

    #[test]
    fn request_round_trips() {
        let mut b = request(7, b"hello");
        let f = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(f.kind, Kind::Request);
        assert_eq!(f.call_id, 7);
        assert_eq!(f.timeout_ms, 250);
        assert_eq!(f.service(), "echo.Echo");
        assert_eq!(f.method(), "Say");
        assert_eq!(&f.body[..], b"hello");
        assert!(b.is_empty());
    }

    #[test]
    fn split_frame_waits_for_every_byte() {
        let whole = request(1, &[9u8; 100]);
        let mut b = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert!(decode(&mut b, DEFAULT_MAX_FRAME).unwrap().is_none(), "early at {i}");
            b.put_u8(*byte);
        }
        let f = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(f.body.len(), 100);
    }

    #[test]
    fn packed_frames_come_out_in_order() {
        let mut b = BytesMut::new();
        for id in 0..50u64 {
            b.extend_from_slice(&request(id, &id.to_be_bytes()));
        }
        put_control(&mut b, Kind::Ping, 99);
        for id in 0..50u64 {
            let f = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
            assert_eq!(f.call_id, id);
            assert_eq!(&f.body[..], &id.to_be_bytes());
        }
        let ping = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((ping.kind, ping.call_id), (Kind::Ping, 99));
        assert!(decode(&mut b, DEFAULT_MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut b = BytesMut::new();
        b.put_u32(1_000_001);
        let err = decode(&mut b, 1_000_000).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { size: 1_000_001, max: 1_000_000 });
        assert!(b.capacity() < 1_000_000, "nothing was reserved for the oversized frame");
    }

    #[test]
    fn garbage_is_invalid() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        // The version byte is checked before the huge length "GET " would announce.
        assert_eq!(
            decode(&mut b, DEFAULT_MAX_FRAME).unwrap_err(),
            FrameError::Invalid("unsupported protocol version")
        );

        let mut b = request(1, b"x");
        b[4] = 9;
        assert_eq!(
            decode(&mut b, DEFAULT_MAX_FRAME).unwrap_err(),
            FrameError::Invalid("unsupported protocol version")
        );

        let mut b = request(1, b"x");
        b[5] = 42;
        assert_eq!(decode(&mut b, DEFAULT_MAX_FRAME).unwrap_err(), FrameError::Invalid("unknown frame kind"));

        let mut b = request(1, b"");
        b[20] = 200;
        assert!(matches!(decode(&mut b, DEFAULT_MAX_FRAME), Err(FrameError::Invalid(_))));

        let mut b = BytesMut::new();
        b.put_u32(3);
        b.put_slice(&[1, 1, 0]);
        assert!(matches!(decode(&mut b, DEFAULT_MAX_FRAME), Err(FrameError::Invalid(_))));

        let mut b = request(1, b"");
        b[22] = 0xff;
        assert!(matches!(decode(&mut b, DEFAULT_MAX_FRAME), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn failed_response_carries_code_and_message() {
        let mut b = BytesMut::new();
        put_response(&mut b, 3, &Err(Status::not_found("no user 'bo'")));
        let f = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(f.kind, Kind::Response);
        assert_eq!(f.into_result().unwrap_err(), Status::not_found("no user 'bo'"));
    }
}
