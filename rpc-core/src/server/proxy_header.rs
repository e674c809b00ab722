//! The PROXY protocol, version 1 (text): how a TCP load balancer in front of the server
//! (nginx's `proxy_protocol on;`, HAProxy's `send-proxy`) tells it the client's address,
//! which the server would otherwise see as the balancer's.
//!
//! A connection from a peer named in `Config::proxy_protocol_from` may start with one
//! line, before its first frame:
//!
//! ```text
//! PROXY TCP4 192.0.2.7 10.0.0.1 51234 7878\r\n
//! PROXY TCP6 2001:db8::7 2001:db8::1 51234 7878\r\n
//! PROXY UNKNOWN\r\n
//! ```
//!
//! A connection whose first byte is `P` carries a header; any other first byte starts a
//! frame (whose length would then be over 1.3 GB, so the two cannot be confused), and the
//! peer is its own client, as a local tool connecting beside the balancer is. The whole
//! line is at most 107 bytes ([`MAX_LEN`]); a line that is longer, that does not start
//! with `PROXY `, or whose fields do not parse ends the connection with a go-away naming
//! the fault. `UNKNOWN` (the balancer's own health checks) leaves the peer's address as
//! the client's. The binary version 2 is not accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BytesMut};

/// The longest header line, CRLF included, as the specification sets it.
pub(crate) const MAX_LEN: usize = 107;

/// Every header starts with this.
const PREFIX: &[u8] = b"PROXY ";

/// The first byte of a header; a frame never starts with it under any sane maximum
/// frame size.
pub(crate) const FIRST_BYTE: u8 = PREFIX[0];

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(&'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed PROXY protocol v1 header: {}", self.0)
    }
}

/// Takes the header from the front of `buf` once it is whole.
///
/// `Ok(None)`: more bytes are needed (nothing taken). `Ok(Some(client))`: the header was
/// taken, `client` being the source address it names (`None` for `UNKNOWN`); the bytes
/// after it stay in `buf`.
pub(crate) fn take(buf: &mut BytesMut) -> Result<Option<Option<SocketAddr>>, Malformed> {
    let seen = buf.len().min(PREFIX.len());
    if buf[..seen] != PREFIX[..seen] {
        return Err(Malformed("the connection does not start with `PROXY `"));
    }
    let window = &buf[..buf.len().min(MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_LEN {
            return Err(Malformed("no CRLF within 107 bytes"));
        }
        return Ok(None);
    };
    let client = parse(&buf[PREFIX.len()..end])?;
    buf.advance(end + 2);
    Ok(Some(client))
}

/// Parses the fields after `PROXY `.
fn parse(line: &[u8]) -> Result<Option<SocketAddr>, Malformed> {
    let line = std::str::from_utf8(line).map_err(|_| Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = fields[..] else {
        return Err(Malformed("expected `TCP4|TCP6 SOURCE DESTINATION SOURCE-PORT DESTINATION-PORT`"));
    };
    let ip = |text: &str| -> Result<IpAddr, Malformed> {
        match family {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| Malformed("not an IPv4 address")),
            "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| Malformed("not an IPv6 address")),
            _ => Err(Malformed("the protocol is not TCP4, TCP6 or UNKNOWN")),
        }
    };
    let port = |text: &str| -> Result<u16, Malformed> {
        let leading_zero = text.len() > 1 && text.starts_with('0');
        match text.parse::<u16>() {
            Ok(port) if !leading_zero && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
            _ => Err(Malformed("a port is not a number from 0 to 65535")),
        }
    };
    let client = SocketAddr::new(ip(source)?, port(source_port)?);
    ip(destination)?;
    port(destination_port)?;
    Ok(Some(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_str(s: &[u8]) -> (Result<Option<Option<SocketAddr>>, Malformed>, BytesMut) {
        let mut buf = BytesMut::from(s);
        let taken = take(&mut buf);
        (taken, buf)
    }

    #[test]
    fn tcp4_and_tcp6_name_the_client_and_leave_what_follows() {
        let (taken, rest) = take_str(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 7878\r\n\x00\x00\x00\x05abc");
        assert_eq!(taken, Ok(Some(Some("192.0.2.7:51234".parse().unwrap()))));
        assert_eq!(&rest[..], b"\x00\x00\x00\x05abc");
        let (taken, rest) = take_str(b"PROXY TCP6 2001:db8::7 ::1 65535 7878\r\n");
        assert_eq!(taken, Ok(Some(Some("[2001:db8::7]:65535".parse().unwrap()))));
        assert!(rest.is_empty());
    }

    #[test]
    fn unknown_names_no_client() {
        assert_eq!(take_str(b"PROXY UNKNOWN\r\n").0, Ok(Some(None)));
        assert_eq!(take_str(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0, Ok(Some(None)));
    }

    #[test]
    fn a_partial_header_waits_for_more_and_takes_nothing() {
        for cut in [1, 3, 6, 20, 41] {
            let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 7878\r\n";
            let (taken, rest) = take_str(&line[..cut]);
            assert_eq!(taken, Ok(None), "cut at {cut}");
            assert_eq!(rest.len(), cut);
        }
    }

    #[test]
    fn the_longest_legal_line_is_accepted() {
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        // The specification's worst case: UNKNOWN followed by the longest TCP6 fields.
        let line = format!("PROXY UNKNOWN {v6} {v6} 65535 65535\r\n");
        assert_eq!(line.len(), MAX_LEN);
        assert_eq!(take_str(line.as_bytes()).0, Ok(Some(None)));
        let tcp6 = format!("PROXY TCP6 {v6} {v6} 65535 65535\r\n");
        assert!(matches!(take_str(tcp6.as_bytes()).0, Ok(Some(Some(_)))));
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 11] = [
            (b"\x00\x00\x00\x10", "does not start with `PROXY `"),
            (b"PROXX TCP4", "does not start with `PROXY `"),
            (b"GET / HTTP/1.1\r\n", "does not start with `PROXY `"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "ok"),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected `TCP4|TCP6"),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6 address"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "not a number from 0 to 65535"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "not a number from 0 to 65535"),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "expected `TCP4|TCP6"),
        ];
        for (input, why) in cases {
            match take_str(input).0 {
                Ok(_) if why == "ok" => {}
                Err(e) => assert!(e.to_string().contains(why), "{input:?}: {e}"),
                other => panic!("{input:?} gave {other:?}, expected {why}"),
            }
        }
    }

    #[test]
    fn no_crlf_within_107_bytes_is_refused_without_reading_further() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_LEN, b'1');
        let err = take_str(&long).0.unwrap_err();
        assert!(err.to_string().contains("no CRLF within 107 bytes"), "{err}");
        // A CRLF just past the limit does not help.
        long.extend_from_slice(b"\r\n");
        assert!(take_str(&long).0.is_err());
        assert_eq!(take_str(&long[..MAX_LEN - 1]).0, Ok(None));
        let non_ascii = take_str(b"PROXY TCP4 \xff\r\n").0.unwrap_err();
        assert!(non_ascii.to_string().contains("not ASCII"));
    }
}
