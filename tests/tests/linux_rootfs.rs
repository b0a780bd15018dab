//! End to end: the images a plain `guest/build` prints (no `--agent`: it builds the static agent
//! itself) carry a working agent.
//! - The ext4 root disk (`rootfs=`), booted as `/dev/vda` (an `io_engine: "Async"` drive, so
//!   through io_uring) without an initrd and `init=/sbin/cairn-init`: Debian bookworm, whose agent answers on vsock port 52, runs commands
//!   and moves files, and is restarted by `cairn-init` after it is killed.
//! - The initramfs (`initrd=`): its agent answers, and `/init` restarts it after it is killed.
//!
//! Each test boots a fresh guest (no checkpoint); guest kernel code is emulated on this project's
//! CI hosts (a boot takes tens of seconds, each process start ~1.5 s), so the timeouts are generous.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_agent::client::{Client, ExitStatus};
use cairn_agent::proto::ExecRequest;
use cairn_tests::linux::{
    agent_answers, agent_answers_unless_crashed, retry_on_guest_flake, AGENT_PORT, ATTEMPTS,
};
use cairn_tests::process::{workspace_bin, write_vm_config, Guest};
use cairn_tests::{kvm_available, linux_guest, LinuxGuest};
use cairn_vmm_api::config::{DriveConfig, IoEngine, VmConfig, VsockConfig};

/// Boot `config` (written into `dir`) until the guest's agent answers on `vsock` (retried, see
/// [`ATTEMPTS`]); returns the running VMM.
fn boot_until_agent_answers(dir: &Path, config: &VmConfig, vsock: &Path) -> Guest {
    let cfg = write_vm_config(dir, config);
    for attempt in 1..=ATTEMPTS {
        let _ = std::fs::remove_file(vsock);
        let mut cmd = Command::new(workspace_bin("cairn-vmm"));
        cmd.args(["--no-api", "--config-file"]).arg(&cfg);
        let vm = Guest::spawn(cmd);
        let ready = vm.wait_for("cairn-guest-ready", Duration::from_secs(300));
        if ready.is_ok() && agent_answers_unless_crashed(vsock, Some(&vm), Duration::from_secs(120))
        {
            eprintln!(
                "process start -> agent answering: {:?} (attempt {attempt})",
                vm.started.elapsed()
            );
            return vm;
        }
        eprintln!("boot attempt {attempt} failed:\n{}", vm.stdout());
    }
    panic!("the guest never booted to a working agent");
}

/// Run `argv` through the agent; a process that died of SIGSEGV right at its start (this host's
/// FS-base bug, docs/guest.md) is run again. The commands here are idempotent.
fn run(vsock: &Path, argv: &[&str]) -> (ExitStatus, String) {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: None,
        stdin: false,
        pty: None,
    };
    let mut out = Vec::new();
    let mut status = ExitStatus::Signal(0);
    for _ in 0..ATTEMPTS {
        out.clear();
        let mut agent = Client::connect_uds(vsock, AGENT_PORT).expect("connect to the agent");
        status = agent
            .exec(&req, std::io::empty(), &mut out, &mut Vec::new())
            .expect("exec in the guest");
        if status != ExitStatus::Signal(11) {
            break;
        }
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// Kill the agent with SIGKILL from a command it runs (its parent; the connection dies with it),
/// then wait for the init's respawn line and for the new agent to answer.
fn kill_agent_and_wait_for_its_restart(vm: &Guest, vsock: &Path) {
    let req = ExecRequest {
        argv: ["sh", "-c", "kill -9 $PPID"].map(String::from).to_vec(),
        env: vec![],
        cwd: None,
        stdin: false,
        pty: None,
    };
    let mut killed = None;
    for _ in 0..ATTEMPTS {
        let mut agent = Client::connect_uds(vsock, AGENT_PORT).expect("connect to the agent");
        let start = Instant::now();
        match agent.exec(&req, std::io::empty(), &mut Vec::new(), &mut Vec::new()) {
            // The agent died under the request: that is the point.
            Err(_) => {
                killed = Some(start);
                break;
            }
            // `sh` died at its start (this host's FS-base bug): try again.
            Ok(ExitStatus::Signal(11)) => continue,
            Ok(status) => panic!("the agent survived `kill -9 $PPID` ({status:?})"),
        }
    }
    let killed = killed.expect("`sh -c 'kill -9 $PPID'` never ran");
    vm.wait_for(
        "cairn-agent exited (status 137); restarting",
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        agent_answers(vsock, Duration::from_secs(120)),
        "the agent did not come back:\n{}",
        vm.stdout()
    );
    eprintln!("agent killed -> answering again: {:?}", killed.elapsed());
}

/// One vCPU, 256 MiB, a vsock at `vsock`; no initrd (each test says what it boots from).
fn base_config(guest: &LinuxGuest, vsock: &Path) -> VmConfig {
    let mut config = VmConfig {
        vsock: Some(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: vsock.to_path_buf(),
        }),
        ..guest.vm_config(256)
    };
    if let Some(boot) = config.boot_source.as_mut() {
        boot.initrd_path = None;
    }
    config
}

#[test]
fn rootfs_boots_debian_with_an_agent_that_works_and_is_restarted() {
    let name = "rootfs_boots_debian_with_an_agent_that_works_and_is_restarted";
    if !kvm_available(name) {
        return;
    }
    let guest = linux_guest();
    assert!(guest.agent.is_some(), "plain guest/build printed no agent=");
    let cached = guest
        .rootfs
        .clone()
        .expect("plain guest/build printed no rootfs=");
    retry_on_guest_flake(name, || {
        let dir = tempfile::tempdir().unwrap();
        // The cached image is shared by every caller: the guest writes to its own copy.
        let disk = dir.path().join("rootfs.ext4");
        let out = Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(&cached)
            .arg(&disk)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vsock = dir.path().join("v.sock");
        let mut config = base_config(&guest, &vsock);
        // is_root_device adds `root=/dev/vda rw`, as in Firecracker.
        if let Some(boot) = config.boot_source.as_mut() {
            boot.boot_args = Some(format!("{} init=/sbin/cairn-init", guest.boot_args));
        }
        // Firecracker's io_uring engine (bandsox's default): the root disk is read and written
        // through io_uring (vmm/src/uring_disk.rs); other tests boot Sync drives.
        config.drives = vec![DriveConfig {
            is_read_only: Some(false),
            io_engine: Some(IoEngine::Async),
            ..DriveConfig::new("rootfs", disk.clone(), true)
        }];
        let vm = boot_until_agent_answers(dir.path(), &config, &vsock);

        let (status, out) = run(&vsock, &["cat", "/etc/debian_version"]);
        assert_eq!(status, ExitStatus::Code(0), "{out}");
        // bookworm is Debian 12 (12.x, or "bookworm/sid" on a snapshot).
        assert!(
            out.starts_with("12.") || out.starts_with("bookworm"),
            "{out:?}"
        );

        let local = dir.path().join("payload.bin");
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&local, &payload).unwrap();
        let mut agent = Client::connect_uds(&vsock, AGENT_PORT).unwrap();
        agent.put(&local, "/root/payload.bin").unwrap();
        let back = dir.path().join("back.bin");
        Client::connect_uds(&vsock, AGENT_PORT)
            .unwrap()
            .get("/root/payload.bin", &back)
            .unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), payload);

        // cairn-init (dash) restarts the agent too.
        kill_agent_and_wait_for_its_restart(&vm, &vsock);
        let (status, out) = run(&vsock, &["wc", "-c", "/root/payload.bin"]);
        assert_eq!(
            (status, out.as_str()),
            (ExitStatus::Code(0), "100000 /root/payload.bin\n")
        );
    });
}

#[test]
fn initramfs_agent_answers_and_init_restarts_it_when_killed() {
    let name = "initramfs_agent_answers_and_init_restarts_it_when_killed";
    if !kvm_available(name) {
        return;
    }
    let guest = linux_guest();
    retry_on_guest_flake(name, || {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("v.sock");
        let mut config = base_config(&guest, &vsock);
        if let Some(boot) = config.boot_source.as_mut() {
            boot.initrd_path = Some(guest.initrd.clone().into());
        }
        let vm = boot_until_agent_answers(dir.path(), &config, &vsock);

        let (status, out) = run(&vsock, &["echo", "agent-in-initramfs"]);
        assert_eq!(
            (status, out.as_str()),
            (ExitStatus::Code(0), "agent-in-initramfs\n")
        );

        kill_agent_and_wait_for_its_restart(&vm, &vsock);
        let (status, out) = run(&vsock, &["echo", "back"]);
        assert_eq!((status, out.as_str()), (ExitStatus::Code(0), "back\n"));
    });
}
