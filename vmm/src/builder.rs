//! Building a VM: an ordered list of small steps, each taking only what it needs.
//!
//! `spec` → KVM and VM → guest memory → kernel and initrd → legacy devices → virtio devices →
//! command line and boot information → vCPUs → started [`Machine`].

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cairn_devices::bus::Bus;
use cairn_devices::legacy::serial::SerialOut;
use cairn_devices::GuestMemoryMmap;
use kvm_ioctls::{Cap, Kvm};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::cpuid::CpuTemplate;
use crate::arch::x86_64::regs::EntryMode;
use crate::boot::{
    build_cmdline, load_initrd, load_kernel, write_boot_info, LoadedKernel, DEFAULT_BOOT_ARGS,
};
use crate::config::HugePages;
use crate::device_manager::{
    attach_legacy_devices, attach_virtio_device, LegacyDevices, SlotAllocator, VirtioAttachment,
    VirtioHandle,
};
use crate::error::VmmError;
use crate::event_loop::{EventLoop, ExitWatcher, SerialInput};
use crate::machine::{Machine, RunState};
use crate::vstate::memory::create_guest_memory_in;
use crate::vstate::prewarm::{self, PreparedVm};
use crate::vstate::vcpu::{install_kick_handler, BootVcpuConfig, ExitSignal, Vcpu};
use crate::vstate::vcpu_threads::VcpuThreads;
use crate::vstate::vm::Vm;

/// Most vCPUs a cairn VM may have.
pub const MAX_VCPUS: u8 = 32;

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelImage {
    /// An ELF vmlinux or a bzImage.
    Linux {
        /// The kernel file.
        kernel: PathBuf,
        /// The initrd, if any.
        initrd: Option<PathBuf>,
        /// Kernel command line; Firecracker's default when `None`.
        boot_args: Option<String>,
    },
    /// A flat binary copied to `load_addr` and entered in 16-bit real mode at `cs:ip`
    /// (tiny test guests and firmware-like images).
    RealMode {
        /// The binary.
        image: PathBuf,
        /// Where it goes in guest memory.
        load_addr: u64,
        /// Code segment.
        cs: u16,
        /// Instruction pointer.
        ip: u16,
    },
}

/// Everything the builder needs, already validated by the config layer.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSpec {
    /// What to boot.
    pub image: KernelImage,
    /// Number of vCPUs (1..=32).
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: usize,
    /// The page size backing guest RAM (Firecracker's `huge_pages`).
    pub huge_pages: HugePages,
    /// Two threads per core.
    pub smt: bool,
    /// KVM dirty logging for incremental checkpoints.
    pub track_dirty_pages: bool,
    /// CPU template.
    pub cpu_template: CpuTemplate,
    /// Custom CPU template (Firecracker's `cpu-config`), applied after `cpu_template`.
    pub custom_cpu_template: Option<crate::config::CustomCpuTemplate>,
    /// Extra kernel command-line entries.
    pub extra_cmdline: Vec<String>,
    /// Virtio devices, in attach order.
    pub devices: Vec<DeviceSpec>,
    /// What the API set for drives and interfaces that their devices do not hold
    /// (`is_root_device`, `partuuid`, `cache_type`, `mtu`), kept in checkpoints.
    pub device_settings: crate::device_settings::DeviceSettings,
    /// Where named checkpoints go (cairn's `"cairn": {"checkpoint_dir"}`). With it, writable
    /// drives sit on the layered block store and dirty pages are tracked.
    pub checkpoint_dir: Option<PathBuf>,
    /// cairn-only, opt-in: guest RAM in an unlinked file in this tmpfs directory, mapped shared,
    /// so that a Full snapshot into the same tmpfs hands it over instead of copying it
    /// (vstate/shared_memory.rs). Restores make their own memory and do not use it.
    pub guest_memory_dir: Option<PathBuf>,
}

/// Opens the backend of each block device (a raw file, or the layered store for checkpointable
/// VMs).
pub type DiskOpener<'a> = dyn FnMut(
        &cairn_devices::virtio::block::BlockConfig,
    ) -> Result<Box<dyn cairn_devices::virtio::block::DiskBackend>, VmmError>
    + 'a;

/// An `io_engine: "Async"` drive: its raw image file, through io_uring.
pub fn open_async_disk(
    cfg: &cairn_devices::virtio::block::BlockConfig,
) -> Result<Box<dyn cairn_devices::virtio::block::DiskBackend>, VmmError> {
    let disk = crate::uring_disk::UringDisk::open(&cfg.path, cfg.read_only).map_err(|e| {
        VmmError::Device {
            device: format!("block:{}", cfg.drive_id),
            reason: format!("{}: {e}", cfg.path.display()),
        }
    })?;
    Ok(Box::new(disk))
}

/// The plain opener: each drive is its raw image file.
pub fn open_raw_disk(
    cfg: &cairn_devices::virtio::block::BlockConfig,
) -> Result<Box<dyn cairn_devices::virtio::block::DiskBackend>, VmmError> {
    let raw =
        cairn_devices::virtio::block::RawFile::open(&cfg.path, cfg.read_only).map_err(|e| {
            VmmError::Device {
                device: format!("block:{}", cfg.drive_id),
                reason: format!("{}: {e}", cfg.path.display()),
            }
        })?;
    Ok(Box::new(raw))
}

/// A virtio device to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// virtio-blk on a raw image, with its rate limiter and I/O engine.
    Block(
        cairn_devices::virtio::block::BlockConfig,
        cairn_devices::rate_limiter::LimiterConfig,
        crate::config::IoEngine,
    ),
    /// virtio-net on a tap device, with its rx and tx rate limiters.
    Net(
        cairn_devices::virtio::net::NetConfig,
        cairn_devices::rate_limiter::LimiterConfig,
        cairn_devices::rate_limiter::LimiterConfig,
    ),
    /// virtio-vsock with Firecracker's Unix-socket convention.
    Vsock(cairn_devices::virtio::vsock::VsockConfig),
    /// virtio-rng, with its rate limiter.
    Rng(cairn_devices::rate_limiter::LimiterConfig),
    /// virtio-balloon.
    Balloon(cairn_devices::virtio::balloon::BalloonConfig),
}

impl BuildSpec {
    /// A spec for a Linux kernel with the defaults Firecracker uses (1 vCPU, 128 MiB).
    pub fn linux(kernel: impl Into<PathBuf>) -> Self {
        Self {
            image: KernelImage::Linux {
                kernel: kernel.into(),
                initrd: None,
                boot_args: None,
            },
            vcpu_count: 1,
            mem_size_mib: 128,
            huge_pages: HugePages::None,
            smt: false,
            track_dirty_pages: false,
            cpu_template: CpuTemplate::None,
            custom_cpu_template: None,
            extra_cmdline: vec![],
            devices: vec![],
            device_settings: Default::default(),
            checkpoint_dir: None,
            guest_memory_dir: None,
        }
    }

    fn validate(&self) -> Result<(), VmmError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "vcpu_count must be 1..={MAX_VCPUS}, got {}",
                self.vcpu_count
            )));
        }
        if self.mem_size_mib < 2 {
            return Err(VmmError::Config(format!(
                "mem_size_mib must be at least 2, got {}",
                self.mem_size_mib
            )));
        }
        crate::host_limits::check_mem_size(self.mem_size_mib).map_err(VmmError::Config)?;
        if self.huge_pages.is_huge() && self.guest_memory_dir.is_some() {
            return Err(VmmError::Config(
                "huge_pages \"2M\" cannot be combined with guest_memory_dir: guest RAM in a \
                 tmpfs file is on 4 KiB pages"
                    .into(),
            ));
        }
        if self.huge_pages.is_huge() && self.checkpoint_dir.is_some() {
            return Err(VmmError::Config(
                "huge_pages \"2M\" cannot be combined with a checkpoint directory: named \
                 checkpoints restore guest memory by mapping their layer files, which cannot be \
                 huge pages"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Where the machine's console goes and comes from.
pub struct ConsoleIo {
    /// Guest serial output.
    pub output: SerialOut,
    /// Host fd to read console input from (stdin), if any.
    pub input: Option<RawFd>,
}

impl std::fmt::Debug for ConsoleIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleIo")
            .field("input", &self.input)
            .finish()
    }
}

/// Step: open KVM and check what cairn needs.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::KvmOpen)?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmmError::KvmCapability(name));
        }
    }
    Ok(kvm)
}

/// Step: the KVM capabilities a custom CPU template requires (`"N"` in its `kvm_capabilities`).
/// A `"!N"` entry is accepted: the capabilities [`open_kvm`] checks are ones cairn cannot work
/// without, so there is nothing to drop.
fn check_template_capabilities(kvm: &Kvm, spec: &BuildSpec) -> Result<(), VmmError> {
    let Some(template) = &spec.custom_cpu_template else {
        return Ok(());
    };
    for m in &template.kvm_capabilities {
        if let crate::config::KvmCapabilityModifier::Require(cap) = *m {
            if kvm.check_extension_raw(libc::c_ulong::from(cap)) <= 0 {
                return Err(VmmError::Config(format!(
                    "cpu-config.kvm_capabilities: this host's KVM lacks capability {cap}"
                )));
            }
        }
    }
    Ok(())
}

/// Step: load what `image` names into guest memory.
pub fn load_image(
    mem: &GuestMemoryMmap,
    image: &KernelImage,
) -> Result<
    (
        LoadedKernel,
        Option<crate::arch::x86_64::boot_params::InitrdPlacement>,
    ),
    VmmError,
> {
    match image {
        KernelImage::Linux { kernel, initrd, .. } => {
            let loaded = load_kernel(mem, kernel)?;
            let initrd = match initrd {
                Some(p) => Some(load_initrd(mem, p, loaded.end)?),
                None => None,
            };
            Ok((loaded, initrd))
        }
        KernelImage::RealMode {
            image,
            load_addr,
            cs,
            ip,
        } => {
            let bytes = std::fs::read(image).map_err(|e| VmmError::KernelLoad {
                path: image.display().to_string(),
                reason: e.to_string(),
            })?;
            mem.write_slice(&bytes, GuestAddress(*load_addr))
                .map_err(|e| VmmError::KernelLoad {
                    path: image.display().to_string(),
                    reason: format!("does not fit at {load_addr:#x}: {e}"),
                })?;
            let entry = EntryMode::RealMode { cs: *cs, ip: *ip };
            Ok((
                LoadedKernel {
                    entry,
                    setup_header: None,
                    end: load_addr + bytes.len() as u64,
                },
                None,
            ))
        }
    }
}

/// Build and start a VM from `spec`, registering its event sources with `event_loop`.
pub fn build_machine(
    spec: &BuildSpec,
    console: ConsoleIo,
    event_loop: &mut EventLoop,
    disks: &mut DiskOpener<'_>,
) -> Result<Machine, VmmError> {
    spec.validate()?;
    install_kick_handler()?;
    // The vCPU threads get scheduled while everything else is made (vstate/vcpu_threads.rs).
    let mut threads = VcpuThreads::start(spec.vcpu_count);
    // Memory and the kernel do not need the VM: load them while a prewarm (if one was started)
    // finishes making it.
    let (mem, ram_file) = create_guest_memory_in(
        spec.mem_size_mib,
        spec.huge_pages,
        spec.guest_memory_dir.as_deref(),
    )?;
    let (kernel, initrd) = load_image(&mem, &spec.image)?;
    let PreparedVm {
        kvm,
        mut vm,
        supported_cpuid,
    } = prewarm::take()?;
    let cpu_vendor = crate::arch::x86_64::cpuid::vendor(&supported_cpuid);
    check_template_capabilities(&kvm, spec)?;
    vm.set_up(&mem, spec.track_dirty_pages)?;

    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let legacy = attach_legacy_devices(vm.fd(), &mut pio, console.output)?;
    let vmgenid = crate::vmgenid::attach_vmgenid(vm.fd(), &mem)?;
    let exit = Arc::new(ExitSignal::new()?);
    register_legacy_events(event_loop, &legacy, &exit, console.input)?;
    let mut cmdline_extra = spec.extra_cmdline.clone();
    // An Async drive on a raw file goes through io_uring; in cairn's checkpoint store
    // (`checkpoint_dir`) every drive is the store's (docs/vmm.md, "I/O engines").
    let layered = spec.checkpoint_dir.is_some();
    let mut open = |cfg: &cairn_devices::virtio::block::BlockConfig| {
        let async_io = spec.devices.iter().any(|d| {
            matches!(d, DeviceSpec::Block(c, _, crate::config::IoEngine::Async)
                if c.drive_id == cfg.drive_id)
        });
        if async_io && !layered {
            open_async_disk(cfg)
        } else {
            disks(cfg)
        }
    };
    let virtio = attach_virtio_devices(
        vm.fd(),
        &mut mmio,
        &mem,
        &spec.devices,
        event_loop,
        &mut cmdline_extra,
        &mut open,
    )?;

    if let KernelImage::Linux { boot_args, .. } = &spec.image {
        let args = boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS);
        let cmdline = build_cmdline(args, &cmdline_extra)?;
        let acpi = crate::vmgenid::acpi_description(&vmgenid);
        let slots: Vec<(u64, u32)> = virtio.iter().map(|a| (a.slot.base, a.slot.irq)).collect();
        write_boot_info(
            &mem,
            &kernel,
            &cmdline,
            initrd,
            spec.vcpu_count,
            Some(acpi),
            &slots,
        )?;
    }

    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let vcpus = create_vcpus(
        &supported_cpuid,
        &vm,
        spec,
        &kernel,
        &pio,
        &mmio,
        &mem,
        &exit,
    )?;
    let handles = vcpus
        .into_iter()
        .map(|v| v.start_on(false, &mut threads))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Machine {
        kvm,
        vm,
        mem,
        vcpus: handles,
        legacy,
        virtio,
        pio,
        mmio,
        exit,
        state: RunState::Running,
        spec: spec.clone(),
        cpu_vendor,
        restored_pages: Default::default(),
        dirty: Default::default(),
        vmgenid: Some(vmgenid),
        mmds: None,
        write_tracker: None,
        ram_file,
        filled: None,
    })
}

/// Step: create each virtio device, put it on the MMIO bus, add it to the event loop and
/// announce it on the kernel command line.
fn attach_virtio_devices(
    vm: &kvm_ioctls::VmFd,
    mmio: &mut Bus,
    mem: &GuestMemoryMmap,
    devices: &[DeviceSpec],
    event_loop: &mut EventLoop,
    cmdline: &mut Vec<String>,
    disks: &mut DiskOpener<'_>,
) -> Result<Vec<VirtioAttachment>, VmmError> {
    use cairn_devices::rate_limiter::LimiterConfig;
    use cairn_devices::virtio::{block::Block, net::Net, rng::Rng, vsock::Vsock};
    let mut slots = SlotAllocator::default();
    let mut attached = Vec::with_capacity(devices.len());
    let dev_err = |id: &str, e: &dyn std::fmt::Display| VmmError::Device {
        device: id.to_string(),
        reason: e.to_string(),
    };
    for spec in devices {
        let (id, handle) = match spec {
            DeviceSpec::Block(cfg, limiter, _) => {
                let id = format!("block:{}", cfg.drive_id);
                let mut dev = Block::new(cfg.clone(), disks(cfg)?).map_err(|e| dev_err(&id, &e))?;
                if *limiter != LimiterConfig::default() {
                    dev.update_rate_limiter(limiter)
                        .map_err(|e| dev_err(&id, &e))?;
                }
                (id, VirtioHandle::Block(Arc::new(Mutex::new(dev))))
            }
            DeviceSpec::Net(cfg, rx, tx) => {
                let id = format!("net:{}", cfg.iface_id);
                let mut dev = Net::new(cfg.clone()).map_err(|e| dev_err(&id, &e))?;
                if *rx != LimiterConfig::default() || *tx != LimiterConfig::default() {
                    dev.update_rate_limiters(rx, tx)
                        .map_err(|e| dev_err(&id, &e))?;
                }
                (id, VirtioHandle::Net(Arc::new(Mutex::new(dev))))
            }
            DeviceSpec::Vsock(cfg) => {
                let id = "vsock".to_string();
                let dev = Vsock::new(cfg.clone()).map_err(|e| dev_err(&id, &e))?;
                (id, VirtioHandle::Vsock(Arc::new(Mutex::new(dev))))
            }
            DeviceSpec::Rng(limit) => {
                let id = "rng".to_string();
                let mut dev = Rng::new().map_err(|e| dev_err(&id, &e))?;
                if *limit != LimiterConfig::default() {
                    dev.update_rate_limiter(limit)
                        .map_err(|e| dev_err(&id, &e))?;
                }
                (id, VirtioHandle::Rng(Arc::new(Mutex::new(dev))))
            }
            DeviceSpec::Balloon(cfg) => {
                let id = "balloon".to_string();
                let dev = cairn_devices::virtio::balloon::Balloon::new(*cfg)
                    .map_err(|e| dev_err(&id, &e))?;
                (id, VirtioHandle::Balloon(Arc::new(Mutex::new(dev))))
            }
        };
        let subscriber = handle.as_subscriber();
        let attachment = attach_virtio_device(vm, mmio, mem, &mut slots, id, handle)?;
        cmdline.push(attachment.slot.cmdline_entry());
        event_loop.add(subscriber);
        attached.push(attachment);
    }
    Ok(attached)
}

/// Step: the console input and the exit watcher join the event loop.
pub(crate) fn register_legacy_events(
    event_loop: &mut EventLoop,
    legacy: &LegacyDevices,
    exit: &Arc<ExitSignal>,
    input: Option<RawFd>,
) -> Result<(), VmmError> {
    let reset = legacy
        .reset_evt
        .try_clone()
        .map_err(VmmError::io("i8042 reset eventfd"))?;
    event_loop.add(Arc::new(Mutex::new(ExitWatcher::new(exit.clone(), reset))));
    if let Some(fd) = input {
        let ready = legacy
            .serial_input_ready
            .try_clone()
            .map_err(VmmError::io("serial eventfd"))?;
        event_loop.add(Arc::new(Mutex::new(SerialInput::new(
            legacy.serial.clone(),
            fd,
            ready,
        ))));
    }
    Ok(())
}

/// Step: create and configure every vCPU for boot.
#[allow(clippy::too_many_arguments)]
fn create_vcpus(
    supported: &kvm_bindings::CpuId,
    vm: &Vm,
    spec: &BuildSpec,
    kernel: &LoadedKernel,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    mem: &GuestMemoryMmap,
    exit: &Arc<ExitSignal>,
) -> Result<Vec<Vcpu>, VmmError> {
    let cfg = BootVcpuConfig {
        supported_cpuid: supported,
        cpu_count: spec.vcpu_count,
        smt: spec.smt,
        template: spec.cpu_template,
        custom: spec.custom_cpu_template.as_ref(),
        entry: kernel.entry,
    };
    (0..spec.vcpu_count)
        .map(|i| {
            let vcpu = Vcpu::new(vm, i, pio.clone(), mmio.clone(), mem.clone(), exit.clone())?;
            vcpu.configure_boot(&cfg)?;
            Ok(vcpu)
        })
        .collect()
}

impl BuildSpec {
    /// The spec for a validated Firecracker-style configuration.
    pub fn from_config(cfg: &crate::config::VmConfig) -> Result<Self, VmmError> {
        use crate::config::Validate;
        cfg.validate()
            .map_err(|e| VmmError::Config(e.to_string()))?;
        let boot = cfg
            .boot_source
            .as_ref()
            .ok_or_else(|| VmmError::Config("boot-source: missing".into()))?;
        let mc = &cfg.machine_config;
        let template = match mc.cpu_template.unwrap_or_default() {
            crate::config::CpuTemplate::None => CpuTemplate::None,
            crate::config::CpuTemplate::T2 => CpuTemplate::T2,
            crate::config::CpuTemplate::C3 => CpuTemplate::C3,
            crate::config::CpuTemplate::T2S => CpuTemplate::T2S,
            crate::config::CpuTemplate::T2CL => CpuTemplate::T2CL,
            other => {
                return Err(VmmError::Config(format!(
                    "machine-config.cpu_template: {other:?} is not implemented by cairn (use None, T2, T2S, T2CL or C3)"
                )))
            }
        };
        Ok(Self {
            image: KernelImage::Linux {
                kernel: boot.kernel_image_path.clone(),
                initrd: boot.initrd_path.clone(),
                boot_args: boot.boot_args.clone(),
            },
            vcpu_count: mc.vcpu_count,
            mem_size_mib: mc.mem_size_mib,
            huge_pages: mc.huge_pages,
            smt: mc.smt,
            track_dirty_pages: mc.track_dirty_pages || cfg.cairn.checkpoint_dir.is_some(),
            cpu_template: template,
            custom_cpu_template: custom_cpu_template(cfg)?,
            extra_cmdline: root_device_cmdline(cfg),
            devices: device_specs(cfg)?,
            device_settings: crate::device_settings::DeviceSettings::from_config(cfg),
            checkpoint_dir: cfg.cairn.checkpoint_dir.clone(),
            guest_memory_dir: crate::vstate::shared_memory::configured_dir(
                cfg.cairn.guest_memory_dir.as_deref(),
            ),
        })
    }
}

/// The custom CPU template: the body of `PUT /cpu-config` if one came, else the file the
/// config's `"cpu-config"` names.
fn custom_cpu_template(
    cfg: &crate::config::VmConfig,
) -> Result<Option<crate::config::CustomCpuTemplate>, VmmError> {
    if let Some(t) = &cfg.custom_cpu_template {
        return Ok(Some(t.clone()));
    }
    cfg.cpu_config
        .as_deref()
        .map(|path| {
            crate::config::CustomCpuTemplate::from_file(path)
                .map_err(|e| VmmError::Config(e.within("cpu-config").to_string()))
        })
        .transpose()
}

/// Firecracker's `root=` entry for the root drive (drives are attached in order, the root
/// drive first, so it is `/dev/vda`).
fn root_device_cmdline(cfg: &crate::config::VmConfig) -> Vec<String> {
    match cfg.drives.iter().find(|d| d.is_root_device) {
        Some(d) => {
            let root = match &d.partuuid {
                Some(uuid) => format!("root=PARTUUID={uuid}"),
                None => "root=/dev/vda".to_string(),
            };
            let mode = if d.is_read_only.unwrap_or(false) {
                "ro"
            } else {
                "rw"
            };
            vec![root, mode.to_string()]
        }
        None => vec![],
    }
}

/// The virtio devices of `cfg`, in Firecracker's order: the root drive, the other drives,
/// network interfaces, vsock, entropy.
fn device_specs(cfg: &crate::config::VmConfig) -> Result<Vec<DeviceSpec>, VmmError> {
    let mut drives: Vec<_> = cfg.drives.iter().collect();
    drives.sort_by_key(|d| !d.is_root_device);
    let mut out: Vec<DeviceSpec> = drives
        .into_iter()
        .map(|d| {
            DeviceSpec::Block(
                cairn_devices::virtio::block::BlockConfig {
                    drive_id: d.drive_id.clone(),
                    path: d.path_on_host.clone(),
                    read_only: d.is_read_only.unwrap_or(false),
                },
                crate::rate_limit::limiter_config(d.rate_limiter.as_ref()),
                d.io_engine.unwrap_or_default(),
            )
        })
        .collect();
    for n in &cfg.network_interfaces {
        let guest_mac = match &n.guest_mac {
            Some(mac) => Some(parse_mac(mac).ok_or_else(|| {
                VmmError::Config(format!(
                    "network-interfaces.guest_mac: {mac:?} is not a MAC address"
                ))
            })?),
            None => None,
        };
        out.push(DeviceSpec::Net(
            cairn_devices::virtio::net::NetConfig {
                iface_id: n.iface_id.clone(),
                host_dev_name: n.host_dev_name.clone(),
                guest_mac,
                mtu: n.mtu,
            },
            crate::rate_limit::limiter_config(n.rx_rate_limiter.as_ref()),
            crate::rate_limit::limiter_config(n.tx_rate_limiter.as_ref()),
        ));
    }
    if let Some(v) = &cfg.vsock {
        out.push(DeviceSpec::Vsock(
            cairn_devices::virtio::vsock::VsockConfig {
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.clone(),
            },
        ));
    }
    if let Some(e) = &cfg.entropy {
        out.push(DeviceSpec::Rng(crate::rate_limit::limiter_config(
            e.rate_limiter.as_ref(),
        )));
    }
    if let Some(b) = &cfg.balloon {
        out.push(DeviceSpec::Balloon(
            cairn_devices::virtio::balloon::BalloonConfig {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_polling_interval_s: b.stats_polling_interval_s,
                free_page_hinting: b.free_page_hinting,
                free_page_reporting: b.free_page_reporting,
            },
        ));
    }
    Ok(out)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}
