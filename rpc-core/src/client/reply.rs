//! Calls as futures: [`ReplyFuture`] is completed by the callback of a call
//! started with [`Transport::call_with`](super::Transport::call_with), so it
//! needs no thread of its own and no particular executor.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::connection::lock;
use super::Callback;
use crate::Error;

/// The outcome of a call, as a [`Future`] that works on any executor (tokio,
/// async-std, `futures::executor::block_on`, ...).
///
/// The call is sent when the future is made, not when it is first polled; the
/// future only waits for the answer, which the transport's event-loop thread
/// delivers (decoding it there) and wakes the task. Dropping the future does
/// not cancel the call: the server may still run it, and its answer is
/// dropped when it comes. The deadline is the call's timeout, as for a
/// blocking call, so an unanswered call ends with [`Error::Timeout`].
///
/// ```no_run
/// use rpc_core::client::{Channel, Config, Transport};
/// # async fn run() -> Result<(), rpc_core::Error> {
/// let channel = Channel::connect("127.0.0.1:7000", Config::default())?;
/// // Both calls are in flight at once on the one connection.
/// let first = channel.call_future("test.Echo", "Say", &(), None);
/// let second = channel.call_future("test.Echo", "Say", &(), None);
/// let (first, second) = (first.await?, second.await?);
/// # let _ = (first, second);
/// # Ok(())
/// # }
/// ```
#[must_use = "the call is already sent; awaiting the future is how to see its outcome"]
pub struct ReplyFuture<T> {
    /// Shared with the callback that completes it.
    slot: Arc<Mutex<Slot<T>>>,
}

/// Where a call's outcome meets the task waiting for it.
enum Slot<T> {
    /// No outcome yet; the waker of the task that polled last.
    Waiting(Option<Waker>),
    /// The outcome, not yet taken by `poll`.
    Done(Result<T, Error>),
    /// Taken by `poll`; polling again is a caller's bug.
    Taken,
}

impl<T: Send + 'static> ReplyFuture<T> {
    /// A future and the [`Callback`] that completes it, decoding the reply
    /// body with `decode` on the thread that runs the callback. Hand the
    /// callback to [`Transport::call_with`](super::Transport::call_with) (or
    /// any code that calls it exactly once); generated clients do this in
    /// their `<rpc>_async` methods.
    pub fn new(
        decode: impl FnOnce(Bytes) -> Result<T, Error> + Send + 'static,
    ) -> (ReplyFuture<T>, Callback) {
        let slot = Arc::new(Mutex::new(Slot::Waiting(None)));
        let completer = Arc::clone(&slot);
        let callback: Callback = Box::new(move |body: Result<Bytes, Error>| {
            let outcome = body.and_then(decode);
            let waker = match std::mem::replace(&mut *lock(&completer), Slot::Done(outcome)) {
                Slot::Waiting(waker) => waker,
                Slot::Done(_) | Slot::Taken => None,
            };
            // Woken outside the lock: the task may be polled on another thread at once.
            if let Some(waker) = waker {
                waker.wake();
            }
        });
        (ReplyFuture { slot }, callback)
    }
}

impl<T> Future for ReplyFuture<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.slot);
        match &mut *slot {
            Slot::Waiting(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Done(_) => match std::mem::replace(&mut *slot, Slot::Taken) {
                Slot::Done(outcome) => Poll::Ready(outcome),
                Slot::Waiting(_) | Slot::Taken => unreachable!("matched Done above"),
            },
            Slot::Taken => panic!("a ReplyFuture was polled after it completed"),
        }
    }
}

impl<T> fmt::Debug for ReplyFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*lock(&self.slot) {
            Slot::Waiting(_) => "waiting",
            Slot::Done(_) => "done",
            Slot::Taken => "taken",
        };
        f.debug_struct("ReplyFuture").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts its wakes.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(future: &mut ReplyFuture<T>, waker: &Waker) -> Poll<Result<T, Error>> {
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn the_callback_wakes_the_task_and_hands_over_the_decoded_reply() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let (mut future, callback) = ReplyFuture::new(|body: Bytes| Ok(body.len()));
        assert!(poll(&mut future, &waker).is_pending());
        assert!(poll(&mut future, &waker).is_pending(), "a second poll before the answer waits too");
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);

        std::thread::spawn(move || callback(Ok(Bytes::from_static(b"four")))).join().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "completing wakes the last poller once");
        assert!(matches!(poll(&mut future, &waker), Poll::Ready(Ok(4))));
    }

    #[test]
    fn an_outcome_before_the_first_poll_and_a_failed_decode_are_kept() {
        let waker = Waker::from(Arc::new(Counter(AtomicUsize::new(0))));
        let (mut early, callback) = ReplyFuture::new(|_| Ok(()));
        callback(Err(Error::Timeout { service: "s".into(), method: "m".into(), elapsed_ms: 5 }));
        assert!(matches!(poll(&mut early, &waker), Poll::Ready(Err(Error::Timeout { elapsed_ms: 5, .. }))));

        let (mut bad, callback) = ReplyFuture::<()>::new(|_| Err(Error::Protocol("bad body".into())));
        callback(Ok(Bytes::new()));
        assert!(matches!(poll(&mut bad, &waker), Poll::Ready(Err(Error::Protocol(_)))));
    }

    #[test]
    fn a_dropped_future_leaves_its_callback_harmless() {
        let (future, callback) = ReplyFuture::new(|body: Bytes| Ok(body));
        drop(future);
        callback(Ok(Bytes::from_static(b"late")));
    }
}
