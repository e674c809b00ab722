//! The client's commands, one per input line, parsed by clap: `help` prints clap's help,
//! and a line that does not parse is answered with clap's error text.
//!
//! A line is split at whitespace (no quoting). The free text at the end of `send` and
//! `group create` is taken from the line as typed, spaces included.

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use services::api;

use super::Error;

/// One input line.
#[derive(Debug, Parser)]
#[command(
    name = "chatroom client",
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true,
    help_template = "commands:\n{subcommands}"
)]
struct Line {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// A command of `chatroom client`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Create an account.
    Register {
        /// The account's name.
        name: String,
        /// Its password.
        #[arg(allow_hyphen_values = true)]
        password: String,
    },
    /// Open a session (syncs what you missed).
    Login {
        /// The account's name.
        name: String,
        /// Its password.
        #[arg(allow_hyphen_values = true)]
        password: String,
    },
    /// Close the session.
    Logout,
    /// Change your password (other devices must log in again).
    Passwd {
        /// The password now.
        #[arg(allow_hyphen_values = true)]
        old: String,
        /// The new one.
        #[arg(allow_hyphen_values = true)]
        new: String,
    },
    /// Look a user up.
    Find {
        /// Their name.
        name: String,
    },
    /// Befriend a user, end a friendship, list friends with their online state.
    #[command(subcommand)]
    Friend(Friend),
    /// Create, join, leave and manage groups.
    #[command(subcommand)]
    Group(Group),
    /// Send to a user or a group.
    Send {
        /// `user` or `group`.
        kind: Kind,
        /// NAME|ID of a user, ID of a group.
        target: String,
        /// The message.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// A page of a conversation's history: `history user|group X [before|after SEQ] [LIMIT]`.
    History {
        /// `user` or `group`.
        kind: Kind,
        /// NAME|ID of a user, ID of a group.
        target: String,
        /// `before SEQ` or `after SEQ` (else the latest), then how many (else the server's page).
        #[arg(num_args = 0..=3, value_name = "before|after SEQ] [LIMIT")]
        page: Vec<String>,
    },
    /// Fetch every missed message.
    Sync,
    /// Mark a conversation read up to SEQ.
    Ack {
        /// `user` or `group`.
        kind: Kind,
        /// NAME|ID of a user, ID of a group.
        target: String,
        /// Read up to here.
        seq: u64,
    },
    /// Wait for N incoming messages.
    Wait {
        /// How many.
        n: u64,
        /// For at most this long.
        #[arg(default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Leave.
    #[command(alias = "exit")]
    Quit,
}

/// `friend ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Friend {
    /// Befriend a user.
    Add {
        /// NAME|ID.
        who: String,
    },
    /// End a friendship.
    Remove {
        /// NAME|ID.
        who: String,
    },
    /// Friends with online state.
    List,
}

/// `group ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Group {
    /// Create a group (you own it): private unless `public`; members read from their
    /// join on unless `shared` (then all history).
    Create {
        /// The name, then `public` and/or `shared` if wanted.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// Join a group (a private one needs an invitation).
    Join {
        /// The group.
        id: u64,
    },
    /// Let a user join your group (for 7 days).
    Invite {
        /// The group.
        id: u64,
        /// NAME|ID.
        who: String,
    },
    /// Remove a member (owner only).
    Remove {
        /// The group.
        id: u64,
        /// NAME|ID.
        who: String,
    },
    /// Leave a group.
    Leave {
        /// The group.
        id: u64,
    },
    /// Your groups.
    List,
    /// A group's members.
    Members {
        /// The group.
        id: u64,
    },
}

/// Which kind of conversation a command names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// One-to-one, with a user named by NAME or ID.
    User,
    /// A group's, named by its ID.
    Group,
}

/// What one line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing: an empty line or a `#` comment.
    Nothing,
    /// `help`: clap's help text.
    Help(String),
    /// A command.
    Command(Command),
}

/// Parses one line.
///
/// # Errors
///
/// [`Error::Usage`] with clap's text when the line is not a command.
pub fn parse(line: &str) -> Result<Parsed, Error> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first().is_none_or(|w| w.starts_with('#')) {
        return Ok(Parsed::Nothing);
    }
    match Line::try_parse_from(&words) {
        Ok(parsed) => Ok(Parsed::Command(parsed.command)),
        Err(e) if e.kind() == ErrorKind::DisplayHelp => Ok(Parsed::Help(e.render().to_string())),
        Err(e) => Err(Error::Usage { command: command_words(&words), message: message(&e) }),
    }
}

/// A usage error of `command` (as the line named it, e.g. `send`), in clap's words.
pub fn usage(command: &str, what: &str) -> Error {
    let mut root = Line::command();
    let sub = command.split_whitespace().try_fold(&mut root, |c, word| c.find_subcommand_mut(word));
    let error = match sub {
        Some(sub) => sub.error(ErrorKind::ValueValidation, what),
        None => Line::command().error(ErrorKind::ValueValidation, what),
    };
    Error::Usage { command: command.to_owned(), message: message(&error) }
}

/// The error's text, without clap's `error: ` in front (the event says it is one).
fn message(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let text = text.trim();
    text.strip_prefix("error: ").unwrap_or(text).to_owned()
}

/// The words of `words` that name commands and subcommands (`group invite`), or the
/// first word when it names none.
fn command_words(words: &[&str]) -> String {
    let mut command = Line::command();
    let mut named = Vec::new();
    for word in words {
        match command.find_subcommand(word) {
            Some(sub) => {
                named.push(sub.get_name().to_owned());
                command = sub.clone();
            }
            None => break,
        }
    }
    if named.is_empty() {
        words.first().map_or_else(String::new, |w| (*w).to_owned())
    } else {
        named.join(" ")
    }
}

/// The text of `line` after its first `n` words, as typed (inner spaces kept).
pub fn rest_after(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        rest = rest.trim_start();
        rest = rest.find(char::is_whitespace).map_or("", |i| &rest[i..]);
    }
    rest.trim()
}

/// `history`'s page: `[before|after SEQ] [LIMIT]`.
///
/// # Errors
///
/// A usage error for anything else.
pub fn history_page(page: &[String]) -> Result<(Option<api::history_request::Anchor>, u32), Error> {
    let bad = || usage("history", "expected [before|after SEQ] [LIMIT]");
    let number = |word: &String| word.parse::<u64>().map_err(|_| bad());
    match page {
        [] => Ok((None, 0)),
        [limit] => Ok((None, limit.parse().map_err(|_| bad())?)),
        [dir, seq, rest @ ..] => {
            let seq = number(seq)?;
            let anchor = match dir.as_str() {
                "before" => api::history_request::Anchor::BeforeSeq(seq),
                "after" => api::history_request::Anchor::AfterSeq(seq),
                _ => return Err(bad()),
            };
            let limit = rest.first().map_or(Ok(0), |l| l.parse()).map_err(|_| bad())?;
            Ok((Some(anchor), limit))
        }
    }
}

/// `group create`'s arguments: the name, then any of the words `public` and `shared` at
/// its end (a name of one word is taken as the name even if it is one of those).
pub fn create_group_request(args: &str) -> api::CreateGroupRequest {
    let mut request = api::CreateGroupRequest::default();
    let mut name = args.trim_end();
    while let Some((head, last)) = name.rsplit_once(char::is_whitespace) {
        match last {
            "public" => request.public = true,
            "shared" => request.history = api::HistoryVisibility::HistoryShared as i32,
            _ => break,
        }
        name = head.trim_end();
    }
    request.name = name.to_owned();
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use services::api::HistoryVisibility;

    fn command(line: &str) -> Command {
        match parse(line) {
            Ok(Parsed::Command(command)) => command,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn usage_of(line: &str) -> (String, String) {
        match parse(line) {
            Err(e @ Error::Usage { .. }) => (e.command().to_owned(), e.message()),
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Line::command().debug_assert();
    }

    #[test]
    fn lines_parse_into_commands() {
        assert_eq!(
            command("login ann -secret-"),
            Command::Login { name: "ann".into(), password: "-secret-".into() }
        );
        assert_eq!(command("  friend   add bob "), Command::Friend(Friend::Add { who: "bob".into() }));
        assert_eq!(command("group invite 4 bob"), Command::Group(Group::Invite { id: 4, who: "bob".into() }));
        assert_eq!(command("wait 2"), Command::Wait { n: 2, timeout_ms: 10_000 });
        assert_eq!(command("exit"), Command::Quit);
        let Command::Send { kind, target, text } = command("send group 3 hi -- there") else { panic!() };
        assert_eq!((kind, target.as_str(), text.join(" ").as_str()), (Kind::Group, "3", "hi -- there"));
        assert_eq!(parse("# a comment").unwrap(), Parsed::Nothing);
        assert_eq!(parse("   ").unwrap(), Parsed::Nothing);
    }

    #[test]
    fn bad_lines_get_clap_errors_naming_the_command() {
        let (command, message) = usage_of("passwd x");
        assert_eq!(command, "passwd");
        assert!(message.contains("<NEW>"), "{message}");
        let (command, message) = usage_of("group invite x bob");
        assert_eq!(command, "group invite");
        assert!(message.contains("invalid value 'x'"), "{message}");
        let (command, message) = usage_of("frobnicate now");
        assert_eq!(command, "frobnicate");
        assert!(message.contains("unrecognized subcommand 'frobnicate'"), "{message}");
        assert_eq!(usage_of("send user bob").0, "send");
        assert_eq!(usage_of("ack robot bob 3").0, "ack");
    }

    #[test]
    fn help_is_claps_and_lists_every_command() {
        let Ok(Parsed::Help(text)) = parse("help") else { panic!("help is not help") };
        for word in ["register", "login", "friend", "group", "send", "history", "sync", "ack", "wait", "quit"]
        {
            assert!(text.contains(word), "{word} missing from {text}");
        }
        let Ok(Parsed::Help(text)) = parse("help group") else { panic!("help group is not help") };
        assert!(text.contains("invite"), "{text}");
    }

    #[test]
    fn history_pages_read_an_anchor_and_a_limit() {
        let page = |words: &[&str]| history_page(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        assert_eq!(page(&[]).unwrap(), (None, 0));
        assert_eq!(page(&["20"]).unwrap(), (None, 20));
        assert_eq!(
            page(&["before", "9", "5"]).unwrap(),
            (Some(api::history_request::Anchor::BeforeSeq(9)), 5)
        );
        assert_eq!(page(&["after", "2"]).unwrap(), (Some(api::history_request::Anchor::AfterSeq(2)), 0));
        assert!(page(&["around", "2"]).is_err());
        assert!(page(&["many"]).is_err());
    }

    #[test]
    fn free_text_is_kept_as_typed() {
        assert_eq!(rest_after("send user bob  hello   there ", 3), "hello   there");
        assert_eq!(rest_after("send user bob", 3), "");
    }

    #[test]
    fn group_create_reads_public_and_shared_off_the_end_of_the_name() {
        let plain = create_group_request("lunch club");
        assert_eq!((plain.name.as_str(), plain.public, plain.history), ("lunch club", false, 0));
        let open = create_group_request("lunch club public shared");
        assert_eq!(open.name, "lunch club");
        assert!(open.public);
        assert_eq!(open.history, HistoryVisibility::HistoryShared as i32);
        let named = create_group_request("public");
        assert_eq!((named.name.as_str(), named.public), ("public", false), "a one-word name stays the name");
    }
}
