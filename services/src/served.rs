//! A service served on its own listener and registered in the registry, as the user and
//! chat services run.

use std::net::SocketAddr;

use rpc_core::registry::{Instance, Registration, Registry};
use rpc_core::server::{self, Builder, Handle, Service};

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
    let handle = Builder::new(config).service(service).bind(listen)?;
    let addr = handle.local_addr();
    let registration = registry.register(&name, &Instance::new(addr.to_string(), addr))?;
    tracing::info!(service = %name, %addr, "serving");
    Ok(Served { registration, handle })
}
