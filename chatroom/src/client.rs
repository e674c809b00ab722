//! `chatroom client`: a command-line chat client over the generated `Gateway` stub.
//!
//! Commands are read one per line and parsed by clap ([`command`]; `help` prints them).
//! Replies, incoming messages, presence changes and kicks are printed one [`Event`] per
//! line, as text or (with `json`) as JSON lines. The client keeps, per conversation, the
//! sequence up to which it has seen everything, and the sequences above it seen already
//! (its own sends, pushes that overtook an earlier message; see [`cursor`]): every
//! message is printed once, and nothing is skipped. At login it Syncs what it missed;
//! when a pushed message leaves a gap no earlier push or send explains, it Syncs the gap;
//! when the connection is lost it resumes the session with the session token its login
//! was given (never sending the password again) and Syncs. A send carries a client
//! message id (a per-process random prefix and a counter), reused when the send is
//! retried (on an unknown outcome or while the system is unavailable, for up to 20 s),
//! so a retry is never stored twice.
//!
//! The parts: [`command`] turns a line into a [`Command`]; `execute.rs` runs one against
//! the gateway; [`event`] is what gets printed, and how; `session.rs` holds the
//! connection, the push thread, logins, resumes, Syncs and send retries.

use std::io::{BufRead, Write};
use std::net::SocketAddr;

pub mod command;
pub mod cursor;
mod error;
pub mod event;
mod execute;
mod session;

pub use command::Command;
pub use error::{ConnectError, Error};
pub use event::Event;
pub use session::Client;

/// How the client prints and behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy to connect to.
    pub server: SocketAddr,
    /// JSON lines instead of text.
    pub json: bool,
    /// Show a prompt (stdin is a terminal).
    pub interactive: bool,
}

/// Runs the client: commands from stdin until `quit` or the end of input.
///
/// # Errors
///
/// When the server cannot be reached.
pub fn run(options: &Options) -> Result<(), ConnectError> {
    let client = Client::connect(options)?;
    if options.interactive {
        println!("connected to {}; type help for the commands", options.server);
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().split(b'\n');
    loop {
        if options.interactive {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        let Some(Ok(line)) = lines.next() else { break };
        match String::from_utf8(line) {
            Ok(line) => {
                if !client.run_line(line.trim_end_matches('\r')) {
                    break;
                }
            }
            Err(_) => client.print(&Error::NotUtf8.into()),
        }
    }
    Ok(())
}
