//! Run `cairn-vmm` (or any program) as a child and watch its serial output.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Output collected from a child's stdout (or stderr), with a condvar to wait on.
#[derive(Default)]
struct Collected {
    data: Mutex<Vec<u8>>,
    cv: Condvar,
}

/// A running child whose stdout and stderr are collected in the background.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Collected>,
    stderr: Arc<Collected>,
    /// When the child was spawned.
    pub started: Instant,
}

fn collect(mut r: impl Read + Send + 'static, into: Arc<Collected>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    into.data.lock().unwrap().extend_from_slice(&buf[..n]);
                    into.cv.notify_all();
                }
            }
        }
    });
}

impl Guest {
    /// Spawn `cmd` with piped stdio.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let stdout = Arc::new(Collected::default());
        let stderr = Arc::new(Collected::default());
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            stdout,
            stderr,
            started,
        }
    }

    /// Wait until stdout contains `marker`; returns the time since spawn.
    pub fn wait_for(&self, marker: &str, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        let mut data = self.stdout.data.lock().unwrap();
        loop {
            if String::from_utf8_lossy(&data).contains(marker) {
                return Ok(self.started.elapsed());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {marker:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&data),
                    self.stderr()
                ));
            }
            data = self.stdout.cv.wait_timeout(data, deadline - now).unwrap().0;
        }
    }

    /// Everything the child printed on stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.data.lock().unwrap()).into_owned()
    }

    /// Everything the child printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.data.lock().unwrap()).into_owned()
    }

    /// Write to the child's stdin.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Close the child's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Wait for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory holding the workspace's built binaries (next to the running test's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary; panics with a hint when it was not built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// Write a Firecracker-style JSON config `vm.json` into `dir` and return its path.
pub fn write_config(dir: &Path, config: &serde_json::Value) -> PathBuf {
    let p = dir.join("vm.json");
    std::fs::write(&p, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    p
}

/// Write `config` as a Firecracker-style config file `vm.json` in `dir` and return its path
/// (the typed form; [`write_config`] takes raw JSON, for configs meant to be refused).
pub fn write_vm_config(dir: &Path, config: &cairn_vmm_api::config::VmConfig) -> PathBuf {
    write_config(dir, &serde_json::to_value(config).unwrap())
}

/// Raw API calls for tests of the API itself (bad bodies, refusals, statuses), over
/// cairn-vmm-api's [`Client`](cairn_vmm_api::Client); tests that only need a call to work use
/// the client's typed methods (see [`api`]).
pub mod http {
    use std::path::Path;
    use std::time::Duration;

    use cairn_vmm_api::Client;

    /// Wait until `sock` accepts connections.
    pub fn wait_for_socket(sock: &Path, timeout: Duration) {
        if let Err(e) = Client::new(sock).wait_ready(timeout) {
            panic!("API socket {} never accepted: {e}", sock.display());
        }
    }

    /// Send one request with a raw body; returns (status, body) whatever the status.
    pub fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let reply = super::api(sock)
            .send(method, path, body.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (reply.status, reply.text())
    }
}

/// A typed client of the VMM API on `sock`, with a deadline generous enough for checkpoints
/// of test guests on a slow host.
/// Pauses the VM behind `c`, takes a Full snapshot of it into `dir` (`vm.snap`, `vm.mem`), then
/// ends its VMM `g` with SIGTERM; returns the snapshot's parameters (for [`load_resumed`]).
pub fn full_snapshot_and_exit(
    c: &cairn_vmm_api::Client,
    g: &mut Guest,
    dir: &Path,
) -> cairn_vmm_api::config::CreateSnapshotParams {
    c.pause().unwrap();
    let snap = cairn_vmm_api::config::CreateSnapshotParams {
        snapshot_type: cairn_vmm_api::config::SnapshotType::Full,
        snapshot_path: dir.join("vm.snap"),
        mem_file_path: dir.join("vm.mem"),
        version: None,
    };
    c.snapshot_create(&snap).unwrap();
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
    snap
}

/// Loading `snap` from its memory file (file backend), resumed.
pub fn load_resumed(
    snap: &cairn_vmm_api::config::CreateSnapshotParams,
) -> cairn_vmm_api::config::LoadSnapshotParams {
    use cairn_vmm_api::config::{LoadSnapshotParams, MemBackendConfig, MemBackendType};
    LoadSnapshotParams {
        snapshot_path: snap.snapshot_path.clone(),
        mem_backend: Some(MemBackendConfig {
            backend_type: MemBackendType::File,
            backend_path: snap.mem_file_path.clone(),
        }),
        resume_vm: Some(true),
        ..LoadSnapshotParams::default()
    }
}

pub fn api(sock: &Path) -> cairn_vmm_api::Client {
    cairn_vmm_api::Client::new(sock).with_timeout(Duration::from_secs(120))
}

/// `GET /vm/config` through `c`, as raw JSON (to check the reply key by key, as Firecracker
/// writes it, rather than through the typed client's reading of it).
pub fn vm_config_json(c: &cairn_vmm_api::Client) -> serde_json::Value {
    let raw = c.send("GET", "/vm/config", None).unwrap();
    assert_eq!(raw.status, 200, "{}", String::from_utf8_lossy(&raw.body));
    serde_json::from_slice(&raw.body).unwrap()
}

/// Configures the tiny ticker guest through `c`: 1 vCPU, 32 MiB, [`crate::guests::TICKER64`]
/// with a serial console. Nothing is started.
pub fn configure_ticker(c: &cairn_vmm_api::Client) {
    use cairn_vmm_api::config::{BootSourceConfig, MachineConfig};
    c.put_machine_config(&MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 32,
        ..MachineConfig::default()
    })
    .unwrap();
    c.put_boot_source(&BootSourceConfig {
        kernel_image_path: crate::guests::TICKER64.into(),
        initrd_path: None,
        boot_args: Some("console=ttyS0".into()),
    })
    .unwrap();
}

/// Polls `ok` every 50 ms until it holds; panics "timed out waiting for WHAT" after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `vmm --api-sock SOCK EXTRA...` in a network namespace of its own (`unshare -n`), where it may
/// make its taps.
pub fn vmm_in_netns(vmm: &str, sock: &Path, extra: &[&str]) -> Guest {
    let mut cmd = Command::new("unshare");
    cmd.arg("-n")
        .arg(vmm)
        .arg("--api-sock")
        .arg(sock)
        .args(extra);
    Guest::spawn(cmd)
}
