//! Turns for opening guest-agent connections, per sandbox, first come first served.
//!
//! Every API request that reaches a guest opens its own agent connection (vsock `CONNECT`,
//! hellos) and starts a process or a transfer. Fifty at once on one sandbox would all wait on
//! one guest to accept them and fork, and on a slow guest most would pass the agent client's
//! connect timeout. Here at most [`CONNECTS_PER_SANDBOX`] requests to one sandbox are between
//! "connecting" and "started" (or "transferred") at a time; the others queue in arrival order,
//! and each one's connect timeout starts when its turn comes. A process, once started, runs
//! alongside the others and holds no turn, so long-running execs do not block new ones.
//!
//! The same holds across sandboxes: at most as many requests as the host has CPUs are
//! connecting or starting at once, since that work runs on the host's CPUs (the guests'
//! vCPU threads), and more at once only slows each past its timeout. A turn held longer than
//! [`HOLD_LIMIT`] (a guest that accepted but does not answer) stops counting, so a stuck guest
//! cannot hold the others up for longer than that.

use cairn_agent::client::{Client, ClientError};
use cairn_agent::proto::AGENT_PORT;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How many agent connections may be opening to one sandbox at once.
pub const CONNECTS_PER_SANDBOX: usize = 2;

/// How long a turn counts against its limit at most.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// One sandbox's queue: tickets are handed out in arrival order and admitted in that order.
#[derive(Debug, Default)]
struct Queue {
    next_ticket: u64,
    next_turn: u64,
    /// The turns out, by ticket, with when each began.
    held: HashMap<u64, Instant>,
}

impl Queue {
    fn counting(&self) -> usize {
        self.held
            .values()
            .filter(|t| t.elapsed() < HOLD_LIMIT)
            .count()
    }
}

#[derive(Debug, Default)]
struct Gate {
    queue: Mutex<Queue>,
    moved: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A place in a sandbox's limit, given back when dropped.
#[derive(Debug)]
pub struct Turn {
    gate: Arc<Gate>,
    ticket: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.gate.lock().held.remove(&self.ticket);
        self.gate.moved.notify_all();
    }
}

fn gate(key: &str) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Gate>>>> = OnceLock::new();
    let mut gates = GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Arc::clone(gates.entry(key.to_string()).or_default())
}

/// Waits, in arrival order, until fewer than `limit` turns for `key` are out; takes one.
pub fn wait_turn(key: &str, limit: usize) -> Turn {
    let gate = gate(key);
    let mut q = gate.lock();
    let ticket = q.next_ticket;
    q.next_ticket += 1;
    while q.next_turn != ticket || q.counting() >= limit.max(1) {
        // Woken by a turn given back, or soon after, for turns that stop counting.
        q = gate
            .moved
            .wait_timeout(q, Duration::from_millis(200))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    q.next_turn += 1;
    q.held.insert(ticket, Instant::now());
    drop(q);
    // The next in line may be able to go too.
    gate.moved.notify_all();
    Turn { gate, ticket }
}

/// Opens a connection to the guest agent behind `vsock` in its turn (see the module doc);
/// the turn ends when the connection is open.
pub fn connect(vsock: &Path) -> Result<Client, ClientError> {
    connect_in_turn(vsock).map(|(c, _)| c)
}

/// [`connect`], the turns handed back: hold them until the process has started (or the
/// transfer is done).
pub fn connect_in_turn(vsock: &Path) -> Result<(Client, Turns), ClientError> {
    // Always the sandbox's turn first, then the host's: no one waits for the first holding
    // the second.
    let sandbox = wait_turn(&vsock.to_string_lossy(), CONNECTS_PER_SANDBOX);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let host = wait_turn("", cpus.max(2));
    let turns = Turns {
        _host: host,
        _sandbox: sandbox,
    };
    Ok((Client::connect_uds(vsock, AGENT_PORT)?, turns))
}

/// A request's turns: its sandbox's and the host's (the host's given back first).
#[derive(Debug)]
pub struct Turns {
    _host: Turn,
    _sandbox: Turn,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn turns_are_limited_per_key_and_taken_in_arrival_order() {
        let key = "turns_are_limited_per_key";
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let order = Arc::new(Mutex::new(Vec::new()));
        // The first turn is held while the others queue up behind it, one after another.
        let first = wait_turn(key, 2);
        let second = wait_turn(key, 2);
        let mut threads = Vec::new();
        for i in 0..8 {
            let (now, most, order) = (now.clone(), most.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _t = wait_turn(key, 2);
                order.lock().unwrap().push(i);
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                now.fetch_sub(1, Ordering::SeqCst);
            }));
            std::thread::sleep(Duration::from_millis(20));
        }
        // Another key is not held up by this one.
        drop(wait_turn("another key", 1));
        // A turn held past the limit stops counting.
        {
            let stale = wait_turn("stale", 1);
            stale
                .gate
                .lock()
                .held
                .insert(stale.ticket, Instant::now() - HOLD_LIMIT);
            drop(wait_turn("stale", 1));
        }
        assert!(order.lock().unwrap().is_empty(), "both turns are out");
        drop((first, second));
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        // Admitted in arrival order; two at a time may then record themselves either way.
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 8);
        for (pos, i) in order.iter().enumerate() {
            assert!(pos.abs_diff(*i) <= 1, "{order:?}");
        }
    }
}
