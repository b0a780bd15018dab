//! cairn's named, incremental checkpoints of memory, disks and devices, beyond Firecracker's
//! snapshots: create, list, restore any of a chain (layers mapped, never merged first), and
//! delete any one while every other stays restorable.
//!
//! The first checkpoint of a VM holds every page it touched (Full); each later one holds the
//! pages dirtied since its parent (the checkpoint taken or restored last), plus the disk blocks
//! written since then, frozen out of the active delta in O(dirty blocks).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_devices::virtio::block::{BlockConfig, DiskBackend, RawFile};
use cairn_snapshot::checkpoint::store::disk_layer_file;
use cairn_snapshot::checkpoint::{
    CheckpointMeta, CheckpointStore, DiskMeta, MemoryMeta, MEM_LAYER_FILE, STATE_FILE,
};
use cairn_snapshot::disk::{DiskFetch, FrozenLayer, LayeredDisk};
use cairn_snapshot::durable::WrittenFile;

use crate::checkpoint::background;
use crate::checkpoint::disk::{FetchedRaw, LayeredBackend, LayeredDrive};
use crate::checkpoint::memory::{copy_pages, mem_size, start_writeback, LayerFile, PAGE_SIZE};
use crate::checkpoint::prearm::PreArmed;
use crate::checkpoint::snapshot::{pages_for, SnapshotKind};
use crate::checkpoint::staged::StagingBuffer;
use crate::checkpoint::state::{
    capture_requested, request_vcpu_states, write_state_unsynced, PendingVcpuStates,
};
use crate::checkpoint::verify;
use crate::error::VmmError;
use crate::machine::{Machine, RunState};
use crate::vstate::vcpu::{ExitReason, ExitSignal};
use cairn_snapshot::memory::PageIndex;

/// How long a background checkpoint waits for the vCPUs to take the resume before it copies.
const RESUME_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// A Diff with no more dirty pages than this when it starts (2 MiB) is copied paused. Tracking
/// writes has a fixed cost (protecting the pages, then lifting the protection: each a TLB
/// shootdown on every CPU the guest runs on, 0.2–2 ms on the development host), which for a few
/// pages is more than their copy: 2 MiB copies in 0.3–1 ms, so the pause stays under 2 ms (on a
/// disk file system into memory, checkpoint/staged.rs).
const PAUSED_DIFF_PAGES: u64 = 512;

fn snap_err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Snapshot(e.to_string())
}

/// The checkpoints of one VM.
#[derive(Debug)]
pub struct CheckpointManager {
    store: CheckpointStore,
    head: Option<String>,
    /// The checkpoint the running VM's *memory* descends from: `None` after a fresh boot (disks
    /// may still continue from `head`) and after a failed checkpoint (which may have taken the
    /// dirty-page log), so that the next checkpoint is Full.
    memory_head: Option<String>,
    drives: Vec<LayeredDrive>,
    /// Page hashes of `memory_head`, when `CAIRN_VERIFY_MEMORY=1` (checkpoint/verify.rs).
    verified_hashes: Option<Vec<u64>>,
    /// Where small Diffs' pages are copied in the pause (checkpoint/staged.rs).
    staging: StagingBuffer,
    /// Fills absent ranges of disk files (`--block-server`, checkpoint/served_disk.rs): kept
    /// for the process's life, so every disk opened after the first restore uses it.
    fetch: Option<Arc<dyn DiskFetch>>,
}

impl CheckpointManager {
    /// Open (or create) the checkpoint directory `root`; incomplete checkpoints left by a crash
    /// are removed.
    pub fn open(root: &Path) -> Result<Self, VmmError> {
        std::fs::create_dir_all(root)
            .map_err(VmmError::io(format!("checkpoint dir {}", root.display())))?;
        let store = CheckpointStore::open(root).map_err(snap_err)?;
        let removed = store.cleanup_incomplete().map_err(snap_err)?;
        for name in removed {
            tracing::warn!("removed incomplete checkpoint {name} (interrupted earlier)");
        }
        for name in store.finish_interrupted_deletes().map_err(snap_err)? {
            tracing::warn!("finished deleting checkpoint {name} (interrupted earlier)");
        }
        std::fs::create_dir_all(store.active_dir()).map_err(VmmError::io("active delta dir"))?;
        let head = store.head();
        Ok(Self {
            store,
            head,
            memory_head: None,
            drives: vec![],
            verified_hashes: None,
            staging: if background::enabled() {
                StagingBuffer::prewarmed(PAUSED_DIFF_PAGES)
            } else {
                StagingBuffer::default()
            },
            fetch: None,
        })
    }

    /// Read each checkpoint's metadata at most once until [`CheckpointManager::end_memo`]: a
    /// restore walks the chain several times (checks, memory layers, each disk's layers).
    pub fn begin_memo(&mut self) {
        self.store = self.store.memoized();
    }

    /// Read metadata afresh again (after [`CheckpointManager::begin_memo`]).
    pub fn end_memo(&mut self) {
        self.store = self.store.unmemoized();
    }

    /// Record the head, so that a later boot continues the disks from it.
    fn write_head(&self) -> Result<(), VmmError> {
        self.store.set_head(self.head.as_deref()).map_err(snap_err)
    }

    /// Check everything about restoring `name` that can be checked before the running VM is
    /// touched (its files, and that the head can be recorded).
    pub fn check_restorable(&self, name: &str) -> Result<(), VmmError> {
        self.store.check_restorable(name).map_err(snap_err)?;
        self.store.check_head_writable().map_err(snap_err)
    }

    /// The checkpoint the running VM descends from.
    pub fn head(&self) -> Option<&str> {
        self.head.as_deref()
    }

    fn active_path(&self, drive_id: &str) -> PathBuf {
        self.store.active_delta(drive_id)
    }

    /// Open `cfg`'s disk on the layered store. On a boot (`restoring: None`) the disk continues
    /// where it was: the head checkpoint's layers plus the kept active delta, so a rebooted VM
    /// keeps its writes. When restoring checkpoint `name`, the active delta starts empty on top of
    /// that checkpoint's layers, over the base image the store records for the drive
    /// ([`CheckpointStore::set_drive_base`], set in a fork) or else the saved config's.
    /// Read-only drives stay plain files: they never change.
    pub fn open_disk(
        &mut self,
        cfg: &BlockConfig,
        restoring: Option<&str>,
    ) -> Result<Box<dyn DiskBackend>, VmmError> {
        if cfg.read_only {
            let raw = RawFile::open(&cfg.path, true)
                .map_err(VmmError::io(format!("{}", cfg.path.display())))?;
            return match &self.fetch {
                Some(fetch) => Ok(Box::new(
                    FetchedRaw::new(raw, &cfg.path, fetch.clone())
                        .map_err(VmmError::io(format!("{}", cfg.path.display())))?,
                )),
                None => Ok(Box::new(raw)),
            };
        }
        let active = self.active_path(&cfg.drive_id);
        let from = match restoring {
            Some(name) => {
                let _ = std::fs::remove_file(cairn_snapshot::disk::index::index_path(&active));
                let _ = std::fs::remove_file(&active);
                Some(name.to_string())
            }
            None => self.head.clone(),
        };
        let layers = match &from {
            Some(name) => self
                .store
                .disk_layers(name, &cfg.drive_id)
                .map_err(snap_err)?,
            None => vec![],
        };
        // A forked store names its own base image (the saved config names the original's).
        let base = match restoring {
            Some(_) => self.store.drive_base(&cfg.drive_id).map_err(snap_err)?,
            None => None,
        }
        .unwrap_or_else(|| cfg.path.clone());
        let mut disk = LayeredDisk::open(&base, &layers, active).map_err(snap_err)?;
        if let Some(fetch) = &self.fetch {
            disk.set_fetcher(fetch.clone());
        }
        let disk = Arc::new(Mutex::new(disk));
        self.drives.retain(|d| d.drive_id != cfg.drive_id);
        self.drives.push(LayeredDrive {
            drive_id: cfg.drive_id.clone(),
            base,
            disk: disk.clone(),
        });
        Ok(Box::new(LayeredBackend::new(disk)))
    }

    /// Read the disk files of every disk opened from now on through `fetch`.
    pub fn fetch_disks_from(&mut self, fetch: Arc<dyn DiskFetch>) {
        self.fetch = Some(fetch);
    }

    /// Forget the drives of a machine that is gone.
    pub fn release_drives(&mut self) {
        self.drives.clear();
    }

    /// Check `name`'s memory layers against their chunk checksums on a background thread (after
    /// a second), so a restore is not slower; a layer that fails (twice: a delete may rewrite an index meanwhile)
    /// stops the machine through `exit` with [`ExitReason::CorruptMemory`].
    pub fn verify_in_background(&self, name: &str, exit: Arc<ExitSignal>) {
        let (store, owned) = (self.store.unmemoized(), name.to_string());
        let spawned = std::thread::Builder::new()
            .name("cairn-verify".into())
            .spawn(move || {
                let name = owned;
                // Let the restore's reply and the guest's first steps have the CPU first.
                std::thread::sleep(std::time::Duration::from_secs(1));
                let started = Instant::now();
                let Err(e) = store.verify_memory(&name) else {
                    tracing::debug!("memory of {name} verified in {:?}", started.elapsed());
                    return;
                };
                if !matches!(e, cairn_snapshot::Error::LayerChecksum { .. }) {
                    tracing::warn!("could not verify the memory of {name}: {e}");
                    return;
                }
                if let Err(e) = store.verify_memory(&name) {
                    tracing::error!("checkpoint {name}: {e}; stopping the VM");
                    exit.signal(ExitReason::CorruptMemory(e.to_string()));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("could not start verifying the memory of {name}: {e}");
        }
    }

    /// Mark `name` as the running VM's parent (after restoring it).
    pub fn set_head(&mut self, name: Option<String>) -> Result<(), VmmError> {
        self.verified_hashes = match (&name, verify::enabled()) {
            (Some(n), true) => self.store.dir_of(n).ok().and_then(|d| verify::load(&d)),
            _ => None,
        };
        self.memory_head = name.clone();
        self.head = name;
        self.write_head()
    }

    /// The memory layers to map for restoring `name`, base first.
    pub fn memory_layers(&self, name: &str) -> Result<Vec<PathBuf>, VmmError> {
        self.store.memory_layers(name).map_err(snap_err)
    }

    /// The state file of `name`.
    pub fn state_path(&self, name: &str) -> Result<PathBuf, VmmError> {
        Ok(self.store.dir_of(name).map_err(snap_err)?.join(STATE_FILE))
    }

    /// Check that `name` exists.
    pub fn get(&self, name: &str) -> Result<CheckpointMeta, VmmError> {
        self.store.get(name).map_err(snap_err)
    }

    /// Take checkpoint `name` of `machine`. A running machine is paused only to collect the
    /// vCPU and device state, freeze the disks' deltas and write-protect the memory to save; it
    /// runs again while the memory is copied (checkpoint/background.rs), unless the kernel cannot
    /// track writes to this memory: then the copy is made paused, as a stopped machine's is.
    pub fn create(
        &mut self,
        machine: &mut Machine,
        name: &str,
    ) -> Result<CheckpointMeta, VmmError> {
        if self.store.exists(name) {
            return Err(VmmError::InvalidState(format!(
                "checkpoint {name:?} already exists"
            )));
        }
        let started = Instant::now();
        let dir = self.store.create_dir_for(name).map_err(snap_err)?;
        let (mut meta, written) = match self.write_checkpoint(machine, name, &dir) {
            Ok(done) => done,
            Err(e) => {
                self.abandon(&dir);
                return Err(e);
            }
        };
        meta.total_ms = started.elapsed().as_secs_f64() * 1e3;
        // One commit syncs every file the checkpoint wrote (and the disks' new active deltas),
        // then renames meta.json and HEAD in (cairn_snapshot::durable::CommitSet).
        let commit_from = Instant::now();
        let committed = self
            .store
            .commit_with(&meta, written, true, |f| start_writeback(f, 0, 0));
        let meta = match committed {
            Ok(meta) => meta,
            Err(e) => {
                self.abandon(&dir);
                return Err(snap_err(e));
            }
        };
        tracing::debug!(
            "checkpoint {name}: commit {:.2} ms",
            commit_from.elapsed().as_secs_f64() * 1e3
        );
        self.head = Some(name.to_string());
        self.memory_head = Some(name.to_string());
        Ok(meta)
    }

    /// Remove the directory of a checkpoint that failed, after giving each disk layer frozen
    /// into it back to its drive's active delta ([`LayeredDisk::thaw`]): otherwise the blocks
    /// written since the last checkpoint would be in no checkpoint once the directory is gone.
    /// The failed checkpoint may have taken the dirty-page log, so the next one is Full.
    fn abandon(&mut self, dir: &Path) {
        self.memory_head = None;
        for drive in &self.drives {
            let layer = dir.join(disk_layer_file(&drive.drive_id));
            let mut disk = drive.disk.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = disk.thaw(&layer) {
                tracing::warn!(
                    "drive {}: the failed checkpoint's disk layer could not be given back: {e}",
                    drive.drive_id
                );
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Write checkpoint `name` into `dir`: its metadata (to commit) and the files the commit
    /// must sync.
    fn write_checkpoint(
        &mut self,
        machine: &mut Machine,
        name: &str,
        dir: &Path,
    ) -> Result<(CheckpointMeta, Vec<WrittenFile>), VmmError> {
        let written = self.write_checkpoint_tracked(machine, name, dir);
        // A tracker on the memory fill's userfaultfd serves one checkpoint: dropping it lets the
        // fill end its registration (checkpoint/filled_memory/lease.rs).
        if machine
            .write_tracker
            .as_ref()
            .is_some_and(|t| t.is_shared())
        {
            machine.write_tracker = None;
        }
        written
    }

    fn write_checkpoint_tracked(
        &mut self,
        machine: &mut Machine,
        name: &str,
        dir: &Path,
    ) -> Result<(CheckpointMeta, Vec<WrittenFile>), VmmError> {
        let begun = Instant::now();
        let mut layer = LayerFile::create(&dir.join(MEM_LAYER_FILE), mem_size(machine.memory()))?;
        let created_ms = begun.elapsed().as_secs_f64() * 1e3;
        let was_running = machine.state() == RunState::Running;
        let mut phases = Phases::new(Instant::now());
        let may_track = was_running && background::enabled();
        let small = if may_track {
            self.small_diff(machine)?
        } else {
            None
        };
        let in_background = may_track && small.is_none();
        // A small Diff is copied in the pause: on a disk file system into memory, written to
        // the layer after the resume (checkpoint/staged.rs: a write in the pause may wait on the
        // file system); on tmpfs straight into the layer, which is one memcpy as well.
        let staged_copy = small.is_some() && !crate::checkpoint::holes::on_tmpfs(&layer.file)?;
        if let Some(pages) = small {
            tracing::debug!("checkpoint {name}: {pages} dirty pages: copied in the pause");
            if staged_copy {
                self.staging.reserve(pages);
            }
        }
        // Restored memory still being filled from its layers (checkpoint/filled_memory.rs): a
        // Diff tracks writes on the fill's own userfaultfd while the fill goes on (its pages are
        // all present); a Full saves pages the fill may not have read yet, so the rest is
        // copied now, the guest running, and the missing-page registration ends.
        if in_background {
            if let Some(filled) = machine.filled.take() {
                let diff = self.kind_for(machine) == SnapshotKind::Diff;
                match diff.then(|| filled.write_tracker()).flatten() {
                    Some(tracker) => {
                        machine.write_tracker = Some(tracker);
                        machine.filled = Some(filled);
                        phases.mark("track writes on the memory fill's userfaultfd");
                    }
                    None => {
                        if let Err(e) = filled.finish() {
                            layer.discard();
                            return Err(e);
                        }
                        phases.mark("finish the memory fill (guest running)");
                    }
                }
            }
        }
        // Write tracking armed while the guest runs, where KVM's dirty log says what it wrote
        // meanwhile (checkpoint/prearm.rs); else armed at the pause.
        let mut prearmed = None;
        if in_background && machine.vm().dirty_tracking() {
            let full = self.kind_for(machine) == SnapshotKind::Full;
            match PreArmed::start(machine, full, &mut phases) {
                Ok(armed) => prearmed = Some(armed),
                Err(e) => warn_once_no_background(&e),
            }
        }
        let paused_at = Instant::now();
        phases.restart(paused_at);
        // The vCPU states are asked for with the pause: each thread saves its own as it parks.
        let parked = machine.request_pause().and_then(|_| {
            let pending = request_vcpu_states(machine)?;
            match prearmed.as_mut() {
                Some(armed) => machine.wait_paused_serving(|| armed.serve()),
                None => machine.wait_paused_serving(|| Ok(())),
            }
            .map(|_| pending)
        });
        let pending = match parked {
            Ok(pending) => pending,
            Err(e) => {
                layer.discard();
                return Err(e);
            }
        };
        phases.mark("pause vCPUs");
        let paused = match self.collect_paused(machine, name, dir, pending, &mut phases) {
            Ok(p) => p,
            Err(e) => {
                layer.discard();
                if was_running {
                    machine.resume()?;
                }
                return Err(e);
            }
        };
        // The layer's chunk checksums are taken from the pages as they are written, so that
        // the commit does not read the layer back.
        layer.checksum_as_written(&paused.index_pages, &paused.pages);
        // Memory: copied while the guest runs where writes can be tracked, else now.
        let tracked = match (prearmed, in_background) {
            (Some(armed), _) => match armed.seal(machine.memory(), &paused.pages, &mut phases) {
                Ok(copy) => Some(copy),
                Err(e) => {
                    warn_once_no_background(&e);
                    None
                }
            },
            (None, true) => {
                let kept = machine.write_tracker.take();
                match background::arm(kept, machine.memory(), &paused.pages, &mut phases) {
                    Ok(copy) => Some(copy),
                    Err(e) => {
                        warn_once_no_background(&e);
                        None
                    }
                }
            }
            (None, false) => None,
        };
        let mut copy_started = Instant::now();
        let copied = match tracked {
            Some(copy) => {
                let resume_sent = Instant::now();
                let resumed = machine.resume();
                phases.mark("resume");
                // The guest-visible pause ends when the (last) vCPU thread takes the resume:
                // wait for that briefly before copying, so the copy does not delay it.
                let taken = resumed
                    .is_ok()
                    .then(|| machine.wait_resumed(RESUME_WAIT))
                    .flatten();
                phases.mark("vCPUs took the resume");
                resumed.and_then(|_| copy.run(&layer)).map(|(s, tracker)| {
                    // Still registered, nothing protected: the next checkpoint arms it again.
                    machine.write_tracker = Some(tracker);
                    let end = taken
                        .or_else(|| machine.resumed_at())
                        .unwrap_or(resume_sent);
                    let pause_ms = end.saturating_duration_since(paused_at).as_secs_f64() * 1e3;
                    // write_ms: the copy's time with the guest running.
                    copy_started = copy_started.max(end);
                    tracing::debug!(
                        "checkpoint {name}: paused {pause_ms:.3} ms: {phases}; then copied {} pages, {} of them first for a writer, in {:.1} ms (faults {:.1}, chunks {:.1}, unprotect {:.1} in {} lifts), release {:.1} ms",
                        s.bytes / PAGE_SIZE,
                        s.early_pages,
                        s.copy_ms,
                        s.fault_ms,
                        s.chunk_write_ms,
                        s.unprotect_ms,
                        s.lifts,
                        s.release_ms
                    );
                    (s.bytes, pause_ms)
                })
            }
            None => {
                let staged = if staged_copy {
                    self.staging.stage(machine.memory(), &paused.pages)
                } else {
                    Ok(None)
                };
                let (bytes, staged) = match staged {
                    Ok(Some(staged)) => {
                        tracing::debug!("checkpoint {name}: staged in memory");
                        (Ok(0), Some(staged))
                    }
                    Ok(None) => {
                        if staged_copy {
                            tracing::debug!(
                                "checkpoint {name}: {} dirty pages at the pause, more than the buffer holds: written in the pause",
                                paused.pages.page_count()
                            );
                        }
                        (copy_pages(machine.memory(), &paused.pages, &layer), None)
                    }
                    Err(e) => (Err(e), None),
                };
                let resumed = if was_running {
                    machine.resume().map(|_| ())
                } else {
                    Ok(())
                };
                let pause_ms = paused_at.elapsed().as_secs_f64() * 1e3;
                let bytes = match staged {
                    Some(staged) => bytes.and_then(|_| staged.write_to(&layer)),
                    None => bytes,
                };
                resumed.and(bytes).map(|b| (b, pause_ms))
            }
        };
        let (bytes, pause_ms) = match copied {
            Ok(c) => c,
            Err(e) => {
                layer.discard();
                return Err(e);
            }
        };
        let write_ms = Instant::now()
            .saturating_duration_since(copy_started)
            .as_secs_f64()
            * 1e3;
        let finish_from = Instant::now();
        let mut written = Vec::new();
        for frozen in paused.disk_files {
            written.extend(frozen.into_written().map_err(snap_err)?);
        }
        written.push(layer.finish_unsynced(&paused.index_pages)?);
        let finish_ms = finish_from.elapsed().as_secs_f64() * 1e3;
        if let Some(hashes) = &paused.hashes {
            let differ =
                verify::layer_mismatches(&dir.join(MEM_LAYER_FILE), &paused.pages, hashes)?;
            verify::report(
                &format!("checkpoint {name}: layer against the pause"),
                &differ,
            );
        }
        written.push(write_state_unsynced(&dir.join(STATE_FILE), &paused.state)?);
        tracing::debug!(
            "checkpoint {name}: {bytes} bytes, create the layer {created_ms:.2} ms, before the pause {:.2} ms, pause {pause_ms:.2} ms, copy {write_ms:.2} ms, index and rename {finish_ms:.2} ms, all {:.2} ms",
            paused_at.saturating_duration_since(begun).as_secs_f64() * 1e3,
            begun.elapsed().as_secs_f64() * 1e3
        );
        let meta = CheckpointMeta {
            name: name.to_string(),
            // The disks always continue from the head; memory too when it is a Diff.
            parent: self.head.clone(),
            created_unix_ms: cairn_snapshot::checkpoint::meta::now_unix_ms(),
            format_version: cairn_snapshot::checkpoint::meta::META_FORMAT_VERSION,
            cpu_template: Some(machine.spec().cpu_template.name().to_string()),
            memory: MemoryMeta {
                dirty_mib: mib(bytes),
                layer_file: MEM_LAYER_FILE.to_string(),
            },
            disks: paused.disks,
            pause_ms,
            write_ms,
            total_ms: 0.0,
            files: Default::default(),
        };
        Ok((meta, written))
    }

    /// The dirty pages so far when the checkpoint `machine` is about to take is a Diff of at
    /// most [`PAUSED_DIFF_PAGES`] of them, which is copied paused.
    fn small_diff(&self, machine: &mut Machine) -> Result<Option<u64>, VmmError> {
        if self.kind_for(machine) != SnapshotKind::Diff {
            return Ok(None);
        }
        machine.collect_dirty()?;
        let pages = machine
            .dirty_so_far(crate::machine::DirtyConsumer::Checkpoint)
            .page_count();
        Ok((pages <= PAUSED_DIFF_PAGES).then_some(pages))
    }

    /// Memory is a Diff only over the checkpoint it really descends from.
    fn kind_for(&self, machine: &Machine) -> SnapshotKind {
        if self.head.is_some() && self.memory_head == self.head && machine.vm().dirty_tracking() {
            SnapshotKind::Diff
        } else {
            SnapshotKind::Full
        }
    }

    /// Everything a checkpoint takes while the vCPUs are paused: their and the devices' state,
    /// the pages to save, the disks' deltas frozen (new writes go to a new delta), and the page
    /// hashes when verifying.
    fn collect_paused(
        &mut self,
        machine: &mut Machine,
        name: &str,
        dir: &Path,
        pending: PendingVcpuStates,
        phases: &mut Phases,
    ) -> Result<Paused, VmmError> {
        let state = capture_requested(machine, pending)?;
        phases.mark("capture state");
        let kind = self.kind_for(machine);
        let pages = pages_for(machine, kind, crate::machine::DirtyConsumer::Checkpoint)?;
        phases.mark("pages to save");
        // After a fresh boot over an existing chain (disks continue from `head`), the Full layer
        // must hide every older memory layer: its index claims all pages, unwritten ones are holes.
        let index_pages = match (kind, &self.head) {
            (SnapshotKind::Full, Some(_)) => {
                PageIndex::full(mem_size(machine.memory()) / PAGE_SIZE)
            }
            _ => pages.clone(),
        };
        let hashes = if verify::enabled() {
            let now = verify::page_hashes(machine.memory());
            if let (SnapshotKind::Diff, Some(before)) = (kind, &self.verified_hashes) {
                let missed = verify::unexpected_changes(before, &now, &pages);
                verify::report(&format!("Diff checkpoint {name}"), &missed);
            }
            verify::save(dir, &now)?;
            self.verified_hashes = Some(now.clone());
            Some(now)
        } else {
            None
        };
        let mut disks = Vec::with_capacity(self.drives.len());
        let mut disk_files = Vec::new();
        for drive in &self.drives {
            let file = disk_layer_file(&drive.drive_id);
            let mut disk = drive.disk.lock().unwrap_or_else(|p| p.into_inner());
            // Renames and new files only: the checkpoint's commit syncs them after the resume
            // (cairn_snapshot::disk::FrozenLayer).
            let frozen = disk.freeze(&dir.join(&file)).map_err(snap_err)?;
            let stats = frozen.stats;
            disk_files.push(frozen);
            disks.push(DiskMeta {
                drive_id: drive.drive_id.clone(),
                delta_mib: mib(stats.bytes),
                layer_file: file,
            });
        }
        phases.mark("hashes and disks");
        Ok(Paused {
            state,
            pages,
            index_pages,
            hashes,
            disks,
            disk_files,
        })
    }

    /// Every checkpoint, oldest first.
    pub fn list(&self) -> Result<Vec<CheckpointMeta>, VmmError> {
        self.store.list().map_err(snap_err)
    }

    /// Delete `name`; its layers are merged into its children first.
    pub fn delete(&mut self, name: &str) -> Result<(), VmmError> {
        self.store.get(name).map_err(snap_err)?;
        if self.head.as_deref() == Some(name) {
            return Err(VmmError::InvalidState(format!(
                "checkpoint {name:?} is the running VM's parent: take a new checkpoint (or restore another) first"
            )));
        }
        self.store.delete(name).map_err(snap_err)?;
        Ok(())
    }
}

/// What [`CheckpointManager::collect_paused`] collects.
struct Paused {
    state: crate::checkpoint::state::MachineState,
    pages: PageIndex,
    index_pages: PageIndex,
    hashes: Option<Vec<u64>>,
    disks: Vec<DiskMeta>,
    /// The frozen disk layers, whose indexes are written after the resume, for the commit.
    disk_files: Vec<FrozenLayer>,
}

/// Say once per process why checkpoints pause the guest for their copy.
fn warn_once_no_background(e: &VmmError) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!("checkpoints copy memory with the guest paused: {e}");
    });
}

/// How long each step of a checkpoint's pause took, for the debug log.
pub struct Phases {
    last: Instant,
    steps: Vec<(&'static str, f64)>,
}

impl Phases {
    pub fn new(start: Instant) -> Self {
        Self {
            last: start,
            steps: Vec::with_capacity(10),
        }
    }

    /// Time the next step from `at`.
    pub fn restart(&mut self, at: Instant) {
        self.last = at;
    }

    /// The step that ends now.
    pub fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps
            .push((step, now.duration_since(self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{step} {ms:.3} ms")?;
        }
        Ok(())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
