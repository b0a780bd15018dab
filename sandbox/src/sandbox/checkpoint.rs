//! Named checkpoints of a sandbox, through its VMM's REST API.

use super::{
    console_len, ensure_running_locked, greet_restored, jail, liveness, lock, start_locked, Home,
    Liveness, SandboxError,
};
use crate::vmm_api;
use cairn_vmm_api::config::{CheckpointCreate, CheckpointRestore};
use cairn_vmm_api::CheckpointInfo;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn create_checkpoint_at(
    api: &Path,
    ckpt: Option<&str>,
) -> Result<CheckpointInfo, SandboxError> {
    let body = CheckpointCreate {
        name: ckpt.map(str::to_string),
    };
    Ok(vmm_api::client(api, Duration::from_secs(300)).create_checkpoint(&body)?)
}

/// `cairn checkpoint create NAME [CKPT]`: returns the VMM's answer (name, parent, costs).
pub fn checkpoint_create(
    home: &Home,
    name: &str,
    ckpt: Option<&str>,
) -> Result<CheckpointInfo, SandboxError> {
    if let Some(c) = ckpt.filter(|c| super::validate_name(c).is_err()) {
        return Err(SandboxError::InvalidCheckpointName(c.to_string()));
    }
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let (r, _) = ensure_running_locked(home, &mut reg, name)?;
    let meta = create_checkpoint_at(&r.api_sock, ckpt)?;
    reg.set_head(name, Some(&meta.name))?;
    reg.touch(name)?;
    Ok(meta)
}

/// `cairn checkpoint list NAME`: the VMM's list (wakes a stopped sandbox).
pub fn checkpoint_list(home: &Home, name: &str) -> Result<Vec<CheckpointInfo>, SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let (r, _) = ensure_running_locked(home, &mut reg, name)?;
    Ok(vmm_api::client(&r.api_sock, Duration::from_secs(30)).list_checkpoints()?)
}

/// `cairn checkpoint restore NAME CKPT`: the running VM is replaced by the checkpoint (a
/// stopped sandbox starts from it).
pub fn checkpoint_restore(home: &Home, name: &str, ckpt: &str) -> Result<(), SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = reg.get(name)?;
    if liveness(&r) != Liveness::Running {
        return start_locked(home, &mut reg, &r, Some(ckpt)).map(drop);
    }
    // The restore maps the layer files (only a start's first restore is served).
    crate::store_lazy::fetch_rest(home, &paths, "restored while it runs")?;
    let start = Instant::now();
    let from = console_len(&paths);
    // The socket path as the VMM sees it (in its jail for a jailed sandbox).
    let vmm = jail::vmm_view(&paths, jail::load(&paths)?.is_some());
    vmm_api::client(&r.api_sock, Duration::from_secs(120)).restore_checkpoint(
        &CheckpointRestore {
            name: ckpt.to_string(),
            vsock_uds_path: Some(vmm.vsock),
            paused: None,
        },
    )?;
    reg.set_head(name, Some(ckpt))?;
    let pid = r.pid.unwrap_or(0);
    // A second restore of one checkpoint would repeat the first's RNG output: reseed (with the
    // clock and, when needed, the network, in one request).
    let mut times = crate::phase_times::PhaseTimes::start();
    greet_restored(&paths, pid, name, "restoring", from, &mut times)?;
    reg.touch(name)?;
    eprintln!(
        "{name}: restored {ckpt} in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cairn checkpoint rm NAME CKPT`.
pub fn checkpoint_remove(home: &Home, name: &str, ckpt: &str) -> Result<(), SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    // The delete merges layers into their children in place: a lazily pulled sandbox's files
    // are made whole first (a layer still in the bucket would merge as zeros).
    crate::store_lazy::fetch_rest(home, &paths, "changed by a checkpoint delete")?;
    let (r, _) = ensure_running_locked(home, &mut reg, name)?;
    vmm_api::client(&r.api_sock, Duration::from_secs(120)).delete_checkpoint(ckpt)?;
    Ok(())
}
