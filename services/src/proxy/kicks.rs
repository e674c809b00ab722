//! Kicks of the sessions that logins here replaced on other proxies, sent by a thread of
//! their own.
//!
//! A call to a proxy that just crashed can hold its caller: the channel connects on the
//! caller's thread, and one in back-off makes the caller wait for the next attempt, up to
//! the call's deadline. When a crashed proxy's users resume here by the thousand, every
//! resume replaces a session on that proxy; if each worker waited there, the workers
//! would all be asleep and every other user's calls would queue behind them. So workers
//! only queue kicks, and one thread sends them, skipping for a while a proxy it could not
//! connect to. The queue is bounded: a kick that finds it full, or that is skipped, costs
//! little, since the replaced session ends anyway at its proxy's next lease renewal,
//! which finds the lease taken.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sessions::REPLACED;
use crate::api;
use crate::ids::UserId;
use crate::proxies::Proxies;

/// Most kicks waiting to be sent.
const QUEUE: usize = 10_000;
/// How long kicks to a proxy that could not be reached are skipped.
const SKIP_UNREACHABLE: Duration = Duration::from_secs(5);

/// The queue of kicks to send; the thread ends when this is dropped.
pub(super) struct Kicks {
    /// Where workers put kicks.
    queue: SyncSender<(UserId, String)>,
}

impl Kicks {
    /// Starts the thread that kicks, through `proxies`, on behalf of proxy `instance_id`.
    pub(super) fn start(proxies: Arc<Proxies>, instance_id: String) -> std::io::Result<Kicks> {
        let (queue, kicks) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("proxy-kicks".into())
            .spawn(move || send_kicks(&kicks, &proxies, &instance_id))?;
        Ok(Kicks { queue })
    }

    /// Queues a kick of `user`'s session on proxy `other`, without waiting.
    pub(super) fn kick(&self, user: UserId, other: String) {
        if let Err(TrySendError::Full((user, other))) = self.queue.try_send((user, other)) {
            tracing::warn!(%user, proxy = %other, "too many kicks queued; the old session ends at its renewal");
        }
    }
}

/// Sends the queued kicks one at a time until the queue's sender is dropped.
fn send_kicks(kicks: &Receiver<(UserId, String)>, proxies: &Proxies, instance_id: &str) {
    let mut unreachable: HashMap<String, Instant> = HashMap::new();
    for (user, other) in kicks {
        let now = Instant::now();
        unreachable.retain(|_, until| *until > now);
        if unreachable.contains_key(&other) {
            tracing::debug!(%user, proxy = %other, "previous proxy unreachable; not kicking");
            continue;
        }
        let Some(client) = proxies.client(&other) else {
            tracing::debug!(%user, proxy = %other, "previous proxy is gone");
            continue;
        };
        let request = api::KickRequest {
            user_id: user.0,
            new_proxy_id: instance_id.to_owned(),
            reason: REPLACED.to_owned(),
        };
        if let Err(error) = client.kick(&request) {
            tracing::warn!(%user, proxy = %other, %error, "cannot kick the previous session");
            if matches!(error, rpc_core::Error::Connect { .. }) {
                unreachable.insert(other, now + SKIP_UNREACHABLE);
            }
        }
    }
}
