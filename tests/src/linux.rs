//! The shared Linux guest for end-to-end tests: booted once per test run (with the guest agent,
//! a scratch ext4 disk, vsock and entropy), checkpointed as `booted`, and restored in each test
//! in a fresh `cairn-vmm`, so only one test run pays for the slow boot on emulated KVM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::http::wait_for_socket;
use crate::process::{workspace_bin, Guest};
use cairn_vmm_api::config::{
    CairnConfig, CheckpointCreate, CheckpointRestore, DriveConfig, EntropyConfig, VmConfig,
    VsockConfig,
};

/// vsock port of the guest agent.
pub const AGENT_PORT: u32 = 52;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static guest agent: `CAIRN_AGENT_BIN` when set (scripts/test exports the one `guest/build`
/// built), else built here (cached by cargo).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CAIRN_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let target_dir = workspace_root().join("target").join("agent-static");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "cairn-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace_root())
        .status()
        .expect("run cargo to build the static agent");
    assert!(status.success(), "static agent build failed");
    target_dir.join("x86_64-unknown-linux-gnu/release/cairn-agent")
}

/// The guest (kernel, initramfs with the agent, boot args) from `guest/build --agent`.
pub fn guest_with_agent() -> crate::LinuxGuest {
    crate::linux_guest_with(&["--agent", agent_binary().to_str().expect("utf-8 path")])
}

/// A checkpoint of the booted guest, shared by the tests of one run.
#[derive(Debug, Clone)]
pub struct BootedFixture {
    /// The checkpoint store holding `booted`.
    pub store: PathBuf,
    /// The config the guest was booted with.
    pub config: VmConfig,
}

fn fixture_dir(guest: &crate::LinuxGuest) -> PathBuf {
    let key = format!(
        "{}|{}|{}|{:?}",
        guest.kernel, guest.initrd, guest.boot_args, guest.cpu_config
    );
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    workspace_root()
        .join("target")
        .join("e2e")
        .join(format!("linux-fixture-{hash:016x}"))
}

/// Boot the guest and checkpoint it as `booted`, once per test run (file lock + marker).
pub fn booted() -> BootedFixture {
    let guest = guest_with_agent();
    let dir = fixture_dir(&guest);
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a file we own; released when `lock` is dropped.
    let locked = unsafe { libc::flock(fd, libc::LOCK_EX) };
    assert_eq!(locked, 0, "cannot lock the fixture directory");
    let disk = dir.join("scratch.ext4");
    let store = dir.join("store");
    let config = VmConfig {
        drives: vec![DriveConfig {
            is_read_only: Some(false),
            ..DriveConfig::new("scratch", disk.clone(), false)
        }],
        vsock: Some(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: dir.join("v.sock"),
        }),
        entropy: Some(EntropyConfig::default()),
        cairn: CairnConfig {
            checkpoint_dir: Some(store.clone()),
            ..Default::default()
        },
        ..guest.vm_config(256)
    };
    let done = dir.join("booted.ok");
    if !done.exists() {
        let cfg = dir.join("vm.json");
        std::fs::write(&cfg, serde_json::to_vec(&config).unwrap()).unwrap();
        let api = dir.join("api.sock");
        let mut booted = None;
        for attempt in 1..=ATTEMPTS {
            let _ = std::fs::remove_dir_all(&store);
            make_ext4(&disk, 64);
            let mut cmd = Command::new(workspace_bin("cairn-vmm"));
            cmd.arg("--api-sock")
                .arg(&api)
                .arg("--config-file")
                .arg(&cfg);
            let vm = Guest::spawn(cmd);
            let ready = vm.wait_for("cairn-guest-ready", Duration::from_secs(300));
            if ready.is_ok()
                && agent_answers_unless_crashed(
                    &dir.join("v.sock"),
                    Some(&vm),
                    Duration::from_secs(120),
                )
            {
                eprintln!(
                    "linux fixture: process start -> agent answering in {:?}",
                    vm.started.elapsed()
                );
                booted = Some(vm);
                break;
            }
            eprintln!(
                "linux fixture: boot attempt {attempt} failed:\n{}",
                vm.stdout()
            );
        }
        let vm = booted.expect("the Linux guest never booted to a working agent");
        let made = crate::process::api(&api)
            .create_checkpoint(&CheckpointCreate {
                name: Some("booted".into()),
            })
            .unwrap_or_else(|e| panic!("checkpoint failed: {e}"));
        eprintln!("linux fixture: checkpoint `booted`: {made:?}");
        drop(vm);
        std::fs::write(&done, b"ok").unwrap();
    }
    BootedFixture { store, config }
}

/// Create a sparse ext4 image of `mib` MiB.
pub fn make_ext4(path: &Path, mib: u64) {
    let _ = std::fs::remove_file(path);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait until the guest agent answers a ping through the vsock socket.
pub fn wait_for_agent(uds: &Path, timeout: Duration) {
    assert!(
        agent_answers(uds, timeout),
        "guest agent did not answer on {}",
        uds.display()
    );
}

/// Whether the guest agent answers a ping within `timeout`.
pub fn agent_answers(uds: &Path, timeout: Duration) -> bool {
    agent_answers_unless_crashed(uds, None, timeout)
}

/// [`agent_answers`], giving up at once when `vm`'s console shows that the guest is lost
/// ([`guest_crashed`]).
pub fn agent_answers_unless_crashed(uds: &Path, vm: Option<&Guest>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(vm) = vm {
            if guest_crashed(&vm.stdout()) {
                return false;
            }
        }
        if uds.exists() {
            if let Ok(mut c) = cairn_agent::client::Client::connect_uds(uds, AGENT_PORT) {
                if c.ping().is_ok() {
                    return true;
                }
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a guest console shows a crash the guest does not recover from: a kernel panic (init
/// died). A process killed by SIGSEGV (`NAME[PID]: segfault at ...`) is not one: the guest's init
/// restarts the agent when it exits, including when the agent or the `sleep` of its respawn loop
/// dies of this host's FS-base bug (docs/guest.md).
pub fn guest_crashed(console: &str) -> bool {
    console.contains("Kernel panic")
}

/// How often a guest start is retried. On this project's emulated-KVM hosts a guest process
/// occasionally starts with a zero FS base and dies at its first thread-local access (see
/// docs/guest.md); when that hits init or the agent, the attempt is thrown away and retried.
/// On hardware KVM the first attempt always succeeds.
pub const ATTEMPTS: usize = 8;

/// Boot the VMM with `--api-sock api --config-file cfg` until the guest prints
/// `cairn-guest-ready` (retried, see [`ATTEMPTS`]); returns the running VMM.
pub fn boot_with_api(api: &Path, cfg: &Path) -> Guest {
    for attempt in 1..=ATTEMPTS {
        let _ = std::fs::remove_file(api);
        let mut cmd = Command::new(workspace_bin("cairn-vmm"));
        cmd.arg("--api-sock").arg(api).arg("--config-file").arg(cfg);
        let vm = Guest::spawn(cmd);
        if vm
            .wait_for("cairn-guest-ready", Duration::from_secs(240))
            .is_ok()
        {
            std::thread::sleep(Duration::from_millis(500));
            return vm;
        }
        eprintln!("attempt {attempt}: no boot:\n{}", vm.stdout());
    }
    panic!("the guest never booted");
}

/// A VM restored from the `booted` checkpoint, in its own `cairn-vmm` and its own copy of the
/// checkpoint store.
pub struct RestoredVm {
    /// The VMM process (stdout = the guest's serial console).
    pub vmm: Guest,
    /// Its API socket.
    pub api: PathBuf,
    /// Its vsock socket (host side of the agent).
    pub vsock: PathBuf,
    /// Its checkpoint store.
    pub store: PathBuf,
    /// Keeps the files alive.
    pub dir: tempfile::TempDir,
}

impl RestoredVm {
    /// A connected agent client.
    pub fn agent(&self) -> cairn_agent::client::Client {
        cairn_agent::client::Client::connect_uds(&self.vsock, AGENT_PORT)
            .expect("connect to the guest agent")
    }
}

/// Restore `booted` into a fresh VMM (retried, see [`ATTEMPTS`]).
pub fn restore_booted(fixture: &BootedFixture) -> RestoredVm {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let api = dir.path().join("api.sock");
    let vsock = dir.path().join("v.sock");
    for attempt in 1..=ATTEMPTS {
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_file(&api);
        let out = Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(&fixture.store)
            .arg(&store)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "copy store: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = Command::new(workspace_bin("cairn-vmm"));
        cmd.arg("--api-sock")
            .arg(&api)
            .arg("--checkpoint-dir")
            .arg(&store);
        let vmm = Guest::spawn(cmd);
        wait_for_socket(&api, Duration::from_secs(10));
        let start = Instant::now();
        let restore = CheckpointRestore {
            name: "booted".into(),
            vsock_uds_path: Some(vsock.clone()),
            paused: None,
        };
        if let Err(e) = crate::process::api(&api).restore_checkpoint(&restore) {
            panic!("restore failed: {e}\n{}", vmm.stderr());
        }
        eprintln!("restore of `booted`: {:?}", start.elapsed());
        if agent_answers_unless_crashed(&vsock, Some(&vmm), Duration::from_secs(60)) {
            return RestoredVm {
                vmm,
                api,
                vsock,
                store,
                dir,
            };
        }
        eprintln!(
            "restore attempt {attempt}: the agent did not answer:\n{}",
            vmm.stdout()
        );
    }
    panic!("the restored guest's agent never answered");
}

/// Run a Linux end-to-end test body, again (at most 3 times in all) if it fails. On this project's
/// emulated-KVM hosts a guest process, the agent included, occasionally dies at its first TLS
/// access (docs/guest.md), which no test can prevent; a real, deterministic failure still fails
/// every attempt and is reported.
pub fn retry_on_guest_flake(name: &str, body: impl Fn()) {
    const TRIES: usize = 3;
    for attempt in 1..=TRIES {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body)) {
            Ok(()) => return,
            Err(e) if attempt == TRIES => std::panic::resume_unwind(e),
            Err(_) => eprintln!("{name}: attempt {attempt} failed; retrying with a fresh guest"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::guest_crashed;

    #[test]
    fn a_segfaulting_process_is_not_a_lost_guest_but_a_panic_is() {
        let respawned = "[   9.1] cairn-agent[57]: segfault at 0 ip 00000000004a1b2c error 4\n\
                         cairn-agent exited (status 139); restarting\n\
                         [   9.9] exe[58]: segfault at 0 ip 00000000004a4d02 error 4 in busybox\n";
        assert!(!guest_crashed(respawned));
        assert!(guest_crashed(&format!(
            "{respawned}[  10.2] exe[1]: segfault at 0\n\
             Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
        )));
    }
}
