//! Catching SIGTERM and SIGINT for a graceful stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use anyhow::Context as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// SIGTERM and SIGINT, caught from before a server starts. Until the process serves, a
/// signal ends it at once (a startup stuck on an unreachable backend must not outlive
/// Ctrl-C); once it serves, the first signal starts the graceful stop and a second one
/// ends the process at once, in case the graceful stop hangs.
pub struct Stop {
    /// Set when the process serves: from then on the first signal is handed to `first`.
    serving: Arc<AtomicBool>,
    /// The first signal after serving started.
    first: mpsc::Receiver<i32>,
}

impl Stop {
    pub fn catch() -> anyhow::Result<Stop> {
        let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot catch SIGTERM and SIGINT")?;
        let serving = Arc::new(AtomicBool::new(false));
        let (tx, first) = mpsc::channel();
        let serves = serving.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut stopping = false;
                for signal in signals.forever() {
                    if serves.load(Ordering::SeqCst) && !stopping {
                        stopping = true;
                        let _ = tx.send(signal);
                        continue;
                    }
                    let when = if stopping { "during the graceful stop" } else { "before serving" };
                    eprintln!("{} {when}; exiting now", signal_name(signal));
                    std::process::exit(128 + signal);
                }
            })
            .context("cannot start the signal thread")?;
        Ok(Stop { serving, first })
    }

    /// Marks the process as serving: from now on the first signal stops it gracefully.
    /// Called before the process says where it serves, so that whoever reads that line
    /// and signals the process gets the graceful stop.
    pub fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// Marks the process as serving, then blocks until SIGTERM or SIGINT arrives.
    pub fn wait(self) {
        self.serving.store(true, Ordering::SeqCst);
        let signal = self.first.recv().unwrap_or(SIGTERM);
        tracing::info!(signal = signal_name(signal), "stopping gracefully");
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}
