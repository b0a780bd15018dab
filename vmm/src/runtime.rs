//! The runtime: the event loop plus at most one machine, and the machine's checkpoints. It is
//! the library's main entry point; the `cairn-vmm` binary, the API controller and the
//! benchmarks all drive a [`Runtime`].
//!
//! ```no_run
//! use cairn_vmm::builder::{BuildSpec, ConsoleIo};
//! use cairn_vmm::runtime::Runtime;
//! let mut rt = Runtime::new()?;
//! let console = ConsoleIo { output: Box::new(std::io::stdout()), input: None };
//! rt.boot(&BuildSpec::linux("vmlinux"), console)?;
//! let reason = rt.run_until_exit(None)?;
//! std::process::exit(reason.exit_code());
//! # Ok::<(), cairn_vmm::VmmError>(())
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_snapshot::checkpoint::CheckpointMeta;

use crate::builder::{build_machine, open_async_disk, open_raw_disk, BuildSpec, ConsoleIo};
use crate::checkpoint::named::CheckpointManager;
use crate::checkpoint::restore::{restore_machine, RestoreOptions};
use crate::checkpoint::snapshot::{create_snapshot, SnapshotKind, SnapshotReport};
use crate::checkpoint::state::read_state;
use crate::error::VmmError;
use crate::event_loop::{EventLoop, Subscriber};
use crate::machine::Machine;
use crate::vstate::vcpu::ExitReason;

/// The event loop, the machine it serves, and the machine's checkpoints.
pub struct Runtime {
    event_loop: EventLoop,
    /// Event sources that outlive a machine (the API), re-added when a machine is replaced.
    persistent: Vec<Subscriber>,
    machine: Option<Machine>,
    checkpoints: Option<CheckpointManager>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("machine", &self.machine)
            .field("checkpoints", &self.checkpoints)
            .finish()
    }
}

impl Runtime {
    /// A runtime with no machine yet.
    pub fn new() -> Result<Self, VmmError> {
        Ok(Self {
            event_loop: EventLoop::new()?,
            persistent: vec![],
            machine: None,
            checkpoints: None,
        })
    }

    /// Build and start a machine.
    pub fn boot(&mut self, spec: &BuildSpec, console: ConsoleIo) -> Result<(), VmmError> {
        if self.machine.is_some() {
            return Err(VmmError::InvalidState("the VM is already running".into()));
        }
        self.open_checkpoints(spec.checkpoint_dir.as_deref())?;
        let machine = match self.checkpoints.as_mut() {
            Some(ck) => build_machine(spec, console, &mut self.event_loop, &mut |cfg| {
                ck.open_disk(cfg, None)
            })?,
            None => build_machine(spec, console, &mut self.event_loop, &mut open_raw_disk)?,
        };
        self.machine = Some(machine);
        Ok(())
    }

    fn open_checkpoints(&mut self, dir: Option<&Path>) -> Result<(), VmmError> {
        self.checkpoints = match dir {
            Some(d) => Some(CheckpointManager::open(d)?),
            None => None,
        };
        Ok(())
    }

    /// Rebuild a machine from a snapshot (state file + memory layers) instead of booting.
    pub fn restore(
        &mut self,
        state_path: &Path,
        opts: &RestoreOptions,
        console: ConsoleIo,
    ) -> Result<(), VmmError> {
        if self.machine.is_some() {
            return Err(VmmError::InvalidState(
                "a VM is already running; restore needs a fresh VMM".into(),
            ));
        }
        let state = read_state(state_path)?;
        // A VMM that takes checkpoints of the loaded VM gets memory it can write-protect.
        let mut opts = opts.clone();
        opts.fill_anonymous |= self.checkpoints.is_some()
            && opts.track_dirty_pages
            && crate::checkpoint::filled_memory::wanted(&opts.memory_layers);
        let opts = &opts;
        // A drive configured `io_engine: "Async"` runs on io_uring again, as Firecracker's does.
        let settings = state.device_settings.clone();
        let mut open = |cfg: &cairn_devices::virtio::block::BlockConfig| {
            if settings.is_async(&cfg.drive_id) {
                open_async_disk(cfg)
            } else {
                open_raw_disk(cfg)
            }
        };
        self.machine = Some(restore_machine(
            &state,
            opts,
            console,
            &mut self.event_loop,
            &mut open,
        )?);
        Ok(())
    }

    /// Snapshot the paused machine (Firecracker's `PUT /snapshot/create`).
    pub fn snapshot(
        &mut self,
        kind: SnapshotKind,
        state_path: &Path,
        mem_path: &Path,
    ) -> Result<SnapshotReport, VmmError> {
        let machine = self
            .machine
            .as_mut()
            .ok_or_else(|| VmmError::InvalidState("the VM is not running".into()))?;
        create_snapshot(machine, kind, state_path, mem_path)
    }

    /// Open the checkpoint store at `dir` unless one is open already (a fresh VMM started
    /// with `--checkpoint-dir` lists, deletes and restores checkpoints before any boot).
    pub fn use_checkpoint_dir(&mut self, dir: Option<&Path>) -> Result<(), VmmError> {
        if self.checkpoints.is_none() && dir.is_some() {
            self.open_checkpoints(dir)?;
        }
        Ok(())
    }

    fn checkpoints_mut(&mut self) -> Result<&mut CheckpointManager, VmmError> {
        self.checkpoints.as_mut().ok_or_else(|| {
            VmmError::InvalidState("checkpoints need a checkpoint directory (config key \"cairn\": {\"checkpoint_dir\": ...})".into())
        })
    }

    /// Take a named checkpoint of the running machine (`PUT /checkpoints`). Without a name, one
    /// is made from the time.
    pub fn create_checkpoint(&mut self, name: Option<&str>) -> Result<CheckpointMeta, VmmError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => format!("ckpt-{}", cairn_snapshot::checkpoint::now_unix_ms()),
        };
        cairn_snapshot::checkpoint::store::validate_name(&name)
            .map_err(|e| VmmError::Config(e.to_string()))?;
        let machine = self
            .machine
            .as_mut()
            .ok_or_else(|| VmmError::InvalidState("the VM is not running".into()))?;
        let ck = self.checkpoints.as_mut().ok_or_else(|| {
            VmmError::InvalidState("checkpoints need a checkpoint directory (config key \"cairn\": {\"checkpoint_dir\": ...})".into())
        })?;
        let meta = ck.create(machine, &name)?;
        // A machine with checkpoints may be asked to restore one: have its VM ready.
        crate::vstate::prewarm::start();
        Ok(meta)
    }

    /// Every checkpoint with its cost (`GET /checkpoints`).
    pub fn list_checkpoints(&mut self) -> Result<Vec<CheckpointMeta>, VmmError> {
        self.checkpoints_mut()?.list()
    }

    /// Delete a checkpoint; the others stay restorable (`DELETE /checkpoints/{name}`).
    pub fn delete_checkpoint(&mut self, name: &str) -> Result<(), VmmError> {
        self.checkpoints_mut()?.delete(name)
    }

    /// Replace the running machine (if any) with checkpoint `name` (`PUT /checkpoints/restore`).
    /// `checkpoint_dir` opens the store when no machine was booted in this process; `console` makes
    /// the new machine's console (twice if it must bring the old one back).
    ///
    /// All or nothing: everything checkable (the chain's state, memory and disk layers, that the
    /// head can be recorded) is checked before the running machine is touched, so a bad checkpoint
    /// leaves it running. If the restore still fails after that, the machine is brought back from
    /// the checkpoint it descended from, and the error says so.
    pub fn restore_checkpoint(
        &mut self,
        name: &str,
        checkpoint_dir: Option<&Path>,
        resume: bool,
        vsock_uds_path: Option<std::path::PathBuf>,
        console: impl FnMut() -> ConsoleIo,
    ) -> Result<(), VmmError> {
        if self.checkpoints.is_none() {
            self.open_checkpoints(checkpoint_dir)?;
        }
        // The chain's metadata is read once for the whole restore, not once per walk.
        self.checkpoints_mut()?.begin_memo();
        let restored = self.restore_checkpoint_memoized(name, resume, vsock_uds_path, console);
        if let Some(ck) = self.checkpoints.as_mut() {
            ck.end_memo();
        }
        restored
    }

    fn restore_checkpoint_memoized(
        &mut self,
        name: &str,
        resume: bool,
        vsock_uds_path: Option<std::path::PathBuf>,
        mut console: impl FnMut() -> ConsoleIo,
    ) -> Result<(), VmmError> {
        let ck = self.checkpoints_mut()?;
        ck.get(name)?;
        ck.check_restorable(name)?;
        let previous = ck.head().map(str::to_string);
        let state = read_state(&ck.state_path(name)?)?;
        let had_machine = self.machine.is_some();
        let err = match self.replace_with_checkpoint(
            name,
            &state,
            resume,
            vsock_uds_path.clone(),
            console(),
        ) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(prev) = previous.filter(|_| had_machine) else {
            return Err(err);
        };
        let back = read_state(&self.checkpoints_mut()?.state_path(&prev)?).and_then(|st| {
            self.replace_with_checkpoint(&prev, &st, resume, vsock_uds_path, console())
        });
        Err(VmmError::InvalidState(match back {
            Ok(()) => format!(
                "restoring {name} failed after the VM was stopped ({err}); the VM was brought back from its newest checkpoint {prev} (changes since {prev} are lost)"
            ),
            Err(e2) => format!(
                "restoring {name} failed after the VM was stopped ({err}), and bringing it back from its newest checkpoint {prev} failed too ({e2}): no VM runs"
            ),
        }))
    }

    fn replace_with_checkpoint(
        &mut self,
        name: &str,
        state: &crate::checkpoint::state::MachineState,
        resume: bool,
        vsock_uds_path: Option<std::path::PathBuf>,
        console: ConsoleIo,
    ) -> Result<(), VmmError> {
        let layers = self.checkpoints_mut()?.memory_layers(name)?;
        // The old machine goes first: its vCPUs, devices and event sources.
        self.shutdown();
        self.event_loop = EventLoop::new()?;
        for s in &self.persistent {
            self.event_loop.add(s.clone());
        }
        // Paused until the head is recorded: a head that cannot be written (full disk) fails the
        // restore before the guest has run at all.
        let opts = RestoreOptions {
            fill_anonymous: crate::checkpoint::filled_memory::wanted(&layers),
            memory_layers: layers,
            track_dirty_pages: true,
            resume: false,
            network_overrides: vec![],
            vsock_uds_path,
        };
        let ck = self
            .checkpoints
            .as_mut()
            .ok_or_else(|| VmmError::InvalidState("no checkpoint store".into()))?;
        ck.release_drives();
        if let Some(socket) = crate::checkpoint::served_disk::take_next() {
            ck.fetch_disks_from(crate::checkpoint::served_disk::connect(&socket)?);
        }
        let machine = restore_machine(state, &opts, console, &mut self.event_loop, &mut |cfg| {
            ck.open_disk(cfg, Some(name))
        })?;
        let mut machine = machine;
        ck.set_head(Some(name.to_string()))?;
        // Served memory's layer files fill in as the guest runs: the page server checks them.
        if !crate::checkpoint::served_memory::memory_is_served() {
            ck.verify_in_background(name, machine.exit_signal().clone());
        }
        if resume {
            machine.resume()?;
        }
        self.machine = Some(machine);
        // The next restore finds its VM made (vstate/prewarm.rs).
        crate::vstate::prewarm::start();
        Ok(())
    }

    /// The machine, once booted.
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    /// The machine, once booted.
    /// Whether a cairn checkpoint store is open (writable drives are then layered on it).
    pub fn uses_checkpoints(&self) -> bool {
        self.checkpoints.is_some()
    }

    pub fn machine_mut(&mut self) -> Option<&mut Machine> {
        self.machine.as_mut()
    }

    /// Add an event source that outlives machines (an API wake-up, say).
    pub fn add_subscriber(&mut self, subscriber: Subscriber) {
        self.persistent.push(subscriber.clone());
        self.event_loop.add(subscriber);
    }

    /// Serve events for up to `timeout_ms` (-1: until something happens). Returns the machine's
    /// exit reason once it has one.
    pub fn poll(&mut self, timeout_ms: i32) -> Result<Option<ExitReason>, VmmError> {
        self.event_loop.run_once(timeout_ms)?;
        Ok(self.machine.as_ref().and_then(|m| m.exit_signal().reason()))
    }

    /// Serve events until the machine stops (or `timeout` passes: then `ExitReason::Stopped`).
    pub fn run_until_exit(&mut self, timeout: Option<Duration>) -> Result<ExitReason, VmmError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(ExitReason::Stopped);
                    }
                    left.as_millis().min(i32::MAX as u128) as i32
                }
                None => -1,
            };
            if let Some(reason) = self.poll(wait)? {
                return Ok(reason);
            }
        }
    }

    /// Stop the machine's vCPUs and drop it.
    pub fn shutdown(&mut self) {
        if let Some(m) = self.machine.take() {
            m.shutdown();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}
