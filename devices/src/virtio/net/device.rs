//! The virtio-net device model: configuration, feature negotiation and the RX/TX paths.

use std::io;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::limits::NetLimits;
use super::tap::{NetBackend, Tap};
use super::{MAX_FRAME_LEN, QUEUE_SIZE, RX_INDEX, TX_INDEX, VIRTIO_NET_F_MAC, VNET_HDR_LEN};
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
    /// (its layout predates it): a restored device no longer advertises it, while the guest
    /// keeps the MTU its driver took at boot.
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
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("config", &self.config)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.active.is_some())
            .field("stats", &self.stats)
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
    /// their frames dropped. Returns whether any buffer was used.
    pub fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used_any = false;
        let txq = &mut active.queues[TX_INDEX];
        while let Some(chain) = txq.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let read = read_from_chain(&active.mem, chain, &mut self.tx_buf);
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
pub(crate) mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    /// An in-memory backend: frames queued for the guest, and frames the guest sent.
    #[derive(Clone, Default)]
    pub(crate) struct MockBackend {
        pub(crate) inner: Arc<Mutex<MockInner>>,
    }

    #[derive(Default)]
    pub(crate) struct MockInner {
        pub(crate) to_guest: VecDeque<Vec<u8>>,
        pub(crate) from_guest: Vec<Vec<u8>>,
        pub(crate) fail_writes: bool,
    }

    impl NetBackend for MockBackend {
        fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut inner = self.inner.lock().unwrap();
            match inner.to_guest.pop_front() {
                Some(f) => {
                    let n = f.len().min(buf.len());
                    buf[..n].copy_from_slice(&f[..n]);
                    Ok(n)
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }

        fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
            let mut inner = self.inner.lock().unwrap();
            if inner.fail_writes {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            inner.from_guest.push(frame.to_vec());
            Ok(frame.len())
        }

        fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    pub(crate) fn config() -> NetConfig {
        NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some([0x06, 0, 0xac, 0x10, 0, 2]),
            mtu: None,
        }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    struct Fixture<'a> {
        mem: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        net: Net<MockBackend>,
        backend: MockBackend,
        irq: Arc<IrqTrigger>,
        /// Next free descriptor index in each queue.
        next: [u16; 2],
    }

    impl<'a> Fixture<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Self {
            let rxq = MockSplitQueue::create(mem, GuestAddress(0), 16);
            let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
            let backend = MockBackend::default();
            let mut net = Net::with_backend(config(), backend.clone()).unwrap();
            let irq = Arc::new(IrqTrigger::new().unwrap());
            let ctx = ActivateContext {
                mem: mem.clone(),
                queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
                queue_evts: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
                interrupt: irq.clone(),
            };
            net.activate(ctx).unwrap();
            assert_eq!(net.activate_evt.read().unwrap(), 1);
            Fixture {
                mem,
                rxq,
                txq,
                net,
                backend,
                irq,
                next: [0, 0],
            }
        }

        /// Add one chain made of `descs` (addr, len, flags) to queue `q`.
        fn add_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) {
            let base = self.next[q];
            let raw: Vec<_> = descs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, flags))| {
                    let last = i + 1 == descs.len();
                    let flags = if last { flags } else { flags | F_NEXT };
                    desc(addr, len, flags, base + i as u16 + 1)
                })
                .collect();
            let mq = if q == RX_INDEX { &self.rxq } else { &self.txq };
            mq.add_desc_chains(&raw, base).unwrap();
            self.next[q] += descs.len() as u16;
        }

        fn used(&self, q: usize, i: usize) -> (u32, u32) {
            let mq = if q == RX_INDEX { &self.rxq } else { &self.txq };
            let e = mq.used().ring().ref_at(i).unwrap().load();
            (e.id(), e.len())
        }

        fn used_idx(&self, q: usize) -> u16 {
            let mq = if q == RX_INDEX { &self.rxq } else { &self.txq };
            mq.used().idx().load()
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn features_and_config() {
        let net = Net::with_backend(config(), MockBackend::default()).unwrap();
        assert_eq!(net.device_type(), device_type::NET);
        assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        let f = net.avail_features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, config().guest_mac.unwrap());
        let mut tail = [0xffu8; 4];
        net.read_config(4, &mut tail);
        assert_eq!(tail, [0, 2, 0xff, 0xff]);
        let mut past = [0xffu8; 2];
        net.read_config(6, &mut past);
        assert_eq!(past, [0xff, 0xff]);

        let mut no_mac = config();
        no_mac.guest_mac = None;
        let net = Net::with_backend(no_mac, MockBackend::default()).unwrap();
        assert_eq!(net.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
        assert_eq!(
            net.avail_features() & (1 << super::super::VIRTIO_NET_F_MTU),
            0
        );
    }

    #[test]
    fn an_mtu_is_advertised_in_the_config_space() {
        let mut c = config();
        c.mtu = Some(1400);
        let net = Net::with_backend(c.clone(), MockBackend::default()).unwrap();
        assert_ne!(
            net.avail_features() & (1 << super::super::VIRTIO_NET_F_MTU),
            0
        );
        let mut mtu = [0u8; 2];
        net.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1400);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, config().guest_mac.unwrap());
        c.mtu = Some(67);
        assert!(c.validate().is_err());
        c.guest_mac = None;
        c.mtu = Some(9000);
        let net = Net::with_backend(c, MockBackend::default()).unwrap();
        let mut space = [0xffu8; 12];
        net.read_config(0, &mut space);
        assert_eq!(space[..6], [0; 6]);
        assert_eq!(u16::from_le_bytes([space[10], space[11]]), 9000);
    }

    #[test]
    fn config_validation() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.host_dev_name = "x".repeat(16);
        assert!(c.validate().is_err());
        let mut c = config();
        c.guest_mac = Some([1, 0, 0, 0, 0, 0]);
        assert!(c.validate().is_err());
        let mut c = config();
        c.iface_id.clear();
        assert!(c.validate().is_err());
        let json = r#"{"iface_id":"a","host_dev_name":"b","bogus":1}"#;
        assert!(serde_json::from_str::<NetConfig>(json).is_err());
        let json = r#"{"iface_id":"a","host_dev_name":"b"}"#;
        assert_eq!(
            serde_json::from_str::<NetConfig>(json).unwrap().guest_mac,
            None
        );
    }

    #[test]
    fn activate_checks_queue_count() {
        let mem = mem();
        let mut net = Net::with_backend(config(), MockBackend::default()).unwrap();
        let ctx = ActivateContext {
            mem,
            queues: vec![Queue::new(16).unwrap()],
            queue_evts: vec![EventFd::new(0).unwrap()],
            interrupt: Arc::new(IrqTrigger::new().unwrap()),
        };
        assert!(matches!(
            net.activate(ctx),
            Err(ActivateError::QueueCount { .. })
        ));
        assert!(!net.is_activated());
    }

    #[test]
    fn rx_delivers_frames_and_waits_for_buffers() {
        let mem = mem();
        let mut fx = Fixture::new(&mem);
        let f1 = frame(b"hello, guest");
        let f2 = frame(&[7u8; 3000]);
        {
            let mut inner = fx.backend.inner.lock().unwrap();
            inner.to_guest.push_back(f1.clone());
            inner.to_guest.push_back(f2.clone());
        }
        // No rx buffer yet: the first frame is read and kept.
        assert!(!fx.net.process_rx());
        assert_eq!(fx.backend.inner.lock().unwrap().to_guest.len(), 1);

        fx.add_chain(RX_INDEX, &[(0x10_0000, 2048, F_WRITE)]);
        assert!(fx.net.process_rx());
        assert_eq!(fx.used_idx(RX_INDEX), 1);
        assert_eq!(fx.used(RX_INDEX, 0), (0, f1.len() as u32));
        let mut got = vec![0u8; f1.len()];
        fx.mem
            .read_slice(&mut got, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(&got[VNET_HDR_LEN..], b"hello, guest");
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
        assert_ne!(fx.irq.status() & crate::virtio::VIRTIO_MMIO_INT_VRING, 0);

        // The second frame spans two descriptors.
        fx.add_chain(
            RX_INDEX,
            &[(0x20_0000, 1000, F_WRITE), (0x30_0000, 4000, F_WRITE)],
        );
        assert!(fx.net.process_rx());
        assert_eq!(fx.used(RX_INDEX, 1), (1, f2.len() as u32));
        let mut a = vec![0u8; 1000];
        let mut b = vec![0u8; f2.len() - 1000];
        fx.mem.read_slice(&mut a, GuestAddress(0x20_0000)).unwrap();
        fx.mem.read_slice(&mut b, GuestAddress(0x30_0000)).unwrap();
        assert_eq!([a, b].concat()[VNET_HDR_LEN..], f2[VNET_HDR_LEN..]);
        assert_eq!(fx.net.stats().rx_frames, 2);
    }

    #[test]
    fn rx_drops_frames_that_do_not_fit_and_bad_chains() {
        let mem = mem();
        let mut fx = Fixture::new(&mem);
        {
            let mut inner = fx.backend.inner.lock().unwrap();
            inner.to_guest.push_back(frame(&[1u8; 500]));
            inner.to_guest.push_back(vec![0u8; 4]); // shorter than the vnet header
            inner.to_guest.push_back(frame(b"ok"));
            inner.to_guest.push_back(frame(b"readable"));
            inner.to_guest.push_back(frame(b"outside memory"));
        }
        fx.add_chain(RX_INDEX, &[(0x10_0000, 100, F_WRITE)]); // too small
        fx.add_chain(RX_INDEX, &[(0x11_0000, 100, F_WRITE)]);
        fx.add_chain(RX_INDEX, &[(0x12_0000, 100, 0)]); // device-readable
        fx.add_chain(RX_INDEX, &[(0xffff_0000, 100, F_WRITE)]); // not guest memory
        assert!(fx.net.process_rx());
        assert_eq!(fx.used_idx(RX_INDEX), 4);
        assert_eq!(fx.used(RX_INDEX, 0).1, 0);
        assert_eq!(fx.used(RX_INDEX, 1).1, (VNET_HDR_LEN + 2) as u32);
        assert_eq!(fx.used(RX_INDEX, 2).1, 0);
        assert_eq!(fx.used(RX_INDEX, 3).1, 0);
        assert_eq!(fx.net.stats().rx_frames, 1);
        assert_eq!(fx.net.stats().rx_dropped, 4);
    }

    #[test]
    fn tx_gathers_chains_and_drops_bad_ones() {
        let mem = mem();
        let mut fx = Fixture::new(&mem);
        let f = frame(b"from the guest, in two parts");
        fx.mem
            .write_slice(&f[..20], GuestAddress(0x10_0000))
            .unwrap();
        fx.mem
            .write_slice(&f[20..], GuestAddress(0x20_0000))
            .unwrap();
        fx.add_chain(
            TX_INDEX,
            &[(0x10_0000, 20, 0), (0x20_0000, (f.len() - 20) as u32, 0)],
        );
        fx.add_chain(TX_INDEX, &[(0x10_0000, 20, F_WRITE)]); // writable: malformed
        fx.add_chain(TX_INDEX, &[(0x10_0000, 4, 0)]); // shorter than the header
        fx.add_chain(
            TX_INDEX,
            &[(0x10_0000, 60_000, 0), (0x10_0000, 60_000, 0)], // longer than a frame
        );
        fx.add_chain(TX_INDEX, &[(0xffff_0000, 64, 0)]); // not guest memory
        assert!(fx.net.process_tx());
        assert_eq!(fx.used_idx(TX_INDEX), 5);
        for i in 0..5 {
            assert_eq!(fx.used(TX_INDEX, i).1, 0);
        }
        let inner = fx.backend.inner.lock().unwrap();
        assert_eq!(inner.from_guest, vec![f]);
        drop(inner);
        assert_eq!(fx.net.stats().tx_frames, 1);
        assert_eq!(fx.net.stats().tx_dropped, 4);

        // A tap that refuses frames does not stop the queue.
        fx.backend.inner.lock().unwrap().fail_writes = true;
        let g = frame(b"dropped");
        fx.mem.write_slice(&g, GuestAddress(0x10_0000)).unwrap();
        fx.add_chain(TX_INDEX, &[(0x10_0000, g.len() as u32, 0)]);
        assert!(fx.net.process_tx());
        assert_eq!(fx.used_idx(TX_INDEX), 6);
        assert_eq!(fx.net.stats().tx_dropped, 5);
    }

    #[test]
    fn reset_deactivates() {
        let mem = mem();
        let mut fx = Fixture::new(&mem);
        assert!(fx.net.reset());
        assert!(!fx.net.is_activated());
        assert!(fx.net.queues().is_empty());
        assert_eq!(fx.net.activate_evt.read().unwrap(), 1);
        assert!(!fx.net.process_rx());
        assert!(!fx.net.process_tx());
    }
}
