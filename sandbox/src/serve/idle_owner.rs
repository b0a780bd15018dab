//! The daemon owns idle sleep: one task looks at every running sandbox once a second
//! ([`crate::idle::sweep`], the watchers' own check), while the daemon holds
//! [`crate::idle::DaemonLease`]. On a clean stop it gives the lease up and starts a watcher
//! for each running sandbox ([`crate::idle::hand_back`]), so nothing is left unwatched.

use crate::idle::{self, DaemonLease};
use crate::sandbox::Home;
use std::time::Duration;

/// How often the daemon looks.
const TICK: Duration = Duration::from_secs(1);

/// The running idle task and its lease.
#[derive(Debug)]
pub(super) struct IdleOwner {
    home: Home,
    task: tokio::task::JoinHandle<()>,
    lease: DaemonLease,
}

impl IdleOwner {
    /// Takes the lease and starts the task; `None` (said on stderr) when another daemon on
    /// this home owns idle sleep already or the lease cannot be taken.
    pub(super) async fn start(home: &Home) -> Option<IdleOwner> {
        let h = home.clone();
        let lease = match tokio::task::spawn_blocking(move || DaemonLease::take(&h)).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => {
                eprintln!("cairn serve: another daemon owns idle sleep for this home");
                return None;
            }
            Ok(Err(e)) => {
                eprintln!(
                    "cairn serve: idle sleep stays with the watchers: {}",
                    cairn_agent::error_text(&e)
                );
                return None;
            }
            Err(e) => {
                eprintln!("cairn serve: idle sleep stays with the watchers: {e}");
                return None;
            }
        };
        let h = home.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let h = h.clone();
                match tokio::task::spawn_blocking(move || idle::sweep(&h)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        eprintln!("cairn serve: idle sweep: {}", cairn_agent::error_text(&e))
                    }
                    Err(e) => eprintln!("cairn serve: idle sweep: {e}"),
                }
            }
        });
        Some(IdleOwner {
            home: home.clone(),
            task,
            lease,
        })
    }

    /// Stops the task, gives the lease up and hands every running sandbox to a watcher.
    pub(super) async fn stop(self) {
        self.task.abort();
        // A sweep in flight finishes on its blocking thread; a stop it makes is taken under
        // the sandbox's lock, so a watcher started now cannot stop the same VMM again.
        let _ = self.task.await;
        drop(self.lease);
        let home = self.home;
        match tokio::task::spawn_blocking(move || idle::hand_back(&home)).await {
            Ok(Ok(n)) => eprintln!("cairn serve: idle sleep handed to {n} watcher(s)"),
            Ok(Err(e)) => eprintln!(
                "cairn serve: handing idle sleep back: {} (the next exec starts a watcher)",
                cairn_agent::error_text(&e)
            ),
            Err(e) => eprintln!("cairn serve: handing idle sleep back: {e}"),
        }
    }
}
