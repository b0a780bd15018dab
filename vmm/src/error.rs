//! The VMM's error type: one variant per step that can fail, each message naming the step.

/// Why a VMM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and do you have read/write access to /dev/kvm?)")]
    KvmOpen(kvm_ioctls::Error),
    /// The host's KVM lacks something cairn needs.
    #[error("KVM capability missing: {0}")]
    KvmCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// The requested memory size is not possible.
    #[error("invalid memory size: {0} MiB")]
    MemorySize(usize),
    /// Guest memory could not be set up or accessed.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// The kernel image could not be opened or loaded.
    #[error("cannot load kernel {path}: {reason}")]
    KernelLoad {
        /// Kernel path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The initrd could not be opened or loaded.
    #[error("cannot load initrd {path}: {reason}")]
    InitrdLoad {
        /// Initrd path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The kernel command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// CPUID could not be prepared.
    #[error("cpuid: {0}")]
    Cpuid(#[from] crate::arch::x86_64::cpuid::CpuidError),
    /// The MP table could not be written.
    #[error("mptable: {0}")]
    Mptable(#[from] crate::arch::x86_64::mptable::MptableError),
    /// A device could not be created or attached.
    #[error("device {device}: {reason}")]
    Device {
        /// Device name.
        device: String,
        /// What went wrong.
        reason: String,
    },
    /// A vCPU thread could not be started or did not answer.
    #[error("vCPU {index}: {reason}")]
    Vcpu {
        /// vCPU index.
        index: u8,
        /// What went wrong.
        reason: String,
    },
    /// The command line's flags do not go together.
    #[error("arguments: {0}")]
    Args(String),
    /// `--level` names no log level.
    #[error("{0}")]
    BadLogLevel(String),
    /// The configuration is incomplete or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The operation is not valid in the VM's current state.
    #[error("{0}")]
    InvalidState(String),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// A snapshot or checkpoint could not be written or read.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A snapshot cannot be restored on this host or with this configuration.
    #[error("snapshot is incompatible: {0}")]
    Incompatible(String),
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl VmmError {
    /// A mapper for `map_err` that names the failed ioctl.
    pub fn kvm(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmmError {
        move |source| VmmError::Kvm { op, source }
    }

    /// A mapper for `map_err` that says what I/O was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
        let what = what.into();
        move |source| VmmError::Io { what, source }
    }
}
