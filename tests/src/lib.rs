//! Test support shared by cairn's integration tests: the tiny guests (assembled at build time
//! from `guests/*.S`), the `/dev/kvm` skip policy, and helpers to run `cairn-vmm` as a child
//! process and wait for markers on its serial output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod capture;
pub mod fake_internet;
pub mod guests;
pub mod linux;
pub mod ports;
pub mod process;
pub mod s3;
pub mod sandbox;
pub mod serve;

/// Fails test `name` unless every one of `tools` is on `PATH` (scripts/deps installs them).
pub fn require_tools(name: &str, tools: &[&str]) {
    for tool in tools {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{name}: {tool} is missing (hint: scripts/deps)");
    }
}

/// Whether `path` is on a tmpfs (`statfs`'s `f_type`). Panics if `path` cannot be looked up.
pub fn on_tmpfs(path: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: statfs fills the struct we own from a NUL-terminated path.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0, "statfs {}", path.display());
    // SAFETY: statfs returned 0, so the struct is filled.
    unsafe { st.assume_init() }.f_type == libc::TMPFS_MAGIC
}

/// Whether a KVM test may run. Without `/dev/kvm` it prints `SKIP <name>: /dev/kvm not available`
/// and returns false; with `CAIRN_REQUIRE_KVM=1` it panics instead, so CI cannot pass silently.
pub fn kvm_available(name: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        if std::env::var("CAIRN_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{name}: /dev/kvm not available and CAIRN_REQUIRE_KVM=1");
        }
        eprintln!("SKIP {name}: /dev/kvm not available");
    }
    ok
}

/// The guest kernel, initramfs and boot arguments built by `guest/build` (cached in
/// `~/.cache/cairn`).
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// ELF vmlinux.
    pub kernel: String,
    /// Uncompressed initramfs.
    pub initrd: String,
    /// Kernel command line for this host's profile.
    pub boot_args: String,
    /// The static guest agent in both images (`agent=`), when there is one.
    pub agent: Option<String>,
    /// The cached ext4 root disk (`rootfs=`; absent with `--no-rootfs`). Shared: boot a copy.
    pub rootfs: Option<String>,
    /// The custom CPU template this host needs (`cpu_config=`), for the config's `"cpu-config"`.
    pub cpu_config: Option<String>,
}

impl LinuxGuest {
    /// A config that boots this guest from its initramfs with `mem_mib` MiB, one vCPU and this
    /// host's `"cpu-config"`; add devices to it.
    pub fn vm_config(&self, mem_mib: usize) -> cairn_vmm_api::config::VmConfig {
        use cairn_vmm_api::config::{BootSourceConfig, MachineConfig, VmConfig};
        VmConfig {
            boot_source: Some(BootSourceConfig {
                kernel_image_path: self.kernel.clone().into(),
                initrd_path: Some(self.initrd.clone().into()),
                boot_args: Some(self.boot_args.clone()),
            }),
            machine_config: MachineConfig {
                vcpu_count: 1,
                mem_size_mib: mem_mib,
                ..MachineConfig::default()
            },
            cpu_config: self.cpu_config.clone().map(Into::into),
            ..VmConfig::default()
        }
    }
}

/// Build (or fetch from the cache) the Linux guest with `guest/build`.
pub fn linux_guest() -> LinuxGuest {
    linux_guest_with(&[])
}

/// [`linux_guest`] with extra `guest/build` arguments (`--agent PATH`, ...).
pub fn linux_guest_with(args: &[&str]) -> LinuxGuest {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/build");
    let out = std::process::Command::new(&script)
        .arg("--quiet")
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "guest/build failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    let get =
        |key: &str| find(key).unwrap_or_else(|| panic!("guest/build printed no {key}=: {text}"));
    LinuxGuest {
        kernel: get("kernel"),
        initrd: get("initrd"),
        boot_args: get("boot_args"),
        agent: find("agent"),
        rootfs: find("rootfs"),
        cpu_config: find("cpu_config"),
    }
}
