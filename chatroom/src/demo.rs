//! `chatroom demo`: three bots hold a short scripted conversation through the gateway,
//! printed as it happens, so a newcomer sees one-to-one chat, a group, presence, a
//! connection resumed with its session token, and offline delivery work. It starts a
//! standalone system in a temporary data directory, or uses a running one (`--server`).

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use rand::Rng as _;
use rpc_core::client::{self, Channel};

use services::api::{self, GatewayClient};
use services::proxy::{PUSH_METHOD, PUSH_SERVICE};
use services::standalone::{self, Standalone};
use services::{ConversationId, GroupId, UserId};

const PASSWORD: &str = "demo-password-123";
const PATIENCE: Duration = Duration::from_secs(10);

/// One bot: its connection and the pushes it receives.
struct Bot {
    name: String,
    user: api::User,
    gateway: GatewayClient,
    pushes: mpsc::Receiver<api::push::Event>,
    /// The session token of the bot's last login, to resume after a lost connection.
    session_token: String,
}

fn connect(addr: SocketAddr) -> anyhow::Result<(GatewayClient, mpsc::Receiver<api::push::Event>)> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let on_push = move |service: &str, method: &str, body: bytes::Bytes| {
        if (service, method) == (PUSH_SERVICE, PUSH_METHOD) {
            if let Ok(api::Push { event: Some(event) }) = api::Push::decode(body) {
                let _ = tx.lock().map(|tx| tx.send(event));
            }
        }
    };
    let config = client::Config { on_push: Some(Arc::new(on_push)), ..client::Config::default() };
    let channel = Channel::connect(addr, config).with_context(|| format!("cannot connect to {addr}"))?;
    Ok((GatewayClient::new(channel).with_timeout(PATIENCE), rx))
}

fn direct(a: &api::User, b: &api::User) -> api::Conversation {
    ConversationId::direct(UserId(a.id), UserId(b.id)).into()
}

fn group(id: u64) -> api::Conversation {
    ConversationId::Group(GroupId(id)).into()
}

impl Bot {
    fn register(addr: SocketAddr, name: String) -> anyhow::Result<Bot> {
        let (gateway, pushes) = connect(addr)?;
        let request =
            api::RegisterRequest { name: name.clone(), password: PASSWORD.into(), ..Default::default() };
        let user = gateway.register(&request).context("register")?.user.unwrap_or_default();
        println!("{name:>10} | registered (id {})", user.id);
        Ok(Bot { name, user, gateway, pushes, session_token: String::new() })
    }

    fn login(&mut self) -> anyhow::Result<api::LoginResponse> {
        let request =
            api::LoginRequest { name: self.name.clone(), password: PASSWORD.into(), ..Default::default() };
        let login = self.gateway.login(&request).context("login")?;
        self.session_token = login.session_token.as_ref().map(|t| t.token.clone()).unwrap_or_default();
        let unread: u64 = login.conversations.iter().map(|c| c.unread).sum();
        println!(
            "{:>10} | logged in: {} friends, {} groups, {unread} unread",
            self.name,
            login.friends.len(),
            login.groups.len()
        );
        Ok(login)
    }

    /// Drops the connection, as a network failure would, and opens the session again on
    /// a new one with the session token: no password is sent.
    fn reconnect(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let (gateway, pushes) = connect(addr)?;
        (self.gateway, self.pushes) = (gateway, pushes);
        let request = api::ResumeRequest { session_token: self.session_token.clone() };
        let resumed = self.gateway.resume(&request).context("resume")?;
        let unread: u64 = resumed.conversations.iter().map(|c| c.unread).sum();
        println!("{:>10} | resumed with the session token (no password): {unread} unread", self.name);
        Ok(())
    }

    fn say(&self, to: api::Conversation, what: &str, body: &str, n: u64) -> anyhow::Result<()> {
        let request = api::SendMessageRequest {
            conversation: Some(to),
            client_msg_id: format!("demo-{}-{n}", self.user.id),
            body: body.into(),
        };
        let sent = self.gateway.send_message(&request).context("send")?.message.unwrap_or_default();
        println!("{:>10} | -> {what} #{}: {body}", self.name, sent.seq);
        Ok(())
    }

    /// Prints pushes until `n` messages have arrived.
    fn expect_messages(&self, n: usize, names: &dyn Fn(u64) -> String) -> anyhow::Result<()> {
        let mut got = 0;
        while got < n {
            match self.pushes.recv_timeout(PATIENCE).context("waiting for a push")? {
                api::push::Event::Message(m) => {
                    got += 1;
                    println!("{:>10} | <- #{} from {}: {}", self.name, m.seq, names(m.sender_id), m.body);
                }
                api::push::Event::Presence(p) => println!(
                    "{:>10} | * {} is {}",
                    self.name,
                    names(p.user_id),
                    if p.online { "online" } else { "offline" }
                ),
                api::push::Event::Kicked(k) => println!("{:>10} | * kicked: {}", self.name, k.reason),
            }
        }
        Ok(())
    }
}

/// Runs the demo against `server`, or against a standalone system it starts.
///
/// # Errors
///
/// When the system cannot be started or reached, or a step fails.
pub fn run(server: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut system = None;
    let data_dir =
        std::env::temp_dir().join(format!("chatroom-demo-{:08x}", rand::thread_rng().gen::<u32>()));
    let addr = match server {
        Some(addr) => addr,
        None => {
            let config = standalone::Config {
                data_dir: data_dir.clone(),
                listen: "127.0.0.1:0".parse()?,
                ..standalone::Config::default()
            };
            let started = Standalone::start(config).context("cannot start the standalone system")?;
            let addr = started.client_addr();
            println!("started a standalone system on {addr} (data in {})", data_dir.display());
            system = Some(started);
            addr
        }
    };
    let result = script(addr);
    drop(system);
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

fn script(addr: SocketAddr) -> anyhow::Result<()> {
    let tag: u16 = rand::thread_rng().gen();
    let [ann, ben, cat] = ["ann", "ben", "cat"].map(|n| format!("{n}{tag:04x}"));
    println!("\n== three bots register; ann and ben log in, cat stays offline");
    let mut ann = Bot::register(addr, ann)?;
    let mut ben = Bot::register(addr, ben)?;
    let mut cat = Bot::register(addr, cat)?;
    let people = [ann.user.clone(), ben.user.clone(), cat.user.clone()];
    let names =
        move |id: u64| people.iter().find(|u| u.id == id).map_or(format!("#{id}"), |u| u.name.clone());
    ann.login()?;
    ben.login()?;

    println!("\n== friends");
    for other in [&ben, &cat] {
        let request =
            api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::Name(other.name.clone())) };
        ann.gateway.add_friend(&request).context("add friend")?;
        println!("{:>10} | befriended {}", ann.name, other.name);
    }

    println!("\n== one-to-one");
    ann.say(direct(&ann.user, &ben.user), &ben.name, "hi ben, lunch?", 1)?;
    ben.expect_messages(1, &names)?;
    ben.say(direct(&ann.user, &ben.user), &ann.name, "sure, noon", 1)?;
    ann.expect_messages(1, &names)?;

    println!("\n== ben's connection breaks; he comes back with his session token");
    ben.reconnect(addr)?;
    ann.say(direct(&ann.user, &ben.user), &ben.name, "welcome back", 4)?;
    ben.expect_messages(1, &names)?;

    println!("\n== a private group: ann creates it and invites ben and cat, who join; then cat logs out");
    let club = ann
        .gateway
        .create_group(&api::CreateGroupRequest { name: "lunch club".into(), ..Default::default() })
        .context("create group")?
        .group
        .unwrap_or_default();
    println!("{:>10} | created private group {:?} (id {})", ann.name, club.name, club.id);
    for guest in [&ben, &cat] {
        let invite = api::InviteRequest { group_id: club.id, user_id: guest.user.id };
        ann.gateway.invite(&invite).context("invite")?;
        println!("{:>10} | invited {} into group {}", ann.name, guest.name, club.id);
    }
    ben.gateway.join_group(&api::JoinGroupRequest { group_id: club.id }).context("join")?;
    println!("{:>10} | joined group {}", ben.name, club.id);
    cat.gateway
        .login(&api::LoginRequest { name: cat.name.clone(), password: PASSWORD.into(), ..Default::default() })
        .context("login")?;
    cat.gateway.join_group(&api::JoinGroupRequest { group_id: club.id }).context("join")?;
    println!("{:>10} | joined group {} and logged out", cat.name, club.id);
    cat.gateway.logout(&api::LogoutRequest {}).context("logout")?;

    println!("\n== while cat is offline");
    ann.say(group(club.id), "lunch club", "noon at the usual place", 2)?;
    ben.expect_messages(1, &names)?;
    ben.say(group(club.id), "lunch club", "I'll bring cake", 2)?;
    ann.expect_messages(1, &names)?;
    ann.say(direct(&ann.user, &cat.user), &cat.name, "cat, are you coming?", 3)?;

    println!("\n== cat logs in and catches up with Sync");
    let login = cat.login()?;
    let missed = cat.gateway.sync(&api::SyncRequest::default()).context("sync")?;
    for m in &missed.messages {
        println!("{:>10} | <- (missed) #{} from {}: {}", cat.name, m.seq, names(m.sender_id), m.body);
    }
    println!(
        "{:>10} | {} missed messages, unread at login: {}",
        cat.name,
        missed.messages.len(),
        login.conversations.iter().map(|c| c.unread).sum::<u64>()
    );
    cat.say(group(club.id), "lunch club", "on my way!", 1)?;
    ann.expect_messages(1, &names)?;
    ben.expect_messages(1, &names)?;
    println!("\ndone: one-to-one, group and offline delivery all worked");
    Ok(())
}
