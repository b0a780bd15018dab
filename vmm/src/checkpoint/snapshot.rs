//! Taking a snapshot of a paused machine: which pages, the memory file, the state file, and
//! what it cost.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use cairn_snapshot::durable::{commit_with, PendingFile};
use cairn_snapshot::file::FileKind;
use cairn_snapshot::memory::{LayerIndex, PageIndex};

use crate::checkpoint::handover;
use crate::checkpoint::memory::{
    mem_size, merge_pages_into, pending_index, resident_pages, snapshot_error, start_writeback,
    write_unfinished, LayerWrites, ZeroPages, PAGE_SIZE,
};
use crate::checkpoint::state::capture;
use crate::checkpoint::verify;
use crate::error::VmmError;
use crate::machine::{DirtyConsumer, Machine};

/// Why a VM on huge pages is not snapshotted.
pub const HUGE_PAGES_SNAPSHOT: &str =
    "snapshots of a VM on huge pages (huge_pages \"2M\") are not supported: Firecracker loads \
     them only through a UFFD page handler, which cairn does not implement, and cairn never \
     restores them onto small pages";

/// Which pages a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Every page the guest has (sparse: untouched pages, and pages of zeros, are holes).
    Full,
    /// Pages dirtied since the previous snapshot (needs dirty tracking).
    Diff,
}

/// What a snapshot cost.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotReport {
    /// Pages written.
    pub pages: u64,
    /// Bytes of guest memory written.
    pub memory_bytes: u64,
    /// Collecting device and vCPU state, in ms.
    pub state_ms: f64,
    /// Writing the memory file, in ms.
    pub memory_ms: f64,
    /// Everything, in ms.
    pub total_ms: f64,
    /// The memory file is guest RAM's tmpfs file, handed over instead of copied
    /// (`guest_memory_dir`, checkpoint/handover.rs); `memory_bytes` is then 0.
    #[serde(default)]
    pub handed_over: bool,
}

/// The pages a snapshot of `kind` must write. Resets `consumer`'s dirty baseline, so its next
/// Diff starts from here.
pub fn pages_for(
    machine: &mut Machine,
    kind: SnapshotKind,
    consumer: DirtyConsumer,
) -> Result<PageIndex, VmmError> {
    let dirty = machine.take_dirty(consumer)?;
    match kind {
        SnapshotKind::Diff => {
            if !machine.vm().dirty_tracking() {
                return Err(VmmError::InvalidState(
                    "Diff snapshots need dirty page tracking (machine-config.track_dirty_pages)"
                        .into(),
                ));
            }
            Ok(dirty)
        }
        SnapshotKind::Full => Ok(resident_pages(machine.memory())?
            .union(&machine.restored_pages)
            .union(&dirty)),
    }
}

/// Snapshot a paused `machine`: state to `state_path`, memory to `mem_path`. Both files are
/// fsynced before this returns.
pub fn create_snapshot(
    machine: &mut Machine,
    kind: SnapshotKind,
    state_path: &Path,
    mem_path: &Path,
) -> Result<SnapshotReport, VmmError> {
    // Refuse bad targets before anything is written (a root VMM must not rename over /dev/null).
    for p in [state_path, mem_path] {
        cairn_snapshot::safe_path::check_output_target(p)
            .map_err(|e| VmmError::Config(format!("{}: {e}", p.display())))?;
    }
    if machine.spec().huge_pages.is_huge() {
        return Err(VmmError::InvalidState(HUGE_PAGES_SNAPSHOT.into()));
    }
    if state_path == mem_path {
        return Err(VmmError::Config(
            "snapshot_path and mem_file_path are the same file".into(),
        ));
    }
    let start = Instant::now();
    let state = capture(machine)?;
    let state_ms = start.elapsed().as_secs_f64() * 1e3;
    let pages = pages_for(machine, kind, DirtyConsumer::Snapshot)?;
    let mem_start = Instant::now();
    let size = mem_size(machine.memory());
    let merge_into = match kind {
        SnapshotKind::Diff => merge_base(mem_path, size)?,
        SnapshotKind::Full => None,
    };
    let handed = match kind {
        SnapshotKind::Full => hand_over(machine, mem_path, size, &pages)?,
        SnapshotKind::Diff => None,
    };
    let handed_over = handed.is_some();
    let memory_ms;
    // Durable, as Firecracker's are (it fsyncs both files before it replies): a memory file
    // handed over from guest RAM on tmpfs is linked, not copied (checkpoint/handover.rs); a new
    // one goes to a disk past the page cache (checkpoint/direct_io.rs; on tmpfs through it);
    // and the new files are synced and renamed together, the state file last
    // (cairn_snapshot::durable).
    let (memory_bytes, mut files) = match (handed, merge_into) {
        (Some(files), _) => {
            memory_ms = mem_start.elapsed().as_secs_f64() * 1e3;
            (0, files)
        }
        (None, Some(base)) => {
            // Merged in place (only the dirty pages: a VM mapping this file privately has its
            // own copy of each of them); its index then claims the old one's pages and these.
            let written = merge_pages_into(machine.memory(), &pages, &base, mem_path)?;
            memory_ms = mem_start.elapsed().as_secs_f64() * 1e3;
            let held = held_after_merge(mem_path, size, &pages);
            (written, vec![pending_index(mem_path, size, held)?])
        }
        (None, None) => {
            // A Full file holds all of memory, so its zero pages can stay holes; a Diff's
            // cannot.
            let zeros = match kind {
                SnapshotKind::Full => ZeroPages::Holes,
                SnapshotKind::Diff => ZeroPages::Write,
            };
            // Every restore writes a new VM generation ID (vmgenid.rs): its page stays cached.
            // Below the MMIO gap a page's file offset is its guest address.
            let keep_cached = crate::arch::x86_64::layout::VMGENID_ADDR;
            let (layer, written) = write_unfinished(
                machine.memory(),
                &pages,
                mem_path,
                LayerWrites::Direct { keep_cached },
                zeros,
            )?;
            memory_ms = mem_start.elapsed().as_secs_f64() * 1e3;
            (written, Vec::from(layer.into_pending(&pages)?))
        }
    };
    let state = cairn_snapshot::file::encode_value(FileKind::State, &state)
        .and_then(|bytes| PendingFile::write_new(state_path, &bytes))
        .map_err(snapshot_error);
    match state {
        Ok(state) => files.push(state),
        Err(e) => {
            // A snapshot without its state is no snapshot: leave no new file behind.
            for f in files {
                f.discard();
            }
            return Err(e);
        }
    }
    commit_with(files, |f| start_writeback(f, 0, 0)).map_err(snapshot_error)?;
    let report = SnapshotReport {
        pages: pages.page_count(),
        memory_bytes,
        state_ms,
        memory_ms,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
        handed_over,
    };
    tracing::debug!(
        "snapshot {kind:?}: state {:.3} ms, memory {:.3} ms ({} pages, {} bytes written{}), total {:.3} ms",
        report.state_ms,
        report.memory_ms,
        report.pages,
        report.memory_bytes,
        if handed_over { ", handed over" } else { "" },
        report.total_ms
    );
    Ok(report)
}

/// A Full snapshot of a VM whose RAM is still its shared tmpfs file, with `mem_path` on the
/// same tmpfs: link the file in place of the copy and map the RAM privately from it
/// (checkpoint/handover.rs). Returns the pending index and memory file, or `None` where the
/// snapshot must copy (no such file, another file system, a link that cannot be made).
fn hand_over(
    machine: &mut Machine,
    mem_path: &Path,
    size: u64,
    pages: &PageIndex,
) -> Result<Option<Vec<PendingFile>>, VmmError> {
    let Some(ram) = machine.ram_file.as_ref() else {
        return Ok(None);
    };
    if !handover::same_file_system(ram, mem_path) {
        return Ok(None);
    }
    let mem_file = match handover::link_ram(ram, mem_path) {
        Ok(f) => f,
        Err(e) => {
            tracing::info!("snapshot: guest RAM not handed over, copying instead: {e}");
            return Ok(None);
        }
    };
    let index = match pending_index(mem_path, size, pages.clone()) {
        Ok(i) => i,
        Err(e) => {
            mem_file.discard();
            return Err(e);
        }
    };
    let before = verify::enabled().then(|| verify::page_hashes(machine.memory()));
    // Once the remap is tried the RAM may be private already, whatever comes of it: never try
    // again (a second remap would throw away the guest's private copies), and treat the file's
    // pages as the VM's restored pages, as after a restore from it.
    let Some(ram) = machine.ram_file.take() else {
        index.discard();
        mem_file.discard();
        return Ok(None);
    };
    machine.restored_pages = machine.restored_pages.union(pages);
    // A userfaultfd kept from the last background checkpoint is registered on the mappings
    // about to be replaced: the next checkpoint registers the new ones afresh.
    if let Some(tracker) = machine.write_tracker.take() {
        tracker.close_aside();
    }
    if let Err(e) = handover::map_private(machine.memory(), &ram) {
        index.discard();
        mem_file.discard();
        return Err(e);
    }
    if let Some(before) = before {
        let differ = verify::unexpected_changes(
            &before,
            &verify::page_hashes(machine.memory()),
            &PageIndex::new(),
        );
        verify::report("Full snapshot handing guest RAM over", &differ);
        if !differ.is_empty() {
            index.discard();
            mem_file.discard();
            return Err(VmmError::Snapshot(format!(
                "guest RAM changed when it was mapped from the snapshot file ({} pages)",
                differ.len()
            )));
        }
    }
    // From here the VM is as if restored from this file: its pages are the file's, and a
    // later Full copies.
    Ok(Some(vec![index, mem_file]))
}

/// The memory file a Diff is merged into, as Firecracker does: `mem_path` when it already is a
/// regular file exactly as large as guest memory (a Full snapshot's, or the file this VM was
/// loaded from). Anything else is replaced by a new file, as Firecracker truncates it.
fn merge_base(mem_path: &Path, size: u64) -> Result<Option<File>, VmmError> {
    match std::fs::symlink_metadata(mem_path) {
        Ok(m) if m.is_file() && m.len() == size => {}
        _ => return Ok(None),
    }
    cairn_snapshot::safe_path::open_input(
        mem_path,
        true,
        cairn_snapshot::safe_path::InputKind::Regular,
    )
    .map(Some)
    .map_err(|e| VmmError::Snapshot(format!("{}: {e}", mem_path.display())))
}

/// The pages the memory file `mem_path` holds once a Diff's `pages` are merged into it: its
/// index's and these, or all of memory for a file without an index of this size (a Full file
/// made elsewhere).
fn held_after_merge(mem_path: &Path, size: u64, pages: &PageIndex) -> PageIndex {
    match LayerIndex::load(&cairn_snapshot::memory::index_path(mem_path)) {
        Ok(old) if old.mem_size == size => old.pages.union(pages),
        _ => PageIndex::full(size / PAGE_SIZE),
    }
}
