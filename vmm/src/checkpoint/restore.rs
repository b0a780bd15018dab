//! Rebuilding a VM from a machine state file and its memory files.
//!
//! Memory is mapped, not copied: the base file MAP_PRIVATE over each RAM region, then every
//! later layer's pages MAP_FIXED over it, newest last, so restore time does not grow with guest
//! RAM and no layer is ever merged first. Where background checkpoints need write-protectable
//! memory and the files lie on a disk file system, memory is anonymous instead, filled on first
//! touch and in the background from the same layers (checkpoint/filled_memory.rs); restore is
//! just as lazy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cairn_devices::bus::Bus;
use cairn_devices::virtio::block::{Block, BlockConstructorArgs};
use cairn_devices::virtio::mmio::{MmioTransport, MmioTransportConstructorArgs};
use cairn_devices::virtio::net::persist::NetConstructorArgs;
use cairn_devices::virtio::net::{Net, Tap};
use cairn_devices::virtio::rng::Rng;
use cairn_devices::virtio::vsock::Vsock;
use cairn_snapshot::Persist;
use kvm_bindings::kvm_cpuid_entry2;

use crate::arch::x86_64::cpuid::CpuTemplate;
use crate::builder::{register_legacy_events, BuildSpec, ConsoleIo, DiskOpener, KernelImage};
use crate::checkpoint::compat::{check_compatible, host_cpuid};
use crate::checkpoint::filled_memory;
use crate::checkpoint::memory::map_memory_chain;
use crate::checkpoint::state::{MachineState, VirtioDeviceState};
use crate::checkpoint::verify;
use crate::device_manager::{
    attach_legacy_devices_with_state, wire_transport, MmioSlot, VirtioHandle,
};
use crate::error::VmmError;
use crate::event_loop::EventLoop;
use crate::machine::{Machine, RunState};
use crate::vstate::prewarm::{self, PreparedVm};
use crate::vstate::vcpu::{install_kick_handler, ExitSignal, Vcpu};
use crate::vstate::vcpu_state::VcpuConstructorArgs;
use crate::vstate::vcpu_threads::VcpuThreads;
use crate::vstate::vm::{Vm, VmConstructorArgs};
use cairn_snapshot::memory::PageIndex;

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Memory files, base first.
    pub memory_layers: Vec<PathBuf>,
    /// Track dirty pages after the restore (needed for Diff snapshots and checkpoints).
    pub track_dirty_pages: bool,
    /// Let the vCPUs run at once.
    pub resume: bool,
    /// Host tap names to use instead of the saved ones, by iface_id.
    pub network_overrides: Vec<(String, String)>,
    /// A vsock Unix socket path to use instead of the saved one.
    pub vsock_uds_path: Option<PathBuf>,
    /// Restore into anonymous memory filled from the layer files by the VMM
    /// (checkpoint/filled_memory.rs) instead of mapping the files, so that the kernel can
    /// write-protect it for background checkpoints. [`filled_memory::wanted`] decides.
    pub fill_anonymous: bool,
}

fn dev_err(id: &str, e: impl std::fmt::Display) -> VmmError {
    VmmError::Device {
        device: id.to_string(),
        reason: e.to_string(),
    }
}

/// A balloon from its saved state (and its free page state, when it had hinting or reporting).
fn restore_balloon(
    id: &str,
    base: &cairn_devices::virtio::balloon::BalloonState,
    free_page: Option<cairn_devices::virtio::balloon::FreePageState>,
) -> Result<VirtioHandle, VmmError> {
    let full = cairn_devices::virtio::balloon::BalloonFullState {
        base: base.clone(),
        free_page,
    };
    let dev =
        cairn_devices::virtio::balloon::Balloon::restore((), &full).map_err(|e| dev_err(id, e))?;
    Ok(VirtioHandle::Balloon(Arc::new(Mutex::new(dev))))
}

/// Rebuild a machine from `state`. Its event sources join `event_loop`.
pub fn restore_machine(
    state: &MachineState,
    opts: &RestoreOptions,
    console: ConsoleIo,
    event_loop: &mut EventLoop,
    disks: &mut DiskOpener<'_>,
) -> Result<Machine, VmmError> {
    install_kick_handler()?;
    // The vCPU threads get scheduled while the machine is rebuilt (vstate/vcpu_threads.rs).
    let count = u8::try_from(state.vcpus.len()).unwrap_or(0);
    let mut threads = VcpuThreads::start(count.min(crate::builder::MAX_VCPUS));
    // Memory first: mapping needs no VM, so it overlaps the prewarm making one (a fresh process
    // gets its load request before the VM is made).
    let (mem, restored_pages, filled) = match crate::checkpoint::served_memory::take_next() {
        Some(server) => {
            let (mem, pages) = crate::checkpoint::served_memory::map_served(
                &state.regions,
                &opts.memory_layers,
                &server,
            )?;
            (mem, pages, None)
        }
        None if opts.fill_anonymous => {
            match filled_memory::map_filled(&state.regions, &opts.memory_layers) {
                Ok((mem, pages, filled)) => (mem, pages, Some(filled)),
                Err(e) => {
                    // No userfaultfd here: the file mapping, whose checkpoints copy paused.
                    tracing::warn!("{e}; mapping the memory files instead");
                    let (mem, pages) = map_memory_chain(&state.regions, &opts.memory_layers)?;
                    (mem, pages, None)
                }
            }
        }
        None => {
            let (mem, pages) = map_memory_chain(&state.regions, &opts.memory_layers)?;
            (mem, pages, None)
        }
    };
    let PreparedVm {
        kvm,
        vm,
        supported_cpuid: supported,
    } = prewarm::take()?;
    let saved_cpuids: Vec<&[kvm_cpuid_entry2]> =
        state.vcpus.iter().map(|v| v.cpuid.as_slice()).collect();
    check_compatible(&state.host, &saved_cpuids, &supported, &host_cpuid())?;
    let cpu_vendor = crate::arch::x86_64::cpuid::vendor(&supported);
    if verify::enabled() {
        let saved = opts
            .memory_layers
            .last()
            .and_then(|p| p.parent())
            .and_then(verify::load);
        if let Some(saved) = saved {
            let now = verify::page_hashes(&mem);
            let differ = verify::unexpected_changes(&saved, &now, &PageIndex::new());
            verify::report("restore", &differ);
        }
    }
    let vm_args = VmConstructorArgs {
        vm,
        mem: &mem,
        track_dirty_pages: opts.track_dirty_pages,
    };
    let vm = Vm::restore(vm_args, &state.vm)?;

    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let legacy =
        attach_legacy_devices_with_state(vm.fd(), &mut pio, console.output, Some(&state.legacy))?;
    let vmgenid = match &state.vmgenid {
        Some(s) => Some(crate::vmgenid::restore_vmgenid(vm.fd(), &mem, s)?),
        None => None,
    };
    let exit = Arc::new(ExitSignal::new()?);
    if let Some(f) = &filled {
        f.stop_on_error(exit.clone());
    }
    register_legacy_events(event_loop, &legacy, &exit, console.input)?;

    let mut virtio = Vec::with_capacity(state.virtio.len());
    let mut vsocks = Vec::new();
    for saved in &state.virtio {
        let id = saved.id.as_str();
        let handle = match &saved.device {
            VirtioDeviceState::Block(s) | VirtioDeviceState::BlockLimited(s, _) => {
                let backend = disks(&s.config)?;
                let mut dev = Block::restore(BlockConstructorArgs { backend }, s)
                    .map_err(|e| dev_err(id, e))?;
                if let VirtioDeviceState::BlockLimited(_, l) = &saved.device {
                    crate::rate_limit::restore_block_limiter(&mut dev, l)
                        .map_err(|e| dev_err(id, e))?;
                }
                VirtioHandle::Block(Arc::new(Mutex::new(dev)))
            }
            VirtioDeviceState::Net(s) | VirtioDeviceState::NetLimited(s, _, _) => {
                let mut s = s.clone();
                if let Some((_, tap)) = opts
                    .network_overrides
                    .iter()
                    .find(|(iface, _)| *iface == s.config.iface_id)
                {
                    s.config.host_dev_name = tap.clone();
                }
                // The MTU is kept beside the device's state (its layout predates it): the
                // restored device advertises it again.
                s.config.mtu = state.device_settings.mtu(&s.config.iface_id);
                let tap = Tap::open(&s.config.host_dev_name).map_err(|e| dev_err(id, e))?;
                let mut dev = Net::restore(NetConstructorArgs { backend: tap }, &s)
                    .map_err(|e| dev_err(id, e))?;
                if let VirtioDeviceState::NetLimited(_, rx, tx) = &saved.device {
                    crate::rate_limit::restore_net_limiters(&mut dev, rx, tx)
                        .map_err(|e| dev_err(id, e))?;
                }
                VirtioHandle::Net(Arc::new(Mutex::new(dev)))
            }
            VirtioDeviceState::Vsock(s) => {
                let mut s = s.clone();
                if let Some(path) = &opts.vsock_uds_path {
                    s.config.uds_path = path.clone();
                }
                let dev = Vsock::restore((), &s).map_err(|e| dev_err(id, e))?;
                VirtioHandle::Vsock(Arc::new(Mutex::new(dev)))
            }
            VirtioDeviceState::Rng(s) | VirtioDeviceState::RngLimited(s, _) => {
                let mut dev = Rng::restore((), s).map_err(|e| dev_err(id, e))?;
                if let VirtioDeviceState::RngLimited(_, l) = &saved.device {
                    crate::rate_limit::restore_rng_limiter(&mut dev, l)
                        .map_err(|e| dev_err(id, e))?;
                }
                VirtioHandle::Rng(Arc::new(Mutex::new(dev)))
            }
            VirtioDeviceState::Balloon(base) => restore_balloon(id, base, None)?,
            VirtioDeviceState::BalloonFreePage(base, free_page) => {
                restore_balloon(id, base, Some(*free_page))?
            }
        };
        let args = MmioTransportConstructorArgs {
            mem: mem.clone(),
            device: handle.as_virtio(),
        };
        let transport =
            MmioTransport::restore(args, &saved.transport).map_err(|e| dev_err(id, e))?;
        let slot = MmioSlot {
            base: saved.base,
            irq: saved.irq,
        };
        event_loop.add(handle.as_subscriber());
        if let VirtioHandle::Vsock(v) = &handle {
            vsocks.push(v.clone());
        }
        virtio.push(wire_transport(
            vm.fd(),
            &mut mmio,
            slot,
            saved.id.clone(),
            transport,
            handle,
        )?);
    }

    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for (i, vcpu_state) in state.vcpus.iter().enumerate() {
        let args = VcpuConstructorArgs {
            vm: &vm,
            index: i as u8,
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            exit: exit.clone(),
        };
        vcpus.push(Vcpu::restore(args, vcpu_state)?);
    }
    // Connections do not survive a snapshot: tell the guest to drop them. Only now: the event's
    // interrupt must reach local APICs that hold their restored state, not be wiped by (or race
    // with) KVM_SET_LAPIC and leave the interrupt controllers disagreeing about it.
    for v in vsocks {
        if let Err(e) = v
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send_transport_reset()
        {
            tracing::warn!("vsock transport reset after restore: {e}");
        }
    }
    crate::vmgenid::notify_restored(vmgenid.as_ref());
    let handles = vcpus
        .into_iter()
        .map(|v| v.start_on(!opts.resume, &mut threads))
        .collect::<Result<Vec<_>, _>>()?;
    let template = CpuTemplate::from_name(&state.host.cpu_template).unwrap_or_default();
    let spec = BuildSpec {
        image: KernelImage::Linux {
            kernel: PathBuf::new(),
            initrd: None,
            boot_args: None,
        },
        vcpu_count: state.vcpus.len() as u8,
        mem_size_mib: (state.regions.iter().map(|r| r.1).sum::<u64>() >> 20) as usize,
        // Snapshots of VMs on huge pages are refused when taken, so none is restored.
        huge_pages: crate::config::HugePages::None,
        smt: false,
        track_dirty_pages: opts.track_dirty_pages,
        cpu_template: template,
        custom_cpu_template: None,
        extra_cmdline: vec![],
        devices: vec![],
        device_settings: state.device_settings.clone(),
        checkpoint_dir: None,
        // A restored VM's memory is the memory files' private mapping (or anonymous memory
        // filled from them), never a shared tmpfs file: a later Full snapshot copies.
        guest_memory_dir: None,
    };
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
        state: if opts.resume {
            RunState::Running
        } else {
            RunState::Paused
        },
        spec,
        cpu_vendor,
        restored_pages,
        dirty: Default::default(),
        vmgenid,
        mmds: state.mmds.clone(),
        write_tracker: None,
        ram_file: None,
        filled,
    })
}
