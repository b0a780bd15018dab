//! The virtio-net device model: configuration, feature negotiation and the RX/TX paths.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::limits::NetLimits;
use super::tap::{NetBackend, Tap};
use super::{MAX_FRAME_LEN, QUEUE_SIZE, RX_INDEX, TX_INDEX, VIRTIO_NET_F_MAC, VNET_HDR_LEN};
use crate::mmds::MmdsStack;
use crate::virtio::activation::QueueEvents;
use crate::virtio::{
    device_type, ActivateContext, ActivateError, IrqKind, IrqTrigger, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::GuestMemoryMmap;

/// How a network interface is configured (Firecracker's `network-interfaces` body).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The interface's ID, unique within the VM.
    pub iface_id: String,
    /// Name of the host tap device.
    pub host_dev_name: String,
    /// MAC address shown to the guest; without one the guest picks its own.
    #[serde(default)]
    pub guest_mac: Option<[u8; 6]>,
    /// MTU advertised to the guest (`VIRTIO_NET_F_MTU`). Not part of the saved device state
    /// (its layout predates it): the VMM keeps it beside that state and sets it here before
    /// [`Net::restore`](crate::virtio::net::Net), so a restored device advertises it again.
    #[serde(skip)]
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// Check the fields that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), NetError> {
        if self.iface_id.is_empty() {
            return Err(NetError::InvalidConfig("iface_id is empty".into()));
        }
        let name = &self.host_dev_name;
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(NetError::InvalidConfig(format!(
                "host_dev_name {name:?} must be 1 to {} bytes",
                libc::IFNAMSIZ - 1
            )));
        }
        if let Some(mtu) = self.mtu {
            if mtu < super::MIN_MTU {
                return Err(NetError::InvalidConfig(format!(
                    "mtu {mtu} is below the minimum of {}",
                    super::MIN_MTU
                )));
            }
        }
        if let Some(mac) = self.guest_mac {
            if mac[0] & 1 != 0 {
                return Err(NetError::InvalidConfig(
                    "guest_mac must be a unicast address".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Errors of the virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is not valid.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// The tap device could not be opened.
    #[error("cannot open tap device {0}")]
    OpenTap(String, #[source] io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames from the tap that were dropped (too short, or no room in the guest's buffer).
    pub rx_dropped: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Guest frames dropped (malformed chain, too long, or the tap refused them).
    pub tx_dropped: u64,
}

/// What the device holds between activation and reset.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) queues: Vec<Queue>,
    pub(crate) queue_evts: Vec<EventFd>,
    pub(crate) interrupt: Arc<IrqTrigger>,
}

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];

/// A virtio-net device over a [`NetBackend`] (a [`Tap`] outside tests).
pub struct Net<B: NetBackend = Tap> {
    pub(crate) config: NetConfig,
    pub(crate) backend: B,
    pub(crate) avail_features: u64,
    pub(crate) acked_features: u64,
    pub(crate) activate_evt: EventFd,
    pub(crate) active: Option<Active>,
    /// The queue eventfds as registered with the event loop.
    pub(crate) registered: QueueEvents,
    /// Whether the backend's fd is registered with the event loop.
    pub(crate) backend_registered: bool,
    rx_buf: Box<[u8]>,
    /// Length of a frame read from the backend and not yet delivered (0: none).
    rx_pending: usize,
    tx_buf: Box<[u8]>,
    stats: NetStats,
    /// The rx and tx rate limiters (unlimited by default).
    pub(crate) limits: NetLimits,
    /// The MMDS stack, when MMDS is enabled on this interface: guest frames to the MMDS
    /// address go to it instead of the tap, and its frames reach the guest first.
    mmds: Option<MmdsStack>,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("config", &self.config)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.active.is_some())
            .field("stats", &self.stats)
            .field("mmds", &self.mmds.as_ref().map(|m| m.ipv4_addr()))
            .finish()
    }
}

impl Net<Tap> {
    /// Validate `config`, open its tap device and build the device.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        config.validate()?;
        let tap = Tap::open(&config.host_dev_name)
            .map_err(|e| NetError::OpenTap(config.host_dev_name.clone(), e))?;
        Self::with_backend(config, tap)
    }
}

impl<B: NetBackend> Net<B> {
    /// Build the device over an already opened backend.
    pub fn with_backend(config: NetConfig, backend: B) -> Result<Self, NetError> {
        let mut avail_features = 1u64 << VIRTIO_F_VERSION_1;
        if config.guest_mac.is_some() {
            avail_features |= 1u64 << VIRTIO_NET_F_MAC;
        }
        if config.mtu.is_some() {
            avail_features |= 1u64 << super::VIRTIO_NET_F_MTU;
        }
        Ok(Self {
            config,
            backend,
            avail_features,
            acked_features: 0,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd)?,
            active: None,
            registered: QueueEvents::default(),
            backend_registered: false,
            rx_buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            rx_pending: 0,
            tx_buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            stats: NetStats::default(),
            limits: NetLimits::default(),
            mmds: None,
        })
    }

    /// The configuration the device was built from.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The backend (the tap).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Frame counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Serve MMDS on this interface through `stack`, or stop (`None`). Open MMDS connections
    /// of a previous stack are dropped.
    pub fn set_mmds(&mut self, stack: Option<MmdsStack>) {
        self.mmds = stack;
    }

    /// The MMDS stack, if MMDS is enabled on this interface.
    pub fn mmds(&self) -> Option<&MmdsStack> {
        self.mmds.as_ref()
    }

    /// The eventfd the device signals when it was activated or reset.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The queue eventfds of the active device (empty when not activated).
    pub(crate) fn queue_evts(&self) -> &[EventFd] {
        self.active
            .as_ref()
            .map_or(&[], |a| a.queue_evts.as_slice())
    }

    /// Move frames from the backend into the guest's rx buffers until either runs out. A frame
    /// that finds no rx buffer is kept and delivered when the guest adds buffers. Returns whether
    /// any buffer was used (the interrupt has then been raised if the guest wants one).
    pub fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used_any = false;
        loop {
            if self.rx_pending == 0 {
                // MMDS's frames go first (as in Firecracker); they carry an empty vnet header.
                if let Some(n) = self.mmds.as_mut().and_then(|m| {
                    m.write_next_frame(&mut self.rx_buf[VNET_HDR_LEN..], Instant::now())
                }) {
                    self.rx_buf[..VNET_HDR_LEN].fill(0);
                    self.rx_pending = VNET_HDR_LEN + n;
                }
            }
            if self.rx_pending == 0 {
                match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(0) => break,
                    Ok(n) if n < VNET_HDR_LEN => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => self.rx_pending = n.min(self.rx_buf.len()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("net: reading from the tap failed: {e}");
                        break;
                    }
                }
            }
            // Throttled: keep the frame (and leave the tap unread) until the limiter's timer.
            if !self.limits.rx.consume_request(self.rx_pending as u64) {
                break;
            }
            let rxq = &mut active.queues[RX_INDEX];
            let Some(chain) = rxq.pop_descriptor_chain(&active.mem) else {
                // No buffer: keep the frame until the guest adds some.
                self.limits.rx.give_back_request(self.rx_pending as u64);
                break;
            };
            let head = chain.head_index();
            // No VIRTIO_NET_F_MRG_RXBUF: every frame fits in one chain, num_buffers is 1.
            self.rx_buf[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let frame = &self.rx_buf[..self.rx_pending];
            let len = match write_to_chain(&active.mem, chain, frame) {
                Some(n) => {
                    self.stats.rx_frames += 1;
                    n
                }
                None => {
                    self.stats.rx_dropped += 1;
                    0
                }
            };
            self.rx_pending = 0;
            if let Err(e) = rxq.add_used(&active.mem, head, len) {
                tracing::warn!("net: cannot return an rx buffer: {e}");
            }
            used_any = true;
        }
        if used_any {
            notify(active, RX_INDEX);
        }
        used_any
    }

    /// Send every frame the guest queued for transmission. Malformed chains are completed and
    /// their frames dropped. Frames for MMDS go to its stack (not counted by the tx limiter, as
    /// in Firecracker), and its answers are delivered at once. Returns whether any buffer was
    /// used.
    pub fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used_any = false;
        let mut to_mmds = false;
        let txq = &mut active.queues[TX_INDEX];
        while let Some(chain) = txq.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let read = read_from_chain(&active.mem, chain, &mut self.tx_buf);
            if let (Some(len), Some(mmds)) = (read, self.mmds.as_mut()) {
                let frame = self.tx_buf.get(VNET_HDR_LEN..len).unwrap_or_default();
                if mmds.is_mmds_frame(frame) {
                    mmds.detour_frame(frame, Instant::now());
                    to_mmds = true;
                    if let Err(e) = txq.add_used(&active.mem, head, 0) {
                        tracing::warn!("net: cannot return a tx buffer: {e}");
                    }
                    used_any = true;
                    continue;
                }
            }
            if let Some(len) = read {
                if !self.limits.tx.consume_request(len as u64) {
                    // Throttled: the chain goes back and waits for the limiter's timer.
                    txq.go_to_previous_position();
                    break;
                }
            }
            match read {
                Some(len) if len >= VNET_HDR_LEN => {
                    match self.backend.write_frame(&self.tx_buf[..len]) {
                        Ok(_) => self.stats.tx_frames += 1,
                        Err(e) => {
                            tracing::debug!("net: tap refused a frame: {e}");
                            self.stats.tx_dropped += 1;
                        }
                    }
                }
                _ => self.stats.tx_dropped += 1,
            }
            if let Err(e) = txq.add_used(&active.mem, head, 0) {
                tracing::warn!("net: cannot return a tx buffer: {e}");
            }
            used_any = true;
        }
        if used_any {
            notify(active, TX_INDEX);
        }
        if to_mmds {
            self.process_rx();
        }
        used_any
    }
}

/// Raise the vring interrupt if the driver did not suppress it.
fn notify(active: &mut Active, index: usize) {
    let needed = active.queues[index]
        .needs_notification(&active.mem)
        .unwrap_or(true);
    if needed {
        if let Err(e) = active.interrupt.trigger(IrqKind::Vring) {
            tracing::warn!("net: cannot raise the interrupt: {e}");
        }
    }
}

/// Copy `data` into the chain's writable descriptors. `None` (nothing to report as written) if
/// the chain has a readable descriptor, is too small, or points outside guest memory.
pub(crate) fn write_to_chain<C>(mem: &GuestMemoryMmap, chain: C, data: &[u8]) -> Option<u32>
where
    C: Iterator<Item = virtio_queue::desc::split::Descriptor> + Clone,
{
    let mut capacity: u64 = 0;
    for desc in chain.clone() {
        if !desc.is_write_only() {
            return None;
        }
        capacity += u64::from(desc.len());
        if capacity >= data.len() as u64 {
            break;
        }
    }
    if capacity < data.len() as u64 {
        return None;
    }
    let mut off = 0usize;
    for desc in chain {
        if off == data.len() {
            break;
        }
        let n = (desc.len() as usize).min(data.len() - off);
        mem.write_slice(&data[off..off + n], desc.addr()).ok()?;
        off += n;
    }
    u32::try_from(off).ok()
}

/// Gather the chain's readable descriptors into `buf`. `None` if the chain has a writable
/// descriptor, holds more than `buf.len()` bytes, or points outside guest memory.
pub(crate) fn read_from_chain<C>(mem: &GuestMemoryMmap, chain: C, buf: &mut [u8]) -> Option<usize>
where
    C: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return None;
        }
        let n = desc.len() as usize;
        let end = len.checked_add(n).filter(|&end| end <= buf.len())?;
        mem.read_slice(&mut buf[len..end], desc.addr()).ok()?;
        len = end;
    }
    Some(len)
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        match (self.config.guest_mac, self.config.mtu) {
            // virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu (little endian).
            (mac, Some(mtu)) => {
                let mut space = [0u8; 12];
                space[..6].copy_from_slice(&mac.unwrap_or_default());
                space[10..].copy_from_slice(&mtu.to_le_bytes());
                crate::virtio::read_config_bytes(&space, offset, data);
            }
            (Some(mac), None) => crate::virtio::read_config_bytes(&mac, offset, data),
            (None, None) => {}
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only for a VERSION_1 driver.
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        ctx.check_queues(QUEUE_SIZES.len())?;
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            queue_evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| a.queues.as_slice())
    }

    fn reset(&mut self) -> bool {
        if self.active.take().is_some() {
            // The handler drops the registered eventfds (its own clones) on this signal.
            if let Err(e) = self.activate_evt.write(1) {
                tracing::warn!("net: cannot signal the reset: {e}");
            }
        }
        self.rx_pending = 0;
        self.acked_features = 0;
        true
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
pub(crate) mod tests;
