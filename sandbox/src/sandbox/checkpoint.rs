//! Named checkpoints of a sandbox, through its VMM's REST API.

use super::{
    console_len, ensure_running_locked, jail, liveness, lock, start_locked, wait_agent, Home,
    Liveness, SandboxError,
};
use crate::vmm_api;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn create_checkpoint_at(
    api: &Path,
    ckpt: Option<&str>,
) -> Result<serde_json::Value, SandboxError> {
    let body = ckpt.map(|c| serde_json::json!({ "name": c }));
    let text = vmm_api::request(
        api,
        "PUT",
        "/checkpoints",
        body.as_ref(),
        Duration::from_secs(300),
    )?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// `cairn checkpoint create NAME [CKPT]`: returns the VMM's answer (name, parent, costs).
pub fn checkpoint_create(
    home: &Home,
    name: &str,
    ckpt: Option<&str>,
) -> Result<serde_json::Value, SandboxError> {
    if let Some(c) = ckpt.filter(|c| super::validate_name(c).is_err()) {
        return Err(SandboxError::InvalidCheckpointName(c.to_string()));
    }
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let (r, _) = ensure_running_locked(home, &mut reg, name)?;
    let meta = create_checkpoint_at(&r.api_sock, ckpt)?;
    if let Some(c) = meta.get("name").and_then(|n| n.as_str()) {
        reg.set_head(name, Some(c))?;
    }
    reg.touch(name)?;
    Ok(meta)
}

/// `cairn checkpoint list NAME`: the VMM's list (wakes a stopped sandbox).
pub fn checkpoint_list(home: &Home, name: &str) -> Result<Vec<serde_json::Value>, SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let (r, _) = ensure_running_locked(home, &mut reg, name)?;
    let text = vmm_api::request(
        &r.api_sock,
        "GET",
        "/checkpoints",
        None,
        Duration::from_secs(30),
    )?;
    Ok(match serde_json::from_str(&text) {
        Ok(serde_json::Value::Array(v)) => v,
        _ => Vec::new(),
    })
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
    let start = Instant::now();
    let from = console_len(&paths);
    // The socket path as the VMM sees it (in its jail for a jailed sandbox).
    let vmm = jail::vmm_view(&paths, jail::load(&paths)?.is_some());
    vmm_api::request(
        &r.api_sock,
        "PUT",
        "/checkpoints/restore",
        Some(&serde_json::json!({"name": ckpt, "vsock_uds_path": vmm.vsock})),
        Duration::from_secs(120),
    )?;
    reg.set_head(name, Some(ckpt))?;
    let pid = r.pid.unwrap_or(0);
    wait_agent(
        &paths,
        pid,
        Duration::from_secs(60),
        &format!("restoring {name}"),
        from,
    )?;
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
    let (r, _) = ensure_running_locked(home, &mut reg, name)?;
    vmm_api::request(
        &r.api_sock,
        "DELETE",
        &format!("/checkpoints/{ckpt}"),
        None,
        Duration::from_secs(120),
    )?;
    Ok(())
}
