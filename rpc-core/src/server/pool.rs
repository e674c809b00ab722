//! The worker pool: threads that take jobs from one crossbeam channel and run handlers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::event_loop::Command;
use super::{ConnectionId, Context, DisconnectHook, Service};
use crate::frame::Frame;
use crate::Status;

/// Work for the pool.
pub(crate) enum Job {
    /// Run one request or client push.
    Call {
        /// The service the frame names.
        service: Arc<dyn Service>,
        /// The handler's view of the call.
        ctx: Context,
        /// The decoded request frame.
        frame: Frame,
        /// False for a one-way push: nothing goes back but the in-flight release.
        reply: bool,
    },
    /// A connection closed; tell the disconnect hook.
    Disconnected(ConnectionId),
}

/// Starts `n` workers on `jobs`. They exit when every sender is dropped.
pub(crate) fn start(
    n: usize,
    jobs: Receiver<Job>,
    on_disconnect: Option<DisconnectHook>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let jobs = jobs.clone();
            let hook = on_disconnect.clone();
            std::thread::Builder::new().name(format!("rpc-worker-{i}")).spawn(move || work(jobs, hook))
        })
        .collect()
}

fn work(jobs: Receiver<Job>, on_disconnect: Option<DisconnectHook>) {
    for job in jobs {
        match job {
            Job::Call { service, ctx, frame, reply } => {
                if !ctx.connection.is_open() {
                    // Nobody is left to answer; do not run work for a gone caller.
                    continue;
                }
                let call_id = ctx.call_id;
                let expired = ctx.deadline.is_some_and(|d| Instant::now() >= d);
                let result = if expired {
                    Err(Status::deadline_exceeded(format!(
                        "{}/{} waited past its deadline in the server's queue",
                        frame.service(),
                        frame.method()
                    )))
                } else {
                    run(service.as_ref(), &ctx, &frame)
                };
                let owner = &ctx.connection.owner;
                owner.send(Command::Reply {
                    id: ctx.connection.id,
                    call_id,
                    result: reply.then_some(result),
                });
            }
            Job::Disconnected(id) => {
                if let Some(hook) = &on_disconnect {
                    if catch_unwind(AssertUnwindSafe(|| hook(id))).is_err() {
                        tracing::error!(%id, "disconnect hook panicked");
                    }
                }
            }
        }
    }
}

/// Runs one handler, turning a panic into `Internal` so the server lives on.
pub(crate) fn run(service: &dyn Service, ctx: &Context, frame: &Frame) -> Result<bytes::Bytes, Status> {
    let method = frame.method();
    let span = tracing::debug_span!("rpc", call_id = ctx.call_id, service = service.name(), method);
    let _enter = span.enter();
    match catch_unwind(AssertUnwindSafe(|| service.call(ctx, method, frame.body.clone()))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(service = service.name(), method, panic = %what, "handler panicked");
            Err(Status::internal(format!("handler {}/{method} panicked: {what}", service.name())))
        }
    }
}
