//! The typed client's request bodies, with every optional field unset, are taken by `cairn-vmm`
//! and, with `FIRECRACKER=PATH` set (plus `FIRECRACKER_NO_SECCOMP=1` for a glibc build), by
//! Firecracker itself: unset fields are left out, never sent as `null` (Firecracker refuses
//! `"cache_type": null`). No VM is booted. As root the VMMs run in a private network namespace
//! (`unshare -n`) and a network interface is configured too (its tap is made there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_vmm_api::config::{
    BootSourceConfig, DriveConfig, EntropyConfig, LoggerConfig, MachineConfigUpdate, MetricsConfig,
    NetConfig, VsockConfig,
};

struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn spawn(program: &Path, extra: &[&str], sock: &Path) -> Vmm {
    let mut cmd = if is_root() {
        let mut c = Command::new("unshare");
        c.arg("-n").arg(program);
        c
    } else {
        Command::new(program)
    };
    let child = cmd
        .arg("--api-sock")
        .arg(sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    cairn_tests::process::http::wait_for_socket(sock, Duration::from_secs(10));
    Vmm(child)
}

fn configure_with_unset_options(program: &Path, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["kernel", "rootfs", "scratch"] {
        std::fs::File::create(dir.path().join(name))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
    }
    let sock = dir.path().join("api.sock");
    let _vmm = spawn(program, extra, &sock);
    let c = cairn_tests::process::api(&sock);
    let who = program.display();
    c.put_boot_source(&BootSourceConfig {
        kernel_image_path: dir.path().join("kernel"),
        ..BootSourceConfig::default()
    })
    .unwrap_or_else(|e| panic!("{who}: boot-source: {e}"));
    c.patch_machine_config(&MachineConfigUpdate {
        mem_size_mib: Some(64),
        ..MachineConfigUpdate::default()
    })
    .unwrap_or_else(|e| panic!("{who}: machine-config: {e}"));
    for (id, root) in [("rootfs", true), ("scratch", false)] {
        c.put_drive(&DriveConfig::new(id, dir.path().join(id), root))
            .unwrap_or_else(|e| panic!("{who}: drive {id}: {e}"));
    }
    if is_root() {
        c.put_network_interface(&NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "fctypedtap0".into(),
            guest_mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            mtu: None,
        })
        .unwrap_or_else(|e| panic!("{who}: network interface: {e}"));
    } else {
        println!("SKIP the network interface: needs root (it makes a tap)");
    }
    c.put_vsock(&VsockConfig {
        vsock_id: None,
        guest_cid: 3,
        uds_path: dir.path().join("v.sock"),
    })
    .unwrap_or_else(|e| panic!("{who}: vsock: {e}"));
    c.put_entropy(&EntropyConfig::default())
        .unwrap_or_else(|e| panic!("{who}: entropy: {e}"));
    c.put_logger(&LoggerConfig {
        log_path: Some(dir.path().join("log")),
        ..LoggerConfig::default()
    })
    .unwrap_or_else(|e| panic!("{who}: logger: {e}"));
    c.put_metrics(&MetricsConfig {
        metrics_path: dir.path().join("metrics"),
    })
    .unwrap_or_else(|e| panic!("{who}: metrics: {e}"));
    let config = c
        .vm_config()
        .unwrap_or_else(|e| panic!("{who}: vm/config: {e}"));
    assert_eq!(config.drives.len(), 2, "{who}");
    assert_eq!(
        config.network_interfaces.len(),
        usize::from(is_root()),
        "{who}"
    );
    assert_eq!(config.machine_config.mem_size_mib, 64, "{who}");
}

#[test]
fn unset_options_are_left_out_for_cairn_and_firecracker() {
    configure_with_unset_options(Path::new(env!("CARGO_BIN_EXE_cairn-vmm")), &[]);
    match std::env::var_os("FIRECRACKER").map(PathBuf::from) {
        Some(fc) => {
            let extra: &[&str] = if std::env::var("FIRECRACKER_NO_SECCOMP").as_deref() == Ok("1") {
                &["--no-seccomp"]
            } else {
                &[]
            };
            configure_with_unset_options(&fc, extra);
        }
        None => println!("SKIP the Firecracker half: FIRECRACKER is not set"),
    }
}
