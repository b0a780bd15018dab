//! End to end: virtio-net on a tap device. The test makes its own network namespace with a tap
//! in it, boots the Linux guest inside that namespace with the tap as its NIC, and checks that
//! guest and host reach each other (ping and TCP). Then MMDS on that interface: the guest reads
//! metadata from 169.254.169.254 (busybox `wget`, and `nc` for the V2 token's PUT), with V1 and
//! with V2 (a GET without a token is refused). Root only (namespaces and taps need it).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_agent::client::ExitStatus;
use cairn_agent::proto::ExecRequest;
use cairn_tests::linux::{
    agent_answers, guest_with_agent, retry_on_guest_flake, AGENT_PORT, ATTEMPTS,
};
use cairn_tests::process::{workspace_bin, write_vm_config, Guest};
use cairn_tests::{kvm_available, LinuxGuest};
use cairn_vmm_api::config::{MmdsConfig, MmdsVersion, NetConfig, VmConfig, VsockConfig};

struct Netns(String);

impl Netns {
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The guest at 256 MiB with `eth0` on the tap `cairn0` and its agent on vsock at `uds`.
fn tap_guest_config(guest: &LinuxGuest, uds: &Path) -> VmConfig {
    VmConfig {
        network_interfaces: vec![NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "cairn0".into(),
            guest_mac: Some("06:00:0a:00:02:02".into()),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            mtu: None,
        }],
        vsock: Some(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: uds.to_path_buf(),
        }),
        ..guest.vm_config(256)
    }
}

fn exec(uds: &std::path::Path, script: &str) -> (ExitStatus, String) {
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
        stdin: false,
        pty: None,
    };
    let mut out = Vec::new();
    let mut status = ExitStatus::Signal(0);
    // SIGSEGV at start: this host's FS-base emulation bug (docs/guest.md); run it again.
    for _ in 0..ATTEMPTS {
        out.clear();
        let mut client = cairn_agent::client::Client::connect_uds(uds, AGENT_PORT).unwrap();
        status = client
            .exec(&req, std::io::empty(), &mut out, std::io::sink())
            .unwrap();
        if status != ExitStatus::Signal(11) {
            break;
        }
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn guest_and_host_reach_each_other_over_a_tap() {
    if !kvm_available("guest_and_host_reach_each_other_over_a_tap") {
        return;
    }
    retry_on_guest_flake("guest_and_host_reach_each_other_over_a_tap", || {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP guest_and_host_reach_each_other_over_a_tap: not root");
            return;
        }
        let ns = Netns(format!("cairn-e2e-{}", std::process::id()));
        let st = Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add");
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["tuntap", "add", "dev", "cairn0", "mode", "tap"]);
        ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "cairn0"]);
        ns.ip(&["link", "set", "cairn0", "up"]);

        let guest = guest_with_agent();
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let cfg = tap_guest_config(&guest, &uds);
        let cfg_path = write_vm_config(dir.path(), &cfg);
        let mut booted = None;
        for _ in 0..ATTEMPTS {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns.0])
                .arg(workspace_bin("cairn-vmm"))
                .args(["--no-api", "--config-file"])
                .arg(&cfg_path);
            let g = Guest::spawn(cmd);
            if g.wait_for("cairn-guest-ready", Duration::from_secs(300))
                .is_ok()
                && agent_answers(&uds, Duration::from_secs(120))
            {
                booted = Some(g);
                break;
            }
        }
        let vm = booted.expect("the guest never booted to a working agent");

        let (status, out) = exec(
            &uds,
            "ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up && ping -c 1 -W 10 10.0.2.1",
        );
        assert_eq!(
            status,
            ExitStatus::Code(0),
            "guest -> host ping failed: {out}\n{}",
            vm.stdout()
        );
        // Host -> guest ICMP too, where the host has a ping (iputils is not always installed).
        if Path::new("/usr/bin/ping").exists() || Path::new("/bin/ping").exists() {
            let ping = Command::new("ip")
                .args([
                    "netns", "exec", &ns.0, "ping", "-c", "1", "-W", "10", "10.0.2.2",
                ])
                .output()
                .unwrap();
            assert!(
                ping.status.success(),
                "host -> guest ping: {}{}",
                String::from_utf8_lossy(&ping.stdout),
                String::from_utf8_lossy(&ping.stderr)
            );
        }

        // TCP: the guest listens, the host connects from inside the namespace.
        let uds2 = uds.clone();
        let listener = std::thread::spawn(move || exec(&uds2, "nc -l -p 8080"));
        std::thread::sleep(Duration::from_secs(5));
        let mut sent = false;
        for _ in 0..20 {
            let st = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.0,
                    "bash",
                    "-c",
                    "echo tcp-from-host > /dev/tcp/10.0.2.2/8080",
                ])
                .status()
                .unwrap();
            if st.success() {
                sent = true;
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        assert!(sent, "host could not connect to the guest over TCP");
        let (status, out) = listener.join().unwrap();
        assert_eq!(
            (status, out.as_str()),
            (ExitStatus::Code(0), "tcp-from-host\n")
        );
    });
}

/// Boot the Linux guest in namespace `ns` on tap `cairn0`, with MMDS (`version`) on its eth0 and
/// the data store filled from `--metadata`. Returns the VMM and the agent's socket.
fn boot_with_mmds(ns: &Netns, dir: &Path, version: MmdsVersion) -> (Guest, std::path::PathBuf) {
    let guest = guest_with_agent();
    let uds = dir.join("v.sock");
    let metadata = dir.join("metadata.json");
    std::fs::write(
        &metadata,
        r#"{"latest": {"meta-data": {"ami-id": "ami-12345678", "hostname": "cairn-mmds"}}}"#,
    )
    .unwrap();
    let cfg = VmConfig {
        mmds_config: Some(MmdsConfig {
            version,
            network_interfaces: vec!["eth0".into()],
            ipv4_address: None,
            imds_compat: false,
        }),
        ..tap_guest_config(&guest, &uds)
    };
    let cfg_path = write_vm_config(dir, &cfg);
    for _ in 0..ATTEMPTS {
        let _ = std::fs::remove_file(&uds);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0])
            .arg(workspace_bin("cairn-vmm"))
            .args(["--no-api", "--config-file"])
            .arg(&cfg_path)
            .arg("--metadata")
            .arg(&metadata);
        let g = Guest::spawn(cmd);
        if g.wait_for("cairn-guest-ready", Duration::from_secs(300))
            .is_ok()
            && agent_answers(&uds, Duration::from_secs(120))
        {
            return (g, uds);
        }
    }
    panic!("the guest never booted to a working agent");
}

/// The guest's eth0 up, with a route to MMDS (no host address is needed: MMDS answers ARP).
const GUEST_NET: &str =
    "ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up && ip route add 169.254.169.254 dev eth0";

#[test]
fn the_guest_reads_mmds_v1_and_v2() {
    if !kvm_available("the_guest_reads_mmds_v1_and_v2") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP the_guest_reads_mmds_v1_and_v2: not root");
        return;
    }
    retry_on_guest_flake("the_guest_reads_mmds_v1_and_v2", || {
        let ns = Netns(format!("cairn-mmds-{}", std::process::id()));
        let st = Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add");
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["tuntap", "add", "dev", "cairn0", "mode", "tap"]);
        ns.ip(&["link", "set", "cairn0", "up"]);

        // V1: plain GETs, IMDS text by default and JSON on request.
        let dir = tempfile::tempdir().unwrap();
        let (vm, uds) = boot_with_mmds(&ns, dir.path(), MmdsVersion::V1);
        let script = format!(
            "{GUEST_NET} && wget -q -O - http://169.254.169.254/latest/meta-data/ami-id && echo \
             && wget -q -O - http://169.254.169.254/latest/meta-data/ && echo \
             && wget -q -O - --header 'Accept: application/json' http://169.254.169.254/latest"
        );
        let (status, out) = exec(&uds, &script);
        assert_eq!(status, ExitStatus::Code(0), "{out}\n{}", vm.stdout());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ami-12345678", "{out}");
        assert_eq!(&lines[1..3], ["ami-id", "hostname"], "{out}");
        assert_eq!(
            lines[3], r#"{"meta-data":{"ami-id":"ami-12345678","hostname":"cairn-mmds"}}"#,
            "{out}"
        );
        drop(vm);

        // V2: a GET without a token is refused; with a token from PUT /latest/api/token it works.
        let dir = tempfile::tempdir().unwrap();
        let (vm, uds) = boot_with_mmds(&ns, dir.path(), MmdsVersion::V2);
        let script = format!(
            "{GUEST_NET} && if wget -q -O - http://169.254.169.254/latest/meta-data/ami-id; \
             then echo UNEXPECTED; else echo REFUSED; fi \
             && TOKEN=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nX-metadata-token-ttl-seconds: 60\\r\\n\\r\\n' \
                | nc 169.254.169.254 80 | tail -n 1) && echo \"token=$TOKEN\" \
             && wget -q -O - --header \"X-metadata-token: $TOKEN\" \
                http://169.254.169.254/latest/meta-data/hostname"
        );
        let (status, out) = exec(&uds, &script);
        assert_eq!(status, ExitStatus::Code(0), "{out}\n{}", vm.stdout());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "REFUSED", "{out}");
        assert_eq!(lines[1].len(), "token=".len() + 44, "{out}");
        assert_eq!(lines[2], "cairn-mmds", "{out}");
        drop(vm);
    });
}
