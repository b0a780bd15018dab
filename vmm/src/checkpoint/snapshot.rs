//! Taking a snapshot of a paused machine: which pages, the memory file, the state file, and
//! what it cost.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use cairn_snapshot::file::FileKind;
use cairn_snapshot::memory::{LayerIndex, PageIndex};

use crate::checkpoint::durable::{commit, PendingFile};
use crate::checkpoint::memory::{
    mem_size, merge_pages_into, resident_pages, write_unfinished, ZeroPages, PAGE_SIZE,
};
use crate::checkpoint::state::{capture, MachineState};
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
    if kind == SnapshotKind::Diff {
        if let Some(base) = merge_base(mem_path, mem_size(machine.memory()))? {
            let memory_bytes = merge_diff(machine, &pages, &base, state_path, mem_path, &state)?;
            return Ok(SnapshotReport {
                pages: pages.page_count(),
                memory_bytes,
                state_ms,
                memory_ms: mem_start.elapsed().as_secs_f64() * 1e3,
                total_ms: start.elapsed().as_secs_f64() * 1e3,
            });
        }
    }
    // A Full file holds all of memory, so its zero pages can stay holes; a Diff's cannot.
    let zeros = match kind {
        SnapshotKind::Full => ZeroPages::Holes,
        SnapshotKind::Diff => ZeroPages::Write,
    };
    // Durable, as Firecracker's are (it fsyncs both files before it replies); the memory
    // file's writeback starts while it is written, and the three files are synced and renamed
    // together (checkpoint/durable.rs).
    let (layer, memory_bytes) = write_unfinished(machine.memory(), &pages, mem_path, true, zeros)?;
    let memory_ms = mem_start.elapsed().as_secs_f64() * 1e3;
    let [index, memory] = layer.into_pending(&pages)?;
    let state = cairn_snapshot::file::encode_value(FileKind::State, &state)
        .map_err(|e| VmmError::Snapshot(format!("{}: {e}", state_path.display())))
        .and_then(|bytes| PendingFile::write_new(state_path, &bytes));
    let state = match state {
        Ok(s) => s,
        Err(e) => {
            // A snapshot without its state is no snapshot: leave nothing behind.
            index.discard();
            memory.discard();
            return Err(e);
        }
    };
    commit(vec![index, memory, state])?;
    Ok(SnapshotReport {
        pages: pages.page_count(),
        memory_bytes,
        state_ms,
        memory_ms,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
    })
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

/// Merge a Diff's `pages` into the existing memory file `base` in place (only the dirty pages
/// are written: a VM mapping this file privately has its own copy of each of them), then make
/// its page index (the old one's pages and these; all of memory for a file without one) and the
/// state file durable together. Returns the bytes written.
fn merge_diff(
    machine: &Machine,
    pages: &PageIndex,
    base: &File,
    state_path: &Path,
    mem_path: &Path,
    state: &MachineState,
) -> Result<u64, VmmError> {
    let snap_err = |e: String| VmmError::Snapshot(e);
    let size = mem_size(machine.memory());
    let written = merge_pages_into(machine.memory(), pages, base, mem_path)?;
    let index_path = cairn_snapshot::memory::index_path(mem_path);
    let held = match LayerIndex::load(&index_path) {
        Ok(old) if old.mem_size == size => old.pages.union(pages),
        _ => PageIndex::full(size / PAGE_SIZE),
    };
    let index = LayerIndex::new(size, held)
        .map(|i| cairn_snapshot::file::encode(FileKind::PageIndex, &i.encode()))
        .map_err(|e| snap_err(format!("{}: {e}", index_path.display())))
        .and_then(|bytes| PendingFile::write_new(&index_path, &bytes))?;
    let state = cairn_snapshot::file::encode_value(FileKind::State, state)
        .map_err(|e| snap_err(format!("{}: {e}", state_path.display())))
        .and_then(|bytes| PendingFile::write_new(state_path, &bytes));
    match state {
        Ok(state) => commit(vec![index, state])?,
        Err(e) => {
            index.discard();
            return Err(e);
        }
    }
    Ok(written)
}
