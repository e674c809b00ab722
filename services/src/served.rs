//! A service served on its own listener and registered in the registry, as the user and
//! chat services run.

use std::net::SocketAddr;

use bytes::Bytes;
use rpc_core::registry::{Instance, Registration, Registry};
use rpc_core::server::{self, Builder, Context, Handle, Service};
use rpc_core::Status;

/// A running server with its registration. Dropping it deregisters, then shuts the
/// server down gracefully.
pub struct Served {
    /// Dropped first, so callers stop choosing this instance before it stops.
    registration: Registration,
    /// The server.
    handle: Handle,
}

impl Served {
    /// The address the server listens on, as registered.
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Stops gracefully: leaves the registry first, so callers stop choosing this
    /// instance, then shuts the server down (clients are told to go away, calls in flight
    /// finish, up to the server's `shutdown_grace`).
    pub fn shutdown(self) {
        let Served { registration, handle } = self;
        let addr = handle.local_addr();
        if let Err(error) = registration.deregister() {
            tracing::warn!(%addr, %error, "cannot leave the registry; the entry goes with the session");
        }
        handle.shutdown();
        tracing::info!(%addr, "stopped");
    }

    /// Blocks until the server stops.
    pub fn wait(self) {
        let Served { registration, handle } = self;
        handle.wait();
        drop(registration);
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("registration", &self.registration)
            .field("addr", &self.addr())
            .finish()
    }
}

/// Serves `service` on `listen` and registers it in `registry` under its service name,
/// with its bound address as instance id (unique while it runs).
///
/// # Errors
///
/// When the listener cannot be bound or the registry refuses the registration.
pub fn serve(
    service: impl Service,
    registry: &dyn Registry,
    listen: SocketAddr,
    config: server::Config,
) -> Result<Served, rpc_core::Error> {
    let name = service.name().to_owned();
    let handle = Builder::new(config).service(Traced::new(service, |_| None)).bind(listen)?;
    let addr = handle.local_addr();
    let registration = registry.register(&name, &Instance::new(addr.to_string(), addr))?;
    tracing::info!(service = %name, %addr, "serving");
    Ok(Served { registration, handle })
}

/// Names the session's user on a call's connection, if it has one.
pub type UserOf = dyn Fn(&Context) -> Option<u64> + Send + Sync;

/// Runs every call of a service inside an `info` span naming the method (and, on a
/// proxy, the session's user), and logs failed calls with their status.
pub struct Traced<S> {
    /// The service.
    inner: S,
    /// The session's user on the call's connection, for the span.
    user_of: Box<UserOf>,
}

impl<S: Service> Traced<S> {
    /// Traces `inner`; `user_of` names the caller's user, if known.
    pub fn new(inner: S, user_of: impl Fn(&Context) -> Option<u64> + Send + Sync + 'static) -> Self {
        Traced { inner, user_of: Box::new(user_of) }
    }
}

impl<S: Service> Service for Traced<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn call(&self, ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        let user = (self.user_of)(ctx);
        let span = tracing::info_span!("request", service = self.inner.name(), method, connection = %ctx.connection().id(), user);
        let _entered = span.enter();
        let outcome = self.inner.call(ctx, method, body);
        if let Err(status) = &outcome {
            tracing::debug!(code = %status.code, message = %status.message, "call failed");
        }
        outcome
    }

    fn runs_inline(&self, method: &str) -> bool {
        self.inner.runs_inline(method)
    }

    fn lanes(&self) -> &[(&'static str, &'static str)] {
        self.inner.lanes()
    }
}
