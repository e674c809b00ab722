//! The server under attack: `bench.Abuse`, an untyped service of three
//! methods, on `server::Config::default()`.
//!
//! | method | request body | reply |
//! |---|---|---|
//! | `Echo` | anything | the same bytes; the victim calls it |
//! | `Burn` | empty, or the CPU milliseconds as a big-endian `u32` | empty, after spinning the CPU ([`BURN`] by default), a stand-in for a password hash |
//! | `Big` | the reply's size in KiB as a big-endian `u32` | that many KiB |

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rpc_core::server::{Builder, Config, Context, Service};
use rpc_core::Status;

/// The service name the frames carry.
pub const SERVICE: &str = "bench.Abuse";
/// The cheap method.
pub const ECHO: &str = "Echo";
/// The CPU-bound method.
pub const BURN: &str = "Burn";
/// The method with a large reply.
pub const BIG: &str = "Big";
/// CPU time of a `Burn` with an empty body.
pub const BURN_CPU: Duration = Duration::from_millis(20);
/// Largest `Big` reply served: it must fit in one frame of the default maximum.
pub const MAX_BIG_KIB: u32 = 16 * 1024 - 1;

/// How the server is set up, beyond `Config::default()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Whether the service declares `Burn` heavy (in the lane `server::HEAVY`, `Service::lanes`).
    pub burn_heavy: bool,
    /// Handler threads; `None` keeps the default.
    pub workers: Option<usize>,
    /// Threads of the heavy lane; `None` keeps the default.
    pub heavy_workers: Option<usize>,
}

impl Options {
    /// The flags of `rpcbench abuse-server` that give these options.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.burn_heavy {
            args.push("--burn-heavy".to_owned());
        }
        if let Some(n) = self.workers {
            args.extend(["--workers".to_owned(), n.to_string()]);
        }
        if let Some(n) = self.heavy_workers {
            args.extend(["--heavy-workers".to_owned(), n.to_string()]);
        }
        args
    }

    /// The server's configuration.
    pub fn config(&self) -> Config {
        let default = Config::default();
        Config {
            workers: self.workers.unwrap_or(default.workers),
            heavy_workers: self.heavy_workers.unwrap_or(default.heavy_workers),
            ..default
        }
    }
}

/// The request body of a `Big` call for a reply of `kib` KiB.
pub fn big_request(kib: u32) -> [u8; 4] {
    kib.to_be_bytes()
}

/// `bench.Abuse`.
struct Abuse {
    /// Whether `Burn` is declared heavy.
    burn_heavy: bool,
}

impl Service for Abuse {
    fn name(&self) -> &str {
        SERVICE
    }

    fn call(&self, _ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        match method {
            ECHO => Ok(body),
            BURN => {
                let cpu = match body.len() {
                    0 => BURN_CPU,
                    _ => Duration::from_millis(u64::from(read_u32(&body)?)),
                };
                burn(cpu);
                Ok(Bytes::new())
            }
            BIG => {
                let kib = read_u32(&body)?;
                if kib > MAX_BIG_KIB {
                    return Err(Status::invalid_argument(format!("at most {MAX_BIG_KIB} KiB")));
                }
                Ok(Bytes::from(vec![0x5a; kib as usize * 1024]))
            }
            _ => Err(Status::unimplemented(format!("{SERVICE}/{method}"))),
        }
    }

    fn lanes(&self) -> &[(&'static str, &'static str)] {
        if self.burn_heavy {
            &[(BURN, rpc_core::server::HEAVY)]
        } else {
            &[]
        }
    }
}

/// A big-endian `u32` request body.
fn read_u32(body: &[u8]) -> Result<u32, Status> {
    let bytes: [u8; 4] =
        body.try_into().map_err(|_| Status::invalid_argument("expected a 4-byte big-endian number"))?;
    Ok(u32::from_be_bytes(bytes))
}

/// Spins until this thread has used `cpu` of CPU time. A password hash costs
/// CPU, not wall time: on a busy machine it takes longer, and so does this.
fn burn(cpu: Duration) {
    let start = thread_cpu();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while thread_cpu().saturating_sub(start) < cpu {
        for _ in 0..1000 {
            x = std::hint::black_box(x.rotate_left(5) ^ x.wrapping_mul(31));
        }
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Serves `bench.Abuse` on `addr` until the process ends, calling `ready`
/// with the bound address once it accepts. Raises the process's limit on open
/// files first, so ten thousand connections fit.
///
/// # Errors
///
/// When the address cannot be bound or a thread cannot start.
pub fn serve(options: &Options, addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    crate::os::raise_nofile();
    let server =
        Builder::new(options.config()).service(Abuse { burn_heavy: options.burn_heavy }).bind(addr)?;
    ready(server.local_addr());
    server.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_core::client::{Channel, Config as ClientConfig};
    use std::time::Instant;

    #[test]
    fn every_method_answers_as_documented() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let options = Options { burn_heavy: true, workers: Some(2), heavy_workers: Some(1) };
            serve(&options, "127.0.0.1:0".parse().unwrap(), |a| tx.send(a).unwrap()).unwrap();
        });
        let addr = rx.recv().unwrap();
        let ch = Channel::connect(addr, ClientConfig::default()).unwrap();
        assert_eq!(&ch.call_raw(SERVICE, ECHO, b"hi", None).unwrap()[..], b"hi");
        assert_eq!(ch.call_raw(SERVICE, BIG, &big_request(3), None).unwrap().len(), 3 * 1024);
        let started = Instant::now();
        assert!(ch.call_raw(SERVICE, BURN, &5u32.to_be_bytes(), None).unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(5));
        let err = ch.call_raw(SERVICE, BIG, b"x", None).unwrap_err();
        assert_eq!(err.code(), rpc_core::Code::InvalidArgument, "{err}");
    }

    #[test]
    fn options_round_trip_through_the_flags() {
        assert!(Options::default().to_args().is_empty());
        let args = Options { burn_heavy: true, workers: Some(3), heavy_workers: Some(1) }.to_args();
        assert_eq!(args, ["--burn-heavy", "--workers", "3", "--heavy-workers", "1"]);
    }
}
