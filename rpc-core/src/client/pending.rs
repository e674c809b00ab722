//! The calls a connection waits on: a blocked caller's [`Waiter`], or a
//! callback with its deadline ([`Pending`]), completed by the connection's
//! event loop.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::connection::{guarded, lock};
use super::Callback;
use crate::Error;

/// The service and method of a call, kept to name it in a timeout error.
pub(crate) struct CallName {
    pub(crate) service: Box<str>,
    pub(crate) method: Box<str>,
}

/// A blocking caller's parking place for its result.
#[derive(Default)]
pub(crate) struct Waiter {
    result: Mutex<Option<Result<Bytes, Error>>>,
    ready: Condvar,
}

impl Waiter {
    pub(crate) fn reset(&self) {
        *lock(&self.result) = None;
    }

    // Inlined into the connection's code that completes calls, once a response.
    #[inline]
    pub(super) fn complete(&self, result: Result<Bytes, Error>) {
        *lock(&self.result) = Some(result);
        self.ready.notify_one();
    }

    /// Waits for the result until `deadline`; `None` if it passed first.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Result<Bytes, Error>> {
        let mut slot = lock(&self.result);
        loop {
            if let Some(r) = slot.take() {
                return Some(r);
            }
            match deadline {
                None => slot = self.ready.wait(slot).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    slot = self.ready.wait_timeout(slot, left).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
    }
}

/// A call waiting for its response.
pub(crate) enum Pending {
    /// A blocked thread.
    Waiter(Arc<Waiter>),
    /// A callback, with what the reader needs to time it out.
    Callback { callback: Callback, deadline: Option<Instant>, started: Instant, name: Arc<CallName> },
}

impl Pending {
    #[inline]
    pub(super) fn complete(self, result: Result<Bytes, Error>) {
        match self {
            Pending::Waiter(w) => w.complete(result),
            Pending::Callback { callback, .. } => guarded("a call's callback", || callback(result)),
        }
    }
}
