//! vCPU threads started ahead of their vCPUs.
//!
//! A new thread can wait a millisecond or more before it first runs on a busy host: the
//! scheduler queues a new task behind those already running (traced on the development host:
//! 1.3 ms from `clone3` to the vCPU thread's first system call while the other core ran guests,
//! 0.1 ms on an idle one). So the boot and the restore start their vCPU threads first, before
//! guest memory, the VM and the vCPUs are made; each thread installs the vCPU seccomp filter and
//! waits, and is handed its vCPU once that is configured ([`crate::vstate::vcpu::Vcpu::start_on`]).
//! A thread whose vCPU never comes (the build failed) ends when its [`VcpuThreads`] is dropped.

use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

/// What a waiting thread runs: the vCPU loop, given how installing the thread's seccomp filter
/// went.
pub(crate) type VcpuJob = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Threads waiting for their vCPUs, by vCPU index.
#[derive(Debug, Default)]
pub struct VcpuThreads {
    waiting: Vec<Option<(Sender<VcpuJob>, JoinHandle<()>)>>,
}

impl VcpuThreads {
    /// Start `count` threads, `cairn_vcpu0` onwards. One that cannot be started is left out:
    /// its vCPU then starts a thread of its own, as [`crate::vstate::vcpu::Vcpu::start`] does.
    pub fn start(count: u8) -> Self {
        let waiting = (0..count)
            .map(|index| {
                let (jobs, job) = mpsc::channel::<VcpuJob>();
                std::thread::Builder::new()
                    .name(format!("cairn_vcpu{index}"))
                    .spawn(move || {
                        let filtered =
                            crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Vcpu)
                                .map_err(|e| e.to_string());
                        if let Ok(job) = job.recv() {
                            job(filtered);
                        }
                    })
                    .map_err(|e| tracing::debug!("vCPU {index} thread not started ahead: {e}"))
                    .ok()
                    .map(|thread| (jobs, thread))
            })
            .collect();
        Self { waiting }
    }

    /// The waiting thread for vCPU `index`, if there is one (each is taken once).
    pub(crate) fn take(&mut self, index: u8) -> Option<(Sender<VcpuJob>, JoinHandle<()>)> {
        self.waiting.get_mut(usize::from(index))?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_run_their_job_once_and_end_unused() {
        let mut threads = VcpuThreads::start(2);
        let (jobs, thread) = threads.take(0).unwrap();
        assert!(threads.take(0).is_none());
        assert!(threads.take(7).is_none());
        let (done_tx, done) = mpsc::channel();
        let job: VcpuJob = Box::new(move |filtered| {
            let name = std::thread::current().name().map(str::to_string);
            done_tx.send((filtered.is_ok(), name)).unwrap();
        });
        jobs.send(job).unwrap();
        // Seccomp is off in unit tests: installing is a no-op that succeeds.
        assert_eq!(
            done.recv().unwrap(),
            (true, Some("cairn_vcpu0".to_string()))
        );
        thread.join().unwrap();
        // The unused thread ends once nothing can hand it a job.
        let (_, unused) = threads.take(1).unwrap();
        drop(threads);
        unused.join().unwrap();
    }
}
